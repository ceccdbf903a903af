"""Exercises of notebooks 03, 04 and 06: softmax, the causal mask, attention, multi-head attention.

    softmax_forward   softmax_forward(x, inplace=False)       stable: subtract the row maximum
    causal_mask       causal_mask(T, S, dtype)                the additive mask, also for S > T
    sdpa_forward      sdpa_forward(q, k, v, *, causal, ...)   softmax(q k^T / sqrt(hs) + mask) v
    mha_forward       mha_forward(x, c_attn_w, ..., n_head)   heads split by reshape and merged
    mha_backward      mha_backward(dout, cache)               the same plumbing in reverse

(These two have as many key/value heads as query heads; grouped-query attention, the same two
functions with ``n_kv_head`` < n_head, is in llama.py, notebook 16. minillm's MHACache already
holds q, k, v with a group axis, of length 1 here: q (B, nh, 1, T, hs), k, v (B, nh, 1, S, hs).)
    sdpa_backward     sdpa_backward(dout, cache)              dq, dk, dv (notebook 06), dropout too

Shape legend: B batch, T time (queries), S time of the keys, C channels, nh heads, hs head size
(C = nh * hs), K a softmax's last axis.

>>> from minillm.exercises import check
>>> check("causal_mask", attention.causal_mask, verbose=False).passed
True
"""
import math

import numpy as np

from ..core import attention, layers
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------

def _softmax_cases(rng):
    return [Case("square (N, K) = (4, 4)", dict(x=rng.normal(size=(4, 4)))),
            Case("(B, T, K)", dict(x=rng.normal(size=(2, 3, 5)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 6)))),
            Case("logits of +-1e4 (stability)", dict(x=rng.normal(size=(4, 5)) * 1e4))]


exercise("softmax_forward", "a numerically stable softmax over the last axis",
         reference=layers.softmax_forward, returns=("y", "cache"), compare=("y",),
         cases=_softmax_cases)


def _softmax(x, shift, axis=-1):
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(x - shift)
        y = e / e.sum(axis=axis, keepdims=True)
    return y, layers.SoftmaxCache(y)


@mistake("softmax_forward", "subtract each row's maximum before exp(): exp(1e4) overflows to "
                            "inf, and inf / inf is NaN")
def _(x, inplace=False):
    return _softmax(x, 0.0)


@mistake("softmax_forward", "subtract each row's own maximum (axis=-1, keepdims=True), not the "
                            "maximum of the whole array: rows far below it underflow to 0 / 0")
def _(x, inplace=False):
    return _softmax(x, x.max())


@mistake("softmax_forward", "the sum runs over the last axis, the K entries of one row "
                            "(axis=-1, keepdims=True)")
def _(x, inplace=False):
    return _softmax(x, x.max(axis=-1, keepdims=True), axis=0)


# ----------------------------------------------------------------------------------------------
# The causal mask
# ----------------------------------------------------------------------------------------------

def _mask_cases(rng):
    return [Case("T = S = 4", dict(T=4, S=4, dtype=np.float64)),
            Case("one query, 5 keys (a KV-cache step)", dict(T=1, S=5, dtype=np.float64)),
            Case("3 queries, 7 keys, float32", dict(T=3, S=7, dtype=np.float32)),
            Case("T = S = 1", dict(T=1, S=1, dtype=np.float64))]


exercise("causal_mask", "the additive causal mask (T, S): 0 where a query may look, -inf in "
         "its future", reference=attention.causal_mask, returns=("mask",), cases=_mask_cases,
         float32=False)


@mistake("causal_mask", "with S > T the queries are the last T of S positions: query i sits at "
                        "i + S - T and sees keys j <= i + S - T (np.triu's k = 1 + S - T)")
def _(T, S, dtype):
    return np.triu(np.full((T, S), -np.inf, dtype=dtype), k=1)


@mistake("causal_mask", "-inf goes above the diagonal (the future, j > i), not below it")
def _(T, S, dtype):
    return np.tril(np.full((T, S), -np.inf, dtype=dtype), k=-1 + S - T)


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention
# ----------------------------------------------------------------------------------------------

def _qkv(rng, lead, T, S, hs, scale=1.0, **extra):
    return dict(q=rng.normal(size=(*lead, T, hs)) * scale, k=rng.normal(size=(*lead, S, hs)),
                v=rng.normal(size=(*lead, S, hs)), **extra)


def _sdpa_cases(rng):
    return [Case("(B, nh, T, hs), causal", dict(**_qkv(rng, (2, 2), 4, 4, 3), causal=True)),
            Case("not causal", dict(**_qkv(rng, (2,), 3, 3, 5), causal=False)),
            Case("T = 1", dict(**_qkv(rng, (1, 1), 1, 1, 4), causal=True)),
            Case("2 queries, 5 keys (S > T)", dict(**_qkv(rng, (1, 2), 2, 5, 4), causal=True)),
            Case("hs = 16, large scores", dict(**_qkv(rng, (1,), 6, 6, 16, 2.0), causal=True))]


