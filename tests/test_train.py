"""The training command: checkpoints, resume, Ctrl-C, divergence, bad checkpoints, sampling."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minillm.formats.checkpoint import load_checkpoint, save_checkpoint
from minillm.cli import main
from minillm.core.config import GPTConfig
from minillm.core.optim import OptimConfig
from minillm.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 30
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "2", "--log-interval", "5", "--sample-tokens", "0"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def run(corpus, out, max_iters, resume=False, **overrides):
    train_config = TrainConfig(data=corpus, out_dir=str(out), max_iters=max_iters, batch_size=4,
                     eval_interval=10, eval_iters=2, sample_tokens=0, resume=resume)
    model_config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.1)
    optim_config = OptimConfig(**{"warmup_iters": 5, "lr_decay_iters": 30, **overrides})
    return train(train_config, model_config, optim_config, log=lambda *a: None)


def test_resumed_run_gives_the_same_losses_as_an_uninterrupted_one(corpus, tmp_path):
    full = run(corpus, tmp_path / "a", 25).state
    run(corpus, tmp_path / "b", 12)
    resumed = run(corpus, tmp_path / "b", 25, resume=True).state
    assert len(full["history"]["train"]) == 25
    assert resumed["history"]["train"] == full["history"]["train"]   # dropout on, still exact
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(np.array_equal(a.model.params[k], b.model.params[k]) for k in a.model.params)


def test_checkpoint_holds_everything(corpus, tmp_path):
    result = run(corpus, tmp_path, 20)
    model, tokenizer = result.model, result.tokenizer
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.state["iter"] == 20 and ckpt.adam["t"] == 20
    assert ckpt.tokenizer.chars == tokenizer.chars
    assert ckpt.model.config == model.config
    assert ckpt.state["configs"]["optim"]["warmup_iters"] == 5
    assert [row[0] for row in ckpt.state["history"]["eval"]] == [0, 10, 20]
    assert all(ckpt.model.params[k].dtype == np.float32 for k in ckpt.model.params)
    assert (tmp_path / "tokenizer.json").exists()
    assert not [p for p in os.listdir(tmp_path) if "tmp" in p]     # no temporary files left


def test_training_learns(corpus, tmp_path):
    state = run(corpus, tmp_path, 60, learning_rate=1e-2, lr_decay_iters=60).state
    first, last = state["history"]["eval"][0], state["history"]["eval"][-1]
    assert last[2] < first[2] - 1.0


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(corpus, tmp_path, capsys):
    run(corpus, tmp_path, 10)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    code = main(["train", "--data", corpus, "--out-dir", str(tmp_path), "--resume",
                 "--max-iters", "30", "--learning-rate", "1e30", "--grad-clip", "0", *TINY])
    err = capsys.readouterr().err
    assert code == 1 and "the loss became" in err and "last good checkpoint" in err
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


def test_missing_checkpoint_and_data(tmp_path, capsys):
    assert main(["sample", "--ckpt", str(tmp_path / "nowhere")]) == 1
    assert "nowhere is neither a minillm checkpoint folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.txt"), *TINY]) == 1
    assert "missing.txt" in capsys.readouterr().err


def test_cli_train_then_sample(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", corpus, "--out-dir", str(out), "--max-iters", "20",
                 "--eval-interval", "10", *TINY[:-2], "--sample-tokens", "30"]) == 0
    printed = capsys.readouterr()
    assert "step 20: train loss" in printed.err and "a sample of 30 tokens" in printed.out
    assert (out / "loss.png").stat().st_size > 1000
    assert main(["sample", "--ckpt", str(out), "--prompt", "First", "--max-new-tokens", "40",
                 "--seed", "3", "--top-k", "5", "--top-p", "0.9"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("First") and len(first) == len("First") + 40 + 1
    assert main(["sample", "--ckpt", str(out), "--prompt", "First", "--max-new-tokens", "40",
                 "--seed", "3", "--top-k", "5", "--top-p", "0.9", "--no-kv-cache"]) == 0
    assert capsys.readouterr().out == first                      # cache changes nothing
    assert main(["sample", "--ckpt", str(out), "--prompt", "Zebra€", "--greedy"]) == 1
    err = capsys.readouterr().err
    assert "'Z'" in err and "'€'" in err


def test_ctrl_c_saves_and_exits_cleanly(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minillm", "train", "--data", corpus, "--out-dir", str(out),
           "--max-iters", "100000", "--eval-interval", "1000", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "tokenizer.json").exists():
            time.sleep(0.2)
        time.sleep(1.5)                                         # some iterations run
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "interrupted at iteration" in stderr and "--resume" in stdout
    ckpt = load_checkpoint(out)
    assert 0 < ckpt.state["iter"] < 100000
