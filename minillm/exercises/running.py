"""Running a student's function for ``check``: a time limit, the student's own line in a
traceback, the values it returned, and calling it the way minillm's function is called.

>>> invoke(lambda a, *, c=0: None, lambda a, c: (a, c), {"a": 1, "c": 2})   # c by keyword
(1, 2)
"""
import inspect
import os
import signal
import sysconfig
import threading
import traceback
from contextlib import contextmanager

import numpy as np


class Timeout(BaseException):
    """Raised by the SIGALRM handler; a BaseException so that `except Exception` can't eat it."""


@contextmanager
def time_limit(seconds):
    """Stop the body after ``seconds`` with a one-shot SIGALRM timer. Signals are handled only
    in the main thread (where a Jupyter kernel runs its cells) and between Python bytecodes: an
    endless Python loop is stopped, one huge NumPy call finishes first. Elsewhere (another
    thread, Windows) the body runs unlimited; the grader's time limit per notebook still holds."""
    usable = (seconds and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:                                       # even if it fired just now
            signal.signal(signal.SIGALRM, previous)


_LIBRARY_DIRS = tuple(os.path.realpath(p) + os.sep for p in {
    sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
    os.path.dirname(np.__file__), os.path.dirname(os.path.dirname(__file__))})


def student_line(tb):
    """'in linear_backward, line 7: dx = dout2 @ weight': the last frame of the traceback in the
    student's own code (outside NumPy, the standard library and minillm)."""
    frames = [f for f in traceback.extract_tb(tb)
              if not os.path.realpath(f.filename).startswith(_LIBRARY_DIRS)]
    if not frames:
        return ""
    f = frames[-1]
    text = f" {f.line.strip()}" if f.line else ""
    return f"in {f.name}, line {f.lineno}:{text}"


def signature_hint(ex, fn, passed=()):
    """A hint when fn's parameters are not those of the function it re-implements. Trailing
    options of minillm's function (with defaults) that the exercise's cases never pass
    (``passed``: the names they do pass) may be left out (``last_only`` of mha_forward, say)."""
    try:
        mine, theirs = inspect.signature(fn), inspect.signature(ex.reference)
    except (TypeError, ValueError):
        return []
    names = list(theirs.parameters)
    while names and names[-1] not in mine.parameters \
            and names[-1] not in passed \
            and theirs.parameters[names[-1]].default is not inspect.Parameter.empty:
        names.pop()                                    # an option the student may leave out
    if list(mine.parameters) == names:
        return []
    name = getattr(ex.reference, "__qualname__", ex.name)
    return [f"the signature must be exactly minillm's: {name}{theirs}"]


class BadReturn(Exception):
    """The function returned the wrong number or kind of values (a message for the student);
    ``run`` hooks raise it too."""


def what_it_is(ret):
    return "None (is a `return` missing?)" if ret is None else f"a {type(ret).__name__}"


def split_returns(ex, ret):
    """The returned value(s) as {name: value}."""
    if len(ex.returns) == 1:
        return {ex.returns[0]: ret}
    names = ", ".join(ex.returns)
    if not isinstance(ret, (tuple, list)):
        raise BadReturn(f"{ex.name} must return {len(ex.returns)} values ({names}), "
                         f"got {what_it_is(ret)}")
    if len(ret) != len(ex.returns):
        raise BadReturn(f"{ex.name} must return {len(ex.returns)} values ({names}), "
                         f"got {len(ret)}")
    return dict(zip(ex.returns, ret))


def _bind(signature_of, inputs):
    """(args, kwargs) to call a function with the signature of ``signature_of`` on ``inputs``
    (a dict by name): positional parameters in order, keyword-only ones (and any after a
    skipped default) by keyword."""
    args, kwargs, skipped = [], {}, False
    for p in inspect.signature(signature_of).parameters.values():
        if p.name not in inputs:
            skipped = True
        elif p.kind is p.KEYWORD_ONLY or skipped:
            kwargs[p.name] = inputs[p.name]
        else:
            args.append(inputs[p.name])
    return args, kwargs


def invoke(signature_of, fn, inputs):
    """Call fn on inputs as a function with the signature of ``signature_of`` would be called."""
    args, kwargs = _bind(signature_of, inputs)
    return fn(*args, **kwargs)
