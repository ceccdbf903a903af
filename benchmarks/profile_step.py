"""Where the time goes: a profile of the baby GPT's training step and of a sampling step.

    python benchmarks/profile_step.py
    python benchmarks/profile_step.py --rows 12 --steps 40
    python benchmarks/profile_step.py --T 256

One BLAS thread (set here). ``train``: forward + backward of one shard as each data-parallel
worker runs it (half of the batch of 12 by default: --rows 6). ``sample``: one forward pass of
a full 64-token window with ``last_only``, what each generated token costs once the window
slides. The table groups the functions of minillm.core by kind (matrix multiplies,
element-wise layers, attention, the rest) and gives each group's share of the time and its
milliseconds per step: each layer function's time including the NumPy calls it makes (under
cProfile, so a little more than without it); "the rest" is everything between the layers.
"""
import argparse
import cProfile
import os
import pstats
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"                             # before NumPy loads its BLAS

import numpy as np                                     # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm import GPT, GPTConfig                     # noqa: E402
from minillm.training.malloc import keep_freed_memory  # noqa: E402

GROUPS = {
    "matrix multiplies (linear, lm_head)": ("linear_forward", "linear_backward", "lm_head_"),
    "GELU": ("gelu",),
    "LayerNorm": ("layernorm",),
    "attention core (scores, mask, softmax)": ("sdpa_", "tiled_attention_"),
    "embeddings, cross-entropy": ("embedding_", "position_embedding_", "cross_entropy_"),
}
LEAVES = ("linear_forward", "linear_backward", "lm_head_forward", "lm_head_backward",
          "gelu_fused_forward", "gelu_fused_backward", "layernorm_forward", "layernorm_backward",
          "sdpa_forward", "sdpa_backward", "tiled_attention_forward", "tiled_attention_backward",
          "embedding_forward", "embedding_backward", "position_embedding_forward",
          "position_embedding_backward", "cross_entropy_forward", "cross_entropy_backward")


def profile(fn, steps):
    fn()                                               # warm up
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    stats = pstats.Stats(prof).stats   # (file, line, name) -> (calls, ..., tottime, cumtime, ...)
    total = sum(v[2] for v in stats.values())
    shares = dict.fromkeys(GROUPS, 0.0)
    for (_, _, name), v in stats.items():          # a layer's time with the NumPy calls it makes
        if name in LEAVES:
            group = next(g for g, prefixes in GROUPS.items() if name.startswith(prefixes))
            shares[group] += v[3]
    shares["the rest (NumPy glue, Python)"] = total - sum(shares.values())
    return total / steps, shares


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6, help="sequences of the training shard")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--T", type=int, default=64, help="context length of the training step")
    args = parser.parse_args()
    keep_freed_memory()
    model = GPT(GPTConfig(vocab_size=65, block_size=args.T), seed=1337)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, 65, size=(args.rows, args.T)) for _ in range(2))
    window = rng.integers(0, 65, size=(1, 64))
    for what, fn in ((f"train: forward + backward of {args.rows} x {args.T}",
                      lambda: model.loss_and_grads(x, y)),
                     ("sample: one 64-token window, last_only",
                      lambda: model.forward(window, last_only=True))):
        per_step, shares = profile(fn, args.steps)
        total = sum(shares.values())
        print(f"{what}: {1000 * per_step:.2f} ms per step (profiled, 1 thread)")
        for group, t in shares.items():
            print(f"  {group:40s} {100 * t / total:5.1f} %  {1000 * t / args.steps:7.2f} ms")


if __name__ == "__main__":
    main()
