"""The GPT building blocks, each a pure forward/backward pair.

Every layer follows one contract (as in CS231n's layers.py):

    out, cache = x_forward(inputs..., params...)
    grads      = x_backward(dout, cache)

``cache`` is a small NamedTuple holding only what the backward pass needs; ``dout`` is the
gradient of the loss with respect to ``out`` and has its shape. Nothing here loops over batch or
time, and every function keeps the dtype it is given (float32 in, float32 out): constants are
plain Python floats, which NumPy never uses to promote an array.

Shape legend: B batch, T time (sequence length), C channels (n_embd), V vocabulary size,
K any last axis (a softmax's classes), N the leading dimensions flattened together.
"""
import math
from typing import NamedTuple

import numpy as np


# ----------------------------------------------------------------------------------------------
# Token and position embeddings
# ----------------------------------------------------------------------------------------------

class EmbeddingCache(NamedTuple):
    idx: np.ndarray              # (B, T) the token ids that were looked up
    vocab_size: int              # V, the number of rows of the table


def embedding_forward(idx, weight):
    """Look up one row of ``weight`` per token id: ``out[b, t] = weight[idx[b, t]]``.

    idx: int array (B, T); weight: (V, C) -> out: (B, T, C)

    >>> out, cache = embedding_forward(np.array([[2, 0]]), np.eye(3))
    >>> out.shape
    (1, 2, 3)
    """
    out = weight[idx]                                  # (B, T, C)
    return out, EmbeddingCache(idx, weight.shape[0])


def embedding_backward(dout, cache):
    """Gradient of the lookup: scatter-add each ``dout[b, t]`` into row ``idx[b, t]``.

    A token that appears several times receives the sum of its gradients, which is why this is
    ``np.add.at`` (unbuffered) and not ``dweight[idx] += dout`` (which would keep only one).
    dout: (B, T, C) -> dweight: (V, C)
    """
    C = dout.shape[-1]
    dweight = np.zeros((cache.vocab_size, C), dtype=dout.dtype)  # (V, C)
    np.add.at(dweight, cache.idx.reshape(-1), dout.reshape(-1, C))
    return dweight


class PositionCache(NamedTuple):
    block_size: int              # rows of wpe
    start: int                   # first position used (> 0 when generating with a KV cache)


def position_embedding_forward(wpe, T, start=0):
    """Learned absolute positions: rows start .. start+T-1 of ``wpe``.

    wpe: (block_size, C) -> out: (T, C), broadcast over the batch when added to token embeddings.

    >>> pos, cache = position_embedding_forward(np.arange(8.0).reshape(4, 2), T=2, start=1)
    >>> pos
    array([[2., 3.],
           [4., 5.]])
    """
    return wpe[start:start + T], PositionCache(wpe.shape[0], start)


def position_embedding_backward(dout, cache):
    """dout: (B, T, C) (the gradient of tok_emb + pos_emb) -> dwpe: (block_size, C).

    Every sequence of the batch used the same rows, so their gradients add up; rows that were
    not used get zero gradient.
    """
    B, T, C = dout.shape
    dwpe = np.zeros((cache.block_size, C), dtype=dout.dtype)  # (block_size, C)
    dwpe[cache.start:cache.start + T] = dout.sum(axis=0)     # (T, C)
    return dwpe


def sinusoidal_encoding(T, C, dtype=np.float32):
    """Fixed sinusoidal positions of "Attention Is All You Need" (no parameters, no gradient).

        PE[pos, 2i]   = sin(pos / 10000^(2i / C))
        PE[pos, 2i+1] = cos(pos / 10000^(2i / C))

    Returns a (T, C) array. C must be even.

    >>> sinusoidal_encoding(3, 4)[0]
    array([0., 1., 0., 1.], dtype=float32)
    """
    if C % 2:
        raise ValueError(f"sinusoidal positions need an even n_embd, got {C}")
    pos = np.arange(T, dtype=np.float64)[:, None]                      # (T, 1)
    inv_freq = 10000.0 ** (-np.arange(0, C, 2, dtype=np.float64) / C)  # (C/2,)
    pe = np.empty((T, C), dtype=np.float64)
    pe[:, 0::2] = np.sin(pos * inv_freq)
    pe[:, 1::2] = np.cos(pos * inv_freq)
    return pe.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Linear
