"""Counting baselines and loss units (minillm/training/bigram.py): the smoothed counts are
probabilities, the bigram loss equals the cross-entropy a model with those logits would get,
smoothing keeps unseen pairs finite, and the units convert both ways."""
import math

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.core.layers import cross_entropy_forward
from minillm.tokenizers import CharTokenizer
from minillm.training.bigram import (bigram_logprobs, counting_loss, loss_units, text_loss,
                                     unigram_logprobs)
from minillm.training.data import split


@pytest.mark.parametrize("alpha", [0.1, 1.0, 5.0])
def test_counts_are_probability_distributions(alpha):
    ids = np.random.default_rng(0).integers(0, 7, size=500)
    uni, bi = unigram_logprobs(ids, 7, alpha=alpha), bigram_logprobs(ids, 7, alpha=alpha)
    assert uni.shape == (7,) and bi.shape == (7, 7)
    assert math.isclose(np.exp(uni).sum(), 1.0, rel_tol=1e-12)
    assert np.allclose(np.exp(bi).sum(axis=1), 1.0, rtol=1e-12)


def test_bigram_matches_the_formula_by_hand():
    ids = np.array([0, 1, 1, 2, 0, 1, 2, 2])
    alpha, V = 0.5, 3
    pairs = list(zip(ids[:-1], ids[1:]))
    for i in range(V):
        row = sum(a == i for a, _ in pairs)
        for j in range(V):
            expected = (sum(p == (i, j) for p in pairs) + alpha) / (row + alpha * V)
            assert math.isclose(math.exp(bigram_logprobs(ids, V, alpha=alpha)[i, j]), expected)


def test_counting_loss_is_the_cross_entropy_of_the_table_as_logits():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, size=300)
    lp = bigram_logprobs(ids, 5, alpha=1.0)
    logits = lp[ids[:-1]][None]                                     # (1, N - 1, V)
    ce = cross_entropy_forward(logits, ids[1:][None])[0]
    assert math.isclose(counting_loss(lp, ids), float(ce), rel_tol=1e-9)
    uni = unigram_logprobs(ids, 5)
    assert math.isclose(counting_loss(uni, ids), -float(uni[ids[1:]].mean()))


def test_smoothing_keeps_unseen_pairs_finite():
    train, val = np.array([0, 1, 0, 1, 0]), np.array([0, 0, 1])     # (0, 0) never seen
    assert counting_loss(bigram_logprobs(train, 2, alpha=0.0), val) == math.inf
    assert math.isfinite(counting_loss(bigram_logprobs(train, 2, alpha=1.0), val))


def test_bigram_beats_unigram_on_shakespeare(shakespeare):
    text = shakespeare[:200_000]
    tok = CharTokenizer.from_text(text)
    train, val = split(tok.encode_array(text))
    V = tok.vocab_size
    uni = counting_loss(unigram_logprobs(train, V), val)
    bi = counting_loss(bigram_logprobs(train, V), val)
    assert bi < uni - 0.5 < math.log(V) - 0.5, (bi, uni, math.log(V))


def test_text_loss_equals_the_mean_over_windows():
    model = GPT(GPTConfig(vocab_size=6, block_size=5, n_layer=1, n_head=1, n_embd=8), seed=0)
    ids = np.random.default_rng(2).integers(0, 6, size=23)        # 4 windows of 5 (+ 1)
    x, y = ids[:20].reshape(4, 5), ids[1:21].reshape(4, 5)
    expected = float(np.mean([model.loss(x[i:i + 1], y[i:i + 1]) for i in range(4)]))
    assert math.isclose(text_loss(model, ids, batch_size=3), expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="window"):
        text_loss(model, ids[:5])


def test_loss_units_round_trip():
    u = loss_units(2.5)
    assert math.isclose(u.bits * math.log(2.0), 2.5)
    assert math.isclose(math.log(u.perplexity), 2.5)
    assert math.isclose(loss_units(math.log(65.0)).perplexity, 65.0)   # uniform over 65 choices


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="vocabulary"):
        bigram_logprobs(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="integer"):
        unigram_logprobs(np.array([0.5, 1.0]), 3)
    with pytest.raises(ValueError, match="alpha"):
        bigram_logprobs(np.array([0, 1]), 2, alpha=-1.0)
    with pytest.raises(ValueError, match="nothing to predict"):
        counting_loss(unigram_logprobs(np.array([0, 1]), 2), np.array([1]))
