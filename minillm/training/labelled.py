"""Labelled text for classification: files, the sentiment set that ships with minillm, a
stratified split, characters a model lacks, and token ids padded into one array.

    file        one labelled text per record, in one of three layouts (by the file's name):
                  .csv          columns text,label (a header row naming them; more are ignored)
                  .jsonl/.json  one {"text": ..., "label": ...} object per line
                  anything else text<TAB>label lines, the layout of the UCI release
                a label is a name ("spam") or an integer (0, "1"); the classes are the sorted
                distinct labels (integers in numeric order), class k = names[k]
    sentiment   "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015; UCI dataset 331,
                CC BY 4.0): 3 x 1,000 review sentences from Amazon, IMDb and Yelp, 500 negative
                and 500 positive in each, in minillm/datasets/sentiment/ (checked by sha256)
    split       stratified: every (source, class) group is shuffled with a seeded generator and
                cut into train / val / test, so each part keeps the class balance
    encode      ids (N, block_size), right-padded with id 0, and lengths (N,) of the real
                parts; a text longer than the context keeps its last (or first) block_size ids

Shape legend: N texts, T time (block_size).
"""
import csv
import hashlib
import io
import json
import unicodedata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import EMBEDDED, read_text_file

SENTIMENT = {     # file -> (bytes, sha256) of the UCI release, copied unmodified
    "amazon_cells_labelled.txt": (58226, "47003fc0a0d4840b00e96e715b6189bad09e7443a3da41c4cbe1"
                                         "2ffc79f86ae3"),
    "imdb_labelled.txt": (85285, "aef2e49e3da25714d61175e3a6e68eeef74a20a2f914318dc3be9947ea8"
                                 "6512d"),
    "yelp_labelled.txt": (61320, "c76468b7b5c6e56a0804d728345c5f84aa2142ddb214420f61cc9cfd4c0"
                                 "0d2ea"),
}
SENTIMENT_NAMES = ["negative", "positive"]          # the release's labels 0 and 1
LABELLED_DATASETS = ("sentiment",)
KEEP = ("last", "first")

# What --map-chars turns a character the vocabulary lacks into (when the replacement is known):
# digits become '3' (Tiny Shakespeare's only digit: "a number stood here"), brackets commas,
# Windows-1252 dashes and ellipsis read as Latin-1 (U+0096, U+0097, U+0085) '-' and '.'; any
# other character loses its accent (NFKD: 'é' -> 'e'), or else becomes a space.
CHAR_MAP = {**{d: "3" for d in "0123456789"}, '"': "'", "(": ",", ")": ",", "[": ",",
            "]": ",", "{": ",", "}": ",", "/": "-", "+": "&", "\x96": "-", "\x97": "-",
            "\x85": ".", "\t": " "}


class Labelled(NamedTuple):
    texts: list                  # N strings
    labels: np.ndarray           # (N,) int64 class index, into names
    names: list                  # K label names; class k is names[k]
    groups: np.ndarray           # (N,) int64 source of each text (0 for a single file)
    description: str             # where the data came from, for the log


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def class_names(raw):
    """(names, indices) of raw labels: the sorted distinct labels (integers, or strings of
    digits, in numeric order) and each label's class index.

    >>> class_names(["spam", "ham", "spam"])
    (['ham', 'spam'], array([1, 0, 1]))
    >>> class_names([10, "2", 2])[0]
    ['2', '10']
    """
    text = [str(r).strip() for r in raw]
    integers = all(t.lstrip("-").isdigit() for t in text)
    key = (lambda t: int(t)) if integers else (lambda t: t)
    names = sorted({str(key(t)) for t in text}, key=key)
    index = {name: k for k, name in enumerate(names)}
    return names, np.array([index[str(key(t))] for t in text], dtype=np.int64)


