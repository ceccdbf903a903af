"""Byte-level BPE: the readable algorithm (minillm/tokenizers/bpe_basic.py) and BPETokenizer
(minillm/tokenizers/bpe.py), which must give the same merges and ids, faster."""
import inspect
import json
import os
import random
import time

import numpy as np
import pytest

from minillm import load_tokenizer
from minillm.tokenizers import bpe_basic
from minillm.tokenizers.bpe import BPETokenizer, apply_merges, learn_merges
from minillm.tokenizers.gpt2_files import GPT2_PATTERN

regex = pytest.importorskip("regex")

EOT = "<|endoftext|>"

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.\n"
    "Then the fox returns, and the dog wakes: 'Who's there?' said the dog. It's the fox!\n"
    "Crème brûlée is a dessert. Naïve cooks burn it; clever cooks don't.\n"
    "In 2024 there were 365 days, 12 months and 52 weeks in the year.\n"
) * 8 + EOT + "東京は日本の首都です。 🤖 robots  and   spaces\n\n"

ROUND_TRIP = {
    "empty": "",
    "ascii": "Hello, world! It's 2024.",
    "accents": "Crème brûlée, naïve façade, Ångström, Øresund",
    "cjk": "東京は日本の首都です。中文分词测试",
    "emoji": "🤖👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷",
    "whitespace runs": "  leading\t\ttabs\n\n\n   trailing   \r\n",
    "endoftext": f"one{EOT}two{EOT}",
    "only endoftext": EOT,
    "broken special": "<|endoftext| and <|endoftext",
    "control bytes": "\x00\x01\x7f nul\u00a0nbsp\u200bzw",
}


@pytest.fixture(scope="module")
def tokenizers_by_kind():
    """A tokenizer trained without pre-tokenization and one with GPT-2's pattern."""
    return {
        "raw": BPETokenizer.train(TRAIN_TEXT, 330, pattern=None, special_tokens=[EOT]),
        "gpt2": BPETokenizer.train(TRAIN_TEXT, 330, pattern="gpt2", special_tokens=[EOT]),
    }


def random_text(rng, n):
    alphabet = "aaaabbbcc d e\n'é中🤖 .,0123"
    return "".join(rng.choice(alphabet) for _ in range(n))


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("kind", ["raw", "gpt2"])
@pytest.mark.parametrize("name", ROUND_TRIP)
@pytest.mark.parametrize("allowed", ["all", "none"])
def test_round_trip(tokenizers_by_kind, kind, name, allowed):
    tok = tokenizers_by_kind[kind]
    text = ROUND_TRIP[name]
    ids = tok.encode(text, allowed_special=allowed)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids, dtype=np.int64)) == text


@pytest.mark.parametrize("kind", ["raw", "gpt2"])
def test_training_text_compresses(tokenizers_by_kind, kind):
    tok = tokenizers_by_kind[kind]
    assert tok.vocab_size == 330
    assert len(tok.encode(TRAIN_TEXT)) < len(TRAIN_TEXT.encode("utf-8")) / 2


@pytest.mark.parametrize("kind", ["raw", "gpt2"])
def test_special_token_handling(tokenizers_by_kind, kind):
    tok = tokenizers_by_kind[kind]
    assert tok.special_tokens == {EOT: 329} and tok.eot_token == 329
    text = f"a{EOT}b"
    assert tok.encode(text).count(329) == 1
    assert tok.encode(text, allowed_special={EOT}) == tok.encode(text)
    assert tok.encode(text) == tok.encode("a") + [329] + tok.encode("b")
    plain = tok.encode(text, allowed_special="none")
    assert 329 not in plain and tok.decode(plain) == text
    assert len(plain) > 3


@pytest.mark.parametrize("allowed", [{"<|unknown|>"}, "some", 5])
def test_bad_allowed_special(tokenizers_by_kind, allowed):
    with pytest.raises(ValueError, match="allowed_special"):
        tokenizers_by_kind["gpt2"].encode("hi", allowed_special=allowed)


def test_special_tokens_are_cut_out_before_training():
    # Left in, "<|endoftext|>" would add pairs seen 50 times each, and the smallest,
    # (ord("<"), ord("|")) = (60, 124), would win the tie with (97, 98) "ab".
    tok = BPETokenizer.train(f"ab{EOT}" * 50, 258, pattern=None, special_tokens=[EOT])
    assert tok.merges == [(97, 98, 256)] and tok.special_tokens == {EOT: 257}


# ------------------------------------------------------------------ training

def test_readable_steps_on_the_worked_example():
    ids = list(b"aaabdaaabac")
    assert bpe_basic.get_stats(ids)[(97, 97)] == 4
    assert bpe_basic.merge(ids, (97, 97), 256) == [256, 97, 98, 100, 256, 97, 98, 97, 99]
    merges = bpe_basic.train([ids], 259)
    assert bpe_basic.decode(bpe_basic.encode(ids, merges), merges) == "aaabdaaabac"


