"""The MLPs and the pre-norm Transformer block, forward and backward.

    x = x + dropout(attn(norm_1(x)))
    x = x + dropout(mlp(norm_2(x)))

with, as the config chooses,

    norm  = LayerNorm (GPT-2)  or  RMSNorm (Llama)                         layers.py
    attn  = multi-head, grouped-query or multi-query, RoPE or not          attention.py
    mlp   = c_proj(gelu(c_fc x))                             GELU (GPT-2)
          = c_proj(silu(gate) * up),  [gate | up] = c_fc x   SwiGLU (Llama's
                                                  down_proj(silu(gate_proj x) * up_proj x))

A block's parameters come as a dict with GPT-2's names relative to the block
(``ln_1.weight``, ``attn.c_attn.weight``, ``mlp.c_fc.bias``, ...; a bias that the config leaves
out is simply absent); the gradients come back under the same names.

Shape legend: B batch, T time, C channels, I intermediate size of the MLP.
"""
from typing import NamedTuple

import numpy as np

from .attention import MHACache, head_mask_backward, mha_backward, mha_forward
from .layers import (DropoutCache, GeluFusedCache, LinearCache, SiLUCache, dropout_backward,
                     dropout_forward, gelu_fused_backward, gelu_fused_forward, layernorm_backward,
                     layernorm_forward, linear_backward, linear_forward, rmsnorm_backward,
                     rmsnorm_forward, silu_backward, silu_forward)


# ----------------------------------------------------------------------------------------------
# The two MLPs
# ----------------------------------------------------------------------------------------------

class MLPCache(NamedTuple):
    c_fc: LinearCache            # x (B, T, C) -> h (B, T, I)
    gelu: GeluFusedCache         # h -> gelu(h)
    c_proj: LinearCache          # gelu(h) -> out (B, T, C)


def mlp_forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """GPT-2's MLP. x: (B, T, C); c_fc_w: (C, I); c_proj_w: (I, C); biases (I,), (C,) or None
    -> out: (B, T, C).

    The GELU is ``gelu_fused_forward``, the in-place form of ``gelu_forward`` (tested equal).

    >>> out, cache = mlp_forward(np.ones((1, 2, 3)), np.ones((3, 12)), np.zeros(12),
    ...                          np.ones((12, 3)), np.zeros(3))
    >>> out.shape
    (1, 2, 3)
    """
    h, c_fc_cache = linear_forward(x, c_fc_w, c_fc_b)          # (B, T, I)
    h, gelu_cache = gelu_fused_forward(h)                     # (B, T, I)
    out, c_proj_cache = linear_forward(h, c_proj_w, c_proj_b)  # (B, T, C)
    return out, MLPCache(c_fc_cache, gelu_cache, c_proj_cache)


def mlp_backward(dout, cache):
    """dout: (B, T, C) -> dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b (biases None if absent)."""
    dh, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)   # (B, T, I)
    dh = gelu_fused_backward(dh, cache.gelu)
    dx, dc_fc_w, dc_fc_b = linear_backward(dh, cache.c_fc)           # (B, T, C)
    return dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b


class SwiGLUCache(NamedTuple):
    c_fc: LinearCache            # x (B, T, C) -> [gate | up] (B, T, 2I)
    silu: SiLUCache              # gate (B, T, I) -> a = silu(gate)
    a: np.ndarray                # (B, T, I) silu(gate)
    up: np.ndarray               # (B, T, I)
    c_proj: LinearCache          # a * up -> out (B, T, C)


def swiglu_forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """Llama's MLP (Shazeer 2020): out = c_proj(silu(gate) * up), [gate | up] = c_fc(x).

    x: (B, T, C); c_fc_w: (C, 2I), the columns of gate_proj then those of up_proj; c_proj_w:
    (I, C), down_proj; biases (2I,), (C,) or None -> out: (B, T, C). The gate decides, feature
    by feature, how much of the "up" projection passes (a gated linear unit with SiLU).

    >>> rng = np.random.default_rng(0)
    >>> out, cache = swiglu_forward(rng.normal(size=(1, 2, 4)), rng.normal(size=(4, 12)), None,
    ...                             rng.normal(size=(6, 4)), None)
    >>> out.shape, cache.up.shape
    ((1, 2, 4), (1, 2, 6))
    """
    h, c_fc_cache = linear_forward(x, c_fc_w, c_fc_b)          # (B, T, 2I)
    I = c_proj_w.shape[0]
    gate, up = h[..., :I], h[..., I:]                          # (B, T, I) views
    a, silu_cache = silu_forward(gate)                         # (B, T, I)
    out, c_proj_cache = linear_forward(a * up, c_proj_w, c_proj_b)  # (B, T, C)
    return out, SwiGLUCache(c_fc_cache, silu_cache, a, up, c_proj_cache)


def swiglu_backward(dout, cache):
    """dout: (B, T, C) -> dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b (biases None if absent).

    With m = a * up:  dup = dm * a,  da = dm * up,  dgate = silu'(gate) * da; the two halves of
    d[gate | up] go back through c_fc together.
    """
    dm, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)   # (B, T, I)
    I = dm.shape[-1]
    dh = np.empty((*dm.shape[:-1], 2 * I), dtype=dm.dtype)          # (B, T, 2I)
    dh[..., :I] = silu_backward(dm * cache.up, cache.silu)           # d gate
    np.multiply(dm, cache.a, out=dh[..., I:])                        # d up
    dx, dc_fc_w, dc_fc_b = linear_backward(dh, cache.c_fc)           # (B, T, C)
    return dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b


