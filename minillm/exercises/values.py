"""Comparing a student's outputs with the expected ones: relative errors for floats, equality
(and where it first fails, in words) for everything else, type, shape and dtype named; the
float32 copy of a case, and a case described in one line.

>>> compare("dx", np.ones(3), np.ones(3) * 1.5)
(0.3333333333333333, None)
>>> compare("ids", [1, 2], [1, 3])
(1.0, 'ids[1] is 2, expected 3')
"""
import copy
import math
import numbers
from typing import NamedTuple

import numpy as np

from ..core.gradcheck import rel_error
from .running import what_it_is

MATCH = 1e-6                        # a wrong output "is" a planted mistake's below this error


class Wrong(NamedTuple):
    """Stands for an output that could not even be looked up (the message says why)."""
    problem: str


def is_number(v):
    return (isinstance(v, (numbers.Real, np.floating, np.integer)) and not isinstance(v, bool)
            or isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "fiu")


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_exact(want):
    """Values compared for equality rather than by relative error: everything but floats."""
    if isinstance(want, np.ndarray):
        return want.dtype.kind not in "fc"
    return not (is_number(want) and not _is_int(want))


def short(v, width=40):
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + "..."


def _difference(got, want, where):
    """Where an exact value first differs from the expected one, in words (None: equal)."""
    if _is_int(want) and _is_int(got):
        return None if int(got) == int(want) else f"{where} is {got}, expected {want}"
    if type(got) is not type(want) and not (isinstance(got, str) and isinstance(want, str)):
        return f"{where} is {what_it_is(got)}, expected a {type(want).__name__}"
    if isinstance(want, dict):
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        if missing:
            return f"{where} lacks the key {missing[0]!r}" + (
                f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        if extra:
            return f"{where} has an unexpected key {extra[0]!r}"
        for k in want:
            d = _difference(got[k], want[k], f"{where}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(want, (list, tuple)):
        for i, (g, w) in enumerate(zip(got, want)):
            d = _difference(g, w, f"{where}[{i}]")
            if d:
                return d
        if len(got) != len(want):
            return f"{where} has {len(got)} items, expected {len(want)}"
        return None
    return None if got == want else f"{where} is {short(got)}, expected {short(want)}"


def compare(name, got, want, against=None):
    """(error, problem) of an output. ``want`` (the reference's value) says what it must be:
    its type, shape and dtype; its values, or those of ``against`` (a numerical gradient).
    error: the relative error, or for exact values 0.0 / the fraction that differs;
    problem: None when got is comparable (and, for exact values, equal), else what is wrong.

    >>> compare("dx", np.ones(2), np.ones(3))
    (inf, 'dx has shape (2,), expected (3,)')
    """
    if isinstance(got, Wrong):
        return math.inf, got.problem
    if want is None:
        return (0.0, None) if got is None else (math.inf, f"{name} should be None, "
                                                          f"got {what_it_is(got)}")
    if isinstance(want, np.ndarray):
        if not isinstance(got, np.ndarray):
            return math.inf, f"{name} is {what_it_is(got)}, expected a NumPy array"
        if got.shape != want.shape:
            return math.inf, f"{name} has shape {got.shape}, expected {want.shape}"
        if got.dtype != want.dtype:
            return math.inf, f"{name} has dtype {got.dtype}, expected {want.dtype}"
        if is_exact(want):
            bad = got != want
            if not bad.any():
                return 0.0, None
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            at = f" (first at {i[0] if len(i) == 1 else i}: got {got[i]}, expected {want[i]})"
            return float(bad.mean()), f"{int(bad.sum())} of {bad.size} entries differ" + at
        values = want if against is None else against
        finite = np.isfinite(values)
        if not np.array_equal(got[~finite], values[~finite], equal_nan=True):
            return math.inf, f"{name} differs where the expected values are inf or NaN"
        if not np.isfinite(got[finite]).all():
            return math.inf, f"{name} contains NaN or inf where the expected values are finite"
        return rel_error(got[finite], values[finite]), None
    if not is_exact(want):
        if not is_number(got):
            return math.inf, f"{name} is {what_it_is(got)}, expected a number"
        g, w = float(got), float(want if against is None else against)
        if not (math.isfinite(g) and math.isfinite(w)):
            return (0.0, None) if g == w or (g != g and w != w) else (
                math.inf, f"{name} is {g}, expected {w} (NaN or inf)")
        scale = max(abs(g), abs(w))
        return (0.0 if scale == 0.0 else abs(g - w) / scale), None
    problem = _difference(got, want, name)
    return (0.0, None) if problem is None else (1.0, problem)


def same(a, b, tol=MATCH):
    """a and b are the same output: comparable, and equal (exact) or within tol (floats)."""
    if isinstance(a, Wrong) or isinstance(b, Wrong):
        return False
    try:
        err, problem = compare("", a, b)
    except Exception:                                 # noqa: BLE001 - incomparable values
        return False
    return problem is None and err <= (0.0 if is_exact(b) else tol)


def flatten(ex, outs, like):
    """{display name: value} of the checked outputs; a dict of arrays (gradients named like
    parameters, a loaded file) gives one entry per key of the reference's dict ``like``."""
    flat = {}
    for n in ex.checked:
        v, ref = outs.get(n), like[n]
        if not (isinstance(ref, dict) and ref and
                all(isinstance(a, np.ndarray) for a in ref.values())):
            flat[n] = v
            continue
        extra = [k for k in v if k not in ref] if isinstance(v, dict) else []
        for k in ref:
            key = f"{n}[{k!r}]"
            if not isinstance(v, dict):
                flat[key] = Wrong(f"{n} is {what_it_is(v)}, expected a dict of arrays")
            elif extra:
                flat[key] = Wrong(f"{n} has an unexpected key {extra[0]!r}")
            elif k not in v:
                flat[key] = Wrong(f"{n} lacks the key {k!r}")
            else:
                flat[key] = v[k]
            extra = []                                 # said once
    return flat


def float32_copy(v):
    """v with every float64 array in it made float32: arrays, dicts, plain tuples (rotary
    tables (cos, sin)), and minillm's own objects (an optimizer, a KV cache) by their
    attributes."""
    if isinstance(v, np.ndarray):
        return v.astype(np.float32) if v.dtype == np.float64 else v
    if isinstance(v, dict):
        return {k: float32_copy(a) for k, a in v.items()}
    if type(v) is tuple:
        return tuple(float32_copy(a) for a in v)
    if type(v).__module__.startswith("minillm.") and hasattr(v, "__dict__"):
        v = copy.copy(v)
        v.__dict__.update({k: float32_copy(a) for k, a in vars(v).items()})
    return v


def describe(v):
    if isinstance(v, np.ndarray):
        return f" {v.shape}" if v.dtype.kind == "f" else f" {v.dtype} {v.shape}"
    if isinstance(v, dict) and v and all(isinstance(a, np.ndarray) for a in v.values()):
        return f" {{{len(v)} arrays}}"
    if isinstance(v, (type, np.dtype)):
        return f"={np.dtype(v).name}"
    if isinstance(v, (bool, int, float, str, type(None), np.integer, np.floating)):
        return f"={short(v)}"
    if isinstance(v, (list, tuple, dict)):
        return f"={short(v)}" if len(repr(v)) <= 40 else f": {type(v).__name__} of {len(v)}"
    return f": {type(v).__name__}"


def case_text(i, case):
    where = f"case {i + 1}: {case.label}" if isinstance(i, int) else f"{i} case"
    shown = ", ".join(f"{k}{describe(v)}" for k, v in case.inputs.items())
    return f"{where}; {shown}"
