"""Forward+backward time and memory of tiled (FlashAttention-2) vs plain causal attention.

    python benchmarks/bench_tiled_attention.py
    python benchmarks/bench_tiled_attention.py --T 256 1024 --blocks 64x64 128x128 --seconds 10

Shapes of the baby GPT's attention: B=12, nh=4, hs=32, float32, S = T, one BLAS thread (set
here, before NumPy is imported). ``keep_freed_memory()`` is on, as in ``python -m minillm``.

Timing: every round runs every implementation once, in a rotated order, so all of them see the
same machine load; a warm-up round is discarded. The machine is shared and noisy, so only ratios
are reported: time(tiled) / time(plain) of the minima, of the medians, and the median of the
per-round ratios (< 1 means tiled is faster). Plain's own median is printed for scale only.

Memory (separate pass, tracemalloc, which sees NumPy's allocations): bytes the cache holds beyond
the layer's inputs and output, and the peak allocated during forward+backward above what existed
before (the inputs and dout).

Kernel share: the part of the CPU time spent in the kernel, mostly zeroing the fresh pages of
the big (T, S) arrays, which plain attention pays on every call.

Work: the fraction of the T x S score matrix that the tiled version computes (the visited tiles),
against plain, which computes, exponentiates and multiplies all of it, masked half included.
"""
import argparse
import os
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"                             # before NumPy loads its BLAS

import numpy as np                                     # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm.core.attention import sdpa_backward, sdpa_forward                  # noqa: E402
from minillm.core.tiled_attention import (key_tiles, tiled_attention_backward,  # noqa: E402
                                          tiled_attention_forward)
from minillm.training.malloc import keep_freed_memory                           # noqa: E402

B, NH, HS = 12, 4, 32


def plain(q, k, v, dout):
    out, cache = sdpa_forward(q, k, v, causal=True)
    return out, cache, sdpa_backward(dout, cache)


def tiled(block_q, block_k):
    def run(q, k, v, dout):
        out, cache = tiled_attention_forward(q, k, v, block_q, block_k)
        return out, cache, tiled_attention_backward(dout, cache)
    run.__name__ = f"tiled {block_q}x{block_k}"
    return run


def inputs(T, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.normal(size=(B, NH, T, HS)).astype(dtype) for _ in range(4))
    return q, k, v, dout


def visited_fraction(T, S, block_q, block_k):
    """Share of the T x S scores inside the tiles the tiled version visits."""
    area = 0
    for i0 in range(0, T, block_q):
        i1 = min(i0 + block_q, T)
        area += sum((i1 - i0) * (j1 - j0) for j0, j1, _ in key_tiles(i0, i1, S - T, S, block_k))
    return area / (T * S)


