"""Byte-pair encoding written to be read (minbpe's steps): count pairs, merge, repeat.

Text becomes UTF-8 bytes, so the first 256 token ids are the 256 byte values. Training repeats

    stats = get_stats(ids)                      how often each adjacent pair occurs
    pair  = the most frequent pair              (on a tie: the smallest pair)
    ids   = merge(ids, pair, new_id)            every occurrence becomes one new token

and the list of merges, in the order they were learned (their rank), is the whole tokenizer.
Encoding applies the merges again: while some adjacent pair has a merge, merge the one with the
lowest rank. ``BPETokenizer`` (bpe.py) gives exactly the same merges and ids, only faster: it
updates the pair counts after each merge instead of recounting everything (the tests check the
two agree).

    >>> merges = train([list(b"aaabdaaabac")], 259)
    >>> merges
    [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    >>> encode(list(b"aaabdaaabac"), merges)
    [258, 100, 258, 97, 99]
    >>> decode([258, 100], merges)
    'aaabd'
"""


def get_stats(ids, counts=None):
    """Count every adjacent pair of ``ids``, adding to ``counts`` if given.

    >>> get_stats([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, new_id):
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right.

    >>> merge([97, 97, 97, 98], (97, 97), 256)     # "aaa": the first two merge, the third stays
    [256, 97, 98]
    """
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train(chunks, vocab_size):
    """Learn merges until there are ``vocab_size`` tokens; returns [(a, b, new_id), ...].

    chunks: lists of byte values (the whole text as one chunk, or its pre-tokenized pieces:
    pairs never span two chunks). Ties between equally frequent pairs go to the smallest pair
    (a, b). A merge whose bytes already are a token ("a" + "bc" after "ab" + "c") reuses that
    token's id, so no two ids stand for the same bytes.

    >>> train([list(b"abab")], 257)
    [(97, 98, 256)]
    """
    chunks = [list(chunk) for chunk in chunks]
    vocab = {i: bytes([i]) for i in range(256)}         # id -> the bytes it stands for
    merges = []
    while len(vocab) < vocab_size:
        stats = {}
        for chunk in chunks:
            get_stats(chunk, stats)
        if not stats:
            raise ValueError(f"the text only allows {len(vocab)} tokens (no adjacent pairs are "
                             f"left to merge); use a smaller vocab_size or more text")
        pair = min(stats, key=lambda p: (-stats[p], p))    # most frequent, then smallest
        joined = vocab[pair[0]] + vocab[pair[1]]
        new_id = next((i for i, b in vocab.items() if b == joined), len(vocab))
        vocab[new_id] = joined
        merges.append((*pair, new_id))
        chunks = [merge(chunk, pair, new_id) for chunk in chunks]
    return merges


def encode(ids, merges):
    """Encode one chunk's bytes: merge the lowest-ranked pair present (every occurrence), repeat.

    >>> encode(list(b"abc"), [(98, 99, 256), (97, 98, 257)])   # "bc" has rank 0: it goes first
    [97, 256]
    """
    rank = {(a, b): r for r, (a, b, _) in enumerate(merges)}   # a pair listed twice: last rank
    new_id = {(a, b): n for a, b, n in merges}
    while len(ids) >= 2:
        pair = min(get_stats(ids), key=lambda p: rank.get(p, float("inf")))
        if pair not in rank:
            break                                             # no pair left has a merge
        ids = merge(ids, pair, new_id[pair])
    return ids


def decode(ids, merges):
    """Token ids -> text, through the bytes of every token (invalid UTF-8 becomes U+FFFD).

    >>> decode([104, 256], [(105, 33, 256)])
    'hi!'
    """
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b, new_id in merges:
        vocab[new_id] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
