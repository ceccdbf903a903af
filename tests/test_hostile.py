"""The command line as a hostile user tries it: every case ends with a clear message naming the
problem and the option or file, a non-zero exit where it must fail, no traceback, nothing lost.

The cases, by group (the module tests cover each mechanism on its own: test_fields.py, test_files.py,
test_safetensors.py, test_checkpoint.py, test_sampling.py, test_train.py, test_data.py, ...):

    BAD_OPTIONS   an option outside its range or type: refused where it is parsed (exit 2),
                  the message names the option
    BAD_RUNS      bad files, folders and settings: exit 1, one line naming the file or option
    processes     two runs into one folder (the second refuses, naming the folder and the
                  process); SIGTERM and SIGKILL at random moments (always a loadable checkpoint,
                  no stray temporary file after the next start); SIGTERM before the first save
                  (nothing written); `sample | head` (ends quietly); a full standard output;
                  prompt errors before anything is printed
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minillm import GPT, BPETokenizer, CharTokenizer, GPTConfig
from minillm.cli import main
from minillm.core.optim import OptimConfig
from minillm.formats.checkpoint import load_checkpoint, save_checkpoint
from minillm.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 30
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--eval-iters", "2", "--log-interval", "5", "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a corpus, a finished tiny run, and a few bad files."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    train(TrainConfig(data=str(root / "corpus.txt"), out_dir=str(root / "run"), max_iters=10,
                      batch_size=4, eval_interval=5, eval_iters=2, sample_tokens=0),
          GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), OptimConfig(),
          log=lambda *a: None)
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("café".encode("latin-1") * 100)
    (root / "short.txt").write_text("abc", encoding="utf-8")
    (root / "nested.safetensors").write_bytes((100_000).to_bytes(8, "little") + b"[" * 100_000)
    (root / "garbage.safetensors").write_bytes(os.urandom(64))
    os.mkfifo(root / "fifo")
    model = GPT(GPTConfig(vocab_size=3, block_size=8, n_layer=1, n_head=1, n_embd=4))
    save_checkpoint(root / "char", model, CharTokenizer.from_text("abc"))
    return root


def cli(args, capsys):
    """Run the command line in this process: (exit code, stdout, stderr); an exception that
    escapes main (a traceback for the user) fails the test."""
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- options, checked when parsed
BAD_OPTIONS = [   # command, option, value, what the message says after "argument OPTION: "
    ("train", "--max-iters", "0", "must be an integer >= 1, got 0"),
    ("train", "--max-iters", "-1", "must be an integer >= 1, got -1"),
    ("train", "--max-iters", "2.5", "must be an integer >= 1, got '2.5'"),
    ("train", "--max-iters", "ten", "must be an integer >= 1, got 'ten'"),
    ("train", "--batch-size", "0", "must be an integer >= 1, got 0"),
    ("train", "--eval-interval", "0", "must be an integer >= 1, got 0"),
    ("train", "--eval-iters", "0", "must be an integer >= 1, got 0"),
    ("train", "--log-interval", "0", "must be an integer >= 1, got 0"),
    ("train", "--seed", "-1", "must be an integer >= 0, got -1"),
    ("train", "--sample-tokens", "-5", "must be an integer >= 0, got -5"),
    ("train", "--bpe-vocab-size", "10", "must be an integer >= 257, got 10"),
    ("train", "--learning-rate", "-1", "must be a number > 0, got -1.0"),
    ("train", "--learning-rate", "0", "must be a number > 0, got 0.0"),
    ("train", "--learning-rate", "nan", "must be a number > 0, got nan"),
    ("train", "--learning-rate", "inf", "must be a number > 0, got inf"),
    ("train", "--min-lr", "-1", "must be a number >= 0, got -1.0"),
    ("train", "--warmup-iters", "-1", "must be an integer >= 0, got -1"),
    ("train", "--lr-decay-iters", "-1", "must be an integer >= 0, got -1"),
    ("train", "--beta1", "1.0", "must be a number in [0, 1), got 1.0"),
    ("train", "--beta1", "-0.1", "must be a number in [0, 1), got -0.1"),
    ("train", "--beta2", "1", "must be a number in [0, 1), got 1.0"),
    ("train", "--eps", "0", "must be a number > 0, got 0.0"),
    ("train", "--weight-decay", "-1", "must be a number >= 0, got -1.0"),
    ("train", "--grad-clip", "-1", "must be a number >= 0, got -1.0"),
    ("train", "--dropout", "1", "must be a number in [0, 1), got 1.0"),
    ("train", "--n-layer", "0", "must be an integer >= 1, got 0"),
    ("train", "--n-head", "0", "must be an integer >= 1, got 0"),
    ("train", "--n-embd", "-8", "must be an integer >= 1, got -8"),
    ("train", "--block-size", "0", "must be an integer >= 1, got 0"),
    ("train", "--out-dir", "", "must be a non-empty string, got ''"),
    ("train", "--data", "", "must be a non-empty string, got ''"),
    ("sample", "--max-new-tokens", "-1", "must be an integer >= 0, got -1"),
    ("sample", "--temperature", "nan", "must be a number >= 0, got nan"),
    ("sample", "--temperature", "inf", "must be a number >= 0, got inf"),
    ("sample", "--temperature", "-1", "must be a number >= 0, got -1.0"),
    ("sample", "--top-k", "0", "must be an integer >= 1, got 0"),
    ("sample", "--top-k", "2.5", "must be an integer >= 1, got '2.5'"),
    ("sample", "--top-p", "0", "must be a number in (0, 1], got 0.0"),
    ("sample", "--top-p", "1.5", "must be a number in (0, 1], got 1.5"),
    ("sample", "--top-p", "nan", "must be a number in (0, 1], got nan"),
    ("sample", "--seed", "-1", "must be an integer >= 0, got -1"),
    ("sample", "--prompt", "", "must be a non-empty string, got ''"),
    ("finetune", "--eval-interval", "0", "must be an integer >= 1, got 0"),
    ("finetune", "--beta1", "1", "must be a number in [0, 1), got 1.0"),
    ("finetune", "--lora-alpha", "-2", "must be a number > 0, got -2.0"),
    ("export", "--out-dir", "", "must be a non-empty string, got ''"),
]


@pytest.mark.parametrize("command, option, value, message", BAD_OPTIONS,
                         ids=[f"{c[0]} {c[1]} {c[2]!r}" for c in BAD_OPTIONS])
def test_a_bad_option_is_refused_where_it_is_parsed(command, option, value, message, capsys):
    code, out, err = cli([command, f"{option}={value}"], capsys)
    assert code == 2 and out == ""
    assert err.strip().endswith(f"error: argument {option}: {message}"), err


# ---------------------------------------------------------------- runs that must fail, clearly
def T(*args):
    return ["train", "--data", "{w}/corpus.txt", "--out-dir", "{w}/new", "--max-iters", "3",
            *TINY, *args]


BAD_RUNS = [   # id, arguments ({w}: the work folder), what the message says
    ("data missing", T("--data", "{w}/missing.txt"), "the file {w}/missing.txt does not exist"),
    ("data a folder", T("--data", "{w}"), "{w} is a directory"),
    ("data /dev/zero", T("--data", "/dev/zero"), "/dev/zero is not a regular file"),
    ("data a fifo", T("--data", "{w}/fifo"), "{w}/fifo is not a regular file"),
    ("data empty", T("--data", "{w}/empty.txt"), "{w}/empty.txt is empty"),
    ("data not UTF-8", T("--data", "{w}/latin1.txt"), "{w}/latin1.txt is not valid UTF-8"),
    ("data too short", T("--data", "{w}/short.txt"), "{w}/short.txt (3 characters) is too short"),
    ("out-dir a file", T("--out-dir", "{w}/corpus.txt"), "{w}/corpus.txt is a file, not a folder"),
    ("out-dir under a file", T("--out-dir", "{w}/corpus.txt/run"),
     "creating the folder {w}/corpus.txt/run: Not a directory"),
    ("out-dir holds a run", T("--out-dir", "{w}/run"),
     "{w}/run already holds a run (checkpoint.safetensors, best.safetensors); continue it with "
     "--resume, replace it with --overwrite"),
    ("resume nothing", T("--resume"), "no checkpoint at {w}/new/checkpoint.safetensors"),
    ("resume and overwrite", T("--resume", "--overwrite"), "give --resume"),
    ("resume other data", T("--resume", "--out-dir", "{w}/run", "--data", "{w}/short.txt",
                            "--max-iters", "20"),
     "--data is not the text this run was trained on: the run was trained on {w}/corpus.txt"),
    ("resume finished", T("--resume", "--out-dir", "{w}/run", "--max-iters", "10"),
     "is already at iteration 10; give --max-iters larger than 10"),
    ("model too large", T("--n-embd", "65536", "--n-head", "1"),
     "the model is too large for this machine: training it needs about"),
    ("context too large", T("--block-size", "100000"), "the model is too large for this machine"),
    ("heads do not divide", T("--n-embd", "30", "--n-head", "4"),
     "n_embd (30) must be divisible by n_head (4)"),
    ("odd sinusoidal", T("--pos-encoding", "sinusoidal", "--n-embd", "15", "--n-head", "3"),
     "sinusoidal positions need an even n_embd"),
    ("warmup past decay", T("--warmup-iters", "50", "--lr-decay-iters", "10"),
     "warmup_iters (50) must be at most lr_decay_iters (10)"),
    ("sample no model", ["sample"], "give exactly one of --ckpt DIR"),
    ("sample nothing there", ["sample", "--ckpt", "{w}/nowhere"],
     "{w}/nowhere is neither a minillm checkpoint folder"),
    ("sample a text file", ["sample", "--ckpt", "{w}/corpus.txt"],
     "invalid safetensors file '{w}/corpus.txt'"),
    ("sample random bytes", ["sample", "--ckpt", "{w}/garbage.safetensors"],
     "invalid safetensors file '{w}/garbage.safetensors'"),
    ("sample nested header", ["sample", "--ckpt", "{w}/nested.safetensors"],
     "JSON nested too deeply"),
    ("sample unknown chars", ["sample", "--ckpt", "{w}/run", "--prompt", "Zebra€"],
     "'Z' (U+005A)"),
    ("sample prompt too long", ["sample", "--ckpt", "{w}/run", "--prompt", "a" * 17],
     "the prompt is 17 tokens long, longer than the model's context of block_size=16"),
    ("sample tiny temperature", ["sample", "--ckpt", "{w}/run", "--temperature", "1e-320"],
     "is so small that logits / temperature overflow"),
    ("finetune into its source", ["finetune", "--init-from", "{w}/run", "--data",
                                  "{w}/corpus.txt", "--out-dir", "{w}/run"],
     "--out-dir {w}/run is the folder of --init-from"),
    ("finetune into a run", ["finetune", "--init-from", "{w}/run", "--data", "{w}/corpus.txt",
                             "--out-dir", "{w}/char"],
     "{w}/char already holds a run (checkpoint.safetensors); give --overwrite"),
    ("export no args", ["export"], "give --ckpt DIR (a minillm run) and --out-dir DIR"),
    ("export a char model", ["export", "--ckpt", "{w}/char", "--out-dir", "{w}/hf"],
     "needs a byte-level BPE tokenizer"),
]


@pytest.mark.parametrize("args, message", [pytest.param(*c[1:], id=c[0]) for c in BAD_RUNS])
def test_a_bad_run_fails_with_one_clear_line_and_changes_nothing(work, args, message, capsys):
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if not p.is_dir()}
    args = [a.replace("{w}", str(work)) for a in args]
    code, out, err = cli(args, capsys)
    assert code == 1, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"minillm {args[0]}: error: ") and "Traceback" not in err
    assert message.replace("{w}", str(work)) in last, last
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if not p.is_dir()} == before


# ---------------------------------------------------------------- processes and signals
def command(*args):
    return [sys.executable, "-m", "minillm", *args]


def start(args, **kwargs):
    return subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(path, proc, timeout=60.0):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_two_runs_into_one_folder_the_second_refuses(work, tmp_path):
    out = tmp_path / "run"
    long = ["train", "--data", str(work / "corpus.txt"), "--out-dir", str(out),
            "--max-iters", "1000000", "--eval-interval", "50", *TINY]
    first = start(long)
    try:
        wait_for(out / "checkpoint.safetensors", first)
        for args in (long, [*long, "--resume"], [*long, "--overwrite"],
                     ["finetune", "--init-from", str(work / "run"), "--data",
                      str(work / "corpus.txt"), "--out-dir", str(out), "--overwrite"]):
            second = subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True,
                                    timeout=60)
            assert second.returncode == 1, second.stderr
            assert second.stderr.strip().endswith(
                f"error: {out} is in use by another minillm run (process {first.pid}); wait "
                "for it to finish (or stop it), or give another folder"), second.stderr
        first.send_signal(signal.SIGTERM)
        stdout, stderr = first.communicate(timeout=60)
        assert first.returncode == 0 and "Traceback" not in stderr
    finally:
        first.kill()
        first.wait()
    it = load_checkpoint(out).state["iter"]
    resumed = subprocess.run(command(*long[:5], "--max-iters", str(it + 3), *long[7:],
                                     "--resume"), cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert resumed.returncode == 0, resumed.stderr         # the first run's lock died with it
    assert load_checkpoint(out).state["iter"] == it + 3


def test_killed_at_random_moments_the_folder_always_holds_a_loadable_checkpoint(work, tmp_path):
    """SIGTERM and SIGKILL, 10 times at seeded random moments of runs that save at every
    iteration (so some kills land in the middle of a write)."""
    out = tmp_path / "run"
    args = ["train", "--data", str(work / "corpus.txt"), "--out-dir", str(out),
            "--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "16",
            "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "1",
            "--log-interval", "1000", "--sample-tokens", "0"]
    first = subprocess.run(command(*args, "--max-iters", "2"), cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    rng = np.random.default_rng(14)
    iterations, strays = [], 0
    for _ in range(10):
        proc = start([*args, "--max-iters", "1000000", "--resume"])
        time.sleep(float(rng.uniform(0.6, 1.6)))
        kill = signal.SIGTERM if rng.random() < 0.5 else signal.SIGKILL
        proc.send_signal(kill)
        _, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode in ((0, 130, -signal.SIGTERM) if kill == signal.SIGTERM
                                   else (-signal.SIGKILL,)), (kill, proc.returncode, stderr)
        iterations.append(load_checkpoint(out).state["iter"])       # always loadable
        load_checkpoint(out / "best.safetensors")
        strays += len([p for p in os.listdir(out) if p.endswith(".tmp")])
    assert iterations == sorted(iterations) and iterations[-1] > 2  # runs did progress
    final = subprocess.run(command(*args, "--max-iters", str(iterations[-1] + 1), "--resume"),
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    assert sorted(os.listdir(out)) == ["best.safetensors", "checkpoint.safetensors", "loss.png",
                                       "tokenizer.json"]       # no .tmp, no .lock left


def test_sigterm_before_the_first_save_writes_nothing(work, tmp_path):
    out = tmp_path / "run"
    proc = start(["train", "--tokenizer", "bpe", "--bpe-vocab-size", "50000", "--out-dir",
                  str(out), *TINY])                       # BPE training on Shakespeare: seconds
    try:
        wait_for(out / ".lock", proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and stderr.strip().endswith("interrupted"), stderr
    assert not out.exists()


def test_sample_into_a_pipe_closed_early_ends_quietly(work):
    proc = start(["sample", "--ckpt", str(work / "run"), "--max-new-tokens", "100000"])
    assert len(proc.stdout.read(20)) == 20
    proc.stdout.close()                                   # `| head -c 20`
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "error" not in stderr


def test_a_full_standard_output_is_one_clear_error(work):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command("sample", "--ckpt", str(work / "run"), "--max-new-tokens",
                                      "20"),
                              cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == ("minillm sample: error: writing the sample to "
                                                    "the standard output: No space left on device")
    assert "Exception ignored" not in proc.stderr


def test_prompt_errors_come_before_anything_is_printed(work):
    for prompt in ("a" * 17, "Zebra"):
        proc = subprocess.run(command("sample", "--ckpt", str(work / "run"), "--prompt", prompt),
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert "Traceback" not in proc.stderr


def test_save_checkpoint_refuses_a_tokenizer_larger_than_the_model(tmp_path):
    model = GPT(GPTConfig(vocab_size=256, block_size=8, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(ValueError, match="the tokenizer has 257 tokens, the model only 256"):
        save_checkpoint(tmp_path, model, BPETokenizer(special_tokens={"<|endoftext|>": 256}))
    assert list(tmp_path.iterdir()) == []
