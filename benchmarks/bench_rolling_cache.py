"""Generation past the context window with rotary positions: recompute the window (exact, the
default) or roll the KV cache (``generate(..., rolling=True)``); and the KV cache's size.

    python benchmarks/bench_rolling_cache.py                  # train 1000 iterations, measure
    python benchmarks/bench_rolling_cache.py --iters 300 --steps 256

1. KV cache size of the baby GPT's shape (4 layers, 4 query heads of 32, block 64) with 4, 2
   and 1 key/value heads: ``KVCache.nbytes`` next to 2 * n_layer * n_kv_head * hs * T * bytes.
2. Trains a Llama-style character model (``GPTConfig.llama``: RMSNorm, RoPE, SwiGLU, 2 key/value
   heads, no biases, untied head; the baby GPT's shape) on Tiny Shakespeare for --iters.
3. On validation text the model never trained on, teacher-forced for block_size + --steps
   tokens, in float64: the next-token distribution after every prefix, recomputed from the
   last block_size tokens and through a rolling cache of the last block_size positions; prints
   KL(recompute || rolling) per step (inside the window, where both are exact, and past it),
   how often the argmax agrees, and the loss of the true next token for both.
4. Time per new token past the window, float32, both ways, in alternating rounds.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout

from minillm import GPT, GPTConfig                                # noqa: E402
from minillm.core.attention import kv_cache_bytes                 # noqa: E402
from minillm.core.optim import AdamW, OptimConfig, clip_grad_norm, lr_schedule  # noqa: E402
from minillm.tokenizers import CharTokenizer                      # noqa: E402
from minillm.training.data import get_batch, load_text, split     # noqa: E402
from minillm.training.malloc import keep_freed_memory             # noqa: E402


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cache_sizes(config):
    print(f"KV cache of {config.n_layer} layers, {config.n_head} query heads of "
          f"{config.head_size}, T = block_size = {config.block_size}, B = 1:")
    for n_kv in (config.n_head, 2, 1):
        for dtype in ("float32", "float64"):
            model = GPT(GPTConfig(**{**config.to_dict(), "n_kv_head": n_kv, "dtype": dtype}))
            formula = kv_cache_bytes(config.n_layer, n_kv, config.head_size, config.block_size,
                                     np.dtype(dtype).itemsize)
            measured = model.new_kv_cache().nbytes
            print(f"  n_kv_head {n_kv}, {dtype}: KVCache.nbytes {measured:,} B, 2 * n_layer * "
                  f"n_kv_head * hs * T * bytes = {formula:,} B"
                  f"{'' if measured == formula else '  DIFFERENT'}")


def train(config, data, iters, seed=1337, batch_size=12):
    model = GPT(config, seed=seed)
    oc = OptimConfig(lr_decay_iters=iters, warmup_iters=min(100, iters))
    opt = AdamW.from_config(model.params, oc)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for it in range(iters):
        x, y = get_batch(data, config.block_size, batch_size, rng)
        loss, grads = model.loss_and_grads(x, y, rng=rng)
        clip_grad_norm(grads, oc.grad_clip)
        opt.step(grads, lr=lr_schedule(it, oc.learning_rate, oc.min_lr, oc.warmup_iters, iters))
        if (it + 1) % 250 == 0 or it + 1 == iters:
            print(f"  iter {it + 1}: train loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return model


def logits_recomputed(model, tokens, batch=64):
    """(N, V): after each prefix, the last <= block_size tokens run from scratch."""
    W, N = model.config.block_size, len(tokens)
    out = [model.forward(tokens[None, :min(W, N)])[0]]                  # the first W prefixes
    starts = np.arange(1, N - W + 1)                                    # windows tokens[s:s+W]
    for i in range(0, len(starts), batch):
        rows = starts[i:i + batch, None] + np.arange(W)
        out.append(model.forward(tokens[rows], last_only=True)[:, 0])
    return np.concatenate(out)


def logits_rolled(model, tokens):
    """(N, V): one token at a time through a rolling KV cache of the last block_size."""
    cache = model.new_kv_cache(rolling=True)
    return np.concatenate([model.forward(np.array([[t]]), kv_cache=cache)[0] for t in tokens])


def drift(model, tokens, W):
    m64 = GPT(GPTConfig(**{**model.config.to_dict(), "dtype": "float64"}),
              params={k: v.astype(np.float64) for k, v in model.params.items()})
    inputs, nxt = tokens[:-1], tokens[1:]
    rec, roll = log_softmax(logits_recomputed(m64, inputs)), log_softmax(logits_rolled(m64, inputs))
    kl = (np.exp(rec) * (rec - roll)).sum(axis=-1)                      # per step, nats
    inside, past = kl[:W], kl[W:]
    print(f"KL(recompute || rolling) per step, float64, {len(inputs)} steps of validation text:")
    print(f"  inside the window (steps 1..{W}): max {inside.max():.1e}")
    print(f"  past it ({len(past)} steps): mean {past.mean():.2e}, median {np.median(past):.2e}, "
          f"90th percentile {np.quantile(past, 0.9):.2e}, max {past.max():.2e} nats")
    same = (rec[W:].argmax(-1) == roll[W:].argmax(-1)).mean()
    nll = [-lp[np.arange(W, len(inputs)), nxt[W:]].mean() for lp in (rec, roll)]
    print(f"  same most likely token {100 * same:.1f}% of the steps past the window; loss of the "
          f"true next token past it: recompute {nll[0]:.4f}, rolling {nll[1]:.4f} nats")


def speed(model, tokens, W, rounds=5, n=64):
    roll, rec = [], []
    for _ in range(rounds):
        cache = model.new_kv_cache(rolling=True)
        model.forward(tokens[None, :W], kv_cache=cache)                 # fill the window
        t0 = time.perf_counter()
        for t in tokens[W:W + n]:
            model.forward(np.array([[t]]), kv_cache=cache)
        roll.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for s in range(1, n + 1):                                       # what generate does
            model.forward(tokens[None, s:s + W], last_only=True)
        rec.append((time.perf_counter() - t0) / n)
    a, b = np.median(roll), np.median(rec)
    print(f"time per new token past the window, float32, median of {rounds} alternating rounds "
          f"of {n}: rolling {1000 * a:.2f} ms, recompute {1000 * b:.2f} ms "
          f"(rolling {b / a:.1f}x faster)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=1000, help="training iterations")
    ap.add_argument("--steps", type=int, default=512, help="teacher-forced steps past the window")
    args = ap.parse_args()
    keep_freed_memory()
    text, desc = load_text(None)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split(tokenizer.encode_array(text))
    config = GPTConfig.llama(vocab_size=tokenizer.vocab_size)
    cache_sizes(config)
    print(f"\ntraining {GPT(config).num_params():,} parameters ({config.norm}, "
          f"{config.pos_encoding}, {config.mlp}, {config.kv_heads} key/value heads) on {desc} "
          f"for {args.iters} iterations")
    model = train(config, train_ids, args.iters)
    W = config.block_size
    print()
    drift(model, val_ids[:W + args.steps + 1], W)
    speed(model, val_ids, W)


if __name__ == "__main__":
    main()
