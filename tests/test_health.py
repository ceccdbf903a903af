"""Training health (minillm/training/health.py, train --health): the statistics against direct
computations, the records of a run, health.json and health.png."""
import json
import math

import numpy as np
import pytest

from minillm import GPT, GPTConfig
from minillm.cli import main
from minillm.core.optim import AdamW
from minillm.training.health import activation_stats, after_step, before_step, weight_names

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        ) * 40


def test_activation_statistics_are_what_they_say():
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8), seed=0)
    x = np.random.default_rng(0).integers(0, 11, size=(3, 6))
    stats = activation_stats(model, x)
    _, cache = model.forward_with_cache(x)
    assert stats[0]["resid_std"] == pytest.approx(float(np.std(cache.h[1].ln_1.x)))
    assert stats[1]["resid_std"] == pytest.approx(float(np.std(cache.ln_f.x)))
    att = cache.h[0].att
    rows = [-(a[a > 0] * np.log(a[a > 0])).sum() for a in att.reshape(-1, 6)]
    assert stats[0]["attn_entropy"] == pytest.approx(float(np.mean(rows)), rel=1e-5)
    # an untrained model attends almost uniformly: row t has entropy about ln(t + 1)
    assert stats[0]["attn_entropy"] == pytest.approx(np.mean(np.log(np.arange(1, 7))), rel=1e-3)
    model.params["h.1.mlp.c_fc.bias"][:] = -10.0                  # every GELU input < -3
    assert activation_stats(model, x)[1]["mlp_flat"] == 1.0
    assert activation_stats(model, x)[0]["mlp_flat"] == 0.0


def test_a_step_record_holds_gradient_and_update_ratios():
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=0)
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 11, size=(2, 6)), rng.integers(0, 11, size=(2, 6))
    _, grads = model.loss_and_grads(x, y)
    record, before = before_step(7, model, x, grads)
    assert set(before) == set(weight_names(model.params)) and "ln_f.weight" not in before
    AdamW(model.params, lr=1e-2).step(grads)
    after_step(record, before, model.params)
    w = record["weights"]["h.0.mlp.c_fc.weight"]
    p0, p1 = before["h.0.mlp.c_fc.weight"], model.params["h.0.mlp.c_fc.weight"]
    assert w["grad_ratio"] == pytest.approx(np.std(grads["h.0.mlp.c_fc.weight"]) / np.std(p0))
    assert w["update_ratio"] == pytest.approx(math.log10(np.std(p1 - p0) / np.std(p0)))
    assert record["iter"] == 7 and len(record["layers"]) == 1
    json.dumps(record)                                            # plain numbers only


def test_train_with_health_keeps_records_and_draws_them(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "25",
                 "--eval-interval", "10", "--eval-iters", "1", "--n-layer", "2", "--n-head", "2",
                 "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                 "--sample-tokens", "0", "--health"]) == 0
    records = json.loads((out / "health.json").read_text())
    assert [r["iter"] for r in records] == [0, 10, 20]            # one per evaluation with a step
    assert len(records[0]["layers"]) == 2
    assert all(-6.0 < r["weights"]["h.1.attn.c_attn.weight"]["update_ratio"] < 0.0
               for r in records)
    assert (out / "health.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "health.png" in capsys.readouterr().out
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(corpus), "--out-dir", str(plain), "--max-iters", "3",
                 "--n-layer", "1", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
                 "--eval-iters", "1", "--sample-tokens", "0"]) == 0
    assert not (plain / "health.json").exists() and not (plain / "health.png").exists()
