"""Exercises of notebook 11: GPT-2's files (tokenizers/gpt2_files.py, formats/safetensors.py).

    bytes_to_unicode   bytes_to_unicode()   GPT-2's table from the 256 bytes to visible characters
    load_file          load_file(path)      every tensor of a safetensors file, with NumPy alone

The files ``load_file`` is checked on are written by minillm's own ``save_file`` into a
temporary folder that lives as long as the Python process.

>>> from minillm.exercises import check
>>> check("bytes_to_unicode", gpt2_files.bytes_to_unicode, verbose=False).passed
True
"""
import json
import os
import tempfile

import numpy as np

from ..formats import safetensors
from ..tokenizers import gpt2_files
from .running import invoke
from .registry import Case, exercise, mistake

_FOLDER = []                        # the temporary folder of the files, made on first use


# ----------------------------------------------------------------------------------------------
# bytes_to_unicode
# ----------------------------------------------------------------------------------------------

def _run_table(fn, inputs):
    table = invoke(gpt2_files.bytes_to_unicode, fn, inputs)
    return table, list(table) if isinstance(table, dict) else None


exercise("bytes_to_unicode", "GPT-2's byte -> character table: printable bytes keep theirs, "
         "the other 68 get U+0100 on", reference=gpt2_files.bytes_to_unicode,
         returns=("table", "byte order"), run=_run_table,
         cases=lambda rng: [Case("the table", {})], float32=False)


def _table(first_range_end="~", second_end="\u00ac", count_all=False, sort=False):
    printable = [*range(ord("!"), ord(first_range_end) + 1),
                 *range(ord("\u00a1"), ord(second_end) + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + (b if count_all else n))
            n += 1
    return dict(sorted(table.items())) if sort else table


@mistake("bytes_to_unicode", "the remapped bytes get U+0100, U+0101, ... in turn: chr(256 + n) "
                             "with n counting the remapped bytes only, not chr(256 + byte)")
def _():
    return _table(count_all=True)


@mistake("bytes_to_unicode", "U+00AD (a soft hyphen) is invisible: the second range stops at "
                             "\u00ac (U+00AC), the third starts at \u00ae")
def _():
    return _table(second_end="\u00ad")


@mistake("bytes_to_unicode", "the printable bytes come first, then the remapped ones (the order "
                             "of GPT-2's vocab.json), not all 256 in byte order")
def _():
    return _table(sort=True)


# ----------------------------------------------------------------------------------------------
# Reading a safetensors file
# ----------------------------------------------------------------------------------------------

def _file(folder, name, tensors, metadata=None):
    path = os.path.join(folder, name)
    safetensors.save_file(tensors, path, metadata=metadata)
    return path


def _load_cases(rng):
    if not _FOLDER:
        _FOLDER.append(tempfile.TemporaryDirectory(prefix="minillm-exercises-"))
    folder = tempfile.mkdtemp(dir=_FOLDER[0].name)      # a new one per call: files stay put
    return [Case("F32 and I64 tensors", dict(path=_file(folder, "a.safetensors", {
                "w": rng.normal(size=(2, 3)).astype(np.float32),
                "ids": rng.integers(-5, 50, size=4)}))),
            Case("a 0-d tensor and an empty one", dict(path=_file(folder, "b.safetensors", {
                "scale": np.array(rng.normal()), "empty": np.zeros((0, 3), np.float32)}))),
            Case("metadata, U8 and F16", dict(path=_file(folder, "c.safetensors", {
                "bytes": rng.integers(0, 256, size=5).astype(np.uint8),
                "half": rng.normal(size=(3, 2)).astype(np.float16)},
                metadata={"format": "np", "step": "7"}))),
            Case("GPT-2 names", dict(path=_file(folder, "d.safetensors", {
                "wte.weight": rng.normal(size=(7, 4)).astype(np.float32),
                "h.0.attn.c_attn.weight": rng.normal(size=(4, 12)).astype(np.float32)})))]


exercise("load_file", "read a safetensors file: an 8-byte length, a JSON header, raw "
         "little-endian bytes", reference=safetensors.load_file, returns=("tensors",),
         cases=_load_cases, float32=False, bound=1e-12)

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def _load(path, order="little", from_start=False, skip_meta=True, reshape=True):
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], order)
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    start = 0 if from_start else 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__" and skip_meta:
            continue
        begin, end = entry["data_offsets"]
        a = np.frombuffer(raw[start + begin:start + end], dtype=DTYPES[entry["dtype"]]).copy()
        out[name] = a.reshape(entry["shape"]) if reshape else a
    return out


@mistake("load_file", "the header's length is 8 bytes little-endian: int.from_bytes(f.read(8), "
                      "\"little\")")
def _(path):
    return _load(path, order="big")


@mistake("load_file", "data_offsets count from the start of the data section, which begins at "
                      "byte 8 + N of the file")
def _(path):
    return _load(path, from_start=True)


@mistake("load_file", "the \"__metadata__\" entry of the header is not a tensor: skip it")
def _(path):
    return _load(path, skip_meta=False)


@mistake("load_file", "reshape each tensor to its entry's \"shape\" (row-major)")
def _(path):
    return _load(path, reshape=False)
