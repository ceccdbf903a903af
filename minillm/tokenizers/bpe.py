"""Byte-level byte-pair encoding (BPE), the tokenizer family of GPT-2: ``BPETokenizer``.

The algorithm is the one of ``bpe_basic.py`` (read that first): text becomes UTF-8 bytes, so the
first 256 tokens are the 256 byte values and *any* string can be encoded; training repeats "merge
the most frequent adjacent pair (ties: the smallest pair) into a new token"; encoding applies the
merges again, lowest rank first. This module gives the same merges and the same ids, faster:

* ``learn_merges`` keeps every pair's count up to date after each merge, touching only the places
  where the merged pair occurred, instead of recounting the whole text: 1,000 tokens on Tiny
  Shakespeare take about a second instead of minutes.
* ``apply_merges`` finds the next pair to merge with a heap instead of rescanning the chunk.

Before counting pairs the text is cut into chunks with a regex (GPT-2's pattern keeps words,
numbers, punctuation and spaces apart), so a token never spans e.g. the end of one word and the
start of the next.

    >>> tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, pattern=None)
    >>> tok.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    >>> tok.decode([258, 100])
    'aaabd'
"""

import heapq
import json
import operator
from collections import Counter, defaultdict
from pathlib import Path

from ..formats.files import atomic_write_text
from .gpt2_files import (GPT2_PATTERN, bytes_to_token, compile_pattern, parse_gpt2_vocab,
                         read_merges_txt, read_vocab_json, split_special_tokens, write_gpt2_files)

EOT = "<|endoftext|>"
_CACHE_LIMIT = 100_000  # chunks remembered by encode()


def apply_merges(ids, rank, merged):
    """Encode one chunk: merge the lowest-ranked pair everywhere, then repeat.

    ``rank[(a, b)]`` is the merge's position in the merge list and
    ``merged[(a, b)]`` the id it makes.  Each round takes the pair with the
    lowest rank and merges all its occurrences left to right, like GPT-2's
    encoder.  A heap of ``(rank, position)`` over a linked list of positions
    finds the next pair quickly even in long chunks.

    >>> apply_merges([97, 97, 97, 98], {(97, 97): 0, (97, 98): 1}, {(97, 97): 256, (97, 98): 257})
    [256, 257]
    """
    sym = list(ids)
    nxt = list(range(1, len(sym) + 1))
    prv = list(range(-1, len(sym) - 1))
    if sym:
        nxt[-1] = -1
    heap = [(rank[p], i) for i, p in enumerate(zip(sym, sym[1:])) if p in rank]
    heapq.heapify(heap)
    while heap:
        r = heap[0][0]
        touched = []  # positions whose right-hand pair changed this round
        while heap and heap[0][0] == r:  # (rank, position): left to right
            _, i = heapq.heappop(heap)
            j = nxt[i]
            if sym[i] == -1 or j == -1 or rank.get((sym[i], sym[j])) != r:
                continue  # stale: this position was merged or changed meanwhile
            sym[i], sym[j], nxt[i] = merged[(sym[i], sym[j])], -1, nxt[j]
            if nxt[i] != -1:
                prv[nxt[i]] = i
            touched += [prv[i], i]
        for i in touched:
            if i != -1 and sym[i] != -1 and nxt[i] != -1:
                pair = (sym[i], sym[nxt[i]])
                if pair in rank:
                    heapq.heappush(heap, (rank[pair], i))
    return [s for s in sym if s != -1]


