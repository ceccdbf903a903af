"""What a model is measured by: the loss on a text, and a classifier's accuracy.

A language model on a text of N + 1 tokens predicts each of the last N from the ones before:

    loss        = -(1/N) sum_t ln p(x_t | x_<t)        mean cross-entropy, nats per token
    perplexity  = exp(loss)                             as uncertain as a uniform choice among it
    bits/token  = loss / ln 2
    bits/char   = bits/token for a character model; bits/byte for BPE: total bits / bytes of the
                  predicted tokens (comparable across tokenizers)

The text is cut into windows of block_size + 1 tokens that overlap by one, so every token after
the first is predicted exactly once, from the tokens before it in its window (a sliding window
would give each token more context and cost block_size times more; this is the simple way).

A classifier on N texts, with the confusion matrix M (rows: true class, columns: predicted):

    accuracy     = trace(M) / N
    precision_k  = M[k, k] / sum_i M[i, k]    of the texts predicted k, the share that are k
    recall_k     = M[k, k] / sum_j M[k, j]    of the texts that are k, the share found

Shape legend: N texts, K classes, T time, V vocabulary.
"""
import math

import numpy as np

from ..core.layers import cross_entropy_forward
from ..tokenizers import CharTokenizer


def text_metrics(model, tokenizer, text, batch_size=32):
    """{"tokens", "loss", "perplexity", "bits_per_token", and "bits_per_char" (character
    model) or "bits_per_byte" (BPE)} of ``model`` on ``text`` (see the module's doc).

    >>> from minillm import GPT, GPTConfig, CharTokenizer
    >>> tok = CharTokenizer.from_text("abcd")
    >>> m = text_metrics(GPT(GPTConfig(vocab_size=4, block_size=4, n_layer=1, n_head=1,
    ...                                n_embd=4)), tok, "abcdabcdab")
    >>> m["tokens"], round(m["perplexity"], 1)        # an untrained model: about uniform
    (9, 4.0)
    """
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if len(ids) < 2:
        raise ValueError(f"the text has {len(ids)} token(s); measuring a loss needs at least 2")
    T, n = model.config.block_size, len(ids) - 1
    starts = np.arange(0, n, T)                                      # one window each
    total = 0.0
    for s in range(0, len(starts), batch_size):
        batch = starts[s:s + batch_size]
        x = np.zeros((len(batch), T), dtype=np.int64)                # (B, T)
        y = np.full((len(batch), T), -1, dtype=np.int64)             # -1: nothing to predict
        for row, start in enumerate(batch):        # a loop over windows: padding the last one
            window = ids[start:start + T + 1]
            x[row, :len(window) - 1], y[row, :len(window) - 1] = window[:-1], window[1:]
        loss, cache = cross_entropy_forward(model.forward(x), y)
        total += loss * cache.n                                       # nats summed
    loss = total / n
    out = {"tokens": int(n), "loss": loss, "perplexity": math.exp(loss),
           "bits_per_token": loss / math.log(2.0)}
    if isinstance(tokenizer, CharTokenizer):
        out["bits_per_char"] = out["bits_per_token"]
    else:
        sizes = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)])
        out["bits_per_byte"] = total / math.log(2.0) / max(int(sizes[ids[1:]].sum()), 1)
    return out


def text_report(metrics):
    """The lines printed for ``text_metrics``."""
    unit = "bits per character" if "bits_per_char" in metrics else "bits per byte"
    per = metrics.get("bits_per_char", metrics.get("bits_per_byte"))
    return (f"tokens predicted: {metrics['tokens']:,}\n"
            f"mean loss: {metrics['loss']:.4f} nats per token\n"
            f"perplexity: {metrics['perplexity']:.3f}\n"
            f"bits per token: {metrics['bits_per_token']:.4f}\n"
            f"{unit}: {per:.4f}")



def confusion_matrix(labels, predicted, n_classes):
    """M (K, K) int: M[i, j] = texts of class i predicted as j.

    >>> confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2)
    array([[1, 1],
           [0, 1]])
    """
    return np.bincount(labels * n_classes + predicted,
                       minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def precision_recall(matrix):
    """(precision (K,), recall (K,)) of a confusion matrix; 0 where nothing was predicted (or
    present) for a class."""
    hits = np.diag(matrix).astype(np.float64)
    predicted, present = matrix.sum(axis=0), matrix.sum(axis=1)
    return (np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0),
            np.divide(hits, present, out=np.zeros_like(hits), where=present > 0))


def classification_metrics(logits, labels, names):
    """{"accuracy", "confusion" (K x K list), "precision", "recall" (K lists), "labels",
    "n"}: everything reported about a classifier on one part."""
    matrix = confusion_matrix(labels, logits.argmax(axis=1), len(names))
    precision, recall = precision_recall(matrix)
    return {"n": int(len(labels)), "accuracy": float(np.trace(matrix) / max(len(labels), 1)),
            "labels": list(names), "confusion": matrix.tolist(), "precision": precision.tolist(),
            "recall": recall.tolist()}


def metrics_report(metrics, what="test"):
    """The lines printed for a metrics dict: accuracy, per-class precision and recall, and the
    confusion matrix (rows: true class, columns: predicted)."""
    names = metrics["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [f"{what} accuracy: {metrics['accuracy']:.4f} ({metrics['n']:,} texts)",
             f"  {'class':<{width}} {'precision':>9} {'recall':>7}"]
    for name, p, r in zip(names, metrics["precision"], metrics["recall"]):
        lines.append(f"  {name:<{width}} {p:9.3f} {r:7.3f}")
    lines.append("  confusion (rows: true, columns: predicted)")
    lines.append(f"  {'':<{width}} " + " ".join(f"{n[:8]:>8}" for n in names))
    for name, row in zip(names, metrics["confusion"]):
        lines.append(f"  {name:<{width}} " + " ".join(f"{v:>8,}" for v in row))
    return "\n".join(lines)
