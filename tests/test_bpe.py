"""Tests for minillm.bpe (byte-level BPE) and minillm.gpt2_tokenizer (GPT-2 files)."""
import inspect
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minillm.bpe import BPETokenizer, apply_merges, learn_merges
from minillm.gpt2_tokenizer import GPT2_PATTERN, bytes_to_unicode, token_to_bytes

regex = pytest.importorskip("regex")

EOT = "<|endoftext|>"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")

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


# ------------------------------------------------------------------ reference code
# Slow but obviously correct versions of training and encoding, written separately
# from minillm.bpe: recount every pair before each merge, and rescan each chunk.

def ref_merge(ids, pair, new):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair):
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def ref_train(chunks, n_tokens):
    """Most frequent pair first; ties go to the smallest pair (a, b)."""
    words = Counter(c.encode("utf-8") for c in chunks)
    segs = {w: list(w) for w in words}
    merges, next_id = [], 256
    while next_id < n_tokens:
        counts = Counter()
        for w, seq in segs.items():
            for pair in zip(seq, seq[1:]):
                counts[pair] += words[w]
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append((*best, next_id))
        segs = {w: ref_merge(seq, best, next_id) for w, seq in segs.items()}
        next_id += 1
    return merges


def ref_encode_chunk(ids, merges):
    """GPT-2's rule: merge the lowest-ranked pair present (all occurrences), repeat."""
    rank = {(a, b): r for r, (a, b, _) in enumerate(merges)}
    made = {(a, b): n for a, b, n in merges}
    while len(ids) > 1:
        best = min(set(zip(ids, ids[1:])), key=lambda p: rank.get(p, float("inf")))
        if best not in rank:
            break
        ids = ref_merge(ids, best, made[best])
    return ids


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
def test_training_matches_full_recount(seed, pattern):
    rng = random.Random(seed)
    text = random_text(rng, 600)
    chunks = [text] if pattern is None else regex.findall(GPT2_PATTERN, text)
    expected = ref_train(chunks, 256 + 40)
    assert BPETokenizer.train(text, 256 + 40, pattern=pattern).merges == expected


@pytest.mark.parametrize("seed", range(4))
def test_encoding_matches_gpt2_rule(tokenizers_by_kind, seed):
    rng = random.Random(seed)
    for tok in tokenizers_by_kind.values():
        text = random_text(rng, 300) + "aaaaaaa bbbbbbbb the fox the dog"
        for chunk in ([text] if tok.pattern is None else regex.findall(GPT2_PATTERN, text)):
            ids = list(chunk.encode("utf-8"))
            assert apply_merges(ids, tok._rank, tok._merged) == ref_encode_chunk(ids, tok.merges)


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
    again = BPETokenizer.load(path)
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
        BPETokenizer.load(path)
    assert str(path) in str(err.value)


