"""Greedy generation speed of a GPT-2-124M-sized model: minillm (NumPy) against Hugging Face
Transformers (PyTorch, CPU), on the same weights and the same prompt.

    python benchmarks/bench_gpt2_generate.py [--new-tokens 100] [--rounds 3]

The model has GPT-2 small's shape (12 layers, 12 heads, 768 channels, 50257 tokens, 1024
positions) and random GPT-2-initialised weights (``GPT(cfg, seed=0)``); no download. Both sides
decode greedily with a KV cache from an 8-token prompt. minillm's weights are written with
``save_pretrained`` and read back by ``GPT2LMHeadModel.from_pretrained``, the two are timed in
alternation (warm-up first) and the medians are compared. PyTorch gets as many threads as NumPy's
BLAS has, so both use the same cores.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))    # run from a checkout

from minillm import GPT, GPTConfig                                # noqa: E402
from minillm.core.sampling import generate                             # noqa: E402

GPT2_SMALL = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)


def blas_threads():
    """How many threads NumPy's BLAS uses (threadpoolctl if installed, else the environment)."""
    try:
        from threadpoolctl import threadpool_info
        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        if counts:
            return max(counts), "threadpoolctl"
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]), var
    return os.cpu_count(), "os.cpu_count()"


def time_minillm(model, prompt, n):
    start = time.perf_counter()
    tokens = list(generate(model, prompt, n, greedy=True))         # KV cache on by default
    return time.perf_counter() - start, tokens


def time_hf(torch, hf, prompt, n, pad):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        start = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=n, min_new_tokens=n, pad_token_id=pad)
        seconds = time.perf_counter() - start
    return seconds, out[0, len(prompt):].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.new_tokens

    threads, source = blas_threads()
    print(f"NumPy {np.__version__}, BLAS threads: {threads} (from {source})")
    model = GPT(GPTConfig(**GPT2_SMALL), seed=0)
    print(f"model: GPT-2 small shape, {model.num_params() / 1e6:.1f}M parameters, float32, "
          "random GPT-2 init (seed 0)")
    prompt = np.random.default_rng(1).integers(0, GPT2_SMALL["vocab_size"], size=8).tolist()
    print(f"prompt: {prompt} (8 tokens), {n} new tokens, greedy, KV cache\n")

    try:
        import torch
        import transformers
    except ImportError:
        torch = None
        print("torch/transformers not installed: timing minillm only")
    hf = None
    if torch is not None:
        torch.set_num_threads(threads)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}: "
              f"torch.set_num_threads({threads}) to match NumPy's BLAS")
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
        print(f"Transformers attention implementation: {hf.config._attn_implementation}\n")

    time_minillm(model, prompt, 5)                                  # warm-up
    if hf is not None:
        time_hf(torch, hf, prompt, 5, pad=0)
    ours, theirs, ours_tokens, their_tokens = [], [], None, None
    for r in range(args.rounds):
        seconds, ours_tokens = time_minillm(model, prompt, n)
        ours.append(n / seconds)
        line = f"round {r + 1}: minillm {ours[-1]:6.1f} tokens/s"
        if hf is not None:
            seconds, their_tokens = time_hf(torch, hf, prompt, n, pad=0)
            theirs.append(n / seconds)
            line += f"   transformers {theirs[-1]:6.1f} tokens/s"
        print(line)

    print(f"\nminillm      median {statistics.median(ours):6.1f} tokens/s")
    if hf is not None:
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"transformers median {statistics.median(theirs):6.1f} tokens/s")
        print(f"ratio minillm / transformers: {ratio:.2f}")
        same = ours_tokens == their_tokens
        print(f"same {n} tokens: {same}")
        if not same:
            k = next(i for i, (a, b) in enumerate(zip(ours_tokens, their_tokens)) if a != b)
            print(f"  first difference at new token {k}: {ours_tokens[k]} vs {their_tokens[k]}")


if __name__ == "__main__":
    main()
