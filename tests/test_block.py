"""The MLP and the pre-LN block (minillm/core/block.py): float64 gradient checks of every input
and parameter, with and without dropout."""
import numpy as np
import pytest

from minillm.core.block import block_backward, block_forward, mlp_backward, mlp_forward
from minillm.core.config import GPTConfig, block_param_shapes
from minillm.core.gradcheck import check_grad, dot_loss, grad_errors, layer_grad_errors

BOUND = 1e-8


def assert_small(errors, bound=BOUND):
    for name, err in errors.items():
        assert err < bound, f"{name}: error {err:.2e} >= {bound:.0e}"


def test_mlp(rng):
    C = 4
    x = rng.normal(size=(2, 3, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 4 * C), (4 * C,), (4 * C, C), (C,)]]
    assert_small(layer_grad_errors(mlp_forward, mlp_backward, [x, *params], rng))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_block(rng, dropout):
    C, nh = 6, 2
    x = rng.normal(size=(2, 4, C))
    config = GPTConfig(n_embd=C, n_head=nh, dropout=dropout)
    p = {k: rng.normal(scale=0.5, size=s) for k, s in block_param_shapes(config).items()}

    def forward():
        return block_forward(x, p, config, rng=np.random.default_rng(3), train=True)

    out, cache = forward()
    w = rng.normal(size=out.shape)
    dx, grads = block_backward(w, cache, config)
    assert sorted(grads) == sorted(p)
    assert check_grad(lambda: dot_loss(forward()[0], w), x, dx) < BOUND
    assert_small(grad_errors(lambda: dot_loss(forward()[0], w), p, grads))
    assert cache.att.shape == (2, nh, 4, 4)


def test_float32_stays_float32(rng):
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    out, cache = mlp_forward(f(2, 3, 4), f(4, 16), f(16), f(16, 4), f(4))
    grads = mlp_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
