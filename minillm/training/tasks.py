"""Small instruction tasks a character model can learn, made offline from Tiny Shakespeare.

    task        instruction           input    output
    capitalise  capitalise            hello    Hello
    reverse     reverse               hello    olleh
    repeat      repeat twice          hello    hello hello
    sort        sort the letters      hello    ehllo
    count       count the letters     hello    five
    add         add two and five      (none)   seven

Words: the lower-case words of 3 to 6 letters found at least 3 times in Tiny Shakespeare (the
model has read them), split once by a seeded generator into training (80%), validation (10%)
and test (10%) words; a word's records all belong to its part, so validation and test words
were never seen in training. Numbers are English words: Tiny Shakespeare has one digit, '3'.

add: the sums of the pairs (a, b), 0 <= a, b <= 9. Held out (10 for validation, 10 for test)
are 20 pairs (a, b), a != b, whose swapped pair (b, a) is a training pair. A model that learned
to add (and that addition commutes) answers them; one that memorised the 80 training sums does
not. Either way it is an honest measurement.

Records are Alpaca's, {"instruction", "input", "output"}, plus "task"; ``python -m minillm
tasks --out-dir DIR`` writes the three parts as JSON lines.
"""
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ..formats.files import atomic_write_text
from .data import load_text

TASKS = ("capitalise", "reverse", "repeat", "sort", "count", "add")
INSTRUCTIONS = {"capitalise": "capitalise", "reverse": "reverse", "repeat": "repeat twice",
                "sort": "sort the letters", "count": "count the letters"}
NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
           "fourteen fifteen sixteen seventeen eighteen").split()
PARTS = ("train", "val", "test")


def task_words(text=None, min_len=3, max_len=6, min_count=3):
    """The sorted distinct all-lower-case words of ``text`` (default: Tiny Shakespeare) with
    min_len .. max_len letters, found at least ``min_count`` times.

    >>> task_words("the cat and the dog saw the cat", min_count=2)
    ['cat', 'the']
    """
    text = load_text("shakespeare")[0] if text is None else text
    counts = Counter(re.findall(r"[A-Za-z]+", text))
    return sorted(w for w, c in counts.items()
                  if w.islower() and min_len <= len(w) <= max_len and c >= min_count)


def make_record(task, word=None, pair=None):
    """One record of ``task``: of a word, or (add) of a pair of numbers.

    >>> make_record("sort", "hello")
    {'task': 'sort', 'instruction': 'sort the letters', 'input': 'hello', 'output': 'ehllo'}
    >>> make_record("add", pair=(2, 5))["instruction"]
    'add two and five'
    """
    if task == "add":
        a, b = pair
        return {"task": task, "instruction": f"add {NUMBERS[a]} and {NUMBERS[b]}", "input": "",
                "output": NUMBERS[a + b]}
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; the tasks are {TASKS}")
    output = {"capitalise": word.capitalize(), "reverse": word[::-1], "repeat": f"{word} {word}",
              "sort": "".join(sorted(word)), "count": NUMBERS[len(word)]}[task]
    return {"task": task, "instruction": INSTRUCTIONS[task], "input": word, "output": output}


def split_tasks(seed=0, words=None):
    """{part: (words, pairs)} for the parts train, val and test (see the module's doc)."""
    words = task_words() if words is None else words
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(words))
    n_held = int(round(0.1 * len(words)))
    chosen = {"val": order[:n_held], "test": order[n_held:2 * n_held],
              "train": order[2 * n_held:]}
    unordered = [(a, b) for a in range(10) for b in range(a + 1, 10)]        # 45 with a < b
    held = [unordered[i] for i in rng.permutation(len(unordered))[:20]]
    held = [(a, b) if rng.random() < 0.5 else (b, a) for a, b in held]        # one order held out
    pairs = {"val": sorted(held[:10]), "test": sorted(held[10:]),
             "train": [(a, b) for a in range(10) for b in range(10) if (a, b) not in held]}
    return {part: ([words[i] for i in sorted(chosen[part])], pairs[part]) for part in PARTS}


def task_records(part="train", seed=0, tasks=TASKS, words=None):
    """Every record of ``part`` (train, val or test): each of its words for each word task, each
    of its pairs for add.

    >>> records = task_records("test", words=["abc", "def", "ghi", "jkl"] * 3)
    >>> sorted({r["task"] for r in records}) == sorted(TASKS)
    True
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; use one of {PARTS}")
    part_words, pairs = split_tasks(seed, words)[part]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the tasks are {TASKS}")
    records = []
    for task in tasks:
        if task == "add":
            records += [make_record(task, pair=p) for p in pairs]
        else:
            records += [make_record(task, w) for w in part_words]
    return records


def write_tasks(out_dir, seed=0):
    """Write train.jsonl, val.jsonl and test.jsonl into ``out_dir``; returns {part: count}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for part in PARTS:
        records = task_records(part, seed)
        atomic_write_text(out / f"{part}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        counts[part] = len(records)
    return counts