def time_T(T, impls, dtype, seconds, min_repeats, max_repeats):
    """{name: [seconds per round]}, rounds interleaved; the number of rounds fits ``seconds``."""
    args = inputs(T, dtype)
    start = time.perf_counter()
    for f in impls:                                    # warm-up round, also sizes the run
        f(*args)
    per_round = time.perf_counter() - start
    repeats = int(min(max_repeats, max(min_repeats, seconds / per_round)))
    times = {f.__name__: [] for f in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for f in order:
            t0 = time.perf_counter()
            f(*args)
            times[f.__name__].append(time.perf_counter() - t0)
    return times


def memory_T(T, f, dtype):
    """(bytes in the cache beyond inputs and output, peak bytes during forward+backward)."""
    q, k, v, dout = inputs(T, dtype)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out, cache, grads = f(q, k, v, dout)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    held = [q, k, v, out]
    extra = sum(x.nbytes for x in cache if isinstance(x, np.ndarray) and not any(x is y for y in held))
    return extra, peak


def kernel_share_T(T, f, dtype, calls=3):
    """Share of the CPU time of forward+backward spent in the kernel (system time), after a
    warm-up call. It is mostly mapping and zeroing fresh pages: NumPy arrays above glibc's mmap
    threshold (32 MiB at most) get new pages on every call (as 2 MiB huge pages where NumPy can
    madvise them, so few page faults but the same zeroing)."""
    args = inputs(T, dtype)
    f(*args)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        f(*args)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return system / (user + system)


def mib(n):
    return f"{n / 2**20:9.1f}"


def kib(n):
    return f"{n / 2**10:9.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--blocks", nargs="+", default=["32x32", "64x64", "128x128", "256x256",
                                                        "512x512", "128x256", "256x128"],
                        help="tile sizes block_qxblock_k")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seconds", type=float, default=20.0, help="time budget per T")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--max-repeats", type=int, default=50)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    blocks = [tuple(int(n) for n in b.split("x")) for b in args.blocks]
    impls = [plain] + [tiled(bq, bk) for bq, bk in blocks]
    names = [f.__name__ for f in impls[1:]]
    print(f"NumPy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"keep_freed_memory: {keep_freed_memory()}")
    print(f"B={B}, nh={NH}, hs={HS}, S=T, {dtype.name}; forward+backward\n")

    print("time(tiled) / time(plain): min-ratio / median-ratio / median of per-round ratios")
    print(f"{'T':>5} {'rounds':>6} {'plain med':>10}  " + "  ".join(f"{n:>20}" for n in names))
    results = {}
    for T in args.T:
        times = time_T(T, impls, dtype, args.seconds, args.min_repeats, args.max_repeats)
        p = times["plain"]
        cells = []
        for n in names:
            t = times[n]
            paired = statistics.median(a / b for a, b in zip(t, p))
            cells.append(f"{min(t) / min(p):6.2f}/{statistics.median(t) / statistics.median(p):5.2f}"
                         f"/{paired:5.2f}")
        results[T] = times
        print(f"{T:>5} {len(p):>6} {statistics.median(p) * 1e3:8.1f}ms  " +
              "  ".join(f"{c:>20}" for c in cells), flush=True)

    print("\ngrowth with T: median time(T) / median time(T/2) (4.0 = quadratic)")
    print(f"{'T':>5} {'plain':>7}  " + "  ".join(f"{n:>15}" for n in names))
    for b in args.T:
        a = b // 2
        if b % 2 == 0 and a in results:
            growth = [statistics.median(results[b][n]) / statistics.median(results[a][n])
                      for n in ["plain"] + names]
            print(f"{b:>5} {growth[0]:7.2f}  " + "  ".join(f"{g:15.2f}" for g in growth[1:]))

    print("\nshare of the T x T scores computed (plain: 1.00 in the forward and again in the "
          "backward's T x T products)")
    print(f"{'T':>5}  " + "  ".join(f"{n:>15}" for n in names))
    for T in args.T:
        print(f"{T:>5}  " + "  ".join(f"{visited_fraction(T, T, bq, bk):15.3f}" for bq, bk in blocks))

    if args.no_memory:
        return
    print("\nmemory: cache beyond inputs+output (KiB) | peak allocated during forward+backward (MiB)")
    floor = "inputs are q, k, v, dout; the output and dq, dk, dv alone are 4 x B nh T hs"
    print(f"({floor})")
    print(f"{'T':>5} {'plain cache':>12} {'plain peak':>11}  " +
          "  ".join(f"{n + ' cache':>20} {'peak':>9}" for n in names))
    for T in args.T:
        row = []
        for f in impls:
            extra, peak = memory_T(T, f, dtype)
            row.append((extra, peak))
        out = f"{T:>5} {kib(row[0][0]):>12} {mib(row[0][1]):>11}  "
        out += "  ".join(f"{kib(e):>20} {mib(p):>9}" for e, p in row[1:])
        print(out, flush=True)

    print("\nkernel (system) share of the CPU time of forward+backward: mapping and zeroing pages")
    print(f"{'T':>5} {'plain':>8}  " + "  ".join(f"{n:>15}" for n in names))
    for T in args.T:
        shares = [kernel_share_T(T, f, dtype) for f in impls]
        print(f"{T:>5} {shares[0]:8.2f}  " + "  ".join(f"{x:15.2f}" for x in shares[1:]), flush=True)
    T = args.T[-1]
    grads_out = 4 * B * NH * T * HS * dtype.itemsize
    print(f"(at T={T}, output + dq + dk + dv = {mib(grads_out).strip()} MiB)")


if __name__ == "__main__":
    main()