# ----------------------------------------------------------------------------------------------

class LinearCache(NamedTuple):
    x: np.ndarray                # (..., in) the input
    weight: np.ndarray           # (in, out)
    has_bias: bool               # False for a layer without bias (dbias is then None)


def linear_forward(x, weight, bias=None):
    """``out = x @ weight + bias`` with weight shaped (in, out), as GPT-2 checkpoints store it.

    x: (..., in); weight: (in, out); bias: (out,) or None -> out: (..., out)
    The leading dimensions are flattened so one 2-D matrix multiply does all the work.

    >>> out, _ = linear_forward(np.ones((2, 5, 3)), np.ones((3, 4)), np.zeros(4))
    >>> out.shape
    (2, 5, 4)
    """
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    out = x2 @ weight                                  # (N, out)
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[1]), LinearCache(x, weight, bias is not None)


def linear_backward(dout, cache):
    """dout: (..., out) -> dx: (..., in), dweight: (in, out), dbias: (out,) (None without bias).

        dx = dout @ weight^T,   dweight = x^T @ dout,   dbias = sum of dout over N
    """
    x, weight, has_bias = cache
    dout2 = dout.reshape(-1, dout.shape[-1])           # (N, out)
    x2 = x.reshape(-1, x.shape[-1])                    # (N, in)
    dx = (dout2 @ weight.T).reshape(x.shape)           # (..., in)
    dweight = x2.T @ dout2                             # (in, out)
    dbias = column_sums(dout2) if has_bias else None   # (out,)
    return dx, dweight, dbias


def column_sums(a):
    """``a.sum(axis=0)`` for a 2-D (N, K) array, as the product ones(N) @ a: BLAS adds the rows
    several times faster than NumPy's reduction on these shapes (the same numbers, summed in
    another order).

    >>> column_sums(np.arange(6.0).reshape(3, 2))
    array([6., 9.])
    """
    return np.ones(a.shape[0], dtype=a.dtype) @ a


# ----------------------------------------------------------------------------------------------
# LayerNorm
# ----------------------------------------------------------------------------------------------

class LayerNormCache(NamedTuple):
    x: np.ndarray                # (..., C) the input
    weight: np.ndarray           # (C,) the gain
    mean: np.ndarray             # (..., 1)
    rstd: np.ndarray             # (..., 1) 1 / sqrt(var + eps)
    has_bias: bool               # False for a LayerNorm without bias (dbias is then None)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """Normalise each vector over its last axis, then scale and shift.

        mean = mean(x),  rstd = 1 / sqrt(var(x) + eps),  out = (x - mean) * rstd * weight + bias

    x: (..., C); weight, bias: (C,) (bias None: no shift) -> out: (..., C). The normalised x is
    cheap to recompute, so the cache keeps x with the two statistics instead.

    >>> out, cache = layernorm_forward(np.array([[1.0, 3.0]]), np.ones(2), np.zeros(2))
    >>> out.round(3), cache.mean
    (array([[-1.,  1.]]), array([[2.]]))
    """
    inv_C = 1.0 / x.shape[-1]                          # sum * (1/C): np.mean, without its overhead
    mean = x.sum(axis=-1, keepdims=True) * inv_C       # (..., 1)
    xc = x - mean
    var = (xc * xc).sum(axis=-1, keepdims=True) * inv_C  # (..., 1), biased variance as in PyTorch
    rstd = 1.0 / np.sqrt(var + eps)                    # (..., 1)
    xhat = xc * rstd
    out = xhat * weight
    if bias is not None:
        out += bias
    return out, LayerNormCache(x, weight, mean, rstd, bias is not None)


def layernorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dweight: (C,), dbias: (C,) (None without bias).

    With xhat = (x - mean) * rstd and g = dout * weight (the gradient reaching xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    """
    x, weight, mean, rstd, has_bias = cache
    xhat = (x - mean) * rstd
    C = x.shape[-1]
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)  # (C,)
    dbias = dout.reshape(-1, C).sum(axis=0) if has_bias else None  # (C,)
    g = dout * weight
    inv_C = 1.0 / C
    dx = g - g.sum(axis=-1, keepdims=True) * inv_C
    dx -= xhat * ((g * xhat).sum(axis=-1, keepdims=True) * inv_C)
    dx *= rstd
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------------
# RMSNorm (Llama's normalisation: LayerNorm without the mean and the bias)
# ----------------------------------------------------------------------------------------------

