"""The training loop: batches, AdamW steps, evaluation, checkpoints, a live progress line.

One iteration:
    x, y   = get_batch(train, block_size, batch_size, rng)     (B, T) each, y = x shifted by one
    loss, grads = model.loss_and_grads(x, y)                   forward + hand-written backward
    clip_grad_norm(grads, grad_clip)                           global norm <= grad_clip
    optimizer.step(grads, lr=lr_schedule(it, ...))             AdamW, warmup + cosine

Every ``eval_interval`` iterations the mean loss over ``eval_iters`` batches of each split is
measured and the run is saved (minillm/formats/checkpoint.py): checkpoint.safetensors is the last
state (also saved on Ctrl-C, on SIGTERM and at the end), best.safetensors the model at the lowest
validation loss. A run that is stopped and resumed (``--resume``) draws the same batches and
gives the same losses as an uninterrupted one: the checkpoint carries the generator's state, and
evaluation batches come from their own generator seeded by (seed, iteration).

Nothing lost: a run holds its folder (``lock_folder``: a second run into it is refused), refuses
a folder that already holds a run unless told to resume or overwrite it, checks that a resumed
run gets the data it was trained on, and refuses a model too large for the machine's memory
before allocating it. Until the first save (the evaluation at iteration 0) nothing is written.
"""
import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.config import param_shapes
from ..core.fields import check_fields
from ..core.model import GPT
from ..core.optim import AdamW, clip_grad_norm, lr_schedule
from ..formats.checkpoint import (BEST, CHECKPOINT, TOKENIZER, load_checkpoint, run_files,
                                  save_checkpoint)
from ..formats.files import atomic_write_text, lock_folder
from ..tokenizers import BPETokenizer, CharTokenizer
from . import health as health_stats
from .data import DATASETS, get_batch, load_text, split
from .parallel import (DataParallel, grad_accum_field, kept_targets, one_blas_thread,
                       weighted_sum, workers_field)

TOKENIZERS = ("char", "bpe")


@dataclass
class TrainConfig:
    """What to train on, for how long, and where to save (one CLI flag per field)."""
    data: str = field(default=None, metadata={
        "help": "a UTF-8 text file or a dataset name (default: shakespeare, which ships with "
                "minillm)"})
    out_dir: str = field(default="out", metadata={"help": "checkpoint folder"})
    tokenizer: str = field(default="char", metadata={
        "help": "char (one token per character) or bpe (byte-level BPE trained on the text)",
        "choices": TOKENIZERS})
    bpe_vocab_size: int = field(default=1024, metadata={
        "help": "tokens of the BPE tokenizer (256 bytes + merges + <|endoftext|>)", "min": 257})
    max_iters: int = field(default=2000, metadata={"help": "training iterations", "min": 1})
    batch_size: int = field(default=12, metadata={"help": "sequences per batch", "min": 1})
    eval_interval: int = field(default=250, metadata={
        "help": "evaluate (and save) every this many iterations", "min": 1})
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation", "min": 1})
    log_interval: int = field(default=10, metadata={
        "help": "progress update every this many iterations", "min": 1})
    seed: int = field(default=1337, metadata={
        "help": "seed of initialisation, batches and dropout", "min": 0})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in out_dir"})
    overwrite: bool = field(default=False, metadata={
        "help": "start a new run in an out_dir that holds one (its files are replaced as the new "
                "run saves)"})
    allow_new_data: bool = field(default=False, metadata={
        "help": "with --resume: continue on a text other than the run's (the change is "
                "reported)"})
    sample_tokens: int = field(default=300, metadata={
        "help": "tokens sampled at the end", "min": 0})
    workers: int = workers_field()
    grad_accum_steps: int = grad_accum_field()
    health: bool = field(default=False, metadata={
        "help": "at each evaluation, record per-layer statistics of activations, gradients and "
                "update-to-weight ratios (health.json in out_dir, drawn as health.png)"})

    def __post_init__(self):
        check_fields(self)
        if self.resume and self.overwrite:
            raise ValueError("give --resume (continue the run in out_dir) or --overwrite "
                             "(replace it), not both")


