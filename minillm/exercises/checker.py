"""``check(name, fn)``: run a student's function on seeded inputs, say what is right and why not.

``check`` runs ``fn`` on every case of the exercise (seeded float64 inputs of several shapes,
edge cases among them), compares every gradient with a centered-difference numerical gradient
(``minillm.core.gradcheck``) and every other output with the reference, runs the first case
again in float32 (float32 in must give float32 out), and prints CS231n-style lines::

    linear_backward: 4 cases + float32
      dx       max rel error 1.1e-11 vs numerical gradient  ✓ < 1e-08

Exact values (token ids, merges, counts, shapes of things) must be equal. When an output is
wrong, it is compared with the outputs of the exercise's planted mistakes; a match names the
mistake in a hint. ``check`` never raises: a NotImplementedError is "not done", any other
exception is reported with the student's line, a wrong type, shape or dtype is named, and a
function that runs longer than the exercise's ``timeout`` is stopped by a SIGALRM timer (in the
main thread, where notebooks run; elsewhere it runs unlimited).

If the environment variable ``MINILLM_EXERCISES_LOG`` names a file, every check appends one
JSON line to it: this is how ``python -m minillm grade`` collects the checks of a notebook.
"""
import copy
import json
import math
import os
import sys
import time
import traceback
from typing import NamedTuple

import numpy as np

from ..core.gradcheck import dot_loss, numerical_grad
from .registry import EXERCISES, LOG_ENV, Case, CheckResult, Exercise
from .running import (BadReturn, Timeout, invoke, signature_hint, split_returns, student_line,
                      time_limit, what_it_is)
from .values import case_text, compare, flatten, float32_copy, is_exact, is_number, same

SEED = 1234                         # every check draws the same inputs
FLOAT32_BOUND = 1e-5                # float32 case: rounding differs from the reference's
OK, BAD = "\u2713", "\u2717"


# ----------------------------------------------------------------------------------------------
# Preparing a case: inputs, the reference's outputs, numerical gradients
# ----------------------------------------------------------------------------------------------

class _Prepared(NamedTuple):
    case: Case
    call: object          # fn -> what fn returns on this case (fresh copies of the inputs)
    sweep: tuple          # values of the swept input (sweep exercises), else ()
    ref: dict             # output name -> the reference's value, as returned
    want: dict            # display name -> the reference's value (dicts of arrays split up)
    numerical: dict       # display name -> numerical gradient (gradient exercises)


def _sweep_call(ex, fn, inputs, values):
    out = []
    for v in values:
        r = invoke(ex.reference, fn, {**copy.deepcopy(inputs), ex.sweep: v})
        if not is_number(r):
            raise BadReturn(f"{ex.name}({ex.sweep}={v!r}, ...) returned {what_it_is(r)}, "
                             "expected a number")
        out.append(float(r))
    return np.array(out)


def _prepare(ex, case, seed, numerical=True):
    inputs = case.inputs
    values = ()
    if ex.forward is not None:
        out, cache = invoke(ex.forward, ex.forward, inputs)
        rng = np.random.default_rng(seed)
        if isinstance(out, np.ndarray):
            dout = rng.standard_normal(out.shape).astype(out.dtype)
        else:
            dout = float(rng.standard_normal())

        def call(fn):
            lead = copy.deepcopy([inputs[n] for n in ex.before])
            trail = copy.deepcopy([inputs[n] for n in ex.after])
            return fn(*lead, dout.copy() if isinstance(dout, np.ndarray) else dout,
                      copy.deepcopy(cache), *trail)
    elif ex.sweep:
        values = tuple(inputs[ex.sweep].tolist())

        def call(fn):
            return _sweep_call(ex, fn, inputs, values)
    elif ex.run is not None:
        def call(fn):
            return ex.run(fn, copy.deepcopy(inputs))
    else:
        def call(fn):
            return invoke(ex.reference, fn, copy.deepcopy(inputs))
    outs = split_returns(ex, call(ex.reference))
    want = flatten(ex, outs, outs)
    prep = _Prepared(case, call, values, outs, want, {})
    if numerical and ex.forward is not None:
        def loss():
            return dot_loss(invoke(ex.forward, ex.forward, inputs)[0], dout)
        for n in ex.checked:
            target = ex.gradient_of(n, inputs)
            if isinstance(target, np.ndarray):
                prep.numerical[n] = numerical_grad(loss, target)
            elif isinstance(target, dict):
                for k, a in target.items():
                    if f"{n}[{k!r}]" in want:
                        prep.numerical[f"{n}[{k!r}]"] = numerical_grad(loss, a)
    return prep


