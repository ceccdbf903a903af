"""Rotary positions (minillm/core/rope.py): the tables, pairs (i, i + hs/2) turned by their
angles, the relative-position property, the backward as the inverse rotation, a float64
gradient check, dtypes, and the channel order of Meta's checkpoints."""
import numpy as np
import pytest

from minillm.core.gradcheck import layer_grad_errors
from minillm.core.rope import rope_backward, rope_forward, rope_tables, rotate_half

BOUND = 1e-8


def test_tables_follow_the_formula():
    T, hs, theta = 7, 8, 500000.0
    cos, sin = rope_tables(T, hs, theta, start=3, dtype=np.float64)
    inv_freq = theta ** (-np.arange(0, hs, 2) / hs)
    angles = np.arange(3, 3 + T)[:, None] * np.concatenate([inv_freq, inv_freq])
    assert cos.shape == sin.shape == (T, hs)
    np.testing.assert_allclose(cos, np.cos(angles), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin, np.sin(angles), rtol=0, atol=1e-15)
    full_cos, _ = rope_tables(10, hs, theta, dtype=np.float64)
    np.testing.assert_array_equal(full_cos[3:10], cos)          # start = a slice of the table
    assert rope_tables(4, 4)[0].dtype == np.float32
    with pytest.raises(ValueError, match="even head size"):
        rope_tables(4, 3)


def test_each_pair_is_turned_by_its_angle():
    hs, t = 6, 3
    cos, sin = rope_tables(t + 1, hs, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(1, 1, t + 1, hs))
    out, _ = rope_forward(x, cos, sin)
    for i in range(hs // 2):
        w = t * 10000.0 ** (-2 * i / hs)
        a, b = x[0, 0, t, i], x[0, 0, t, i + hs // 2]
        np.testing.assert_allclose(out[0, 0, t, [i, i + hs // 2]],
                                   [a * np.cos(w) - b * np.sin(w), b * np.cos(w) + a * np.sin(w)])
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1))
    np.testing.assert_array_equal(out[..., 0, :], x[..., 0, :])   # position 0: no turn


@pytest.mark.parametrize("shift", [1, 5, 100, 12345])
def test_score_depends_only_on_the_distance(shift):
    """rope(q, m) . rope(k, n) is the same at (m + s, n + s): only n - m matters."""
    rng = np.random.default_rng(shift)
    hs = 16
    q, k = rng.normal(size=hs), rng.normal(size=hs)

    def score(m, n):
        cm, sm = rope_tables(1, hs, start=m, dtype=np.float64)
        cn, sn = rope_tables(1, hs, start=n, dtype=np.float64)
        return float(rope_forward(q, cm, sm)[0].ravel() @ rope_forward(k, cn, sn)[0].ravel())

    for m, n in [(9, 2), (2, 9), (4, 4), (31, 0)]:
        assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-9, abs=1e-12)
    assert abs(score(9, 2) - score(9, 3)) > 1e-3                  # and it does depend on n - m


def test_backward_is_the_inverse_rotation(rng):
    cos, sin = rope_tables(5, 8, dtype=np.float64)
    x = rng.normal(size=(2, 3, 5, 8))
    out, cache = rope_forward(x, cos, sin)
    np.testing.assert_allclose(rope_backward(out, cache), x, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(rope_backward(x, cache), rope_forward(x, cos, -sin)[0])


def test_gradient_check(rng):
    cos, sin = rope_tables(6, 8, theta=10.0, start=2, dtype=np.float64)
    x = rng.normal(size=(2, 3, 6, 8))
    errors = layer_grad_errors(lambda x: rope_forward(x, cos, sin), rope_backward, [x], rng,
                               names=["x"])
    assert errors["x"] < BOUND, errors


def test_float32_stays_float32():
    cos, sin = rope_tables(4, 8)
    x = np.ones((1, 2, 4, 8), np.float32)
    out, cache = rope_forward(x, cos, sin)
    assert out.dtype == rope_backward(out, cache).dtype == np.float32


def test_meta_pairs_need_the_permutation_hugging_face_applies():
    """Meta's RoPE turns pairs (2i, 2i + 1); rotate_half turns (i, i + hs/2). They agree after
    the permutation of each head's channels [0, 2, 4, ..., 1, 3, 5, ...] that Hugging Face's
    conversion script applies to the q/k weights (its checkpoints have it already)."""
    rng = np.random.default_rng(3)
    T, hs = 5, 8
    cos, sin = rope_tables(T, hs, dtype=np.float64)
    c, s = cos[:, :hs // 2], sin[:, :hs // 2]                     # one angle per pair
    x = rng.normal(size=(1, 2, T, hs))
    meta = np.empty_like(x)                                       # x[2i] + i x[2i+1], turned
    meta[..., 0::2] = x[..., 0::2] * c - x[..., 1::2] * s
    meta[..., 1::2] = x[..., 1::2] * c + x[..., 0::2] * s
    perm = np.concatenate([np.arange(0, hs, 2), np.arange(1, hs, 2)])
    np.testing.assert_allclose(rope_forward(x[..., perm], cos, sin)[0], meta[..., perm],
                               atol=1e-14)
    assert not np.allclose(rope_forward(x, cos, sin)[0], meta)    # without it: wrong
    np.testing.assert_array_equal(rotate_half(x[..., perm])[..., :hs // 2], -x[..., 1::2])
