"""Grade exercise notebooks: ``python -m minillm grade PATH... [--csv FILE] [--timeout SECONDS]``.

Each notebook (a PATH, or every ``*.ipynb`` under a folder PATH) runs top to bottom in a fresh
kernel (nbclient) with its own folder as working directory, past cells that raise (as nbgrader's
autograde does: one broken cell costs only what depends on it), within a time limit for the
whole notebook. The kernel gets the environment variable ``MINILLM_EXERCISES_LOG`` naming a
temporary file, to which every ``check()`` appends one JSON line (exercise, status, errors,
reason...); the last check of each exercise counts. The kernel imports the same minillm as the
grader (its folder goes first on the kernel's PYTHONPATH).

The columns are the exercises the notebooks call ``check("name", ...)`` on (found in their
source, so a notebook that stops early still shows what it missed), or ``--exercises``. A cell
reads passed, failed <error>, not done, error <exception>, timed out, not run (the notebook
stopped before it) or missing (no check of it in that notebook). The score counts the passed
exercises. A notebook that raises, never finishes or was handed in untouched still gets its
row; the command exits 0 whenever grading itself worked.

Grading trusts the notebook: it runs the student's code with the grader's rights and reads what
the kernel wrote, so it is a teaching aid, not an exam sandbox.
"""
import csv
import io
import json
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.fields import check_fields
from ..formats.files import atomic_write_text
from .registry import LOG_ENV

PACKAGE_PARENT = Path(__file__).resolve().parents[2]   # the folder holding this minillm
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([A-Za-z_][\w.]*)["']""")


@dataclass
class GradeConfig:
    """How to grade (the notebooks themselves are positional arguments)."""
    csv: str = field(default=None, metadata={
        "help": "also write the table to this CSV file (for a gradebook)"})
    timeout: float = field(default=120.0, metadata={
        "help": "time limit in seconds for one whole notebook", "above": 0.0})
    exercises: str = field(default=None, metadata={
        "help": "the columns, comma-separated; when not given, every exercise the notebooks "
                "check"})

    def __post_init__(self):
        check_fields(self)


@dataclass
class NotebookResult:
    path: Path
    status: str = "ok"                             # "ok", "errors in cells 3, 5", "timed out ..."
    records: dict = field(default_factory=dict)    # exercise -> the last JSON record of its check
    expected: list = field(default_factory=list)   # exercises checked in the source, in order
    cells: dict = field(default_factory=dict)      # exercise -> its table text
    seconds: float = 0.0

    def cell(self, name):
        return self.cells.get(name, "missing")

    def score(self, columns):
        return sum(self.cell(n) == "passed" for n in columns)


def exercises_in(nb):
    r"""The exercise names of the check("name", ...) calls in the code cells, in order.

    >>> from nbformat.v4 import new_code_cell, new_notebook
    >>> exercises_in(new_notebook(cells=[new_code_cell('check("a", f)\ncheck( "b", g)')]))
    ['a', 'b']
    """
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            names += [n for n in CHECK_CALL.findall(cell.source) if n not in names]
    return names


def _record_text(rec):
    status, reason = rec.get("status", "error"), rec.get("reason") or ""
    return f"{status} {reason}" if status in ("failed", "error") and reason else status


def _notebook_tools():
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellTimeoutError, DeadKernelError
    except ImportError as e:
        raise ValueError(f"grading runs notebooks with nbclient and nbformat ({e}); install "
                         "them with: pip install nbclient nbformat ipykernel") from None
    return nbformat, NotebookClient, CellTimeoutError, DeadKernelError


def _kernel_env(log):
    env = dict(os.environ)
    env[LOG_ENV] = log
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT),
                                                      env.get("PYTHONPATH")]))
    return env


