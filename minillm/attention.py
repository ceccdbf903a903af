"""Scaled dot-product attention and causal multi-head self-attention, forward and backward.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V

Multi-head attention projects x to queries, keys and values with one fused matrix (``c_attn``,
C -> 3C), splits the channels into heads with reshapes (no loop over heads), attends within each
head, puts the heads back side by side and mixes them with ``c_proj`` (C -> C).

Shape legend: B batch, T time (queries), S time of the keys (S = T except with a KV cache),
C channels, nh heads, hs head size (C = nh * hs).
"""
import functools
import math
from typing import NamedTuple

import numpy as np

from .layers import dropout_backward, dropout_forward, linear_backward, linear_forward


@functools.lru_cache(maxsize=64)
def causal_mask(T, S, dtype):
    """Additive mask (T, S): 0 where query i may look at key j, -inf where j is in its future.

    Query i sits at absolute position i + (S - T) (the last T of S positions), so it sees keys
    j <= i + S - T. Adding the mask is cheaper than a ``np.where`` over the scores.
    """
    mask = np.triu(np.full((T, S), -np.inf, dtype=dtype), k=1 + S - T)
    mask.flags.writeable = False
    return mask


class AttentionCache(NamedTuple):
    q: np.ndarray        # (B, nh, T, hs)
    k: np.ndarray        # (B, nh, S, hs)
    v: np.ndarray        # (B, nh, S, hs)
    att: np.ndarray      # (B, nh, T, S) attention weights, rows sum to 1
    drop: object         # dropout mask on att, or None
    scale: float


def sdpa_forward(q, k, v, causal=True, dropout=0.0, rng=None, train=False):
    """Scaled dot-product attention.

    q: (..., T, hs); k, v: (..., S, hs) -> out: (..., T, hs). The weights are ``cache.att``
    (..., T, S), each row a probability distribution over the keys.

    >>> q = k = v = np.random.default_rng(0).normal(size=(1, 3, 4))
    >>> out, cache = sdpa_forward(q, k, v)
    >>> out.shape, cache.att.shape
    ((1, 3, 4), (1, 3, 3))
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = (q * scale) @ k.swapaxes(-1, -2)             # (..., T, S)
    if causal:
        att += causal_mask(q.shape[-2], k.shape[-2], att.dtype)
    att -= att.max(axis=-1, keepdims=True)             # stable softmax, in place
    np.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    att_d, drop = dropout_forward(att, dropout, rng, train)
    out = att_d @ v                                    # (..., T, hs)
    return out, AttentionCache(q, k, v, att, drop, scale)


def sdpa_backward(dout, cache):
    """dout: (..., T, hs) -> dq (..., T, hs), dk (..., S, hs), dv (..., S, hs).

    Going back through out = A V, A = softmax(s), s = scale * Q K^T (the mask is a constant):
        dV = A^T dout,  dA = dout V^T,  ds = A * (dA - sum(dA * A)),  dQ = scale ds K,  dK = scale ds^T Q
    """
    q, k, v, att, drop, scale = cache
    att_d = att if drop is None else att * drop
    dv = att_d.swapaxes(-1, -2) @ dout                 # (..., S, hs)
    datt = dropout_backward(dout @ v.swapaxes(-1, -2), drop)  # (..., T, S)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    ds *= scale
    dq = ds @ k                                        # (..., T, hs)
    dk = ds.swapaxes(-1, -2) @ q                       # (..., S, hs)
    return dq, dk, dv


class KVCache:
    """Keys and values of the positions seen so far, for every layer (used only when generating).

    k, v: (n_layer, B, nh, max_T, hs) buffers filled left to right; ``length`` positions are valid.
    """

    def __init__(self, n_layer, B, n_head, max_T, head_size, dtype):
        self.k = np.zeros((n_layer, B, n_head, max_T, head_size), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @property
    def max_T(self):
        return self.k.shape[3]

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after the valid part; return all keys and values (B, nh, S, hs)."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.max_T:
            raise ValueError(f"KV cache holds {self.max_T} positions, asked for {stop}")
        self.k[layer, :, :, start:stop] = k
        self.v[layer, :, :, start:stop] = v
        return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]


class MHACache(NamedTuple):
    c_attn: tuple
    attn: AttentionCache
    c_proj: tuple


def mha_forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, dropout=0.0, rng=None,
                train=False, kv_cache=None, layer=0):
    """Causal multi-head self-attention.

    x: (B, T, C); c_attn_w: (C, 3C); c_attn_b: (3C,); c_proj_w: (C, C); c_proj_b: (C,)
    -> out: (B, T, C). ``cache.attn.att`` holds the weights, (B, nh, T, S).
    With ``kv_cache`` the new keys/values are appended to those of earlier positions.
    """
    B, T, C = x.shape
    hs = C // n_head
    qkv, c_attn_cache = linear_forward(x, c_attn_w, c_attn_b)          # (B, T, 3C)
    qkv = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)    # (3, B, nh, T, hs)
    q, k, v = qkv[0], qkv[1], qkv[2]                                   # (B, nh, T, hs) each
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)                            # (B, nh, S, hs)
    y, attn_cache = sdpa_forward(q, k, v, True, dropout, rng, train)   # (B, nh, T, hs)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                       # (B, T, C) heads side by side
    out, c_proj_cache = linear_forward(y, c_proj_w, c_proj_b)          # (B, T, C)
    return out, MHACache(c_attn_cache, attn_cache, c_proj_cache)


def mha_backward(dout, cache):
    """dout: (B, T, C) -> dx (B, T, C), dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b."""
    B, T, C = dout.shape
    n_head, hs = cache.attn.q.shape[1], cache.attn.q.shape[3]
    dy, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)     # (B, T, C)
    dy = dy.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)            # (B, nh, T, hs)
    dq, dk, dv = sdpa_backward(dy, cache.attn)
    dqkv = np.empty((B, T, 3, n_head, hs), dtype=dout.dtype)
    heads = dqkv.transpose(2, 0, 3, 1, 4)                              # (3, B, nh, T, hs) view
    heads[0], heads[1], heads[2] = dq, dk, dv                          # written through the view
    dx, dc_attn_w, dc_attn_b = linear_backward(dqkv.reshape(B, T, 3 * C), cache.c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b
