"""GPT-2's file format (minillm/tokenizers/gpt2_files.py): the byte alphabet, vocab.json and
merges.txt read and written, malformed files refused; and OpenAI GPT-2's own files (from
../shared/data/gpt2-tokenizer beside the checkout, or $MINILLM_GPT2_DIR) giving GPT-2's ids."""
import json

import pytest

from minillm.tokenizers.bpe import BPETokenizer
from minillm.tokenizers.gpt2_files import GPT2_PATTERN, bytes_to_unicode, token_to_bytes

regex = pytest.importorskip("regex")

EOT = "<|endoftext|>"


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
    again = BPETokenizer.from_dict(tok.to_dict())
    text = " the then the<|endoftext|>theme"
    assert again.encode(text) == tok.encode(text) == BPETokenizer.from_gpt2(tmp_path / "out").encode(text)


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


# ------------------------------------------------------------------ OpenAI GPT-2's own files

@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return BPETokenizer.from_gpt2(gpt2_dir)


def test_real_gpt2_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot_token == 50256
    assert gpt2.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode(EOT) == [50256]


def test_real_gpt2_round_trips_all_of_tiny_shakespeare(gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert gpt2.decode(ids) == shakespeare
    assert len(ids) < len(shakespeare) / 3            # about 338k tokens for 1.1M characters


def test_real_gpt2_equals_hugging_face_tokenizers(gpt2, gpt2_dir, shakespeare):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(gpt2_dir / "vocab.json"),
                                                              str(gpt2_dir / "merges.txt")))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens([EOT])
    text = shakespeare[:200_000] + EOT + " Naïve café 東京 🤖  2025\n\n\tend"
    assert gpt2.encode(text) == hf.encode(text).ids
