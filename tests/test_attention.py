"""Attention (minillm/core/attention.py): float64 gradient checks, the causal mask, heads as
reshapes, the KV cache.

One gradient is exactly zero by mathematics: the bias of the keys in ``c_attn`` (adding the same
q.b to every score of a row does not change a softmax). ``grad_errors`` reports it apart, as an
absolute value, under "c_attn.bias (keys)".
"""
import numpy as np
import pytest

from minillm.core.attention import (KVCache, causal_mask, mha_backward, mha_forward,
                                    sdpa_backward, sdpa_forward)
from minillm.core.gradcheck import layer_grad_errors

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