def learn_merges(word_counts, n_tokens):
    """Learn merges on ``{chunk bytes: count}`` until there are ``n_tokens`` tokens.

    Returns ``[(a, b, new_id), ...]``.  Rule for each step: merge the pair with
    the highest count; on a tie, the smallest pair ``(a, b)`` (compare ``a``,
    then ``b``).  If the joined bytes already are a token (``"a"+"bc"`` after
    ``"ab"+"c"``), that id is reused, so no two ids share the same bytes.

    All chunks are laid end to end in one linked list of positions; each
    position is weighted by its chunk's count.  We keep, for every pair, its
    total count and the set of positions where it starts, plus a max-heap of
    counts.  A merge then edits only the positions of the merged pair.

    >>> learn_merges({b"aaab": 2}, 258)  # then (256, 97) and (97, 98) tie at 2
    [(97, 97, 256), (97, 98, 257)]
    """
    sym, nxt, prv, weight = [], [], [], []
    for word, count in word_counts.items():
        start, n = len(sym), len(word)
        sym.extend(word)
        weight.extend([count] * n)
        prv.extend(range(start - 1, start + n - 1))
        nxt.extend(range(start + 1, start + n + 1))
        prv[start], nxt[-1] = -1, -1  # chunk boundaries

    counts = defaultdict(int)            # pair -> total count (weighted by chunk counts)
    where = defaultdict(set)             # pair -> positions where it starts
    for i in range(len(sym) - 1):
        if nxt[i] != -1:
            pair = (sym[i], sym[i + 1])
            counts[pair] += weight[i]
            where[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in counts.items()]  # min-heap on -count, then (a, b)
    heapq.heapify(heap)

    token_bytes = {i: bytes([i]) for i in range(256)}
    id_of = {b: i for i, b in token_bytes.items()}
    merges = []
    while len(token_bytes) < n_tokens:
        while heap and counts.get(heap[0][1:], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale entry: the pair's count has changed since
        if not heap:
            raise ValueError(
                f"the text only allows {len(token_bytes)} tokens (no adjacent pairs are left "
                f"to merge); use a smaller vocab_size or more text"
            )
        _, a, b = heapq.heappop(heap)
        joined = token_bytes[a] + token_bytes[b]
        new = id_of.setdefault(joined, len(token_bytes))
        token_bytes[new] = joined
        merges.append((a, b, new))

        changed = set()  # pairs whose count moved: they get fresh heap entries
        for i in sorted(where.pop((a, b))):
            j = nxt[i]
            if sym[i] != a or j == -1 or sym[j] != b:
                continue  # stale position, or overlapped by the previous merge ("aaa")
            w, p, n = weight[i], prv[i], nxt[j]
            sym[i], sym[j], nxt[i] = new, -1, n  # i holds the new token, j disappears
            if p != -1:  # left neighbour x: pair (x, a) becomes (x, new)
                x = sym[p]
                counts[(x, a)] -= w
                counts[(x, new)] += w
                where[(x, new)].add(p)
                changed.update([(x, a), (x, new)])
            if n != -1:  # right neighbour y: pair (b, y) becomes (new, y)
                prv[n] = i
                y = sym[n]
                counts[(b, y)] -= w
                counts[(new, y)] += w
                where[(new, y)].add(i)
                changed.update([(b, y), (new, y)])
        del counts[(a, b)]
        where.pop((a, b), None)
        changed.discard((a, b))
        for pair in changed:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], *pair))
    return merges


