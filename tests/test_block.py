"""The MLPs and the pre-norm block (minillm/core/block.py): float64 gradient checks of every
input and parameter, with and without dropout, for GPT-2's block and the Llama-style pieces."""
import numpy as np
import pytest

from minillm.core.block import (block_backward, block_forward, mlp_backward, mlp_forward,
                                swiglu_backward, swiglu_forward)
from minillm.core.config import GPTConfig, block_param_shapes
from minillm.core.gradcheck import check_grad, dot_loss, grad_errors, layer_grad_errors
from minillm.core.rope import rope_tables

BOUND = 1e-8


def assert_small(errors, bound=BOUND):
    for name, err in errors.items():
        assert err < bound, f"{name}: error {err:.2e} >= {bound:.0e}"


def test_mlp(rng):
    C = 4
    x = rng.normal(size=(2, 3, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 4 * C), (4 * C,), (4 * C, C), (C,)]]
    assert_small(layer_grad_errors(mlp_forward, mlp_backward, [x, *params], rng))


def test_swiglu(rng):
    C, I = 4, 6
    x = rng.normal(size=(2, 3, C))
    params = [rng.normal(scale=0.5, size=s) for s in [(C, 2 * I), (2 * I,), (I, C), (C,)]]
    assert_small(layer_grad_errors(swiglu_forward, swiglu_backward, [x, *params], rng))
    out, cache = swiglu_forward(x, *params)
    gate, up = np.split(x @ params[0] + params[1], 2, axis=-1)
    silu = gate / (1.0 + np.exp(-gate))
    np.testing.assert_allclose(out, (silu * up) @ params[2] + params[3], rtol=1e-12)
    no_bias = swiglu_backward(np.ones_like(out), swiglu_forward(x, params[0], None,
                                                                params[2], None)[1])
    assert no_bias[2] is None and no_bias[4] is None


BLOCKS = {
    "gpt2": {},
    "llama": dict(norm="rmsnorm", pos_encoding="rope", mlp="swiglu", bias=False, n_kv_head=1),
    "gpt2+swiglu+gqa": dict(mlp="swiglu", n_kv_head=1, intermediate_size=5),
    "rmsnorm+bias": dict(norm="rmsnorm", bias=True),
    "layernorm-no-bias": dict(bias=False),
}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("kind", BLOCKS)
def test_block(rng, dropout, kind):
    C, nh = 8, 2
    x = rng.normal(size=(2, 4, C))
    config = GPTConfig(n_embd=C, n_head=nh, dropout=dropout, **BLOCKS[kind])
    p = {k: rng.normal(scale=0.5, size=s) for k, s in block_param_shapes(config).items()}
    rope = None
    if config.pos_encoding == "rope":
        rope = rope_tables(4, config.head_size, theta=10.0, dtype=np.float64)

    def forward():
        return block_forward(x, p, config, rope=rope, rng=np.random.default_rng(3), train=True)

    out, cache = forward()
    w = rng.normal(size=out.shape)
    dx, grads = block_backward(w, cache, config)
    assert sorted(grads) == sorted(p)
    assert check_grad(lambda: dot_loss(forward()[0], w), x, dx) < BOUND
    assert_small(grad_errors(lambda: dot_loss(forward()[0], w), p, grads, config=config))
    assert ("ln_1.bias" in p) == (config.bias and config.norm == "layernorm")
    assert cache.att.shape == (2, nh, 4, 4)


def test_float32_stays_float32(rng):
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    out, cache = mlp_forward(f(2, 3, 4), f(4, 16), f(16), f(16, 4), f(4))
    grads = mlp_backward(np.ones_like(out), cache)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
