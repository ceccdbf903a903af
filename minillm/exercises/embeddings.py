"""Exercises of notebook 02: token and position embeddings (minillm/core/layers.py).

    embedding_backward            embedding_backward(dout, cache)    scatter-add, repeated ids
    position_embedding_backward   position_embedding_backward(dout, cache)   rows start..start+T
    sinusoidal_encoding           sinusoidal_encoding(T, C, dtype)   the fixed sin/cos table

Shape legend: B batch, T time, C channels, V vocabulary size.

>>> from minillm.exercises import check
>>> check("embedding_backward", layers.embedding_backward, verbose=False).passed
True
"""
import numpy as np

from ..core import layers
from .registry import Case, exercise, mistake


# ----------------------------------------------------------------------------------------------
# The embedding's backward
# ----------------------------------------------------------------------------------------------

def _embedding_cases(rng):
    def case(label, idx, V, C):
        return Case(label, dict(idx=np.array(idx), weight=rng.normal(size=(V, C))))
    return [case("repeated ids, an unused row", [[1, 3, 1, 1], [0, 3, 2, 1]], 5, 4),
            case("T = 1, B = 1", [[2]], 4, 3),
            case("every id the same", [[2, 2, 2], [2, 2, 2]], 3, 2),
            case("random ids", rng.integers(0, 7, size=(3, 5)), 7, 6)]


exercise("embedding_backward", "the lookup's gradient: scatter-add dout into the rows used, "
         "repeated ids adding up", reference=layers.embedding_backward,
         forward=layers.embedding_forward, returns=("dweight",), cases=_embedding_cases)


@mistake("embedding_backward", "a repeated id must receive the sum of its gradients: "
                               "dweight[idx] += dout keeps only one of them (NumPy buffers the "
                               "write); use np.add.at(dweight, idx, dout)")
def _(dout, cache):
    C = dout.shape[-1]
    dweight = np.zeros((cache.vocab_size, C), dtype=dout.dtype)
    dweight[cache.idx.reshape(-1)] += dout.reshape(-1, C)
    return dweight


@mistake("embedding_backward", "dweight has one row per token of the vocabulary, "
                               "cache.vocab_size, not max(idx) + 1: unused rows get zeros")
def _(dout, cache):
    C = dout.shape[-1]
    dweight = np.zeros((int(cache.idx.max()) + 1, C), dtype=dout.dtype)
    np.add.at(dweight, cache.idx.reshape(-1), dout.reshape(-1, C))
    return dweight


# ----------------------------------------------------------------------------------------------
# Positions
# ----------------------------------------------------------------------------------------------

def token_plus_position(tok, wpe, start=0):
    """tok (B, T, C) + rows start..start+T-1 of wpe: the sum the model makes, whose gradient
    dout (B, T, C) position_embedding_backward receives. -> (out, PositionCache)"""
    pos, cache = layers.position_embedding_forward(wpe, tok.shape[1], start)
    return tok + pos, cache


def _position_cases(rng):
    def case(label, B, T, C, block_size, start=0):
        return Case(label, dict(tok=rng.normal(size=(B, T, C)),
                                wpe=rng.normal(size=(block_size, C)), start=start))
    return [case("(B, T, C), start 0", 2, 3, 4, 5),
            case("start = 2 (generating after 2 cached positions)", 3, 2, 3, 6, start=2),
            case("T = 1, B = 1", 1, 1, 4, 3),
            case("T = block_size", 2, 4, 2, 4)]


exercise("position_embedding_backward", "the gradient of the position rows: summed over the "
         "batch, zero for the rows not used", reference=layers.position_embedding_backward,
         forward=token_plus_position, returns=("dwpe",), cases=_position_cases)


def _dwpe(dout, cache, rows, start=None):
    B, T, C = dout.shape
    dwpe = np.zeros((cache.block_size, C), dtype=dout.dtype)
    start = cache.start if start is None else start
    dwpe[start:start + T] = rows
    return dwpe


@mistake("position_embedding_backward", "every sequence of the batch used the same rows: sum "
                                        "dout over the batch axis")
def _(dout, cache):
    return _dwpe(dout, cache, dout[0])


@mistake("position_embedding_backward", "a sum, not a mean: each sequence adds its own "
                                        "gradient")
def _(dout, cache):
    return _dwpe(dout, cache, dout.mean(axis=0))


@mistake("position_embedding_backward", "the rows used were start .. start + T - 1 "
                                        "(cache.start), not 0 .. T - 1")
def _(dout, cache):
    return _dwpe(dout, cache, dout.sum(axis=0), start=0)


# ----------------------------------------------------------------------------------------------
# Sinusoidal positions
# ----------------------------------------------------------------------------------------------

def _sinusoidal_cases(rng):
    return [Case("T = 6, C = 8", dict(T=6, C=8)),
            Case("T = 1", dict(T=1, C=4)),
            Case("C = 2: one frequency", dict(T=16, C=2)),
            Case("dtype float64, long", dict(T=50, C=6, dtype=np.float64))]


exercise("sinusoidal_encoding", "the fixed positions: sin and cos of pos / 10000^(2i / C), "
         "interleaved", reference=layers.sinusoidal_encoding, returns=("pe",),
         cases=_sinusoidal_cases, bound=1e-6, float32=False)


def _pe(T, C, dtype, exponent=2.0, swap=False, halves=False, first=0):
    pos = np.arange(first, first + T, dtype=np.float64)[:, None]
    inv_freq = 10000.0 ** (-exponent * np.arange(C // 2) / C)
    s, c = np.sin(pos * inv_freq), np.cos(pos * inv_freq)
    if swap:
        s, c = c, s
    if halves:
        return np.concatenate([s, c], axis=1).astype(dtype)
    pe = np.empty((T, C))
    pe[:, 0::2], pe[:, 1::2] = s, c
    return pe.astype(dtype)


@mistake("sinusoidal_encoding", "sin goes in the even columns 2i, cos in the odd ones 2i + 1")
def _(T, C, dtype=np.float32):
    return _pe(T, C, dtype, swap=True)


@mistake("sinusoidal_encoding", "the exponent is 2i / C for the pair i (columns 2i and 2i + 1), "
                                "not i / C")
def _(T, C, dtype=np.float32):
    return _pe(T, C, dtype, exponent=1.0)


@mistake("sinusoidal_encoding", "sin and cos are interleaved (columns 0::2 and 1::2), not "
                                "two halves side by side")
def _(T, C, dtype=np.float32):
    return _pe(T, C, dtype, halves=True)


@mistake("sinusoidal_encoding", "positions count from 0: the first row is sin 0 = 0, cos 0 = 1")
def _(T, C, dtype=np.float32):
    return _pe(T, C, dtype, first=1)
