"""A classification head on a GPT's hidden states: pooling, a linear layer, and the top of the
model run from a frozen bottom.

    h       = ln_f(blocks(embeddings(idx)))   the GPT's final hidden states    (B, T, C)
                                              (GPT.forward_with_cache(idx, lm_head=False))
    pooled  = h[b, len_b - 1]                 "last": the last real token      (B, C)
            | (1/len_b) sum_{t < len_b} h[b, t]
                                              "mean": the mean of real tokens  (B, C)
    logits  = pooled @ W + b                  W: (C, K), b: (K,)               (B, K)
    loss    = cross_entropy(logits, labels)

Sequences of different lengths are right-padded to the longest of the batch; ``lengths`` says
how many positions of each are real. Padding changes nothing: attention is causal, so a real
position never sees a padded one, and the pooling reads real positions only. Backward, the
padded positions get dL/dh = 0 from the pooling, and since nothing real depends on them that
zero stays zero all the way down (their keys and values are read only by padded queries). So
logits and every gradient are those of the unpadded sequences (tested, in float64).

For training only the top of the model, the bottom is run once and its output kept:
``block_input(cache, first)`` is the residual stream entering block ``first`` (read from that
block's norm cache), and ``top_forward`` / ``top_backward`` run blocks first .. L-1 and ln_f
from it, and back.

Shape legend: B batch, T time, C channels (n_embd), K classes, L n_layer.
"""
from typing import NamedTuple

import numpy as np

from .block import block_backward, block_forward, norm_backward, norm_forward
from .layers import LinearCache, linear_backward, linear_forward

POOLS = ("mean", "last")
HEAD = ("classifier.weight", "classifier.bias")     # the head's parameter names


# ----------------------------------------------------------------------------------------------
# Pooling: one vector per sequence, from its real positions only
# ----------------------------------------------------------------------------------------------

class PoolCache(NamedTuple):
    mode: str                    # "mean" or "last"
    lengths: np.ndarray          # (B,) real positions per sequence, 1 <= len <= T
    shape: tuple                 # (B, T, C), the shape of h
    weights: np.ndarray          # (B, T, 1) 1/len on real positions, 0 on padding ("mean")


def pool_forward(h, lengths, mode="mean"):
    """mean: pooled[b] = (1/len_b) sum_{t < len_b} h[b, t];  last: pooled[b] = h[b, len_b - 1].

    h: (B, T, C); lengths: int (B,) -> pooled: (B, C)

    >>> h = np.arange(12.0).reshape(1, 4, 3)           # one sequence, 2 real positions of 4
    >>> pool_forward(h, np.array([2]), "mean")[0], pool_forward(h, np.array([2]), "last")[0]
    (array([[1.5, 2.5, 3.5]]), array([[3., 4., 5.]]))
    """
    if mode not in POOLS:
        raise ValueError(f"unknown pooling {mode!r}; use one of {POOLS}")
    lengths = np.asarray(lengths)
    B, T, C = h.shape
    if lengths.shape != (B,) or lengths.dtype.kind not in "iu" or lengths.min() < 1 \
            or lengths.max() > T:
        raise ValueError(f"lengths must be {B} integers in [1, {T}] (one per sequence), got "
                         f"{lengths!r:.60}")
    if mode == "last":
        return h[np.arange(B), lengths - 1], PoolCache(mode, lengths, h.shape, None)  # (B, C)
    real = np.arange(T)[None, :] < lengths[:, None]                                  # (B, T)
    weights = (real / lengths[:, None]).astype(h.dtype)[:, :, None]                  # (B, T, 1)
    pooled = (h * weights).sum(axis=1)                                               # (B, C)
    return pooled, PoolCache(mode, lengths, h.shape, weights)


def pool_backward(dpooled, cache):
    """dpooled: (B, C) -> dh: (B, T, C), exactly zero on the padded positions."""
    B, T, C = cache.shape
    if cache.mode == "last":
        dh = np.zeros(cache.shape, dtype=dpooled.dtype)
        dh[np.arange(B), cache.lengths - 1] = dpooled       # only the last real token was read
        return dh
    return cache.weights * dpooled[:, None, :]              # (B, T, C) each real one gets 1/len


# ----------------------------------------------------------------------------------------------
# The head: pooling, then a linear layer C -> K
# ----------------------------------------------------------------------------------------------

