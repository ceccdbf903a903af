"""Exercises of notebook 05: LayerNorm, GELU, and the pre-LN block with its two residuals.

    layernorm_forward   layernorm_forward(x, weight, bias, eps=1e-5)   bias None: no shift
    gelu_forward        gelu_forward(x)                   GPT-2's tanh approximation
    block_forward       block_forward(x, p, config, ...)  x + attn(ln_1(x)), then + mlp(ln_2(x))
    block_backward      block_backward(dout, cache, config)   the gradient through both residuals

The block exercises are GPT-2's block (a default GPTConfig: LayerNorm, GELU, multi-head
attention, learned positions, biases); notebook 16's options are exercised in llama.py.
Shape legend: B batch, T time, C channels, nh heads.

>>> from minillm.exercises import check
>>> check("gelu_forward", layers.gelu_forward, verbose=False).passed
True
"""
import math

import numpy as np

from ..core import block, layers
from ..core.attention import mha_backward, mha_forward
from ..core.config import GPTConfig, block_param_shapes
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# LayerNorm
# ----------------------------------------------------------------------------------------------

def _layernorm_cases(rng):
    def case(label, shape, eps=None, spread=3.0):
        C = shape[-1]
        inputs = dict(x=rng.normal(size=shape) * spread + 1.5, weight=rng.normal(size=C) + 1.0,
                      bias=rng.normal(size=C))
        if eps is not None:
            inputs["eps"] = eps
        return Case(label, inputs)
    no_bias = case("bias None: no shift", (2, 2, 5))
    no_bias.inputs["bias"] = None
    return [case("(B, T, C)", (2, 3, 8)),
            case("T = 1, B = 1", (1, 1, 5)),
            case("2-D input (N, C), eps = 0.1", (4, 6), eps=0.1),
            case("rows of tiny variance (eps matters)", (3, 4), spread=1e-3),
            no_bias]


exercise("layernorm_forward", "LayerNorm over the last axis: (x - mean) * rstd * weight + bias",
         reference=layers.layernorm_forward, returns=("out", "cache"), compare=("out",),
         cases=_layernorm_cases)


def _ln(x, weight, bias, eps=1e-5, axis=-1, ddof=0, eps_inside=True, affine=True):
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) * (x - mean)).sum(axis=axis, keepdims=True) / (x.size // mean.size - ddof)
    rstd = 1.0 / np.sqrt(var + eps) if eps_inside else 1.0 / (np.sqrt(var) + eps)
    xhat = (x - mean) * rstd
    if not affine:
        return xhat, None
    return (xhat * weight if bias is None else xhat * weight + bias), None


@mistake("layernorm_forward", "the variance is divided by C - 1: LayerNorm uses the biased "
                              "variance, mean((x - mean)^2), as PyTorch does")
def _(x, weight, bias, eps=1e-5):
    return _ln(x, weight, bias, eps, ddof=1)


@mistake("layernorm_forward", "eps goes inside the square root: rstd = 1 / sqrt(var + eps)")
def _(x, weight, bias, eps=1e-5):
    return _ln(x, weight, bias, eps, eps_inside=False)


@mistake("layernorm_forward", "mean and variance over the wrong axis: normalise each vector "
                              "over its last axis C (axis=-1, keepdims=True)")
def _(x, weight, bias, eps=1e-5):
    return _ln(x, weight, bias, eps, axis=0)


@mistake("layernorm_forward", "the scale and shift are missing: out = xhat * weight + bias")
def _(x, weight, bias, eps=1e-5):
    return _ln(x, weight, bias, eps, affine=False)


@mistake("layernorm_forward", "eps is hard-coded: use the eps argument (one case passes eps = "
                              "0.1)")
def _(x, weight, bias, eps=1e-5):
    return _ln(x, weight, bias, 1e-5)


@mistake("layernorm_forward", "bias None (a LayerNorm without bias, bias=False) means no shift: "
                              "add the bias only when there is one")
def _(x, weight, bias, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias, None


# ----------------------------------------------------------------------------------------------
# GELU
# ----------------------------------------------------------------------------------------------

def _gelu_cases(rng):
    return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
            Case("T = 1, B = 1", dict(x=rng.normal(size=(1, 1, 5)))),
            Case("the tails, |x| up to 10", dict(x=np.linspace(-10.0, 10.0, 41)))]


exercise("gelu_forward", "GELU(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
         reference=layers.gelu_forward, returns=("out", "cache"), compare=("out",),
         cases=_gelu_cases)


def _gelu(x, scale=math.sqrt(2.0 / math.pi), cube=0.044715, half=0.5):
    t = np.tanh(scale * (x + cube * x * x * x))
    return half * x * (1.0 + t), None


@mistake("gelu_forward", "the factor 0.5 is missing: GELU(x) = 0.5 x (1 + tanh z), which is "
                         "x for large x")
def _(x):
    return _gelu(x, half=1.0)


@mistake("gelu_forward", "the scale is sqrt(2 / pi), not sqrt(pi / 2)")
def _(x):
    return _gelu(x, scale=math.sqrt(math.pi / 2.0))


@mistake("gelu_forward", "z = sqrt(2/pi) (x + 0.044715 x^3): the cubic term is missing")
def _(x):
    return _gelu(x, cube=0.0)


@mistake("gelu_forward", "GPT-2 uses the tanh approximation, not the exact x Phi(x) with erf "
                         "(they differ by up to about 1e-3)")
def _(x):
    erf = np.vectorize(math.erf, otypes=[x.dtype])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))), None


