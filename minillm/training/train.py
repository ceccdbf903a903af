"""The training loop: batches, AdamW steps, evaluation, checkpoints, a live progress line.

One iteration:
    x, y   = get_batch(train, block_size, batch_size, rng)     (B, T) each, y = x shifted by one
    loss, grads = model.loss_and_grads(x, y)                   forward + hand-written backward
    clip_grad_norm(grads, grad_clip)                           global norm <= grad_clip
    optimizer.step(grads, lr=lr_schedule(it, ...))             AdamW, warmup + cosine

Every ``eval_interval`` iterations the mean loss over ``eval_iters`` batches of each split is
measured; the checkpoint is saved when the validation loss improves, on Ctrl-C and at the end.
A run that is stopped and resumed (``--resume``) draws the same batches and gives the same losses
as an uninterrupted one: the checkpoint carries the generator's state, and evaluation batches
come from their own generator seeded by (seed, iteration).
"""
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.model import GPT
from ..core.optim import AdamW, clip_grad_norm, lr_schedule
from ..formats.checkpoint import load_checkpoint, save_checkpoint
from ..tokenizers import BPETokenizer, CharTokenizer
from .data import get_batch, load_text, split

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
        "help": "tokens of the BPE tokenizer (256 bytes + merges + <|endoftext|>)"})
    max_iters: int = field(default=2000, metadata={"help": "training iterations"})
    batch_size: int = field(default=12, metadata={"help": "sequences per batch"})
    eval_interval: int = field(default=250, metadata={
        "help": "evaluate every this many iterations"})
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation"})
    log_interval: int = field(default=10, metadata={
        "help": "progress update every this many iterations"})
    seed: int = field(default=1337, metadata={
        "help": "seed of initialisation, batches and dropout"})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in out_dir"})
    sample_tokens: int = field(default=300, metadata={"help": "tokens sampled at the end"})


