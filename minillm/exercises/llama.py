"""Exercises of notebook 16: the layers of the Llama-style block (layers.py, block.py, rope.py,
attention.py).

    rmsnorm_forward    rmsnorm_forward(x, weight, eps=1e-5)     x * rstd * weight, no mean
    rmsnorm_backward   rmsnorm_backward(dout, cache)            LayerNorm's without mean(g)
    silu_forward       silu_forward(x)                          x * sigmoid(x), stable
    silu_backward      silu_backward(dout, cache)               s (1 + x (1 - s))
    swiglu_forward     swiglu_forward(x, c_fc_w, c_fc_b, ...)   c_proj(silu(gate) * up)
    swiglu_backward    swiglu_backward(dout, cache)             the product rule, [dgate | dup]
    rope_tables        rope_tables(T, hs, theta, start, dtype)  the cos, sin tables (T, hs)
    rope_forward       rope_forward(x, cos, sin)                x cos + rotate_half(x) sin
    rope_backward      rope_backward(dout, cache)               the inverse rotation
    gqa_forward        mha_forward(..., n_kv_head=..., rope=...)   groups of query heads share
                                                                   a key/value head
    gqa_backward       mha_backward(dout, cache)                each key/value head sums the
                                                                gradients of its group

Shape legend: B batch, T time, S time of the keys, C channels, I intermediate size of the MLP,
nh query heads, nkv key/value heads, g = nh / nkv heads per group, hs head size (C = nh * hs).

>>> from minillm.exercises import check
>>> check("rope_backward", rope.rope_backward, verbose=False).passed
True
"""
import numpy as np

from ..core import attention, block, layers, rope
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------------

def _rmsnorm_inputs(rng, shape, eps=None, spread=2.0):
    C = shape[-1]
    inputs = dict(x=rng.normal(size=shape) * spread + 1.5, weight=rng.normal(size=C) + 1.0)
    if eps is not None:
        inputs["eps"] = eps
    return inputs


def _rmsnorm_cases(rng):
    zero_row = _rmsnorm_inputs(rng, (3, 4))
    zero_row["x"][1] = 0.0
    return [Case("(B, T, C)", _rmsnorm_inputs(rng, (2, 3, 8))),
            Case("T = 1, B = 1", _rmsnorm_inputs(rng, (1, 1, 5))),
            Case("2-D input (N, C), eps = 0.1", _rmsnorm_inputs(rng, (4, 6), eps=0.1)),
            Case("rows of tiny scale (eps matters)", _rmsnorm_inputs(rng, (3, 4), spread=1e-3)),
            Case("a row of zeros", zero_row)]


exercise("rmsnorm_forward", "RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight",
         reference=layers.rmsnorm_forward, returns=("out", "cache"), compare=("out",),
         cases=_rmsnorm_cases)


def _rms(x, weight, eps=1e-5, centre=False, eps_inside=True, mean=True, axis=-1, root=True,
         scale=True):
    if centre:
        x = x - x.mean(axis=axis, keepdims=True)
    ms = (x * x).mean(axis=axis, keepdims=True) if mean else (x * x).sum(axis=axis,
                                                                         keepdims=True)
    if not root:
        rstd = 1.0 / (ms + eps)
    elif eps_inside:
        rstd = 1.0 / np.sqrt(ms + eps)
    else:
        rstd = 1.0 / (np.sqrt(ms) + eps)
    return (x * rstd * weight if scale else x * rstd), None


@mistake("rmsnorm_forward", "RMSNorm does not subtract the mean (that is LayerNorm): it divides "
                            "x itself by its root mean square")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, centre=True)


@mistake("rmsnorm_forward", "eps goes inside the square root: rstd = 1 / sqrt(mean(x^2) + eps)")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, eps_inside=False)


@mistake("rmsnorm_forward", "the root MEAN square: mean(x^2) over the C channels, not their sum")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, mean=False)


