"""Tokenizers: text -> token ids -> text.

    char.py         CharTokenizer: one token per character (Tiny Shakespeare has 65)
    bpe_basic.py    byte-pair encoding written to be read: get_stats, merge, train, encode
    bpe.py          BPETokenizer: the same merges learned incrementally (fast), GPT-2 compatible
    gpt2_files.py   GPT-2's vocab.json / merges.txt files and its pre-tokenization pattern

A tokenizer is saved as a JSON object whose "type" ("char" or "bpe") names its class;
``tokenizer_from_dict`` and ``load_tokenizer`` are the one place that turns such an object back
into a tokenizer (checkpoints embed the same object).
"""
import codecs
import operator

from ..formats.files import read_json
from .bpe import BPETokenizer
from .char import CharTokenizer

TYPES = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_dict(data, source="tokenizer"):
    """Rebuild a tokenizer from its ``to_dict()`` output, choosing the class by "type".

    >>> tokenizer_from_dict({"type": "char", "chars": ["a", "b"]})
    CharTokenizer(vocab_size=2)
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source} should hold a JSON object, found {type(data).__name__}")
    kind = data.get("type")
    if kind is None:
        raise ValueError(f"{source} has no 'type' field, so the tokenizer kind is unknown")
    if not isinstance(kind, str):
        raise ValueError(f"{source} has a 'type' field that is not a string: {kind!r}")
    if kind not in TYPES:
        raise ValueError(f"{source} has unknown tokenizer type {kind!r} "
                         f"(known types: {', '.join(map(repr, TYPES))})")
    return TYPES[kind].from_dict(data, source)


def load_tokenizer(path):
    """Load any tokenizer saved with ``tokenizer.save(path)``.

    >>> tok = load_tokenizer("out/tokenizer.json")          # doctest: +SKIP
    """
    return tokenizer_from_dict(read_json(path, "tokenizer file"), path)


def stream_decode(tokenizer, ids):
    """Yield the text of the token ids in ``ids`` (any iterable, e.g. ``generate(...)``) piece by
    piece, as the ids arrive.

    A byte-level BPE token can end in the middle of a character: "é" is the two bytes C3 A9,
    which GPT-2 may emit as two tokens. Decoding each token alone would print two U+FFFD. So the
    bytes go through an incremental UTF-8 decoder, which holds back an incomplete character until
    its last byte arrives; invalid bytes become U+FFFD, and so does a character still incomplete
    at the end. Joined, the pieces equal ``tokenizer.decode(all ids)``. A tokenizer without
    ``token_bytes`` (e.g. CharTokenizer) decodes each id on its own.

    >>> tok = BPETokenizer()                        # one token per byte
    >>> list(stream_decode(tok, [104, 195, 169]))   # "h", then "é" once both of its bytes are in
    ['h', 'é']
    """
    token_bytes = getattr(tokenizer, "token_bytes", None)
    if token_bytes is None:
        for i in ids:
            yield tokenizer.decode([operator.index(i)])      # an id, never a truncated float
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        text = decoder.decode(token_bytes(operator.index(i)))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)          # flush: an unfinished character -> U+FFFD
    if tail:
        yield tail
