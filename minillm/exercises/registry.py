"""The registry of exercises: what each one tests, the minillm function it re-implements, the
inputs it is checked on and the classic mistakes it recognises.

An exercise is one minillm function for a student to write again, with the same signature. It
is registered with ``exercise(name, what, reference=..., returns=..., cases=...)`` and its
planted mistakes with the ``@mistake(name, hint)`` decorator; ``check`` (checker.py) does the
rest. Adding an exercise for a new layer takes a few lines (the teacher guide,
exercises/README.md, shows a whole one)::

    def _gelu_cases(rng):
        return [Case("(B, T, C)", dict(x=rng.normal(size=(2, 3, 4)) * 2.0)),
                Case("T = 1", dict(x=rng.normal(size=(1, 1, 5))))]

    exercise("gelu_backward", "the GELU's derivative", reference=layers.gelu_backward,
             forward=layers.gelu_forward, returns=("dx",), cases=_gelu_cases)

    @mistake("gelu_backward", "the derivative of 0.5 x (1 + t) needs both terms")
    def _(dout, cache):
        return dout * 0.5 * (1.0 + cache.t)

Two kinds of exercise:

* a gradient exercise (``forward`` given): ``fn(dout, cache)`` gets the cache of
  ``forward(**case.inputs)`` and a random ``dout`` (and the inputs named by ``before`` and
  ``after`` around them: ``fn(self, dout, cache)``, ``fn(dout, cache, config)``); a returned
  value named ``"d" + name`` (or mapped by ``wrt``) is compared with the numerical gradient of
  ``sum(out * dout)`` with respect to input ``name``;
* any other function: it is called as the reference would be (``fn(**case.inputs)``, keyword-
  only parameters by keyword), or by ``run(fn, inputs)`` for methods, in-place updates and
  generators, or once per element of the ``sweep`` input; its values are compared with the
  reference's.

>>> sorted(EXERCISES)[:3]                        # the exercise modules register on import
['adamw_step', 'block_backward', 'block_forward']
"""
import math
from dataclasses import dataclass, field
from typing import NamedTuple

LOG_ENV = "MINILLM_EXERCISES_LOG"   # check() appends one JSON line per check to this file


class Case(NamedTuple):
    label: str        # what is special about it, shown to the student: "T = 1", "repeated ids"
    inputs: dict      # argument name -> value: the forward's (gradient exercises) or fn's own


@dataclass(frozen=True)
class Mistake:
    hint: str         # shown when the student's wrong output equals this function's output
    fn: object        # the wrong implementation, with the exercise's signature


@dataclass
class Exercise:
    """One function to re-implement and how to check it (see the module's docstring)."""
    name: str
    what: str                   # one line: what the exercise tests
    reference: object           # the minillm function; check(name, reference) passes
    returns: tuple              # names of the returned values, in order
    cases: object               # rng -> [Case, ...]: seeded float64 inputs, edge cases among them
    forward: object = None      # gradient exercises: forward(**inputs) -> (out, cache)
    wrt: dict = None            # gradient name -> input name, or inputs -> array or dict of arrays
    before: tuple = ()          # inputs passed before (dout, cache): ("self",) for a method
    after: tuple = ()           # inputs passed after (dout, cache): ("config",) for a block
    compare: tuple = None       # the returned values checked (default: all of them)
    run: object = None          # run(fn, inputs) -> what fn returns, or the values to compare
    sweep: str = None           # call fn once per element of this input; stack the numbers
    bound: float = 1e-8         # max relative error of a correct answer
    timeout: float = 5.0        # seconds for one case before the student's function is stopped
    float32: bool = True        # rerun case 1 in float32 and expect float32 out
    mistakes: list = field(default_factory=list)                 # [Mistake, ...], see @mistake
    prepared: dict = field(default=None, repr=False, compare=False)  # check's memo of the cases

    @property
    def checked(self):
        return tuple(self.compare or self.returns)

    def gradient_of(self, out_name, inputs):
        """What the returned value ``out_name`` is the gradient of: an array or a dict of arrays
        in ``inputs``, or None when it is not a gradient."""
        if self.forward is None:
            return None
        target = (self.wrt or {}).get(out_name)
        if callable(target):
            return target(inputs)
        if target is None and out_name.startswith("d"):
            target = out_name[1:]
        return inputs.get(target) if target is not None else None


EXERCISES = {}


def exercise(name, what, **fields):
    """Register an exercise: ``exercise(name, what, reference=..., returns=..., cases=...)``."""
    if name in EXERCISES:
        raise ValueError(f"an exercise named {name!r} is already registered")
    EXERCISES[name] = Exercise(name, what, **fields)
    return EXERCISES[name]


def mistake(name, hint):
    """Decorator: plant a known-wrong implementation of exercise ``name`` with its hint."""
    def register(fn):
        EXERCISES[name].mistakes.append(Mistake(hint, fn))
        return fn
    return register


@dataclass
class CheckResult:
    """What ``check`` found. ``passed`` is True only when every output was right."""
    name: str
    status: str                # "passed" | "failed" | "not done" | "error" | "timed out"
    errors: dict               # output -> max relative error over the cases (inf: wrong type,
                               # shape, dtype or non-finite; 1.0: an exact value that differs;
                               # "float32": the float32 case)
    bound: float
    message: str               # the lines check() printed
    hints: list = field(default_factory=list)   # hints of the planted mistakes recognised
    reason: str = ""           # short, for tables: "3.1e-01", "shape", "ValueError", ...
    seconds: float = 0.0
    printed: bool = field(default=False, repr=False)   # check() has just printed the message

    @property
    def passed(self):
        return self.status == "passed"

    def to_json(self):
        return {"exercise": self.name, "status": self.status, "passed": self.passed,
                "errors": {k: (v if math.isfinite(v) else None) for k, v in self.errors.items()},
                "bound": self.bound, "reason": self.reason, "hints": self.hints,
                "seconds": round(self.seconds, 4)}

    def _ipython_display_(self):
        """In a notebook a check cell shows the lines check() printed, not this result again;
        displayed later (``r`` in another cell) it shows its repr."""
        if self.printed:
            self.printed = False
        else:
            print(repr(self))

    def __repr__(self):
        worst = max(self.errors.values(), default=math.nan)
        extra = f", worst error {worst:.1e}" if self.errors else ""
        return f"CheckResult({self.name!r}: {self.status}{extra})"
