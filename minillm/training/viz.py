"""Pictures: loss curves and attention maps (matplotlib).

    plot_losses(history, "loss.png")              train loss per iteration, train/val at evals
    plot_confusion(matrix, labels)                a classifier's confusion matrix, counts shown
    plot_attention(att, tokens)                   one (T, T) map with the tokens on both axes
    plot_attention_grid(att, tokens)              (nh, T, T): one map per head, side by side

Each function returns the matplotlib Figure, so notebooks show it and scripts can save it.
"""
from pathlib import Path

import numpy as np

from ..formats.files import atomic_open


def _pyplot():
    import matplotlib.pyplot as plt      # imported on first use: minillm itself needs only NumPy
    return plt


def plot_losses(history, path=None, title="minillm training", labels=None):
    """history: {"train": [loss per iteration], "eval": [[iter, train, val], ...]}, and after a
    fine-tuning run with a watched text also {"eval_extra": {name: [[iter, loss], ...]}}, drawn
    dashed; ``labels`` renames those in the legend, e.g. {"watch": "Shakespeare val"}. An extra
    whose name ends in "accuracy" (a classifier's) is drawn on a second axis, on the right."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    train = np.asarray(history.get("train", []), dtype=float)
    if train.size:
        ax.plot(np.arange(1, train.size + 1), train, color="0.75", lw=0.8, label="train (batch)")
    ev = np.asarray(history.get("eval", []), dtype=float).reshape(-1, 3)
    if len(ev):
        ax.plot(ev[:, 0], ev[:, 1], "o-", label="train (eval)")
        ax.plot(ev[:, 0], ev[:, 2], "o-", label="val (eval)")
    handles = []
    for name, points in history.get("eval_extra", {}).items():
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        if name.endswith("accuracy"):
            right = ax.twinx()
            handles += right.plot(pts[:, 0], pts[:, 1], "D-", color="tab:green",
                                  label=(labels or {}).get(name, name.replace("_", " ")))
            right.set_ylabel("accuracy")
            right.set_ylim(0.0, 1.0)
            continue
        label = (labels or {}).get(name, f"{name} text") + " (eval)"
        ax.plot(pts[:, 0], pts[:, 1], "s--", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, loc="best", fontsize=8)
    fig.tight_layout()
    if path is not None:
        with atomic_open(path, "wb") as f:                       # never half a picture
            fig.savefig(f, dpi=110, format=Path(path).suffix[1:] or "png")
        plt.close(fig)
    return fig


def plot_confusion(matrix, labels, path=None, title="confusion matrix", ax=None):
    """matrix: (K, K) counts, rows the true class, columns the predicted one; each cell shows its
    count, and its colour the share of its row (the recall on the diagonal).

    >>> fig = plot_confusion(np.array([[5, 1], [2, 4]]), ["no", "yes"])
    """
    plt = _pyplot()
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = None
    if ax is None:
        size = 1.6 + 0.7 * len(labels)
        fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:,}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig = fig if fig is not None else ax.figure
    if path is not None:
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format=Path(path).suffix[1:] or "png", bbox_inches="tight")
        plt.close(fig)
    return fig


def _show_tokens(tokens):
    """Visible labels: a space as '␣', a newline as '↵'; ids as numbers."""
    return [t.replace(" ", "\u2423").replace("\n", "\u21b5") if isinstance(t, str) else str(t)
            for t in tokens]


def plot_attention(att, tokens=None, ax=None, title=None, cmap="viridis", fontsize=8):
    """att: (T, S) attention weights (row = query, column = key); tokens label the axes.

    >>> fig = plot_attention(np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None], list("abc"))
    """
    plt = _pyplot()
    att = np.asarray(att)
    if att.ndim != 2:
        raise ValueError(f"plot_attention needs one (T, S) map, got shape {att.shape}; "
                         "use plot_attention_grid for several heads")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 + 0.3 * att.shape[1], 1.2 + 0.3 * att.shape[0]))
    ax.imshow(att, cmap=cmap, vmin=0.0, vmax=1.0)
    if tokens is not None:
        labels = _show_tokens(tokens)
        ax.set_xticks(range(att.shape[1]), labels[-att.shape[1]:], rotation=90, fontsize=fontsize)
        ax.set_yticks(range(att.shape[0]), labels[-att.shape[0]:], fontsize=fontsize)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=9)
    return fig if fig is not None else ax.figure


def plot_attention_grid(att, tokens=None, titles=None, ncols=None, cmap="viridis", size=None,
                        fontsize=8):
    """att: (n, T, S), e.g. the heads of one layer -> a grid of n maps.

    size: inches per map (default grows with S, at most 4.5); tokens label the outer maps only."""
    plt = _pyplot()
    att = np.asarray(att)
    if att.ndim != 3:
        raise ValueError(f"plot_attention_grid needs (n, T, S) maps, got shape {att.shape}")
    n = att.shape[0]
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    size = size or min(0.9 + 0.22 * att.shape[-1], 4.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            plot_attention(att[i], tokens, ax=ax, title=titles[i] if titles else f"head {i}",
                           cmap=cmap, fontsize=fontsize)
            ax.label_outer()             # tick labels once per row and column
        else:
            ax.axis("off")
    fig.tight_layout()
    return fig
