"""Tiled causal attention (minillm/core/tiled_attention.py, FlashAttention-2's algorithm):
float64 gradient checks, equality with the plain attention in float32 and float64, the tile
schedule, and the model using it from TILED_MIN_T positions on."""
import numpy as np
import pytest

import minillm.core.attention as attention
from minillm import GPT, GPTConfig
from minillm.core.attention import sdpa_backward, sdpa_forward
from minillm.core.gradcheck import layer_grad_errors, rel_error
from minillm.core.tiled_attention import (key_tiles, tiled_attention_backward,
                                          tiled_attention_forward)

EQUAL = {np.float64: 1e-13, np.float32: 1e-5}   # tiled vs plain, relative error per tensor


def qkv(rng, shape_q, S, dtype=np.float64, k_lead=None):
    *lead, T, hs = shape_q
    q = rng.normal(size=shape_q)
    k, v = (rng.normal(size=(*(k_lead or lead), S, hs)) for _ in range(2))
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


@pytest.mark.parametrize("T, S, block_q, block_k", [
    (8, 8, 4, 4),      # several tiles, T a multiple of the tile size
    (7, 7, 3, 2),      # T not a multiple of either tile size, block_q != block_k
    (5, 9, 2, 3),      # S > T, as with a KV cache: query i sits at position i + 4
    (6, 6, 16, 16),    # one tile larger than the whole sequence
    (1, 6, 4, 4),      # T = 1: one decoding step against 6 cached keys
])
def test_gradient_check(rng, T, S, block_q, block_k):
    q, k, v = qkv(rng, (2, 2, T, 3), S)
    errors = layer_grad_errors(lambda q, k, v: tiled_attention_forward(q, k, v, block_q, block_k),
                               tiled_attention_backward, [q, k, v], rng, names="qkv")
    assert max(errors.values()) < 1e-8, errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T, S, block_q, block_k", [(64, 64, 16, 16), (37, 37, 7, 5),
                                                     (10, 25, 4, 8), (1, 9, 4, 4)])
def test_equals_the_plain_attention(rng, dtype, T, S, block_q, block_k):
    q, k, v = qkv(rng, (2, 3, T, 8), S, dtype)
    dout = rng.normal(size=q.shape).astype(dtype)
    out, cache = tiled_attention_forward(q, k, v, block_q, block_k)
    ref, ref_cache = sdpa_forward(q, k, v, causal=True)
    assert out.dtype == dtype and cache.lse.shape == (2, 3, T)
    assert rel_error(out, ref) < EQUAL[dtype]
    assert rel_error(cache.att, ref_cache.att) < EQUAL[dtype]   # recomputed from L on demand
    for a, b in zip(tiled_attention_backward(dout, cache), sdpa_backward(dout, ref_cache)):
        assert a.dtype == dtype and rel_error(a, b) < EQUAL[dtype]


def test_grouped_keys_broadcast_and_their_gradients_keep_the_group_axis(rng):
    q, k, v = qkv(rng, (2, 2, 3, 9, 4), 9, k_lead=(2, 2, 1))     # (B, nkv, g, T, hs) vs (.., 1, ..)
    dout = rng.normal(size=q.shape)
    out, cache = tiled_attention_forward(q, k, v, 4, 4)
    ref, ref_cache = sdpa_forward(q, k, v, causal=True)
    assert rel_error(out, ref) < 1e-13
    for a, b in zip(tiled_attention_backward(dout, cache), sdpa_backward(dout, ref_cache)):
        assert a.shape == b.shape and rel_error(a, b) < 1e-13


def test_the_cache_holds_one_number_per_row_not_the_weights(rng):
    q, k, v = qkv(rng, (2, 4, 256, 16), 256, np.float32)
    _, cache = tiled_attention_forward(q, k, v)
    _, plain = sdpa_forward(q, k, v, causal=True)
    assert cache.lse.nbytes * 256 == plain.att.nbytes        # O(T) instead of O(T * S) per row


@pytest.mark.parametrize("T, S, block_q, block_k", [(9, 9, 4, 4), (5, 12, 2, 3), (16, 16, 4, 8)])
def test_the_tile_schedule_covers_exactly_what_is_visible(T, S, block_q, block_k):
    """Each visited tile holds a visible key; every visible (query, key) pair is in a visited
    tile; a tile is masked exactly when one of its keys is in the future of one of its queries."""
    visible = np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T)     # (T, S)
    covered = np.zeros((T, S), dtype=bool)
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        for j0, j1, needs_mask in key_tiles(i0, i1, S - T, S, block_k):
            tile = visible[i0:i1, j0:j1]
            assert tile.any() and needs_mask == (not tile.all())
            covered[i0:i1, j0:j1] = True
    assert (covered | ~visible).all()


def test_rejects_more_queries_than_keys(rng):
    q, k, v = qkv(rng, (1, 5, 4), 3)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        tiled_attention_forward(q, k, v)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_the_model_takes_the_tiled_path_for_long_contexts(monkeypatch, preset):
    config = dict(vocab_size=13, block_size=24, n_layer=2, n_head=4, n_embd=16, dtype="float64")
    model = GPT(GPTConfig(**config) if preset == "gpt2" else GPTConfig.llama(**config), seed=0)
    rng = np.random.default_rng(3)
    for p in model.params.values():
        p += rng.normal(scale=0.3, size=p.shape)
    idx, targets = rng.integers(0, 13, size=(2, 24)), rng.integers(0, 13, size=(2, 24))
    plain_loss, plain = model.loss_and_grads(idx, targets)
    monkeypatch.setattr(attention, "TILED_MIN_T", 8)
    _, cache = model.forward_with_cache(idx)
    assert type(cache.h[0].attn.sdpa).__name__ == "TiledAttentionCache"
    loss, grads = model.loss_and_grads(idx, targets)
    assert loss == pytest.approx(plain_loss, rel=1e-12)
    assert max(rel_error(grads[k], plain[k]) for k in grads) < 1e-11
    logits, att = model.forward(idx, return_attention=True)
    assert att[0].shape == (2, 4, 24, 24) and np.allclose(att[0].sum(-1), 1.0)
