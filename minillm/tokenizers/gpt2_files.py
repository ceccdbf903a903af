"""GPT-2's file format for byte-level BPE: ``vocab.json`` + ``merges.txt``.

GPT-2 stores every token as a *string*, not as bytes.  To make all 256 byte
values printable (JSON and a space-separated ``merges.txt`` cannot hold raw
control bytes or spaces inside a token), each byte is first swapped for one
visible Unicode character:

* bytes that already look fine (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) keep
  their own character, so ``b"a"`` is written ``"a"``;
* the remaining 68 bytes (space, newline, control codes, ...) are given the
  characters U+0100, U+0101, ... in byte order, so a space becomes ``"Ġ"``
  (U+0120) and a newline ``"Ċ"`` (U+010A).

A token such as ``b" the"`` is therefore written ``"Ġthe"``.  The two files:

* ``vocab.json`` -- ``{"token string": id, ...}``, all tokens including
  special ones such as ``"<|endoftext|>"`` (id 50256 in GPT-2).
* ``merges.txt`` -- a ``#version`` line, then one merge per line, ``"Ġ t"``
  meaning "join ``Ġ`` and ``t``".  The line order is the merge *rank*: while
  encoding, the pair with the lowest rank is merged first.

This module also holds the text-splitting steps that come before BPE:
GPT-2's pre-tokenization regex and cutting out special tokens such as
``<|endoftext|>``.  It only deals with files and strings;
``BPETokenizer`` (bpe.py) builds on it.
"""

import json
import re
from pathlib import Path

from ..formats.files import atomic_write_text, read_json

# GPT-2's pre-tokenizer: split text into chunks (English contractions,
# letters, digits, other symbols, whitespace) that BPE never merges across.
# Needs the third-party ``regex`` module for the \p{L} / \p{N} classes.
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

VERSION_LINE = "#version: 0.2"


def bytes_to_unicode():
    """Return GPT-2's table from each byte value (0..255) to one character.

    The dict is ordered like GPT-2's ``vocab.json``: the printable bytes come
    first, then the 68 remapped ones.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    next_char = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_char)
            next_char += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def bytes_to_token(data):
    """Write a token's bytes as a GPT-2 token string.

    >>> bytes_to_token(b" the")
    'Ġthe'
    """
    return "".join(BYTE_TO_CHAR[byte] for byte in data)


def token_to_bytes(token):
    """Turn a GPT-2 token string back into bytes (None if it is not one).

    >>> token_to_bytes("Ġthe"), token_to_bytes("中")
    (b' the', None)
    """
    try:
        return bytes(CHAR_TO_BYTE[char] for char in token)
    except KeyError:
        return None


def compile_pattern(pattern):
    """Compile a pre-tokenization pattern ("gpt2" means GPT-2's); None -> None.

    >>> compile_pattern("gpt2").findall("Hi there, it's 2024!")
    ['Hi', ' there', ',', ' it', "'s", ' 2024', '!']
    """
    if pattern is None:
        return None
    try:
        import regex
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("a pre-tokenization pattern needs the 'regex' package "
                          "(pip install regex)") from None
    try:
        return regex.compile(GPT2_PATTERN if pattern == "gpt2" else pattern)
    except regex.error as e:
        raise ValueError(f"invalid pre-tokenization pattern {pattern!r}: {e}") from None


def split_special_tokens(text, specials):
    """Split ``text`` around special tokens: [text, special, text, special, ..., text].

    >>> split_special_tokens("a<|endoftext|>b", ["<|endoftext|>"])
    ['a', '<|endoftext|>', 'b']
    """
    if not specials:
        return [text]
    alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return re.split(f"({alternatives})", text)


def read_vocab_json(path):
    """Read ``vocab.json`` as ``{token string: id}``, checking its shape."""
    vocab = read_json(path, "vocabulary file")
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: expected a JSON object {{token: id}}, "
                         f"got {type(vocab).__name__}")
    owner = {}                          # id -> the token that has it
    for token, token_id in vocab.items():
        if token == "":
            raise ValueError(f"{path}: the empty string is not a valid token")
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise ValueError(f"{path}: token {token!r} has id {token_id!r}; "
                             "ids must be integers >= 0")
        if token_id in owner:
            raise ValueError(f"{path}: id {token_id} is used by both {owner[token_id]!r} "
                             f"and {token!r}")
        owner[token_id] = token
    return vocab


def read_merges_txt(path):
    """Read ``merges.txt`` as a list of ``(line number, left, right)`` in rank order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: merges file not found")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if line == "" or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"{path}: line {number} should be two tokens separated by one space, got {line!r}"
            )
        merges.append((number, parts[0], parts[1]))
    return merges


def write_gpt2_files(folder, vocab, merges):
    """Write ``vocab.json`` and ``merges.txt`` (merges in rank order) into ``folder``."""
    folder = Path(folder)
    atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False, indent=0) + "\n")
    lines = [VERSION_LINE, *(f"{left} {right}" for left, right in merges)]
    atomic_write_text(folder / "merges.txt", "\n".join(lines) + "\n")


def parse_gpt2_vocab(vocab, merges, special_names, vocab_path="vocab.json",
                     merges_path="merges.txt"):
    """Turn GPT-2 token strings into ids: ``(byte_ids, merges, special_tokens)``.

    * ``byte_ids[b]`` is the id of the one-byte token for byte ``b``;
    * ``merges`` is ``[(left id, right id, merged id), ...]`` in rank order;
    * ``special_tokens`` maps each special token string to its id.

    Every token in ``vocab`` must be a single byte, the result of a merge, or
    one of ``special_names``; every merge may only use tokens that exist by
    then.  Anything else raises ValueError naming the file and the token.
    """
    missing = [b for b in range(256) if BYTE_TO_CHAR[b] not in vocab]
    if missing:
        example = BYTE_TO_CHAR[missing[0]]
        raise ValueError(
            f"{vocab_path}: {len(missing)} of the 256 single-byte tokens are missing "
            f"(e.g. {example!r} for byte {missing[0]})"
        )
    byte_ids = [vocab[BYTE_TO_CHAR[b]] for b in range(256)]
    made = set(BYTE_TO_CHAR.values())  # tokens that exist so far
    id_merges = []
    for number, left, right in merges:
        for part in (left, right):
            if part not in vocab:
                raise ValueError(f"{merges_path}: line {number} uses token {part!r}, "
                                 f"which is not in {vocab_path}")
            if part not in made:
                raise ValueError(
                    f"{merges_path}: line {number} uses token {part!r} "
                    f"before any earlier merge creates it"
                )
        merged = left + right
        if merged not in vocab:
            raise ValueError(
                f"{merges_path}: line {number} makes token {merged!r}, which is not in {vocab_path}"
            )
        made.add(merged)
        id_merges.append((vocab[left], vocab[right], vocab[merged]))
    specials = {}
    for token, token_id in vocab.items():
        if token in made:
            continue
        if token not in special_names:
            raise ValueError(
                f"{vocab_path}: token {token!r} (id {token_id}) is not a byte, no merge in "
                f"{merges_path} makes it, and it is not a listed special token "
                f"(pass special_tokens=[...] if it is one)"
            )
        specials[token] = token_id
    return byte_ids, id_merges, specials
