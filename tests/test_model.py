"""The whole GPT: parameter names, initialisation, gradient check of every parameter (GPT-2's
block and Llama-style configurations), invariants, KV caches."""
import math

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.config import param_shapes
from minillm.core.gradcheck import grad_errors

TINY = dict(vocab_size=11, block_size=5, n_layer=2, n_head=2, n_embd=8, dtype="float64")


def tiny_batch(rng, B=2, T=5, V=11):
    return rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))


def perturb(model, rng, scale=0.3):
    """Give every parameter (LayerNorm and biases included) non-trivial random values, so the
    check does not pass because something is zero or one."""
    for p in model.params.values():
        p += rng.normal(scale=scale, size=p.shape).astype(p.dtype)


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_whole_model_gradient_check(pos_encoding, dropout):
    rng = np.random.default_rng(0)
    model = GPT(GPTConfig(**TINY, pos_encoding=pos_encoding, dropout=dropout), seed=1)
    perturb(model, rng)
    idx, targets = tiny_batch(rng)
    targets[0, 2] = -1                                          # one ignored target

    def loss():  # the same dropout masks on every call
        return model.loss(idx, targets, train=True, rng=np.random.default_rng(7))

    _, grads = model.loss_and_grads(idx, targets, rng=np.random.default_rng(7))
    assert list(grads) == list(model.params)
    assert all(grads[k].shape == p.shape for k, p in model.params.items())
    errors = grad_errors(loss, model.params, grads)
    checked = {name.removesuffix(" (keys)") for name in errors}
    assert checked == set(model.params)                         # every named parameter
    for name, err in errors.items():
        limit = 1e-8 if name.endswith("(keys)") else 1e-7
        assert err < limit, f"{name}: {err:.2e}"


