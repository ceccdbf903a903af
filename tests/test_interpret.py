"""minillm.interpret: the logit lens, head ablation (zero and mean), the head-mask gradient,
activation patching and the induction scores, each against a direct computation."""
import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.gradcheck import numerical_grad, rel_error
from minillm.core.layers import layernorm_forward
from minillm.interpret import (PatchingResult, head_ablation, head_importance, head_patching,
                               induction_attention, induction_score, logit_lens, patch_heads,
                               previous_occurrence, previous_token_score, record_heads,
                               repeated_tokens, residual_stream)

TINY = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, dtype="float64")


@pytest.fixture
def model():
    model = GPT(GPTConfig(**TINY), seed=1)
    rng = np.random.default_rng(0)
    for p in model.params.values():
        p += rng.normal(scale=0.3, size=p.shape)
    return model


@pytest.fixture
def batch():
    rng = np.random.default_rng(5)
    return rng.integers(0, 13, size=(3, 8)), rng.integers(0, 13, size=(3, 8))


def test_logit_lens_reads_every_layer_and_ends_at_the_model(model, batch):
    idx, _ = batch
    xs = residual_stream(model, idx)
    assert xs.shape == (3, 3, 8, 8)
    p = model.params
    assert np.allclose(xs[0], p["wte.weight"][idx] + p["wpe.weight"][:8], rtol=0, atol=1e-15)
    lens = logit_lens(model, idx)
    assert lens.shape == (3, 3, 8, 13)
    assert np.allclose(lens[-1], model.forward(idx), rtol=0, atol=1e-12)
    h0, _ = layernorm_forward(xs[0], p["ln_f.weight"], p["ln_f.bias"])
    assert np.allclose(lens[0], h0 @ p["wte.weight"].T, rtol=0, atol=1e-12)


def test_logit_lens_of_a_llama_style_model():
    model = GPT(GPTConfig.llama(**{**TINY, "n_head": 4}), seed=2)
    idx = np.random.default_rng(0).integers(0, 13, size=(2, 6))
    assert np.allclose(logit_lens(model, idx)[-1], model.forward(idx), rtol=0, atol=1e-12)


def test_zero_ablation_is_the_head_mask(model, batch):
    idx, targets = batch
    table = head_ablation(model, idx, targets)
    clean = model.loss(idx, targets)
    mask = np.ones((2, 2))
    mask[1, 0] = 0.0
    assert table[1, 0] == pytest.approx(model.loss(idx, targets, head_mask=mask) - clean, abs=1e-15)
    assert table.shape == (2, 2) and np.all(table != 0.0)


def test_mean_ablation_is_a_constant_head_output(model, batch):
    """Replacing head h by its mean output ybar is the same as removing its rows from c_proj and
    adding ybar W_h to c_proj's bias."""
    idx, targets = batch
    table = head_ablation(model, idx, targets, method="mean")
    ybar = record_heads(model, idx)[0][:, :, 1].mean(axis=(0, 1))   # layer 0, head 1: (hs,)
    clean = model.loss(idx, targets)
    w, b = model.params["h.0.attn.c_proj.weight"], model.params["h.0.attn.c_proj.bias"]
    saved = w.copy(), b.copy()
    b += ybar @ w[4:8]
    w[4:8] = 0.0
    try:
        expected = model.loss(idx, targets) - clean
    finally:
        w[...], b[...] = saved
    assert table[0, 1] == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="method"):
        head_ablation(model, idx, targets, method="median")


def test_head_importance_is_the_derivative_of_the_loss(model, batch):
    idx, targets = batch
    grad = head_importance(model, idx, targets)
    mask = np.ones((2, 2))
    numerical = numerical_grad(lambda: model.loss(idx, targets, head_mask=mask), mask)
    assert rel_error(grad, numerical) < 1e-7


