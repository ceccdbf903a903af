"""Plotting helpers draw what they are given and reject what they cannot draw."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from minillm.training.viz import plot_attention, plot_attention_grid, plot_losses  # noqa: E402


def test_plot_losses_writes_a_png(tmp_path):
    history = {"train": list(np.linspace(4, 2, 50)), "eval": [[0, 4.1, 4.2], [50, 2.0, 2.1]]}
    plot_losses(history, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_maps_label_tokens_and_check_shapes():
    att = np.tril(np.ones((4, 4)))
    att /= att.sum(-1, keepdims=True)
    fig = plot_attention(att, ["a", " ", "b", "\n"])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["a", "\u2423", "b", "\u21b5"]
    grid = plot_attention_grid(np.stack([att] * 5), list("abcd"))
    assert sum(ax.has_data() for ax in grid.axes) == 5
    with pytest.raises(ValueError, match="one"):
        plot_attention(np.stack([att] * 2))
    with pytest.raises(ValueError, match="n, T, S"):
        plot_attention_grid(att)
