"""minillm/exercises: every reference passes its own check, every planted mistake is rejected
with its hint (and at least one per exercise with a measured non-zero error), and check()
never crashes, whatever the student's function does."""
import json
import math
import signal
import threading
import time

import numpy as np
import pytest

from minillm.core import layers
from minillm.exercises import EXERCISES, LOG_ENV, Case, check, exercise, mistake
from minillm.exercises import registry

MISTAKES = [(name, i) for name, ex in EXERCISES.items() for i in range(len(ex.mistakes))]
NO_T_AXIS = {"lora_merge_backward"}                 # weights only: no sequence to make T = 1


def test_there_are_enough_exercises():
    assert len(EXERCISES) >= 30


@pytest.mark.parametrize("name", EXERCISES)
def test_the_reference_passes(name):
    ex = EXERCISES[name]
    r = check(name, ex.reference, verbose=False)
    assert r.passed and r.status == "passed", r.message
    assert r.errors and all(err <= ex.bound for k, err in r.errors.items() if k != "float32")
    assert r.hints == [] and "\u2713" in r.message and "\u2717" not in r.message


@pytest.mark.parametrize("name", EXERCISES)
def test_every_exercise_has_cases_edge_cases_and_mistakes(name):
    ex = EXERCISES[name]
    cases = ex.cases(np.random.default_rng(0))
    takes_arguments = bool(cases[0].inputs)
    assert len(cases) >= (3 if takes_arguments else 1)
    assert len({c.label for c in cases}) == len(cases)
    assert len(ex.mistakes) >= 2
    assert len({m.hint for m in ex.mistakes}) == len(ex.mistakes)
    arrays = [v for c in cases for v in c.inputs.values() if isinstance(v, np.ndarray)]
    assert all(a.dtype != np.float32 for a in arrays)          # float64; float32 comes extra
    if ex.forward is not None and name not in NO_T_AXIS:
        assert any("T = 1" in c.label for c in cases)


@pytest.mark.parametrize("name,i", MISTAKES, ids=[f"{n}-{i}" for n, i in MISTAKES])
def test_a_planted_mistake_is_rejected_with_its_hint(name, i):
    ex = EXERCISES[name]
    m = ex.mistakes[i]
    r = check(name, m.fn, verbose=False)
    assert not r.passed and r.status in ("failed", "error"), r.message
    assert r.hints == [m.hint], r.message                      # its hint, and no other
    assert f"hint: {m.hint}" in r.message and "\u2717" in r.message
    if r.status == "failed":
        assert max(r.errors.values()) > ex.bound, r.errors


@pytest.mark.parametrize("name", EXERCISES)
def test_a_mistake_is_measured_with_a_nonzero_error(name):
    ex = EXERCISES[name]
    worst = [max(r.errors.values()) for r in (check(name, m.fn, verbose=False)
                                              for m in ex.mistakes) if r.status == "failed"]
    assert worst and max(worst) > ex.bound


