"""Measurements (minillm/training/metrics.py): the loss on a text is the mean over every token
predicted once, perplexity and bits follow; the classification metrics."""
import math

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig
from minillm.training.metrics import classification_metrics, metrics_report, text_metrics


def test_text_metrics_predict_every_token_once():
    text = "the cat sat on the mat, the end."
    tok = CharTokenizer.from_text(text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2,
                          n_embd=8, dtype="float64"), seed=0)
    ids = np.array(tok.encode(text))
    total = 0.0
    for start in range(0, len(ids) - 1, 8):              # windows of 9 overlapping by one
        window = ids[start:start + 9]
        total += model.loss(window[None, :-1], window[None, 1:]) * (len(window) - 1)
    m = text_metrics(model, tok, text, batch_size=2)
    assert m["tokens"] == len(text) - 1
    assert m["loss"] == pytest.approx(total / (len(text) - 1), rel=1e-12)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["bits_per_char"] == pytest.approx(m["loss"] / math.log(2))
    with pytest.raises(ValueError, match="at least 2"):
        text_metrics(model, tok, "t")


def test_bpe_bits_per_byte():
    text = "hello world, hello there. " * 4
    tok = BPETokenizer.train(text, 270)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2,
                          n_embd=8), seed=0)
    m = text_metrics(model, tok, text)
    ids = tok.encode(text)
    n_bytes = sum(len(tok.token_bytes(i)) for i in ids[1:])
    assert m["bits_per_byte"] == pytest.approx(m["loss"] * m["tokens"] / math.log(2) / n_bytes,
                                               rel=1e-6)
    assert "bits_per_char" not in m


def test_classification_metrics_and_report():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    m = classification_metrics(logits, np.array([0, 0, 1, 1]), ["no", "yes"])
    assert m["accuracy"] == 0.5 and m["confusion"] == [[1, 1], [1, 1]]
    assert m["precision"] == [0.5, 0.5] and m["recall"] == [0.5, 0.5]
    assert "test accuracy: 0.5000 (4 texts)" in metrics_report(m)
