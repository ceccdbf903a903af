"""Exercises of notebook 06: backward passes by hand (minillm/core/layers.py, attention.py).

    linear_backward          dx, dweight, dbias of out = x @ weight + bias
    softmax_backward         dx = y * (dout - sum(dout * y))
    cross_entropy_backward   dlogits = (probs - onehot) / n, zero where the target is ignored
    layernorm_backward       dx through the mean and rstd, dweight, dbias (None without bias)
    gelu_backward            the literal GELU's derivative (the product rule, tanh')
    sdpa_backward            in attention.py, beside the attention's forward

Every gradient is compared with a float64 numerical gradient of sum(out * dout).
Shape legend: B batch, T time, S time of the keys, C channels, V vocabulary size, hs head size,
N = B * T positions.

>>> from minillm.exercises import check
>>> check("linear_backward", layers.linear_backward, verbose=False).passed
True
"""
import numpy as np

from ..core import layers
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# Linear
# ----------------------------------------------------------------------------------------------

def _linear_cases(rng):
    def case(label, lead, n_in, n_out, bias=True):
        inputs = dict(x=rng.normal(size=(*lead, n_in)), weight=rng.normal(size=(n_in, n_out)))
        if bias:
            inputs["bias"] = rng.normal(size=n_out)
        return Case(label, inputs)
    return [case("(B, T, C), square weight", (2, 3), 4, 4),
            case("T = 1, B = 1", (1, 1), 3, 5),
            case("2-D input (N, in)", (6,), 5, 3),
            case("no bias: dbias is None", (2, 2), 3, 2, bias=False)]


exercise("linear_backward", "backward of out = x @ weight + bias (weight stored (in, out))",
         reference=layers.linear_backward, forward=layers.linear_forward,
         returns=("dx", "dweight", "dbias"), cases=_linear_cases)


def _linear_2d(dout, cache):
    return dout.reshape(-1, dout.shape[-1]), cache.x.reshape(-1, cache.x.shape[-1])


def _bias(cache, dbias):
    return dbias if cache.has_bias else None


@mistake("linear_backward", "dx uses weight where weight.T belongs: out = x @ weight, so "
                            "dx = dout @ weight.T")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return (d2 @ cache.weight).reshape(cache.x.shape), x2.T @ d2, _bias(cache, d2.sum(axis=0))


@mistake("linear_backward", "dweight is transposed: dweight = x.T @ dout, shaped (in, out) "
                            "like weight")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return (d2 @ cache.weight.T).reshape(cache.x.shape), d2.T @ x2, _bias(cache, d2.sum(axis=0))


@mistake("linear_backward", "dbias is summed over the wrong axis: sum over the rows (every "
                            "position), one value per output feature")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return (d2 @ cache.weight.T).reshape(cache.x.shape), x2.T @ d2, _bias(cache, d2.sum(axis=1))


@mistake("linear_backward", "dbias is summed over the batch axis only: every position (b, t) "
                            "used the bias, so sum over all leading axes (reshape dout to (N, "
                            "out) first)")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return (d2 @ cache.weight.T).reshape(cache.x.shape), x2.T @ d2, _bias(cache, dout.sum(axis=0))


@mistake("linear_backward", "a 1/N that does not belong: the gradients of weight and bias are "
                            "sums over the positions, not means (dout already carries the "
                            "loss's 1/N)")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    n = 1.0 / d2.shape[0]
    dbias = _bias(cache, d2.sum(axis=0) * n)
    return (d2 @ cache.weight.T).reshape(cache.x.shape), x2.T @ d2 * n, dbias


@mistake("linear_backward", "dx must have the shape of x (..., in): reshape the 2-D product "
                            "back")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return d2 @ cache.weight.T, x2.T @ d2, _bias(cache, d2.sum(axis=0))


@mistake("linear_backward", "a layer without bias (cache.has_bias False) returns dbias = None")
def _(dout, cache):
    d2, x2 = _linear_2d(dout, cache)
    return (d2 @ cache.weight.T).reshape(cache.x.shape), x2.T @ d2, d2.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------

def _softmax_cases(rng):
    return [Case("square (N, K) = (4, 4)", dict(x=rng.normal(size=(4, 4)))),
            Case("(B, T, K)", dict(x=rng.normal(size=(2, 3, 5)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 6)))),
            Case("peaked rows (logits * 8)", dict(x=rng.normal(size=(3, 7)) * 8.0))]