def test_it_prints_cs231n_style_lines(capsys):
    check("linear_backward", EXERCISES["linear_backward"].reference)
    out = capsys.readouterr().out
    assert out.startswith("linear_backward: 4 cases + float32\n")
    for name in ("dx", "dweight", "dbias"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert "max rel error" in line and "vs numerical gradient" in line
        assert line.endswith("\u2713 < 1e-08")
    assert "float32 in -> float32 out" in out and "\u2713 linear_backward passed" in out


def test_a_failure_names_the_error_the_bound_and_the_case():
    r = check("softmax_backward", lambda dout, cache: cache.y * dout, verbose=False)
    assert float(r.reason) > 0.1 and r.errors["dx"] >= float(r.reason)
    assert f"max rel error {r.reason} vs numerical gradient  \u2717 > 1e-08" in r.message
    assert "first wrong on case 1" in r.message


# ---------------------------------------------------------------------------------------------
# It never crashes
# ---------------------------------------------------------------------------------------------

def test_not_implemented_is_not_done():
    def stub(dout, cache):
        # YOUR CODE HERE
        raise NotImplementedError()
    r = check("linear_backward", stub, verbose=False)
    assert r.status == "not done" and not r.passed and "not done" in r.message


def test_an_exception_is_reported_with_the_students_line():
    def student(dout, cache):
        x, weight, has_bias = cache
        scale = 1 / 0
        return x, weight, scale
    r = check("linear_backward", student, verbose=False)
    assert r.status == "error" and r.reason == "ZeroDivisionError"
    assert "ZeroDivisionError: division by zero" in r.message
    assert "in student, line" in r.message and "scale = 1 / 0" in r.message


def test_an_exception_inside_numpy_points_at_the_students_call():
    def student(dout, cache):
        return np.sum(cache.x, axis=5), cache.weight, dout
    r = check("linear_backward", student, verbose=False)
    assert r.status == "error" and "AxisError" in r.reason
    assert "np.sum(cache.x, axis=5)" in r.message


def test_a_wrong_signature_gets_a_hint():
    r = check("sdpa_forward", lambda q, k, v: (q, None), verbose=False)
    assert r.status == "error" and r.reason == "TypeError"
    assert "the signature must be exactly minillm's: sdpa_forward(q, k, v, *, causal=True" \
        in r.message


def test_a_function_that_runs_too_long_is_stopped():
    previous = signal.getsignal(signal.SIGALRM)

    def endless(dout, cache):
        while True:
            try:
                pass
            except Exception:                   # even this cannot swallow the timer
                pass
    start = time.perf_counter()
    r = check("softmax_backward", endless, timeout=0.2, verbose=False)
    assert time.perf_counter() - start < 5.0
    assert r.status == "timed out" and "timed out" in r.message and "0.2 s" in r.message
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_off_the_main_thread_it_runs_without_a_timer():
    results = []
    t = threading.Thread(target=lambda: results.append(
        check("softmax_backward", layers.softmax_backward, verbose=False)))
    t.start()
    t.join()
    assert results[0].passed


def _linear(transform):
    return lambda dout, cache: transform(*layers.linear_backward(dout, cache))


@pytest.mark.parametrize("fn,expected", [
    (lambda dout, cache: None, "must return 3 values (dx, dweight, dbias), got None"),
    (lambda dout, cache: layers.linear_backward(dout, cache)[:2], "must return 3 values"),
    (_linear(lambda dx, dw, db: (dx.tolist(), dw, db)), "dx is a list, expected a NumPy array"),
    (_linear(lambda dx, dw, db: (dx, dw[:, :-1], db)), "dweight has shape (4, 3), expected (4, 4)"),
    (_linear(lambda dx, dw, db: (dx, dw, None if db is None else db.astype(np.float32))),
     "dbias has dtype float32, expected float64"),
    (_linear(lambda dx, dw, db: (dx * np.nan, dw, db)), "dx contains NaN or inf"),
])
def test_wrong_returns_are_named(fn, expected):
    r = check("linear_backward", fn, verbose=False)
    assert r.status == "failed" and not r.passed
    assert expected in r.message, r.message


def test_exact_values_say_where_they_differ():
    r = check("bpe_merge", lambda ids, pair, new_id: list(ids), verbose=False)
    assert r.status == "failed" and r.errors["ids"] == 1.0
    assert "ids[0] is 97, expected 256" in r.message


def test_float32_in_must_give_float32_out():
    def upcasts(dout, cache):
        y = cache.y
        return y * (dout - (dout * y).sum(axis=-1, keepdims=True)) * np.float64(1.0)
    r = check("softmax_backward", upcasts, verbose=False)
    assert r.status == "failed" and r.reason == "dtype"
    assert r.errors["dx"] < 1e-8                      # right in float64
    assert "dx has dtype float64, expected float32" in r.message
    assert any("float32 in must give float32 out" in h for h in r.hints)


def test_writing_into_the_inputs_changes_nothing():
    def vandal(dout, cache):
        grads = layers.linear_backward(dout, cache)
        cache.x[...] = 0.0
        cache.weight[...] = 0.0
        dout[...] = 0.0
        return tuple(None if g is None else g.copy() for g in grads)
    assert check("linear_backward", vandal, verbose=False).passed
    assert check("linear_backward", layers.linear_backward, verbose=False).passed


def test_a_sweep_says_where_it_is_first_wrong():
    def off_by_one(it, max_lr, min_lr, warmup_iters, decay_iters):
        return EXERCISES["lr_schedule"].reference(it + (it >= 50), max_lr, min_lr,
                                                  warmup_iters, decay_iters)
    r = check("lr_schedule", off_by_one, verbose=False)
    assert r.status == "failed" and r.hints == []
    assert "first wrong at it = 50: got" in r.message, r.message


@pytest.mark.parametrize("name,fn", [("no_such_exercise", layers.linear_backward),
                                     ("linear_backward", None)])
def test_an_unknown_exercise_or_no_function_is_an_error_not_a_crash(name, fn):
    r = check(name, fn, verbose=False)
    assert r.status == "error" and not r.passed


def test_a_student_that_exits_is_an_error():
    def exits(dout, cache):
        raise SystemExit(3)
    assert check("linear_backward", exits, verbose=False).status == "error"


# ---------------------------------------------------------------------------------------------
# Recording for the grader, and the notebook display
# ---------------------------------------------------------------------------------------------

def test_each_check_appends_a_json_line(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    check("linear_backward", layers.linear_backward, verbose=False)
    wrong = EXERCISES["softmax_backward"].mistakes[0]
    check("softmax_backward", wrong.fn, verbose=False)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["exercise"] for r in recs] == ["linear_backward", "softmax_backward"]
    assert recs[0]["status"] == "passed" and recs[0]["passed"] is True
    assert recs[1]["status"] == "failed" and recs[1]["errors"]["dx"] > 1e-8
    assert recs[1]["hints"] == [wrong.hint]


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(LOG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    check("linear_backward", layers.linear_backward, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_a_check_cell_shows_the_lines_once(capsys):
    r = check("softmax_backward", layers.softmax_backward)
    r._ipython_display_()                              # the cell's value, right after
    r._ipython_display_()                              # shown again later: the repr
    out = capsys.readouterr().out
    assert out.count("softmax_backward passed") == 1 and out.count("CheckResult(") == 1


def test_adding_an_exercise_takes_a_few_lines(monkeypatch):
    monkeypatch.setattr(registry, "EXERCISES", dict(EXERCISES))

    def cases(rng):
        return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
                Case("T = 1", dict(x=rng.normal(size=(1, 1, 5))))]
    ex = exercise("gelu_fused_backward", "the fused GELU's derivative",
                  reference=layers.gelu_fused_backward, forward=layers.gelu_fused_forward,
                  returns=("dx",), cases=cases)

    @mistake("gelu_fused_backward", "the derivative of x * s needs both terms")
    def _(dout, cache):
        return dout * cache.s
    assert "gelu_fused_backward" not in EXERCISES
    assert check(ex, layers.gelu_fused_backward, verbose=False).passed
    r = check(ex, _, verbose=False)
    assert r.hints == ["the derivative of x * s needs both terms"]
    assert math.isfinite(r.errors["dx"]) and r.errors["dx"] > 1e-3