class BPETokenizer:
    """A byte-level BPE tokenizer: bytes, merges in rank order, special tokens.

    ``merges`` is a list of ``(a, b, new_id)``; ``byte_ids[b]`` is the id of
    byte ``b`` (``0..255`` for trained tokenizers, another order for GPT-2's
    files); ``special_tokens`` maps strings like ``"<|endoftext|>"`` to ids;
    ``pattern`` is ``"gpt2"``, any other regex, or None (no pre-tokenization).

    >>> tok = BPETokenizer()  # no merges: one token per byte
    >>> tok.encode("hé"), tok.vocab_size
    ([104, 195, 169], 256)
    """

    def __init__(self, merges=(), byte_ids=None, special_tokens=None, pattern="gpt2"):
        byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        if len(byte_ids) != 256 or len(set(byte_ids)) != 256 \
                or not all(_is_id(i) for i in byte_ids):
            raise ValueError("byte_ids must be 256 distinct integers >= 0")
        self.byte_ids = byte_ids
        self.vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}  # id -> bytes
        self.merges, self._rank, self._merged = [], {}, {}
        for rank, merge in enumerate(merges):
            if len(merge) != 3 or not all(_is_id(i) for i in merge):
                raise ValueError(f"merge #{rank} must be three ids (a, b, new), got {merge!r}")
            a, b, new = merge
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge #{rank} {merge!r} uses an id that no earlier merge "
                                 f"or byte defines")
            joined = self.vocab[a] + self.vocab[b]
            if self.vocab.setdefault(new, joined) != joined:
                raise ValueError(f"merge #{rank} {merge!r} reuses id {new}, "
                                 f"which already has other bytes")
            self.merges.append((a, b, new))
            self._rank[(a, b)] = rank  # a pair listed twice keeps its last rank, as in GPT-2
            self._merged[(a, b)] = new
        self.special_tokens = dict(special_tokens or {})
        for name, i in self.special_tokens.items():
            if not isinstance(name, str) or not name or not _is_id(i):
                raise ValueError(f"special token {name!r}: {i!r} must be a non-empty string "
                                 f"and an id >= 0")
            if i in self.vocab:
                raise ValueError(f"special token {name!r} has id {i}, which is already a "
                                 "regular token")
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise ValueError("two special tokens share one id")
        self.pattern = GPT2_PATTERN if pattern == "gpt2" else pattern
        self._regex = compile_pattern(self.pattern)
        specials = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self._decoder = {**self.vocab, **specials}
        self._vocab_size = max(self._decoder) + 1
        self._cache = {}                 # chunk -> ids, for chunks seen before

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------

    @classmethod
    def train(cls, text, vocab_size, pattern="gpt2", special_tokens=None):
        """Learn a tokenizer with ``vocab_size`` tokens in total from ``text``.

        ``vocab_size`` counts the 256 bytes, the merged tokens and the special
        tokens (which get the last ids, in the order given).  Special tokens
        are cut out of ``text`` before counting.  Ties between equally
        frequent pairs go to the smallest pair ``(a, b)``; see learn_merges.

        >>> BPETokenizer.train("abab", 257, pattern=None).merges
        [(97, 98, 256)]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        specials = list(special_tokens or [])
        if len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens has duplicates: {specials}")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be an int >= 256 + {len(specials)} special "
                             f"tokens, got {vocab_size!r}")
        regex = compile_pattern(pattern)
        words = Counter()                # chunk bytes -> how often the chunk occurs
        for piece in split_special_tokens(text, specials)[::2]:
            chunks = regex.findall(piece) if regex is not None else [piece] if piece else []
            for chunk, count in Counter(chunks).items():
                words[chunk.encode("utf-8")] += count
        n_regular = vocab_size - len(specials)  # specials take the last ids
        merges = learn_merges(words, n_regular)
        return cls(merges, None, {s: n_regular + k for k, s in enumerate(specials)}, pattern)

    # ------------------------------------------------------------------------------------------
    # Encoding and decoding
    # ------------------------------------------------------------------------------------------

    @property
    def vocab_size(self):
        """One more than the largest id (the size an embedding table needs)."""
        return self._vocab_size

    @property
    def eot_token(self):
        """The id of ``<|endoftext|>``, or None if it is not a special token."""
        return self.special_tokens.get(EOT)

    def encode(self, text, allowed_special="all"):
        """Turn ``text`` into token ids.

        ``allowed_special`` says which special tokens written in the text
        become their single id: ``"all"``, ``"none"`` (they are encoded as
        ordinary text) or a set of names.

        >>> BPETokenizer(special_tokens={"<|endoftext|>": 256}).encode("a<|endoftext|>")
        [97, 256]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        pieces = split_special_tokens(text, self._allowed(allowed_special))
        ids, cache = [], self._cache
        for k, piece in enumerate(pieces):
            if k % 2:  # odd positions hold the special tokens themselves
                ids.append(self.special_tokens[piece])
            elif piece:
                chunks = self._regex.findall(piece) if self._regex is not None else [piece]
                for chunk in chunks:  # most chunks repeat, so look in the cache first
                    ids.extend(cache.get(chunk) or self._encode_chunk(chunk))
        return ids

    def _allowed(self, allowed_special):
        if allowed_special == "all":
            return list(self.special_tokens)
        if allowed_special == "none":
            return []
        if isinstance(allowed_special, str) or not hasattr(allowed_special, "__iter__"):
            raise ValueError(f"allowed_special must be 'all', 'none' or a set of names, "
                             f"got {allowed_special!r}")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names unknown special tokens: {sorted(unknown)}")
        return list(allowed_special)

    def _encode_chunk(self, chunk):
        """Apply the merges to one pre-tokenized chunk and remember the answer."""
        ids = apply_merges([self.byte_ids[b] for b in chunk.encode("utf-8")], self._rank,
                           self._merged)
        if len(chunk) < 200:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[chunk] = ids
        return ids

    def decode(self, ids):
        """Turn ids (a list or a NumPy int array) back into text.

        Byte sequences that are not valid UTF-8 become U+FFFD.

        >>> BPETokenizer().decode([104, 105, 255])
        'hi\\ufffd'
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        parts = []
        for i in ids:
            try:
                parts.append(self._decoder[operator.index(i)])
            except (KeyError, TypeError):
                raise ValueError(f"unknown token id {i!r} (vocab_size is "
                                 f"{self.vocab_size})") from None
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_bytes(self, token_id):
        """The bytes one id stands for: ``BPETokenizer().token_bytes(97) == b"a"``."""
        if token_id not in self._decoder:
            raise ValueError(f"unknown token id {token_id!r} (vocab_size is {self.vocab_size})")
        return self._decoder[token_id]

    # ------------------------------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------------------------------

    def to_dict(self):
        """Everything needed to rebuild this tokenizer, as JSON-ready data."""
        return {
            "type": "bpe",
            "version": 1,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }

    def save(self, path):
        """Write ``to_dict()`` as JSON to ``path`` (atomically); read it back with
        ``minillm.load_tokenizer(path)``."""
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def from_dict(cls, data, source="tokenizer"):
        """Rebuild a tokenizer from :meth:`to_dict`'s output (checkpoints embed it)."""
        if not isinstance(data, dict) or data.get("type") != "bpe":
            found = data.get("type") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source}: not a BPE tokenizer file "
                             f"(expected \"type\": \"bpe\", found {found!r})")
        missing = [k for k in ("pattern", "byte_ids", "merges", "special_tokens") if k not in data]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        try:
            if not isinstance(data["special_tokens"], dict) or not isinstance(data["merges"], list):
                raise ValueError("'special_tokens' must be an object and 'merges' a list")
            if data["pattern"] is not None and not isinstance(data["pattern"], str):
                raise ValueError("'pattern' must be a string or null")
            return cls(data["merges"], data["byte_ids"], data["special_tokens"], data["pattern"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_gpt2(cls, folder, special_tokens=(EOT,), pattern="gpt2"):
        """Load GPT-2 style ``vocab.json`` + ``merges.txt`` from ``folder``.

        Token ids are taken from ``vocab.json`` as they are.  Tokens that are
        neither bytes nor made by a merge must be named in ``special_tokens``.
        """
        folder = Path(folder)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        byte_ids, merges, specials = parse_gpt2_vocab(
            read_vocab_json(vocab_path), read_merges_txt(merges_path), set(special_tokens),
            str(vocab_path), str(merges_path),
        )
        return cls(merges, byte_ids, specials, pattern)

    def to_gpt2(self, folder):
        """Write ``vocab.json`` + ``merges.txt`` into ``folder`` (the pattern is not stored)."""
        vocab = {bytes_to_token(b): i for i, b in self.vocab.items()}
        if len(vocab) != len(self.vocab):
            raise ValueError("two ids have the same bytes; GPT-2's vocab.json cannot hold that")
        for name, i in self.special_tokens.items():
            if vocab.setdefault(name, i) != i:
                raise ValueError(f"special token {name!r} has the same text as a regular token")
        vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
        name = bytes_to_token
        merges = [(name(self.vocab[a]), name(self.vocab[b])) for a, b, _ in self.merges]
        write_gpt2_files(folder, vocab, merges)


    def __repr__(self):
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")


def _is_id(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