# A representative set of the configurations: every option value appears, with others varied.
CONFIGS = {
    "llama": dict(norm="rmsnorm", pos_encoding="rope", mlp="swiglu", n_kv_head=2, bias=False,
                  tie_embeddings=False),
    "rms-learned-gelu-mqa-bias-untied": dict(norm="rmsnorm", n_kv_head=1, tie_embeddings=False),
    "ln-rope-swiglu-mqa-nobias-tied": dict(pos_encoding="rope", mlp="swiglu", n_kv_head=1,
                                           bias=False),
    "ln-sin-swiglu-gqa-bias-untied": dict(pos_encoding="sinusoidal", mlp="swiglu", n_kv_head=2,
                                          tie_embeddings=False, intermediate_size=6),
    "rms-sin-gelu-mha-nobias-tied": dict(norm="rmsnorm", pos_encoding="sinusoidal", bias=False),
    "rms-rope-gelu-mha-bias-dropout": dict(norm="rmsnorm", pos_encoding="rope", dropout=0.1),
    "ln-learned-swiglu-gqa-nobias-untied-dropout": dict(mlp="swiglu", n_kv_head=2, bias=False,
                                                        tie_embeddings=False, dropout=0.1),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_whole_model_gradient_check_of_every_configuration(name):
    rng = np.random.default_rng(0)
    config = GPTConfig(**{**TINY, "n_head": 4, "rope_theta": 10.0, **CONFIGS[name]})
    model = GPT(config, seed=1)
    perturb(model, rng, 0.2)          # (0.3 curves some of these enough for h^2 errors ~ 1e-7)
    idx, targets = tiny_batch(rng)
    targets[0, 2] = -1

    def loss():
        return model.loss(idx, targets, train=True, rng=np.random.default_rng(7))

    _, grads = model.loss_and_grads(idx, targets, rng=np.random.default_rng(7))
    assert list(grads) == list(model.params) == list(param_shapes(config))
    errors = grad_errors(loss, model.params, grads, config=config)
    assert {n.removesuffix(" (keys)") for n in errors} == set(model.params)   # every one
    for param, err in errors.items():
        assert err < (1e-8 if param.endswith("(keys)") else 1e-7), f"{param}: {err:.2e}"
    assert ("lm_head.weight" in grads) != config.tie_embeddings
    assert any(k.endswith(".bias") for k in grads) == config.bias


def test_gradient_from_the_hidden_states():
    """Without the LM head the forward pass ends at ln_f's output (B, T, C), and backward takes
    that output's gradient (a classifier on top uses this)."""
    rng = np.random.default_rng(2)
    model = GPT(GPTConfig(**TINY), seed=1)
    perturb(model, rng)
    idx, _ = tiny_batch(rng)
    hidden, cache = model.forward_with_cache(idx, lm_head=False)
    assert hidden.shape == (2, 5, 8) and cache.lm_head is None
    w = rng.normal(size=hidden.shape)
    grads = model.backward(w, cache)
    errors = grad_errors(lambda: float((model.forward_with_cache(idx, lm_head=False)[0] * w).sum()),
                         model.params, grads)
    assert {name.removesuffix(" (keys)") for name in errors} == set(model.params)
    assert max(errors.values()) < 1e-7


def test_gpt2_initialisation():
    cfg = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=128)
    p = GPT(cfg, seed=0).params
    assert abs(p["wte.weight"].std() - 0.02) < 0.001
    assert abs(p["h.0.mlp.c_fc.weight"].std() - 0.02) < 0.001
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name in ("h.1.attn.c_proj.weight", "h.3.mlp.c_proj.weight"):
        assert abs(p[name].std() - resid) < 0.0005
    assert all(np.all(p[k] == 0) for k in p if k.endswith(".bias"))
    assert all(np.all(p[k] == 1) for k in p if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")))
    # seeded, never global: same seed same weights, another seed other weights
    assert np.array_equal(GPT(cfg, seed=0).params["wte.weight"], p["wte.weight"])
    assert not np.array_equal(GPT(cfg, seed=1).params["wte.weight"], p["wte.weight"])
    p64 = GPT(GPTConfig(**{**cfg.to_dict(), "dtype": "float64"}), seed=0).params
    assert np.array_equal(p64["wte.weight"].astype(np.float32), p["wte.weight"])


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_causality(pos_encoding):
    """Changing tokens after position t leaves the logits at positions <= t exactly unchanged."""
    rng = np.random.default_rng(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16,
                          pos_encoding=pos_encoding, n_kv_head=1), seed=0)
    perturb(model, rng, 0.1)
    idx = rng.integers(0, 20, size=(3, 16))
    base = model.forward(idx)
    for t in (0, 7, 14):
        changed = idx.copy()
        changed[:, t + 1:] = rng.integers(0, 20, size=changed[:, t + 1:].shape)
        out = model.forward(changed)
        assert np.array_equal(out[:, :t + 1], base[:, :t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_initial_loss_is_close_to_log_vocab():
    model = GPT(GPTConfig(vocab_size=65), seed=0)
    idx, targets = tiny_batch(np.random.default_rng(0), B=12, T=64, V=65)
    loss = model.loss(idx, targets)
    assert abs(loss - math.log(65)) < 0.15


def test_float32_end_to_end():
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.1), seed=0)
    idx, targets = tiny_batch(np.random.default_rng(0), T=8, V=13)
    logits, att = model.forward(idx, return_attention=True)
    assert logits.dtype == np.float32 and all(a.dtype == np.float32 for a in att)
    _, cache = model.forward_with_cache(idx, train=True)
    assert cache.ln_f.x.dtype == np.float32 and cache.h[1].att.dtype == np.float32
    loss, grads = model.loss_and_grads(idx, targets)
    assert isinstance(loss, float)
    assert all(g.dtype == np.float32 for g in grads.values())


def test_overfits_one_batch_with_plain_gradient_descent():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=32), seed=0)
    idx, targets = tiny_batch(np.random.default_rng(0), B=4, T=8)
    first = model.loss(idx, targets)
    for _ in range(300):
        loss, grads = model.loss_and_grads(idx, targets)
        for k, g in grads.items():
            model.params[k] -= 0.5 * g
    assert first > 2.0 and loss < 0.05


def test_return_attention():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=3, n_head=2, n_embd=8), seed=0)
    idx, _ = tiny_batch(np.random.default_rng(0), B=2, T=6)
    logits, att = model.forward(idx, return_attention=True)
    assert logits.shape == (2, 6, 11) and len(att) == 3
    for a in att:
        assert a.shape == (2, 2, 6, 6)
        assert np.allclose(a.sum(-1), 1.0) and np.all(np.triu(a, 1) == 0)