@dataclass
class TrainResult:
    """What ``train`` returns."""
    model: GPT
    tokenizer: object       # CharTokenizer or BPETokenizer
    state: dict             # "iter", "best_val", "history" (loss curves), "rng", ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current iteration (and save);
    a second one interrupts at once, keeping the last checkpoint on disk."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.previous = {}

    def __enter__(self):
        try:
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handler)
        except ValueError:            # not the main thread: leave the signals alone
            pass
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this iteration and saving ({name} again to quit now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)


class Progress:
    """One status line, redrawn in place on a terminal (a line every log_interval otherwise)."""

    def __init__(self, total, tokens_per_iter, log_interval, stream=None):
        self.total, self.tokens, self.every = total, tokens_per_iter, log_interval
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.times = []

    def update(self, it, loss, lr, dt):
        self.times.append(dt)
        if (it + 1) % self.every and it + 1 != self.total:
            return
        ms = 1000.0 * float(np.median(self.times[-50:]))
        eta = (self.total - it - 1) * ms / 1000.0
        speed = f"{self.tokens / ms * 1000.0:,.0f} tok/s | " if self.tokens else ""
        line = (f"iter {it + 1:>{len(str(self.total))}}/{self.total} | loss {loss:.4f} | "
                f"lr {lr:.2e} | {ms:.1f} ms/it | {speed}"
                f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text):
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()


def rng_state(rng):
    """A Generator's state as JSON-able data (PCG64 keeps two big integers)."""
    return rng.bit_generator.state


