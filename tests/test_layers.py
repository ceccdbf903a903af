"""Float64 gradient checks of every layer in minillm/core/layers.py, and their invariants.

Each check draws random, non-trivial inputs, takes the scalar ``sum(out * w)`` with a random
upstream gradient ``w`` (so ``dout = w``), and compares every analytic gradient with the
numerical one (``layer_grad_errors``). Bound: relative error (max |a - b| / max |a|, see
``rel_error``) below 1e-8 (measured errors are 1e-11 to 1e-10; the bound leaves room for other
BLAS builds).
"""
import warnings

import numpy as np
import pytest

from minillm.core.gradcheck import check_grad, dot_loss, layer_grad_errors
from minillm.core.layers import (cross_entropy_backward, cross_entropy_forward, dropout_backward,
                                 dropout_forward, embedding_backward, embedding_forward,
                                 gelu_backward, gelu_forward, gelu_fused_backward,
                                 gelu_fused_forward, layernorm_backward, layernorm_forward,
                                 linear_backward, linear_forward, position_embedding_backward,
                                 position_embedding_forward, rmsnorm_backward, rmsnorm_forward,
                                 silu_backward, silu_forward, sinusoidal_encoding,
                                 softmax_backward, softmax_forward)

BOUND = 1e-8


def assert_small(errors, bound=BOUND):
    for name, err in errors.items():
        assert err < bound, f"{name}: error {err:.2e} >= {bound:.0e}"


def test_linear(rng):
    x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    assert_small(layer_grad_errors(linear_forward, linear_backward, [x, W, b], rng))


def test_linear_without_bias(rng):
    x, W = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5))
    out, cache = linear_forward(x, W)
    assert np.allclose(out, x @ W, rtol=1e-12)
    assert linear_backward(np.ones_like(out), cache)[2] is None
    assert_small(layer_grad_errors(linear_forward, lambda d, c: linear_backward(d, c)[:2],
                                   [x, W], rng))


def test_layernorm(rng):
    x = rng.normal(loc=0.5, scale=2.0, size=(2, 3, 6))
    w, b = rng.normal(size=6), rng.normal(size=6)
    assert_small(layer_grad_errors(layernorm_forward, layernorm_backward, [x, w, b], rng))


def test_layernorm_cache_is_minimal(rng):
    x = rng.normal(size=(2, 3, 6))
    out, cache = layernorm_forward(x, np.ones(6), np.zeros(6))
    assert cache._fields == ("x", "weight", "mean", "rstd", "has_bias")
    assert cache.mean.shape == cache.rstd.shape == (2, 3, 1)
    assert np.allclose(out.mean(-1), 0) and np.allclose(out.var(-1), 1, atol=1e-4)


def test_layernorm_without_bias(rng):
    x, w = rng.normal(loc=0.5, scale=2.0, size=(2, 3, 6)), rng.normal(size=6)
    out, cache = layernorm_forward(x, w, None)
    np.testing.assert_array_equal(out, layernorm_forward(x, w, np.zeros(6))[0])
    assert layernorm_backward(np.ones_like(out), cache)[2] is None
    assert_small(layer_grad_errors(lambda x, w: layernorm_forward(x, w, None),
                                   lambda d, c: layernorm_backward(d, c)[:2], [x, w], rng))


def test_rmsnorm(rng):
    x, w = rng.normal(loc=0.5, scale=2.0, size=(2, 3, 6)), rng.normal(size=6)
    errors = layer_grad_errors(lambda x, w: rmsnorm_forward(x, w, eps=1e-5), rmsnorm_backward,
                               [x, w], rng, names=["x", "weight"])
    assert_small(errors)


def test_rmsnorm_formula_and_what_it_leaves_alone(rng):
    x, w = rng.normal(loc=3.0, size=(4, 8)), rng.normal(size=8)
    out, cache = rmsnorm_forward(x, w, eps=1e-6)
    rms = np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, x / rms * w, rtol=1e-13)
    assert cache._fields == ("x", "weight", "rstd") and cache.rstd.shape == (4, 1)
    unit, _ = rmsnorm_forward(x, np.ones(8), eps=0.0)
    np.testing.assert_allclose(np.mean(unit ** 2, axis=-1), 1.0, rtol=1e-13)   # unit rms ...
    assert np.abs(unit.mean(axis=-1)).min() > 0.5        # ... but the mean is kept (no centring)
    np.testing.assert_allclose(rmsnorm_forward(5.0 * x, w, eps=0.0)[0],
                               rmsnorm_forward(x, w, eps=0.0)[0], rtol=1e-13)   # scale-free


