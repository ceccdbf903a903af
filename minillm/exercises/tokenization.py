"""Exercises of notebook 01: byte-pair encoding, minbpe's steps (minillm/tokenizers/bpe_basic.py).

    bpe_get_stats   get_stats(ids, counts=None)   how often each adjacent pair occurs
    bpe_merge       merge(ids, pair, new_id)      every occurrence of a pair becomes one token
    bpe_train       train(chunks, vocab_size)     count, merge the most frequent, repeat
    bpe_encode      encode(ids, merges)           merge the lowest-ranked pair present, repeat
    bpe_decode      decode(ids, merges)           ids -> bytes -> text

Token ids are Python ints, sequences are lists: every value is compared exactly.

>>> from minillm.exercises import check
>>> check("bpe_merge", bpe_basic.merge, verbose=False).passed
True
"""
from ..tokenizers import bpe_basic
from .registry import Case, exercise, mistake


def _text(s):
    return list(s.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# get_stats
# ----------------------------------------------------------------------------------------------

def _stats_cases(rng):
    return [Case("a short text", dict(ids=_text("aaabdaaabac"))),
            Case("random ids", dict(ids=rng.integers(0, 4, size=30).tolist())),
            Case("adding to the counts given", dict(ids=_text("abab"),
                                                    counts={(97, 98): 5, (1, 2): 1})),
            Case("one id: no pairs", dict(ids=[97])),
            Case("no ids", dict(ids=[]))]


exercise("bpe_get_stats", "count every adjacent pair of ids (adding to the counts given)",
         reference=bpe_basic.get_stats, returns=("counts",), cases=_stats_cases, float32=False)


@mistake("bpe_get_stats", "the last pair (ids[-2], ids[-1]) is missing: a list of n ids has "
                          "n - 1 adjacent pairs, zip(ids, ids[1:])")
def _(ids, counts=None):
    counts = {} if counts is None else counts
    for i in range(len(ids) - 2):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


@mistake("bpe_get_stats", "count every occurrence: counts[pair] = counts.get(pair, 0) + 1, "
                          "not counts[pair] = 1")
def _(ids, counts=None):
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = 1
    return counts


@mistake("bpe_get_stats", "add to the counts you are given (train counts all its chunks into "
                          "one dict this way), and return them")
def _(ids, counts=None):
    return bpe_basic.get_stats(ids)


# ----------------------------------------------------------------------------------------------
# merge
# ----------------------------------------------------------------------------------------------

def _merge_cases(rng):
    ids = rng.integers(0, 3, size=25).tolist()
    return [Case("a short text", dict(ids=_text("aaabdaaabac"), pair=(97, 97), new_id=256)),
            Case("'aaa': overlapping occurrences", dict(ids=_text("aaa"), pair=(97, 97),
                                                        new_id=300)),
            Case("random ids", dict(ids=ids, pair=(ids[3], ids[4]), new_id=256)),
            Case("the pair at the end", dict(ids=_text("xyab"), pair=(97, 98), new_id=257)),
            Case("the pair absent", dict(ids=_text("abc"), pair=(99, 97), new_id=256)),
            Case("one id", dict(ids=[97], pair=(97, 97), new_id=256)),
            Case("no ids", dict(ids=[], pair=(97, 98), new_id=256))]


exercise("bpe_merge", "replace every occurrence of a pair by one new id, left to right",
         reference=bpe_basic.merge, returns=("ids",), cases=_merge_cases, float32=False)


@mistake("bpe_merge", "after a merge skip both ids (i += 2): in 'aaa' the pair (a, a) occurs "
                      "once, then one a is left")
def _(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


@mistake("bpe_merge", "the last id is lost when it is not part of a pair: keep going until "
                      "i == len(ids)")
def _(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@mistake("bpe_merge", "merge every occurrence of the pair, not only the first")
def _(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


# ----------------------------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------------------------

def _train_cases(rng):
    text = "".join("abcd"[i] for i in rng.integers(0, 4, size=60))
    return [Case("a short text", dict(chunks=[_text("aaabdaaabac")], vocab_size=259)),
            Case("ties: the smallest pair wins", dict(chunks=[_text("cdabcdab")],
                                                      vocab_size=258)),
            Case("pairs never span two chunks", dict(chunks=[_text("xa"), _text("ax")] * 2,
                                                     vocab_size=257)),
            Case("random text, 10 merges", dict(chunks=[_text(text)], vocab_size=266)),
            Case("vocab_size 256: no merges", dict(chunks=[_text("abc")], vocab_size=256))]


exercise("bpe_train", "learn merges: count the pairs, merge the most frequent, repeat",
         reference=bpe_basic.train, returns=("merges",), cases=_train_cases, float32=False)


def _train(chunks, vocab_size, pick, recount=True, join=False):
    chunks = [sum(chunks, [])] if join else [list(c) for c in chunks]
    merges = []
    stats = {}
    for chunk in chunks:
        bpe_basic.get_stats(chunk, stats)
    while 256 + len(merges) < vocab_size:
        if recount:
            stats = {}
            for chunk in chunks:
                bpe_basic.get_stats(chunk, stats)
        pair = pick(stats)
        new_id = 256 + len(merges)
        merges.append((*pair, new_id))
        stats.pop(pair)
        chunks = [bpe_basic.merge(chunk, pair, new_id) for chunk in chunks]
    return merges


def _most_frequent(stats):
    return min(stats, key=lambda p: (-stats[p], p))


@mistake("bpe_train", "ties go to the smallest pair: min(stats, key=lambda p: (-stats[p], p)); "
                      "max(stats, key=stats.get) takes the first one counted")
def _(chunks, vocab_size):
    return _train(chunks, vocab_size, lambda stats: max(stats, key=stats.get))


@mistake("bpe_train", "count the pairs inside each chunk: pairs never span two chunks")
def _(chunks, vocab_size):
    return _train(chunks, vocab_size, _most_frequent, join=True)


@mistake("bpe_train", "count the pairs again after every merge: a merge makes new pairs (with "
                      "the new token) and changes the counts of its neighbours")
def _(chunks, vocab_size):
    return _train(chunks, vocab_size, _most_frequent, recount=False)


# ----------------------------------------------------------------------------------------------
# encode and decode
# ----------------------------------------------------------------------------------------------

def _encode_cases(rng):
    merges = bpe_basic.train([_text("aaabdaaabac")], 259)
    text = "".join("abcd"[i] for i in rng.integers(0, 4, size=80))
    trained = bpe_basic.train([_text(text)], 270)
    return [Case("the trained example", dict(ids=_text("aaabdaaabac"), merges=merges)),
            Case("rank, not order in the text", dict(ids=_text("abc"),
                                                     merges=[(98, 99, 256), (97, 98, 257)])),
            Case("rank, not frequency", dict(ids=_text("ababc"),
                                             merges=[(98, 99, 256), (97, 98, 257)])),
            Case("new text, 14 merges", dict(ids=_text(text[:40][::-1]), merges=trained)),
            Case("no pair has a merge", dict(ids=_text("xyz"), merges=merges)),
            Case("one id", dict(ids=[97], merges=merges)),
            Case("no ids", dict(ids=[], merges=merges))]


exercise("bpe_encode", "encode bytes: merge the lowest-ranked pair present, repeat",
         reference=bpe_basic.encode, returns=("ids",), cases=_encode_cases, float32=False)


def _encode(ids, merges, pick, loop=True):
    rank = {(a, b): r for r, (a, b, _) in enumerate(merges)}
    new_id = {(a, b): n for a, b, n in merges}
    while len(ids) >= 2:
        stats = bpe_basic.get_stats(ids)
        mergeable = [p for p in stats if p in rank]
        if not mergeable:
            break
        pair = pick(stats, rank, mergeable)
        ids = bpe_basic.merge(ids, pair, new_id[pair])
        if not loop:
            break
    return ids


@mistake("bpe_encode", "encoding merges by rank (the order the merges were learned), not by "
                       "how often a pair occurs in this text")
def _(ids, merges):
    return _encode(ids, merges, lambda stats, rank, ps: min(ps, key=lambda p: (-stats[p],
                                                                               rank[p])))


@mistake("bpe_encode", "repeat until no pair present has a merge: one merge is not enough")
def _(ids, merges):
    return _encode(ids, merges, lambda stats, rank, ps: min(ps, key=rank.get), loop=False)


@mistake("bpe_encode", "with fewer than 2 ids there are no pairs: min() of an empty dict "
                       "raises, so loop only while len(ids) >= 2")
def _(ids, merges):
    rank = {(a, b): r for r, (a, b, _) in enumerate(merges)}
    new_id = {(a, b): n for a, b, n in merges}
    while True:
        stats = bpe_basic.get_stats(ids)
        pair = min(stats, key=lambda p: rank.get(p, float("inf")))
        if pair not in rank:
            return ids
        ids = bpe_basic.merge(ids, pair, new_id[pair])


def _decode_cases(rng):
    nested = [(97, 98, 256), (256, 99, 257)]
    return [Case("merged tokens", dict(ids=[257, 100, 256, 97], merges=nested)),
            Case("a character split between tokens", dict(ids=[256, 169, 108, 108, 111],
                                                          merges=[(104, 195, 256)])),
            Case("invalid UTF-8 becomes U+FFFD", dict(ids=[255, 97], merges=nested)),
            Case("bytes only", dict(ids=_text("plain"), merges=[])),
            Case("no ids", dict(ids=[], merges=nested))]


exercise("bpe_decode", "token ids -> the bytes of every token -> text",
         reference=bpe_basic.decode, returns=("text",), cases=_decode_cases, float32=False)


def _vocab(merges, swap=False):
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b, new_id in merges:
        vocab[new_id] = vocab[b] + vocab[a] if swap else vocab[a] + vocab[b]
    return vocab


@mistake("bpe_decode", "decode the bytes of all tokens together: one character's UTF-8 bytes "
                       "can sit in two tokens, and decoding each token alone breaks it")
def _(ids, merges):
    vocab = _vocab(merges)
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


@mistake("bpe_decode", "a merged token's bytes are its first part's, then its second's: "
                       "vocab[new_id] = vocab[a] + vocab[b]")
def _(ids, merges):
    vocab = _vocab(merges, swap=True)
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


@mistake("bpe_decode", "invalid UTF-8 must not raise: decode(\"utf-8\", errors=\"replace\")")
def _(ids, merges):
    return b"".join(_vocab(merges)[i] for i in ids).decode("utf-8")