MLPS = {"gelu": (mlp_forward, mlp_backward), "swiglu": (swiglu_forward, swiglu_backward)}


# ----------------------------------------------------------------------------------------------
# Normalisation, as the config says
# ----------------------------------------------------------------------------------------------

def norm_forward(x, weight, bias, config):
    """LayerNorm (weight, bias or None) or RMSNorm (weight; bias must be None), as
    ``config.norm`` says, with ``config.norm_eps``. x: (..., C) -> out: (..., C)."""
    if config.norm == "rmsnorm":
        return rmsnorm_forward(x, weight, config.norm_eps)
    return layernorm_forward(x, weight, bias, config.norm_eps)


def norm_backward(dout, cache, config):
    """dout: (..., C) -> dx, dweight, dbias (None for RMSNorm and a LayerNorm without bias)."""
    if config.norm == "rmsnorm":
        return (*rmsnorm_backward(dout, cache), None)
    return layernorm_backward(dout, cache)


# ----------------------------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------------------------

class BlockCache(NamedTuple):
    ln_1: tuple                  # LayerNormCache or RMSNormCache
    attn: MHACache
    drop_1: DropoutCache         # on the attention branch
    ln_2: tuple                  # LayerNormCache or RMSNormCache
    mlp: tuple                   # MLPCache or SwiGLUCache
    drop_2: DropoutCache         # on the MLP branch

    @property
    def att(self):
        """This block's attention weights, (B, nh, T, S)."""
        return self.attn.att


def block_forward(x, p, config, *, rope=None, rng=None, train=False, kv_cache=None, layer=0,
                  last_only=False, head_mask=None, head_hook=None):
    """One pre-norm block. x: (B, T, C); p: the block's parameters; config: the GPTConfig (which
    norm, MLP, heads, dropout); rope: (cos, sin) tables (T, hs) with rotary positions;
    head_mask (nh,) and head_hook: as for ``mha_forward`` -> out: (B, T, C). ``last_only``
    (generation, the last block): every position gives its key and value, only the last goes
    on -> out: (B, 1, C).

    >>> from minillm.core.config import GPTConfig, block_param_shapes
    >>> config = GPTConfig(n_embd=8, n_head=2)
    >>> p = {name: np.ones(shape) for name, shape in block_param_shapes(config).items()}
    >>> out, cache = block_forward(np.zeros((1, 3, 8)), p, config)
    >>> out.shape, cache.att.shape
    ((1, 3, 8), (1, 2, 3, 3))
    """
    dropout, mlp_forward_ = config.dropout, MLPS[config.mlp][0]
    h, ln_1_cache = norm_forward(x, p["ln_1.weight"], p.get("ln_1.bias"), config)
    h, attn_cache = mha_forward(h, p["attn.c_attn.weight"], p.get("attn.c_attn.bias"),
                                p["attn.c_proj.weight"], p.get("attn.c_proj.bias"),
                                config.n_head, n_kv_head=config.kv_heads, rope=rope,
                                dropout=dropout, rng=rng, train=train, kv_cache=kv_cache,
                                layer=layer, last_only=last_only, head_mask=head_mask,
                                head_hook=head_hook)
    h, drop_1 = dropout_forward(h, dropout, rng=rng, train=train)
    if last_only:
        x = x[:, -1:]                                                  # (B, 1, C)
    x = x + h                                                  # residual
    h, ln_2_cache = norm_forward(x, p["ln_2.weight"], p.get("ln_2.bias"), config)
    h, mlp_cache = mlp_forward_(h, p["mlp.c_fc.weight"], p.get("mlp.c_fc.bias"),
                                p["mlp.c_proj.weight"], p.get("mlp.c_proj.bias"))
    h, drop_2 = dropout_forward(h, dropout, rng=rng, train=train)
    out = x + h                                                # residual
    return out, BlockCache(ln_1_cache, attn_cache, drop_1, ln_2_cache, mlp_cache, drop_2)


def block_backward(dout, cache, config):
    """dout: (B, T, C) -> dx: (B, T, C) and a dict of gradients named like the parameters
    (a bias the block does not have gets none), and "head_mask" (nh,) when the forward pass
    had a head mask.

    The residual connections copy the gradient: it flows both into the branch and straight on.
    """
    g = {}
    mlp_backward_ = MLPS[config.mlp][1]
    dx = dout                                                  # through the second residual
    dh = dropout_backward(dout, cache.drop_2)
    (dh, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"],
     g["mlp.c_proj.weight"], g["mlp.c_proj.bias"]) = mlp_backward_(dh, cache.mlp)
    dh, g["ln_2.weight"], g["ln_2.bias"] = norm_backward(dh, cache.ln_2, config)
    dx = dx + dh                                               # through the first residual
    dh = dropout_backward(dx, cache.drop_1)
    if cache.attn.head_mask is not None:
        g["head_mask"] = head_mask_backward(dh, cache.attn)
    (dh, g["attn.c_attn.weight"], g["attn.c_attn.bias"],
     g["attn.c_proj.weight"], g["attn.c_proj.bias"]) = mha_backward(dh, cache.attn)
    dh, g["ln_1.weight"], g["ln_1.bias"] = norm_backward(dh, cache.ln_1, config)
    dx = dx + dh
    return dx, {name: grad for name, grad in g.items() if grad is not None}