class RMSNormCache(NamedTuple):
    x: np.ndarray                # (..., C) the input
    weight: np.ndarray           # (C,) the gain
    rstd: np.ndarray             # (..., 1) 1 / sqrt(mean(x^2) + eps)


def rmsnorm_forward(x, weight, eps=1e-5):
    """Divide each vector by its root mean square, then scale (Zhang & Sennrich 2019).

        rstd = 1 / sqrt(mean(x^2) + eps),   out = x * rstd * weight

    No mean is subtracted and there is no bias: only each vector's length is normalised.
    x: (..., C); weight: (C,) -> out: (..., C).

    >>> out, cache = rmsnorm_forward(np.array([[3.0, 4.0]]), np.ones(2), eps=0.0)
    >>> out.round(4), cache.rstd.shape                # the rms of (3, 4) is sqrt(12.5)
    (array([[0.8485, 1.1314]]), (1, 1))
    """
    inv_C = 1.0 / x.shape[-1]
    ms = (x * x).sum(axis=-1, keepdims=True) * inv_C   # (..., 1) mean of the squares
    rstd = 1.0 / np.sqrt(ms + eps)                     # (..., 1)
    out = x * rstd
    out *= weight
    return out, RMSNormCache(x, weight, rstd)


def rmsnorm_backward(dout, cache):
    """dout: (..., C) -> dx: (..., C), dweight: (C,).

    With xhat = x * rstd, g = dout * weight (the gradient reaching xhat) and
    d rstd / d x_j = -rstd^3 x_j / C:

        dx_j = g_j rstd + sum_i g_i x_i (-rstd^3 x_j / C) = rstd * (g_j - xhat_j * mean(g * xhat))

    LayerNorm's dx without its ``- mean(g)`` term, which came from the mean RMSNorm does not
    subtract.
    """
    x, weight, rstd = cache
    C = x.shape[-1]
    xhat = x * rstd
    dweight = (dout * xhat).reshape(-1, C).sum(axis=0)  # (C,)
    g = dout * weight
    dx = g - xhat * ((g * xhat).sum(axis=-1, keepdims=True) * (1.0 / C))
    dx *= rstd
    return dx, dweight


# ----------------------------------------------------------------------------------------------
# GELU (GPT-2's tanh approximation)
# ----------------------------------------------------------------------------------------------

GELU_SCALE = math.sqrt(2.0 / math.pi)   # a Python float: it never promotes float32 to float64


class GeluCache(NamedTuple):
    x: np.ndarray                # the input
    t: np.ndarray                # tanh(z), same shape


def gelu_forward(x):
    """GELU(x) = 0.5 x (1 + tanh(z)),  z = sqrt(2/pi) (x + 0.044715 x^3), element-wise.

    x: any shape -> out: same shape. (``x * x * x``, not ``x ** 3``: powers are many times
    slower on float32.)

    >>> out, _ = gelu_forward(np.array([-3.0, 0.0, 1.0]))
    >>> out.round(4)
    array([-0.0036,  0.    ,  0.8412])
    """
    t = np.tanh(GELU_SCALE * (x + 0.044715 * x * x * x))
    out = 0.5 * x * (1.0 + t)
    return out, GeluCache(x, t)


