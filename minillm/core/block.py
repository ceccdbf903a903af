"""The MLP and the pre-LN Transformer block, forward and backward.

    x = x + dropout(attn(ln_1(x)))
    x = x + dropout(mlp(ln_2(x)))           mlp(x) = c_proj(gelu(c_fc(x)))

A block's parameters come as a dict with GPT-2's names relative to the block
(``ln_1.weight``, ``attn.c_attn.weight``, ``mlp.c_fc.bias``, ...); the gradients come back
under the same names.

Shape legend: B batch, T time, C channels.
"""
from typing import NamedTuple

from .attention import MHACache, mha_backward, mha_forward
from .layers import (DropoutCache, GeluFusedCache, LayerNormCache, LinearCache, dropout_backward,
                     dropout_forward, gelu_fused_backward, gelu_fused_forward, layernorm_backward,
                     layernorm_forward, linear_backward, linear_forward)


class MLPCache(NamedTuple):
    c_fc: LinearCache            # x (B, T, C) -> h (B, T, 4C)
    gelu: GeluFusedCache         # h -> gelu(h)
    c_proj: LinearCache          # gelu(h) -> out (B, T, C)


def mlp_forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """x: (B, T, C); c_fc_w: (C, 4C); c_proj_w: (4C, C) -> out: (B, T, C).

    The GELU is ``gelu_fused_forward``, the in-place form of ``gelu_forward`` (tested equal).

    >>> import numpy as np
    >>> out, cache = mlp_forward(np.ones((1, 2, 3)), np.ones((3, 12)), np.zeros(12),
    ...                          np.ones((12, 3)), np.zeros(3))
    >>> out.shape
    (1, 2, 3)
    """
    h, c_fc_cache = linear_forward(x, c_fc_w, c_fc_b)          # (B, T, 4C)
    h, gelu_cache = gelu_fused_forward(h)                     # (B, T, 4C)
    out, c_proj_cache = linear_forward(h, c_proj_w, c_proj_b)  # (B, T, C)
    return out, MLPCache(c_fc_cache, gelu_cache, c_proj_cache)


def mlp_backward(dout, cache):
    """dout: (B, T, C) -> dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b."""
    dh, dc_proj_w, dc_proj_b = linear_backward(dout, cache.c_proj)   # (B, T, 4C)
    dh = gelu_fused_backward(dh, cache.gelu)
    dx, dc_fc_w, dc_fc_b = linear_backward(dh, cache.c_fc)           # (B, T, C)
    return dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b


class BlockCache(NamedTuple):
    ln_1: LayerNormCache
    attn: MHACache
    drop_1: DropoutCache         # on the attention branch
    ln_2: LayerNormCache
    mlp: MLPCache
    drop_2: DropoutCache         # on the MLP branch

    @property
    def att(self):
        """This block's attention weights, (B, nh, T, S)."""
        return self.attn.att


def block_forward(x, p, n_head, *, dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    """One pre-LN block. x: (B, T, C); p: the block's parameters -> out: (B, T, C).

    >>> import numpy as np
    >>> from minillm.core.config import GPTConfig, block_param_shapes
    >>> shapes = block_param_shapes(GPTConfig(n_embd=8))
    >>> p = {name: np.ones(shape) for name, shape in shapes.items()}
    >>> out, cache = block_forward(np.zeros((1, 3, 8)), p, n_head=2)
    >>> out.shape, cache.att.shape
    ((1, 3, 8), (1, 2, 3, 3))
    """
    h, ln_1_cache = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    h, attn_cache = mha_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                                p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head,
                                dropout=dropout, rng=rng, train=train, kv_cache=kv_cache,
                                layer=layer)
    h, drop_1 = dropout_forward(h, dropout, rng=rng, train=train)
    x = x + h                                                  # residual
    h, ln_2_cache = layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    h, mlp_cache = mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                               p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    h, drop_2 = dropout_forward(h, dropout, rng=rng, train=train)
    out = x + h                                                # residual
    return out, BlockCache(ln_1_cache, attn_cache, drop_1, ln_2_cache, mlp_cache, drop_2)


def block_backward(dout, cache):
    """dout: (B, T, C) -> dx: (B, T, C) and a dict of gradients named like the parameters.

    The residual connections copy the gradient: it flows both into the branch and straight on.
    """
    g = {}
    dx = dout                                                  # through the second residual
    dh = dropout_backward(dout, cache.drop_2)
    (dh, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"],
     g["mlp.c_proj.weight"], g["mlp.c_proj.bias"]) = mlp_backward(dh, cache.mlp)
    dh, g["ln_2.weight"], g["ln_2.bias"] = layernorm_backward(dh, cache.ln_2)
    dx = dx + dh                                               # through the first residual
    dh = dropout_backward(dx, cache.drop_1)
    (dh, g["attn.c_attn.weight"], g["attn.c_attn.bias"],
     g["attn.c_proj.weight"], g["attn.c_proj.bias"]) = mha_backward(dh, cache.attn)
    dh, g["ln_1.weight"], g["ln_1.bias"] = layernorm_backward(dh, cache.ln_1)
    dx = dx + dh
    return dx, g
