"""Induction heads (Olsson et al. 2022) and previous-token heads, measured on attention maps.

An induction head completes [A][B] ... [A] -> [B]: from the second A it attends to the token
right after the first A, and copies it. It needs a previous-token head in an earlier layer,
which writes "the token before me was A" into the position of B, so that the second A can find
it. Two scores on attention weights a[t, s] (query t, key s):

    previous-token score   mean over queries t >= 1 of a[t, t - 1]
    induction score        mean over queries t whose token occurred before, at p(t) < t (the
                           last such place), of a[t, p(t) + 1]: the token after that occurrence

On random tokens repeated twice, [r_1 .. r_n][r_1 .. r_n], nothing but copying predicts the
second half, so its loss falls well below that of the first half (about ln V) exactly when the
model can copy; ``induction_score`` measures both.

Shape legend: L layers, nh heads, B batch, T time (S = T keys).
"""
from typing import NamedTuple

import numpy as np

from ..core.layers import cross_entropy_forward


def repeated_tokens(rng, batch_size, seq_len, tokens, prefix=()):
    """B rows of ``prefix`` + n random tokens + the same n again: (B, len(prefix) + 2n) ids.

    The n tokens of a row are distinct draws from ``tokens`` (an int for range(tokens), or a
    list of ids), so each token of the second half has exactly one earlier occurrence.

    >>> repeated_tokens(np.random.default_rng(0), 1, 3, 10, prefix=[10]).tolist()
    [[10, 3, 2, 1, 3, 2, 1]]
    """
    pool = np.arange(tokens) if np.ndim(tokens) == 0 else np.asarray(tokens)
    if seq_len > len(pool):
        raise ValueError(f"repeated_tokens: {seq_len} distinct tokens asked for, but there are "
                         f"only {len(pool)} to draw from")
    first = pool[np.argsort(rng.random((batch_size, len(pool))), axis=1)[:, :seq_len]]  # (B, n)
    head = np.broadcast_to(np.asarray(prefix, dtype=np.int64), (batch_size, len(prefix)))
    return np.concatenate([head, first, first], axis=1).astype(np.int64)


def previous_occurrence(idx):
    """p[b, t] = the last s < t with idx[b, s] == idx[b, t], or -1: (B, T) -> (B, T).

    >>> previous_occurrence(np.array([[3, 1, 3, 3]])).tolist()
    [[-1, -1, 0, 2]]
    """
    B, T = idx.shape
    same = (idx[:, :, None] == idx[:, None, :]) & np.tri(T, T, -1, dtype=bool)   # (B, T, S)
    return np.where(same, np.arange(T), -1).max(axis=2)


def previous_token_score(att, queries=None):
    """Mean a[t, t - 1] over queries t >= 1 (and where ``queries`` (B, T) is True):
    att (B, nh, T, T) -> (nh,).

    >>> att = np.eye(3, k=-1)[None, None].copy(); att[..., 0, 0] = 1.0
    >>> previous_token_score(att).tolist()
    [1.0]
    """
    B, nh, T, _ = att.shape
    t = np.arange(1, T)
    a = att[:, :, t, t - 1]                                            # (B, nh, T-1)
    q = np.ones((B, T - 1), bool) if queries is None else np.asarray(queries)[:, 1:]
    return (a * q[:, None]).sum(axis=(0, 2)) / max(int(q.sum()), 1)


def induction_attention(att, idx, queries=None, offset=1):
    """Mean a[t, p(t) + offset] over the queries t with an earlier occurrence p(t) of their
    token (and where ``queries`` (B, T) is True), counting only those with p(t) + offset <= t:
    att (B, nh, T, T), idx (B, T) -> (nh,). offset 1 is the induction score; 2 scores a head
    that looks one token further, at the token after the one to predict.

    >>> idx = np.array([[0, 1, 2, 0, 1, 2]])
    >>> att = np.zeros((1, 1, 6, 6)); att[0, 0, np.arange(6), [0, 0, 0, 1, 2, 3]] = 1.0
    >>> induction_attention(att, idx).tolist(), induction_attention(att, idx, offset=2).tolist()
    ([1.0], [0.0])
    """
    p = previous_occurrence(idx)                                       # (B, T)
    valid = (p >= 0) & (p + offset <= np.arange(idx.shape[1]))
    if queries is not None:
        valid &= np.asarray(queries)
    key = np.where(valid, p + offset, 0)                               # p + offset <= t
    a = np.take_along_axis(att, key[:, None, :, None], axis=3)[..., 0]  # (B, nh, T)
    return (a * valid[:, None]).sum(axis=(0, 2)) / max(int(valid.sum()), 1)


class InductionScore(NamedTuple):
    induction: np.ndarray        # (L, nh) attention to the token after the previous occurrence,
                                 # from the queries of the second half
    previous: np.ndarray         # (L, nh) previous-token score on the same rows
    loss_first: float            # mean loss on the targets inside the first half
    loss_repeat: float           # mean loss on the targets inside the second half


def induction_score(model, rng, seq_len=None, batch_size=32, tokens=None, prefix=()):
    """Scores of every head on ``repeated_tokens`` rows (n = seq_len random tokens, then the
    same again; ``tokens``: the ids to draw from, default all; ``prefix``: ids put first, e.g.
    a beginning-of-sequence token) and the losses on the two halves.

    seq_len defaults to the longest that fits: (block_size - len(prefix)) // 2.

    >>> from minillm import GPT, GPTConfig
    >>> model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=8))
    >>> s = induction_score(model, np.random.default_rng(0))
    >>> s.induction.shape, round(s.loss_repeat, 1)                  # untrained: about ln 20
    ((2, 2), 3.0)
    """
    config = model.config
    n = (config.block_size - len(prefix)) // 2 if seq_len is None else seq_len
    idx = repeated_tokens(rng, batch_size, n, config.vocab_size if tokens is None else tokens,
                          prefix)
    logits, att = model.forward(idx, return_attention=True)
    P, T = len(prefix), idx.shape[1]
    t = np.arange(T)
    second = np.broadcast_to((t >= P + n), idx.shape)                  # queries in the 2nd half
    first_half = (t[:-1] >= P) & (t[:-1] < P + n - 1)                  # next token in 1st half
    repeat = t[:-1] >= P + n                                           # next token in 2nd half

    def loss_on(where):                                                # -1: not counted
        targets = np.where(where, idx[:, 1:], -1)
        return float(cross_entropy_forward(logits[:, :-1], targets)[0])

    return InductionScore(np.stack([induction_attention(a, idx, second) for a in att]),
                          np.stack([previous_token_score(a, second) for a in att]),
                          loss_on(first_half), loss_on(repeat))
