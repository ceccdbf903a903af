"""The generated instruction tasks (minillm/training/tasks.py): right answers, disjoint seeded
parts, held-out sums whose swapped pair is a training sum, and the tasks command."""
import json

import pytest

from minillm.cli import main
from minillm.training.tasks import (NUMBERS, PARTS, TASKS, make_record, split_tasks,
                                    task_records, task_words)


def test_every_task_answers_right():
    assert make_record("capitalise", "hello")["output"] == "Hello"
    assert make_record("reverse", "hello")["output"] == "olleh"
    assert make_record("repeat", "hello")["output"] == "hello hello"
    assert make_record("sort", "hello")["output"] == "ehllo"
    assert make_record("count", "hello")["output"] == "five"
    add = make_record("add", pair=(9, 9))
    assert add == {"task": "add", "instruction": "add nine and nine", "input": "",
                   "output": "eighteen"}
    with pytest.raises(ValueError, match="unknown task"):
        make_record("shout", "hello")
    assert len(TASKS) >= 5


def test_the_words_and_parts():
    words = task_words()
    assert all(w.islower() and 3 <= len(w) <= 6 for w in words) and len(words) > 2000
    parts = split_tasks(0)
    sets = {p: set(parts[p][0]) for p in PARTS}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
                or sets["val"] & sets["test"])
    assert set().union(*sets.values()) == set(words)
    assert split_tasks(0) == parts and split_tasks(1) != parts
    train_pairs = set(parts["train"][1])
    for part in ("val", "test"):
        for a, b in parts[part][1]:
            assert a != b and (a, b) not in train_pairs and (b, a) in train_pairs
    assert len(train_pairs) == 80


def test_records_of_a_part():
    records = task_records("val")
    assert {r["task"] for r in records} == set(TASKS)
    assert sum(r["task"] == "add" for r in records) == 10
    assert all(r["output"] in NUMBERS for r in records if r["task"] in ("count", "add"))
    with pytest.raises(ValueError, match="unknown part"):
        task_records("dev")


def test_the_tasks_command_writes_three_files(tmp_path, capsys):
    assert main(["tasks", "--out-dir", str(tmp_path / "t"), "--seed", "2"]) == 0
    assert "train.jsonl (10,810 records)" in capsys.readouterr().out
    lines = (tmp_path / "t" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == task_records("test", seed=2)