def gelu_backward(dout, cache):
    """d GELU/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) dz/dx,  dz/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).

    dout: same shape as x -> dx."""
    x, t = cache
    dz = GELU_SCALE * (1.0 + 3.0 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dz)


# The same GELU, fused and in place, for the training path. With s = 0.5 (1 + tanh(z)),
# GELU(x) = x * s, and every step is written into one buffer: a few passes over memory instead
# of a dozen. (s is also sigmoid(2z), which the backward uses.) Tested equal to gelu_forward /
# gelu_backward. tanh, not 1 / (1 + exp(-2z)): NumPy's float32 tanh is the faster kernel here
# (benchmarks/bench_layers.py).

GELU_A = -2.0 * GELU_SCALE              # the backward's constants: 2 dz/dx = -A - 3 B x^2
GELU_B = -2.0 * GELU_SCALE * 0.044715


class GeluFusedCache(NamedTuple):
    x: np.ndarray                # the input
    s: np.ndarray                # 0.5 (1 + tanh(z)) = sigmoid(2z), same shape


def gelu_fused_forward(x):
    """gelu_forward computed as x * s, s = 0.5 (1 + tanh(z)), in place. x: any shape -> same.

    >>> x = np.linspace(-4.0, 4.0, 9)
    >>> bool(np.allclose(gelu_fused_forward(x)[0], gelu_forward(x)[0]))
    True
    """
    s = x * x
    s *= GELU_SCALE * 0.044715
    s += GELU_SCALE
    s *= x                                             # z = sqrt(2/pi) (x + 0.044715 x^3)
    np.tanh(s, out=s)
    s += 1.0
    s *= 0.5                                           # s = 0.5 (1 + tanh(z))
    return x * s, GeluFusedCache(x, s)


def gelu_fused_backward(dout, cache):
    """d GELU/dx = s + x * 2 s (1 - s) * dz/dx (d sigmoid(2z)/dz = 2 s (1 - s)), in place."""
    x, s = cache
    g = x * x
    g *= -3.0 * GELU_B                                 # 2 * dz/dx = -GELU_A - 3 GELU_B x^2
    g -= GELU_A
    g *= x
    g *= 1.0 - s
    g += 1.0
    g *= s
    g *= dout
    return g


# ----------------------------------------------------------------------------------------------
# SiLU (the gate of Llama's SwiGLU MLP)
# ----------------------------------------------------------------------------------------------

class SiLUCache(NamedTuple):
    x: np.ndarray                # the input
    s: np.ndarray                # sigmoid(x), same shape


def silu_forward(x):
    """SiLU(x) = x * sigmoid(x) = x / (1 + exp(-x)), element-wise (also called swish).

    x: any shape -> out: same shape.

    >>> out, _ = silu_forward(np.array([-1.0, 0.0, 2.0]))
    >>> out.round(4)
    array([-0.2689,  0.    ,  1.7616])
    """
    s = np.negative(x)
    with np.errstate(over="ignore"):                   # exp(+large) = inf gives s = 0: correct
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)                            # s = sigmoid(x)
    return x * s, SiLUCache(x, s)


def silu_backward(dout, cache):
    """d SiLU/dx = s + x s (1 - s) = s (1 + x (1 - s)), since sigmoid' = s (1 - s)."""
    x, s = cache
    g = 1.0 - s
    g *= x
    g += 1.0
    g *= s
    g *= dout
    return g


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------

class DropoutCache(NamedTuple):
    mask: object                 # keep / (1 - p), same shape as x; None when dropout is off


