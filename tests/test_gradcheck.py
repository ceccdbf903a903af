"""The gradient-check tools themselves: numerical gradients, relative error, layer checks."""
import numpy as np
import pytest

from minillm.core.gradcheck import layer_grad_errors, numerical_grad, rel_error


def test_numerical_grad_of_known_function():
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_grad(lambda: float(np.sum(np.sin(x) * x)), x)
    assert rel_error(g, np.cos(x) * x + np.sin(x)) < 1e-9
    with pytest.raises(ValueError, match="float64"):
        numerical_grad(lambda: 0.0, x.astype(np.float32))


def test_rel_error_is_relative_to_the_whole_tensor():
    assert rel_error(np.array([1.0, 1e-12]), np.array([1.0, 0.0])) < 1e-11
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.zeros(2), np.zeros(3))


def test_layer_grad_errors_catches_a_wrong_backward(rng):
    forward = lambda x: (np.sin(x), x)                           # noqa: E731
    good = layer_grad_errors(forward, lambda d, x: d * np.cos(x), [rng.normal(size=5)], rng)
    bad = layer_grad_errors(forward, lambda d, x: d * np.sin(x), [rng.normal(size=5)], rng)
    assert good["0"] < 1e-9 and bad["0"] > 0.1
    with pytest.raises(ValueError, match="shape"):
        layer_grad_errors(forward, lambda d, x: d[:2], [rng.normal(size=5)], rng)
