"""Tiled causal attention (FlashAttention-2's algorithm), forward and backward, in NumPy.

Same result as ``sdpa_forward(q, k, v, causal=True)`` (attention.py),

    out = softmax(scale * Q K^T + mask) V,        scale = 1 / sqrt(hs),

but the (T, S) matrix of scores is never formed: queries are cut into tiles of ``block_q`` rows,
keys and values into tiles of ``block_k`` rows, and each query tile visits the key tiles one at a
time. Tiles entirely in a query tile's future (above the diagonal) are skipped; tiles that cross
the diagonal get the causal mask. Query i sits at absolute position i + S - T (the last T of S
positions, as with a KV cache) and sees keys j <= i + S - T.

The online softmax. For one query row, let the scores seen so far have running maximum m,
running sum l = sum_j exp(s_j - m) and unnormalised output o = sum_j exp(s_j - m) v_j. A new
tile of scores s'_j arrives:

    m_new = max(m, max_j s'_j)
    l_new = exp(m - m_new) * l + sum_j exp(s'_j - m_new)
    o_new = exp(m - m_new) * o + sum_j exp(s'_j - m_new) v_j

This is exact, not an approximation, because exp(s - m) * exp(m - m_new) = exp(s - m_new): the
rescaling turns every old term into the term it would have been had m_new been known from the
start. By induction, after the last tile l = sum_j exp(s_j - m) and o = sum_j exp(s_j - m) v_j
over all keys, and o / l = sum_j exp(s_j) v_j / sum_j exp(s_j) = softmax(s) V (the common factor
exp(-m) cancels). Since m >= every score seen, no exponent is positive and nothing overflows.
(The first key tile always contains key 0, which every query sees, so m is finite after it and
exp(m - m_new) is never exp(-inf + inf).)

The cache keeps, per row, only the log-sum-exp L = m + log(l) = log sum_j exp(s_j). The backward
recomputes each tile's weights exactly as P = exp(S - L), and uses

    D_i = sum_j P_ij dP_ij = sum_j P_ij (dO_i . v_j) = dO_i . O_i,

so D = rowsum(dO * O) needs no full row of P. Then, per tile (FA-2, Algorithm 2):

    dV += P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ += scale dS K,   dK += scale dS^T Q

Memory: the cache holds q, k, v, out (the layer's own inputs and output) plus L, O(T) per row,
instead of the (T, S) weights; the largest temporaries are a few (..., block_q, block_k) tiles.

``mha_forward`` uses it by itself from a context of ``TILED_MIN_T`` tokens on (below that the
plain attention is faster in NumPy; benchmarks/bench_tiled_attention.py measures the crossover),
when no dropout is drawn on the weights. The weights are not lost: ``cache.att`` recomputes them
from L on demand (for pictures of attention; the training step never asks).

Shape legend: B batch, nh heads, T time of the queries, S time of the keys (S >= T), hs head
size; ``...`` is any leading dimensions, e.g. (B, nh), and may broadcast between queries and
keys (grouped-query attention: (B, nkv, group) against (B, nkv, 1)).
"""
import functools
import math
from typing import NamedTuple

import numpy as np


@functools.lru_cache(maxsize=256)
def tile_mask(n_q, n_k, shift, dtype):
    """Additive causal mask (n_q, n_k) of one tile: -inf where key c is in query r's future.

    ``shift`` = (first key of the tile) - (absolute position of the first query of the tile);
    key c is in the future of query r when c + shift > r.

    >>> tile_mask(2, 3, 0, np.dtype(np.float64))
    array([[  0., -inf, -inf],
           [  0.,   0., -inf]])
    """
    mask = np.triu(np.full((n_q, n_k), -np.inf, dtype=dtype), k=1 - shift)
    mask.flags.writeable = False
    return mask


class TiledAttentionCache(NamedTuple):
    q: np.ndarray        # (..., T, hs)
    k: np.ndarray        # (..., S, hs)
    v: np.ndarray        # (..., S, hs)
    out: np.ndarray      # (..., T, hs) the forward's output (the same array that was returned)
    lse: np.ndarray      # (..., T) L = m + log(l), log-sum-exp of each row's scaled scores
    block_q: int
    block_k: int
    scale: float

    @property
    def att(self):
        """The attention weights (..., T, S), recomputed in one piece: exp(s + mask - L)."""
        T, S = self.q.shape[-2], self.k.shape[-2]
        s = (self.q * self.scale) @ self.k.swapaxes(-1, -2)       # (..., T, S)
        s += tile_mask(T, S, -(S - T), s.dtype)
        s -= self.lse[..., None]
        return np.exp(s, out=s)


def key_tiles(i0, i1, offset, S, block_k):
    """(j0, j1, needs_mask) for the key tiles a query tile [i0, i1) looks at, in order.

    The tile's last query sits at i1 - 1 + offset, so key tiles starting after it are skipped;
    a key tile whose last key is after the first query's position crosses the diagonal."""
    last_visible = i1 - 1 + offset
    for j0 in range(0, min(S, last_visible + 1), block_k):
        j1 = min(j0 + block_k, S)
        yield j0, j1, j1 - 1 > i0 + offset


