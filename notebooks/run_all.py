"""Re-execute every notebook in this folder in place, top to bottom, from a clean kernel.

    python notebooks/run_all.py            # all of them
    python notebooks/run_all.py 03 10      # the ones whose names start with 03 or 10

Outputs are saved into the notebooks, so they read well on a code host without running.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def notebooks(prefixes=()):
    paths = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in paths if not prefixes or p.name.startswith(tuple(prefixes))]


def execute(path, timeout=600):
    """Run one notebook with its own folder as the working directory; return (nb, seconds)."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb, time.perf_counter() - start


def main(prefixes):
    for path in notebooks(prefixes):
        nb, seconds = execute(path)
        nbformat.write(nb, path)
        print(f"{path.name}: {seconds:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