def test_kv_cache_forward_matches_full_forward():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64"), seed=0)
    perturb(model, np.random.default_rng(1), 0.2)
    idx, _ = tiny_batch(np.random.default_rng(0), B=2, T=8)
    full = model.forward(idx)
    cache = model.new_kv_cache(batch_size=2)
    parts = [model.forward(idx[:, :3], kv_cache=cache)]
    parts += [model.forward(idx[:, t:t + 1], kv_cache=cache) for t in range(3, 8)]
    assert cache.length == 8
    assert np.allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="block_size"):
        model.forward(idx[:, :1], kv_cache=cache)


@pytest.mark.parametrize("idx, message", [
    (np.zeros((1, 9), dtype=int), "exceeds block_size 8"),
    (np.array([[1, 2, 11]]), r"token id 11 is outside \[0, 11\)"),
    (np.array([[1, -1, 2]]), r"token id -1 is outside"),
    (np.array([1, 2, 3]), "2-D"),
    (np.zeros((1, 2, 3), dtype=int), "2-D"),
    (np.array([[1.0, 2.0]]), "integers"),
])
def test_bad_input(idx, message):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(ValueError, match=message):
        model.forward(idx)


def test_bad_targets():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    idx = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="target 12 is outside"):
        model.loss_and_grads(idx, np.array([[1, 12, 3]]))
    with pytest.raises(ValueError, match="shape"):
        model.loss_and_grads(idx, np.array([[1, 2]]))


def test_llama_style_model_float32_end_to_end():
    model = GPT(GPTConfig.llama(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16,
                                dropout=0.1), seed=0)
    idx, targets = tiny_batch(np.random.default_rng(0), T=8, V=13)
    logits, att = model.forward(idx, return_attention=True)
    assert logits.dtype == np.float32 and all(a.shape == (2, 4, 8, 8) for a in att)
    loss, grads = model.loss_and_grads(idx, targets)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert "wpe.weight" not in model.params and "lm_head.weight" in model.params


def test_untied_head_without_the_head_gets_zero_gradient():
    model = GPT(GPTConfig(**TINY, tie_embeddings=False), seed=1)
    perturb(model, np.random.default_rng(3))
    idx, _ = tiny_batch(np.random.default_rng(0))
    hidden, cache = model.forward_with_cache(idx, lm_head=False)
    grads = model.backward(np.ones_like(hidden), cache)
    assert np.all(grads["lm_head.weight"] == 0.0) and np.abs(grads["wte.weight"]).max() > 0


@pytest.mark.parametrize("name", ["llama", "ln-sin-swiglu-gqa-bias-untied"])
def test_kv_cache_forward_matches_full_forward_in_other_configurations(name):
    config = GPTConfig(**{**TINY, "block_size": 8, "n_head": 4, **CONFIGS[name]})
    model = GPT(config, seed=0)
    perturb(model, np.random.default_rng(1), 0.2)
    idx, _ = tiny_batch(np.random.default_rng(0), B=2, T=8)
    full = model.forward(idx)
    cache = model.new_kv_cache(batch_size=2)
    assert cache.k.shape == (2, 2, config.kv_heads, 8, 2)             # nkv heads, not nh
    parts = [model.forward(idx[:, :3], kv_cache=cache)]
    parts += [model.forward(idx[:, t:t + 1], kv_cache=cache) for t in range(3, 8)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "llama", "ln-sin-swiglu-gqa-bias-untied"])
@pytest.mark.parametrize("with_cache", [False, True])
def test_last_only_is_the_last_row_of_the_full_forward(name, with_cache):
    config = GPTConfig(**{**TINY, "block_size": 8, "n_head": 4, **CONFIGS.get(name, {})})
    model = GPT(config, seed=0)
    perturb(model, np.random.default_rng(1), 0.2)
    idx, _ = tiny_batch(np.random.default_rng(0), B=2, T=7)
    full = model.forward(idx)                                           # (B, T, V)
    cache = model.new_kv_cache(batch_size=2) if with_cache else None
    last, att = model.forward(idx, kv_cache=cache, last_only=True, return_attention=True)
    assert last.shape == (2, 1, config.vocab_size) and att[-1].shape == (2, 4, 1, 7)
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-12, atol=1e-12)
    if with_cache:                                   # the last layer still cached every key
        nxt = model.forward(idx[:, :1], kv_cache=cache)
        np.testing.assert_allclose(nxt, model.forward(np.concatenate([idx, idx[:, :1]], 1))
                                   [:, -1:], rtol=1e-12, atol=1e-12)


