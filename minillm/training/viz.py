"""Pictures: loss curves and attention maps (matplotlib).

    plot_losses(history, "loss.png")              train loss per iteration, train/val at evals
    plot_confusion(matrix, labels)                a classifier's confusion matrix, counts shown
    plot_attention(att, tokens)                   one (T, T) map with the tokens on both axes
    plot_attention_grid(att, tokens)              (nh, T, T): one map per head, a shared colorbar
    plot_health(records, "health.png")            a run's --health records (training/health.py)

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


def _tick_labels(ax, tokens, T, S, fontsize, every):
    """Tokens on both axes, every ``every``-th one (all when the cells are large enough)."""
    labels = _show_tokens(tokens)
    cols, rows = range(0, S, every), range(0, T, every)
    ax.set_xticks(cols, [labels[-S:][j] for j in cols], rotation=90, fontsize=fontsize)
    ax.set_yticks(rows, [labels[-T:][i] for i in rows], fontsize=fontsize)


def plot_attention(att, tokens=None, ax=None, title=None, cmap="viridis", fontsize=8,
                   colorbar=None, every=1):
    """att: (T, S) attention weights (row = query, column = key); tokens label the axes (every
    ``every``-th one); ``colorbar`` (default: when the map gets its own figure) explains the
    colours, 0 to 1.

    >>> fig = plot_attention(np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None], list("abc"))
    """
    plt = _pyplot()
    att = np.asarray(att)
    if att.ndim != 2:
        raise ValueError(f"plot_attention needs one (T, S) map, got shape {att.shape}; "
                         "use plot_attention_grid for several heads")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(2.2 + 0.3 * att.shape[1], 1.2 + 0.3 * att.shape[0]),
                               layout="constrained")
    image = ax.imshow(att, cmap=cmap, vmin=0.0, vmax=1.0)
    if tokens is not None:
        _tick_labels(ax, tokens, att.shape[0], att.shape[1], fontsize, every)
    ax.set_xlabel("key (attended to)", fontsize=fontsize + 1)
    ax.set_ylabel("query", fontsize=fontsize + 1)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    if colorbar or (colorbar is None and fig is not None):
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig if fig is not None else ax.figure


def plot_attention_grid(att, tokens=None, titles=None, ncols=None, cmap="viridis", size=None,
                        fontsize=None):
    """att: (n, T, S), e.g. the heads of one layer -> a grid of n maps, at most 3 a row by
    default, with one colorbar for all.

    size: inches per map (default grows with S, between 2.6 and 4.5). Tokens label the outer
    maps only; the font follows the size of a cell, and when cells are too small for a
    legible label only every k-th token is written."""
    plt = _pyplot()
    att = np.asarray(att)
    if att.ndim != 3:
        raise ValueError(f"plot_attention_grid needs (n, T, S) maps, got shape {att.shape}")
    n, T, S = att.shape
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    size = size or float(np.clip(1.2 + 0.12 * S, 2.6, 4.5))
    cell = 72.0 * 0.8 * size / S                       # points per cell (the map is ~80%)
    fontsize = fontsize or float(np.clip(0.9 * cell, 6.0, 9.0))
    every = max(1, int(np.ceil(6.0 / cell)))           # a label needs about 6 points
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 1.0, size * nrows + 0.3),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i < n:
            plot_attention(att[i], tokens, ax=ax, title=titles[i] if titles else f"head {i}",
                           cmap=cmap, fontsize=fontsize, colorbar=False, every=every)
            ax.label_outer()             # tick labels once per row and column
        else:
            ax.axis("off")
    fig.colorbar(axes.flat[0].images[0], ax=axes, shrink=min(1.0, 0.5 + 0.25 * nrows),
                 label="attention weight")
    return fig


def _by_block(records, key):
    """{label: [value per record]}: a weight statistic averaged over each block's matrices
    ("block l"), the others (wte, wpe, lm_head) on their own."""
    groups = {}
    for name in records[0]["weights"]:
        label = f"block {name.split('.')[1]}" if name.startswith("h.") else name
        groups.setdefault(label, []).append(name)
    def mean(values):                    # None: no update measured (a zero step)
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else np.nan

    return {label: [mean([r["weights"][n][key] for n in names]) for r in records]
            for label, names in groups.items()}


def plot_health(records, path=None, title="training health"):
    """records: a run's ``state["health"]`` (or health.json): one dict per evaluation with
    "iter", "layers" (per block: resid_std, attn_entropy, mlp_flat) and "weights" (per matrix:
    grad_ratio, update_ratio). Five panels, a marker at each measured iteration; the weight
    statistics are averaged over each block's matrices."""
    plt = _pyplot()
    if not records:
        raise ValueError("plot_health: no records (train with --health)")
    its = [r["iter"] for r in records]
    n_layer = len(records[0]["layers"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), layout="constrained")
    layer_panels = [("resid_std", 1.0, "residual stream std after the block"),
                    ("attn_entropy", 1.0, "mean attention entropy (nats)"),
                    ("mlp_flat", 100.0, "MLP inputs below -3 (flat GELU), %")]
    for ax, (key, scale, label) in zip(axes[0], layer_panels):
        for l in range(n_layer):
            ax.plot(its, [scale * r["layers"][l][key] for r in records], "o-", ms=3,
                    label=f"block {l}")
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", useOffset=False)
    ax = axes[1, 0]
    for label, values in _by_block(records, "grad_ratio").items():
        ax.semilogy(its, values, "o-", ms=3, label=label)
    ax.set_ylabel("std(grad) / std(weight)")
    ax = axes[1, 1]
    for label, values in _by_block(records, "update_ratio").items():
        ax.plot(its, values, "o-", ms=3, label=label)
    ax.axhline(-3.0, color="k", ls="--", lw=1.0, label="-3 (rule of thumb)")
    ax.set_ylabel("log10 std(update) / std(weight)")
    axes[1, 2].axis("off")
    for ax in list(axes[0]) + list(axes[1, :2]):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1, 2].text(0.0, 0.9, "one marker per evaluation\n(statistics of that iteration's "
                    "batch and step)\n\nweights: the mean over each block's\nmatrices "
                    "(c_attn, c_proj, c_fc, mlp.c_proj)", va="top", fontsize=9)
    fig.suptitle(title)
    if path is not None:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format=Path(path).suffix[1:] or "png")
        plt.close(fig)
    return fig
