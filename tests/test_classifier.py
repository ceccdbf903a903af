"""The classification head (minillm/core/classifier.py): float64 gradient checks of pooling, of
the head, and of the whole chain cross-entropy -> head -> GPT; padding changes nothing (logits,
loss and every gradient); the top of the model from a frozen bottom equals the model."""
import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.classifier import (HEAD, POOLS, block_input, classifier_head_backward,
                                     classifier_head_forward, init_head, pool_backward,
                                     pool_forward, top_backward, top_forward)
from minillm.core.gradcheck import grad_errors, layer_grad_errors
from minillm.core.layers import cross_entropy_backward, cross_entropy_forward
from minillm.core.lora import LoRA, LoRAConfig

TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64")
LENGTHS = np.array([5, 2, 7])                 # three sequences padded to T = 7


def tiny(seed=0, **config):
    return GPT(GPTConfig(**{**TINY, **config}), seed=seed)


def random_head(C, K, rng, scale=0.3):
    """(a head of N(0, 1) weights makes the loss curved enough for h^2 errors ~ 1e-7)"""
    return {HEAD[0]: rng.normal(scale=scale, size=(C, K)), HEAD[1]: rng.normal(size=K)}


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_gradient_check(pool):
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 7, 4))
    errors = layer_grad_errors(lambda h: pool_forward(h, LENGTHS, pool), pool_backward, [h], rng,
                               names=["h"])
    assert errors["h"] < 1e-8, errors