def test_patching(model, batch):
    clean, targets = batch
    corrupted = clean.copy()
    corrupted[:, 2] = (clean[:, 2] + 1) % 13
    source = record_heads(model, clean)
    assert [a.shape for a in source] == [(3, 8, 2, 4)] * 2
    same = patch_heads(model, corrupted, record_heads(model, corrupted), [(0, 0), (1, 1)])
    assert np.array_equal(same, model.forward(corrupted))
    patched = patch_heads(model, corrupted, source, [(1, 0)], positions=[5])
    plain = model.forward(corrupted)
    assert np.array_equal(patched[:, :5], plain[:, :5])          # causal: nothing before 5
    assert not np.allclose(patched[:, 5], plain[:, 5])
    result = head_patching(model, clean, corrupted, targets)
    assert result.clean == pytest.approx(model.loss(clean, targets))
    assert result.corrupted == pytest.approx(model.loss(corrupted, targets))
    hook_loss = float(np.mean(-np.log(np.take_along_axis(
        softmax(patch_heads(model, corrupted, source, [(0, 1)])), targets[..., None], -1))))
    assert result.patched[0, 1] == pytest.approx(hook_loss, abs=1e-12)
    with pytest.raises(ValueError, match="same"):
        head_patching(model, clean, corrupted[:, :4], targets)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_restored_fraction():
    r = PatchingResult(np.array([[3.0, 2.0]]), clean=2.0, corrupted=4.0)
    assert r.restored.tolist() == [[0.5, 1.0]]


def test_repeated_tokens_and_previous_occurrences():
    idx = repeated_tokens(np.random.default_rng(0), 4, 5, [3, 4, 5, 6, 7, 8], prefix=[9])
    assert idx.shape == (4, 11) and np.all(idx[:, 0] == 9)
    assert np.array_equal(idx[:, 1:6], idx[:, 6:])
    assert all(len(set(row[1:6])) == 5 for row in idx)
    prev = previous_occurrence(idx)
    assert np.all(prev[:, :6] == -1) and np.array_equal(prev[:, 6:], np.tile(np.arange(1, 6), (4, 1)))
    with pytest.raises(ValueError, match="distinct"):
        repeated_tokens(np.random.default_rng(0), 1, 7, 6)


def test_scores_of_ideal_heads():
    idx = repeated_tokens(np.random.default_rng(1), 2, 4, 10)               # T = 8
    T = 8
    prev = np.zeros((2, 1, T, T))
    prev[:, 0, np.arange(1, T), np.arange(T - 1)] = 1.0
    prev[:, 0, 0, 0] = 1.0
    induction = np.zeros((2, 1, T, T))
    induction[:, 0, np.arange(T), [0, 1, 2, 3, 1, 2, 3, 4]] = 1.0          # t >= 4: t - 3
    assert previous_token_score(prev).tolist() == [1.0]
    assert induction_attention(prev, idx).tolist() == [0.0]
    assert induction_attention(induction, idx).tolist() == [1.0]
    shifted = np.zeros((2, 1, T, T))                                       # one key further
    shifted[:, 0, np.arange(T), [0, 1, 2, 3, 2, 3, 4, 5]] = 1.0
    assert induction_attention(shifted, idx).tolist() == [0.0]
    assert induction_attention(shifted, idx, offset=2).tolist() == [1.0]   # t = 4 .. 6
    second = np.broadcast_to(np.arange(T) >= 4, (2, T))
    assert previous_token_score(induction, second).tolist() == [0.0]


def test_induction_score_of_a_model(model):
    s = induction_score(model, np.random.default_rng(2), batch_size=5)
    assert s.induction.shape == s.previous.shape == (2, 2)
    idx = repeated_tokens(np.random.default_rng(2), 5, 4, 13)
    x, y = idx[:, :-1], idx[:, 1:].copy()
    first, repeat = y.copy(), y.copy()
    first[:, 3:] = -1                                   # targets 1..3 of the first half
    repeat[:, :4] = -1                                  # targets 5..7 (the second half)
    assert s.loss_first == pytest.approx(model.loss(x, first))
    assert s.loss_repeat == pytest.approx(model.loss(x, repeat))
    att = model.forward(idx, return_attention=True)[1]
    assert np.allclose(s.induction[1], induction_attention(att[1], idx,
                                                           np.arange(8) >= 4))
