"""Scaled dot-product attention and causal (grouped-query) self-attention, forward and backward.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(hs) + mask) V

Multi-head attention projects x to queries, keys and values with one fused matrix (``c_attn``),
splits the channels into heads with reshapes (no loop over heads), attends within each head,
puts the heads back side by side and mixes them with ``c_proj`` (C -> C).

Grouped-query attention (GQA, Ainslie et al. 2023) has fewer key/value heads than query heads:
nkv of them, each shared by a group of nh / nkv query heads (query head h reads key/value head
h // group). c_attn is then (C, (nh + 2 nkv) hs) = [queries | keys | values]; nkv = nh is
GPT-2's multi-head attention (C, 3C), nkv = 1 is multi-query attention. No key/value head is
copied: the queries are viewed as (B, nkv, group, T, hs), the keys and values get a group axis
of length 1, (B, nkv, 1, S, hs), and the matrix products broadcast them over the group; going
back, each key/value head sums the gradients of its group. With rotary positions (rope.py) the
queries and keys are rotated after the split, before they are cached.

Shape legend: B batch, T time (queries), S time of the keys (S = T except with a KV cache),
C channels, nh query heads, nkv key/value heads, g = nh / nkv heads per group, hs head size
(C = nh * hs).
"""
import functools
import math
from typing import NamedTuple

import numpy as np

from .layers import (DropoutCache, LinearCache, SoftmaxCache, dropout_backward, dropout_forward,
                     linear_backward, linear_forward, softmax_backward, softmax_forward)
from .rope import rope_backward, rope_forward
from .tiled_attention import (TiledAttentionCache, tiled_attention_backward,
                              tiled_attention_forward)


# From this many query positions on, mha_forward computes attention by tiles (tiled_attention.py:
# the (T, S) scores are never formed); below it the plain attention is faster in NumPy
# (python benchmarks/bench_tiled_attention.py measures the crossover on this machine).
TILED_MIN_T = 256


@functools.lru_cache(maxsize=64)
def causal_mask(T, S, dtype):
    """Additive mask (T, S): 0 where query i may look at key j, -inf where j is in its future.

    Query i sits at absolute position i + (S - T) (the last T of S positions), so it sees keys
    j <= i + S - T. Adding the mask is cheaper than a ``np.where`` over the scores.

    >>> causal_mask(2, 3, np.float32)
    array([[  0.,   0., -inf],
           [  0.,   0.,   0.]], dtype=float32)
    """
    mask = np.triu(np.full((T, S), -np.inf, dtype=dtype), k=1 + S - T)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=64)
def causal_mask_keys_first(T, S, dtype):
    """``causal_mask(T, S, dtype)`` as a view of (S, T) memory, laid out like the scores of
    ``sdpa_forward`` (adding arrays of two memory layouts is several times slower)."""
    mask = np.ascontiguousarray(causal_mask(T, S, dtype).T).T
    mask.flags.writeable = False
    return mask


class SDPACache(NamedTuple):
    q: np.ndarray                # (..., T, hs)
    k: np.ndarray                # (..., S, hs)
    v: np.ndarray                # (..., S, hs)
    att: np.ndarray              # (..., T, S) attention weights, rows sum to 1
    drop: DropoutCache           # dropout on the weights (mask None when off)
    scale: float                 # 1 / sqrt(hs)


