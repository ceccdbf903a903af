"""Attention (minillm/core/attention.py): float64 gradient checks, the causal mask, heads as
reshapes, grouped-query attention (against np.repeat, and with n_kv_head = n_head bit for bit
the multi-head attention minillm had before it), rotary positions, the KV caches.

One gradient is exactly zero by mathematics: the bias of the keys in ``c_attn`` (adding the same
q.b to every score of a row does not change a softmax). ``grad_errors`` reports it apart, as an
absolute value, under "c_attn.bias (keys)".
"""
import numpy as np
import pytest

from minillm.core.attention import (KVCache, RollingKVCache, causal_mask, head_mask_backward,
                                    kv_cache_bytes, mha_backward, mha_forward, sdpa_backward,
                                    sdpa_forward)
from minillm.core.gradcheck import layer_grad_errors
from minillm.core.layers import linear_backward, linear_forward
from minillm.core.rope import rope_forward, rope_tables

BOUND = 1e-8


def assert_small(errors, bound=BOUND):
    for name, err in errors.items():
        assert err < bound, f"{name}: error {err:.2e} >= {bound:.0e}"


def test_causal_mask_with_cached_positions():
    mask = causal_mask(2, 4, np.float64)           # 2 new queries after 2 cached positions
    assert np.array_equal(np.isinf(mask), [[False, False, False, True],
                                           [False, False, False, False]])
    assert not mask.flags.writeable


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa(rng, causal):
    q, k, v = (rng.normal(size=(2, 2, 4, 3)) for _ in range(3))

    def forward(q, k, v):
        return sdpa_forward(q, k, v, causal=causal)

    assert_small(layer_grad_errors(forward, sdpa_backward, [q, k, v], rng))
    out, cache = forward(q, k, v)
    att = cache.att
    assert att.shape == (2, 2, 4, 4) and np.allclose(att.sum(-1), 1.0)
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(3)
    if causal:
        assert np.all(att[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)
        scores = np.where(np.tril(np.ones((4, 4))) == 1, scores, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert np.allclose(out, expected @ v, rtol=1e-12)


def test_sdpa_with_dropout_fixed_mask(rng):
    q, k, v = (rng.normal(size=(1, 2, 4, 3)) for _ in range(3))

    def forward(q, k, v):
        # the same seed each call gives the same dropout pattern: a fixed mask
        return sdpa_forward(q, k, v, causal=True, dropout=0.25, rng=np.random.default_rng(7),
                            train=True)

    assert forward(q, k, v)[1].drop.mask is not None
    assert_small(layer_grad_errors(forward, sdpa_backward, [q, k, v], rng))


def test_multi_head_attention(rng):
    B, T, C, nh = 2, 4, 6, 3
    x = rng.normal(size=(B, T, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 3 * C), (3 * C,), (C, C), (C,)]]

    def forward(x, *p):
        return mha_forward(x, *p, n_head=nh)

    names = ["x", "c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    assert_small(layer_grad_errors(forward, mha_backward, [x, *params], rng, names=names))


def test_multi_head_equals_per_head_loop(rng):
    """The reshapes split heads exactly as slicing the channels head by head would."""
    B, T, C, nh = 2, 5, 8, 2
    hs = C // nh
    x = rng.normal(size=(B, T, C))
    wa, ba = rng.normal(size=(C, 3 * C)), rng.normal(size=3 * C)
    wp, bp = rng.normal(size=(C, C)), rng.normal(size=C)
    out, cache = mha_forward(x, wa, ba, wp, bp, n_head=nh)
    q, k, v = np.split(x @ wa + ba, 3, axis=-1)
    heads = [sdpa_forward(q[..., h * hs:(h + 1) * hs], k[..., h * hs:(h + 1) * hs],
                          v[..., h * hs:(h + 1) * hs])[0] for h in range(nh)]
    assert np.allclose(out, np.concatenate(heads, axis=-1) @ wp + bp, rtol=1e-12)
    assert cache.att.shape == (B, nh, T, T)


def test_kv_cache_continues_where_it_left_off(rng):
    B, T, C, nh = 1, 6, 8, 2
    x = rng.normal(size=(B, T, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 3 * C), (3 * C,), (C, C), (C,)]]
    full, _ = mha_forward(x, *params, n_head=nh)
    kv_cache = KVCache(n_layer=1, B=B, n_kv_head=nh, max_T=T, head_size=C // nh, dtype=np.float64)
    first, _ = mha_forward(x[:, :4], *params, n_head=nh, kv_cache=kv_cache)
    kv_cache.length = 4
    rest, cache = mha_forward(x[:, 4:], *params, n_head=nh, kv_cache=kv_cache)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), full, rtol=1e-12)
    assert cache.att.shape == (B, nh, 2, 6)
    assert kv_cache.nbytes == 2 * 1 * B * nh * T * (C // nh) * 8
    with pytest.raises(ValueError, match="holds 6 positions"):
        kv_cache.append(0, np.zeros((B, nh, 3, 4)), np.zeros((B, nh, 3, 4)))


def test_float32_stays_float32(rng):
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    out, cache = mha_forward(f(2, 3, 4), f(4, 12), f(12), f(4, 4), f(4), n_head=2)
    grads = mha_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


# -- grouped-query attention -------------------------------------------------------------------

def gqa_inputs(rng, B=2, T=5, n_head=4, n_kv_head=2, hs=3, bias=True):
    C = n_head * hs
    width = (n_head + 2 * n_kv_head) * hs
    x = rng.normal(size=(B, T, C))
    w = [rng.normal(size=(C, width)) / np.sqrt(C), rng.normal(size=width) if bias else None,
         rng.normal(size=(C, C)) / np.sqrt(C), rng.normal(size=C) if bias else None]
    return x, w


def repeat_reference(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head, n_kv_head, rope=None):
    """Grouped-query attention written the obvious way: a loop over query heads, each reading
    key/value head h // group (what np.repeat of the key/value heads would give)."""
    B, T, C = x.shape
    hs, group = C // n_head, n_head // n_kv_head
    qkv = x @ c_attn_w + (0.0 if c_attn_b is None else c_attn_b)
    q = qkv[..., :C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
    k = qkv[..., C:C + n_kv_head * hs].reshape(B, T, n_kv_head, hs).transpose(0, 2, 1, 3)
    v = qkv[..., C + n_kv_head * hs:].reshape(B, T, n_kv_head, hs).transpose(0, 2, 1, 3)
    if rope is not None:
        q, k = rope_forward(q, *rope)[0], rope_forward(k, *rope)[0]
    heads = [sdpa_forward(q[:, h], k[:, h // group], v[:, h // group])[0] for h in range(n_head)]
    y = np.concatenate(heads, axis=-1)                               # (B, T, C)
    return y @ c_proj_w + (0.0 if c_proj_b is None else c_proj_b)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize("use_rope", [False, True])
def test_grouped_query_attention_equals_the_loop_over_heads(rng, n_kv_head, use_rope):
    x, w = gqa_inputs(rng, n_kv_head=n_kv_head, hs=4)
    rope = rope_tables(5, 4, dtype=np.float64) if use_rope else None
    out, cache = mha_forward(x, *w, n_head=4, n_kv_head=n_kv_head, rope=rope)
    ref = repeat_reference(x, *w, n_head=4, n_kv_head=n_kv_head, rope=rope)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    assert cache.sdpa.k.shape == (2, n_kv_head, 1, 5, 4)           # each key head held once
    assert cache.sdpa.q.shape == (2, n_kv_head, 4 // n_kv_head, 5, 4)
    assert cache.att.shape == (2, 4, 5, 5) and np.allclose(cache.att.sum(-1), 1.0)


@pytest.mark.parametrize("n_kv_head, use_rope, bias", [(4, False, True), (2, False, True),
                                                       (1, False, False), (2, True, True),
                                                       (1, True, False)])
def test_grouped_query_attention_gradient_check(rng, n_kv_head, use_rope, bias):
    x, w = gqa_inputs(rng, n_kv_head=n_kv_head, bias=bias, hs=4)
    rope = rope_tables(5, 4, theta=10.0, dtype=np.float64) if use_rope else None
    names = ["x", "c_attn_w", "c_attn_b", "c_proj_w", "c_proj_b"]   # the keys' bias checked below
    keep = [i for i, a in enumerate([x, *w]) if a is not None]

    def forward(*arrays):
        full = [None] * 5
        for i, a in zip(keep, arrays):
            full[i] = a
        return mha_forward(full[0], *full[1:], n_head=4, n_kv_head=n_kv_head, rope=rope)

    def backward(dout, cache):
        grads = mha_backward(dout, cache)
        assert all((grads[i] is None) == (i not in keep) for i in range(5))
        return tuple(grads[i] for i in keep)

    errors = layer_grad_errors(forward, backward, [[x, *w][i] for i in keep], rng,
                               names=[names[i] for i in keep])
    assert_small(errors)
    if bias:   # q.b_k is the same for every key of a row, so a softmax ignores it ... unless
        out, cache = forward(*[[x, *w][i] for i in keep])       # RoPE turns it differently
        dkeys = mha_backward(rng.normal(size=out.shape), cache)[2][16:16 + 4 * n_kv_head]
        assert (np.abs(dkeys).max() > 1e-3) if use_rope else (np.abs(dkeys).max() < 1e-12)


def mha_before(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head):
    """minillm's multi-head attention as it was before grouped-query attention (kept here to
    show that n_kv_head = n_head changes nothing, bit for bit)."""
    B, T, C = x.shape
    hs = C // n_head
    qkv, c_attn_cache = linear_forward(x, c_attn_w, c_attn_b)
    qkv = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    y, sdpa_cache = sdpa_forward(qkv[0], qkv[1], qkv[2], causal=True)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    out, c_proj_cache = linear_forward(y, c_proj_w, c_proj_b)
    return out, (c_attn_cache, sdpa_cache, c_proj_cache)


def mha_before_backward(dout, cache):
    c_attn, sdpa, c_proj = cache
    B, T, C = dout.shape
    n_head, hs = sdpa.q.shape[1], sdpa.q.shape[3]
    dy, dc_proj_w, dc_proj_b = linear_backward(dout, c_proj)
    dq, dk, dv = sdpa_backward(dy.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3), sdpa)
    dqkv = np.empty((B, T, 3, n_head, hs), dtype=dout.dtype)
    heads = dqkv.transpose(2, 0, 3, 1, 4)
    heads[0], heads[1], heads[2] = dq, dk, dv
    dx, dc_attn_w, dc_attn_b = linear_backward(dqkv.reshape(B, T, 3 * C), c_attn)
    return dx, dc_attn_w, dc_attn_b, dc_proj_w, dc_proj_b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_as_many_key_heads_as_query_heads_is_the_old_multi_head_attention(rng, dtype):
    x, w = gqa_inputs(rng, B=3, T=7, n_head=4, n_kv_head=4, hs=8)
    x, w = x.astype(dtype), [a.astype(dtype) for a in w]
    ref, ref_cache = mha_before(x, *w, n_head=4)
    for n_kv_head in (None, 4):
        out, cache = mha_forward(x, *w, n_head=4, n_kv_head=n_kv_head)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(cache.att, ref_cache[1].att)
        dout = rng.normal(size=out.shape).astype(dtype)
        for got, want in zip(mha_backward(dout, cache), mha_before_backward(dout, ref_cache)):
            np.testing.assert_array_equal(got, want)


def test_rotary_attention_is_causal(rng):
    x, w = gqa_inputs(rng, T=6, hs=4)
    rope = rope_tables(6, 4, dtype=np.float64)
    out, cache = mha_forward(x, *w, n_head=4, n_kv_head=2, rope=rope)
    changed = x.copy()
    changed[:, 3:] = rng.normal(size=changed[:, 3:].shape)            # change the future
    out2, _ = mha_forward(changed, *w, n_head=4, n_kv_head=2, rope=rope)
    np.testing.assert_array_equal(out[:, :3], out2[:, :3])
    assert not np.allclose(out[:, 3:], out2[:, 3:])
    assert np.all(np.triu(cache.att, 1) == 0.0)


def test_kv_cache_holds_the_key_value_heads_and_continues_with_rope(rng):
    B, T, hs, nkv = 2, 7, 4, 2
    x, w = gqa_inputs(rng, B=B, T=T, n_kv_head=nkv, hs=hs)
    full, _ = mha_forward(x, *w, n_head=4, n_kv_head=nkv, rope=rope_tables(T, hs, dtype=float))
    cache = KVCache(n_layer=1, B=B, n_kv_head=nkv, max_T=T, head_size=hs, dtype=np.float64)
    assert cache.k.shape == (1, B, nkv, T, hs)
    assert cache.nbytes == kv_cache_bytes(1, nkv, hs, T, 8, batch_size=B)
    parts = []
    for start, stop in [(0, 3), (3, 4), (4, 5), (5, 7)]:              # a prompt, then one by one
        rope = rope_tables(stop - start, hs, start=start, dtype=np.float64)
        parts.append(mha_forward(x[:, start:stop], *w, n_head=4, n_kv_head=nkv, rope=rope,
                                 kv_cache=cache)[0])
        cache.length = stop
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12)


def test_rolling_cache_keeps_the_last_positions(rng):
    B, W, hs = 1, 4, 2
    cache = RollingKVCache(n_layer=1, B=B, n_kv_head=1, max_T=W, head_size=hs, dtype=np.float64)
    keys = rng.normal(size=(B, 1, 9, hs))
    k, _ = cache.append(0, keys[:, :, :3], keys[:, :, :3])            # filling: time order
    cache.length = 3
    np.testing.assert_array_equal(k, keys[:, :, :3])
    for t in range(3, 9):                                             # past the window
        k, _ = cache.append(0, keys[:, :, t:t + 1], keys[:, :, t:t + 1])
        cache.length += 1
        held = sorted(map(tuple, k[0, 0]))
        assert held == sorted(map(tuple, keys[0, 0, max(0, t - W + 1):t + 1]))   # last W
    with pytest.raises(ValueError, match="one position at a time"):
        cache.append(0, keys[:, :, :2], keys[:, :, :2])
    assert cache.rolling and not KVCache.rolling


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_head_mask(rng, n_kv_head):
    """A head mask of ones changes nothing, bit for bit; a zero is the head's rows of c_proj
    set to zero; the gradients (inputs, weights, and the mask itself) pass the check."""
    B, T, C, nh = 2, 4, 8, 4
    nkv = n_kv_head or nh
    x = rng.normal(size=(B, T, C))
    w = [rng.normal(scale=0.5, size=s) for s in [(C, (nh + 2 * nkv) * 2), ((nh + 2 * nkv) * 2,),
                                                 (C, C), (C,)]]
    plain, plain_cache = mha_forward(x, *w, n_head=nh, n_kv_head=n_kv_head)
    ones, ones_cache = mha_forward(x, *w, n_head=nh, n_kv_head=n_kv_head, head_mask=np.ones(nh))
    assert np.array_equal(plain, ones)
    dout = rng.normal(size=plain.shape)
    for a, b in zip(mha_backward(dout, plain_cache), mha_backward(dout, ones_cache)):
        assert np.array_equal(a, b)
    zeroed = w[2].copy()
    zeroed[2:4] = 0.0                                   # head 1's rows of c_proj (hs = 2)
    mask = np.array([1.0, 0.0, 1.0, 1.0])
    assert np.allclose(mha_forward(x, *w, n_head=nh, n_kv_head=n_kv_head, head_mask=mask)[0],
                       mha_forward(x, w[0], w[1], zeroed, w[3], n_head=nh, n_kv_head=n_kv_head)[0],
                       rtol=0, atol=1e-14)
    m = rng.uniform(0.5, 1.5, size=nh)

    def forward(x, a, b, p, c, m):
        return mha_forward(x, a, b, p, c, n_head=nh, n_kv_head=n_kv_head, head_mask=m)

    def backward(dout, cache):
        return (*mha_backward(dout, cache), head_mask_backward(dout, cache))

    names = ["x", "c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias", "head_mask"]
    errors = layer_grad_errors(forward, backward, [x, *w, m], rng, names=names)
    errors.pop("c_attn.bias (keys)")              # (GPT-2's middle third: not GQA's keys)
    assert_small(errors)


def test_head_hook_sees_the_heads_and_has_no_backward(rng):
    x = rng.normal(size=(1, 3, 8))
    w = (np.eye(8, 24), np.zeros(24), np.eye(8), np.zeros(8))
    seen = []
    out, cache = mha_forward(x, *w, n_head=2, layer=5,
                             head_hook=lambda layer, y: seen.append((layer, y.shape)) or 0 * y)
    assert seen == [(5, (1, 3, 2, 4))] and np.array_equal(out, np.zeros_like(out))
    with pytest.raises(ValueError, match="head_hook"):
        mha_backward(np.ones_like(out), cache)
    with pytest.raises(ValueError, match="head_mask"):
        head_mask_backward(np.ones_like(out), mha_forward(x, *w, n_head=2)[1])