@mistake("rmsnorm_forward", "the mean of the squares runs over each vector's last axis C "
                            "(axis=-1, keepdims=True)")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, axis=0)


@mistake("rmsnorm_forward", "divide by the ROOT of the mean square: rstd = 1 / sqrt(ms + eps)")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, root=False)


@mistake("rmsnorm_forward", "the gain is missing: out = x * rstd * weight")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, eps, scale=False)


@mistake("rmsnorm_forward", "eps is hard-coded: use the eps argument (one case passes eps = 0.1)")
def _(x, weight, eps=1e-5):
    return _rms(x, weight, 1e-5)


def _rmsnorm_grad_cases(rng):
    return [Case("(B, T, C)", _rmsnorm_inputs(rng, (2, 3, 6))),
            Case("T = 1, B = 1", _rmsnorm_inputs(rng, (1, 1, 5))),
            Case("2-D input (N, C), eps = 0.1", _rmsnorm_inputs(rng, (4, 3), eps=0.1)),
            Case("rows of small scale (eps matters)", _rmsnorm_inputs(rng, (3, 4), spread=3e-3))]


exercise("rmsnorm_backward", "RMSNorm's backward: dx through rstd, dweight",
         reference=layers.rmsnorm_backward, forward=layers.rmsnorm_forward,
         returns=("dx", "dweight"), cases=_rmsnorm_grad_cases)


def _rms_backward(dout, cache, second=True, mean_g=False, inv_c=True, use_weight=True,
                  times_rstd=True, use_xhat=True, axis=None):
    x, weight, rstd = cache
    C = x.shape[-1]
    xhat = x * rstd
    flat = (lambda a: a.sum(axis=0)) if axis == 0 else (lambda a: a.reshape(-1, C).sum(axis=0))
    dweight = flat(dout * (xhat if use_xhat else x))
    g = dout * weight if use_weight else dout
    k = 1.0 / C if inv_c else 1.0
    dx = g.copy()
    if mean_g:
        dx -= g.sum(axis=-1, keepdims=True) * k
    if second:
        dx -= xhat * ((g * xhat).sum(axis=-1, keepdims=True) * k)
    return (dx * rstd if times_rstd else dx), dweight


@mistake("rmsnorm_backward", "rstd depends on x too: dx has a second term, - xhat * mean(g * "
                             "xhat)")
def _(dout, cache):
    return _rms_backward(dout, cache, second=False)


@mistake("rmsnorm_backward", "LayerNorm's - mean(g) term does not belong: it came from the mean, "
                             "which RMSNorm does not subtract")
def _(dout, cache):
    return _rms_backward(dout, cache, mean_g=True)


@mistake("rmsnorm_backward", "a missing 1/C: mean(g * xhat) is a mean over the C channels, not "
                             "a sum")
def _(dout, cache):
    return _rms_backward(dout, cache, inv_c=False)


@mistake("rmsnorm_backward", "the gradient reaching xhat is g = dout * weight: the weight is "
                             "missing")
def _(dout, cache):
    return _rms_backward(dout, cache, use_weight=False)


@mistake("rmsnorm_backward", "dx is missing the final factor rstd")
def _(dout, cache):
    return _rms_backward(dout, cache, times_rstd=False)


@mistake("rmsnorm_backward", "dweight = sum(dout * xhat) with xhat = x * rstd: the normalised x, "
                             "not x itself")
def _(dout, cache):
    return _rms_backward(dout, cache, use_xhat=False)


@mistake("rmsnorm_backward", "dweight is summed over the batch axis only: sum over every "
                             "position (reshape to (N, C))")
def _(dout, cache):
    return _rms_backward(dout, cache, axis=0)


# ----------------------------------------------------------------------------------------------
# SiLU
# ----------------------------------------------------------------------------------------------