@dataclass
class TrainResult:
    """What ``train`` returns."""
    model: GPT
    tokenizer: object       # CharTokenizer or BPETokenizer
    state: dict             # "iter", "best_val", "history" (loss curves), "rng", ...


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopFlag:
    """Ctrl-C asks the loop to stop after the current iteration (and save); a second Ctrl-C
    interrupts at once, keeping the last checkpoint on disk."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handler)
        except ValueError:            # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this iteration and saving (Ctrl-C again to quit now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


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
        line = (f"iter {it + 1:>{len(str(self.total))}}/{self.total} | loss {loss:.4f} | "
                f"lr {lr:.2e} | {ms:.1f} ms/it | {self.tokens / ms * 1000.0:,.0f} tok/s | "
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
    return {"iter": 0, "best_val": float("inf"), "history": {"train": [], "eval": []},
            "rng": rng_state(np.random.default_rng(seed))}


def estimate_loss(model, splits, *, block_size, batch_size, eval_iters, rng):
    """Mean loss over eval_iters random batches of each split (evaluation mode, no dropout)."""
    return {name: float(np.mean([model.loss(*get_batch(data, block_size, batch_size, rng))
                                 for _ in range(eval_iters)]))
            for name, data in splits.items()}


def train_loop(model, optimizer, splits, run, optim_config, state, save, progress=None,
               block_size=None):
    """Run iterations state["iter"] .. run.max_iters - 1 of ``model`` (anything with
    ``loss_and_grads``/``loss``), saving with ``save(state)``.

    run: the TrainConfig (or FinetuneConfig) of the run: max_iters, batch_size, eval_interval,
    eval_iters, seed, out_dir. state holds "iter", "rng", "history" and "best_val"; it is
    updated in place and returned. progress: what shows the progress line and messages
    (default: a ``Progress`` on stderr). block_size: the context length T of the batches;
    default ``model.config.block_size`` (give it for a wrapper without one, e.g. a LoRA around a
    GPT). splits: "train" and "val" token arrays, plus optionally more (e.g. the base corpus
    while fine-tuning), which are only evaluated: history["eval_extra"][name] collects their
    [iter, loss] pairs.
    """
    block_size = model.config.block_size if block_size is None else block_size
    rng = rng_from_state(state["rng"])
    history = state["history"]
    progress = progress or Progress(run.max_iters, run.batch_size * block_size, run.log_interval)

    def evaluate(it):
        losses = estimate_loss(model, splits, block_size=block_size, batch_size=run.batch_size,
                               eval_iters=run.eval_iters, rng=np.random.default_rng((run.seed, it)))
        history["eval"].append([it, losses["train"], losses["val"]])
        for name in [n for n in splits if n not in ("train", "val")]:
            history.setdefault("eval_extra", {}).setdefault(name, []).append([it, losses[name]])
        improved = losses["val"] < state["best_val"]
        state["best_val"] = min(state["best_val"], losses["val"])
        progress.message(f"step {it}: train loss {losses['train']:.4f}, "
                         f"val loss {losses['val']:.4f}")
        return improved

    with StopFlag() as stop:
        it = state["iter"]
        while it < run.max_iters:
            evaluated = history["eval"] and history["eval"][-1][0] == it     # (a resumed run)
            if it % run.eval_interval == 0 and not evaluated and evaluate(it) and it > 0:
                save(state)
            t0 = time.perf_counter()
            x, y = get_batch(splits["train"], block_size, run.batch_size, rng)
            with np.errstate(over="ignore", invalid="ignore"):     # checked just below
                loss, grads = model.loss_and_grads(x, y, rng=rng)
                norm = clip_grad_norm(grads, optim_config.grad_clip) \
                    if optim_config.grad_clip > 0 else 0.0
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingDiverged(
                    f"the loss became {loss} at iteration {it} (gradient norm {norm}); training "
                    f"stopped and the last good checkpoint in {run.out_dir} is kept. "
                    f"Try a lower --learning-rate or --grad-clip.")
            lr = lr_schedule(it, optim_config.learning_rate, optim_config.min_lr,
                             optim_config.warmup_iters, optim_config.lr_decay_iters)
            optimizer.step(grads, lr=lr)
            it += 1
            history["train"].append(loss)
            state["iter"], state["rng"] = it, rng_state(rng)
            progress.update(it - 1, loss, lr, time.perf_counter() - t0)
            if stop.requested:
                progress.message(f"interrupted at iteration {it}")
                save(state)
                state["interrupted"] = True
                return state
        if not history["eval"] or history["eval"][-1][0] != it:
            evaluate(it)
        save(state)
    return state


def encode_splits(text, tokenizer):
    """Encode the whole text once and split it 90% / 10%: {"train": ids, "val": ids}."""
    ids = tokenizer.encode_array(text) if hasattr(tokenizer, "encode_array") else \
        np.array(tokenizer.encode(text), dtype=np.int64)
    train_ids, val_ids = split(ids)
    return {"train": train_ids, "val": val_ids}


def new_tokenizer(text, run):
    """The tokenizer of a fresh run: the text's characters, or a byte-level BPE trained on it."""
    if run.tokenizer == "bpe":
        return BPETokenizer.train(text, run.bpe_vocab_size, special_tokens=["<|endoftext|>"])
    return CharTokenizer.from_text(text)


def train(run, model_config, optim_config, log=print):
    """Train a GPT from scratch (or resume one) as the TrainConfig ``run`` describes.

    Returns a TrainResult. The model's shape comes from ``model_config`` except vocab_size,
    which is the tokenizer's; when resuming, everything comes from the checkpoint."""
    text, description = load_text(run.data)
    if run.resume:
        ckpt = load_checkpoint(run.out_dir)
        model, tokenizer, state = ckpt.model, ckpt.tokenizer, ckpt.state
        log(f"resuming {ckpt.path} at iteration {state['iter']} (model settings from the "
            "checkpoint)")
    else:
        tokenizer = new_tokenizer(text, run)
        model = GPT(replace(model_config, vocab_size=tokenizer.vocab_size), seed=run.seed)
        state = new_state(run.seed)
    splits = encode_splits(text, tokenizer)
    optimizer = AdamW.from_config(model.params, optim_config)
    if run.resume and ckpt.adam is not None:
        optimizer.load_state_dict(ckpt.adam)
    config = model.config
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

    def save(state):
        save_checkpoint(run.out_dir, model, tokenizer, optimizer=optimizer,
                        state={**state, "configs": configs})

    tokenizer.save(Path(run.out_dir) / "tokenizer.json")
    state = train_loop(model, optimizer, splits, run, optim_config, state, save)
    return TrainResult(model, tokenizer, state)
