"""Labelled data (minillm/training/labelled.py): the three file layouts, labels as names or
integers, clear errors, the sentiment set and its checksums, the stratified split, mapping
characters, encoding with truncation."""
import json

import numpy as np
import pytest

from minillm.tokenizers import CharTokenizer
from minillm.training import labelled
from minillm.training.labelled import (class_balance, class_names, encode_texts, load_labelled,
                                       map_chars, read_labelled, split_labelled,
                                       stratified_split)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_the_three_layouts_read_the_same(tmp_path):
    rows = [("Good food.", "pos"), ("Awful, \"cold\" food", "neg"), ("Fine", "pos")]
    tsv = write(tmp_path / "a.txt", "".join(f"{t}\t{l}\n" for t, l in rows) + "\n")
    csv = write(tmp_path / "a.csv", "id,text,label\n" + "".join(
        f'{i},"{t.replace(chr(34), chr(34) * 2)}",{l}\n' for i, (t, l) in enumerate(rows)))
    jsonl = write(tmp_path / "a.jsonl", "".join(json.dumps({"text": t, "label": l}) + "\n"
                                                for t, l in rows))
    for path in (tsv, csv, jsonl):
        data = read_labelled(path)
        assert data.texts == [t for t, _ in rows], path
        assert data.names == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1]


def test_integer_labels_keep_numeric_order(tmp_path):
    path = write(tmp_path / "a.jsonl", "".join(json.dumps({"text": f"t{i}", "label": v}) + "\n"
                                               for i, v in enumerate([10, 2, "2", 0])))
    data = read_labelled(path)
    assert data.names == ["0", "2", "10"] and data.labels.tolist() == [2, 1, 1, 0]
    names, index = class_names(["b", "a", "b"])
    assert names == ["a", "b"] and index.tolist() == [1, 0, 1]


@pytest.mark.parametrize("name, text, message", [
    ("a.tsv", "no tab here\nok\t1\n", "a.tsv line 1: expected text<TAB>label"),
    ("a.csv", "sentence,label\nx,1\n", "needs a header row with the columns text and label"),
    ("a.jsonl", '{"text": "x", "label": 1}\n{"text": "y"\n', "a.jsonl line 2: not JSON"),
    ("a.jsonl", '{"text": "x", "label": true}\n', "a string or integer 'label'"),
    ("a.tsv", "x\t1\ny\t1\n", "every text has the label '1'"),
    ("a.tsv", "x\t1\n \t0\n", "a.tsv line 2: empty text"),
])
def test_bad_files_are_named(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labelled(write(tmp_path / name, text))


def test_a_missing_file_or_dataset():
    with pytest.raises(FileNotFoundError, match="is not a labelled dataset"):
        load_labelled("no-such-file.tsv")


def test_the_sentiment_set_ships_checked(monkeypatch, tmp_path):
    data = load_labelled("sentiment")
    assert len(data.texts) == 3000 and data.names == ["negative", "positive"]
    assert np.bincount(data.groups * 2 + data.labels).tolist() == [500] * 6
    assert "\x85" in "".join(data.texts)           # NEL inside an IMDb line: not a line break
    damaged = tmp_path / "sentiment"
    damaged.mkdir()
    for name in labelled.SENTIMENT:
        (damaged / name).write_bytes((labelled.EMBEDDED / "sentiment" / name).read_bytes())
    with open(damaged / "yelp_labelled.txt", "r+b") as f:
        f.write(b"X")
    monkeypatch.setattr(labelled, "EMBEDDED", tmp_path)
    with pytest.raises(ValueError, match="yelp_labelled.txt is damaged"):
        load_labelled("sentiment")


def test_the_stratified_split_keeps_the_balance_and_its_seed():
    data = load_labelled("sentiment")
    parts = split_labelled(data, 0, 0.1, 0.1)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [2400, 300, 300]
    every = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(every), np.arange(3000))                 # disjoint, complete
    for rows in parts.values():                                            # 1/6 per stratum
        counts = np.bincount(data.groups[rows] * 2 + data.labels[rows])
        assert counts.min() == counts.max()
    again = split_labelled(data, 0, 0.1, 0.1)
    other = split_labelled(data, 1, 0.1, 0.1)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])
    assert "negative" in class_balance(data.labels, data.names, parts)


def test_a_split_that_leaves_a_part_empty_is_refused():
    with pytest.raises(ValueError, match="leaves the validation and test part empty"):
        stratified_split(np.array([0, 0, 1, 1]), np.random.default_rng(0), 0.1, 0.1)


def test_map_chars_gives_known_characters_only():
    known = set(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz '3,.-&").chars)
    text = 'Café "5/5" (100%) \x96 great\x85 naïve'
    mapped = map_chars(text, known)
    assert set(mapped) <= known and len(mapped) == len(text)
    assert mapped == " afe '3-3' ,333 , - great. naive"     # 'C' is unknown: a space
    assert map_chars("plain text", known) == "plain text"


def test_encode_keeps_the_last_or_first_tokens():
    tok = CharTokenizer.from_text("abcdefgh")
    ids, lengths = encode_texts(["abcdefgh", "ab"], tok, 4, keep="last")
    assert tok.decode(ids[0]) == "efgh" and lengths.tolist() == [4, 2]
    assert ids[1].tolist() == [0, 1, 0, 0]                                 # right-padded
    ids, _ = encode_texts(["abcdefgh"], tok, 4, keep="first")
    assert tok.decode(ids[0]) == "abcd"
    with pytest.raises(ValueError, match="unknown keep"):
        encode_texts(["a"], tok, 4, keep="middle")