def _prepared(ex):
    """The prepared cases of an exercise, computed once (numerical gradients take the time)."""
    if ex.prepared is None:
        cases = ex.cases(np.random.default_rng(SEED))
        # dout's seed: [SEED, i + 1], never [SEED, 0], which NumPy seeds exactly like SEED (the
        # cases' own seed): dout would then equal the first input drawn
        runs = [(i, _prepare(ex, c, [SEED, i + 1])) for i, c in enumerate(cases)]
        if ex.float32:
            c32 = Case(cases[0].label, {k: float32_copy(v) for k, v in cases[0].inputs.items()})
            runs.append(("float32", _prepare(ex, c32, [SEED, 1], numerical=False)))
        ex.prepared = {"cases": cases, "runs": runs}
    return ex.prepared["cases"], ex.prepared["runs"]


# ----------------------------------------------------------------------------------------------
# Hints
# ----------------------------------------------------------------------------------------------

def _diagnose(ex, prep, wrong=None, exc=None):
    """Hints of the planted mistakes that give the same wrong outputs (``wrong``: {name:
    student's value}) or raise the same exception (``exc``) on this case."""
    hints = []
    for m in ex.mistakes:
        try:
            outs = flatten(ex, split_returns(ex, prep.call(m.fn)), prep.ref)
        except Exception as e:                         # noqa: BLE001 - a planted crash
            if exc is not None and type(e) is type(exc) and str(e) == str(exc):
                hints.append(m.hint)
            continue
        if exc is None and any(same(got, outs.get(n)) and
                               not same(outs.get(n), prep.want[n], ex.bound)
                               for n, got in wrong.items()):
            hints.append(m.hint)
    return list(dict.fromkeys(hints))


def _worst_at(ex, prep, got, want):
    """For a sweep: where the first clearly wrong value is."""
    if not ex.sweep or not isinstance(got, np.ndarray) or got.shape != want.shape:
        return ""
    scale = max(np.abs(want).max(), np.abs(got).max(), 1e-300)
    bad = np.nonzero(~(np.abs(got - want) <= ex.bound * scale))[0]
    if not len(bad):
        return ""
    i = int(bad[0])
    return (f"\n{' ' * 8}first wrong at {ex.sweep} = {prep.sweep[i]}: got {got[i]:.6g}, "
            f"expected {want[i]:.6g}")


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------

def check(name, fn, *, timeout=None, verbose=True):
    """Check ``fn`` against exercise ``name`` (or an Exercise); print the report, return a
    CheckResult. Never raises (except KeyboardInterrupt). ``timeout`` overrides the
    exercise's seconds per case.

    >>> from minillm.core.layers import softmax_backward
    >>> r = check("softmax_backward", softmax_backward, verbose=False)
    >>> r.passed, r.errors["dx"] < 1e-8
    (True, True)
    >>> check("softmax_backward", lambda dout, cache: cache.y * dout, verbose=False).hints[0][:30]
    'the - sum(dout * y) term is mi'
    """
    start = time.perf_counter()
    try:
        result = _check(name, fn, timeout)
    except KeyboardInterrupt:
        raise
    except BaseException as e:                       # noqa: BLE001 - a bug of ours, not theirs
        label = getattr(name, "name", name)
        result = CheckResult(str(label), "error", {}, 0.0,
                             f"{BAD} {label}: the checker itself failed ({type(e).__name__}: "
                             f"{e}); please report this\n" + traceback.format_exc(),
                             reason="checker")
    result.seconds = time.perf_counter() - start
    if verbose:
        print(result.message)
        result.printed = True
    _log(result)
    return result


