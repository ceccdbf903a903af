"""Float64 gradient checks of every layer's backward against centered differences.

Each check draws random, non-trivial inputs, takes the scalar ``sum(out * w)`` with a random
upstream gradient ``w`` (so ``dout = w``), and compares every analytic gradient with the
numerical one. Bound: relative error (max |a - b| / max |a|, see ``rel_error``) below 1e-8
(measured errors are 1e-11 to 1e-10; the bound leaves room for other BLAS builds).

One gradient is exactly zero by mathematics: the bias of the keys in ``c_attn`` (adding the same
q.b to every score of a row does not change a softmax). It is checked with an absolute bound.
"""
import numpy as np
import pytest

from minillm.attention import mha_backward, mha_forward, sdpa_backward, sdpa_forward
from minillm.block import block_backward, block_forward, mlp_backward, mlp_forward
from minillm.gradcheck import check_grad, dot_loss, grad_errors, numerical_grad, rel_error
from minillm.layers import (cross_entropy_backward, cross_entropy_forward, dropout_backward,
                            dropout_forward, embedding_backward, embedding_forward, gelu_backward,
                            gelu_forward, layernorm_backward, layernorm_forward, linear_backward,
                            linear_forward, position_embedding_backward, position_embedding_forward,
                            sinusoidal_encoding, softmax_backward, softmax_forward)

BOUND = 1e-8


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_small(errors, bound=BOUND):
    """Relative errors below ``bound``; the exactly-zero key-bias gradients below 1e-8."""
    for name, err in errors.items():
        limit = 1e-8 if name.endswith("(keys)") else bound
        assert err < limit, f"{name}: error {err:.2e} >= {limit:.0e}"


def assert_grads(forward, backward, inputs, rng, bound=BOUND, names=None):
    """Check backward(dout) against numerical gradients for every array in ``inputs``.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> one gradient per input (in order).
    Returns the max relative error seen (so the closing figures can be reported)."""
    out, cache = forward(*inputs)
    w = rng.normal(size=out.shape)
    grads = backward(w, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(inputs)
    names = names or [str(i) for i in range(len(inputs))]
    worst = 0.0
    for name, x, g in zip(names, inputs, grads):
        assert g.shape == x.shape, f"gradient {name} has shape {g.shape}, input {x.shape}"
        errors = grad_errors(lambda: dot_loss(forward(*inputs)[0], w), {name: x}, {name: g})
        assert_small(errors, bound)
        err = errors[name]
        worst = max(worst, err)
    return worst


def test_numerical_grad_of_known_function():
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_grad(lambda: float(np.sum(np.sin(x) * x)), x)
    assert rel_error(g, np.cos(x) * x + np.sin(x)) < 1e-9
    with pytest.raises(ValueError, match="float64"):
        numerical_grad(lambda: 0.0, x.astype(np.float32))


def test_linear(rng):
    x, W, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)
    assert_grads(linear_forward, linear_backward, [x, W, b], rng)


def test_layernorm(rng):
    x = rng.normal(loc=0.5, scale=2.0, size=(2, 3, 6))
    w, b = rng.normal(size=6), rng.normal(size=6)
    assert_grads(layernorm_forward, layernorm_backward, [x, w, b], rng)


def test_layernorm_cache_is_minimal(rng):
    x = rng.normal(size=(2, 3, 6))
    out, (x_c, w_c, mean, rstd) = layernorm_forward(x, np.ones(6), np.zeros(6))
    assert mean.shape == rstd.shape == (2, 3, 1)
    assert np.allclose(out.mean(-1), 0) and np.allclose(out.var(-1), 1, atol=1e-4)


def test_gelu(rng):
    x = rng.normal(scale=2.0, size=(3, 7))
    assert_grads(gelu_forward, gelu_backward, [x], rng)