exercise("softmax_backward", "backward of y = softmax(x) over the last axis (Jacobian-vector "
         "product)", reference=layers.softmax_backward, forward=layers.softmax_forward,
         returns=("dx",), cases=_softmax_cases)


@mistake("softmax_backward", "the - sum(dout * y) term is missing: every y_j depends on every "
                             "x_i of its row (the Jacobian is diag(y) - y y^T)")
def _(dout, cache):
    return cache.y * dout


@mistake("softmax_backward", "only the diagonal of the Jacobian, y (1 - y): the off-diagonal "
                             "terms -y_i y_j are missing, which gives y * (dout - sum(dout * y))")
def _(dout, cache):
    return cache.y * (1.0 - cache.y) * dout


@mistake("softmax_backward", "summed over the wrong axis: the sum runs over the last axis (the "
                             "K entries of one softmax row)")
def _(dout, cache):
    y = cache.y
    return y * (dout - (dout * y).sum(axis=0, keepdims=True))


@mistake("softmax_backward", "the row sums need keepdims=True: shaped (...,) they broadcast "
                             "along the wrong axis; keep them (..., 1)")
def _(dout, cache):
    y = cache.y
    return y * (dout - (dout * y).sum(axis=-1))


# ----------------------------------------------------------------------------------------------
# Softmax + cross-entropy
# ----------------------------------------------------------------------------------------------

def _ce_cases(rng):
    def case(label, B, T, V, ignored=()):
        targets = rng.integers(0, V, size=(B, T))
        targets.reshape(-1)[list(ignored)] = -1
        return Case(label, dict(logits=rng.normal(size=(B, T, V)) * 2.0, targets=targets))
    return [case("(B, T, V), every target kept", 2, 3, 5),
            case("ignored targets (-1)", 2, 4, 6, ignored=(1, 2, 6)),
            case("T = 1, B = 1", 1, 1, 4),
            case("all but one target ignored", 1, 5, 3, ignored=(0, 1, 3, 4))]


exercise("cross_entropy_backward", "the fused softmax + cross-entropy gradient, with ignored "
         "targets", reference=layers.cross_entropy_backward, forward=layers.cross_entropy_forward,
         returns=("dlogits",), cases=_ce_cases)


def _ce_backward(dloss, cache, n=None, mask=True, use_dloss=True, sign=1.0):
    N = cache.targets.size
    d = cache.probs.copy()
    d[np.arange(N), cache.targets] -= 1.0
    d *= sign * (dloss if use_dloss else 1.0) / (cache.n if n is None else n)
    if mask:
        d *= cache.keep[:, None]
    return d.reshape(cache.shape)


@mistake("cross_entropy_backward", "the loss is a mean over the n kept positions: divide by "
                                   "cache.n, not by all B * T positions")
def _(dloss, cache):
    return _ce_backward(dloss, cache, n=cache.targets.size)


@mistake("cross_entropy_backward", "ignored positions do not count: their gradient is zero "
                                   "(multiply by cache.keep)")
def _(dloss, cache):
    return _ce_backward(dloss, cache, mask=False)


@mistake("cross_entropy_backward", "multiply by dloss, the gradient arriving at the loss (1.0 "
                                   "for the loss itself, but not always)")
def _(dloss, cache):
    return _ce_backward(dloss, cache, use_dloss=False)


@mistake("cross_entropy_backward", "the loss is a mean: the gradient has a factor 1 / n")
def _(dloss, cache):
    return _ce_backward(dloss, cache, n=1.0)


@mistake("cross_entropy_backward", "the sign: d loss / d logits = probs - onehot(target), "
                                   "not onehot - probs")
def _(dloss, cache):
    return _ce_backward(dloss, cache, sign=-1.0)


# ----------------------------------------------------------------------------------------------
# LayerNorm
# ----------------------------------------------------------------------------------------------

def _layernorm_cases(rng):
    def case(label, shape, eps=1e-5, bias=True):
        C = shape[-1]
        return Case(label, dict(x=rng.normal(size=shape) * 2.0 + 0.5,
                                weight=rng.normal(size=C) + 1.0,
                                bias=rng.normal(size=C) if bias else None, eps=eps))
    return [case("(B, T, C)", (2, 3, 6)), case("T = 1, B = 1", (1, 1, 5)),
            case("2-D input (N, C), eps = 0.1", (4, 3), eps=0.1),
            case("no bias: dbias is None", (2, 2, 4), bias=False)]


