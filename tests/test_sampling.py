"""Sampling rules and generation with and without the KV cache."""
import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.sampling import generate, sample_next


def test_greedy_and_zero_temperature_take_the_argmax():
    logits = np.array([0.5, 3.0, -1.0, 2.9])
    assert sample_next(logits, greedy=True) == 1
    assert sample_next(logits, temperature=0.0) == 1


def test_top_k_keeps_only_the_k_most_likely():
    rng = np.random.default_rng(0)
    logits = np.array([1.0, 4.0, 3.0, 0.0, 2.0])
    draws = {sample_next(logits, top_k=2, rng=rng) for _ in range(300)}
    assert draws == {1, 2}
    assert {sample_next(logits, top_k=1, rng=rng) for _ in range(20)} == {1}


def test_top_p_keeps_the_smallest_nucleus():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is {0, 1}
    assert {sample_next(logits, top_p=0.7, rng=rng) for _ in range(300)} == {0, 1}
    assert {sample_next(logits, top_p=0.5, rng=rng) for _ in range(50)} == {0}
    assert {sample_next(logits, top_p=1.0, rng=rng) for _ in range(2000)} == {0, 1, 2, 3}


def test_sampling_frequencies_follow_temperature():
    rng = np.random.default_rng(1)
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    n = 20000
    counts = np.bincount([sample_next(logits, rng=rng) for _ in range(n)], minlength=3) / n
    assert np.allclose(counts, [0.6, 0.3, 0.1], atol=0.015)
    hot = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    counts = np.bincount([sample_next(logits, temperature=2.0, rng=rng) for _ in range(n)], minlength=3) / n
    assert np.allclose(counts, hot, atol=0.015)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0, rng=np.random.default_rng()), "temperature"),
    (dict(temperature=float("nan"), rng=np.random.default_rng()),
     "temperature must be a finite number >= 0, got nan"),
    (dict(temperature=float("inf"), rng=np.random.default_rng()), "temperature must be a finite"),
    (dict(temperature="0.8", rng=np.random.default_rng()), "temperature must be a finite"),
    (dict(top_k=0, rng=np.random.default_rng()), "top_k"),
    (dict(top_k=2.5, rng=np.random.default_rng()), "top_k must be an integer >= 1, got 2.5"),
    (dict(top_k=True, rng=np.random.default_rng()), "top_k must be an integer"),
    (dict(top_p=0.0, rng=np.random.default_rng()), "top_p"),
    (dict(top_p=float("nan"), rng=np.random.default_rng()), "top_p"),
    (dict(), "rng"),
])
def test_bad_sampling_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_next(np.zeros(3), **kwargs)


def small_model(pos_encoding="learned", dtype="float32"):
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16,
                    pos_encoding=pos_encoding, dtype=dtype)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(3)
    for p in model.params.values():                 # a peaked, non-uniform next-token distribution
        p += rng.normal(scale=0.5, size=p.shape).astype(p.dtype)
    return model


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal"])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_cached_and_uncached_generation_agree_past_block_size(pos_encoding, mode):
    model = small_model(pos_encoding)
    opts = dict(greedy=True) if mode == "greedy" else dict(temperature=0.9, top_k=8, top_p=0.95)
    runs = [list(generate(model, [1, 2, 3], 30, rng=np.random.default_rng(5), use_cache=c, **opts))
            for c in (True, False)]
    assert len(runs[0]) == 30 > model.config.block_size     # the window slides many times
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_uncached_generation_uses_the_last_block_size_tokens():
    model = small_model()
    out = list(generate(model, [4, 5], 12, greedy=True, use_cache=False))
    context = [4, 5] + out
    for i in range(2, len(context)):
        window = np.array([context[max(0, i - 8):i]])
        assert int(np.argmax(model.forward(window)[0, -1])) == context[i]


def test_prompt_errors():
    model = small_model()
    with pytest.raises(ValueError, match="longer than the model's context"):
        list(generate(model, list(range(9)), 1, greedy=True))
    with pytest.raises(ValueError, match="empty"):
        list(generate(model, [], 1, greedy=True))
    with pytest.raises(ValueError, match="outside"):
        list(generate(model, [13], 1, greedy=True))


@pytest.mark.parametrize("logits", [[0.0, np.inf, 1.0], [0.0, np.nan, 1.0], [-np.inf, -np.inf]])
@pytest.mark.parametrize("mode", [dict(greedy=True), dict(temperature=0.8), dict(top_p=0.9)])
def test_logits_that_are_not_numbers_are_an_error(logits, mode):
    with pytest.raises(ValueError, match="the logits are not numbers"):
        sample_next(np.array(logits), rng=np.random.default_rng(0), **mode)


def test_minus_infinity_masks_a_token():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, -np.inf, 1.0])
    assert {sample_next(logits, rng=rng) for _ in range(200)} == {0, 2}


def test_a_temperature_so_small_that_logits_overflow_is_an_error():
    with pytest.raises(ValueError, match="temperature 1e-320 is so small that logits / "
                                         "temperature overflow; use temperature 0"):
        sample_next(np.array([0.5, 3.0]), temperature=1e-320, rng=np.random.default_rng(0))
    assert sample_next(np.array([0.5, 3.0]), temperature=1e-300, rng=np.random.default_rng(0)) == 1


def test_weights_holding_nan_are_named_before_anything_is_generated():
    model = small_model()
    model.params["h.1.attn.c_proj.weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"weights hold NaN or infinity \(h.1.attn.c_proj.weight\)"):
        next(generate(model, [1, 2], 5, greedy=True))


@pytest.mark.parametrize("prompt, message", [
    ([1.0, 2.0], "token ids must be integers, got float64"),
    (np.array([1.7]), "token ids must be integers, got float64"),
    ([True], "token ids must be integers, got bool"),
])
def test_token_ids_given_as_floats_are_refused_not_truncated(prompt, message):
    with pytest.raises(ValueError, match=message):
        next(generate(small_model(), prompt, 3, greedy=True))


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_max_new_tokens_must_be_a_count(n):
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        next(generate(small_model(), [1], n, greedy=True))


def test_rolling_generation():
    cfg = GPTConfig.llama(vocab_size=13, block_size=8, n_layer=2, n_head=4, n_embd=16)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(3)
    for p in model.params.values():
        p += rng.normal(scale=0.5, size=p.shape).astype(p.dtype)
    exact = list(generate(model, [1, 2, 3], 30, greedy=True))
    rolled = list(generate(model, [1, 2, 3], 30, greedy=True, rolling=True))
    assert len(rolled) == 30 and rolled[:5] == exact[:5]          # inside the window: the same
    assert len(set(rolled)) > 1
    with pytest.raises(ValueError, match="needs the KV cache"):
        list(generate(model, [1], 2, greedy=True, rolling=True, use_cache=False))
    with pytest.raises(ValueError, match="rotary positions"):
        list(generate(small_model(), [1], 2, greedy=True, rolling=True))
