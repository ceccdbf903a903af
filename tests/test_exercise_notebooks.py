"""The exercise notebooks (exercises/): the student notebooks are generated from the solutions,
every solution passes all its checks, every student notebook runs clean with every exercise
not done, and every stub has the signature of the minillm function it re-implements.

The notebooks run here in this process (their code cells in order, as a script) to keep the
suite fast; tests/test_grade.py runs notebooks in real kernels."""
import ast
import contextlib
import inspect
import io
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

from minillm.exercises import EXERCISES, LOG_ENV  # noqa: E402
from minillm.exercises.grade import exercises_in  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "exercises"))
import make_student_notebooks as sn  # noqa: E402

SOLUTIONS = sn.solution_paths()
IDS = [p.stem for p in SOLUTIONS]


def test_there_are_enough_notebooks_and_exercises():
    assert len(SOLUTIONS) >= 10
    checked = [n for p in SOLUTIONS for n in exercises_in(nbformat.read(p, 4))]
    assert len(checked) >= 30 and len(checked) == len(set(checked))


def test_every_registered_exercise_is_in_a_notebook():
    checked = {n for p in SOLUTIONS for n in exercises_in(nbformat.read(p, 4))}
    assert checked == set(EXERCISES)


def test_the_notebooks_are_named_like_the_teaching_notebooks():
    teaching = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert {p.name for p in SOLUTIONS} <= teaching


def test_every_student_notebook_has_a_solution():
    students = sorted(sn.SOLUTIONS.parent.glob("*.ipynb"))
    assert [p.name for p in students] == [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_the_committed_student_notebook_is_the_generated_one(path):
    target = sn.student_path(path)
    assert target.read_text(encoding="utf-8") == sn.student_text(path), \
        f"{target.name} is out of date: python exercises/make_student_notebooks.py"


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_solution_regions_sit_in_nbgrader_solution_cells(path):
    ids = []
    for cell in nbformat.read(path, 4).cells:
        if sn.BEGIN_SOLUTION in cell.source:
            assert cell.metadata.get("nbgrader", {}).get("solution") is True, cell.source[:60]
            ids.append(cell.metadata["nbgrader"]["grade_id"])
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_the_student_notebook_gives_nothing_away(path):
    student = nbformat.read(sn.student_path(path), 4)
    text = "\n".join(c.source for c in student.cells)
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "MARK SCHEME"):
        assert marker not in text
    assert code.count("raise NotImplementedError()") == len(exercises_in(student))
    assert sn.TEXT_STUB in text                       # every notebook asks questions too
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in student.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_the_solution_is_saved_as_one_clean_run(path):
    nb = nbformat.read(path, 4)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), \
        "re-run it: python exercises/make_student_notebooks.py --execute"
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "\u2717" not in outputs
    assert outputs.count(" passed\n") == len(exercises_in(nb))


def _stub_functions(nb):
    """{exercise: the ast FunctionDef passed to its check()} in a notebook's code."""
    tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    defs = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and getattr(node.func, "id", None) == "check"]
    return {call.args[0].value: defs[call.args[1].id] for call in calls}


def _parameters(fn):
    """(name, kind, default as source) of every parameter of an ast FunctionDef."""
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + a.defaults
    out = [(p.arg, "positional", d and ast.unparse(d)) for p, d in zip(positional, defaults)]
    out += [(p.arg, "keyword", d and ast.unparse(d)) for p, d in zip(a.kwonlyargs,
                                                                      a.kw_defaults)]
    return out


