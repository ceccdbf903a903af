"""The training loop: batches, AdamW steps, evaluation, checkpoints, a live progress line.

One iteration:
    x, y   = get_batch(train, block_size, batch_size, rng)     (B, T) each, y = x shifted by one
    loss, grads = model.loss_and_grads(x, y)                   forward + hand-written backward
    clip_grad_norm(grads, grad_clip)                           global norm <= grad_clip
    optimizer.step(grads, lr=lr_schedule(it, ...))              AdamW, warmup + cosine

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint, rng_from_state, rng_state, save_checkpoint
from .data import get_batch, load_text, split
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, lr_schedule
from .tokenizer import CharTokenizer


@dataclass
class TrainConfig:
    """What to train on, for how long, and where to save (one CLI flag per field)."""
    data: str = field(default=None, metadata={
        "help": "a text file or a dataset name (shakespeare); default: shakespeare, or the "
                "Python docs corpus when offline"})
    out_dir: str = field(default="out", metadata={"help": "checkpoint folder"})
    max_iters: int = field(default=2000, metadata={"help": "training iterations"})
    batch_size: int = field(default=12, metadata={"help": "sequences per batch"})
    eval_interval: int = field(default=250, metadata={"help": "evaluate every this many iterations"})
    eval_iters: int = field(default=20, metadata={"help": "batches per evaluation"})
    log_interval: int = field(default=10, metadata={"help": "progress update every this many iterations"})
    seed: int = field(default=1337, metadata={"help": "seed of initialisation, batches and dropout"})
    resume: bool = field(default=False, metadata={"help": "continue the run saved in out_dir"})
    sample_tokens: int = field(default=300, metadata={"help": "characters sampled at the end"})


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


def estimate_loss(model, splits, block_size, batch_size, eval_iters, rng):
    """Mean loss over eval_iters random batches of each split (evaluation mode, no dropout)."""
    return {name: float(np.mean([model.loss(*get_batch(data, block_size, batch_size, rng))
                                 for _ in range(eval_iters)]))
            for name, data in splits.items()}


def train_loop(model, optimizer, splits, tc, oc, state, save, progress=None, block_size=None):
    """Run iterations state["iter"] .. tc.max_iters - 1 of ``model`` (anything with
    ``loss_and_grads``/``loss``), saving with ``save(state)``.

    state holds "iter", "rng", "history" and "best_val"; it is updated in place and returned.
    progress: what shows the progress line and messages (default: a ``Progress`` on stderr).
    block_size: the context length T of the batches; default ``model.config.block_size`` (give it
    for a wrapper without one, e.g. a LoRA around a GPT). splits: "train" and "val" token arrays,
    plus optionally more (e.g. the base corpus while fine-tuning), which are only evaluated:
    history["eval_extra"][name] collects their [iter, loss] pairs.
    """
    block_size = model.config.block_size if block_size is None else block_size
    rng = rng_from_state(state["rng"])
    hist = state["history"]
    progress = progress or Progress(tc.max_iters, tc.batch_size * block_size, tc.log_interval)

    def evaluate(it):
        losses = estimate_loss(model, splits, block_size, tc.batch_size, tc.eval_iters,
                               np.random.default_rng((tc.seed, it)))
        hist["eval"].append([it, losses["train"], losses["val"]])
        for name in [n for n in splits if n not in ("train", "val")]:
            hist.setdefault("eval_extra", {}).setdefault(name, []).append([it, losses[name]])
        improved = losses["val"] < state["best_val"]
        state["best_val"] = min(state["best_val"], losses["val"])
        progress.message(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        return improved

    with StopFlag() as stop:
        it = state["iter"]
        while it < tc.max_iters:
            evaluated = hist["eval"] and hist["eval"][-1][0] == it     # (a resumed run)
            if it % tc.eval_interval == 0 and not evaluated and evaluate(it) and it > 0:
                save(state)
            t0 = time.perf_counter()
            x, y = get_batch(splits["train"], block_size, tc.batch_size, rng)
            with np.errstate(over="ignore", invalid="ignore"):     # checked just below
                loss, grads = model.loss_and_grads(x, y, rng=rng)
                norm = clip_grad_norm(grads, oc.grad_clip) if oc.grad_clip > 0 else 0.0
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise TrainingDiverged(
                    f"the loss became {loss} at iteration {it} (gradient norm {norm}); training "
                    f"stopped and the last good checkpoint in {tc.out_dir} is kept. "
                    f"Try a lower --learning-rate or --grad-clip.")
            lr = lr_schedule(it, oc.learning_rate, oc.min_lr, oc.warmup_iters, oc.lr_decay_iters)
            optimizer.step(grads, lr=lr)
            it += 1
            hist["train"].append(loss)
            state["iter"], state["rng"] = it, rng_state(rng)
            progress.update(it - 1, loss, lr, time.perf_counter() - t0)
            if stop.requested:
                progress.message(f"interrupted at iteration {it}")
                save(state)
                state["interrupted"] = True
                return state
        if not hist["eval"] or hist["eval"][-1][0] != it:
            evaluate(it)
        save(state)
    return state


def new_state(seed):
    """The run state of a fresh run: iteration 0, no history, a generator seeded by ``seed``."""
    return {"iter": 0, "best_val": float("inf"), "history": {"train": [], "eval": []},
            "rng": rng_state(np.random.default_rng(seed))}


def prepare(text, tokenizer):
    """Encode the whole text once and split it 90% / 10%."""
    data = tokenizer.encode_array(text) if hasattr(tokenizer, "encode_array") else \
        np.array(tokenizer.encode(text), dtype=np.int64)
    train, val = split(data)
    return {"train": train, "val": val}


def train(tc, mc, oc, log=print):
    """Train a character-level GPT from scratch (or resume one) as TrainConfig describes.

    Returns (model, tokenizer, state). The model shape comes from ``mc`` except vocab_size,
    which is the tokenizer's; when resuming, everything comes from the checkpoint."""
    text, description = load_text(tc.data)
    if tc.resume:
        ckpt = load_checkpoint(tc.out_dir)
        model, tokenizer, state = ckpt.model, ckpt.tokenizer, ckpt.state
        log(f"resuming {ckpt.path} at iteration {state['iter']} (model settings from the checkpoint)")
    else:
        tokenizer = CharTokenizer.from_text(text)
        mc = GPTConfig(**{**mc.to_dict(), "vocab_size": tokenizer.vocab_size})
        model = GPT(mc, seed=tc.seed)
        state = new_state(tc.seed)
    splits = prepare(text, tokenizer)
    optimizer = AdamW(model.params, lr=oc.learning_rate, betas=(oc.beta1, oc.beta2), eps=oc.eps,
                      weight_decay=oc.weight_decay)
    if tc.resume and ckpt.adam is not None:
        optimizer.load_state_dict(ckpt.adam)
    log(f"data: {description}, {len(splits['train']):,} train and {len(splits['val']):,} val tokens")
    log(f"model: {model.num_params():,} parameters, vocab {model.config.vocab_size}, "
        f"{model.config.n_layer} layers x {model.config.n_head} heads x {model.config.n_embd} "
        f"channels, context {model.config.block_size}, {model.config.dtype}")
    configs = {"train": tc.__dict__, "optim": oc.__dict__}

    def save(state):
        save_checkpoint(tc.out_dir, model, tokenizer, optimizer, {**state, "configs": configs})

    tokenizer.save(Path(tc.out_dir) / "tokenizer.json")
    state = train_loop(model, optimizer, splits, tc, oc, state, save)
    return model, tokenizer, state
