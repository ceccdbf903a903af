"""A character-level tokenizer: every distinct character is one token.

This is the simplest tokenizer a language model can have. The vocabulary is the sorted list of
characters seen in the training text, and a character's id is its index in that list:

    chars = ['\\n', ' ', '!', ..., 'z']       stoi = {'\\n': 0, ' ': 1, ...}
    encode("hi") = [stoi['h'], stoi['i']]    decode(ids) = "".join(chars[i] for i in ids)

Tiny Shakespeare has 65 distinct characters, so its model predicts one of 65 classes per step.

``encode`` is the readable version (a dictionary lookup per character). ``encode_array`` does the
same job for whole corpora: it turns the text into its Unicode code points with one
``np.frombuffer`` call and maps them through a lookup table indexed by code point, so a
megabyte of text is encoded in milliseconds instead of a Python loop over every character.

A tokenizer is saved as one small JSON file, ``{"type": "char", "chars": [...]}``;
``minillm.load_tokenizer`` reads such a file and returns the right tokenizer class for its
``"type"``.
"""
import json
from pathlib import Path

import numpy as np

from ..formats.files import atomic_write_text

# How many distinct unknown characters an error message spells out before saying "and N more".
_MAX_LISTED = 10


class CharTokenizer:
    """Maps characters to integer ids and back.

    chars: the vocabulary, a sequence of distinct single characters; ``chars[i]`` has id ``i``.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars
    ['e', 'h', 'l', 'o']
    >>> tok.encode("hole")
    [1, 3, 2, 0]
    >>> tok.decode([1, 3, 2, 0])
    'hole'
    """

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character in its vocabulary")
        for i, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"vocabulary entry {i} is {c!r}; every entry must be a single "
                                 f"character (a str of length 1)")
        stoi = {}
        for i, c in enumerate(chars):
            if c in stoi:
                raise ValueError(f"character {_describe(c)} appears twice in the vocabulary "
                                 f"(ids {stoi[c]} and {i})")
            stoi[c] = i
        self._chars = tuple(chars)
        self.stoi = stoi                    # str -> int
        self._table = None                  # code point -> id lookup, built on first encode_array

    @classmethod
    def from_text(cls, text):
        """Build the vocabulary from a training text: its sorted distinct characters.

        >>> CharTokenizer.from_text("banana").chars
        ['a', 'b', 'n']
        """
        if not isinstance(text, str):
            raise TypeError(f"from_text expects a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text)))

    # ------------------------------------------------------------------------------------------
    # The vocabulary
    # ------------------------------------------------------------------------------------------

    @property
    def chars(self):
        """The vocabulary as a list; ``chars[i]`` is the character with id ``i``."""
        return list(self._chars)

    @property
    def vocab_size(self):
        """Number of tokens V; ids run from 0 to V - 1."""
        return len(self._chars)

    def missing(self, text):
        """The sorted distinct characters of ``text`` that are not in the vocabulary.

        >>> CharTokenizer.from_text("abc").missing("cabbage!")
        ['!', 'e', 'g']
        """
        return sorted(set(text) - self.stoi.keys())

    def extend(self, chars):
        """A new tokenizer with ``chars`` appended at the end of the vocabulary.

        Existing characters keep their ids, so a model trained with this tokenizer still reads
        its old tokens correctly; only new embedding rows are needed for the new ids. Characters
        already in the vocabulary (or repeated in ``chars``) are added once at most.

        >>> tok = CharTokenizer.from_text("ba").extend("cab")
        >>> tok.chars
        ['a', 'b', 'c']
        """
        new = []
        for c in chars:
            if c not in self.stoi and c not in new:
                new.append(c)
        return CharTokenizer(self._chars + tuple(new))

    # ------------------------------------------------------------------------------------------
    # Encoding and decoding
    # ------------------------------------------------------------------------------------------

    def encode(self, text):
        """Text -> list of ids, one per character.

        (n characters) -> list of n ints. An unknown character raises ValueError naming it.

        >>> CharTokenizer.from_text("ab").encode("abba")
        [0, 1, 1, 0]
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            raise ValueError(self._unknown_message(text)) from None

    def encode_array(self, text):
        """Text -> int64 array of ids; same result as ``encode`` but vectorized.

        (n characters) -> (n,) int64

        The text is re-encoded as UTF-32, whose 4-byte units are exactly the Unicode code
        points, and ``table[code_point]`` gives the id (or -1 for unknown characters).

        >>> CharTokenizer.from_text("ab").encode_array("abba")
        array([0, 1, 1, 0])
        """
        if not isinstance(text, str):
            raise TypeError(f"encode_array expects a str, got {type(text).__name__}")
        table = self._lookup_table()
        # "surrogatepass" lets lone surrogates (possible in a Python str) through as code points.
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        # Code points beyond the table are unknown: send them to the table's last slot, which is -1.
        points = np.minimum(points, len(table) - 1)
        ids = table[points]
        if (ids < 0).any():
            raise ValueError(self._unknown_message(text))
        return ids

    def decode(self, ids):
        """List (or 1-D NumPy array) of ids -> text.

        An id outside 0..V-1 raises ValueError naming the id and its position.

        >>> CharTokenizer.from_text("ab").decode(np.array([1, 0]))
        'ba'
        """
        V = len(self._chars)
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"decode expects a 1-D sequence of ids, got an array of shape "
                                 f"{ids.shape}")
            if ids.size and ids.dtype.kind not in "iu":
                raise TypeError(f"decode expects integer ids, got an array of dtype {ids.dtype}")
            bad = np.flatnonzero((ids < 0) | (ids >= V))           # checked all at once
            if bad.size:
                raise ValueError(_bad_id_message(ids[bad[0]], bad[0], V))
            return "".join([self._chars[i] for i in ids.tolist()])
        out = []
        for pos, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"id at position {pos} is {i!r} ({type(i).__name__}); "
                                f"ids must be integers")
            if not 0 <= i < V:
                raise ValueError(_bad_id_message(i, pos, V))
            out.append(self._chars[i])
        return "".join(out)

    def _lookup_table(self):
        """int64 array indexed by code point: the id of that character, or -1 if unknown.

        Its last slot is always -1 (the table is one longer than the largest code point), so
        any code point can be clipped into range and still read "unknown" when it should.
        """
        if self._table is None:
            points = np.array([ord(c) for c in self._chars], dtype=np.int64)
            table = np.full(points.max() + 2, -1, dtype=np.int64)
            table[points] = np.arange(len(points))
            self._table = table
        return self._table

    def _unknown_message(self, text):
        """Describe every distinct unknown character of ``text``: repr, code point, position."""
        first, count = {}, {}
        for pos, c in enumerate(text):
            if c not in self.stoi:
                first.setdefault(c, pos)
                count[c] = count.get(c, 0) + 1
        parts = []
        for c in list(first)[:_MAX_LISTED]:
            times = f" ({count[c]} times)" if count[c] > 1 else ""
            parts.append(f"{_describe(c)} at position {first[c]}{times}")
        if len(first) > _MAX_LISTED:
            parts.append(f"and {len(first) - _MAX_LISTED} more")
        hint = "; tokenizer.extend(tokenizer.missing(text)) adds them"
        if len(first) == 1:
            return f"character {parts[0]} is not in the vocabulary{hint}"
        return f"{len(first)} characters are not in the vocabulary: {', '.join(parts)}{hint}"

    # ------------------------------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------------------------------

    def to_dict(self):
        """The tokenizer as JSON-ready data: ``{"type": "char", "chars": [...]}``."""
        return {"type": "char", "chars": list(self._chars)}

    @classmethod
    def from_dict(cls, data, source="tokenizer"):
        """Rebuild a tokenizer from ``to_dict``'s output; errors name ``source``."""
        chars = data.get("chars") if isinstance(data, dict) else None
        if not isinstance(chars, list):
            raise ValueError(f"{source} has no 'chars' list (a char tokenizer file needs one)")
        try:
            return cls(chars)
        except ValueError as e:
            raise ValueError(f"{source} has a bad 'chars' list: {e}") from None

    def save(self, path):
        """Write ``to_dict()`` as JSON to ``path`` (atomically) and return the path; read it back
        with ``minillm.load_tokenizer(path)``."""
        atomic_write_text(path, json.dumps(self.to_dict()))
        return Path(path)

    def __eq__(self, other):
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self._chars == other._chars

    __hash__ = None

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def _describe(c):
    """'é' -> "'é' (U+00E9)": the repr shows invisible characters, the code point is exact."""
    return f"{c!r} (U+{ord(c):04X})"


def _bad_id_message(i, pos, vocab_size):
    return f"id {i} at position {pos} is not in the vocabulary (valid ids are 0..{vocab_size - 1})"