def tiled_attention_forward(q, k, v, block_q=64, block_k=64):
    """Causal scaled dot-product attention by tiles with an online softmax.

    q: (..., T, hs); k, v: (..., S, hs) with S >= T -> out: (..., T, hs), equal to
    ``sdpa_forward(q, k, v, causal=True)[0]`` up to rounding. The cache holds L (..., T), not the
    (..., T, S) weights. Tiles of 64 were the fastest measured for T <= 512 (B=12, nh=4, hs=32,
    one BLAS thread) and within ~10% of 128, the best, beyond; see bench_tiled_attention.py.

    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(1, 5, 4)) for _ in range(3))
    >>> out, cache = tiled_attention_forward(q, k, v, block_q=2, block_k=2)
    >>> out.shape, cache.lse.shape
    ((1, 5, 4), (1, 5))
    """
    T, S, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    if S < T:
        raise ValueError(f"need at least as many keys as queries, got T={T}, S={S}")
    scale = 1.0 / math.sqrt(hs)
    offset = S - T                                     # query i sits at position i + offset
    out = np.empty_like(q)                             # (..., T, hs)
    lse = np.empty(q.shape[:-1], dtype=q.dtype)        # (..., T)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        qi = q[..., i0:i1, :] * scale                  # (..., bq, hs)
        m = np.full(qi.shape[:-1], -np.inf, dtype=q.dtype)   # (..., bq) running max
        l = np.zeros(qi.shape[:-1], dtype=q.dtype)            # (..., bq) running sum
        acc = np.zeros_like(qi)                               # (..., bq, hs) unnormalised output
        for j0, j1, needs_mask in key_tiles(i0, i1, offset, S, block_k):
            s = qi @ k[..., j0:j1, :].swapaxes(-1, -2)        # (..., bq, bk) scores
            if needs_mask:
                s += tile_mask(i1 - i0, j1 - j0, j0 - i0 - offset, s.dtype)
            m_new = np.maximum(m, s.max(axis=-1))
            alpha = np.exp(m - m_new)                         # (..., bq) rescales the old terms
            s -= m_new[..., None]
            p = np.exp(s, out=s)                              # (..., bq, bk) exp(s - m_new)
            l *= alpha
            l += p.sum(axis=-1)
            acc *= alpha[..., None]
            acc += p @ v[..., j0:j1, :]
            m = m_new
        out[..., i0:i1, :] = acc / l[..., None]
        lse[..., i0:i1] = m + np.log(l)
    return out, TiledAttentionCache(q, k, v, out, lse, block_q, block_k, scale)


def tiled_attention_backward(dout, cache):
    """dout: (..., T, hs) -> dq (..., T, hs), dk (..., S, hs), dv (..., S, hs) (dk and dv with
    the queries' leading axes when the keys' broadcast: grouped-query attention sums them).

    FA-2's order: the outer loop runs over key tiles (dK, dV of a tile are summed in place), the
    inner loop over the query tiles that see it (dQ is accumulated across key tiles). Each tile's
    weights are recomputed from the saved log-sum-exp, P = exp(scale Q K^T + mask - L).
    """
    q, k, v, out, lse, block_q, block_k, scale = cache
    T, S = q.shape[-2], k.shape[-2]
    offset = S - T
    D = (dout * out).sum(axis=-1)                      # (..., T) = rowsum(P * dP)
    qs = q * scale                                     # (..., T, hs) scale Q, used twice
    dq = np.zeros_like(q)                              # (..., T, hs) sum of dS K; scaled at the end
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])   # (with a group axis: q's)
    dk = np.empty((*lead, *k.shape[-2:]), dtype=k.dtype)     # (..., S, hs)
    dv = np.empty((*lead, *v.shape[-2:]), dtype=v.dtype)     # (..., S, hs)
    for j0 in range(0, S, block_k):
        j1 = min(j0 + block_k, S)
        kj, vj = k[..., j0:j1, :], v[..., j0:j1, :]   # (..., bk, hs)
        dkj = np.zeros((*lead, j1 - j0, k.shape[-1]), dtype=k.dtype)
        dvj = np.zeros((*lead, j1 - j0, v.shape[-1]), dtype=v.dtype)
        # the first query that sees key j0 sits at position j0, i.e. query index j0 - offset
        first = max(0, j0 - offset) // block_q * block_q
        for i0 in range(first, T, block_q):
            i1 = min(i0 + block_q, T)
            qi, doi = qs[..., i0:i1, :], dout[..., i0:i1, :]
            s = qi @ kj.swapaxes(-1, -2)                      # (..., bq, bk)
            if j1 - 1 > i0 + offset:                          # the tile crosses the diagonal
                s += tile_mask(i1 - i0, j1 - j0, j0 - i0 - offset, s.dtype)
            s -= lse[..., i0:i1, None]
            p = np.exp(s, out=s)                              # (..., bq, bk) the weights P
            dvj += p.swapaxes(-1, -2) @ doi
            dp = doi @ vj.swapaxes(-1, -2)                    # (..., bq, bk)
            dp -= D[..., i0:i1, None]
            ds = np.multiply(p, dp, out=dp)                   # dS = P * (dP - D)
            dq[..., i0:i1, :] += ds @ kj
            dkj += ds.swapaxes(-1, -2) @ qi                   # qi is already scale Q
        dk[..., j0:j1, :] = dkj
        dv[..., j0:j1, :] = dvj
    dq *= scale
    return dq, dk, dv