def rng_from_state(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def new_state(seed):
    """The run state of a fresh run: iteration 0, no history, a generator seeded by ``seed``."""
    return {"iter": 0, "best_val": float("inf"), "best_iter": None,
            "history": {"train": [], "eval": []}, "rng": rng_state(np.random.default_rng(seed))}


def estimate_loss(model, splits, *, block_size, batch_size, eval_iters, rng):
    """Mean loss over eval_iters random batches of each split (evaluation mode, no dropout)."""
    return {name: float(np.mean([model.loss(*get_batch(data, block_size, batch_size, rng))
                                 for _ in range(eval_iters)]))
            for name, data in splits.items()}


def diverged(what, value, it, first_it, out_dir, saved_at):
    """The TrainingDiverged of a non-finite loss: when, what is kept, and the likely cause."""
    kept = (f"{Path(out_dir) / CHECKPOINT}, saved at iteration {saved_at}, is kept as it was"
            if saved_at is not None else f"nothing was saved in {out_dir}")
    if it == first_it:
        cause = ("this is before any training step of this run, so the learning rate is not the "
                 "cause: the starting model's weights or the data give non-finite numbers")
    else:
        steps = it - first_it
        cause = (f"it happened after {steps} training step{'s' if steps > 1 else ''}: the steps "
                 "grew too large; try a lower --learning-rate (or --grad-clip 1.0)")
    return TrainingDiverged(f"{what} became {value} at iteration {it}; training stopped and "
                            f"{kept}. {cause[0].upper() + cause[1:]}.")


def train_loop(model, optimizer, splits, run, optim_config, state, save, progress=None,
               block_size=None, save_best=None, next_batch=None, measure=None,
               health=False):
    """Run iterations state["iter"] .. run.max_iters - 1 of ``model`` (anything with
    ``loss_and_grads``/``loss``), saving with ``save(state)``.

    run: the TrainConfig (or FinetuneConfig) of the run: max_iters, batch_size, eval_interval,
    eval_iters, seed, out_dir. state holds "iter", "rng", "history", "best_val" and "best_iter";
    it is updated in place and returned. progress: what shows the progress line and messages
    (default: a ``Progress`` on stderr). block_size: the context length T of the batches;
    default ``model.config.block_size`` (give it for a wrapper without one, e.g. a LoRA around a
    GPT). splits: "train" and "val" token arrays, plus optionally more (e.g. the base corpus
    while fine-tuning), which are only evaluated: history["eval_extra"][name] collects their
    [iter, loss] pairs.

    Other tasks than language modelling (a classifier, instruction tuning) bring their own
    batches and measurements: ``next_batch(rng) -> (x, y)``, what ``model.loss_and_grads(x, y,
    rng=rng)`` takes (default: ``get_batch`` on splits["train"]), and ``measure(it) ->
    {"train": loss, "val": loss, name: value, ...}`` (default: ``estimate_loss`` on every split,
    its batches drawn by a generator seeded by (seed, it)); names other than "train" and "val"
    are printed and collected in history["eval_extra"][name] as well.

    The save policy: ``save(state)`` after every evaluation, on a stop request (Ctrl-C,
    SIGTERM) and at the end; before it, ``save_best(state)`` (if given) when the validation loss
    improved. A non-finite loss raises TrainingDiverged before anything is saved.

    With ``health`` (a GPT), each evaluation iteration's step also appends a record of
    activation, gradient and update statistics (minillm/training/health.py) to state["health"].
    """
    if block_size is None:
        block_size = model.config.block_size if hasattr(model, "config") else 0
    workers, accum = run.workers, run.grad_accum_steps
    stepper = DataParallel(model, workers)              # workers = 1: the model itself
    if next_batch is None:
        def next_batch(rng):
            return get_batch(splits["train"], block_size, run.batch_size, rng)
    if measure is None:
        def measure(it):
            rng = np.random.default_rng((run.seed, it))
            return estimate_loss(stepper, splits, block_size=block_size,
                                 batch_size=run.batch_size, eval_iters=run.eval_iters, rng=rng)
    rng = rng_from_state(state["rng"])
    history = state["history"]
    progress = progress or Progress(run.max_iters, accum * run.batch_size * block_size,
                                    run.log_interval)
    first_it = state["iter"]
    saved_at = first_it if history["train"] or history["eval"] else None    # (a resumed run)

    def evaluate(it):
        losses = measure(it)
        bad = next((name for name, loss in losses.items() if not math.isfinite(loss)), None)
        if bad:
            raise diverged(f"the {bad} loss", losses[bad], it, first_it, run.out_dir, saved_at)
        history["eval"].append([it, losses["train"], losses["val"]])
        extra = [name for name in losses if name not in ("train", "val")]
        for name in extra:
            history.setdefault("eval_extra", {}).setdefault(name, []).append([it, losses[name]])
        improved = losses["val"] < state["best_val"]
        if improved:
            state["best_val"], state["best_iter"] = losses["val"], it
        progress.message(f"step {it}: train loss {losses['train']:.4f}, "
                         f"val loss {losses['val']:.4f}"
                         + "".join(f", {name.replace('_', ' ')} {losses[name]:.4f}"
                                   for name in extra))
        return improved

    def checkpoint(it, best=False):
        nonlocal saved_at
        if best and save_best is not None:
            save_best(state)
        save(state)
        saved_at = it

    with StopFlag() as stop, one_blas_thread() if workers > 1 else contextlib.nullcontext():
        it = state["iter"]
        while it < run.max_iters:
            evaluated = history["eval"] and history["eval"][-1][0] == it     # (a resumed run)
            if it % run.eval_interval == 0 and not evaluated:
                checkpoint(it, best=evaluate(it))
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):     # checked just below
                shards = []
                for _ in range(accum):                             # gradient accumulation
                    x, y = next_batch(rng)
                    shards.append((*stepper.loss_and_grads(x, y, rng=rng), kept_targets(y)))
                loss, grads = weighted_sum(shards, stepper.run) if accum > 1 else shards[0][:2]
                norm = clip_grad_norm(grads, optim_config.grad_clip, run=stepper.run) \
                    if optim_config.grad_clip > 0 else 0.0
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what, value = ("the loss", loss) if not math.isfinite(loss) else \
                    ("the gradient norm", norm)
                raise diverged(what, value, it, first_it, run.out_dir, saved_at)
            lr = lr_schedule(it, optim_config.learning_rate, optim_config.min_lr,
                             optim_config.warmup_iters, optim_config.lr_decay_iters)
            probe = health and it % run.eval_interval == 0
            if probe:
                record, before = health_stats.before_step(it, model, x, grads)
            optimizer.step(grads, lr=lr, run=stepper.run)
            if probe:
                state.setdefault("health", []).append(
                    health_stats.after_step(record, before, model.params))
            it += 1
            history["train"].append(loss)
            state["iter"], state["rng"] = it, rng_state(rng)
            progress.update(it - 1, loss, lr, time.perf_counter() - t0)
            if stop.requested:
                progress.message(f"interrupted at iteration {it}")
                checkpoint(it)
                state["interrupted"] = True
                return state
        best = False
        if not history["eval"] or history["eval"][-1][0] != it:
            best = evaluate(it)
        checkpoint(it, best=best)
    return state


