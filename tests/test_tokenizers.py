"""The tokenizers package (minillm/tokenizers/__init__.py): the one load/dispatch of saved
tokenizers, and streaming decode."""
import numpy as np
import pytest

from minillm.tokenizers import (BPETokenizer, CharTokenizer, load_tokenizer, stream_decode,
                                tokenizer_from_dict)

TEXT = "hello world, the quick brown fox jumps over the lazy dog. héllo wörld 日本語 naïve café "


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(TEXT * 10, 300, special_tokens=["<|endoftext|>"])


def test_load_tokenizer_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(path)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"chars": ["a"]}', "no 'type'"),
    ('{"type": 3, "chars": ["a"]}', "not a string"),
    ('{"type": "wordpiece"}', "unknown tokenizer type 'wordpiece'"),
    ('{"type": "char"}', "no 'chars' list"),
    ('{"type": "char", "chars": "abc"}', "no 'chars' list"),
    ('{"type": "char", "chars": ["a", "a"]}', "bad 'chars' list.*twice"),
    ('{"type": "char", "chars": ["ab"]}', "bad 'chars' list.*single character"),
    ('{"type": "bpe", "merges": []}', "missing field"),
])
def test_load_tokenizer_bad_files(tmp_path, content, problem):
    path = tmp_path / "tok.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=problem) as info:
        load_tokenizer(path)
    assert "tok.json" in str(info.value)


def test_load_tokenizer_rejects_non_utf8(tmp_path):
    path = tmp_path / "tok.json"
    path.write_bytes(b'{"type": "char", "chars": ["\xff"]}')
    with pytest.raises(ValueError, match=r"tok.json is not UTF-8.*byte offset 28"):
        load_tokenizer(path)


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("héllo"), BPETokenizer(pattern=None)],
                         ids=["char", "bpe"])
def test_every_kind_comes_back_as_its_class(tmp_path, tok):
    path = tmp_path / "tok.json"
    tok.save(path)
    for again in (load_tokenizer(path), tokenizer_from_dict(tok.to_dict())):
        assert type(again) is type(tok)
        assert again.decode(again.encode("héllo")) == "héllo"


# -- streaming text --------------------------------------------------------------------------------

def test_stream_decode_waits_for_whole_characters():
    tok = BPETokenizer()                                    # one token per byte
    ids = list("a é 日!".encode("utf-8"))
    pieces = list(stream_decode(tok, iter(ids)))
    assert pieces == ["a", " ", "é", " ", "日", "!"]
    assert list(stream_decode(tok, [104, 0xE6, 0x97])) == ["h", "\ufffd"]     # unfinished at the end
    assert list(stream_decode(tok, [0xFF, 104])) == ["\ufffd", "h"]          # invalid byte


def test_stream_decode_joins_to_decode(tokenizer):
    rng = np.random.default_rng(0)
    for _ in range(50):
        ids = rng.integers(0, tokenizer.vocab_size, size=rng.integers(1, 30)).tolist()
        pieces = list(stream_decode(tokenizer, ids))
        assert all(pieces) and "".join(pieces) == tokenizer.decode(ids)
    ids = tokenizer.encode(TEXT)
    assert "".join(stream_decode(tokenizer, np.array(ids))) == TEXT


def test_stream_decode_char_tokenizer_decodes_each_id():
    tok = CharTokenizer.from_text("hello")
    assert list(stream_decode(tok, tok.encode("hole"))) == ["h", "o", "l", "e"]
