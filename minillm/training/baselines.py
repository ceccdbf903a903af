"""Baselines a classifier must beat: the majority class, and logistic regression on a bag of
words (or of character n-grams), its gradient written by hand.

    x       = features(text)                 (F,) 1 where n-gram f occurs in the text, else 0
    logits  = X @ W + b                      X: (N, F), W: (F, K), b: (K,)
    loss    = mean_n CE(logits_n, y_n) + (lam / 2) sum(W * W)
    dlogits = (softmax(logits) - onehot(y)) / N
    dW      = X^T @ dlogits + lam W,    db = sum_n dlogits_n

X is mostly zeros (a sentence holds a dozen of 20,000 n-grams), so it is kept as the positions
of its ones (``SparseBinary``) and ``sparse_logreg_forward`` / ``_backward`` compute the same
products from them (tested equal to the dense ``logreg_forward`` / ``_backward``). Training is
full batch, AdamW from zeros (the loss is convex; the L2 term is in the loss, not decoupled).

Shape legend: N texts, F features (n-grams), K classes.
"""
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..core.fields import check_fields
from ..core.layers import cross_entropy_backward, cross_entropy_forward
from ..core.optim import AdamW

WORD = re.compile(r"[a-z0-9']+")


def majority_predict(train_labels, n):
    """The most frequent training label (ties: the smaller), ``n`` times: the accuracy to beat.

    >>> majority_predict(np.array([1, 0, 1]), 2)
    array([1, 1])
    """
    return np.full(n, np.bincount(train_labels).argmax(), dtype=np.int64)


def ngrams(text, kind="word", n=(1, 2)):
    """The set of n-grams of a text (lower-cased): word n-grams joined by spaces, or character
    n-grams of " text " (with a space at each end).

    >>> sorted(ngrams("Not good.", "word", (1, 2)))
    ['good', 'not', 'not good']
    >>> sorted(ngrams("ab", "char", (2,)))
    [' a', 'ab', 'b ']
    """
    text = text.lower()
    units = WORD.findall(text) if kind == "word" else list(" " + " ".join(text.split()) + " ")
    sep = " " if kind == "word" else ""
    return {sep.join(units[i:i + k]) for k in n for i in range(len(units) - k + 1)}


class Vocabulary(NamedTuple):
    index: dict                  # n-gram -> column of X
    kind: str                    # "word" or "char"
    n: tuple                     # the n-gram sizes


def build_vocabulary(texts, kind="word", n=(1, 2), min_count=1):
    """Columns for every n-gram found in at least ``min_count`` of the (training) texts."""
    counts = {}
    for text in texts:
        for g in ngrams(text, kind, n):
            counts[g] = counts.get(g, 0) + 1
    kept = sorted(g for g, c in counts.items() if c >= min_count)
    return Vocabulary({g: i for i, g in enumerate(kept)}, kind, tuple(n))


class SparseBinary(NamedTuple):
    """A 0/1 matrix (N, F) given by the positions of its ones (each (row, col) once)."""
    rows: np.ndarray             # (nnz,) int64
    cols: np.ndarray             # (nnz,) int64
    shape: tuple                 # (N, F)

    def dense(self, dtype=np.float32):
        X = np.zeros(self.shape, dtype=dtype)
        X[self.rows, self.cols] = 1.0
        return X


def featurize(texts, vocab):
    """X (N, F) as a SparseBinary; n-grams outside the vocabulary are ignored.

    >>> v = build_vocabulary(["good food", "bad"], "word", (1,))
    >>> featurize(["bad food", "tasty"], v).dense()
    array([[1., 1., 0.],
           [0., 0., 0.]], dtype=float32)
    """
    rows, cols = [], []
    for i, text in enumerate(texts):
        found = sorted(vocab.index[g] for g in ngrams(text, vocab.kind, vocab.n)
                       if g in vocab.index)
        rows += [i] * len(found)
        cols += found
    return SparseBinary(np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64),
                        (len(texts), len(vocab.index)))