def windows_recomputed(model, tokens):
    """Next-token logits after each prefix, the window recomputed from its last block_size."""
    W = model.config.block_size
    return np.stack([model.forward(np.array([tokens[max(0, t + 1 - W):t + 1]]))[0, -1]
                     for t in range(len(tokens))])


def windows_rolled(model, tokens):
    """The same through a rolling KV cache, one token at a time."""
    cache = model.new_kv_cache(rolling=True)
    return np.stack([model.forward(np.array([[t]]), kv_cache=cache)[0, -1] for t in tokens])


@pytest.mark.parametrize("n_layer", [1, 2])
def test_rolling_cache_is_exact_with_one_layer_and_drifts_with_more(n_layer):
    """In layer 0 a key depends on its own token only, and RoPE makes it valid wherever the
    window is; from layer 1 on a cached key remembers tokens that have left the window."""
    config = GPTConfig.llama(**{**TINY, "block_size": 6, "n_layer": n_layer, "n_head": 4})
    model = GPT(config, seed=0)
    perturb(model, np.random.default_rng(2), 0.5)
    tokens = list(np.random.default_rng(3).integers(0, 11, size=20))
    exact, rolled = windows_recomputed(model, tokens), windows_rolled(model, tokens)
    np.testing.assert_allclose(rolled[:6], exact[:6], rtol=1e-12, atol=1e-12)  # inside: equal
    if n_layer == 1:
        np.testing.assert_allclose(rolled, exact, rtol=1e-10, atol=1e-10)
    else:
        assert np.abs(rolled[6:] - exact[6:]).max() > 1e-6


def test_rolling_cache_needs_rotary_positions():
    with pytest.raises(ValueError, match="rolling KV cache needs rotary positions"):
        GPT(GPTConfig(**TINY)).new_kv_cache(rolling=True)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_head_mask_of_ones_changes_nothing_and_its_gradient_passes_the_check(name):
    rng = np.random.default_rng(3)
    config = GPTConfig(**{**TINY, "n_head": 4, **(CONFIGS["llama"] if name == "llama" else {})})
    model = GPT(config, seed=1)
    perturb(model, rng, 0.2)
    idx, targets = tiny_batch(rng)
    ones = np.ones((2, 4))
    assert np.array_equal(model.forward(idx), model.forward(idx, head_mask=ones))
    loss, grads = model.loss_and_grads(idx, targets, train=False)
    loss1, grads1 = model.loss_and_grads(idx, targets, train=False, head_mask=ones)
    assert loss == loss1 and set(grads1) == set(grads) | {"head_mask"}
    assert all(np.array_equal(grads[k], grads1[k]) for k in grads)
    mask = rng.uniform(0.5, 1.5, size=(2, 4))
    _, grads = model.loss_and_grads(idx, targets, train=False, head_mask=mask)
    errors = grad_errors(lambda: model.loss(idx, targets, head_mask=mask),
                         {"head_mask": mask, "h.0.attn.c_attn.weight":
                          model.params["h.0.attn.c_attn.weight"]}, grads)
    assert max(errors.values()) < 1e-7, errors


def test_zeroing_a_head_in_the_mask_removes_its_rows_of_c_proj():
    rng = np.random.default_rng(4)
    model = GPT(GPTConfig(**TINY), seed=1)
    perturb(model, rng)
    idx, _ = tiny_batch(rng)
    mask = np.array([[1.0, 1.0], [0.0, 1.0]])                  # layer 1, head 0
    masked = model.forward(idx, head_mask=mask)
    model.params["h.1.attn.c_proj.weight"][:4] = 0.0           # hs = 4
    assert np.allclose(masked, model.forward(idx), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mask, message", [(np.ones((2, 3)), "n_layer, n_head"),
                                           (np.array([["a", "b"], ["c", "d"]]), "numbers")])
def test_bad_head_mask(mask, message):
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match=message):
        model.forward(np.zeros((1, 3), dtype=int), head_mask=mask)
