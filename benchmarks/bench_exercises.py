"""Time the exercise checks and the grading of notebooks.

    python benchmarks/bench_exercises.py              # every check, and grading two notebooks
    python benchmarks/bench_exercises.py --no-grade   # only the checks

Prints, for every exercise, the time of its first check (which draws the cases and computes
the numerical gradients) and of a second one (those are kept), the total over all exercises
and over every planted mistake, and then the time `python -m minillm grade` takes for one
solved and one untouched notebook (kernel start included).
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from minillm.exercises import EXERCISES, check  # noqa: E402
from minillm.exercises.grade import grade  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-grade", action="store_true", help="skip the grading part")
    parser.add_argument("--notebook", default="08_training", help="the notebook to grade")
    args = parser.parse_args(argv)

    first_total = second_total = 0.0
    print(f"{'exercise':28} {'first check':>12} {'again':>8}")
    for name, ex in EXERCISES.items():
        r, first = timed(lambda: check(name, ex.reference, verbose=False))
        _, second = timed(lambda: check(name, ex.reference, verbose=False))
        assert r.passed, r.message
        first_total, second_total = first_total + first, second_total + second
        print(f"{name:28} {first:11.3f}s {second:7.3f}s")
    print(f"{f'all {len(EXERCISES)} exercises':28} {first_total:11.2f}s "
          f"{second_total:7.2f}s")
    n_mistakes = sum(len(ex.mistakes) for ex in EXERCISES.values())
    _, mistakes = timed(lambda: [check(n, m.fn, verbose=False)
                                 for n, ex in EXERCISES.items() for m in ex.mistakes])
    print(f"all {n_mistakes} planted mistakes: {mistakes:.2f}s")
    if args.no_grade:
        return 0
    with tempfile.TemporaryDirectory() as folder:
        for kind, source in (("solved", REPO / "exercises" / "solutions"),
                             ("untouched", REPO / "exercises")):
            path = Path(folder) / f"{kind}.ipynb"
            shutil.copy(source / f"{args.notebook}.ipynb", path)
            (results, _, _), seconds = timed(lambda: grade([path]))
            print(f"grading the {kind} {args.notebook}: {seconds:.1f}s "
                  f"({results[0].score(results[0].expected)}/{len(results[0].expected)} passed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