def test_worked_example():
    # Wikipedia's example "aaabdaaabac" on raw bytes (a=97, b=98, c=99, d=100):
    # 1. pair counts: aa=4 (overlapping), ab=2, others 1  -> merge (97, 97) = 256 "aa".
    #    Left to right, "aaab" -> [256, a, b]:  256 a b d 256 a b a c
    # 2. (256, 97) and (97, 98) both occur twice; the tie goes to the smaller pair,
    #    (97, 98) -> 257 "ab":                  256 257 d 256 257 a c
    # 3. (256, 257) occurs twice, all else once -> 258 "aaab":  258 d 258 a c
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern=None)
    assert tok.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.token_bytes(258) == b"aaab"
    assert tok.vocab_size == 259 and tok.special_tokens == {}


@pytest.mark.parametrize("text, first_merge", [
    ("cdab", (97, 98)),      # cd, da, ab once each: the smallest pair wins, not the first seen
    ("zzyy", (121, 121)),    # zz and yy once each (zy too): (121, 121) < (121, 122) < (122, ...)
    ("xyxyab", (120, 121)),  # xy twice beats everything seen once
])
def test_tie_rule(text, first_merge):
    tok = BPETokenizer.train(text, 257, pattern=None)
    assert tok.merges == [(*first_merge, 256)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pattern", [None, "gpt2"])
def test_training_equals_the_readable_algorithm(seed, pattern):
    rng = random.Random(seed)
    text = random_text(rng, 600)
    chunks = [text] if pattern is None else regex.findall(GPT2_PATTERN, text)
    expected = bpe_basic.train([list(c.encode("utf-8")) for c in chunks], 256 + 40)
    assert BPETokenizer.train(text, 256 + 40, pattern=pattern).merges == expected


@pytest.mark.parametrize("seed", range(4))
def test_encoding_equals_the_readable_algorithm(tokenizers_by_kind, seed):
    rng = random.Random(seed)
    for tok in tokenizers_by_kind.values():
        text = random_text(rng, 300) + "aaaaaaa bbbbbbbb the fox the dog"
        for chunk in ([text] if tok.pattern is None else regex.findall(GPT2_PATTERN, text)):
            ids = list(chunk.encode("utf-8"))
            assert apply_merges(ids, tok._rank, tok._merged) == bpe_basic.encode(ids, tok.merges)


def test_learn_merges_counts_repeated_chunks():
    # {"ab": 3, "bc": 1}: (a,b) has count 3 -> 256; then only (b,c) is left -> 257.
    assert learn_merges({b"ab": 3, b"bc": 1}, 258) == [(97, 98, 256), (98, 99, 257)]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="hello", vocab_size=255), "vocab_size"),
    (dict(text="hello", vocab_size=256, special_tokens=[EOT]), "vocab_size"),
    (dict(text="hello", vocab_size=300), "only allows 260 tokens"),
    (dict(text="hi", vocab_size=300, special_tokens=["<a>", "<a>"]), "duplicates"),
    (dict(text="hi", vocab_size=300, pattern="(unclosed"), "pattern"),
])
def test_bad_training_arguments(kwargs, message):
    kwargs.setdefault("pattern", None)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.train(**kwargs)


def test_training_needs_a_string():
    with pytest.raises(TypeError, match="str"):
        BPETokenizer.train(b"bytes", 300)


# ------------------------------------------------------------------ decode

def test_decode_replaces_invalid_utf8():
    tok = BPETokenizer()
    assert tok.decode([0xE6, 0x9D]) == "\ufffd"  # first two bytes of a 3-byte character
    assert tok.decode([104, 0xFF, 105]) == "h\ufffdi"
    assert tok.decode(np.array([0xE6, 0x9D, 0xB1])) == "東"


@pytest.mark.parametrize("bad", [[256], [-1], [1.5], ["a"]])
def test_decode_rejects_unknown_ids(bad):
    with pytest.raises(ValueError, match="unknown token id"):
        BPETokenizer().decode(bad)


def test_encode_rejects_bytes():
    with pytest.raises(TypeError, match="str"):
        BPETokenizer().encode(b"abc")


# ------------------------------------------------------------------ save / load

@pytest.mark.parametrize("kind", ["raw", "gpt2"])
def test_save_load_round_trip(tokenizers_by_kind, kind, tmp_path):
    tok = tokenizers_by_kind[kind]
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "bpe"
    assert os.listdir(path.parent) == ["tok.json"]  # no temp file left behind
    again = load_tokenizer(path)
    assert (again.merges, again.special_tokens, again.pattern) == (tok.merges, tok.special_tokens, tok.pattern)
    assert again.vocab_size == tok.vocab_size
    for text in [*ROUND_TRIP.values(), TRAIN_TEXT]:
        assert again.encode(text) == tok.encode(text)


