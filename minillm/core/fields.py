"""Checked config fields: the one rule for every setting, used by the Python API and the CLI.

A config is a dataclass whose fields say what they accept: the type comes from the annotation,
the range from the field's metadata, and both are checked in one place:

    annotation   accepts                                    (None too, if the default is None)
    int          an integer (not a bool, not 2.0)
    float        a finite number (an int is fine; not nan, not inf, not a bool)
    str          a non-empty string
    bool         True or False

    metadata     meaning                 metadata     meaning
    "min": a     value >= a              "above": a   value > a
    "max": b     value <= b              "below": b   value < b
    "choices"    one of a list of values

``check_fields(self)`` in a dataclass's ``__post_init__`` checks every field (errors name the
field); ``option_type(f)`` is the argparse ``type=`` of the field's --flag (errors name the
option), so ``--beta1 1`` and ``OptimConfig(beta1=1.0)`` are refused by the same rule.

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Example:
...     beta: float = field(default=0.9, metadata={"min": 0.0, "below": 1.0})
...     def __post_init__(self):
...         check_fields(self)
>>> Example(beta=1.0)
Traceback (most recent call last):
...
ValueError: beta must be a number in [0, 1), got 1.0
"""
import argparse
import math
from dataclasses import fields

import numpy as np

KINDS = {int: "an integer", float: "a number", str: "a non-empty string", bool: "true or false"}


def _is_kind(value, kind):
    """Whether ``value`` is of the annotation ``kind`` as the table above says."""
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is int:
        return isinstance(value, (int, np.integer))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    if kind is str:
        return isinstance(value, str) and value != ""
    return True                                   # other annotations are not checked here


def _number(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe(f):
    """What field ``f`` accepts, e.g. "a number in [0, 1)" or "an integer >= 1"."""
    meta = f.metadata
    low = ("[", meta["min"]) if "min" in meta else ("(", meta["above"]) if "above" in meta \
        else None
    high = ("]", meta["max"]) if "max" in meta else (")", meta["below"]) if "below" in meta \
        else None
    text = KINDS.get(f.type, "a value")
    if low and high:
        return f"{text} in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{text} {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f"{text} {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return text


def _in_range(f, value):
    meta = f.metadata
    return (("min" not in meta or value >= meta["min"])
            and ("above" not in meta or value > meta["above"])
            and ("max" not in meta or value <= meta["max"])
            and ("below" not in meta or value < meta["below"]))


def problem(f, value):
    """What is wrong with ``value`` for field ``f`` ("must be ..."), or None if it is fine.
    Choices are not looked at here (argparse and ``check_fields`` check them)."""
    if value is None and f.default is None:
        return None
    if not _is_kind(value, f.type) or (f.type in (int, float) and not _in_range(f, value)):
        return f"must be {describe(f)}, got {value!r}"
    return None


def check_fields(config):
    """Check every field of the dataclass instance ``config`` (call it in ``__post_init__``);
    ValueError naming the first wrong field: "dropout must be a number in [0, 1), got 'x'"."""
    for f in fields(config):
        value = getattr(config, f.name)
        wrong = problem(f, value)
        if wrong:
            raise ValueError(f"{f.name} {wrong}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; use one of {choices}")


def option_type(f):
    """The argparse ``type=`` function of field ``f``'s --flag: text -> value, checked by
    ``problem``; argparse shows its message after the option ("argument --beta1: must be ...")."""
    def parse(text):
        value = text
        if f.type in (int, float):
            try:
                value = f.type(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {describe(f)}, got {text!r}") from None
        wrong = problem(f, value)
        if wrong:
            raise argparse.ArgumentTypeError(wrong)
        return value
    parse.__name__ = f.type.__name__ if isinstance(f.type, type) else "value"
    return parse