def sdpa_forward(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    """Scaled dot-product attention.

    q: (..., T, hs); k, v: (..., S, hs) -> out: (..., T, hs). The weights are ``cache.att``
    (..., T, S), each row a probability distribution over the keys.

    >>> q = k = v = np.random.default_rng(0).normal(size=(1, 3, 4))
    >>> out, cache = sdpa_forward(q, k, v, causal=True)
    >>> out.shape, cache.att.shape
    ((1, 3, 4), (1, 3, 3))
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    # The scores s = q.k / sqrt(hs), (..., T, S). They are computed as (k q^T)^T: the same
    # numbers, laid out in memory key by key, so that the softmax's sums and maxima over the
    # keys run along memory's outer axis, which NumPy does several times faster than along a
    # short inner one. ``att`` is a view; everything below reads it as (..., T, S).
    att = (k @ (q * scale).swapaxes(-1, -2)).swapaxes(-1, -2)      # (..., T, S)
    if causal:
        att += causal_mask_keys_first(q.shape[-2], k.shape[-2], att.dtype)
    att, _ = softmax_forward(att, inplace=True)        # the layers' softmax, in the scores' array
    att_d, drop = dropout_forward(att, dropout, rng=rng, train=train)
    out = att_d @ v                                    # (..., T, hs)
    return out, SDPACache(q, k, v, att, drop, scale)


def sdpa_backward(dout, cache):
    """dout: (..., T, hs) -> dq (..., T, hs), dk (..., S, hs), dv (..., S, hs).

    Going back through out = A V, A = softmax(s), s = scale * Q K^T (the mask is a constant):
        dV = A^T dout,  dA = dout V^T,  ds = A * (dA - sum(dA * A))      (softmax_backward)
        dQ = scale ds K,  dK = scale ds^T Q
    """
    q, k, v, att, drop, scale = cache
    att_d = att if drop.mask is None else att * drop.mask
    dv = att_d.swapaxes(-1, -2) @ dout                 # (..., S, hs)
    datt = (v @ dout.swapaxes(-1, -2)).swapaxes(-1, -2)       # (..., T, S) laid out as att
    datt = dropout_backward(datt, drop)
    ds = softmax_backward(datt, SoftmaxCache(att))
    ds *= scale
    dq = ds @ k                                        # (..., T, hs)
    dk = ds.swapaxes(-1, -2) @ q                       # (..., S, hs)
    return dq, dk, dv


def kv_cache_bytes(n_layer, n_kv_head, head_size, T, itemsize, batch_size=1):
    """Memory of the keys and values of T positions: 2 * n_layer * B * nkv * hs * T * bytes.

    Only the nkv key/value heads are cached, so grouped-query attention divides this by nh / nkv.

    >>> kv_cache_bytes(32, 8, 128, 8192, 2) / 2**30     # Llama-3-8B's shape, 8k positions, bf16
    1.0
    """
    return 2 * n_layer * batch_size * n_kv_head * head_size * T * itemsize


class KVCache:
    """Keys and values of the positions seen so far, for every layer (used only when generating).

    k, v: (n_layer, B, nkv, max_T, hs) buffers filled left to right; ``length`` positions are
    valid, and ``length`` is also the position of the next token.

    >>> cache = KVCache(n_layer=1, B=1, n_kv_head=2, max_T=4, head_size=3, dtype=np.float32)
    >>> k, v = cache.append(0, np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)))
    >>> k.shape, cache.nbytes
    ((1, 2, 2, 3), 192)
    """
    rolling = False

    def __init__(self, n_layer, B, n_kv_head, max_T, head_size, dtype):
        self.k = np.zeros((n_layer, B, n_kv_head, max_T, head_size), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @property
    def max_T(self):
        return self.k.shape[3]

    @property
    def nbytes(self):
        """Bytes held: 2 (keys and values) * n_layer * B * nkv * max_T * hs * itemsize."""
        return self.k.nbytes + self.v.nbytes

    def append(self, layer, k, v):
        """Store k, v (B, nkv, T, hs) after the valid part; return all keys and values so far,
        (B, nkv, S, hs)."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.max_T:
            raise ValueError(f"KV cache holds {self.max_T} positions, asked for {stop}")
        self.k[layer, :, :, start:stop] = k
        self.v[layer, :, :, start:stop] = v
        return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]


class RollingKVCache(KVCache):
    """A KV cache that keeps going past max_T, holding the last max_T positions (a ring buffer).

    Only for rotary positions: each cached key carries its own rotation and a score depends
    only on the distance between query and key, so old keys stay valid when the window moves.
    ``length`` counts every position seen (the position of the next token, past max_T too).
    Until the buffer is full it fills left to right like ``KVCache``; after that each new
    position (one at a time) overwrites the slot of the one max_T steps back, slot =
    position % max_T. The slots are then out of time order, which does not matter: the one new
    query sees every cached key (no mask), and a softmax does not depend on the order of its
    inputs. This is NOT the same as recomputing the window from its tokens: in every layer after
    the first, a cached key was computed from hidden states that had attended to tokens which
    have since left the window.

    >>> cache = RollingKVCache(n_layer=1, B=1, n_kv_head=1, max_T=3, head_size=2, dtype=float)
    >>> for t in range(5):
    ...     k, v = cache.append(0, np.full((1, 1, 1, 2), float(t)), np.zeros((1, 1, 1, 2)))
    ...     cache.length += 1
    >>> k[0, 0, :, 0]                                  # positions 3, 4, 2 in slots 0, 1, 2
    array([3., 4., 2.])
    """
    rolling = True

    def append(self, layer, k, v):
        """Store k, v (B, nkv, T, hs); return the keys and values to attend to, (B, nkv, S, hs)."""
        start, T, W = self.length, k.shape[2], self.max_T
        if start + T <= W:                                 # still filling, in time order
            return super().append(layer, k, v)
        if T != 1:
            raise ValueError(f"past its {W} positions the rolling KV cache takes one position at "
                             f"a time, got {T}")
        slot = start % W                                   # position start - W leaves
        self.k[layer, :, :, slot] = k[:, :, 0]
        self.v[layer, :, :, slot] = v[:, :, 0]
        return self.k[layer], self.v[layer]