def test_gelu_values():
    x = np.array([-12.0, -3.0, -0.5, 0.0, 0.5, 3.0, 12.0])
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.allclose(gelu_forward(x)[0], expected, rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_far_from_zero_is_exact_and_quiet(dtype):
    import warnings
    x = np.array([-1e4, -60.0, -30.0, 30.0, 1e4], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # exp overflow must not warn
        out, cache = gelu_forward(x)
        grad = gelu_backward(np.ones_like(x), cache)
    assert out.dtype == dtype and np.all(out[:3] == 0) and np.all(out[3:] == x[3:])
    assert np.all(grad[:3] == 0) and np.all(grad[3:] == 1)


def test_softmax(rng):
    x = rng.normal(scale=3.0, size=(2, 3, 5))
    assert_grads(softmax_forward, softmax_backward, [x], rng)


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

    assert_grads(forward, position_embedding_backward, [wpe], rng)


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
    _, mask = dropout_forward(x, 0.5, np.random.default_rng(0), train=True)
    assert set(np.unique(mask)) == {0.0, 2.0}

    def forward(x):
        return dropout_forward(x, 0.5, mask=mask)

    assert_grads(forward, dropout_backward, [x], rng)


def test_dropout_identity_and_scale(rng):
    x = rng.normal(size=(200, 200))
    assert dropout_forward(x, 0.0, rng, train=True)[0] is x
    assert dropout_forward(x, 0.3, rng, train=False)[0] is x
    out, mask = dropout_forward(x.astype(np.float32), 0.3, rng, train=True)
    assert out.dtype == np.float32
    assert abs((mask == 0).mean() - 0.3) < 0.01          # about p of the elements dropped
    assert np.allclose(out[mask != 0], x[mask != 0] / 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match="rng"):
        dropout_forward(x, 0.3, None, train=True)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa(rng, causal):
    q, k, v = (rng.normal(size=(2, 2, 4, 3)) for _ in range(3))

    def forward(q, k, v):
        return sdpa_forward(q, k, v, causal=causal)

    assert_grads(forward, sdpa_backward, [q, k, v], rng)
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
    drop_rng = 7

    def forward(q, k, v):
        # the same seed each call gives the same dropout pattern: a fixed mask
        return sdpa_forward(q, k, v, True, 0.25, np.random.default_rng(drop_rng), train=True)

    assert forward(q, k, v)[1].drop is not None
    assert_grads(forward, sdpa_backward, [q, k, v], rng)


def test_multi_head_attention(rng):
    B, T, C, nh = 2, 4, 6, 3
    x = rng.normal(size=(B, T, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 3 * C), (3 * C,), (C, C), (C,)]]

    def forward(x, *p):
        return mha_forward(x, *p, n_head=nh)

    names = ["x", "c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    assert_grads(forward, mha_backward, [x, *params], rng, names=names)


def test_multi_head_equals_per_head_loop(rng):
    """The reshapes split heads exactly as slicing the channels head by head would."""
    B, T, C, nh = 2, 5, 8, 2
    hs = C // nh
    x = rng.normal(size=(B, T, C))
    wa, ba, wp, bp = rng.normal(size=(C, 3 * C)), rng.normal(size=3 * C), rng.normal(size=(C, C)), rng.normal(size=C)
    out, _ = mha_forward(x, wa, ba, wp, bp, n_head=nh)
    q, k, v = np.split(x @ wa + ba, 3, axis=-1)
    heads = [sdpa_forward(q[..., h * hs:(h + 1) * hs], k[..., h * hs:(h + 1) * hs],
                          v[..., h * hs:(h + 1) * hs])[0] for h in range(nh)]
    assert np.allclose(out, np.concatenate(heads, axis=-1) @ wp + bp, rtol=1e-12)


def test_mlp(rng):
    C = 4
    x = rng.normal(size=(2, 3, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 4 * C), (4 * C,), (4 * C, C), (C,)]]
    assert_grads(mlp_forward, mlp_backward, [x, *params], rng)


def block_param_shapes(C):
    return {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (C, 3 * C),
            "attn.c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,),
            "ln_2.weight": (C,), "ln_2.bias": (C,), "mlp.c_fc.weight": (C, 4 * C),
            "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C), "mlp.c_proj.bias": (C,)}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_block(rng, dropout):
    C, nh = 6, 2
    x = rng.normal(size=(2, 4, C))
    p = {k: rng.normal(scale=0.5, size=s) for k, s in block_param_shapes(C).items()}

    def forward():
        return block_forward(x, p, nh, dropout, np.random.default_rng(3), train=True)

    out, cache = forward()
    w = rng.normal(size=out.shape)
    dx, grads = block_backward(w, cache)
    assert sorted(grads) == sorted(p)
    assert check_grad(lambda: dot_loss(forward()[0], w), x, dx) < BOUND
    assert_small(grad_errors(lambda: dot_loss(forward()[0], w), p, grads))


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


@pytest.mark.parametrize("layer", ["linear", "layernorm", "gelu", "softmax", "mha", "mlp"])
def test_float32_stays_float32(rng, layer):
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    x = f(2, 3, 4)
    cases = {
        "linear": (linear_forward, linear_backward, [x, f(4, 5), f(5)]),
        "layernorm": (layernorm_forward, layernorm_backward, [x, f(4), f(4)]),
        "gelu": (gelu_forward, gelu_backward, [x]),
        "softmax": (softmax_forward, softmax_backward, [x]),
        "mha": (lambda *a: mha_forward(*a, n_head=2), mha_backward, [x, f(4, 12), f(12), f(4, 4), f(4)]),
        "mlp": (mlp_forward, mlp_backward, [x, f(4, 16), f(16), f(16, 4), f(4)]),
    }
    forward, backward, inputs = cases[layer]
    out, cache = forward(*inputs)
    grads = backward(np.ones_like(out), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