@pytest.mark.parametrize("pool", POOLS)
def test_head_gradient_check(pool):
    rng = np.random.default_rng(1)
    h, W, b = rng.normal(size=(3, 7, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    errors = layer_grad_errors(lambda h, W, b: classifier_head_forward(h, LENGTHS, W, b, pool),
                               classifier_head_backward, [h, W, b], rng, names=["h", "W", "b"])
    assert max(errors.values()) < 1e-8, errors


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_reads_real_positions_only(pool):
    rng = np.random.default_rng(2)
    h = rng.normal(size=(3, 7, 4))
    pooled, cache = pool_forward(h, LENGTHS, pool)
    noisy = h.copy()
    noisy[np.arange(7)[None, :] >= LENGTHS[:, None]] = 1e6        # garbage on the padding
    assert np.array_equal(pool_forward(noisy, LENGTHS, pool)[0], pooled)
    dh = pool_backward(rng.normal(size=pooled.shape), cache)
    assert not dh[np.arange(7)[None, :] >= LENGTHS[:, None]].any()  # exactly zero there
    expected = [h[i, :n].mean(0) if pool == "mean" else h[i, n - 1] for i, n in enumerate(LENGTHS)]
    assert np.allclose(pooled, expected)


def test_pooling_refuses_bad_lengths():
    with pytest.raises(ValueError, match="lengths must be 2 integers in"):
        pool_forward(np.zeros((2, 3, 4)), np.array([1, 4]))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_forward(np.zeros((2, 3, 4)), np.array([1, 2]), "max")


def chain_loss_and_grads(model, head, idx, lengths, labels, pool):
    """The classifier's loss and the gradients of the head and every model parameter."""
    h, cache = model.forward_with_cache(idx, lm_head=False)
    logits, head_cache = classifier_head_forward(h, lengths, head[HEAD[0]], head[HEAD[1]], pool)
    loss, ce = cross_entropy_forward(logits, labels)
    dh, dW, db = classifier_head_backward(cross_entropy_backward(1.0, ce), head_cache)
    return loss, {HEAD[0]: dW, HEAD[1]: db, **model.backward(dh, cache)}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("block", [{}, {"pos_encoding": "rope", "norm": "rmsnorm"}],
                         ids=["gpt2", "llama"])
def test_whole_chain_gradient_check(pool, block):
    rng = np.random.default_rng(3)
    model = tiny(**block)
    head = random_head(8, 3, rng)
    idx = rng.integers(0, 11, size=(3, 7))
    labels = np.array([0, 2, 1])
    _, grads = chain_loss_and_grads(model, head, idx, LENGTHS, labels, pool)
    params = {**head, **model.params}

    def loss():
        return chain_loss_and_grads(model, head, idx, LENGTHS, labels, pool)[0]

    errors = grad_errors(loss, params, grads, config=model.config)
    assert max(v for k, v in errors.items() if "(keys)" not in k) < 1e-7, errors
    assert max((v for k, v in errors.items() if "(keys)" in k), default=0.0) < 1e-9   # zero


@pytest.mark.parametrize("pool", POOLS)
def test_padding_changes_nothing(pool):
    """A padded batch gives each sequence the logits, loss and gradients it has alone."""
    rng = np.random.default_rng(4)
    model = tiny()
    head = random_head(8, 2, rng)
    idx = rng.integers(0, 11, size=(3, 7))
    labels = np.array([1, 0, 1])
    padded = idx.copy()
    padded[np.arange(7)[None, :] >= LENGTHS[:, None]] = 3          # whatever the pad id
    loss, grads = chain_loss_and_grads(model, head, padded, LENGTHS, labels, pool)
    alone = [chain_loss_and_grads(model, head, idx[i:i + 1, :n], np.array([n]),
                                  labels[i:i + 1], pool) for i, n in enumerate(LENGTHS)]
    assert np.isclose(loss, np.mean([a[0] for a in alone]), rtol=1e-13)
    for name, g in grads.items():
        assert np.allclose(g, np.mean([a[1][name] for a in alone], axis=0), rtol=1e-11,
                           atol=1e-14), name
    # and longer padding: T = 7 -> block_size 8, with other pad ids
    wider = np.concatenate([padded, np.full((3, 1), 9)], axis=1)
    loss2, grads2 = chain_loss_and_grads(model, head, wider, LENGTHS, labels, pool)
    assert np.isclose(loss2, loss, rtol=1e-13)
    assert all(np.allclose(grads2[k], grads[k], rtol=1e-11, atol=1e-14) for k in grads)


def test_lora_adapters_through_the_classifier_gradient_check():
    rng = np.random.default_rng(5)
    lora = LoRA(tiny(), LoRAConfig(rank=2, alpha=3.0, targets=("attn.c_attn", "mlp.c_proj")),
                rng=rng)
    for a in lora.adapters.values():
        a += rng.normal(scale=0.3, size=a.shape)                    # B != 0
    head = random_head(8, 2, rng)
    idx, labels = rng.integers(0, 11, size=(3, 7)), np.array([0, 1, 1])

    def loss_and_grads():
        view, caches = lora.merged_view()
        loss, grads = chain_loss_and_grads(view, head, idx, LENGTHS, labels, "mean")
        return loss, lora.adapter_grads(grads, caches)

    _, grads = loss_and_grads()
    errors = grad_errors(lambda: loss_and_grads()[0], lora.adapters, grads)
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("first", [0, 1, 2])
def test_the_top_from_a_frozen_bottom_equals_the_model(first):
    rng = np.random.default_rng(6)
    model = tiny(pos_encoding="rope")
    idx = rng.integers(0, 11, size=(2, 6))
    h, cache = model.forward_with_cache(idx, lm_head=False)
    x = block_input(cache, first)
    top, top_cache = top_forward(model, x, first)
    assert np.array_equal(top, h)
    dh = rng.normal(size=h.shape)
    full = model.backward(dh, cache)
    dx, grads = top_backward(model, dh, top_cache)
    assert set(grads) == {k for k in model.params if k.startswith("ln_f.")
                          or any(k.startswith(f"h.{i}.") for i in range(first, 2))}
    assert all(np.allclose(grads[k], full[k], rtol=1e-12, atol=1e-15) for k in grads)
    if first == 0:          # rotary positions: block 0's input is wte[idx], so dwte sums dx
        dwte = np.zeros_like(full["wte.weight"])
        np.add.at(dwte, idx, dx)
        assert np.allclose(dwte, full["wte.weight"], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="outside 0 .. n_layer"):
        top_forward(model, x, 3)


def test_init_head_starts_at_equal_odds():
    head = init_head(8, 4, "float32")
    assert head[HEAD[0]].dtype == np.float32 and not head[HEAD[0]].any()
    logits, _ = classifier_head_forward(np.ones((1, 2, 8), np.float32), np.array([2]),
                                        head[HEAD[0]], head[HEAD[1]])
    assert np.isclose(cross_entropy_forward(logits, np.array([3]))[0], np.log(4))