def _silu_cases(rng):
    return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 5)))),
            Case("the tails, |x| up to 10", dict(x=np.linspace(-10.0, 10.0, 41))),
            Case("|x| up to 1000 (exp overflows)",
                 dict(x=np.array([-1000.0, -800.0, -50.0, 0.0, 50.0, 800.0, 1000.0])))]


exercise("silu_forward", "SiLU(x) = x * sigmoid(x) = x / (1 + exp(-x))",
         reference=layers.silu_forward, returns=("out", "cache"), compare=("out",),
         cases=_silu_cases)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


@mistake("silu_forward", "SiLU(x) = x * sigmoid(x): the factor x is missing")
def _(x):
    return _sigmoid(x), None


@mistake("silu_forward", "sigmoid(x) = 1 / (1 + exp(-x)): the exponent's sign")
def _(x):
    return x * _sigmoid(-x), None


@mistake("silu_forward", "exp(x) / (1 + exp(x)) is inf / inf = NaN once exp(x) overflows: write "
                         "sigmoid(x) as 1 / (1 + exp(-x))")
def _(x):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(x)
        return x * e / (1.0 + e), None


@mistake("silu_forward", "that is GPT-2's GELU (tanh, 0.044715): SiLU is x * sigmoid(x)")
def _(x):
    return layers.gelu_forward(x)[0], None


def _silu_grad_cases(rng):
    return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 5)))),
            Case("the tails, |x| up to 10", dict(x=np.linspace(-10.0, 10.0, 41)))]


exercise("silu_backward", "the derivative of SiLU(x) = x s, s = sigmoid(x), from its cache "
         "(x, s)", reference=layers.silu_backward, forward=layers.silu_forward,
         returns=("dx",), cases=_silu_grad_cases)


@mistake("silu_backward", "the product rule: d/dx [x s] = s + x s', both terms")
def _(dout, cache):
    return dout * cache.s


@mistake("silu_backward", "sigmoid' = s (1 - s): d/dx [x s] = s + x s (1 - s)")
def _(dout, cache):
    x, s = cache
    return dout * (s + x * (1.0 - s))


@mistake("silu_backward", "sigmoid' = s (1 - s), not tanh's 1 - s * s")
def _(dout, cache):
    x, s = cache
    return dout * (s + x * (1.0 - s * s))


@mistake("silu_backward", "multiply by dout, the gradient arriving at SiLU's output")
def _(dout, cache):
    x, s = cache
    return s * (1.0 + x * (1.0 - s))


# ----------------------------------------------------------------------------------------------
# The SwiGLU MLP
# ----------------------------------------------------------------------------------------------

def _swiglu_inputs(rng, B, T, C, I, bias=True):
    return dict(x=rng.normal(size=(B, T, C)), c_fc_w=rng.normal(size=(C, 2 * I)) * 0.7,
                c_fc_b=rng.normal(size=2 * I) * 0.5 if bias else None,
                c_proj_w=rng.normal(size=(I, C)) * 0.5,
                c_proj_b=rng.normal(size=C) if bias else None)


def _swiglu_cases(rng):
    return [Case("B = 2, T = 3, C = 4, I = 6", _swiglu_inputs(rng, 2, 3, 4, 6)),
            Case("T = 1, B = 1", _swiglu_inputs(rng, 1, 1, 5, 3)),
            Case("no biases (Llama)", _swiglu_inputs(rng, 2, 2, 4, 8, bias=False)),
            Case("I = 1: one gated unit", _swiglu_inputs(rng, 1, 4, 3, 1))]


exercise("swiglu_forward", "Llama's MLP: c_proj(silu(gate) * up), [gate | up] = c_fc(x)",
         reference=block.swiglu_forward, returns=("out", "cache"), compare=("out",),
         cases=_swiglu_cases)