def _reference_parameters(fn):
    kinds = {inspect.Parameter.KEYWORD_ONLY: "keyword"}
    return [(p.name, kinds.get(p.kind, "positional"),
             None if p.default is p.empty else repr(p.default))
            for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_stub_has_the_signature_of_the_function_it_re_implements(path):
    nb = nbformat.read(sn.student_path(path), 4)
    stubs = _stub_functions(nb)
    assert list(stubs) == exercises_in(nb)
    for name, fn in stubs.items():
        mine = [(n, k, d.replace("np.", "") if d else d) for n, k, d in _parameters(fn)]
        theirs = [(n, k, d and d.replace("<class 'numpy.float32'>", "float32"))
                  for n, k, d in _reference_parameters(EXERCISES[name].reference)]
        names = {n for n, _, _ in mine}
        while theirs and theirs[-1][2] is not None and theirs[-1][0] not in names:
            theirs.pop()          # a trailing option the exercise leaves out (see signature_hint)
        assert mine == theirs, name
        assert ast.get_docstring(fn), f"{name}: the stub has no docstring"


def _run(path, log, monkeypatch):
    """Run a notebook's code cells in order in this process; return (stdout, its checks)."""
    monkeypatch.setenv(LOG_ENV, str(log))
    monkeypatch.chdir(path.parent)
    nb = nbformat.read(path, 4)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        namespace = {"__name__": "__main__"}
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            exec(compile(cell.source, f"{path.name}, cell {i + 1}", "exec"), namespace)
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return out.getvalue(), {r["exercise"]: r for r in records}, exercises_in(nb)


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_solution_notebook_passes_all_its_checks(path, tmp_path, monkeypatch):
    out, records, expected = _run(path, tmp_path / "log.jsonl", monkeypatch)
    assert list(records) == expected
    assert all(r["passed"] for r in records.values()), out


@pytest.mark.parametrize("path", SOLUTIONS, ids=IDS)
def test_every_student_notebook_runs_clean_and_is_not_done(path, tmp_path, monkeypatch):
    out, records, expected = _run(sn.student_path(path), tmp_path / "log.jsonl", monkeypatch)
    assert list(records) == expected == exercises_in(nbformat.read(path, 4))
    assert all(r["status"] == "not done" for r in records.values()), out
    assert out.count("not done yet") == len(expected)


# ---------------------------------------------------------------------------------------------
# The stripping rules (nbgrader's ClearSolutions / ClearMarkingScheme / ClearOutput)
# ---------------------------------------------------------------------------------------------

def test_a_code_region_becomes_an_indented_stub():
    cell = nbformat.v4.new_code_cell(
        'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION'
        '\n\nprint(1)', execution_count=3, outputs=[nbformat.v4.new_output("stream", text="1")])
    out = sn.strip_cell(cell)
    assert out.source == ('def f(x):\n    """Doc."""\n    # YOUR CODE HERE\n'
                          '    raise NotImplementedError()\n\nprint(1)')
    assert out.outputs == [] and out.execution_count is None
    assert "return x" in cell.source                        # the input is left alone


def test_a_markdown_region_becomes_your_answer_here_and_mark_schemes_vanish():
    cell = nbformat.v4.new_markdown_cell(
        "Q?\n\n### BEGIN SOLUTION\n(4, 5)\n### END SOLUTION\n"
        "=== BEGIN MARK SCHEME ===\nfull marks\n=== END MARK SCHEME ===")
    assert sn.strip_cell(cell).source == "Q?\n\nYOUR ANSWER HERE"


def test_a_solution_cell_without_regions_is_replaced_whole():
    cell = nbformat.v4.new_code_cell("x = 42")
    cell.metadata["nbgrader"] = {"solution": True}
    assert sn.strip_cell(cell).source == sn.CODE_STUB
    md = nbformat.v4.new_markdown_cell("the answer")
    md.metadata["nbgrader"] = {"solution": True}
    assert sn.strip_cell(md).source == sn.TEXT_STUB
    assert sn.strip_cell(nbformat.v4.new_code_cell("x = 42")).source == "x = 42"


@pytest.mark.parametrize("source", [
    "### BEGIN SOLUTION\nx = 1",
    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION",
    "x = 1\n### END SOLUTION",
])
def test_broken_regions_are_errors(source):
    with pytest.raises(ValueError):
        sn.strip_cell(nbformat.v4.new_code_cell(source))


def test_generation_is_deterministic_and_check_mode_reports_staleness(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "### BEGIN SOLUTION\nx = 1\n### END SOLUTION")])
    nbformat.write(nb, solutions / "a.ipynb")
    assert sn.main([str(solutions / "a.ipynb"), "--check"]) == 1
    assert sn.main([str(solutions / "a.ipynb")]) == 0
    first = (tmp_path / "a.ipynb").read_text()
    assert sn.main([str(solutions / "a.ipynb"), "--check"]) == 0
    assert sn.student_text(solutions / "a.ipynb") == first
    assert "raise NotImplementedError()" in first