# ----------------------------------------------------------------------------------------------
# The block: forward and backward through the residuals
# ----------------------------------------------------------------------------------------------


def _block_params(rng, config):
    p = {}
    for name, shape in block_param_shapes(config).items():
        base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight")) else 0.0
        p[name] = base + rng.normal(size=shape) * (0.3 if len(shape) == 1 else 0.5)
    return p


def _block_cases(rng):
    def case(label, B, T, C, nh, **settings):
        config = GPTConfig(n_embd=C, n_head=nh, **settings)
        return Case(label, dict(x=rng.normal(size=(B, T, C)), p=_block_params(rng, config),
                                config=config))
    return case, [case("B = 2, T = 3, C = 8, nh = 2", 2, 3, 8, 2),
                  case("T = 1, B = 1", 1, 1, 4, 2),
                  case("one head", 2, 4, 4, 1),
                  case("the config's norm_eps = 0.1", 1, 3, 4, 2, norm_eps=0.1)]


exercise("block_forward", "the pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(x))",
         reference=block.block_forward, returns=("out", "cache"), compare=("out",),
         cases=lambda rng: _block_cases(rng)[1])


def _block(x, p, config, post_ln=False, residual_1=True, residual_2=True, stale_x=False,
           eps=None):
    eps = config.norm_eps if eps is None else eps

    def ln(h, i):
        return layers.layernorm_forward(h, p[f"ln_{i}.weight"], p[f"ln_{i}.bias"], eps)[0]

    def attn(h):
        return mha_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                           p["attn.c_proj.weight"], p["attn.c_proj.bias"], config.n_head)[0]

    def mlp(h):
        return block.mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                                 p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])[0]
    if post_ln:
        x = ln(x + attn(x), 1)
        return ln(x + mlp(x), 2), None
    h = attn(ln(x, 1))
    x1 = x + h if residual_1 else h
    h = mlp(ln(x if stale_x else x1, 2))
    return (x1 + h if residual_2 else h), None


@mistake("block_forward", "pre-LN: LayerNorm normalises the branch's input, x + attn(ln_1(x)); "
                          "ln_1(x + attn(x)) is the original Transformer's post-LN")
def _(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0):
    return _block(x, p, config, post_ln=True)


@mistake("block_forward", "the attention branch is added to the stream: x = x + attn(ln_1(x))")
def _(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0):
    return _block(x, p, config, residual_1=False)


@mistake("block_forward", "the MLP branch is added to the stream: out = x + mlp(ln_2(x))")
def _(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0):
    return _block(x, p, config, residual_2=False)


@mistake("block_forward", "the MLP reads the stream after the attention's residual, x + "
                          "attn(ln_1(x)), not the block's input")
def _(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0):
    return _block(x, p, config, stale_x=True)


@mistake("block_forward", "the LayerNorms use the config's epsilon: layernorm_forward(..., "
                          "config.norm_eps)")
def _(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0):
    return _block(x, p, config, eps=1e-5)


def block_with_dropout(x, p, config, seed=0):
    """block_forward in training mode with dropout config.dropout in a fixed pattern (the same
    on every call, so that numerical gradients see one function). -> (out, BlockCache)"""
    return block.block_forward(x, p, config, rng=np.random.default_rng(seed),
                               train=config.dropout > 0.0)


def _block_grad_cases(rng):
    case, _ = _block_cases(rng)
    return [case("B = 2, T = 3, C = 4, nh = 2", 2, 3, 4, 2),
            case("T = 1, B = 1, one head", 1, 1, 4, 1),
            case("dropout 0.2 (a fixed pattern)", 2, 2, 4, 2, dropout=0.2)]


exercise("block_backward", "the block's backward: the residuals copy the gradient past each "
         "branch", reference=block.block_backward, forward=block_with_dropout, after=("config",),
         returns=("dx", "g"), wrt={"g": "p"}, cases=_block_grad_cases)


def _block_backward(dout, cache, residual_1=True, residual_2=True, attn_gets_dout=False):
    g = {}
    dh = layers.dropout_backward(dout, cache.drop_2)
    (dh, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"],
     g["mlp.c_proj.weight"], g["mlp.c_proj.bias"]) = block.mlp_backward(dh, cache.mlp)
    dh, g["ln_2.weight"], g["ln_2.bias"] = layers.layernorm_backward(dh, cache.ln_2)
    dx = dout + dh if residual_2 else dh
    dh = layers.dropout_backward(dout if attn_gets_dout else dx, cache.drop_1)
    (dh, g["attn.c_attn.weight"], g["attn.c_attn.bias"],
     g["attn.c_proj.weight"], g["attn.c_proj.bias"]) = mha_backward(dh, cache.attn)
    dh, g["ln_1.weight"], g["ln_1.bias"] = layers.layernorm_backward(dh, cache.ln_1)
    return (dx + dh if residual_1 else dh), g


@mistake("block_backward", "out = x + mlp(...): the residual copies dout straight to x, so the "
                           "gradient before the MLP's branch is dout + (the branch's gradient)")
def _(dout, cache, config):
    return _block_backward(dout, cache, residual_2=False)


@mistake("block_backward", "x + attn(ln_1(x)): the first residual adds the attention branch's "
                           "gradient to the one flowing straight through, dx = dx + dh")
def _(dout, cache, config):
    return _block_backward(dout, cache, residual_1=False)


@mistake("block_backward", "the attention branch receives the gradient of the stream between "
                           "the branches, dout + (the MLP branch's), not dout alone")
def _(dout, cache, config):
    return _block_backward(dout, cache, attn_gets_dout=True)