def bpe_file(tmp_path, **changes):
    data = BPETokenizer.train("abcabcab", 258, pattern=None, special_tokens=[EOT]).to_dict()
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(type="char"), "not a BPE tokenizer file"),
    (dict(type=None), "not a BPE tokenizer file"),
    (dict(merges=None), r"missing field\(s\) \['merges'\]"),
    (dict(merges=[[97, 98, 256], [256, 999, 257]]), "no earlier merge or byte defines"),
    (dict(merges=[[97, 98]]), "three ids"),
    (dict(merges=[[97, 98, 99]]), "reuses id 99"),
    (dict(byte_ids=list(range(255))), "byte_ids"),
    (dict(special_tokens={EOT: 100}), "already a regular token"),
    (dict(special_tokens=[EOT]), "special_tokens"),
    (dict(pattern="(unclosed"), "pattern"),
    (dict(pattern=5), "pattern"),
])
def test_load_rejects_malformed_files(tmp_path, changes, message):
    path = bpe_file(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as err:
        BPETokenizer.from_dict(json.loads(path.read_text(encoding="utf-8")), source=path)
    assert str(path) in str(err.value)


def test_load_rejects_bad_json(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"type": "bpe", ', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(path)


# ------------------------------------------------------------------ Tiny Shakespeare

def test_shakespeare_training(shakespeare):
    text = shakespeare
    start = time.perf_counter()
    tok = BPETokenizer.train(text, 1000, special_tokens=[EOT])
    seconds = time.perf_counter() - start
    assert seconds < 60, f"training took {seconds:.1f} s"
    assert tok.vocab_size == 1000 and tok.eot_token == 999
    assert len({tok.token_bytes(i) for i in range(999)}) == 999  # every token is different
    ids = tok.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2
    assert tok.decode(ids) == text


# ------------------------------------------------------------------ Hugging Face

HELD_OUT = (
    "Hello there!  The fox, the dog and the cat's toys.\n\n\tNaïve crème 東京 🤖 "
    f"2025 numbers 123456{EOT}after special   spaces  \nend"
)


@pytest.fixture
def hf_files(tmp_path):
    """vocab.json + merges.txt trained by Hugging Face's byte-level BPE."""
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.ByteLevelBPETokenizer(add_prefix_space=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TRAIN_TEXT.replace(EOT, ""), encoding="utf-8")
    hf.train([str(corpus)], vocab_size=400, min_frequency=2, special_tokens=[EOT], show_progress=False)
    folder = tmp_path / "hf"
    folder.mkdir()
    hf.save_model(str(folder))
    return hf, folder


def test_matches_hugging_face_tokenizers(hf_files):
    hf, folder = hf_files
    tok = BPETokenizer.from_gpt2(folder)
    assert tok.eot_token == hf.token_to_id(EOT)
    for text in [HELD_OUT, TRAIN_TEXT, *ROUND_TRIP.values()]:
        assert tok.encode(text) == hf.encode(text).ids
    assert tok.decode(tok.encode(HELD_OUT)) == HELD_OUT


def test_matches_transformers_gpt2_tokenizer(hf_files):
    transformers = pytest.importorskip("transformers")
    _, folder = hf_files
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    # transformers 5 names the file arguments vocab= / merges=, version 4 vocab_file= / merges_file=
    if "vocab" in inspect.signature(transformers.GPT2TokenizerFast.__init__).parameters:
        hf = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    else:
        hf = transformers.GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    tok = BPETokenizer.from_gpt2(folder)
    assert len(hf) == tok.vocab_size
    for text in [HELD_OUT, *ROUND_TRIP.values()]:
        assert tok.encode(text) == hf(text)["input_ids"]


def test_trained_files_load_in_hugging_face(tokenizers_by_kind, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers_by_kind["gpt2"]
    tok.to_gpt2(tmp_path)
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(tmp_path / "vocab.json"),
                                                              str(tmp_path / "merges.txt")))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens([EOT])
    for text in [HELD_OUT, TRAIN_TEXT, *ROUND_TRIP.values()]:
        assert hf.encode(text).ids == tok.encode(text)


@pytest.mark.parametrize("kind", ["raw", "gpt2"])
def test_trained_tokenizer_survives_gpt2_files(tokenizers_by_kind, kind, tmp_path):
    tok = tokenizers_by_kind[kind]
    tok.to_gpt2(tmp_path)
    again = BPETokenizer.from_gpt2(tmp_path, pattern=tok.pattern)
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens
    assert again.encode(TRAIN_TEXT) == tok.encode(TRAIN_TEXT)