def _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, swap=False, interleaved=False, add=False,
            both=False, act=None):
    h, _ = layers.linear_forward(x, c_fc_w, c_fc_b)
    I = c_proj_w.shape[0]
    gate, up = (h[..., 0::2], h[..., 1::2]) if interleaved else (h[..., :I], h[..., I:])
    if swap:
        gate, up = up, gate
    act = act or (lambda z: layers.silu_forward(z)[0])
    if both:
        up = act(up)
    m = act(gate) + up if add else act(gate) * up
    return layers.linear_forward(m, c_proj_w, c_proj_b)[0], None


@mistake("swiglu_forward", "c_fc's output is [gate | up]: the first I columns are the gate, "
                           "which goes through SiLU; the up half does not")
def _(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, swap=True)


@mistake("swiglu_forward", "[gate | up] are two halves of I columns each (h[..., :I], "
                           "h[..., I:]), not alternating columns")
def _(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, interleaved=True)


@mistake("swiglu_forward", "the gate multiplies: silu(gate) * up, not silu(gate) + up")
def _(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, add=True)


@mistake("swiglu_forward", "only the gate goes through SiLU: silu(gate) * up, not silu(gate) * "
                           "silu(up)")
def _(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b, both=True)


@mistake("swiglu_forward", "the gate's activation is SiLU, z * sigmoid(z), not GELU")
def _(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    return _swiglu(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b,
                   act=lambda z: layers.gelu_forward(z)[0])


def _swiglu_grad_cases(rng):
    return [Case("B = 2, T = 3, C = 4, I = 6", _swiglu_inputs(rng, 2, 3, 4, 6)),
            Case("T = 1, B = 1", _swiglu_inputs(rng, 1, 1, 5, 3)),
            Case("no biases: dc_fc_b, dc_proj_b are None", _swiglu_inputs(rng, 2, 2, 3, 4,
                                                                          bias=False))]


exercise("swiglu_backward", "SwiGLU's backward: the product silu(gate) * up, then [dgate | dup] "
         "through c_fc", reference=block.swiglu_backward, forward=block.swiglu_forward,
         returns=("dx", "dc_fc_w", "dc_fc_b", "dc_proj_w", "dc_proj_b"),
         cases=_swiglu_grad_cases)


def _swiglu_backward(dout, cache, up_factor=True, dup_from_gate=False, swap=False,
                     through_silu=True):
    dm, dc_proj_w, dc_proj_b = layers.linear_backward(dout, cache.c_proj)
    da = dm * cache.up if up_factor else dm
    dgate = layers.silu_backward(da, cache.silu) if through_silu else da
    dup = dm * (cache.silu.x if dup_from_gate else cache.a)
    dh = np.concatenate([dup, dgate] if swap else [dgate, dup], axis=-1)
    dx, dc_fc_w, dc_fc_b = layers.linear_backward(dh, cache.c_fc)
    return dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b


@mistake("swiglu_backward", "with m = silu(gate) * up, dsilu(gate) = dm * up: the factor up is "
                            "missing before silu_backward")
def _(dout, cache):
    return _swiglu_backward(dout, cache, up_factor=False)


@mistake("swiglu_backward", "dup = dm * a with a = silu(gate) (cache.a), not the gate itself")
def _(dout, cache):
    return _swiglu_backward(dout, cache, dup_from_gate=True)


@mistake("swiglu_backward", "d[gate | up] keeps c_fc's column order: the gate's gradient in the "
                            "first I columns, then the up's")
def _(dout, cache):
    return _swiglu_backward(dout, cache, swap=True)


@mistake("swiglu_backward", "the gate's gradient goes back through SiLU: silu_backward(dm * up, "
                            "cache.silu)")
def _(dout, cache):
    return _swiglu_backward(dout, cache, through_silu=False)


# ----------------------------------------------------------------------------------------------
# Rotary positions: the tables, the rotation and its inverse
# ----------------------------------------------------------------------------------------------

def _tables_cases(rng):
    return [Case("T = 4, hs = 8", dict(T=4, hs=8, dtype=np.float64)),
            Case("start = 5: positions 5 .. 7 (a decode step)", dict(T=3, hs=4, start=5,
                                                                    dtype=np.float64)),
            Case("theta = 10", dict(T=6, hs=6, theta=10.0, dtype=np.float64)),
            Case("hs = 2: one pair", dict(T=5, hs=2, dtype=np.float64)),
            Case("float32 tables at positions 3000 .. 3003", dict(T=4, hs=8, start=3000,
                                                                 dtype=np.float32))]


exercise("rope_tables", "the rotary tables: cos and sin of t * theta^(-2i / hs), each angle "
         "twice", reference=rope.rope_tables, returns=("cos", "sin"), cases=_tables_cases,
         float32=False, bound=1e-6)   # float32 tables: one rounding step apart is 6e-8


def _tables(T, hs, theta, start, dtype, exponent=2, layout="halves", use_start=True,
            inverse=False, in_dtype=False):
    ft = dtype if in_dtype else np.float64
    inv_freq = theta ** (-exponent * np.arange(0, hs // 2, dtype=ft) / hs)
    if inverse:
        inv_freq = 1.0 / inv_freq
    pos = np.arange(start if use_start else 0, (start if use_start else 0) + T, dtype=ft)
    angles = np.outer(pos, inv_freq).astype(ft)
    if layout == "halves":
        angles = np.concatenate([angles, angles], axis=-1)
    else:
        angles = np.repeat(angles, 2, axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


@mistake("rope_tables", "w_i = theta^(-2i / hs), i = 0 .. hs/2 - 1: the exponent is 2i / hs "
                        "(np.arange(0, hs, 2) / hs), not i / hs")
def _(T, hs, theta=10000.0, start=0, dtype=np.float32):
    return _tables(T, hs, theta, start, dtype, exponent=1)


@mistake("rope_tables", "each angle appears twice as [angles, angles]: channel i pairs with "
                        "i + hs/2 (Hugging Face's convention); np.repeat pairs 2i with 2i + 1")
def _(T, hs, theta=10000.0, start=0, dtype=np.float32):
    return _tables(T, hs, theta, start, dtype, layout="repeat")


@mistake("rope_tables", "the positions are start .. start + T - 1: the start is missing")
def _(T, hs, theta=10000.0, start=0, dtype=np.float32):
    return _tables(T, hs, theta, start, dtype, use_start=False)


@mistake("rope_tables", "the angle is t * w_i with w_i = theta^(-2i / hs) <= 1 (pair 0 turns "
                        "fastest), not t / w_i")
def _(T, hs, theta=10000.0, start=0, dtype=np.float32):
    return _tables(T, hs, theta, start, dtype, inverse=True)


@mistake("rope_tables", "compute the angles in float64 and round only the tables to dtype: "
                        "float32 angles of large positions lose digits (2e-5 rad at t = 3000)")
def _(T, hs, theta=10000.0, start=0, dtype=np.float32):
    return _tables(T, hs, theta, start, dtype, in_dtype=True)


def _rope_inputs(rng, shape, start=0, theta=10000.0):
    T, hs = shape[-2], shape[-1]
    cos, sin = rope.rope_tables(T, hs, theta, start, dtype=np.float64)
    return dict(x=rng.normal(size=shape), cos=cos, sin=sin)


def _rope_cases(rng):
    return [Case("(B, nh, T, hs) = (2, 2, 4, 6)", _rope_inputs(rng, (2, 2, 4, 6))),
            Case("T = 1 at position 7", _rope_inputs(rng, (1, 1, 1, 4), start=7)),
            Case("hs = 2: one pair", _rope_inputs(rng, (2, 5, 2))),
            Case("2-D x (T, hs), theta = 10", _rope_inputs(rng, (6, 8), theta=10.0))]


exercise("rope_forward", "the rotary embedding: every channel pair (i, i + hs/2) turned by its "
         "angle", reference=rope.rope_forward, returns=("out", "cache"), compare=("out",),
         cases=_rope_cases)


def _halves(x):
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


@mistake("rope_forward", "rotate_half([x1, x2]) = [-x2, x1]: [x2, -x1] turns every pair the "
                         "other way")
def _(x, cos, sin):
    x1, x2 = _halves(x)
    return x * cos + np.concatenate([x2, -x1], axis=-1) * sin, None


@mistake("rope_forward", "channel i pairs with channel i + hs/2 (rotate the two halves, as the "
                         "tables are laid out), not with its neighbour 2i + 1")
def _(x, cos, sin):
    turned = np.empty_like(x)
    turned[..., 0::2], turned[..., 1::2] = -x[..., 1::2], x[..., 0::2]
    return x * cos + turned * sin, None


@mistake("rope_forward", "x * cos + rotate_half(x) * sin: cos and sin are swapped")
def _(x, cos, sin):
    return x * sin + rope.rotate_half(x) * cos, None


@mistake("rope_forward", "the sin term is rotate_half(x) * sin: x * sin does not mix the two "
                         "channels of a pair")
def _(x, cos, sin):
    return x * cos + x * sin, None


def _rope_grad_cases(rng):
    return [Case("(B, nh, T, hs) = (2, 2, 3, 4)", _rope_inputs(rng, (2, 2, 3, 4))),
            Case("T = 1 at position 7", _rope_inputs(rng, (1, 1, 1, 4), start=7)),
            Case("2-D x (T, hs), theta = 10", _rope_inputs(rng, (5, 6), theta=10.0))]


exercise("rope_backward", "the rotary embedding's backward: the inverse rotation",
         reference=rope.rope_backward, forward=rope.rope_forward, returns=("dx",),
         cases=_rope_grad_cases)


@mistake("rope_backward", "the backward is the inverse rotation, by the negated angle: dout * cos "
                          "- rotate_half(dout) * sin (the forward's formula turns further)")
def _(dout, cache):
    return dout * cache.cos + rope.rotate_half(dout) * cache.sin


@mistake("rope_backward", "dx = R^T dout is a rotation too: the sin term is missing")
def _(dout, cache):
    return dout * cache.cos


@mistake("rope_backward", "the sin term turns the gradient's pairs: rotate_half(dout) * sin, not "
                          "dout * sin")
def _(dout, cache):
    return dout * cache.cos - dout * cache.sin


# ----------------------------------------------------------------------------------------------
# Grouped-query attention
# ----------------------------------------------------------------------------------------------

def _gqa_inputs(rng, B, T, nh, nkv, hs, bias=True, rope_at=None, cached=0, **extra):
    C, width = nh * hs, (nh + 2 * (nkv or nh)) * hs
    inputs = dict(x=rng.normal(size=(B, T, C)), c_attn_w=rng.normal(size=(C, width)) * 0.5,
                  c_attn_b=rng.normal(size=width) * 0.5 if bias else None,
                  c_proj_w=rng.normal(size=(C, C)) * 0.5,
                  c_proj_b=rng.normal(size=C) if bias else None, n_head=nh)
    if nkv is not None:
        inputs["n_kv_head"] = nkv
    if rope_at is not None:
        inputs["rope"] = rope.rope_tables(T, hs, start=rope_at, dtype=np.float64)
    if cached:
        kv = attention.KVCache(n_layer=2, B=B, n_kv_head=nkv, max_T=cached + T + 2,
                               head_size=hs, dtype=np.float64)
        kv.k[:, :, :, :cached] = rng.normal(size=(2, B, nkv, cached, hs))
        kv.v[:, :, :, :cached] = rng.normal(size=(2, B, nkv, cached, hs))
        kv.length = cached
        inputs.update(kv_cache=kv, layer=1)
    return {**inputs, **extra}


def _gqa_cases(rng):
    return [Case("nh = 4, nkv = 2: groups of 2", _gqa_inputs(rng, 2, 4, 4, 2, 2)),
            Case("multi-query: nkv = 1", _gqa_inputs(rng, 1, 3, 3, 1, 2)),
            Case("n_kv_head None: multi-head", _gqa_inputs(rng, 1, 3, 2, None, 3)),
            Case("rotary positions, no biases (Llama)", _gqa_inputs(rng, 1, 5, 4, 2, 4,
                                                                    bias=False, rope_at=0)),
            Case("a decode step: T = 1 at position 3, rope, KV cache",
                 _gqa_inputs(rng, 1, 1, 4, 2, 2, bias=False, rope_at=3, cached=3))]


exercise("gqa_forward", "grouped-query attention: nkv key/value heads, each shared by a group "
         "of nh / nkv query heads; rotary q and k", reference=attention.mha_forward,
         returns=("out", "cache"), compare=("out",), cases=_gqa_cases)


def _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope_tables, kv_cache,
         layer, tile=False, equal_thirds=False, none_is_nh=True, rotate_k=True, rotate_v=False,
         rotate_after_cache=False, merge="right"):
    B, T, C = x.shape
    n_kv = n_head if n_kv_head is None and none_is_nh else n_kv_head
    hs = C // n_head
    g = n_head // n_kv
    qkv, _ = layers.linear_forward(x, c_attn_w, c_attn_b)
    if equal_thirds:
        q, k, v = np.split(qkv, 3, axis=-1)
    heads = qkv.reshape(B, T, n_head + 2 * n_kv, hs).transpose(0, 2, 1, 3)
    q, k, v = heads[:, :n_head], heads[:, n_head:n_head + n_kv], heads[:, n_head + n_kv:]
    if rope_tables is not None and not rotate_after_cache:
        q = rope.rope_forward(q, *rope_tables)[0]
        k = rope.rope_forward(k, *rope_tables)[0] if rotate_k else k
        v = rope.rope_forward(v, *rope_tables)[0] if rotate_v else v
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)
    if rope_tables is not None and rotate_after_cache:
        q, k = rope.rope_forward(q, *rope_tables)[0], rope.rope_forward(k, *rope_tables)[0]
    if tile:                                            # head h gets key head h % nkv
        y, _ = attention.sdpa_forward(q, np.tile(k, (1, g, 1, 1)), np.tile(v, (1, g, 1, 1)))
        y = y.reshape(B, n_kv, g, T, hs)
    else:
        y, _ = attention.sdpa_forward(q.reshape(B, n_kv, g, T, hs), k[:, :, None],
                                      v[:, :, None])    # (B, nkv, g, T, hs)
    if merge == "right":
        y = y.reshape(B, n_head, T, hs).transpose(0, 2, 1, 3).reshape(B, T, C)
    else:                                               # heads in the order r * nkv + j
        y = y.transpose(0, 3, 2, 1, 4).reshape(B, T, C)
    return layers.linear_forward(y, c_proj_w, c_proj_b)[0], None


@mistake("gqa_forward", "query head h shares key/value head h // g (heads j g .. j g + g - 1 "
                        "form group j): view q as (B, nkv, g, T, hs); np.tile pairs head h with "
                        "key head h % nkv")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, tile=True)


@mistake("gqa_forward", "c_attn's output is [queries | keys | values], nh hs + nkv hs + nkv hs "
                        "columns: not three equal thirds")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, equal_thirds=True)


