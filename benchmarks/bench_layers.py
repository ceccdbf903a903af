"""Element-wise layers of the baby GPT, literal against fused: time per call on one thread.

    python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --rows 768 --rounds 9

Shapes: the MLP's hidden activation (rows, 4 C) with C = 128 (rows = 64: one window while
sampling; rows = 768: a training batch of 12 x 64), float32, one BLAS thread (set here).

Each round times every variant once, in a rotated order, so all of them see the same machine
load; the medians over rounds and the ratio to the literal GELU are printed. Variants:

    literal       gelu_forward: 0.5 x (1 + tanh(z)) as the formula reads
    fused, tanh   gelu_fused_forward: the same steps written into one buffer
    fused, exp    the same buffer with s = 1 / (1 + exp(-2z)) (the sigmoid form), for reference
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"                             # before NumPy loads its BLAS

import numpy as np                                     # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm.core.layers import (GELU_A, GELU_B, gelu_forward,                 # noqa: E402
                                 gelu_fused_forward)


def gelu_fused_exp(x):
    """The fused GELU through exp: s = sigmoid(2z) = 1 / (1 + exp(-2z))."""
    s = x * x
    s *= GELU_B
    s += GELU_A
    s *= x                                             # -2z
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1.0
    np.reciprocal(s, out=s)
    return x * s, s


def per_call(fn, x, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - t0) / calls


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 768])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    variants = {"literal": gelu_forward, "fused, tanh": gelu_fused_forward,
                "fused, exp": gelu_fused_exp}
    for rows in args.rows:
        x = np.random.default_rng(0).standard_normal((rows, 512)).astype(np.float32)
        assert np.allclose(gelu_fused_forward(x)[0], gelu_forward(x)[0], atol=1e-6)
        calls = max(10, 200_000 // rows)
        times = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds + 1):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t = per_call(variants[name], x, calls)
                if r:                                  # round 0 is a warm-up
                    times[name].append(t)
        literal = statistics.median(times["literal"])
        print(f"GELU on ({rows}, 512) float32, 1 thread, median of {args.rounds} rounds")
        for name in names:
            med = statistics.median(times[name])
            print(f"  {name:12s} {1e6 * med:8.1f} us   ratio to literal {med / literal:.2f}")


if __name__ == "__main__":
    main()
