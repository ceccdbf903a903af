"""Generate the student notebooks from the solution notebooks (the solutions are the source).

    python exercises/make_student_notebooks.py             # solutions/X.ipynb -> X.ipynb
    python exercises/make_student_notebooks.py --check     # exit 1 if one is out of date
    python exercises/make_student_notebooks.py --execute   # first re-run the solutions in place
    python exercises/make_student_notebooks.py --execute exercises/solutions/07_adam.ipynb

nbgrader's conventions (``nbgrader generate_assignment``: ClearSolutions, ClearMarkingScheme,
ClearOutput), so a solution notebook is also an nbgrader source notebook:

- In code and markdown cells, a region from a line containing ``BEGIN SOLUTION`` to a line
  containing ``END SOLUTION`` (written ``### BEGIN SOLUTION`` / ``### END SOLUTION``) is replaced
  by the stub, indented like the BEGIN line: ``# YOUR CODE HERE`` + ``raise
  NotImplementedError()`` in code, ``YOUR ANSWER HERE`` in markdown.
- A cell marked as a solution in its metadata (``{"nbgrader": {"solution": true}}``) that has no
  region is replaced whole by the stub.
- ``=== BEGIN MARK SCHEME ===`` ... ``=== END MARK SCHEME ===`` regions (notes for graders) are
  deleted.
- Outputs and execution counts are cleared.

Nested or unclosed regions are errors, as in nbgrader. Writing is deterministic
(``nbformat.writes``), so a test compares the committed files with freshly generated ones.
"""
import argparse
import copy
import os
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOLUTIONS = HERE / "solutions"

BEGIN_SOLUTION, END_SOLUTION = "BEGIN SOLUTION", "END SOLUTION"
BEGIN_MARK_SCHEME, END_MARK_SCHEME = "BEGIN MARK SCHEME", "END MARK SCHEME"
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
TEXT_STUB = "YOUR ANSWER HERE"


def _replace_regions(source, begin, end, stub):
    """Replace each begin..end region (marker lines included) by ``stub`` (a list of lines,
    indented like the begin line; empty: delete). Returns (new source, number of regions)."""
    out, inside, count = [], False, 0
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r} regions:\n{source}")
            inside, count = True, count + 1
            indent = re.match(r"\s*", line).group(0)
            out += [indent + s for s in stub]
        elif end in line:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r}:\n{source}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}:\n{source}")
    return "\n".join(out), count


def strip_cell(cell):
    r"""The student version of one cell (a new cell; the input is left alone).

    >>> from nbformat.v4 import new_code_cell
    >>> print(strip_cell(new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n"
    ...                                "    ### END SOLUTION")).source)
    def f():
        # YOUR CODE HERE
        raise NotImplementedError()
    """
    cell = copy.deepcopy(cell)
    if cell.cell_type not in ("code", "markdown"):
        return cell
    stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
    source, _ = _replace_regions(cell.source, BEGIN_MARK_SCHEME, END_MARK_SCHEME, [])
    source, n = _replace_regions(source, BEGIN_SOLUTION, END_SOLUTION, stub.split("\n"))
    if n == 0 and cell.metadata.get("nbgrader", {}).get("solution"):
        source = stub
    cell.source = source
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
    return cell


def student_notebook(nb):
    """The student version of a solution notebook."""
    nb = copy.deepcopy(nb)
    nb.cells = [strip_cell(c) for c in nb.cells]
    nb.metadata.pop("celltoolbar", None)
    return nb


def student_text(solution_path):
    """The student notebook of ``solution_path``, as the text written to disk."""
    return nbformat.writes(student_notebook(nbformat.read(solution_path, as_version=4)))


def student_path(solution_path):
    """exercises/solutions/X.ipynb -> exercises/X.ipynb"""
    solution_path = Path(solution_path)
    return solution_path.parent.parent / solution_path.name


def solution_paths(paths=()):
    return [Path(p) for p in paths] or sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))


def execute_in_place(path, timeout=600):
    """Re-run a solution notebook from a clean kernel and save it with its outputs; the kernel
    imports the minillm of this checkout."""
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute(env=env)
    nbformat.write(nb, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("solutions", nargs="*", help="solution notebooks (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a student notebook is out of date")
    parser.add_argument("--execute", action="store_true",
                        help="re-run the solution notebooks in place first")
    args = parser.parse_args(argv)
    stale = []
    for path in solution_paths(args.solutions):
        if args.execute:
            execute_in_place(path)
        target, text = student_path(path), student_text(path)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    if args.check and stale:
        print("out of date (run python exercises/make_student_notebooks.py): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