@mistake("gqa_forward", "n_kv_head None means as many key/value heads as query heads "
                        "(multi-head attention)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, none_is_nh=False)


@mistake("gqa_forward", "turn the queries and the keys, by the same tables: rope_forward on both")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, rotate_k=False)


@mistake("gqa_forward", "the values are not turned: positions go into the scores only (q and k)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, rotate_v=True)


@mistake("gqa_forward", "turn the new keys before kv_cache.append: the cached keys already "
                        "carry their own positions")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, rotate_after_cache=True)


@mistake("gqa_forward", "merge the heads back in the order of the query heads, h = j g + r: "
                        "(B, nkv, g, T, hs) -> (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _gqa(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope, kv_cache,
                layer, merge="groups last")


def _gqa_grad_cases(rng):
    return [Case("nh = 4, nkv = 2, B = 2, T = 3", _gqa_inputs(rng, 2, 3, 4, 2, 2)),
            Case("T = 1, multi-query (nkv = 1)", _gqa_inputs(rng, 1, 1, 3, 1, 2)),
            Case("rotary positions, no biases (Llama)", _gqa_inputs(rng, 1, 4, 4, 2, 4,
                                                                    bias=False, rope_at=0)),
            Case("n_kv_head None: multi-head", _gqa_inputs(rng, 1, 3, 2, None, 2))]


