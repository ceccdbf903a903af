"""CharTokenizer (minillm/tokenizers/char.py): vocabulary, encode/decode, errors, save."""
import json

import numpy as np
import pytest

from minillm.tokenizers import CharTokenizer, load_tokenizer

TEXTS = [
    "hello world",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "a",
    "tabs\tand\r\nnewlines\n\n",
    "accents: café naïve Ångström, ß, 日本語, emoji 😀🎉",
    "\x00null and \u200bzero-width",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids)) == text


@pytest.mark.parametrize("text", TEXTS)
def test_encode_array_equals_encode(text):
    tok = CharTokenizer.from_text(text)
    arr = tok.encode_array(text)
    assert arr.dtype == np.int64
    assert arr.shape == (len(text),)
    assert arr.tolist() == tok.encode(text)


def test_encode_empty_text():
    tok = CharTokenizer.from_text("abc")
    assert tok.encode("") == []
    assert tok.encode_array("").shape == (0,)
    assert tok.decode([]) == ""
    assert tok.decode(np.array([], dtype=np.int64)) == ""


def test_vocab_is_sorted_unique_characters():
    tok = CharTokenizer.from_text("banana bread!")
    assert tok.chars == [" ", "!", "a", "b", "d", "e", "n", "r"]
    assert tok.vocab_size == 8
    assert tok.encode("a") == [2]
    assert tok.stoi["r"] == 7


def test_chars_returns_a_copy():
    tok = CharTokenizer.from_text("ab")
    tok.chars.append("z")
    assert tok.chars == ["a", "b"]


@pytest.mark.parametrize("chars, problem", [
    ([], "at least one character"),
    (["a", "bc"], "single character"),
    (["a", 5], "single character"),
    (["a", "b", "a"], "appears twice"),
])
def test_constructor_rejects_bad_vocabularies(chars, problem):
    with pytest.raises(ValueError, match=problem):
        CharTokenizer(chars)


def test_from_text_rejects_empty_text():
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("method", ["encode", "encode_array"])
def test_unknown_character_error_names_char_code_point_and_position(method):
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError) as info:
        getattr(tok, method)("abc é")
    msg = str(info.value)
    assert "'é'" in msg
    assert "U+00E9" in msg
    assert "position 4" in msg


@pytest.mark.parametrize("method", ["encode", "encode_array"])
def test_several_unknown_characters_are_all_listed(method):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as info:
        getattr(tok, method)("aéb😀cé\t")
    msg = str(info.value)
    assert msg.startswith("3 characters are not in the vocabulary")
    assert "'é' (U+00E9) at position 1 (2 times)" in msg
    assert "'😀' (U+1F600) at position 3" in msg
    assert "'\\t' (U+0009) at position 6" in msg


def test_very_many_unknown_characters_are_summarised():
    tok = CharTokenizer.from_text("a")
    with pytest.raises(ValueError, match=r"26 characters .* and 16 more"):
        tok.encode("abcdefghijklmnopqrstuvwxyz!")


def test_encode_array_handles_code_points_beyond_the_table():
    tok = CharTokenizer.from_text("ab")          # table only covers code points up to 'b'
    with pytest.raises(ValueError, match=r"U\+10FFFF"):
        tok.encode_array("a\U0010ffff")


@pytest.mark.parametrize("ids, bad, pos", [
    ([0, 1, 3], 3, 2),
    ([-1], -1, 0),
    (np.array([2, 0, 99]), 99, 2),
    (np.array([0, -5], dtype=np.int32), -5, 1),
])
def test_decode_rejects_ids_outside_vocab(ids, bad, pos):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=rf"id {bad} at position {pos} .*0\.\.2"):
        tok.decode(ids)


@pytest.mark.parametrize("ids", [[0, 1.0], [True], np.array([0.0, 1.0]), ["a"]])
def test_decode_rejects_non_integer_ids(ids):
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match="integer"):
        tok.decode(ids)


def test_decode_rejects_2d_arrays():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


def test_missing_lists_sorted_distinct_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    assert tok.missing("cabbage! éé") == [" ", "!", "e", "g", "é"]
    assert tok.missing("abcabc") == []


def test_extend_keeps_old_ids_and_appends_new_ones():
    old = CharTokenizer.from_text("hello world")
    text = "hello wörld, ÿes"
    new = old.extend(old.missing(text))
    assert new.chars[:old.vocab_size] == old.chars
    assert new.chars[old.vocab_size:] == [",", "s", "ö", "ÿ"]
    # every id the old tokenizer produced is unchanged
    assert new.encode("hello world") == old.encode("hello world")
    assert new.decode(new.encode(text)) == text
    assert new.encode_array(text).tolist() == new.encode(text)
    assert old.vocab_size == len(set("hello world"))        # the original is untouched
    with pytest.raises(ValueError):
        old.encode(text)


def test_extend_appends_in_given_order_and_skips_known_or_repeated():
    tok = CharTokenizer.from_text("ab").extend("zbyz")
    assert tok.chars == ["a", "b", "z", "y"]
    assert CharTokenizer.from_text("ab").extend([]).chars == ["a", "b"]


def test_save_round_trip(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be: ñ 😀\n").extend(["é"])
    path = tok.save(tmp_path / "sub" / "tok.json")
    assert path == tmp_path / "sub" / "tok.json"
    assert json.loads(path.read_text(encoding="utf-8")) == {"type": "char", "chars": tok.chars}
    loaded = load_tokenizer(path)
    assert loaded == tok and isinstance(loaded, CharTokenizer)
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]     # no temp files left


def test_save_overwrites_existing_file(tmp_path):
    path = tmp_path / "tok.json"
    CharTokenizer.from_text("abc").save(path)
    CharTokenizer.from_text("xy").save(path)
    assert load_tokenizer(path).chars == ["x", "y"]


def test_shakespeare_like_text_encodes_to_small_ids():
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 50
    tok = CharTokenizer.from_text(text)
    arr = tok.encode_array(text)
    assert arr.max() == tok.vocab_size - 1
    assert arr.min() == 0
    assert tok.decode(arr) == text