def _log(result):
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result.to_json()) + "\n")
    except OSError as e:
        print(f"(could not record the check in {path}: {e})", file=sys.stderr)


def _run_student(ex, fn, i, prep, limit, lines, done):
    """Run fn on one case: (outputs, None) or (None, a finished CheckResult or an exception)."""
    case = prep.case
    try:
        with time_limit(limit):
            return split_returns(ex, prep.call(fn)), None
    except Timeout:
        return None, CheckResult(ex.name, "timed out", {}, ex.bound, "\n".join(lines + [
            f"{BAD} {ex.name} timed out: still running after {limit:g} s on "
            f"{case_text(i, case)} (an endless loop?); it was stopped"]),
            reason=f"> {limit:g} s")
    except NotImplementedError:
        return None, CheckResult(ex.name, "not done", {}, ex.bound,
                                 f"\u2026 {ex.name}: not done yet (it raises NotImplementedError)")
    except BadReturn as e:
        return None, CheckResult(ex.name, "failed", {n: math.inf for n in ex.checked}, ex.bound,
                                 "\n".join(lines + [f"{BAD} {e} ({case_text(i, case)})"]),
                                 reason="returns")
    except SystemExit as e:
        return None, CheckResult(ex.name, "error", {}, ex.bound, "\n".join(lines + [
            f"{BAD} {ex.name} called sys.exit({e.code!r})"]), reason="SystemExit")
    except Exception as e:                             # noqa: BLE001 - the student's bug
        return None, e


def _check(name, fn, timeout):
    ex = name if isinstance(name, Exercise) else EXERCISES.get(name)
    if ex is None:
        return CheckResult(str(name), "error", {}, 0.0,
                           f"{BAD} no exercise named {name!r}; there are: "
                           f"{', '.join(sorted(EXERCISES))}", reason="unknown exercise")
    if not callable(fn):
        return CheckResult(ex.name, "error", {}, ex.bound,
                           f"{BAD} check({ex.name!r}, fn): fn must be your function, got "
                           f"{what_it_is(fn)}", reason="not a function")
    limit = ex.timeout if timeout is None else timeout
    cases, runs = _prepared(ex)
    lines = [f"{ex.name}: {len(cases)} cases" + (" + float32" if ex.float32 else "")]
    errors = {}                  # display name -> max error so far ("float32": that case)
    failed, failed32 = {}, {}    # display name -> (case index, what is wrong)
    first_bad = None             # (prepared case, {name: student's wrong value})
    crash = None                 # (case index, prepared case, exception)
    done = []                    # the cases that ran to the end
    for i, prep in runs:
        got, stop = _run_student(ex, fn, i, prep, limit, lines, done)
        if isinstance(stop, CheckResult):
            stop.errors = {**errors, **stop.errors}
            return stop
        if stop is not None:
            crash = (i, prep, stop)
            break
        done.append(i)
        f64 = isinstance(i, int)
        flat = flatten(ex, got, prep.ref)
        wrong = {}
        for n, want in prep.want.items():
            err, problem = compare(n, flat[n], want, prep.numerical.get(n))
            key = n if f64 else "float32"
            errors[key] = max(errors.get(key, 0.0), err)
            bound = 0.0 if is_exact(want) else ex.bound if f64 else FLOAT32_BOUND
            if problem is None and err <= bound:
                continue
            if problem is None:
                problem = (_worst_at(ex, prep, flat[n], want) if f64
                           else f"{n} differs from the reference by {err:.1e}")
            bad = failed if f64 else failed32
            if n not in bad:
                bad[n] = (i, problem, err)
                wrong[n] = flat[n]
        if wrong and first_bad is None:
            first_bad = (prep, wrong)
    return _report(ex, fn, cases, runs, lines, errors, failed, failed32, first_bad, crash, done)


