"""What a language model's loss means: counting baselines, the whole-text loss, and its units.

    unigram    P(next = j)                 = (count(j) + alpha) / (N + alpha V)
    bigram     P(next = j | current = i)   = (count(i, j) + alpha) / (count(i) + alpha V)

both counted on the training ids, with add-alpha (Laplace) smoothing so that a pair never seen
gets a small probability instead of zero (an infinite loss). A bigram model is a lookup table:
a transformer earns its keep only by beating it, with the context beyond one token.

The same loss in three units (``loss_units``): nats (the natural log, what training reports),
bits per token = nats / ln 2, and perplexity = e^nats, the number of equally likely choices
that would be as uncertain.

Shape legend: V vocabulary, N tokens, T context length.
"""
import math
from typing import NamedTuple

import numpy as np


def check_ids(ids, vocab_size, what):
    """ids as an int array (N,), every id in 0 .. vocab_size - 1, else a ValueError."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{what}: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{what}: ids run from {ids.min()} to {ids.max()}, outside the "
                         f"vocabulary 0 .. {vocab_size - 1}")
    return ids


def check_alpha(alpha, what):
    """alpha as a float >= 0 (0: no smoothing), else a ValueError."""
    if not alpha >= 0.0:
        raise ValueError(f"{what}: alpha must be >= 0 (0 = no smoothing), got {alpha}")
    return float(alpha)


def unigram_logprobs(ids, vocab_size, alpha=1.0):
    """log P(token) (V,) counted on ids, add-alpha smoothed.

    >>> np.exp(unigram_logprobs(np.array([0, 0, 1]), 3, alpha=1.0)).round(3).tolist()
    [0.5, 0.333, 0.167]
    """
    ids = check_ids(ids, vocab_size, "unigram_logprobs")
    alpha = check_alpha(alpha, "unigram_logprobs")
    counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + alpha
    with np.errstate(divide="ignore"):                # alpha = 0: unseen tokens get log 0
        return np.log(counts / counts.sum())


def bigram_logprobs(ids, vocab_size, alpha=1.0):
    """log P(next | current) (V, V), row = current token, counted on ids, add-alpha smoothed.

    >>> lp = bigram_logprobs(np.array([0, 1, 0, 1, 0]), 2, alpha=0.0)
    >>> np.exp(lp).tolist()                           # after 0 always 1, after 1 always 0
    [[0.0, 1.0], [1.0, 0.0]]
    """
    ids = check_ids(ids, vocab_size, "bigram_logprobs")
    alpha = check_alpha(alpha, "bigram_logprobs")
    pairs = ids[:-1] * vocab_size + ids[1:]                         # pair (i, j) -> i V + j
    counts = np.bincount(pairs, minlength=vocab_size * vocab_size).astype(np.float64)
    counts = counts.reshape(vocab_size, vocab_size) + alpha         # (V, V): row i, column j
    with np.errstate(divide="ignore", invalid="ignore"):   # alpha = 0: unseen pairs get log 0
        return np.log(counts / counts.sum(axis=1, keepdims=True))


def counting_loss(logprobs, ids):
    """Mean -log P of every token of ids after the first, in nats: ``logprobs`` (V,) of a
    unigram model or (V, V) of a bigram model.

    >>> round(counting_loss(np.log(np.full(4, 0.25)), np.array([0, 1, 2])), 4)  # ln 4
    1.3863
    """
    if logprobs.ndim not in (1, 2):
        raise ValueError(f"counting_loss: logprobs must be (V,) or (V, V), got {logprobs.shape}")
    ids = check_ids(ids, logprobs.shape[0], "counting_loss")
    if len(ids) < 2:
        raise ValueError(f"counting_loss: {len(ids)} token(s) leave nothing to predict")
    if logprobs.ndim == 1:
        return float(-logprobs[ids[1:]].mean())
    return float(-logprobs[ids[:-1], ids[1:]].mean())


def text_loss(model, ids, block_size=None, batch_size=64):
    """The model's mean loss (nats) over every token of ids but the first, each predicted once:
    ids are cut into consecutive windows of block_size (default the model's) and each window
    is read from its start, so a prediction is made from 1 .. T tokens. (``estimate_loss``
    instead averages random windows, some tokens twice and others not at all.)

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    >>> round(text_loss(model, np.arange(20) % 5), 1)                # untrained: about ln 5
    1.6
    """
    ids = np.asarray(ids)
    T = model.config.block_size if block_size is None else block_size
    n = (len(ids) - 1) // T
    if n == 0:
        raise ValueError(f"text_loss: {len(ids)} tokens do not fill one window of {T} + 1")
    x = ids[:n * T].reshape(n, T)
    y = ids[1:n * T + 1].reshape(n, T)
    total = sum(model.loss(x[i:i + batch_size], y[i:i + batch_size]) * len(x[i:i + batch_size])
                for i in range(0, n, batch_size))
    return float(total / n)


class LossUnits(NamedTuple):
    nats: float                  # the loss as training reports it (natural log)
    bits: float                  # bits per token: nats / ln 2
    perplexity: float            # e^nats

    def __str__(self):
        return (f"{self.nats:.3f} nats = {self.bits:.3f} bits per token, perplexity "
                f"{self.perplexity:.2f}")


def loss_units(nats):
    """A loss in nats, bits per token and perplexity.

    >>> str(loss_units(math.log(2.0)))
    '0.693 nats = 1.000 bits per token, perplexity 2.00'
    """
    return LossUnits(float(nats), float(nats) / math.log(2.0), math.exp(nats))