def run_notebook(path, timeout=120.0):
    """Run one notebook in a fresh kernel and collect its checks. Never raises for what the
    notebook does; returns a NotebookResult."""
    nbformat, NotebookClient, CellTimeoutError, DeadKernelError = _notebook_tools()
    path = Path(path)
    result = NotebookResult(path)
    start = time.monotonic()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:                                  # noqa: BLE001 - a broken hand-in
        result.status = f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        return result
    result.expected = exercises_in(nb)
    fd, log = tempfile.mkstemp(prefix="minillm-grade-", suffix=".jsonl")
    os.close(fd)
    deadline = start + timeout
    current = [None]                                        # index of the running cell

    def on_cell_start(cell, cell_index):
        current[0] = cell_index

    client = NotebookClient(
        nb, kernel_name="python3", allow_errors=True, shutdown_kernel="immediate",
        timeout_func=lambda cell: max(1, math.ceil(deadline - time.monotonic())),
        on_cell_start=on_cell_start, resources={"metadata": {"path": str(path.parent)}})
    stopped = None                                          # cell index where the run stopped
    try:
        client.execute(env=_kernel_env(log), stderr=subprocess.DEVNULL)
    except CellTimeoutError:
        stopped = current[0]
        result.status = f"timed out in cell {stopped + 1} (limit {timeout:g} s)"
    except DeadKernelError:
        stopped = current[0]
        result.status = f"kernel died in cell {(stopped or 0) + 1}"
    except Exception as e:                                  # noqa: BLE001 - e.g. no kernel
        stopped = current[0] if current[0] is not None else -1
        result.status = f"could not run: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    finally:
        result.records = _read_log(log)
    _fill_cells(result, nb, stopped)
    result.seconds = time.monotonic() - start
    return result


def _read_log(log):
    records = {}
    try:
        with open(log, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records[rec["exercise"]] = rec
                except (ValueError, KeyError, TypeError):
                    pass                                    # a torn or foreign line
    finally:
        os.unlink(log)
    return records


def _fill_cells(result, nb, stopped):
    """The table text of every exercise, from its record or from where the run stopped."""
    errors = {}                                             # cell index -> exception name
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                errors[i] = out.get("ename", "error")
    if errors and stopped is None:
        result.status = "errors in cells " + ", ".join(str(i + 1) for i in errors)
    for name in result.expected + [n for n in result.records if n not in result.expected]:
        if name in result.records:
            result.cells[name] = _record_text(result.records[name])
            continue
        where = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and name in CHECK_CALL.findall(c.source)]
        if any(i in errors for i in where):
            result.cells[name] = f"error {errors[next(i for i in where if i in errors)]}"
        elif stopped is not None and stopped in where:
            result.cells[name] = "timed out"
        else:
            result.cells[name] = "not run"


def find_notebooks(paths):
    """(the notebooks named or under the folders named, sorted; the paths that do not exist)."""
    found, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.is_file():
            found.append(p)
        else:
            missing.append(p)
    return list(dict.fromkeys(found)), missing


def table_rows(results, columns):
    """Header and rows of the table: notebook, one column per exercise, score, status."""
    names = [r.path.name for r in results]
    labels = [str(r.path) if names.count(r.path.name) > 1 else r.path.name for r in results]
    rows = [["notebook", *columns, "score", "status"]]
    for label, r in zip(labels, results):
        rows.append([label, *(r.cell(n) for n in columns),
                     f"{r.score(columns)}/{len(columns)}", r.status])
    return rows


def format_table(rows):
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def grade(paths, timeout=120.0, exercises=None, progress=None):
    """Run every notebook; returns (results, columns, rows). ``progress``: a file to report
    each notebook on as it is graded."""
    notebooks, missing = find_notebooks(paths)
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(map(str, missing))}")
    if not notebooks:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {', '.join(map(str, paths))}")
    _notebook_tools()
    results = []
    for nb_path in notebooks:
        r = run_notebook(nb_path, timeout)
        if progress:
            print(f"graded {nb_path} in {r.seconds:.1f} s: {r.status}", file=progress,
                  flush=True)
        results.append(r)
    columns = list(exercises or [])
    if not columns:
        for r in results:
            for n in [*r.expected, *r.records]:
                if n not in columns:
                    columns.append(n)
    return results, columns, table_rows(results, columns)


def grade_command(paths, config, out, progress=None):
    """What ``python -m minillm grade`` does: grade, print the table to ``out``, write the CSV.
    Returns 0 (errors in grading itself raise ValueError / OSError)."""
    exercises = ([e.strip() for e in config.exercises.split(",") if e.strip()]
                 if config.exercises else None)
    _, _, rows = grade(paths, config.timeout, exercises, progress=progress)
    print(format_table(rows), file=out)
    if config.csv:
        atomic_write_text(config.csv, csv_text(rows))
    return 0