def logreg_forward(X, W, b):
    """logits = X @ W + b, the literal formula. X: (N, F); W: (F, K); b: (K,) -> (N, K)."""
    return X @ W + b, (X, W)


def logreg_backward(dlogits, cache):
    """dlogits: (N, K) -> dX: (N, F), dW: (F, K), db: (K,)."""
    X, W = cache
    return dlogits @ W.T, X.T @ dlogits, dlogits.sum(axis=0)


def sparse_logreg_forward(X, W, b):
    """The same logits for a SparseBinary X: logits[n] = b + the sum of the rows W[f] of the
    n-grams f that text n holds (one bincount per class)."""
    N, K = X.shape[0], W.shape[1]
    logits = np.stack([np.bincount(X.rows, weights=W[X.cols, k], minlength=N)
                       for k in range(K)], axis=1).astype(W.dtype)              # (N, K)
    return logits + b, (X, W)


def sparse_logreg_backward(dlogits, cache):
    """dlogits: (N, K) -> dW: (F, K), db: (K,) (no dX: the features are data)."""
    X, W = cache
    F, K = W.shape
    dW = np.stack([np.bincount(X.cols, weights=dlogits[X.rows, k], minlength=F)
                   for k in range(K)], axis=1).astype(W.dtype)                  # (F, K)
    return dW, dlogits.sum(axis=0)


def logreg_loss_and_grads(X, y, W, b, lam):
    """(loss, dW, db): mean cross-entropy + (lam / 2) ||W||^2 and its gradients; X dense
    (N, F) or a SparseBinary."""
    if isinstance(X, SparseBinary):
        logits, cache = sparse_logreg_forward(X, W, b)
    else:
        logits, cache = logreg_forward(X, W, b)
    loss, ce_cache = cross_entropy_forward(logits, y)
    dlogits = cross_entropy_backward(1.0, ce_cache)
    if isinstance(X, SparseBinary):
        dW, db = sparse_logreg_backward(dlogits, cache)
    else:
        dW, db = logreg_backward(dlogits, cache)[1:]
    return loss + 0.5 * lam * float((W * W).sum()), dW + lam * W, db


@dataclass
class LogRegConfig:
    """Features and training of the bag-of-n-grams logistic regression."""
    kind: str = field(default="word", metadata={
        "help": "word or char n-grams", "choices": ("word", "char")})
    n: tuple = field(default=(1, 2), metadata={"help": "the n-gram sizes"})
    min_count: int = field(default=1, metadata={
        "help": "keep n-grams found in at least this many training texts", "min": 1})
    lam: float = field(default=3e-5, metadata={"help": "L2 strength on W", "min": 0.0})
    iters: int = field(default=300, metadata={"help": "full-batch AdamW steps", "min": 1})
    lr: float = field(default=0.05, metadata={"help": "AdamW learning rate", "above": 0.0})

    def __post_init__(self):
        check_fields(self)


def train_logreg(texts, labels, config=None, n_classes=None):
    """(vocab, W, b) trained full batch from zeros on the training ``texts`` and ``labels``.

    >>> vocab, W, b = train_logreg(["good", "bad", "very good", "so bad"], np.array([1, 0, 1, 0]))
    >>> logreg_predict(["good food", "bad food"], vocab, W, b)
    array([1, 0])
    """
    config = LogRegConfig() if config is None else config
    K = int(labels.max()) + 1 if n_classes is None else n_classes
    vocab = build_vocabulary(texts, config.kind, config.n, config.min_count)
    X = featurize(texts, vocab)
    params = {"W": np.zeros((X.shape[1], K), np.float32), "b": np.zeros(K, np.float32)}
    optimizer = AdamW(params, lr=config.lr, weight_decay=0.0)
    for _ in range(config.iters):
        _, dW, db = logreg_loss_and_grads(X, labels, params["W"], params["b"], config.lam)
        optimizer.step({"W": dW, "b": db})
    return vocab, params["W"], params["b"]


def logreg_predict(texts, vocab, W, b):
    """The predicted class (N,) of each text."""
    return sparse_logreg_forward(featurize(texts, vocab), W, b)[0].argmax(axis=1)