class ClassifierHeadCache(NamedTuple):
    pool: PoolCache              # h (B, T, C) -> pooled (B, C)
    linear: LinearCache          # pooled (B, C) -> logits (B, K)


def classifier_head_forward(h, lengths, weight, bias, pool="mean"):
    """logits = pool(h) @ weight + bias.

    h: (B, T, C); lengths: int (B,); weight: (C, K); bias: (K,) -> logits: (B, K)

    >>> logits, _ = classifier_head_forward(np.ones((2, 3, 4)), np.array([3, 1]),
    ...                                     np.ones((4, 2)), np.zeros(2))
    >>> logits
    array([[4., 4.],
           [4., 4.]])
    """
    pooled, pool_cache = pool_forward(h, lengths, pool)             # (B, C)
    logits, linear_cache = linear_forward(pooled, weight, bias)    # (B, K)
    return logits, ClassifierHeadCache(pool_cache, linear_cache)


def classifier_head_backward(dlogits, cache):
    """dlogits: (B, K) -> dh: (B, T, C), dweight: (C, K), dbias: (K,)."""
    dpooled, dweight, dbias = linear_backward(dlogits, cache.linear)   # (B, C)
    return pool_backward(dpooled, cache.pool), dweight, dbias


def init_head(n_embd, n_classes, dtype="float32"):
    """{"classifier.weight": (C, K) zeros, "classifier.bias": (K,) zeros}.

    Zeros: every class starts equally likely (loss ln K), as logistic regression does; the
    first step moves the head only (dh = dlogits @ W^T is 0 while W is), and from then on the
    body's gradient grows with the head.

    >>> {k: v.shape for k, v in init_head(8, 3).items()}
    {'classifier.weight': (8, 3), 'classifier.bias': (3,)}
    """
    return {HEAD[0]: np.zeros((n_embd, n_classes), dtype=dtype),
            HEAD[1]: np.zeros(n_classes, dtype=dtype)}


# ----------------------------------------------------------------------------------------------
# The top of the model from a frozen bottom
# ----------------------------------------------------------------------------------------------

def block_input(cache, first):
    """The residual stream entering block ``first`` (B, T, C), from a GPTCache (the input of
    that block's first norm; ``first = n_layer``: the input of ln_f)."""
    norm_cache = cache.h[first].ln_1 if first < len(cache.h) else cache.ln_f
    return norm_cache.x


class TopCache(NamedTuple):
    first: int                   # the first block that was run
    h: list                      # BlockCache of blocks first .. L-1
    ln_f: tuple                  # LayerNormCache or RMSNormCache


def top_forward(model, x, first, *, train=False, rng=None):
    """h = ln_f(block_{L-1}(... block_first(x))): the top of ``model`` from the residual stream
    x entering block ``first`` (0 <= first <= L). x: (B, T, C) -> h: (B, T, C), TopCache.

    The same calls as the second half of ``GPT.forward_with_cache`` (tested equal)."""
    config, p = model.config, model.params
    if not 0 <= first <= config.n_layer:
        raise ValueError(f"first block {first} is outside 0 .. n_layer = {config.n_layer}")
    rng = model.rng if rng is None else rng
    rope = model.rotary(0, x.shape[1]) if config.pos_encoding == "rope" else None
    caches = []
    for i in range(first, config.n_layer):
        x, block_cache = block_forward(x, model.block_params(i), config, rope=rope, rng=rng,
                                       train=train, layer=i)
        caches.append(block_cache)
    h, ln_f_cache = norm_forward(x, p["ln_f.weight"], p.get("ln_f.bias"), config)
    return h, TopCache(first, caches, ln_f_cache)


def top_backward(model, dh, cache):
    """dh: (B, T, C) -> dx: (B, T, C) at the input of block ``first``, and the gradients of
    ln_f and blocks first .. L-1 under the model's parameter names."""
    config, g = model.config, {}
    dx, g["ln_f.weight"], g["ln_f.bias"] = norm_backward(dh, cache.ln_f, config)
    for j in reversed(range(len(cache.h))):
        dx, block_grads = block_backward(dx, cache.h[j], config)
        g.update({f"h.{cache.first + j}.{name}": grad for name, grad in block_grads.items()})
    return dx, {name: grad for name, grad in g.items() if grad is not None}