exercise("sdpa_forward", "attention: softmax(q k^T / sqrt(hs) + mask) v",
         reference=attention.sdpa_forward, returns=("out", "cache"), compare=("out",),
         cases=_sdpa_cases)


def _sdpa(q, k, v, causal, scale=None, mask_after=False, offset=True, axis=-1):
    T, S = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q * scale) @ k.swapaxes(-1, -2)
    mask = np.triu(np.ones((T, S), dtype=bool), k=1 + (S - T if offset else 0))
    if causal and not mask_after:
        s = np.where(mask, -np.inf, s)
    att = np.exp(s - s.max(axis=axis, keepdims=True))
    att /= att.sum(axis=axis, keepdims=True)
    if causal and mask_after:
        att = np.where(mask, 0.0, att).astype(q.dtype)
    return att @ v, None


@mistake("sdpa_forward", "the mask goes on the scores, before the softmax: zeroing weights "
                         "after it leaves rows that no longer sum to 1")
def _(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    return _sdpa(q, k, v, causal, mask_after=True)


@mistake("sdpa_forward", "scale the scores by 1 / sqrt(hs), not 1 / hs")
def _(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    return _sdpa(q, k, v, causal, scale=1.0 / q.shape[-1])


@mistake("sdpa_forward", "the scores are scaled by 1 / sqrt(hs): without it they grow with the "
                         "head size and the softmax saturates")
def _(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    return _sdpa(q, k, v, causal, scale=1.0)


@mistake("sdpa_forward", "with S > T keys, query i sits at position i + S - T: the mask is "
                         "causal_mask(T, S), shifted right by S - T")
def _(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    return _sdpa(q, k, v, causal, offset=False)


@mistake("sdpa_forward", "the softmax runs over the keys (the last axis), one distribution per "
                         "query")
def _(q, k, v, *, causal=True, dropout=0.0, rng=None, train=False):
    return _sdpa(q, k, v, causal, axis=-2)


# ----------------------------------------------------------------------------------------------
# Multi-head attention: heads by reshape
# ----------------------------------------------------------------------------------------------

def _mha_inputs(rng, B, T, C, nh):
    return dict(x=rng.normal(size=(B, T, C)), c_attn_w=rng.normal(size=(C, 3 * C)) * 0.5,
                c_attn_b=rng.normal(size=3 * C) * 0.5, c_proj_w=rng.normal(size=(C, C)) * 0.5,
                c_proj_b=rng.normal(size=C), n_head=nh)


def _mha_cases(rng):
    return [Case("B = 2, T = 4, C = 8, nh = 2", _mha_inputs(rng, 2, 4, 8, 2)),
            Case("T = 1, nh = 3", _mha_inputs(rng, 1, 1, 6, 3)),
            Case("nh = 4, hs = 2", _mha_inputs(rng, 1, 5, 8, 4)),
            Case("one head", _mha_inputs(rng, 2, 3, 4, 1))]


exercise("mha_forward", "causal multi-head self-attention: split the heads, attend, merge them",
         reference=attention.mha_forward, returns=("out", "cache"), compare=("out",),
         cases=_mha_cases)


def _mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, split="right", merge="right",
         causal=True):
    B, T, C = x.shape
    hs = C // n_head
    qkv, _ = layers.linear_forward(x, c_attn_w, c_attn_b)              # (B, T, 3C)
    if split == "interleaved":
        qkv = qkv.reshape(B, T, n_head, 3, hs).transpose(3, 0, 2, 1, 4)
    elif split == "no transpose":
        qkv = qkv.reshape(B, T, 3, C).transpose(2, 0, 1, 3).reshape(3, B, n_head, T, hs)
    else:
        qkv = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
    y, _ = attention.sdpa_forward(qkv[0], qkv[1], qkv[2], causal=causal)
    y = y.reshape(B, T, C) if merge == "no transpose" else y.transpose(0, 2, 1, 3).reshape(B, T, C)
    return layers.linear_forward(y, c_proj_w, c_proj_b)[0], None


@mistake("mha_forward", "split the heads with reshape (B, T, nh, hs) then transpose to "
                        "(B, nh, T, hs): a reshape straight to (B, nh, T, hs) mixes positions "
                        "and channels")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, split="no transpose")


@mistake("mha_forward", "merge the heads back with transpose to (B, T, nh, hs) before the "
                        "reshape to (B, T, C)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, merge="no transpose")


@mistake("mha_forward", "c_attn's output is [q | k | v], each C wide: reshape it (B, T, 3, nh, "
                        "hs), not (B, T, nh, 3, hs)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, split="interleaved")


@mistake("mha_forward", "GPT's self-attention is causal: sdpa_forward(q, k, v, causal=True)")
def _(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, *, n_kv_head=None, rope=None,
      dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    return _mha(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, causal=False)


def _mha_grad_cases(rng):
    return [Case("B = 2, T = 3, C = 4, nh = 2", _mha_inputs(rng, 2, 3, 4, 2)),
            Case("T = 1, nh = 3", _mha_inputs(rng, 1, 1, 6, 3)),
            Case("nh = 4, hs = 2", _mha_inputs(rng, 1, 4, 8, 4))]


exercise("mha_backward", "multi-head attention's backward: the heads merged back, q, k, v "
         "side by side", reference=attention.mha_backward, forward=attention.mha_forward,
         returns=("dx", "dc_attn_w", "dc_attn_b", "dc_proj_w", "dc_proj_b"),
         cases=_mha_grad_cases)


def _mha_backward(dout, cache, heads="right", order="right"):
    B, T, C = dout.shape
    _, nh, _, _, hs = cache.sdpa.q.shape                             # (B, nh, 1, T, hs)
    dy, dc_proj_w, dc_proj_b = layers.linear_backward(dout, cache.c_proj)
    if heads == "no transpose":
        dy = dy.reshape(B, nh, 1, T, hs)
    else:
        dy = dy.reshape(B, T, nh, 1, hs).transpose(0, 2, 3, 1, 4)
    dq, dk, dv = attention.sdpa_backward(dy, cache.sdpa)           # (B, nh, 1, T, hs) each
    stacked = np.stack([dq, dk, dv])[:, :, :, 0]                     # (3, B, nh, T, hs)
    if order == "interleaved":
        dqkv = stacked.transpose(1, 3, 2, 0, 4).reshape(B, T, 3 * C)
    else:
        dqkv = stacked.transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
    dx, dc_attn_w, dc_attn_b = layers.linear_backward(dqkv, cache.c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b


@mistake("mha_backward", "the gradient of the merged heads dy (B, T, C) splits like the forward "
                         "split: reshape (B, T, nh, 1, hs), then transpose to (B, nh, 1, T, "
                         "hs), the layout of cache.sdpa.q")
def _(dout, cache):
    return _mha_backward(dout, cache, heads="no transpose")


@mistake("mha_backward", "dq, dk, dv go back side by side, [dq | dk | dv] each C wide: "
                         "(B, T, 3, nh, hs), as c_attn's output was split")
def _(dout, cache):
    return _mha_backward(dout, cache, order="interleaved")


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention: the backward pass (notebook 06)
# ----------------------------------------------------------------------------------------------

def attention_with_dropout(q, k, v, causal=True, dropout=0.0, seed=0):
    """sdpa_forward with a fixed dropout pattern on the weights (the same on every call, so that
    numerical gradients see one function). -> (out, SDPACache)"""
    return attention.sdpa_forward(q, k, v, causal=causal, dropout=dropout, train=dropout > 0.0,
                                  rng=np.random.default_rng(seed))


def _sdpa_grad_cases(rng):
    return [Case("(B, nh, T, hs), causal", _qkv(rng, (2, 2), 4, 4, 3)),
            Case("not causal", _qkv(rng, (2,), 3, 3, 5, causal=False)),
            Case("T = 1", _qkv(rng, (1, 1), 1, 1, 4)),
            Case("2 queries, 5 keys (S > T)", _qkv(rng, (1, 2), 2, 5, 3)),
            Case("dropout 0.3 on the weights", _qkv(rng, (1, 2), 4, 4, 2, dropout=0.3,
                                                    seed=5))]


exercise("sdpa_backward", "attention's backward: dq, dk, dv through softmax(q k^T / sqrt(hs) + "
         "mask) v", reference=attention.sdpa_backward, forward=attention_with_dropout,
         returns=("dq", "dk", "dv"), cases=_sdpa_grad_cases)


def _sdpa_backward(dout, cache, scale=True, dv_t=True, dk_t=True, row_sum=True, dropout=True):
    q, k, v, att, drop, s = cache
    mask = drop.mask if dropout and drop.mask is not None else 1.0
    att_d = att * mask
    dv = (att_d.swapaxes(-1, -2) if dv_t else att_d) @ dout
    datt = (dout @ v.swapaxes(-1, -2)) * mask
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) if row_sum else att * datt
    if scale:
        ds = ds * s
    dq = ds @ k
    dk = (ds.swapaxes(-1, -2) if dk_t else ds) @ q
    return dq, dk, dv


@mistake("sdpa_backward", "the scores were scaled, s = scale * q k^T: dq and dk get the factor "
                          "cache.scale")
def _(dout, cache):
    return _sdpa_backward(dout, cache, scale=False)


@mistake("sdpa_backward", "out = att @ v, so dv = att^T @ dout, (S, T) @ (T, hs)")
def _(dout, cache):
    return _sdpa_backward(dout, cache, dv_t=False)


@mistake("sdpa_backward", "s = q k^T, so dk = ds^T @ q, (S, T) @ (T, hs)")
def _(dout, cache):
    return _sdpa_backward(dout, cache, dk_t=False)


@mistake("sdpa_backward", "the softmax's backward needs its row-sum term: ds = att * (datt - "
                          "sum(datt * att))")
def _(dout, cache):
    return _sdpa_backward(dout, cache, row_sum=False)


@mistake("sdpa_backward", "with dropout the output used att * drop.mask: dv = (att * mask)^T "
                          "dout, and datt gets the mask too (dropout_backward)")
def _(dout, cache):
    return _sdpa_backward(dout, cache, dropout=False)
