"""The baselines (minillm/training/baselines.py): the logistic regression's gradient checked in
float64, its sparse form equal to the dense one, n-grams, training that separates, majority."""
import numpy as np

from minillm.core.gradcheck import grad_errors, layer_grad_errors
from minillm.training.baselines import (LogRegConfig, SparseBinary, build_vocabulary, featurize,
                                        logreg_backward, logreg_forward, logreg_loss_and_grads,
                                        logreg_predict, majority_predict, ngrams,
                                        sparse_logreg_backward, sparse_logreg_forward,
                                        train_logreg)


def test_logreg_layer_gradient_check():
    rng = np.random.default_rng(0)
    X, W, b = rng.normal(size=(5, 7)), rng.normal(size=(7, 3)), rng.normal(size=3)
    errors = layer_grad_errors(logreg_forward, logreg_backward, [X, W, b], rng,
                               names=["X", "W", "b"])
    assert max(errors.values()) < 1e-8, errors


def test_loss_with_l2_gradient_check():
    rng = np.random.default_rng(1)
    X = (rng.random((6, 9)) < 0.3).astype(np.float64)
    y = rng.integers(0, 3, size=6)
    params = {"W": rng.normal(size=(9, 3)), "b": rng.normal(size=3)}
    _, dW, db = logreg_loss_and_grads(X, y, params["W"], params["b"], lam=0.1)
    errors = grad_errors(lambda: logreg_loss_and_grads(X, y, params["W"], params["b"], 0.1)[0],
                         params, {"W": dW, "b": db})
    assert max(errors.values()) < 1e-8, errors


def test_the_sparse_form_equals_the_dense_one():
    rng = np.random.default_rng(2)
    dense = (rng.random((8, 11)) < 0.3)
    rows, cols = np.nonzero(dense)
    X = SparseBinary(rows, cols, dense.shape)
    assert np.array_equal(X.dense(np.float64), dense)
    W, b = rng.normal(size=(11, 2)), rng.normal(size=2)
    logits, cache = sparse_logreg_forward(X, W, b)
    expected, dense_cache = logreg_forward(X.dense(np.float64), W, b)
    assert np.allclose(logits, expected, rtol=1e-12)
    dlogits = rng.normal(size=logits.shape)
    dW, db = sparse_logreg_backward(dlogits, cache)
    assert all(np.allclose(a, e, rtol=1e-12) for a, e in
               zip((dW, db), logreg_backward(dlogits, dense_cache)[1:]))


def test_ngrams_and_features():
    assert ngrams("Not bad at all", "word", (2,)) == {"not bad", "bad at", "at all"}
    vocab = build_vocabulary(["a b", "a c", "a"], "word", (1,), min_count=2)
    assert list(vocab.index) == ["a"]
    assert featurize(["c a", "d"], vocab).dense().tolist() == [[1.0], [0.0]]


def test_training_separates_and_majority_is_the_floor():
    texts = [f"{w} food" for w in ("good", "great", "bad", "awful") * 10]
    labels = np.array([1, 1, 0, 0] * 10)
    vocab, W, b = train_logreg(texts, labels, LogRegConfig(iters=50))
    assert (logreg_predict(["great food", "awful food"], vocab, W, b) == [1, 0]).all()
    assert majority_predict(np.array([0, 1, 1]), 3).tolist() == [1, 1, 1]