def encode_splits(text, tokenizer, block_size=None, description="the text"):
    """Encode the whole text once and split it 90% / 10%: {"train": ids, "val": ids}. With
    ``block_size``, a text too short for one window of each split is a ValueError naming
    ``description``."""
    ids = tokenizer.encode_array(text) if hasattr(tokenizer, "encode_array") else \
        np.array(tokenizer.encode(text), dtype=np.int64)
    if block_size is not None and len(ids) < 10 * (block_size + 2):
        raise ValueError(f"{description} is too short: {len(ids):,} tokens, but windows of "
                         f"block_size {block_size} need at least {10 * (block_size + 2):,} (so "
                         f"that its last tenth, the validation part, holds {block_size + 1})")
    train_ids, val_ids = split(ids)
    return {"train": train_ids, "val": val_ids}


def new_tokenizer(text, run):
    """The tokenizer of a fresh run: the text's characters, or a byte-level BPE trained on it."""
    if run.tokenizer == "bpe":
        return BPETokenizer.train(text, run.bpe_vocab_size, special_tokens=["<|endoftext|>"])
    return CharTokenizer.from_text(text)


# ----------------------------------------------------------------------------------------------
# Checks before training: the data of a resumed run, the memory a model needs
# ----------------------------------------------------------------------------------------------