def _report(ex, fn, cases, runs, lines, errors, failed, failed32, first_bad, crash, done):
    hints = _diagnose(ex, *first_bad) if first_bad else []
    first = {}                                         # display name -> the first case with it
    for i, prep in runs:
        for n in prep.want if isinstance(i, int) and i in done else ():
            first.setdefault(n, prep)
    width = max((len(n) for n in first), default=0)
    pad = " " * (width + 4)
    shown = None                                       # the case named on the line above
    for n in first:
        exact = is_exact(first[n].want[n])
        vs = "vs numerical gradient" if n in first[n].numerical else "vs reference"
        if n not in failed:
            lines.append(f"  {n:<{width}}  equal to the reference  {OK}" if exact else
                         f"  {n:<{width}}  max rel error {errors[n]:.1e} {vs}  {OK} < "
                         f"{ex.bound:.0e}")
            shown = None
            continue
        i, detail, err = failed[n]
        if math.isfinite(err) and not exact:
            lines.append(f"  {n:<{width}}  max rel error {err:.1e} {vs}  {BAD} > "
                         f"{ex.bound:.0e}")
        else:
            lines.append(f"  {n:<{width}}  {BAD} {detail}")
            detail = ""
        if i != shown or detail:
            lines.append(f"{pad}first wrong on {case_text(i, cases[i])}{detail}")
        shown = i
    failed32 = {n: v for n, v in failed32.items() if n not in failed}   # news only
    if failed32:
        lines.append(f"  float32 in -> float32 out  {BAD} "
                     f"{'; '.join(d for _, d, _ in failed32.values())}")
        lines.append(f"{pad}on the {case_text('float32', runs[-1][1].case)}")
        if any("dtype" in d for _, d, _ in failed32.values()):
            hints.append("float32 in must give float32 out: a NumPy float64 scalar or a new "
                         "float64 array (np.zeros(n), np.float64(...)) promotes the result; "
                         "use Python floats and dtype=x.dtype")
    elif "float32" in errors and not failed and not crash:
        lines.append(f"  float32 in -> float32 out  max rel error {errors['float32']:.1e} "
                     f"vs reference  {OK} < {FLOAT32_BOUND:.0e}")
    if crash is not None:
        i, prep, e = crash
        where = student_line(e.__traceback__)
        hints = hints or _diagnose(ex, prep, exc=e)   # the values say more than the crash
        if isinstance(e, TypeError):
            hints += signature_hint(ex, fn, {n for c in _prepared(ex)[0] for n in c.inputs})
        lines.append(f"{BAD} {ex.name} raised {type(e).__name__}: {e}")
        if where:
            lines.append(f"    {where}")
        before = (f" (the lines above are for the {len(done)} case{'s' * (len(done) > 1)} "
                  "before it)" if done else "")
        lines.append(f"    on {case_text(i, prep.case)}{before}")
        lines += [f"  hint: {h}" for h in hints]
        return CheckResult(ex.name, "error", errors, ex.bound, "\n".join(lines), hints,
                           reason=type(e).__name__)
    lines += [f"  hint: {h}" for h in hints]
    if failed or failed32:
        wrong = list(failed) + [f"{n} (float32)" for n in failed32]
        lines.append(f"{BAD} {ex.name} failed: {', '.join(wrong)} wrong")
        finite = [err for n, (_, _, err) in failed.items()
                  if math.isfinite(err) and not is_exact(first[n].want[n])]
        problems = " ".join(d for _, d, _ in [*failed.values(), *failed32.values()])
        reason = (f"{max(finite):.1e}" if finite else next(
            (r for k, r in (("shape", "shape"), ("dtype", "dtype"), ("NaN", "inf/NaN"),
                            ("None", "None")) if k in problems),
            "float32" if not failed else "differs"))
        return CheckResult(ex.name, "failed", errors, ex.bound, "\n".join(lines), hints,
                           reason=reason)
    lines.append(f"{OK} {ex.name} passed")
    return CheckResult(ex.name, "passed", errors, ex.bound, "\n".join(lines))
