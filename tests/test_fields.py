"""Checked config fields (minillm/core/fields.py): one rule per setting, from the annotation and
the metadata, used by __post_init__ (errors name the field) and by the CLI (errors name the
option); every config of the package follows it."""
import argparse
import dataclasses

import pytest

from minillm.cli import ExportConfig, SampleConfig, build_parser
from minillm.core.config import GPTConfig
from minillm.core.fields import check_fields, describe, option_type
from minillm.core.optim import OptimConfig
from minillm.training.finetune import FinetuneConfig
from minillm.training.train import TrainConfig

CONFIGS = [GPTConfig, OptimConfig, TrainConfig, FinetuneConfig, SampleConfig, ExportConfig]


@dataclasses.dataclass
class Example:
    count: int = dataclasses.field(default=1, metadata={"min": 1})
    rate: float = dataclasses.field(default=0.5, metadata={"above": 0.0, "max": 1.0})
    beta: float = dataclasses.field(default=0.9, metadata={"min": 0.0, "below": 1.0})
    name: str = dataclasses.field(default=None)
    flag: bool = False
    kind: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})

    def __post_init__(self):
        check_fields(self)


@pytest.mark.parametrize("changes, message", [
    (dict(count=0), "count must be an integer >= 1, got 0"),
    (dict(count=2.0), "count must be an integer >= 1, got 2.0"),
    (dict(count=True), "count must be an integer >= 1, got True"),
    (dict(count="3"), "count must be an integer >= 1, got '3'"),
    (dict(rate=0.0), "rate must be a number in (0, 1], got 0.0"),
    (dict(rate=float("nan")), "rate must be a number in (0, 1], got nan"),
    (dict(rate=float("inf")), "rate must be a number in (0, 1], got inf"),
    (dict(beta=1.0), "beta must be a number in [0, 1), got 1.0"),
    (dict(beta="0.5"), "beta must be a number in [0, 1), got '0.5'"),
    (dict(name=""), "name must be a non-empty string, got ''"),
    (dict(name=5), "name must be a non-empty string, got 5"),
    (dict(flag="yes"), "flag must be true or false, got 'yes'"),
    (dict(kind="c"), "unknown kind 'c'; use one of ('a', 'b')"),
])
def test_a_value_outside_its_rule_names_the_field(changes, message):
    with pytest.raises(ValueError) as e:
        Example(**changes)
    assert str(e.value) == message


def test_values_inside_the_rule_are_kept_as_given():
    example = Example(count=3, rate=1, beta=0.0, name="x", flag=True, kind="b")
    assert (example.count, example.rate, example.beta) == (3, 1, 0.0)
    assert Example(name=None).name is None                     # the default None stays allowed


@pytest.mark.parametrize("field_name, text, message", [
    ("count", "0", "must be an integer >= 1, got 0"),
    ("count", "2.5", "must be an integer >= 1, got '2.5'"),
    ("count", "ten", "must be an integer >= 1, got 'ten'"),
    ("rate", "nan", "must be a number in (0, 1], got nan"),
    ("beta", "1", "must be a number in [0, 1), got 1.0"),
    ("name", "", "must be a non-empty string, got ''"),
])
def test_the_option_parser_uses_the_same_rule(field_name, text, message):
    f = next(f for f in dataclasses.fields(Example) if f.name == field_name)
    with pytest.raises(argparse.ArgumentTypeError) as e:
        option_type(f)(text)
    assert str(e.value) == message
    good = {"count": "1", "rate": "1", "beta": "0.5", "name": "x"}[field_name]
    assert option_type(f)(good) == f.type(good)


def test_describe_reads_like_an_interval():
    described = {f.name: describe(f) for f in dataclasses.fields(Example)}
    assert described["rate"] == "a number in (0, 1]"
    assert described["count"] == "an integer >= 1"
    assert described["name"] == "a non-empty string"


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_checks_its_fields_and_its_defaults_pass(cls):
    cls()                                               # the defaults follow the rules
    for f in dataclasses.fields(cls):
        if f.type in (int, float) and any(k in f.metadata for k in ("min", "above")):
            low = f.metadata.get("min", f.metadata.get("above"))
            with pytest.raises(ValueError, match=f"^{f.name} must be "):
                cls(**{f.name: low - 1})


def test_every_numeric_option_has_a_range():
    """No integer or float option is left to accept anything (a hostile user tries -1)."""
    unbounded = [f"{cls.__name__}.{f.name}" for cls in CONFIGS for f in dataclasses.fields(cls)
                 if f.type in (int, float) and not set(f.metadata) & {"min", "above"}]
    assert unbounded == []
    args = build_parser().parse_args(["train", "--beta2", "0.95", "--seed", "0"])
    assert (args.beta2, args.seed) == (0.95, 0)
