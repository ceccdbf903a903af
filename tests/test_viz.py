"""Plotting helpers draw what they are given and reject what they cannot draw."""
import numpy as np
import pytest

pytest.importorskip("matplotlib")
from minillm.training.viz import (plot_attention, plot_attention_grid, plot_health,  # noqa: E402
                                 plot_losses)


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
    maps = [ax for ax in grid.axes if ax.get_label() != "<colorbar>"]
    assert sum(ax.has_data() for ax in maps) == 5 and len(maps) == 6    # 3 a row: 2 rows
    assert [ax.get_ylabel() for ax in grid.axes if ax.get_label() == "<colorbar>"] == \
        ["attention weight"]                                           # one colorbar for all
    with pytest.raises(ValueError, match="one"):
        plot_attention(np.stack([att] * 2))
    with pytest.raises(ValueError, match="n, T, S"):
        plot_attention_grid(att)


def test_long_maps_write_every_kth_token():
    T = 64
    att = np.tril(np.ones((T, T)))
    att /= att.sum(-1, keepdims=True)
    tokens = [chr(97 + i % 26) for i in range(T)]
    ax = plot_attention_grid(np.stack([att] * 2), tokens).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert 8 <= len(labels) < T                                      # thinned, still many
    assert labels == [tokens[int(t)] for t in ax.get_yticks()]       # each at its own row


def test_plot_health_draws_records(tmp_path):
    records = [{"iter": it, "layers": [{"resid_std": 1.0 + it, "attn_entropy": 2.0,
                                        "mlp_flat": 0.01}],
                "weights": {"wte.weight": {"grad_ratio": 0.1, "update_ratio": -3.0},
                            "h.0.attn.c_attn.weight": {"grad_ratio": 0.2, "update_ratio": None}}}
               for it in (0, 10)]
    plot_health(records, tmp_path / "health.png")
    assert (tmp_path / "health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--health"):
        plot_health([])