def data_identity(source, text):
    """What a run was trained on: {"source": the file's absolute path or the dataset's name,
    "size": bytes of UTF-8 text, "sha256": their hex SHA-256}, kept in the checkpoint."""
    source = source or "shakespeare"
    raw = text.encode("utf-8")
    where = source if source in DATASETS else str(Path(source).expanduser().resolve())
    return {"source": where, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def check_same_data(old, new, allow, log):
    """Refuse (ValueError) to resume on other data than the run's, unless ``allow``: then
    say what changed. ``old`` is the checkpoint's data identity (None: not recorded)."""
    if old is None:
        log("note: this checkpoint does not record its data (an older minillm saved it), so "
            "--data cannot be checked against it")
        return
    if old["sha256"] == new["sha256"]:
        return
    change = (f"the run was trained on {old['source']} ({old['size']:,} bytes, sha256 "
              f"{old['sha256'][:12]}...), --data is {new['source']} ({new['size']:,} bytes, "
              f"sha256 {new['sha256'][:12]}...)")
    if not allow:
        raise ValueError(f"--data is not the text this run was trained on: {change}. Give the "
                         "run's --data, or add --allow-new-data to continue on this text")
    log(f"note: continuing on other data than before: {change}")


def training_memory(config, batch_size, copies=4):
    """(bytes, parameters): about how much memory training ``config`` takes: ``copies`` arrays
    the size of the parameters (weights, gradients, AdamW's m and v) plus the activations the
    backward pass keeps for one batch (B, T): per layer about 16 (B, T, C) arrays and two
    (B, nh, T, T) attention maps, and three (B, T, V) for the logits and their gradient.

    >>> from minillm import GPTConfig
    >>> training_memory(GPTConfig(), 12)         # the baby GPT: 45 MB for 809,856 parameters
    (45014016, 809856)
    """
    n = sum(math.prod(shape) for shape in param_shapes(config).values())
    B, T, C = batch_size, config.block_size, config.n_embd
    activations = (config.n_layer * (16 * B * T * C + 2 * B * config.n_head * T * T)
                   + 3 * B * T * config.vocab_size)
    return (copies * n + activations) * np.dtype(config.dtype).itemsize, n


def available_memory():
    """Bytes of memory a new allocation can get: MemAvailable of /proc/meminfo (Linux), else
    the machine's physical memory; None if neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_memory(config, batch_size, copies=4, what="training"):
    """ValueError, before anything is allocated, if ``training_memory`` exceeds the memory
    available, with both sizes."""
    need, n = training_memory(config, batch_size, copies)
    have = available_memory()
    if have is not None and need > have:
        gib = 2.0 ** 30
        raise ValueError(
            f"the model is too large for this machine: {what} it needs about {need / gib:,.1f} "
            f"GiB ({n:,} parameters x {copies} copies for weights, gradients and AdamW's moments, "
            f"at {np.dtype(config.dtype).itemsize} bytes each, plus the activations of a batch "
            f"of {batch_size} x {config.block_size} tokens), but {have / gib:,.1f} GiB is "
            "available; choose a smaller --n-embd, --n-layer, --block-size or --batch-size")


# ----------------------------------------------------------------------------------------------
# A whole run
# ----------------------------------------------------------------------------------------------

def train(run, model_config, optim_config, log=print):
    """Train a GPT from scratch (or resume one) as the TrainConfig ``run`` describes.

    Returns a TrainResult. The model's shape comes from ``model_config`` except vocab_size,
    which is the tokenizer's; when resuming, everything comes from the checkpoint. The run holds
    ``run.out_dir`` for its whole length (``lock_folder``)."""
    with lock_folder(run.out_dir) as out_dir:
        found = run_files(out_dir)
        if found and not (run.resume or run.overwrite):
            raise ValueError(f"{out_dir} already holds a run ({', '.join(found)}); continue it "
                             "with --resume, replace it with --overwrite, or give another "
                             "--out-dir")
        return _train(run, model_config, optim_config, log)


def _train(run, model_config, optim_config, log):
    text, description = load_text(run.data)
    identity = data_identity(run.data, text)
    if run.resume:
        ckpt = load_checkpoint(run.out_dir)
        model, tokenizer, state = ckpt.model, ckpt.tokenizer, ckpt.state
        missing = [k for k in ("iter", "best_val", "history", "rng") if k not in state]
        if missing:
            raise ValueError(f"{ckpt.path} cannot be resumed: its state has no "
                             f"{', '.join(missing)} (it holds a model, not the state of a run)")
        if state["iter"] >= run.max_iters:
            raise ValueError(f"{ckpt.path} is already at iteration {state['iter']}; give "
                             f"--max-iters larger than {state['iter']} to train further")
        try:
            rng_from_state(state["rng"])
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{ckpt.path}: damaged run state: 'rng' ({e})") from None
        check_same_data(state.get("data"), identity, run.allow_new_data, log)
        log(f"resuming {ckpt.path} at iteration {state['iter']} (model settings from the "
            "checkpoint)")
    else:
        tokenizer = new_tokenizer(text, run)
        model_config = replace(model_config, vocab_size=tokenizer.vocab_size)
        check_memory(model_config, run.batch_size)
        model = GPT(model_config, seed=run.seed)
        state = new_state(run.seed)
    state["data"] = identity
    config = model.config
    splits = encode_splits(text, tokenizer, config.block_size, description)
    optimizer = AdamW.from_config(model.params, optim_config)
    if run.resume and ckpt.adam is not None:
        optimizer.load_state_dict(ckpt.adam)
    log(f"data: {description}, {len(splits['train']):,} train and {len(splits['val']):,} val "
        "tokens")
    log(f"model: {model.num_params():,} parameters, vocab {config.vocab_size}, "
        f"{config.n_layer} layers x {config.n_head} heads x {config.n_embd} channels, "
        f"context {config.block_size}, {config.dtype}")
    if (config.norm, config.pos_encoding, config.mlp) != ("layernorm", "learned", "gelu"):
        log(f"block: {config.norm}, {config.pos_encoding} positions, {config.mlp} MLP of "
            f"{config.inner_size}, {config.kv_heads} key/value heads, "
            f"{'biases' if config.bias else 'no biases'}, "
            f"{'tied' if config.tie_embeddings else 'untied'} embeddings")
    configs = {"train": asdict(run), "optim": asdict(optim_config)}

    def save(state):                     # the last state, what --resume continues
        save_checkpoint(run.out_dir, model, tokenizer, optimizer=optimizer,
                        state={**state, "configs": configs})
        tokenizer.save(Path(run.out_dir) / TOKENIZER)
        if run.health:
            atomic_write_text(Path(run.out_dir) / health_stats.HEALTH,
                              json.dumps(state.get("health", [])))

    def save_best(state):                # the model at the lowest validation loss
        save_checkpoint(run.out_dir, model, tokenizer, state={**state, "configs": configs},
                        name=BEST)

    state = train_loop(model, optimizer, splits, run, optim_config, state, save,
                       save_best=save_best, health=run.health)
    return TrainResult(model, tokenizer, state)
