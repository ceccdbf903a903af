"""The training command: checkpoints, resume, Ctrl-C, divergence, bad checkpoints, sampling."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import errno
import re

from minillm import GPT
from minillm.formats import files
from minillm.formats.checkpoint import load_checkpoint, save_checkpoint
from minillm.cli import main
from minillm.core.config import GPTConfig
from minillm.core.optim import AdamW, OptimConfig
from minillm.training import train as train_module
from minillm.training.train import (TrainConfig, TrainingDiverged, encode_splits, new_state,
                                    train, train_loop)

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


def run(corpus, out, max_iters, resume=False, run_options=None, **overrides):
    train_config = TrainConfig(data=corpus, out_dir=str(out), max_iters=max_iters, batch_size=4,
                               eval_interval=10, eval_iters=2, sample_tokens=0, resume=resume,
                               **(run_options or {}))
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
    assert sorted(os.listdir(tmp_path)) == ["best.safetensors", "checkpoint.safetensors",
                                            "corpus.txt", "tokenizer.json"]   # no lock, no .tmp


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
    assert code == 1 and "the loss became" in err and "saved at iteration 10, is kept" in err
    assert "lower --learning-rate" in err and "good" not in err
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
        while time.time() < deadline and not (out / "checkpoint.safetensors").exists():
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


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


class Quiet:
    def update(self, *a):
        pass

    def message(self, *a):
        pass


# ---------------------------------------------------------------- what is saved is what is said
def test_last_and_best_are_saved_under_their_names_and_reported_as_they_are(corpus, tmp_path,
                                                                              capsys):
    assert main(["train", "--data", corpus, "--out-dir", str(tmp_path), "--max-iters", "40",
                 "--eval-interval", "10", "--learning-rate", "0.05", "--warmup-iters", "0",
                 "--lr-decay-iters", "40", *TINY]) == 0
    out = capsys.readouterr().out
    last, best = load_checkpoint(tmp_path), load_checkpoint(tmp_path / "best.safetensors")
    evals = last.state["history"]["eval"]
    best_row = min(evals, key=lambda row: row[2])
    assert best.state["iter"] == best_row[0] == last.state["best_iter"]
    assert best.state["best_val"] == best_row[2] and best.adam is None
    assert f"iteration 40, val loss {evals[-1][2]:.4f}" in out
    assert f"the lowest val loss, {best_row[2]:.4f} at iteration {best_row[0]}" in out
    # the best file holds the model that had that loss (recomputed on the same batches)
    splits = encode_splits(TEXT, best.tokenizer)
    rng = np.random.default_rng((1337, best_row[0]))
    losses = train_module.estimate_loss(best.model, splits, block_size=16, batch_size=4,
                                        eval_iters=2, rng=rng)
    assert losses["val"] == pytest.approx(best_row[2], rel=1e-5)
    assert main(["sample", "--ckpt", str(tmp_path), "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint.safetensors: the last state of the run (iteration 40" in err
    if best_row[0] != 40:
        assert f"the best model (val loss {best_row[2]:.4f}, iteration {best_row[0]})" in err
    assert main(["sample", "--ckpt", str(tmp_path / "best.safetensors"),
                 "--max-new-tokens", "3"]) == 0
    assert "best.safetensors: the run's best model" in capsys.readouterr().err


# ---------------------------------------------------------------- one run per folder
def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint.safetensors, "
                                         r"best.safetensors\); continue it with --resume, "
                                         r"replace it with --overwrite"):
        run(corpus, tmp_path, 10)
    assert snapshot(tmp_path) == before
    result = run(corpus, tmp_path, 10, run_options={"overwrite": True, "seed": 5})
    assert load_checkpoint(tmp_path).state["configs"]["train"]["seed"] == 5
    assert result.state["iter"] == 10
    with pytest.raises(ValueError, match="--resume .* or --overwrite .*not both"):
        TrainConfig(resume=True, overwrite=True)


def test_a_run_that_fails_before_its_first_save_leaves_the_folder_as_it_was(corpus, tmp_path):
    run(corpus, tmp_path / "old", 10)
    before = snapshot(tmp_path / "old")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not text")
    for options in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError, match="bad.txt is not valid UTF-8"):
            train(TrainConfig(data=str(bad), out_dir=str(tmp_path / "old"), **options),
                  GPTConfig(), OptimConfig(), log=lambda *a: None)
        assert snapshot(tmp_path / "old") == before             # tokenizer.json too
    with pytest.raises(ValueError, match="is too short"):
        train(TrainConfig(data=str(tmp_path / "old" / "tokenizer.json"),
                          out_dir=str(tmp_path / "new")), GPTConfig(), OptimConfig(),
              log=lambda *a: None)
    assert not (tmp_path / "new").exists()                      # not even an empty folder


def test_temporary_files_of_interrupted_writes_are_removed_at_the_next_start(corpus, tmp_path):
    run(corpus, tmp_path, 10)
    stray = tmp_path / f".checkpoint.safetensors.{'ab' * 16}.tmp"
    stray.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"
    keep.write_text("mine")
    run(corpus, tmp_path, 20, resume=True)
    assert not stray.exists() and keep.exists()


# ---------------------------------------------------------------- resuming
def test_resume_on_other_data_is_refused_unless_allowed(corpus, tmp_path, capsys):
    run(corpus, tmp_path, 10)
    other = tmp_path / "other.txt"
    other.write_text(TEXT[::-1], encoding="utf-8")              # same characters
    args = ["train", "--resume", "--out-dir", str(tmp_path), "--max-iters", "20", *TINY]
    before = snapshot(tmp_path)
    assert main([*args, "--data", str(other)]) == 1
    err = capsys.readouterr().err
    assert "--data is not the text this run was trained on" in err
    assert "corpus.txt (4,440 bytes" in err and "other.txt (4,440 bytes" in err
    assert "--allow-new-data" in err and snapshot(tmp_path) == before
    assert main([*args, "--data", str(other), "--allow-new-data"]) == 0
    assert "note: continuing on other data than before" in capsys.readouterr().out
    assert load_checkpoint(tmp_path).state["data"]["source"] == str(other)


def test_resume_of_a_finished_run_or_without_a_checkpoint(corpus, tmp_path):
    run(corpus, tmp_path / "a", 10)
    with pytest.raises(ValueError, match="already at iteration 10; give --max-iters larger"):
        run(corpus, tmp_path / "a", 10, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        run(corpus, tmp_path / "b", 10, resume=True)


def test_a_checkpoint_without_a_training_state_cannot_be_resumed(corpus, tmp_path):
    ckpt = run(corpus, tmp_path / "a", 10)
    save_checkpoint(tmp_path / "b", ckpt.model, ckpt.tokenizer)
    with pytest.raises(ValueError, match="cannot be resumed: its state has no iter, best_val, "
                                         "history, rng"):
        run(corpus, tmp_path / "b", 20, resume=True)


# ---------------------------------------------------------------- memory, divergence, disk
def test_a_model_too_large_is_refused_before_allocating(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "available_memory", lambda: 10 * 2**20)      # 10 MiB
    with pytest.raises(ValueError, match=r"too large for this machine: training it needs about "
                                         r"[\d.]+ GiB \([\d,]+ parameters x 4 copies.*but 0.0 GiB"):
        train(TrainConfig(data=corpus, out_dir=str(tmp_path / "run")), GPTConfig(n_embd=512),
              OptimConfig(), log=lambda *a: None)
    assert not (tmp_path / "run").exists()
    need, n = train_module.training_memory(GPTConfig(n_embd=65536, n_head=1), 12)
    assert n > 5e10 and need > 4 * 4 * n                        # far beyond any laptop


def test_nan_from_the_weights_is_not_blamed_on_the_learning_rate(corpus, tmp_path):
    model = GPT(GPTConfig(vocab_size=33, n_layer=1, n_head=2, n_embd=16, block_size=16))
    model.params["h.0.mlp.c_fc.weight"][0, 0] = np.nan
    ids = np.arange(1000) % 33
    splits = {"train": ids, "val": ids}
    config = TrainConfig(out_dir=str(tmp_path), max_iters=5, batch_size=2, eval_interval=5,
                         eval_iters=1)
    saved = []
    with pytest.raises(TrainingDiverged) as e:
        train_loop(model, AdamW(model.params), splits, config, OptimConfig(), new_state(0),
                   saved.append, progress=Quiet())
    message = str(e.value)
    assert "the train loss became nan at iteration 0" in message and "nothing was saved" in message
    assert "the learning rate is not the cause" in message and not saved


def test_disk_full_names_the_file_and_keeps_the_last_checkpoint(corpus, tmp_path, monkeypatch,
                                                                capsys):
    run(corpus, tmp_path, 10)
    before = snapshot(tmp_path)

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: FullDisk(real_open(*a, **k)),
                        raising=False)
    assert main(["train", "--resume", "--data", corpus, "--out-dir", str(tmp_path),
                 "--max-iters", "30", "--eval-interval", "20", *TINY]) == 1
    err = capsys.readouterr().err
    assert re.search(f"error: writing {tmp_path}/(best|checkpoint).safetensors: No space left "
                     "on device", err)
    assert "Traceback" not in err and snapshot(tmp_path) == before   # nothing half-written


def test_a_corpus_without_a_newline_trains_and_samples_at_the_end(tmp_path, capsys):
    corpus = tmp_path / "abc.txt"
    corpus.write_text("abcdefgh" * 200, encoding="utf-8")
    assert main(["train", "--data", str(corpus), "--out-dir", str(tmp_path / "run"),
                 "--max-iters", "5", *TINY[:-2], "--sample-tokens", "20"]) == 0
    out = capsys.readouterr().out
    sample = out.split("(temperature 0.8) ---\n")[1]
    assert sample.startswith("a") and len(sample) == 1 + 20 + 1


def test_sigterm_saves_and_exits_cleanly(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minillm", "train", "--data", corpus, "--out-dir", str(out),
           "--max-iters", "100000", "--eval-interval", "1000", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "checkpoint.safetensors").exists():
            time.sleep(0.1)
        time.sleep(1.0)                                         # some iterations run
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM: stopping after this iteration" in stderr and "--resume" in stdout
    assert 0 < load_checkpoint(out).state["iter"] < 100000
    assert sorted(os.listdir(out)) == ["best.safetensors", "checkpoint.safetensors",
                                       "tokenizer.json"]


def test_the_loop_takes_other_batches_and_measurements(tmp_path):
    """A task that is not language modelling brings next_batch and measure; extra numbers are
    printed and kept in history["eval_extra"], and the best is still chosen by val loss."""
    model = GPT(GPTConfig(vocab_size=7, n_layer=1, n_head=1, n_embd=8, block_size=4))
    drawn, messages = [], []

    def next_batch(rng):
        drawn.append(1)
        x = rng.integers(0, 7, size=(2, 4))
        return x, x

    def measure(it):
        return {"train": 1.0, "val": 2.0 - it / 10, "val_accuracy": it / 10}

    class Messages(Quiet):
        def message(self, text):
            messages.append(text)

    config = TrainConfig(out_dir=str(tmp_path), max_iters=4, batch_size=2, eval_interval=2,
                         eval_iters=1)
    state = train_loop(model, AdamW(model.params), {}, config, OptimConfig(), new_state(0),
                       lambda s: None, progress=Messages(), next_batch=next_batch,
                       measure=measure)
    assert len(drawn) == 4
    assert state["history"]["eval_extra"]["val_accuracy"] == [[0, 0.0], [2, 0.2], [4, 0.4]]
    assert state["best_iter"] == 4
    assert "step 2: train loss 1.0000, val loss 1.8000, val accuracy 0.2000" in messages
