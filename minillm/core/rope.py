"""Rotary position embedding (RoPE, Su et al. 2021) in the convention of Hugging Face's Llama.

Positions are not added to the tokens: each query and each key is turned by an angle that grows
with its position. A head's hs channels are split into two halves; channel i is paired with
channel i + hs/2, and pair i at position t turns by the angle t * w_i:

    w_i = theta^(-2i / hs),  i = 0 .. hs/2 - 1          (theta = rope_theta, 10000 by default)
    cos[t] = cos(t * [w, w]),  sin[t] = sin(t * [w, w])   tables (T, hs): each angle twice
    rotate_half([x1, x2]) = [-x2, x1]                     x1, x2 the two halves
    rope(x)[t] = x[t] * cos[t] + rotate_half(x[t]) * sin[t]

For one pair (a, b) = (x_i, x_{i+hs/2}) that is (a cos - b sin, b cos + a sin): the rotation of
the plane by t * w_i, the same rotation that shifts a sinusoidal code (notebook 02, "a shift is
a rotation"). Rotations compose by adding angles and R(m)^T = R(-m), so a query at position m and
a key at position n score

    rope(q, m) . rope(k, n) = (R(m) q) . (R(n) k) = q . R(n - m) k

which depends on the positions only through their distance n - m. Values are not rotated.
(Meta's original code pairs channels 2i and 2i + 1 instead; Hugging Face's checkpoints already
have the q/k weight rows in the rotate_half order, so they load with no permutation.)

Shape legend: B batch, nh heads, T time, hs head size (even).
"""
from typing import NamedTuple

import numpy as np


def rope_tables(T, hs, theta=10000.0, start=0, dtype=np.float32):
    """The cos and sin tables (T, hs) of positions start .. start + T - 1.

    Computed in float64 and then rounded to ``dtype``, so float32 tables are exact to float32
    even at large positions.

    >>> cos, sin = rope_tables(3, 4, dtype=np.float64)
    >>> cos.shape, cos[0], sin[1].round(4)
    ((3, 4), array([1., 1., 1., 1.]), array([0.8415, 0.01  , 0.8415, 0.01  ]))
    """
    if hs % 2:
        raise ValueError(f"rotary positions need an even head size, got {hs}")
    inv_freq = theta ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)  # (hs/2,) the w_i
    pos = np.arange(start, start + T, dtype=np.float64)                # (T,)
    angles = np.outer(pos, inv_freq)                                   # (T, hs/2)
    angles = np.concatenate([angles, angles], axis=-1)                 # (T, hs)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last axis (x1, x2 its two halves).

    >>> rotate_half(np.array([1.0, 2.0, 3.0, 4.0]))
    array([-3., -4.,  1.,  2.])
    """
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


class RoPECache(NamedTuple):
    cos: np.ndarray              # (T, hs)
    sin: np.ndarray              # (T, hs)


def rope_forward(x, cos, sin):
    """out = x * cos + rotate_half(x) * sin: every channel pair (i, i + hs/2) turned by its angle.

    x: (..., T, hs); cos, sin: (T, hs) from ``rope_tables`` -> out: (..., T, hs). The map is
    linear in x, so the cache is just the two tables.

    >>> cos, sin = rope_tables(2, 2, dtype=np.float64)
    >>> out, _ = rope_forward(np.ones((1, 2, 2)), cos, sin)   # position 1 turns (1, 1) by 1 rad
    >>> out[0].round(4)
    array([[ 1.    ,  1.    ],
           [-0.3012,  1.3818]])
    """
    return x * cos + rotate_half(x) * sin, RoPECache(cos, sin)


def rope_backward(dout, cache):
    """dout: (..., T, hs) -> dx: (..., T, hs), the inverse rotation of dout.

    out = R x with R orthogonal (a rotation per position and channel pair), so
    dx = R^T dout = R^-1 dout: the same formula with the angle negated, that is with -sin.
    """
    cos, sin = cache
    return dout * cos - rotate_half(dout) * sin
