"""minillm against nanoGPT on this machine: training iterations, sampling, GPT-2-sized generation.

    python benchmarks/bench_speed.py                    # every figure of the README's speed table
    python benchmarks/bench_speed.py train --T 64 256   # only the training iteration
    python benchmarks/bench_speed.py sample
    python benchmarks/bench_speed.py gpt2
    python benchmarks/bench_speed.py run                # a 2000-iteration run, wall time

The peer is nanoGPT's own model.py from ../shared/peers/nanogpt/ beside the checkout (imported,
never copied; see its README); without it, the project's PyTorch model (reference/torch_gpt.py)
takes its place and the output says so. Every measurement runs in a fresh process of its own,
and the two sides alternate, round after round, because a shared machine's speed drifts by tens
of percent within minutes: only ratios of interleaved runs mean anything. Each line gives the
median over the rounds of each process's median, and the ratio minillm / peer of those medians
(below 1: minillm is faster).

What is timed, on the CPU "baby GPT" (4 layers, 4 heads, 128 channels, batch 12, vocab 65):
- train: one iteration as the train command runs it (batch, forward, backward, clipping,
  AdamW: minillm.training.train.train_loop itself) against nanoGPT's train.py step (forward,
  backward, clip_grad_norm_, AdamW step, zero_grad), at context T, with 1 and 2 threads (minillm:
  --workers 1 or 2; the peer: torch.set_num_threads), the peer with bias=True (like for like) and
  bias=False (as nanoGPT ships).
- sample: 500 new characters from a 1-character prompt (the window slides past the context of
  64 after 63 tokens) and 60 (inside the window, where minillm's KV cache applies; nanoGPT's
  generate has none), greedy, with 1 and 2 threads (--threads); tokens per second.
- gpt2: a GPT-2-124M-shaped model with random weights, an 8-token prompt, 100 greedy tokens:
  the prompt's forward pass (prefill, the best of 3, since the first call also warms up) and
  the median decode step, reported apart.
- run: the train command's 2000 iterations (evaluation every 250 as the command does) against
  nanoGPT's loop for 2000 iterations with the same evaluation, wall time.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "nanogpt"


# ----------------------------------------------------------------------------------------------
# The workers: each runs in its own process and prints one JSON line
# ----------------------------------------------------------------------------------------------

def corpus():
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from minillm.tokenizers import CharTokenizer
    from minillm.training.data import load_text, split
    text, _ = load_text()
    tokenizer = CharTokenizer.from_text(text)
    train, val = split(tokenizer.encode_array(text))
    return tokenizer, np.asarray(train), np.asarray(val)


def peer_model(T, bias, n_layer=4, n_head=4, n_embd=128, vocab=65):
    """nanoGPT's GPT (or the project's PyTorch model when nanoGPT is not beside the checkout)."""
    import torch
    if (PEER / "model.py").is_file():
        sys.path.insert(0, str(PEER))
        from model import GPT as NanoGPT, GPTConfig as NanoConfig
        return NanoGPT(NanoConfig(block_size=T, vocab_size=vocab, n_layer=n_layer, n_head=n_head,
                                  n_embd=n_embd, dropout=0.0, bias=bias)), "nanoGPT"
    sys.path.insert(0, str(ROOT / "reference"))
    from minillm import GPT, GPTConfig
    from torch_gpt import gpt_forward, params_from_minillm
    config = GPTConfig(vocab_size=vocab, block_size=T, n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd)
    params = params_from_minillm(GPT(config), dtype=torch.float32)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v.detach())
                                             for k, v in params.items()})

        def forward(self, idx, targets=None):
            named = {k.replace("/", "."): v for k, v in self.p.items()}
            return gpt_forward(named, idx, targets, config)

        def configure_optimizers(self, wd, lr, betas, device):
            decay = [p for p in self.parameters() if p.dim() >= 2]
            rest = [p for p in self.parameters() if p.dim() < 2]
            return torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                      {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)
    return Reference(), "reference/torch_gpt.py"


def work_train_minillm(T, threads, steps):
    import numpy as np
    from threadpoolctl import threadpool_limits
    from minillm import GPT, GPTConfig, OptimConfig
    from minillm.core.optim import AdamW
    from minillm.training.malloc import keep_freed_memory
    from minillm.training.train import TrainConfig, new_state, train_loop
    keep_freed_memory()
    threadpool_limits(threads)
    _, train, val = corpus()
    model = GPT(GPTConfig(block_size=T), seed=1337)
    optim = OptimConfig()
    run = TrainConfig(max_iters=steps, eval_interval=10 * steps, eval_iters=1, workers=threads)

    class Times:
        times = []

        def update(self, it, loss, lr, dt):
            self.times.append(dt)

        def message(self, text):
            pass
    times = Times()
    train_loop(model, AdamW.from_config(model.params, optim), {"train": train, "val": val}, run,
               optim, new_state(run.seed), lambda state: None, progress=times)
    return {"ms": 1000.0 * float(np.median(times.times[steps // 4:]))}


def work_train_peer(T, threads, steps, bias):
    import numpy as np
    import torch
    from minillm.training.data import get_batch
    torch.set_num_threads(threads)
    torch.manual_seed(1337)
    _, train, _ = corpus()
    model, name = peer_model(T, bias)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    rng, times = np.random.default_rng(1337), []
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = get_batch(train, T, 12, rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"ms": 1000.0 * float(np.median(times[steps // 4:])), "peer": name}


def trained_minillm():
    """The baby GPT of notebooks/models/shakespeare-char (4 layers, 128 channels, context 64)."""
    from minillm import load_checkpoint
    return load_checkpoint(ROOT / "notebooks" / "models" / "shakespeare-char").model


def work_sample_minillm(n, threads=1, repeats=3):
    from threadpoolctl import threadpool_limits
    from minillm import generate
    from minillm.training.malloc import keep_freed_memory
    threadpool_limits(threads)
    keep_freed_memory()                                # as python -m minillm sample does
    model = trained_minillm()
    best = min(timed(lambda: list(generate(model, [0], n, greedy=True))) for _ in range(repeats))
    return {"tok_s": n / best}


def work_sample_peer(n, threads=1, repeats=3):
    import torch
    torch.set_num_threads(threads)
    model, name = peer_model(64, bias=True)
    model.eval()
    idx = torch.zeros((1, 1), dtype=torch.long)
    with torch.no_grad():
        if name != "nanoGPT":
            return {"tok_s": float("nan"), "peer": name}
        best = min(timed(lambda: model.generate(idx, n, temperature=1.0, top_k=1))
                   for _ in range(repeats))
    return {"tok_s": n / best, "peer": name}


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def work_gpt2_minillm(n=100, threads=2):
    import numpy as np
    from threadpoolctl import threadpool_limits
    from minillm import GPT, GPTConfig
    from minillm.core.sampling import sample_next
    threadpool_limits(threads)
    model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
                seed=0)
    prompt = np.array([[464, 2068, 7586, 21831, 18045, 625, 262, 16931]])
    prefills = []
    for _ in range(3):                                 # the first call also pays for warming up
        cache = model.new_kv_cache()
        t0 = time.perf_counter()
        logits = model.forward(prompt, kv_cache=cache, last_only=True)[0, -1]
        prefills.append(time.perf_counter() - t0)
    prefill = min(prefills)
    steps = []
    for _ in range(n - 1):
        token = sample_next(logits, greedy=True)
        t0 = time.perf_counter()
        logits = model.forward(np.array([[token]]), kv_cache=cache)[0, -1]
        steps.append(time.perf_counter() - t0)
    return {"prefill_ms": 1000 * prefill, "decode_ms": 1000 * float(np.median(steps))}


def work_gpt2_peer(n=100, threads=2):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    model, name = peer_model(1024, bias=True, n_layer=12, n_head=12, n_embd=768, vocab=50257)
    model.eval()
    prompt = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931]])
    with torch.no_grad():
        prefills = []
        for _ in range(3):
            t0 = time.perf_counter()
            logits, _ = model(prompt)
            prefills.append(time.perf_counter() - t0)
        prefill = min(prefills)
        idx, steps = prompt, []
        for _ in range(n - 1):       # nanoGPT has no KV cache: each step reruns the context
            idx = torch.cat([idx, logits[:, -1:].argmax(-1)], dim=1)
            t0 = time.perf_counter()
            logits, _ = model(idx)
            steps.append(time.perf_counter() - t0)
    return {"prefill_ms": 1000 * prefill, "decode_ms": 1000 * float(np.median(steps)),
            "peer": name}


def work_run_minillm(iters):
    import shutil
    import tempfile
    out = tempfile.mkdtemp()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "minillm", "train", "--out-dir", out, "--overwrite",
                    "--max-iters", str(iters), "--sample-tokens", "0"], check=True,
                   capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out)
    return {"s": seconds}


def work_run_peer(iters, bias=True):
    import numpy as np
    import torch
    from minillm.training.data import get_batch
    from minillm.core.optim import lr_schedule
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    _, train, val = corpus()
    model, name = peer_model(64, bias)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    rng = np.random.default_rng(1337)

    def evaluate():
        model.eval()
        with torch.no_grad():
            for data in (train, val):
                for _ in range(20):
                    model(*map(torch.from_numpy, get_batch(data, 64, 12, rng)))
        model.train()
    for it in range(iters):
        if it % 250 == 0:
            evaluate()
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule(it, 1e-3, 1e-4, 100, 2000)
        x, y = get_batch(train, 64, 12, rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    evaluate()
    return {"s": time.perf_counter() - t0, "peer": name}


WORKERS = {name[len("work_"):]: fn for name, fn in globals().items() if name.startswith("work_")}


# ----------------------------------------------------------------------------------------------
# The driver: alternate fresh processes, report medians and ratios
# ----------------------------------------------------------------------------------------------

def measure(worker, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                   "")])}
    out = subprocess.run([sys.executable, __file__, "--worker", worker, json.dumps(kwargs)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def alternate(pairs, rounds, *keys):
    """pairs: {label: (worker, kwargs)} -> ({key: {label: [value per round]}}, the peer's name):
    each worker runs once a round, in alternating order; one run gives every key."""
    values = {key: {label: [] for label in pairs} for key in keys}
    peer = None
    for r in range(rounds):
        order = list(pairs) if r % 2 == 0 else list(reversed(pairs))
        for label in order:
            worker, kwargs = pairs[label]
            result = measure(worker, **kwargs)
            for key in keys:
                values[key][label].append(result[key])
            peer = result.get("peer", peer)
    return values, peer


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def spread(xs):
    return f"{median(xs):.1f} (min {min(xs):.1f}, max {max(xs):.1f})"


def bench_train(args):
    for T in args.T:
        for threads in args.threads:
            steps = args.steps if T <= 64 else max(20, args.steps // 3)
            v, peer = alternate({
                "minillm": ("train_minillm", dict(T=T, threads=threads, steps=steps)),
                "peer, bias=True": ("train_peer", dict(T=T, threads=threads, steps=steps,
                                                       bias=True)),
                "peer, bias=False": ("train_peer", dict(T=T, threads=threads, steps=steps,
                                                        bias=False)),
            }, args.rounds, "ms")
            v = v["ms"]
            print(f"training iteration, T={T}, {threads} thread(s), ms (median of "
                  f"{args.rounds} rounds); peer: {peer}")
            for label, xs in v.items():
                print(f"  {label:18} {spread(xs)}")
            for label in ("peer, bias=True", "peer, bias=False"):
                print(f"  ratio minillm / {label}: {median(v['minillm']) / median(v[label]):.2f}")


def bench_sample(args):
    for n, threads in [(n, t) for n in (500, 60) for t in args.threads]:
        v, peer = alternate({"minillm": ("sample_minillm", dict(n=n, threads=threads)),
                       "peer": ("sample_peer", dict(n=n, threads=threads))}, args.rounds, "tok_s")
        v = v["tok_s"]
        print(f"sampling {n} tokens, greedy, {threads} thread(s), tokens/s; peer: {peer}")
        print(f"  minillm {spread(v['minillm'])} | peer {spread(v['peer'])} | ratio minillm / "
              f"peer {median(v['minillm']) / median(v['peer']):.2f} (above 1: minillm faster)")


def bench_gpt2(args):
    values, peer = alternate({"minillm": ("gpt2_minillm", {}), "peer": ("gpt2_peer", {})},
                             max(2, args.rounds // 2), "prefill_ms", "decode_ms")
    for key, what in (("prefill_ms", "prefill of 8 tokens (best of 3)"),
                      ("decode_ms", "decode step")):
        v = values[key]
        print(f"GPT-2 124M shape, {what}, ms, 2 threads; peer: {peer} (no KV cache)")
        print(f"  minillm {spread(v['minillm'])} | peer {spread(v['peer'])} | ratio "
              f"{median(v['minillm']) / median(v['peer']):.2f}")


def bench_run(args):
    v, peer = alternate({"minillm": ("run_minillm", dict(iters=args.iters)),
                   "peer": ("run_peer", dict(iters=args.iters))}, max(1, args.rounds // 3), "s")
    v = v["s"]
    print(f"{args.iters}-iteration run, wall time in s; peer: {peer}")
    print(f"  minillm {spread(v['minillm'])} | peer {spread(v['peer'])} | ratio "
          f"{median(v['minillm']) / median(v['peer']):.2f}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(WORKERS[sys.argv[2]](**json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", default=["train", "sample", "gpt2"],
                        help="train, sample, gpt2, run")
    parser.add_argument("--T", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2000)
    args = parser.parse_args()
    for what in args.what:
        {"train": bench_train, "sample": bench_sample, "gpt2": bench_gpt2,
         "run": bench_run}[what](args)


if __name__ == "__main__":
    main()
