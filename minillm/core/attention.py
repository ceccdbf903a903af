"""Scaled dot-product attention and causal multi-head self-attention, forward and backward.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(hs) + mask) V

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

from .layers import (DropoutCache, LinearCache, SoftmaxCache, dropout_backward, dropout_forward,
                     linear_backward, linear_forward, softmax_backward, softmax_forward)


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
    att = (q * scale) @ k.swapaxes(-1, -2)             # (..., T, S) the scores s = q.k / sqrt(hs)
    if causal:
        att += causal_mask(q.shape[-2], k.shape[-2], att.dtype)
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
    datt = dropout_backward(dout @ v.swapaxes(-1, -2), drop)  # (..., T, S)
    ds = softmax_backward(datt, SoftmaxCache(att))
    ds *= scale
    dq = ds @ k                                        # (..., T, hs)
    dk = ds.swapaxes(-1, -2) @ q                       # (..., S, hs)
    return dq, dk, dv


class KVCache:
    """Keys and values of the positions seen so far, for every layer (used only when generating).

    k, v: (n_layer, B, nh, max_T, hs) buffers filled left to right; ``length`` positions are valid.

    >>> cache = KVCache(n_layer=1, B=1, n_head=2, max_T=4, head_size=3, dtype=np.float32)
    >>> k, v = cache.append(0, np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)))
    >>> k.shape, cache.nbytes
    ((1, 2, 2, 3), 192)
    """

    def __init__(self, n_layer, B, n_head, max_T, head_size, dtype):
        self.k = np.zeros((n_layer, B, n_head, max_T, head_size), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    @property
    def max_T(self):
        return self.k.shape[3]

    @property
    def nbytes(self):
        """Bytes held: 2 (keys and values) * n_layer * B * nh * max_T * hs * itemsize."""
        return self.k.nbytes + self.v.nbytes

    def append(self, layer, k, v):
        """Store k, v (B, nh, T, hs) after the valid part; return all keys and values so far,
        (B, nh, S, hs)."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.max_T:
            raise ValueError(f"KV cache holds {self.max_T} positions, asked for {stop}")
        self.k[layer, :, :, start:stop] = k
        self.v[layer, :, :, start:stop] = v
        return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]


class MHACache(NamedTuple):
    c_attn: LinearCache          # x -> q, k, v
    sdpa: SDPACache              # the attention itself, per head
    c_proj: LinearCache          # heads side by side -> out

    @property
    def att(self):
        """The attention weights, (B, nh, T, S)."""
        return self.sdpa.att


def mha_forward(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, dropout=0.0, rng=None,
                train=False, kv_cache=None, layer=0):
    """Causal multi-head self-attention.

    x: (B, T, C); c_attn_w: (C, 3C); c_attn_b: (3C,); c_proj_w: (C, C); c_proj_b: (C,)
    -> out: (B, T, C). ``cache.att`` holds the weights, (B, nh, T, S).
    With ``kv_cache`` the new keys and values are appended to those of earlier positions
    (``layer`` says which layer's slot to use).

    >>> x = np.random.default_rng(0).normal(size=(2, 5, 8))
    >>> out, cache = mha_forward(x, np.eye(8, 24), np.zeros(24), np.eye(8), np.zeros(8), n_head=2)
    >>> out.shape, cache.att.shape
    ((2, 5, 8), (2, 2, 5, 5))
    """
    B, T, C = x.shape
    hs = C // n_head
    qkv, c_attn_cache = linear_forward(x, c_attn_w, c_attn_b)          # (B, T, 3C)
    qkv = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)    # (3, B, nh, T, hs)
    q, k, v = qkv[0], qkv[1], qkv[2]                                   # (B, nh, T, hs) each
    if kv_cache is not None:
        k, v = kv_cache.append(layer, k, v)                            # (B, nh, S, hs)
    y, sdpa_cache = sdpa_forward(q, k, v, causal=True, dropout=dropout, rng=rng, train=train)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                       # heads side by side
    out, c_proj_cache = linear_forward(y, c_proj_w, c_proj_b)          # (B, T, C)
    return out, MHACache(c_attn_cache, sdpa_cache, c_proj_cache)


def mha_backward(dout, cache):
    """dout: (B, T, C) -> dx (B, T, C), dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b."""
    B, T, C = dout.shape
    n_head, hs = cache.sdpa.q.shape[1], cache.sdpa.q.shape[3]
    dy, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)     # (B, T, C)
    dy = dy.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)            # (B, nh, T, hs)
    dq, dk, dv = sdpa_backward(dy, cache.sdpa)
    dqkv = np.empty((B, T, 3, n_head, hs), dtype=dout.dtype)
    heads = dqkv.transpose(2, 0, 3, 1, 4)                              # (3, B, nh, T, hs) view
    heads[0], heads[1], heads[2] = dq, dk, dv                          # written through the view
    dx, dc_attn_w, dc_attn_b = linear_backward(dqkv.reshape(B, T, 3 * C), cache.c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b