def _records(path, text):
    """(texts, raw labels) of a file's text in the layout its name says; errors name the line."""
    suffix = Path(path).suffix.lower()
    texts, raw = [], []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a CSV file needs a header row with the columns text and "
                             f"label; found {reader.fieldnames}")
        for row in reader:
            texts.append(row["text"])
            raw.append(row["label"])
        return texts, raw, lambda n: f"row {n + 2}"
    lines = text.split("\n")          # only "\n": the IMDb file has U+0085 (NEL) inside lines
    numbers = [n for n, line in enumerate(lines, 1) if line.strip()]
    for n in numbers:
        line = lines[n - 1].rstrip("\r")
        if suffix in (".jsonl", ".json"):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path} line {n}: not JSON ({e})") from None
            if not (isinstance(record, dict) and isinstance(record.get("text"), str)
                    and isinstance(record.get("label"), (str, int))
                    and not isinstance(record.get("label"), bool)):
                raise ValueError(f"{path} line {n}: expected an object with a string 'text' "
                                 "and a string or integer 'label'")
            texts.append(record["text"])
            raw.append(record["label"])
        else:
            if "\t" not in line:
                raise ValueError(f"{path} line {n}: expected text<TAB>label, found no tab")
            sentence, label = line.rsplit("\t", 1)
            texts.append(sentence)
            raw.append(label)
    return texts, raw, lambda k: f"line {numbers[k]}"


def read_labelled(path, group=0):
    """The labelled texts of a TSV, CSV or JSONL file (see the module's doc) as a Labelled.

    Texts are stripped; an empty text or label, or a single class, is a ValueError naming the
    file and the line."""
    text = read_text_file(path)
    texts, raw, where = _records(path, text)
    texts = [t.strip() for t in texts]
    for k, (t, r) in enumerate(zip(texts, raw)):
        if not t or not str(r).strip():
            raise ValueError(f"{path} {where(k)}: empty {'text' if not t else 'label'}")
    if not texts:
        raise ValueError(f"{path} holds no labelled texts")
    names, labels = class_names(raw)
    if len(names) < 2:
        raise ValueError(f"{path}: every text has the label {names[0]!r}; a classifier needs "
                         "at least two classes")
    return Labelled(texts, labels, names, np.full(len(texts), group, dtype=np.int64),
                    f"{path} ({len(texts):,} texts)")


def read_sentiment():
    """The sentiment set that ships with minillm: 3,000 texts, classes negative and positive,
    groups 0, 1, 2 = Amazon, IMDb, Yelp. Each file is checked against its size and sha256."""
    texts, labels, groups = [], [], []
    for g, (name, (size, sha256)) in enumerate(SENTIMENT.items()):
        path = EMBEDDED / "sentiment" / name
        raw = path.read_bytes()
        if len(raw) != size or hashlib.sha256(raw).hexdigest() != sha256:
            raise ValueError(f"{path} is damaged (it does not match the checksum of the UCI "
                             "release); reinstall minillm")
        part = read_labelled(path, group=g)
        if part.names != ["0", "1"]:
            raise ValueError(f"{path}: expected the labels 0 and 1, found {part.names}")
        texts += part.texts
        labels.append(part.labels)
        groups.append(part.groups)
    return Labelled(texts, np.concatenate(labels), list(SENTIMENT_NAMES), np.concatenate(groups),
                    f"Sentiment Labelled Sentences ({len(texts):,} sentences from Amazon, IMDb "
                    "and Yelp reviews, shipped with minillm)")


def load_labelled(source):
    """A Labelled from a dataset name ("sentiment") or a file.

    >>> data = load_labelled("sentiment")
    >>> len(data.texts), data.names, int(data.labels.sum())
    (3000, ['negative', 'positive'], 1500)
    """
    if source == "sentiment":
        return read_sentiment()
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{source!r} is not a labelled dataset "
                                f"({', '.join(LABELLED_DATASETS)}) and the file {path} does not "
                                "exist")
    return read_labelled(path)


# ----------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------

