"""Numerical gradients by centered differences, and the relative error used to compare them.

    df/dx_i ~= (f(x + h e_i) - f(x - h e_i)) / (2 h)        error O(h^2)

Run in float64: with h = 1e-5 the truncation error (~h^2) and the rounding error (~eps/h) are
both around 1e-10, far below the 1e-6 bound the tests assert.

>>> x = np.array([1.0, 2.0])
>>> numerical_grad(lambda: float((x ** 2).sum()), x)
array([2., 4.])
"""
import numpy as np


def numerical_grad(f, x, h=1e-5):
    """Gradient of the scalar function ``f()`` with respect to the array ``x``, which ``f``
    reads; each element of x is nudged in place and restored afterwards.

    The loop over elements is fine here: gradient checks use tiny arrays."""
    if x.dtype != np.float64:
        raise ValueError(f"gradient checks need float64 arrays, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)      # views: writing flat writes x
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2.0 * h)
    return grad


def rel_error(a, b):
    """Relative error of a gradient: max |a - b| / max(max |a|, max |b|).

    The error is measured against the scale of the whole gradient, not element by element: an
    element that is ~0 (a softmax's gradient along the all-ones direction, say) has only
    rounding noise left in it, and dividing that noise by itself would report an error of 1.
    A gradient that is exactly zero everywhere must be checked with an absolute bound instead."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(np.abs(a).max(), np.abs(b).max())
    return 0.0 if scale == 0.0 else float(np.abs(a - b).max() / scale)


def check_grad(f, x, analytic, h=1e-5):
    """Relative error between ``analytic`` and the numerical gradient of ``f`` at ``x``."""
    return rel_error(analytic, numerical_grad(f, x, h))


def dot_loss(out, weights):
    """A scalar ``sum(out * weights)`` whose gradient with respect to ``out`` is ``weights``:
    the standard way to check a layer's backward with a random upstream gradient."""
    return float(np.sum(out * weights))


def layer_grad_errors(forward, backward, inputs, rng, names=None, h=1e-5):
    """Check a layer's backward against numerical gradients, the way every test here does it.

    forward(*inputs) -> (out, cache); backward(dout, cache) -> one gradient per input, in order
    (a single array if there is one input). The upstream gradient dout is random (from ``rng``),
    the scalar checked is ``sum(out * dout)``. Returns {name: relative error} (names default to
    "0", "1", ...); shapes that differ raise a ValueError.

    >>> square = lambda x: (x * x, x)
    >>> errors = layer_grad_errors(square, lambda dout, x: 2 * x * dout, [np.ones(3)],
    ...                            np.random.default_rng(0), names=["x"])
    >>> errors["x"] < 1e-8
    True
    """
    out, cache = forward(*inputs)
    dout = rng.normal(size=out.shape)
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    names = [str(i) for i in range(len(inputs))] if names is None else list(names)
    if len(grads) != len(inputs):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")
    errors = {}
    for name, x, g in zip(names, inputs, grads):
        if g.shape != x.shape:
            raise ValueError(f"gradient {name} has shape {g.shape}, its input {x.shape}")
        errors.update(grad_errors(lambda: dot_loss(forward(*inputs)[0], dout), {name: x},
                                  {name: g}, h))
    return errors


def grad_errors(f, params, grads, h=1e-5, config=None):
    """Compare every named gradient with its numerical value; returns {name: relative error}.

    The keys' part of each ``c_attn.bias`` has a gradient that is exactly zero (q.b_k is the
    same for every key of a row, and a softmax ignores a constant shift), so it is reported
    apart, as the largest absolute value of either gradient, under ``name + " (keys)"``. Where
    the keys sit comes from ``config`` (a GPTConfig: columns nh hs .. (nh + nkv) hs); without
    one, GPT-2's middle third. With rotary positions the bias is rotated differently at every
    key, the shift is no longer constant and its gradient not zero: nothing is set apart.
    """
    keys = None
    if config is None:
        keys = "thirds"
    elif config.pos_encoding != "rope":
        q, k, _ = config.qkv_sizes
        keys = slice(q, q + k)
    errors = {}
    for name, p in params.items():
        num = numerical_grad(f, p, h)
        ana = grads[name]
        if name.endswith("c_attn.bias") and keys is not None:
            part = slice(p.size // 3, 2 * p.size // 3) if keys == "thirds" else keys
            rest = np.ones(p.size, dtype=bool)
            rest[part] = False
            errors[name + " (keys)"] = float(max(np.abs(ana[part]).max(), np.abs(num[part]).max()))
            ana, num = ana[rest], num[rest]
        errors[name] = rel_error(ana, num)
    return errors
