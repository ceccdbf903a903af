"""Training and generation speed of minillm's default character model, with PyTorch beside it.

    python benchmarks/bench_train.py                   # full: 2000 iterations, then timing
    python benchmarks/bench_train.py --iters 0         # timing and generation only

1. Trains nanoGPT's CPU "baby GPT" config (4 layers, 4 heads, 128 channels, context 64, batch 12)
   on Tiny Shakespeare for --iters iterations and prints the median ms/iteration, tokens/s, the
   peak memory of the process (before torch is imported) and the val loss at the end.
2. Times a training iteration of minillm and of the same model in PyTorch (when installed) from
   the same weights, alternating rounds in this one run (the machine is shared and noisy: only
   side-by-side ratios mean anything), and prints both medians and the ratio. With --torch-full,
   also trains the PyTorch model for --iters iterations on the same batches and prints its val
   loss: the reference for how well this exact model learns.
3. Generation tokens/s with and without the KV cache.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "reference"))
from minillm import GPT, GPTConfig  # noqa: E402
from minillm.training.data import get_batch, load_text, split  # noqa: E402
from minillm.core.sampling import generate  # noqa: E402
from minillm.training.malloc import keep_freed_memory  # noqa: E402
from minillm.core.optim import AdamW, OptimConfig, clip_grad_norm, lr_schedule  # noqa: E402
from minillm.tokenizers import CharTokenizer  # noqa: E402
from minillm.training.train import estimate_loss  # noqa: E402



def blas_threads():
    try:
        from threadpoolctl import threadpool_info
        return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    except Exception:
        return None


def minillm_step(model, opt, data, it, oc, rng, B=12):
    x, y = get_batch(data, model.config.block_size, B, rng)
    loss, grads = model.loss_and_grads(x, y, rng=rng)
    clip_grad_norm(grads, oc.grad_clip)
    opt.step(grads, lr=lr_schedule(it, oc.learning_rate, oc.min_lr, oc.warmup_iters, oc.lr_decay_iters))
    return loss


def full_run(cfg, splits, iters, oc):
    model = GPT(cfg, seed=1337)
    opt = AdamW.from_config(model.params, oc)
    rng = np.random.default_rng(1337)
    times = []
    for it in range(iters):
        t0 = time.perf_counter()
        minillm_step(model, opt, splits["train"], it, oc, rng)
        times.append(time.perf_counter() - t0)
        if (it + 1) % 250 == 0:
            print(f"  iter {it + 1}: {1000 * np.median(times[-250:]):.1f} ms/it", flush=True)
    losses = estimate_loss(model, splits, block_size=cfg.block_size, batch_size=12,
                           eval_iters=200, rng=np.random.default_rng(0))
    ms = 1000 * float(np.median(times))
    print(f"minillm, {iters} iterations: median {ms:.1f} ms/it, {12 * 64 / ms * 1000:,.0f} tokens/s, "
          f"train loss {losses['train']:.4f}, val loss {losses['val']:.4f} (200 eval batches)")
    return model


def torch_step(net, topt, data, it, oc, rng, torch, B=12, T=64):
    from torch_gpt import gpt_forward
    params, config = net
    x, y = get_batch(data, T, B, rng)
    _, loss = gpt_forward(params, torch.from_numpy(x), torch.from_numpy(y), config)
    topt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params.values(), oc.grad_clip)
    for g in topt.param_groups:
        g["lr"] = lr_schedule(it, oc.learning_rate, oc.min_lr, oc.warmup_iters, oc.lr_decay_iters)
    topt.step()
    return loss.item()


def torch_full_run(cfg, splits, iters, oc):
    """The same model, init, batches and schedule in PyTorch; val loss on the same eval batches."""
    import torch
    from torch_gpt import adamw, gpt_forward, params_from_minillm
    torch.set_num_threads(blas_threads() or torch.get_num_threads())
    params = params_from_minillm(GPT(cfg, seed=1337))
    net, topt = (params, cfg), adamw(params, oc)
    rng = np.random.default_rng(1337)
    for it in range(iters):
        torch_step(net, topt, splits["train"], it, oc, rng, torch)
    erng, losses = np.random.default_rng(0), {}
    with torch.no_grad():
        for name in ("train", "val"):
            losses[name] = np.mean([
                gpt_forward(params, *map(torch.from_numpy, get_batch(splits[name], 64, 12, erng)),
                            cfg)[1].item() for _ in range(200)])
    print(f"PyTorch, same model and batches, {iters} iterations: train loss {losses['train']:.4f}, "
          f"val loss {losses['val']:.4f} (200 eval batches)")


def side_by_side(cfg, data, oc, rounds, steps):
    try:
        import torch
        from torch_gpt import adamw, params_from_minillm
    except ImportError:
        print("torch not installed: PyTorch comparison skipped")
        return
    threads = blas_threads() or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = GPT(cfg, seed=0)
    params = params_from_minillm(model)
    net, topt = (params, cfg), adamw(params, oc)
    opt = AdamW.from_config(model.params, oc)
    rng, trng = np.random.default_rng(0), np.random.default_rng(0)
    ours, theirs = [], []
    for r in range(rounds):
        for it in range(steps):
            t0 = time.perf_counter()
            minillm_step(model, opt, data, it, oc, rng)
            ours.append(time.perf_counter() - t0)
        for it in range(steps):
            t0 = time.perf_counter()
            torch_step(net, topt, data, it, oc, trng, torch)
            theirs.append(time.perf_counter() - t0)
    a, b = 1000 * np.median(ours[steps // 2:]), 1000 * np.median(theirs[steps // 2:])
    print(f"training iteration, {rounds} alternating rounds of {steps} steps, {threads} threads each "
          f"(torch {torch.__version__}):")
    print(f"  minillm {a:.1f} ms/it | PyTorch {b:.1f} ms/it | ratio minillm/PyTorch {a / b:.2f}x")


def generation(model, tokenizer, n):
    prompt = tokenizer.encode("ROMEO:")
    for label, kw in (("KV cache", dict(use_cache=True)), ("no cache", dict(use_cache=False))):
        t0 = time.perf_counter()
        list(generate(model, prompt, n, greedy=True, **kw))
        long = n / (time.perf_counter() - t0)
        inside = model.config.block_size - len(prompt)
        t0 = time.perf_counter()
        list(generate(model, prompt, inside, greedy=True, **kw))
        short = inside / (time.perf_counter() - t0)
        print(f"  {label}: {short:,.0f} tokens/s within the context window ({inside} tokens), "
              f"{long:,.0f} tokens/s for {n} tokens (window slides past {model.config.block_size})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000, help="full training iterations (0 = skip)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--steps", type=int, default=20, help="steps per timing round")
    ap.add_argument("--tokens", type=int, default=500, help="tokens to generate")
    ap.add_argument("--data", default=None, help="a text file (default: Tiny Shakespeare)")
    ap.add_argument("--torch-full", action="store_true", help="also train the PyTorch model fully")
    args = ap.parse_args()
    keep_freed_memory()
    text, desc = load_text(args.data)
    tokenizer = CharTokenizer.from_text(text)
    splits = dict(zip(("train", "val"), split(tokenizer.encode_array(text))))
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size)
    oc = OptimConfig()
    print(f"data: {desc}; model: {GPT(cfg).num_params():,} parameters; BLAS threads: {blas_threads()}")
    model = full_run(cfg, splits, args.iters, oc) if args.iters else GPT(cfg, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS of this process so far, before torch): {peak:.0f} MiB")
    print(f"generation, greedy, prompt 'ROMEO:'{' (untrained model)' if not args.iters else ''}:")
    generation(model, tokenizer, args.tokens)
    side_by_side(cfg, splits["train"], oc, args.rounds, args.steps)
    if args.torch_full and args.iters:
        torch_full_run(cfg, splits, args.iters, oc)


if __name__ == "__main__":
    main()