def test_silu(rng):
    x = rng.normal(scale=3.0, size=(3, 7))
    assert_small(layer_grad_errors(silu_forward, silu_backward, [x], rng))
    np.testing.assert_allclose(silu_forward(x)[0], x / (1.0 + np.exp(-x)), rtol=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        far = silu_forward(np.array([-1000.0, 1000.0], dtype=np.float32))[0]
    assert far[0] == 0.0 and far[1] == 1000.0


@pytest.mark.parametrize("forward, backward", [(gelu_forward, gelu_backward),
                                               (gelu_fused_forward, gelu_fused_backward)],
                         ids=["literal", "fused"])
def test_gelu(rng, forward, backward):
    x = rng.normal(scale=2.0, size=(3, 7))
    assert_small(layer_grad_errors(forward, backward, [x], rng))


def test_gelu_values():
    x = np.array([-12.0, -3.0, -0.5, 0.0, 0.5, 3.0, 12.0])
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.allclose(gelu_forward(x)[0], expected, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_gelu_equals_the_literal_formula(rng, dtype):
    x = (rng.normal(scale=3.0, size=(4, 50))).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    out, cache = gelu_forward(x)
    fused, fused_cache = gelu_fused_forward(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(fused, out, **tol)
    np.testing.assert_allclose(gelu_fused_backward(dout, fused_cache), gelu_backward(dout, cache),
                               **tol)
    assert fused.dtype == out.dtype == dtype


@pytest.mark.parametrize("forward, backward", [(gelu_forward, gelu_backward),
                                               (gelu_fused_forward, gelu_fused_backward)],
                         ids=["literal", "fused"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_far_from_zero_is_exact_and_quiet(forward, backward, dtype):
    x = np.array([-1e4, -60.0, -30.0, 30.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # exp or cube overflow must not warn
        out, cache = forward(x)
        grad = backward(np.ones_like(x), cache)
    assert out.dtype == dtype and np.all(out[:3] == 0) and np.all(out[3:] == x[3:])
    assert np.all(grad[:3] == 0) and np.all(grad[3:] == 1)


def test_softmax(rng):
    x = rng.normal(scale=3.0, size=(2, 3, 5))
    assert_small(layer_grad_errors(softmax_forward, softmax_backward, [x], rng))


def test_softmax_in_place_writes_into_its_input(rng):
    x = rng.normal(size=(3, 4))
    expected, _ = softmax_forward(x)
    y, cache = softmax_forward(x, inplace=True)
    assert y is x and cache.y is x
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extreme_logits(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    y, _ = softmax_forward(x)
    assert y.dtype == dtype and np.all(np.isfinite(y))
    assert np.allclose(y.sum(-1), 1.0)
    assert np.allclose(y[0], [1, 0, 0]) and np.allclose(y[1], 1 / 3)


def test_embedding_with_repeated_ids(rng):
    idx = np.array([[1, 3, 1], [3, 3, 0]])             # ids 1 and 3 repeat; 2 is never used
    weight = rng.normal(size=(5, 4))
    out, cache = embedding_forward(idx, weight)
    w = rng.normal(size=out.shape)
    dweight = embedding_backward(w, cache)
    err = check_grad(lambda: dot_loss(embedding_forward(idx, weight)[0], w), weight, dweight)
    assert err < BOUND
    assert np.allclose(dweight[3], w[0, 1] + w[1, 0] + w[1, 1])   # three uses add up
    assert np.all(dweight[[2, 4]] == 0)


@pytest.mark.parametrize("start", [0, 2])
def test_position_embedding(rng, start):
    wpe, B, T = rng.normal(size=(8, 4)), 3, 5

    def forward(wpe):
        pos, cache = position_embedding_forward(wpe, T, start)
        return np.broadcast_to(pos, (B, T, 4)), cache

    assert_small(layer_grad_errors(forward, position_embedding_backward, [wpe], rng))


def test_sinusoidal_formula():
    T, C = 7, 6
    pe = sinusoidal_encoding(T, C, np.float64)
    for pos in range(T):
        for i in range(C // 2):
            angle = pos / 10000 ** (2 * i / C)
            assert pe[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-15)
            assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-15)
    assert sinusoidal_encoding(T, C).dtype == np.float32
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(T, 5)


def test_dropout_fixed_mask(rng):
    x = rng.normal(size=(4, 6))
    _, cache = dropout_forward(x, 0.5, rng=np.random.default_rng(0), train=True)
    assert set(np.unique(cache.mask)) == {0.0, 2.0}

    def forward(x):
        return dropout_forward(x, 0.5, mask=cache.mask)

    assert_small(layer_grad_errors(forward, dropout_backward, [x], rng))


def test_dropout_identity_and_scale(rng):
    x = rng.normal(size=(200, 200))
    assert dropout_forward(x, 0.0, rng=rng, train=True)[0] is x
    assert dropout_forward(x, 0.3, rng=rng, train=False)[0] is x
    out, cache = dropout_forward(x.astype(np.float32), 0.3, rng=rng, train=True)
    mask = cache.mask
    assert out.dtype == np.float32
    assert abs((mask == 0).mean() - 0.3) < 0.01          # about p of the elements dropped
    assert np.allclose(out[mask != 0], x[mask != 0] / 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match="rng"):
        dropout_forward(x, 0.3, rng=None, train=True)


def test_cross_entropy_with_ignored_targets(rng):
    logits = rng.normal(scale=2.0, size=(2, 4, 7))
    targets = np.array([[1, -1, 6, 0], [-1, 3, 3, 2]])
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = cross_entropy_backward(1.0, cache)
    err = check_grad(lambda: cross_entropy_forward(logits, targets)[0], logits, dlogits)
    assert err < BOUND
    assert np.all(dlogits[targets == -1] == 0)
    keep = targets != -1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp, np.where(keep, targets, 0)[..., None], -1)[..., 0][keep])
    assert loss == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="ignored"):
        cross_entropy_forward(logits, np.full((2, 4), -1))


@pytest.mark.parametrize("layer", ["linear", "layernorm", "rmsnorm", "gelu", "gelu_fused",
                                   "silu", "softmax"])
def test_float32_stays_float32(rng, layer):
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    x = f(2, 3, 4)
    cases = {
        "linear": (linear_forward, linear_backward, [x, f(4, 5), f(5)]),
        "layernorm": (layernorm_forward, layernorm_backward, [x, f(4), f(4)]),
        "rmsnorm": (rmsnorm_forward, rmsnorm_backward, [x, f(4)]),
        "gelu": (gelu_forward, gelu_backward, [x]),
        "silu": (silu_forward, silu_backward, [x]),
        "gelu_fused": (gelu_fused_forward, gelu_fused_backward, [x]),
        "softmax": (softmax_forward, softmax_backward, [x]),
    }
    forward, backward, inputs = cases[layer]
    out, cache = forward(*inputs)
    grads = backward(np.ones_like(out), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