def test_load_rejects_bad_json(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"type": "bpe", ', encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        BPETokenizer.load(path)


# ------------------------------------------------------------------ GPT-2 files

def test_byte_alphabet():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert token_to_bytes("Ġthe") == b" the" and token_to_bytes("日") is None


def test_gpt2_pattern_is_gpt2s():
    assert GPT2_PATTERN == r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    assert regex.findall(GPT2_PATTERN, "I'll go  now!!") == ["I", "'ll", " go", " ", " now", "!!"]


# GPT-2's vocab.json numbers the 256 byte tokens in the table's order: the 188
# printable bytes first ("!" = 0, ..., "~" = 93, ...), then the others in byte
# order, so the space "Ġ" (byte 32, the 33rd non-printable) is 188 + 32 = 220.
BYTE_TOKENS = list(bytes_to_unicode().values())
ID = {tok: i for i, tok in enumerate(BYTE_TOKENS)}


def write_gpt2(folder, merges, extra_vocab, merges_text=None):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {**ID, **extra_vocab}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    text = merges_text if merges_text is not None else "#version: 0.2\n" + "".join(f"{m}\n" for m in merges)
    (folder / "merges.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def tiny_gpt2(tmp_path):
    # ids of the merged tokens deliberately not in merge order
    return write_gpt2(tmp_path / "tiny", ["Ġ t", "h e", "Ġt he"],
                      {"Ġthe": 256, "he": 257, "Ġt": 258, EOT: 259})


def test_tiny_gpt2_vocab(tiny_gpt2):
    tok = BPETokenizer.from_gpt2(tiny_gpt2)
    assert ID["!"] == 0 and ID["Ġ"] == 220 and ID["t"] == ord("t") - ord("!")
    assert tok.vocab_size == 260 and tok.eot_token == 259
    # " the": Ġ t h e -> (rank 0) Ġt h e -> (rank 1) Ġt he -> (rank 2) Ġthe
    assert tok.encode(" the") == [256]
    # "the" has no leading space: only "h e" applies
    assert tok.encode("the") == [ID["t"], 257]
    # " then" is one chunk " then": Ġthe + n
    assert tok.encode(" then" + EOT) == [256, ID["n"], 259]
    assert tok.encode("the the") == [ID["t"], 257, 256]
    assert tok.decode([256, 259, 257]) == f" the{EOT}he"


@pytest.mark.parametrize("merges, expected", [
    (["b c", "a b"], ["a", "bc"]),  # rank 0 "b c" is applied first
    (["a b", "b c"], ["ab", "c"]),
])
def test_merges_apply_by_rank(tmp_path, merges, expected):
    folder = write_gpt2(tmp_path / "rank", merges, {"ab": 300, "bc": 301})
    tok = BPETokenizer.from_gpt2(folder)
    ids = {**ID, "ab": 300, "bc": 301}
    assert tok.encode("abc") == [ids[t] for t in expected]


@pytest.mark.parametrize("merges, text, expected", [
    # GPT-2's encoder builds its ranks with dict(zip(merges, range(...))), so a pair
    # listed twice keeps its LAST rank: "a b" ranks 2, after "b c" (rank 1).
    (["a b", "b c", "a b"], "abc", ["a", "bc"]),
    # One round merges the lowest-ranked pair everywhere before looking at new pairs.
    # "xabab": only "a b" (rank 3) applies -> x ab ab; then "ab ab" (1) beats "x ab" (2).
    # (Merging "x ab" as soon as it appears would give xab ab instead.)
    (["a b", "ab ab", "x ab", "a b"], "xabab", ["x", "abab"]),
])
def test_gpt2_rank_details(tmp_path, merges, text, expected):
    made = [left + right for left, right in (m.split(" ") for m in merges)]
    extra = {token: 300 + k for k, token in enumerate(dict.fromkeys(made))}
    tok = BPETokenizer.from_gpt2(write_gpt2(tmp_path / "dup", merges, extra))
    assert tok.encode(text) == [{**ID, **extra}[t] for t in expected]


def test_gpt2_files_round_trip(tiny_gpt2, tmp_path):
    tok = BPETokenizer.from_gpt2(tiny_gpt2)
    tok.to_gpt2(tmp_path / "out")
    vocab = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == json.loads((tiny_gpt2 / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "out" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges == ["#version: 0.2", "Ġ t", "h e", "Ġt he"]
    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    text = " the then the<|endoftext|>theme"
    assert again.encode(text) == tok.encode(text) == BPETokenizer.from_gpt2(tmp_path / "out").encode(text)


@pytest.mark.parametrize("kind", ["raw", "gpt2"])
def test_trained_tokenizer_survives_gpt2_files(tokenizers_by_kind, kind, tmp_path):
    tok = tokenizers_by_kind[kind]
    tok.save_gpt2(tmp_path)
    again = BPETokenizer.from_gpt2(tmp_path, pattern=tok.pattern)
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens
    assert again.encode(TRAIN_TEXT) == tok.encode(TRAIN_TEXT)


MALFORMED_GPT2 = {
    "bad json": ({"vocab": "{oops"}, "vocab.json: not valid JSON"),
    "not an object": ({"vocab": "[1, 2]"}, "expected a JSON object"),
    "id not an int": ({"vocab_extra": {"he": "7"}}, "ids must be integers"),
    "shared id": ({"vocab_extra": {"he": 5}}, "id 5 is used by both"),
    "missing byte": ({"drop": "Ġ"}, "1 of the 256 single-byte tokens are missing"),
    "three parts": ({"merges_text": "#version: 0.2\nh e\nh e x\n"}, "merges.txt: line 3 should be two tokens"),
    "one part": ({"merges_text": "he\n"}, "line 1 should be two tokens"),
    "unknown part": ({"merges_text": "h é€\n"}, "line 1 uses token 'é€', which is not in"),
    "result missing": ({"merges_text": "h e\nt h\n"}, "line 2 makes token 'th', which is not in"),
    "used too early": ({"merges_text": "t he\nh e\n", "vocab_extra": {"he": 256, "the": 257}},
                       "line 1 uses token 'he' before any earlier merge"),
    "unknown token": ({"vocab_extra": {"he": 256, "zzz": 999}}, "token 'zzz' \\(id 999\\) is not a byte"),
}


@pytest.mark.parametrize("name", MALFORMED_GPT2)
def test_malformed_gpt2_files(tmp_path, name):
    spec, message = MALFORMED_GPT2[name]
    vocab = {**ID, **spec.get("vocab_extra", {"he": 256})}
    vocab.pop(spec.get("drop"), None)
    (tmp_path / "vocab.json").write_text(spec.get("vocab", json.dumps(vocab)), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(spec.get("merges_text", "#version: 0.2\nh e\n"), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_gpt2(tmp_path)


def test_listed_special_tokens(tmp_path):
    write_gpt2(tmp_path, [], {"<pad>": 256, EOT: 257})
    with pytest.raises(ValueError, match="'<pad>'"):
        BPETokenizer.from_gpt2(tmp_path)
    tok = BPETokenizer.from_gpt2(tmp_path, special_tokens=["<pad>", EOT])
    assert tok.special_tokens == {"<pad>": 256, EOT: 257}
    assert tok.encode("a<pad>") == [ID["a"], 256]


def test_missing_gpt2_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        BPETokenizer.from_gpt2(tmp_path)


# ------------------------------------------------------------------ Tiny Shakespeare

@pytest.fixture(scope="module")
def shakespeare():
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    start = time.perf_counter()
    tok = BPETokenizer.train(text, 1000, special_tokens=[EOT])
    return text, tok, time.perf_counter() - start


def test_shakespeare_training(shakespeare):
    text, tok, seconds = shakespeare
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


def test_real_gpt2_files():
    """Set MINILLM_GPT2_DIR to a folder with GPT-2's own vocab.json and merges.txt."""
    folder = os.environ.get("MINILLM_GPT2_DIR")
    if not folder:
        pytest.skip("MINILLM_GPT2_DIR is not set (no GPT-2 vocabulary files on this machine)")
    tok = BPETokenizer.from_gpt2(folder)
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert tok.encode(" the") == [262]