def dropout_forward(x, p, *, rng=None, train=True, mask=None):
    """Inverted dropout: zero each element with probability p, scale survivors by 1/(1-p).

    The identity (mask None) when p == 0 or not training, so evaluation needs no rescaling.
    ``mask`` may be given to replay a fixed pattern (gradient checks do this); otherwise it is
    drawn from ``rng``. x: any shape -> out: same shape.

    >>> out, cache = dropout_forward(np.ones(4), 0.5, mask=np.array([2.0, 0.0, 2.0, 0.0]))
    >>> out
    array([2., 0., 2., 0.])
    """
    if mask is None:
        if not train or p == 0.0:
            return x, DropoutCache(None)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        if rng is None:
            raise ValueError("dropout in training mode needs an rng (np.random.default_rng)")
        keep = rng.random(x.shape, dtype=np.float32) >= p
        mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))
    return x * mask, DropoutCache(mask)


def dropout_backward(dout, cache):
    """The gradient flows only through the kept elements, with the same 1/(1-p) scale."""
    return dout if cache.mask is None else dout * cache.mask


# ----------------------------------------------------------------------------------------------
# Softmax and cross-entropy
# ----------------------------------------------------------------------------------------------

class SoftmaxCache(NamedTuple):
    y: np.ndarray                # (..., K) the probabilities


def softmax_forward(x, inplace=False):
    """Numerically stable softmax over the last axis: exp(x - max(x)) / sum(exp(x - max(x))).

    Subtracting the row maximum changes nothing mathematically but keeps exp() from overflowing:
    logits of +-1e4 still give finite rows that sum to 1. x: (..., K) -> out: (..., K).
    ``inplace=True`` overwrites x with the result (attention does this with its scores: one
    array fewer).

    >>> softmax_forward(np.log(np.array([1.0, 3.0])))[0]
    array([0.25, 0.75])
    """
    y = np.subtract(x, x.max(axis=-1, keepdims=True), out=x if inplace else None)
    np.exp(y, out=y)
    y /= y.sum(axis=-1, keepdims=True)
    return y, SoftmaxCache(y)


def softmax_backward(dout, cache):
    """With y = softmax(x): dx = y * (dout - sum(dout * y)), the Jacobian-vector product."""
    y = cache.y
    return y * (dout - (dout * y).sum(axis=-1, keepdims=True))


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray            # (N, V) softmax of the logits
    targets: np.ndarray          # (N,) target ids (0 where ignored)
    keep: np.ndarray             # (N,) bool, False where the target was ignored
    n: int                       # number of kept positions
    shape: tuple                 # the logits' shape, (B, T, V)


def cross_entropy_forward(logits, targets, ignore_index=-1):
    """Mean negative log-likelihood of the targets; positions whose target is -1 are ignored.

        loss = -(1/n) * sum over kept positions of log softmax(logits)[target]

    logits: (B, T, V); targets: int (B, T) -> loss: Python float; n = number of kept positions.

    >>> loss, _ = cross_entropy_forward(np.zeros((1, 2, 4)), np.array([[3, -1]]))
    >>> round(loss, 4)                                 # uniform over 4 classes: log 4
    1.3863
    """
    V = logits.shape[-1]
    t = targets.reshape(-1)                            # (N,)
    keep = t != ignore_index                           # (N,)
    n = int(keep.sum())
    if n == 0:
        raise ValueError("cross-entropy: every target is ignored (-1), the mean is undefined")
    t = np.where(keep, t, 0)
    probs, _ = softmax_forward(logits.reshape(-1, V))  # (N, V)
    with np.errstate(divide="ignore"):                 # a probability that underflowed: loss inf
        nll = -np.log(probs[np.arange(t.size), t])     # (N,)
    loss = float(nll[keep].sum()) / n
    return loss, CrossEntropyCache(probs, t, keep, n, logits.shape)


def cross_entropy_backward(dloss, cache):
    """The fused softmax + cross-entropy gradient: dlogits = (probs - onehot(target)) / n.

    Ignored positions get zero gradient. dloss: scalar (1.0 for the loss itself) -> (B, T, V).
    """
    probs, t, keep, n, shape = cache
    dlogits = probs.copy()                             # (N, V)
    dlogits[np.arange(t.size), t] -= 1.0
    dlogits *= (keep * (dloss / n)).astype(probs.dtype)[:, None]
    return dlogits.reshape(shape)
