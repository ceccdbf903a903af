"""python -m minillm grade (minillm/exercises/grade.py): one row per notebook, whatever the
notebook does (solved, untouched, crashing, never-ending, dead, unreadable), the same table as
CSV, and exit 0 when grading itself worked. Notebooks run in real kernels here."""
import csv
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from minillm.cli import main  # noqa: E402
from minillm.exercises.grade import exercises_in, grade  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = ROOT / "exercises" / "solutions" / "01_tokenization.ipynb"
STUDENT = ROOT / "exercises" / "01_tokenization.ipynb"
NAMES = ["bpe_get_stats", "bpe_merge", "bpe_train", "bpe_encode", "bpe_decode"]
TIMEOUT = 12


def _index(nb, text):
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def _solution_source(name):
    cell = next(c for c in nbformat.read(SOLUTION, 4).cells
                if c.cell_type == "code" and f"def {name}(" in c.source)
    return "\n".join(line for line in cell.source.split("\n") if "SOLUTION" not in line)


def make_crashing(path):
    """A student's notebook, half done: a cell that raises, one right answer, one that raises
    inside check, an endless loop, one untouched stub, one function deleted."""
    nb = nbformat.read(STUDENT, 4)
    nb.cells.insert(1, new_code_cell("raise RuntimeError('my exploration went wrong')"))
    nb.cells[_index(nb, "def get_stats(")].source = _solution_source("get_stats")
    nb.cells[_index(nb, "def merge(")].source = (
        "def merge(ids, pair, new_id):\n    return [ids[i + 1] for i in range(len(ids))]")
    nb.cells[_index(nb, "def train(")].source = (
        "def train(chunks, vocab_size):\n    while True:\n        pass")
    check_train = nb.cells[_index(nb, 'check("bpe_train"')]
    check_train.source = check_train.source.replace(")", ", timeout=1.0)")   # 1 s, not 5
    del nb.cells[_index(nb, "def decode(")]
    nbformat.write(nb, path)
    return [2, _index(nb, 'check("bpe_decode"') + 1]           # 1-based cells that raise


def make_never_ending(path):
    nb = nbformat.read(SOLUTION, 4)
    at = _index(nb, 'check("bpe_merge"') + 1
    nb.cells.insert(at, new_code_cell("import time\nwhile True:\n    time.sleep(0.05)"))
    nbformat.write(nb, path)
    return at + 1


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handed_in")
    shutil.copy(SOLUTION, folder / "alice_solved.ipynb")
    shutil.copy(STUDENT, folder / "bob_untouched.ipynb")
    raising = make_crashing(folder / "carol_crashing.ipynb")
    endless = make_never_ending(folder / "dave_never_ending.ipynb")
    csv_path = folder.parent / "grades.csv"
    return folder, csv_path, raising, endless


@pytest.fixture(scope="module")
def run(graded):
    folder, csv_path, _, _ = graded
    capture = pytest.MonkeyPatch()
    import io
    out, err = io.StringIO(), io.StringIO()
    capture.setattr(sys, "stdout", out)
    capture.setattr(sys, "stderr", err)
    try:
        rc = main(["grade", str(folder), "--csv", str(csv_path), "--timeout", str(TIMEOUT)])
    finally:
        capture.undo()
    return rc, out.getvalue(), err.getvalue()


def expected_rows(graded):
    _, _, raising, endless = graded
    return [
        ["notebook", *NAMES, "score", "status"],
        ["alice_solved.ipynb", *["passed"] * 5, "5/5", "ok"],
        ["bob_untouched.ipynb", *["not done"] * 5, "0/5", "ok"],
        ["carol_crashing.ipynb", "passed", "error IndexError", "timed out", "not done",
         "error NameError", "1/5", "errors in cells " + ", ".join(map(str, raising))],
        ["dave_never_ending.ipynb", "passed", "passed", "not run", "not run", "not run", "2/5",
         f"timed out in cell {endless} (limit {TIMEOUT} s)"],
    ]


def test_grading_exits_0_and_prints_the_table(graded, run):
    rc, out, err = run
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 + 4 and set(lines[1]) <= {"-", " "}
    for line, row in zip([lines[0], *lines[2:]], expected_rows(graded)):
        assert line.split() == " ".join(row).split(), (line, row)
    assert err.count("graded ") == 4


def test_the_csv_is_the_same_table(graded, run):
    _, csv_path, _, _ = graded
    with open(csv_path, newline="") as f:
        assert list(csv.reader(f)) == expected_rows(graded)


def test_a_kernel_that_dies_or_a_broken_file_still_gets_a_row(tmp_path):
    nb = new_notebook(cells=[new_code_cell("from minillm.exercises import check"),
                             new_code_cell("import os\nos._exit(1)"),
                             new_code_cell('check("bpe_merge", merge)')])
    nbformat.write(nb, tmp_path / "dies.ipynb")
    (tmp_path / "garbage.ipynb").write_text("this is not a notebook")
    results, columns, rows = grade([tmp_path], timeout=60)
    assert columns == ["bpe_merge"]
    dies, garbage = results
    assert dies.status == "kernel died in cell 2" and dies.cell("bpe_merge") == "not run"
    assert garbage.status.startswith("unreadable")
    assert rows[2] == ["garbage.ipynb", "missing", "0/1", garbage.status]


def test_the_columns_can_be_chosen(tmp_path):
    nbformat.write(new_notebook(cells=[]), tmp_path / "empty.ipynb")
    _, columns, rows = grade([tmp_path / "empty.ipynb"], exercises=["bpe_merge", "lr_schedule"])
    assert rows[1] == ["empty.ipynb", "missing", "missing", "0/2", "ok"]


def test_bad_paths_and_options_are_errors(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "nope.ipynb")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["grade", str(tmp_path)]) == 1                  # an empty folder
    assert "no notebooks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:                   # refused by the parser
        main(["grade", str(tmp_path), "--timeout", "0"])
    assert exit_.value.code == 2
    assert "argument --timeout: must be a number > 0" in capsys.readouterr().err


def test_the_checks_are_found_in_the_source():
    assert exercises_in(nbformat.read(SOLUTION, 4)) == NAMES