exercise("gqa_backward", "grouped-query attention's backward: each key/value head sums the "
         "gradients of its group", reference=attention.mha_backward,
         forward=attention.mha_forward, returns=("dx", "dc_attn_w", "dc_attn_b", "dc_proj_w",
                                                 "dc_proj_b"), cases=_gqa_grad_cases)


def _gqa_backward(dout, cache, groups="sum", split="right", unrotate="rope_backward"):
    B, T, C = dout.shape
    _, n_kv, g, _, hs = cache.sdpa.q.shape
    n_head = n_kv * g
    dy, dc_proj_w, dc_proj_b = layers.linear_backward(dout, cache.c_proj)
    if split == "right":
        dy = dy.reshape(B, T, n_kv, g, hs).transpose(0, 2, 3, 1, 4)
    else:
        dy = dy.reshape(B, T, g, n_kv, hs).transpose(0, 3, 2, 1, 4)
    dq, dk, dv = attention.sdpa_backward(dy, cache.sdpa)
    dq = dq.reshape(B, n_head, T, hs)
    reduce = {"sum": lambda d: d.sum(axis=2), "mean": lambda d: d.mean(axis=2),
              "first": lambda d: d[:, :, 0]}[groups]
    dk, dv = reduce(dk), reduce(dv)
    if cache.rope is not None and unrotate == "rope_backward":
        dq, dk = rope.rope_backward(dq, cache.rope), rope.rope_backward(dk, cache.rope)
    elif cache.rope is not None and unrotate == "rope_forward":
        dq, dk = rope.rope_forward(dq, *cache.rope)[0], rope.rope_forward(dk, *cache.rope)[0]
    dqkv = np.concatenate([dq, dk, dv], axis=1).transpose(0, 2, 1, 3).reshape(B, T, -1)
    dx, dc_attn_w, dc_attn_b = layers.linear_backward(dqkv, cache.c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b


@mistake("gqa_backward", "each key/value head served all g query heads of its group: sum dk "
                         "and dv over the group axis (axis 2), not only its first head")
def _(dout, cache):
    return _gqa_backward(dout, cache, groups="first")


@mistake("gqa_backward", "the gradients of a shared key add up (the chain rule over its g "
                         "uses): a sum over the group, not a mean")
def _(dout, cache):
    return _gqa_backward(dout, cache, groups="mean")


@mistake("gqa_backward", "dy (B, T, C) splits as the heads were merged, head h = j g + r: "
                         "reshape (B, T, nkv, g, hs), then transpose to (B, nkv, g, T, hs)")
def _(dout, cache):
    return _gqa_backward(dout, cache, split="groups last")


@mistake("gqa_backward", "the rotation is undone on the way back: dq and dk go through "
                         "rope_backward")
def _(dout, cache):
    return _gqa_backward(dout, cache, unrotate=None)


@mistake("gqa_backward", "rope_backward, not rope_forward: the way back turns by the negated "
                         "angle")
def _(dout, cache):
    return _gqa_backward(dout, cache, unrotate="rope_forward")
