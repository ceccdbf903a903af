"""The MLP and the pre-LN Transformer block, forward and backward.

    x = x + dropout(attn(ln_1(x)))
    x = x + dropout(mlp(ln_2(x)))           mlp(x) = c_proj(gelu(c_fc(x)))

A block's parameters come as a dict with GPT-2's names relative to the block
(``ln_1.weight``, ``attn.c_attn.weight``, ``mlp.c_fc.bias``, ...); the gradients come back
under the same names.

Shape legend: B batch, T time, C channels.
"""
from typing import NamedTuple

from .attention import mha_backward, mha_forward
from .layers import (dropout_backward, dropout_forward, gelu_backward, gelu_forward,
                     layernorm_backward, layernorm_forward, linear_backward, linear_forward)


def mlp_forward(x, c_fc_w, c_fc_b, c_proj_w, c_proj_b):
    """x: (B, T, C); c_fc_w: (C, 4C); c_proj_w: (4C, C) -> out: (B, T, C)."""
    h, c_fc_cache = linear_forward(x, c_fc_w, c_fc_b)          # (B, T, 4C)
    h, gelu_cache = gelu_forward(h)                           # (B, T, 4C)
    out, c_proj_cache = linear_forward(h, c_proj_w, c_proj_b)  # (B, T, C)
    return out, (c_fc_cache, gelu_cache, c_proj_cache)


def mlp_backward(dout, cache):
    """dout: (B, T, C) -> dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b."""
    c_fc_cache, gelu_cache, c_proj_cache = cache
    dh, dc_proj_w, dc_proj_b = linear_backward(dout, c_proj_cache)   # (B, T, 4C)
    dh = gelu_backward(dh, gelu_cache)
    dx, dc_fc_w, dc_fc_b = linear_backward(dh, c_fc_cache)           # (B, T, C)
    return dx, dc_fc_w, dc_fc_b, dc_proj_w, dc_proj_b


class BlockCache(NamedTuple):
    ln_1: tuple
    attn: tuple
    drop_1: object
    ln_2: tuple
    mlp: tuple
    drop_2: object


def block_forward(x, p, n_head, dropout=0.0, rng=None, train=False, kv_cache=None, layer=0):
    """One pre-LN block. x: (B, T, C); p: the block's parameters -> out: (B, T, C).

    ``cache.attn.attn.att`` holds this block's attention weights, (B, nh, T, S).
    """
    h, ln_1_cache = layernorm_forward(x, p["ln_1.weight"], p["ln_1.bias"])
    h, attn_cache = mha_forward(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                                p["attn.c_proj.weight"], p["attn.c_proj.bias"], n_head,
                                dropout, rng, train, kv_cache, layer)
    h, drop_1 = dropout_forward(h, dropout, rng, train)
    x = x + h                                                  # residual
    h, ln_2_cache = layernorm_forward(x, p["ln_2.weight"], p["ln_2.bias"])
    h, mlp_cache = mlp_forward(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"],
                               p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    h, drop_2 = dropout_forward(h, dropout, rng, train)
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