exercise("layernorm_backward", "LayerNorm's backward: dx through mean and rstd, dweight, dbias",
         reference=layers.layernorm_backward, forward=layers.layernorm_forward,
         returns=("dx", "dweight", "dbias"), cases=_layernorm_cases)


def _ln_backward(dout, cache, mean_g=True, mean_gx=True, inv_c=True, use_weight=True,
                 times_rstd=True, use_xhat=True, axis=None, none_without_bias=True):
    x, weight, mean, rstd, has_bias = cache
    xhat = (x - mean) * rstd
    C = x.shape[-1]
    flat = (lambda a: a.sum(axis=0)) if axis == 0 else (lambda a: a.reshape(-1, C).sum(axis=0))
    dweight = flat(dout * (xhat if use_xhat else x))
    dbias = flat(dout) if has_bias or not none_without_bias else None
    g = dout * weight if use_weight else dout
    k = 1.0 / C if inv_c else 1.0
    dx = g.copy()
    if mean_g:
        dx -= g.sum(axis=-1, keepdims=True) * k
    if mean_gx:
        dx -= xhat * ((g * xhat).sum(axis=-1, keepdims=True) * k)
    return (dx * rstd if times_rstd else dx), dweight, dbias


@mistake("layernorm_backward", "the - xhat * mean(g * xhat) term is missing: rstd depends on x "
                               "(through the variance) too")
def _(dout, cache):
    return _ln_backward(dout, cache, mean_gx=False)


@mistake("layernorm_backward", "the - mean(g) term is missing: the mean depends on x too")
def _(dout, cache):
    return _ln_backward(dout, cache, mean_g=False)


@mistake("layernorm_backward", "a missing 1/C: mean(g) and mean(g * xhat) are means over the C "
                               "channels, not sums")
def _(dout, cache):
    return _ln_backward(dout, cache, inv_c=False)


@mistake("layernorm_backward", "the gradient reaching xhat is g = dout * weight: the weight is "
                               "missing")
def _(dout, cache):
    return _ln_backward(dout, cache, use_weight=False)


@mistake("layernorm_backward", "dx is missing the final factor rstd")
def _(dout, cache):
    return _ln_backward(dout, cache, times_rstd=False)


@mistake("layernorm_backward", "dweight = sum(dout * xhat): the normalised x, not x itself")
def _(dout, cache):
    return _ln_backward(dout, cache, use_xhat=False)


@mistake("layernorm_backward", "dweight and dbias are summed over the batch axis only: sum over "
                               "every position (reshape to (N, C))")
def _(dout, cache):
    return _ln_backward(dout, cache, axis=0)


@mistake("layernorm_backward", "a LayerNorm without bias (cache.has_bias False) returns dbias = "
                               "None")
def _(dout, cache):
    return _ln_backward(dout, cache, none_without_bias=False)


# ----------------------------------------------------------------------------------------------
# GELU
# ----------------------------------------------------------------------------------------------

def _gelu_cases(rng):
    return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 5)))),
            Case("the tails, |x| up to 6", dict(x=np.linspace(-6.0, 6.0, 25)))]


exercise("gelu_backward", "the derivative of GELU(x) = 0.5 x (1 + tanh z), from its cache "
         "(x, t = tanh z)", reference=layers.gelu_backward, forward=layers.gelu_forward,
         returns=("dx",), cases=_gelu_cases)


def _gelu_backward(dout, cache, product=True, tanh_prime=None, cubic=True):
    x, t = cache
    dz = layers.GELU_SCALE * (1.0 + (3.0 * 0.044715 * x * x if cubic else 0.0))
    d_tanh = 1.0 - t * t if tanh_prime is None else tanh_prime(t)
    grad = 0.5 * (1.0 + t) + (0.5 * x * d_tanh * dz if product else 0.0)
    return dout * grad


@mistake("gelu_backward", "the product rule: d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x dt/dx, "
                          "both terms")
def _(dout, cache):
    return _gelu_backward(dout, cache, product=False)


@mistake("gelu_backward", "tanh'(z) = 1 - tanh(z)^2 = 1 - t * t, not 1 - t")
def _(dout, cache):
    return _gelu_backward(dout, cache, tanh_prime=lambda t: 1.0 - t)


@mistake("gelu_backward", "dz/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2): the cubic term has a "
                          "derivative too")
def _(dout, cache):
    return _gelu_backward(dout, cache, cubic=False)
