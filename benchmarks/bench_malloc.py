"""What keeping freed memory (minillm/malloc.py) is worth: one forward + backward pass of the
default model, in fresh processes with and without it, alternating.

    python benchmarks/bench_malloc.py [--rounds 3]

mallopt settings cannot be undone inside a process, so each measurement is its own process.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

STEP = """
import sys, time, numpy as np
sys.path.insert(0, {root!r})
if {keep}:
    from minillm.training.malloc import keep_freed_memory
    keep_freed_memory()
from minillm import GPT, GPTConfig
model = GPT(GPTConfig(), seed=0)
rng = np.random.default_rng(0)
idx, targets = rng.integers(0, 65, (12, 64)), rng.integers(0, 65, (12, 64))
times = []
for _ in range(25):
    t0 = time.perf_counter()
    model.loss_and_grads(idx, targets)
    times.append(time.perf_counter() - t0)
print(1000 * np.median(times[5:]))
"""


def measure(keep):
    code = STEP.format(root=str(ROOT), keep=keep)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    rounds = ap.parse_args().rounds
    default, kept = [], []
    for _ in range(rounds):
        default.append(measure(False))
        kept.append(measure(True))
    a, b = np.median(default), np.median(kept)
    print(f"forward + backward, default config: glibc defaults {a:.1f} ms | keep_freed_memory "
          f"{b:.1f} ms | ratio {b / a:.2f}  ({rounds} alternating rounds)")


if __name__ == "__main__":
    main()
