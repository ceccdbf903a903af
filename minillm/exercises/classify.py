"""Exercises of notebook 14: pooling a GPT's hidden states for a classifier
(minillm/core/classifier.py).

    pool_forward     pool_forward(h, lengths, mode)   the last real token, or the mean of the
                                                      real tokens, of each padded sequence
    pool_backward    pool_backward(dpooled, cache)    dh, exactly zero on the padding

Shape legend: B batch, T time (the longest sequence; shorter ones are right-padded), C channels;
lengths (B,) the real positions of each sequence, 1 <= len <= T.

>>> from minillm.exercises import check
>>> check("pool_backward", classifier.pool_backward, verbose=False).passed
True
"""
import numpy as np

from ..core import classifier
from .registry import Case, exercise, mistake


def _pool_cases(rng, modes=("mean", "last")):
    def case(label, B, T, C, lengths, mode):
        return Case(f"{label}, {mode}", dict(h=rng.normal(size=(B, T, C)),
                                             lengths=np.array(lengths), mode=mode))
    cases = []
    for mode in modes:
        cases += [case("lengths 3, 1, 4 of T = 4", 3, 4, 5, [3, 1, 4], mode),
                  case("every sequence full", 2, 3, 4, [3, 3], mode),
                  case("T = 1", 2, 1, 3, [1, 1], mode)]
    return cases


exercise("pool_forward", "one vector per padded sequence: its last real token's hidden state, "
         "or the mean over its real tokens", reference=classifier.pool_forward,
         returns=("pooled", "cache"), compare=("pooled",), cases=_pool_cases)


def _pool(h, lengths, mode, mean_over_T=False, last_of_T=False):
    B, T, _ = h.shape
    if mode == "last":
        return (h[:, -1] if last_of_T else h[np.arange(B), lengths - 1]), None
    if mean_over_T:
        return h.mean(axis=1), None
    real = np.arange(T)[None, :] < lengths[:, None]
    return (h * real[:, :, None]).sum(axis=1) / lengths[:, None], None


@mistake("pool_forward", "the mean is over the real positions only: padded ones (t >= len) are "
                         "not part of the sequence, so sum h[b, :len_b] and divide by len_b")
def _(h, lengths, mode="mean"):
    return _pool(h, lengths, mode, mean_over_T=True)


@mistake("pool_forward", "the last real token of sequence b is at len_b - 1, not at T - 1 "
                         "(a padded position): h[np.arange(B), lengths - 1]")
def _(h, lengths, mode="mean"):
    return _pool(h, lengths, mode, last_of_T=True)


exercise("pool_backward", "the pooling's gradient: back to the real positions it read, zero on "
         "the padding", reference=classifier.pool_backward, forward=classifier.pool_forward,
         returns=("dh",), cases=_pool_cases)


def _pool_back(dpooled, cache, divide_by_T=False, last_of_T=False):
    B, T, C = cache.shape
    dh = np.zeros(cache.shape, dtype=dpooled.dtype)
    if cache.mode == "last":
        dh[np.arange(B), -1 if last_of_T else cache.lengths - 1] = dpooled
        return dh
    real = np.arange(T)[None, :] < cache.lengths[:, None]
    n = T if divide_by_T else cache.lengths[:, None, None]
    return real[:, :, None] * dpooled[:, None, :] / n


@mistake("pool_backward", "each of the len_b real positions received 1/len_b of the mean, so each "
                          "gets dpooled / len_b (not / T)")
def _(dpooled, cache):
    return _pool_back(dpooled, cache, divide_by_T=True)


@mistake("pool_backward", "'last' read position len_b - 1 of sequence b: its gradient goes "
                          "there (dh[np.arange(B), lengths - 1] = dpooled), not to position T - 1")
def _(dpooled, cache):
    return _pool_back(dpooled, cache, last_of_T=True)