def stratified_split(strata, rng, val_frac=0.1, test_frac=0.1):
    """(train, val, test) index arrays: every stratum (e.g. source * K + class) is shuffled with
    ``rng`` and cut so that val and test get round(frac * its size) of it, train the rest.

    >>> train, val, test = stratified_split(np.array([0] * 10 + [1] * 10),
    ...                                     np.random.default_rng(0))
    >>> len(train), len(val), len(test)
    (16, 2, 2)
    """
    parts = ([], [], [])
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        n_val, n_test = int(round(val_frac * len(idx))), int(round(test_frac * len(idx)))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    out = tuple(np.sort(np.concatenate(p)) for p in parts)
    empty = [name for name, p in zip(("train", "validation", "test"), out) if len(p) == 0]
    if empty:
        raise ValueError(f"splitting {len(strata)} texts leaves the {' and '.join(empty)} part "
                         "empty; use more data or larger --val-frac / --test-frac")
    return out


def split_labelled(data, seed, val_frac, test_frac):
    """{"train", "val", "test"}: index arrays of ``data``, stratified by (group, class) with
    ``np.random.default_rng(seed)``: the same seed and fractions give the same split."""
    strata = data.groups * len(data.names) + data.labels
    parts = stratified_split(strata, np.random.default_rng(seed), val_frac, test_frac)
    return dict(zip(("train", "val", "test"), parts))


def class_balance(labels, names, parts):
    """One line per class: its count in each part, e.g. "  negative  1,200 train  150 val ...".

    >>> print(class_balance(np.array([0, 1, 1]), ["no", "yes"], {"all": np.arange(3)}))
      no       1 all (33.3%)
      yes      2 all (66.7%)
    """
    width = max(len(n) for n in names)
    lines = []
    for k, name in enumerate(names):
        cells = []
        for part, rows in parts.items():
            n = int((labels[rows] == k).sum())
            cells.append(f"{n:>6,} {part} ({100.0 * n / max(len(rows), 1):.1f}%)")
        lines.append(f"  {name:<{width}} " + "  ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Characters and token ids
# ----------------------------------------------------------------------------------------------

def map_chars(text, known, table=CHAR_MAP):
    """``text`` with every character not in ``known`` replaced: through ``table`` if that gives
    a known character, else by its accent-free form (NFKD) if known, else by a space. Known
    characters never change.

    >>> map_chars('5 "stars" (café)', set("abcdefghijklmnopqrstuvwxyz '3,"))
    "3 'stars' ,cafe,"
    """
    out = []
    for c in text:
        if c in known:
            out.append(c)
        elif table.get(c, "\0") in known:
            out.append(table[c])
        else:
            base = "".join(ch for ch in unicodedata.normalize("NFKD", c) if ch in known)
            out.append(base if base else " ")
    return "".join(out)


def encode_texts(texts, tokenizer, block_size, keep="last"):
    """ids (N, block_size) int64, right-padded with id 0, and lengths (N,) of the real parts.

    A text of more than block_size tokens keeps its ``keep`` ("last" or "first") block_size.

    >>> from minillm.tokenizers import CharTokenizer
    >>> ids, lengths = encode_texts(["abc", "abcdef"], CharTokenizer.from_text("abcdef"), 4)
    >>> ids.tolist(), lengths.tolist()
    ([[0, 1, 2, 0], [2, 3, 4, 5]], [3, 4])
    """
    if keep not in KEEP:
        raise ValueError(f"unknown keep {keep!r}; use one of {KEEP}")
    ids = np.zeros((len(texts), block_size), dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):          # a loop over texts: data preparation, done once
        tokens = tokenizer.encode(text)
        if not tokens:
            raise ValueError(f"text {i} encodes to no tokens")
        tokens = tokens[-block_size:] if keep == "last" else tokens[:block_size]
        ids[i, :len(tokens)] = tokens
        lengths[i] = len(tokens)
    return ids, lengths
