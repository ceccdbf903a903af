"""Exercises of notebook 12: LoRA adapters (minillm/core/lora.py).

    lora_linear_forward    lora_linear_forward(x, W, b, A, B, scale)   x W + b + s (x A) B
    lora_linear_backward   lora_linear_backward(dout, cache)           dx, dA, dB (W, b frozen)
    lora_merge_backward    lora_merge_backward(dW_eff, cache)          W_eff = W + s A B

Shape legend: N positions (the leading axes flattened), in and out the layer's sizes, r the
adapter's rank, s = alpha / r.

>>> from minillm.exercises import check
>>> check("lora_merge_backward", lora.lora_merge_backward, verbose=False).passed
True
"""
from ..core import lora
from .registry import Case, exercise, mistake


def _lora_inputs(rng, lead, n_in, n_out, r, scale=2.0, zero_B=False):
    B = rng.normal(size=(r, n_out)) * (0.0 if zero_B else 1.0)
    return dict(x=rng.normal(size=(*lead, n_in)), W=rng.normal(size=(n_in, n_out)),
                b=rng.normal(size=n_out), A=rng.normal(size=(n_in, r)), B=B, scale=scale)


def _forward_cases(rng):
    return [Case("(B, T, in), rank 2, scale 2", _lora_inputs(rng, (2, 3), 4, 5, 2)),
            Case("T = 1, B = 1, rank 1", _lora_inputs(rng, (1, 1), 3, 6, 1, scale=0.5)),
            Case("B = 0 (the start): the frozen layer", _lora_inputs(rng, (4,), 5, 3, 2,
                                                                     zero_B=True))]


exercise("lora_linear_forward", "a frozen linear layer plus its scaled low-rank path",
         reference=lora.lora_linear_forward, returns=("out", "cache"), compare=("out",),
         cases=_forward_cases)


def _forward(x, W, b, A, B, scale, s_low=True, bias=True, s_frozen=False):
    x2 = x.reshape(-1, x.shape[-1])
    frozen = x2 @ W + (b if bias else 0.0)
    out = (scale if s_frozen else 1.0) * frozen + (scale if s_low else 1.0) * ((x2 @ A) @ B)
    return out.reshape(*x.shape[:-1], W.shape[1]), None


@mistake("lora_linear_forward", "the low-rank path is scaled: + scale * (x @ A) @ B, scale = "
                                "alpha / r")
def _(x, W, b, A, B, scale):
    return _forward(x, W, b, A, B, scale, s_low=False)


@mistake("lora_linear_forward", "the frozen layer keeps its bias: x @ W + b + ...")
def _(x, W, b, A, B, scale):
    return _forward(x, W, b, A, B, scale, bias=False)


@mistake("lora_linear_forward", "only the low-rank path is scaled; the frozen x @ W + b is "
                                "left as it was")
def _(x, W, b, A, B, scale):
    return _forward(x, W, b, A, B, scale, s_frozen=True)


def _backward_cases(rng):
    return [Case("(B, T, in), rank 2, scale 2", _lora_inputs(rng, (2, 3), 4, 5, 2)),
            Case("T = 1, B = 1, rank 1", _lora_inputs(rng, (1, 1), 3, 6, 1, scale=0.5)),
            Case("B = 0 (the start): dA is zero", _lora_inputs(rng, (4,), 5, 3, 2,
                                                               zero_B=True))]


exercise("lora_linear_backward", "LoRA's backward: dx through both paths, dA and dB; W and b "
         "get none", reference=lora.lora_linear_backward, forward=lora.lora_linear_forward,
         returns=("dx", "dA", "dB"), cases=_backward_cases)


def _backward(dout, cache, low_path=True, scaled=True):
    x, W, A, B, h, s = cache
    s = s if scaled else 1.0
    g = dout.reshape(-1, dout.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    dh = s * (g @ B.T)
    dB = s * (h.T @ g)
    dA = x2.T @ dh
    dx = g @ W.T + (dh @ A.T if low_path else 0.0)
    return dx.reshape(x.shape), dA, dB


@mistake("lora_linear_backward", "x reaches the output through both paths: dx = g W^T + s "
                                 "(g B^T) A^T")
def _(dout, cache):
    return _backward(dout, cache, low_path=False)


@mistake("lora_linear_backward", "the low-rank path was scaled by s: dA, dB and its part of dx "
                                 "carry the factor cache.scale")
def _(dout, cache):
    return _backward(dout, cache, scaled=False)


def _merge_cases(rng):
    def case(label, n_in, n_out, r, scale):
        return Case(label, dict(W=rng.normal(size=(n_in, n_out)), A=rng.normal(size=(n_in, r)),
                                B=rng.normal(size=(r, n_out)), scale=scale))
    return [case("in 4, out 6, rank 2", 4, 6, 2, 2.0),
            case("rank 1", 3, 5, 1, 0.5),
            case("square, rank 3", 3, 3, 3, 4.0)]


exercise("lora_merge_backward", "dA, dB from the gradient of the merged weight W + s A B",
         reference=lora.lora_merge_backward, forward=lora.lora_merge_forward,
         returns=("dA", "dB"), cases=_merge_cases)


@mistake("lora_merge_backward", "W_eff = W + s A B: both gradients carry the factor s")
def _(dW_eff, cache):
    return dW_eff @ cache.B.T, cache.A.T @ dW_eff


@mistake("lora_merge_backward", "dB = s A^T dW_eff, shaped (r, out) like B")
def _(dW_eff, cache):
    return cache.scale * (dW_eff @ cache.B.T), cache.scale * (dW_eff.T @ cache.A)