class MHACache(NamedTuple):
    c_attn: LinearCache          # x -> q, k, v
    rope: object                 # RoPECache (cos, sin (T, hs)) of q and k, None without RoPE
    sdpa: SDPACache              # q (B, nkv, g, T, hs); k, v (B, nkv, 1, S, hs)
                                 # (a TiledAttentionCache from TILED_MIN_T positions on)
    c_proj: LinearCache          # heads side by side (after the mask) -> out
    head_mask: object = None     # (nh,) each head's factor, None without a head mask
    heads: object = None         # (B, T, nh, hs) the heads' outputs before the mask (with one)
    hooked: bool = False         # a head_hook saw (and may have changed) the heads' outputs

    @property
    def att(self):
        """The attention weights, (B, nh, T, S), head h = j * g + r for group j."""
        att = self.sdpa.att                            # (tiled: recomputed here)
        B, nkv, g, T, S = att.shape
        return att.reshape(B, nkv * g, T, S)


def mha_forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
                dropout=0.0, rng=None, train=False, kv_cache=None, layer=0, last_only=False,
                head_mask=None, head_hook=None):
    """Causal multi-head self-attention; grouped-query with ``n_kv_head`` < n_head.

    x: (B, T, C); c_attn_w: (C, (nh + 2 nkv) hs) = [queries | keys | values] ((C, 3C) when
    n_kv_head is None or n_head); c_attn_b: its width or None; c_proj_w: (C, C); c_proj_b: (C,)
    or None; rope: (cos, sin) tables (T, hs) of these T positions (``rope_tables``), or None
    -> out: (B, T, C). ``cache.att`` holds the weights, (B, nh, T, S).
    With ``kv_cache`` the new keys and values are appended to those of earlier positions
    (``layer`` says which layer's slot to use). ``last_only`` (generation, the last block): keys
    and values of all T positions, but only the last position's query -> out: (B, 1, C).

    For looking inside (minillm.interpret): ``head_mask`` (nh,) multiplies each head's output
    y_h before c_proj, out = c_proj([m_0 y_0 | ... | m_nh-1 y_nh-1]) (ones change nothing, 0
    removes a head; ``head_mask_backward`` gives its gradient). ``head_hook(layer, heads)``, if
    given, sees the heads' outputs (B, T, nh, hs) after the mask and returns the ones to use
    (to record, replace or patch them); it is for forward passes only.

    >>> x = np.random.default_rng(0).normal(size=(2, 5, 8))
    >>> out, cache = mha_forward(x, np.eye(8, 24), np.zeros(24), np.eye(8), np.zeros(8), n_head=2)
    >>> out.shape, cache.att.shape
    ((2, 5, 8), (2, 2, 5, 5))
    >>> out, cache = mha_forward(x, np.eye(8, 16), None, np.eye(8), None, n_head=4, n_kv_head=2)
    >>> cache.sdpa.q.shape, cache.sdpa.k.shape         # 2 groups of 2 query heads, 2 key heads
    ((2, 2, 2, 5, 2), (2, 2, 1, 5, 2))
    """
    B, T, C = x.shape
    n_kv = n_head if n_kv_head is None else n_kv_head
    hs = C // n_head
    qkv, c_attn_cache = linear_forward(x, c_attn_w, c_attn_b)          # (B, T, (nh + 2nkv) hs)
    heads = qkv.reshape(B, T, n_head + 2 * n_kv, hs).transpose(0, 2, 1, 3)  # (B, nh+2nkv, T, hs)
    q = heads[:, :n_head]                                              # (B, nh, T, hs)
    k, v = heads[:, n_head:n_head + n_kv], heads[:, n_head + n_kv:]    # (B, nkv, T, hs) each
    rope_cache = None
    if rope is not None:
        q, rope_cache = rope_forward(q, *rope)                         # the same turn for
        k, _ = rope_forward(k, *rope)                                  # queries and keys
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)                            # (B, nkv, S, hs)
    if last_only:
        q, T = q[:, :, -1:], 1                         # (B, nh, 1, hs): sees all S keys
    q = q.reshape(B, n_kv, n_head // n_kv, T, hs)                      # (B, nkv, g, T, hs)
    if T >= TILED_MIN_T and not (train and dropout > 0.0):           # long contexts: by tiles
        y, sdpa_cache = tiled_attention_forward(q, k[:, :, None], v[:, :, None])
    else:
        y, sdpa_cache = sdpa_forward(q, k[:, :, None], v[:, :, None], causal=True,
                                     dropout=dropout, rng=rng, train=train)  # (B, nkv, g, T, hs)
    y = y.reshape(B, n_head, T, hs).transpose(0, 2, 1, 3)             # (B, T, nh, hs)
    heads = None
    if head_mask is not None:
        head_mask = np.asarray(head_mask, dtype=y.dtype)               # (nh,)
        heads, y = y, y * head_mask[:, None]                           # head h times m_h
    if head_hook is not None:
        y = head_hook(layer, y)                                        # (B, T, nh, hs)
    y = y.reshape(B, T, C)                                             # heads side by side
    out, c_proj_cache = linear_forward(y, c_proj_w, c_proj_b)          # (B, T, C)
    return out, MHACache(c_attn_cache, rope_cache, sdpa_cache, c_proj_cache, head_mask, heads,
                         head_hook is not None)


def sum_groups(d):
    """(B, nkv, g, S, hs) -> (B, nkv, S, hs): each key/value head gets its group's gradients."""
    return d[:, :, 0] if d.shape[2] == 1 else d.sum(axis=2)


def mha_backward(dout, cache):
    """dout: (B, T, C) -> dx (B, T, C), dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b (the biases
    None when the forward pass had none). Only for a forward pass without a KV cache or head
    hook; with a head mask, dy_h = m_h d(m_h y_h)."""
    if cache.hooked:
        raise ValueError("mha_backward: a head_hook changed this forward pass, which has no "
                         "backward (use head_mask for gradients)")
    B, T, C = dout.shape
    _, n_kv, g, _, hs = cache.sdpa.q.shape
    n_head = n_kv * g
    dy, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)     # (B, T, C)
    if cache.head_mask is not None:
        dy = dy.reshape(B, T, n_head, hs) * cache.head_mask[:, None]   # back through the mask
    dy = dy.reshape(B, T, n_kv, g, hs).transpose(0, 2, 3, 1, 4)        # (B, nkv, g, T, hs)
    backward = tiled_attention_backward if isinstance(cache.sdpa, TiledAttentionCache) \
        else sdpa_backward
    dq, dk, dv = backward(dy, cache.sdpa)                              # dk, dv (B, nkv, g, T, hs)
    dq = dq.reshape(B, n_head, T, hs)
    dk, dv = sum_groups(dk), sum_groups(dv)                            # (B, nkv, T, hs)
    if cache.rope is not None:
        dq, dk = rope_backward(dq, cache.rope), rope_backward(dk, cache.rope)
    dqkv = np.empty((B, T, n_head + 2 * n_kv, hs), dtype=dout.dtype)
    heads = dqkv.transpose(0, 2, 1, 3)                                 # (B, nh+2nkv, T, hs) view
    heads[:, :n_head] = dq                                             # written through the view
    heads[:, n_head:n_head + n_kv] = dk
    heads[:, n_head + n_kv:] = dv
    dx, dc_attn_w, dc_attn_b = linear_backward(dqkv.reshape(B, T, -1), cache.c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b


def head_mask_backward(dout, cache):
    """The gradient of the head mask: dout (B, T, C) at the attention's output -> (nh,).

    out = c_proj(u) with u_h = m_h y_h, so dm_h = sum over b, t, i of du[b, t, h, i] y_h[b, t, i]
    with du = dout c_proj_w^T: how much the loss changes when head h is turned up a little
    (Michel et al. 2019 use its size as the head's importance). Needs a forward pass with a
    head mask (``cache.heads``).

    >>> x = np.random.default_rng(0).normal(size=(1, 3, 4))
    >>> out, cache = mha_forward(x, np.eye(4, 12), None, np.eye(4), None, n_head=2,
    ...                          head_mask=np.ones(2))
    >>> head_mask_backward(np.ones_like(out), cache).shape
    (2,)
    """
    if cache.heads is None:
        raise ValueError("head_mask_backward needs a forward pass with a head_mask")
    B, T, n_head, hs = cache.heads.shape
    du = (dout.reshape(B * T, -1) @ cache.c_proj.weight.T).reshape(B, T, n_head, hs)
    return np.einsum("btni,btni->n", du, cache.heads)
