"""Read and write ``.safetensors`` files with nothing but NumPy.

A safetensors file stores a flat mapping ``name -> tensor`` and is laid out as

    +-------------+---------------------------+------------------------------+
    | 8 bytes     | N bytes                   | the rest of the file         |
    | N (u64, LE) | JSON header (UTF-8)       | raw tensor bytes (the "data  |
    |             |                           | section"), little-endian     |
    +-------------+---------------------------+------------------------------+

The header is one JSON object. Every key except ``"__metadata__"`` names a
tensor and maps to

    {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}

where ``begin``/``end`` are byte positions *inside the data section* (so byte
``begin`` of the tensor lives at file position ``8 + N + begin``). The tensor
occupies ``end - begin == prod(shape) * itemsize`` bytes, stored row-major
(C order). A 0-d tensor has ``shape == []`` and one element; an empty tensor
has a zero in its shape and ``begin == end``. The optional ``"__metadata__"``
entry is a free-form ``{str: str}`` map (e.g. ``{"format": "np"}``).

The tensors must tile the data section exactly: sorted by offset, the first
starts at 0, each one starts where the previous ended, and the last one ends at
the end of the file. No gaps, no overlaps, no trailing bytes. Writers pad the
header with spaces so that ``N`` is a multiple of 8; the data section then
starts 8-byte aligned in the file.

Because the header is plain JSON and the data is plain bytes, loading a file
can never run code (unlike pickle) -- the worst a malicious file can do is be
rejected by the checks below.

Integrity. ``save_file(..., checksums=True)`` adds one metadata entry,
``"sha256"``: the SHA-256 of every tensor's bytes and of the other metadata
entries (JSON). Reading a file that has it verifies it, so a flipped bit
anywhere in the file is reported as a damaged file instead of loading as
slightly different numbers (minillm's checkpoints are written this way).

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.safetensors")
    >>> save_file({"w": np.eye(2, dtype=np.float32)}, path, metadata={"step": "7"})
    >>> load_file(path)["w"]
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    >>> read_metadata(path)
    {'step': '7'}
"""

import hashlib
import json
import math
import os

import numpy as np

from .files import atomic_open

# dtype name in the file -> NumPy dtype of the bytes on disk. Always '<'
# (little-endian), whatever the machine. BF16 has no NumPy dtype, so its raw
# 16-bit patterns are handled as '<u2' and converted to float32 (see below).
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
# NumPy array (kind, itemsize) -> default dtype name when saving.
_DEFAULT_NAME = {(dt.kind, dt.itemsize): name
                 for name, dt in _DTYPES.items() if name != "BF16"}


CHECKSUMS = "sha256"      # the metadata entry of save_file(..., checksums=True)


def _error(path, problem):
    return ValueError(f"invalid safetensors file {os.fspath(path)!r}: {problem}")


def _damaged(path, problem):
    return ValueError(f"{os.fspath(path)} is damaged: {problem}; the file changed after it "
                      "was written (a disk or copy error?)")


def _sha256(array):
    """Hex SHA-256 of a C-contiguous array's bytes (as stored: little-endian)."""
    return hashlib.sha256(array.reshape(-1).view(np.uint8)).hexdigest()


def _metadata_sha256(metadata):
    """Hex SHA-256 of the metadata entries other than the checksums themselves."""
    others = {k: v for k, v in metadata.items() if k != CHECKSUMS}
    text = json.dumps(others, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------
# bfloat16: the top half of a float32 (1 sign, 8 exponent, 7 mantissa bits).
# ----------------------------------------------------------------------------------------------
def _bf16_bits_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32, exactly (no rounding needed).

    A bfloat16 is a float32 with the low 16 mantissa bits dropped, so putting
    the 16 bits back in the *upper* half of a uint32 (low half zero) gives the
    identical value as a float32.
    """
    wide = bits.astype(np.uint32)
    wide <<= 16  # in place: keeps 0-d arrays as arrays
    return wide.view(np.float32)


def _f32_to_bf16_bits(x):
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest, ties to even.

    Adding 0x7FFF (+1 if the lowest kept bit is odd) before dropping the low 16
    bits rounds up exactly when the dropped part is above one half, or equal to
    one half with an odd kept part. Carries ripple into the exponent, so values
    past the largest bfloat16 correctly become inf. NaN is mapped to the quiet
    NaN 0x7FC0 (otherwise rounding could turn a NaN into inf).

    >>> _f32_to_bf16_bits(np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8], np.float32))
    array([16256, 16256, 16258], dtype=uint16)
    """
    x = np.asarray(x, dtype=np.float32, order="C")
    bits = x.view(np.uint32)
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16  # uint32 arithmetic
    return np.where(np.isnan(x), np.uint32(0x7FC0), rounded).astype(np.uint16)


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def _reject_duplicates(pairs):
    """json ``object_pairs_hook``: plain json.loads would keep the last duplicate."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _is_count(x):  # a JSON non-negative integer (bool is not a number here)
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_entry(path, name, entry):
    """Check one tensor entry of the header on its own."""
    if not isinstance(entry, dict):
        raise _error(path, f"header entry for tensor {name!r} is not a JSON object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise _error(path, f"tensor {name!r} is missing {field!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPES:
        raise _error(path, f"tensor {name!r} has unsupported dtype {dtype!r} "
                           f"(supported: {', '.join(_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _error(path, f"tensor {name!r} has shape {shape!r}; "
                           "expected a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(_is_count(o) for o in offsets)):
        raise _error(path, f"tensor {name!r} has data_offsets {offsets!r}; "
                           "expected [begin, end] with non-negative integers")
    begin, end = offsets
    if begin > end:
        raise _error(path, f"tensor {name!r} has data_offsets begin {begin} > end {end}")
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if len(shape) > 32 or math.prod(d for d in shape if d) * _DTYPES[dtype].itemsize >= 2**63:
        raise _error(path, f"tensor {name!r} has shape {shape}, larger than any array can be")
    if end - begin != nbytes:
        raise _error(path, f"tensor {name!r} with dtype {dtype} and shape {shape} "
                           f"needs {nbytes} bytes but data_offsets {offsets} span "
                           f"{end - begin}")


def _check_layout(path, tensors, data_size):
    """Check that the tensors tile the data section [0, data_size) exactly."""
    position, previous = 0, None
    for name, entry in sorted(tensors.items(), key=lambda kv: kv[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin < position:
            raise _error(path, f"tensor {name!r} (bytes {begin}..{end}) overlaps "
                               f"tensor {previous!r} (ends at {position})")
        if begin > position:
            raise _error(path, f"gap in the data section: bytes {position}..{begin} "
                               "belong to no tensor")
        if end > data_size:
            raise _error(path, f"tensor {name!r} ends at byte {end} but the data "
                               f"section holds only {data_size} bytes (truncated file?)")
        position, previous = end, name
    if position != data_size:
        raise _error(path, f"data section is {data_size} bytes but the tensors cover "
                           f"only {position}; {data_size - position} trailing bytes")


def _read_header(f, path):
    """Parse and validate the header of the open file ``f``.

    Returns ``(tensors, metadata, data_start)``: ``tensors`` maps name -> entry
    in header order, ``data_start`` is the file position of the data section.
    """
    file_size = os.fstat(f.fileno()).st_size
    if file_size < 8:
        raise _error(path, f"file is {file_size} bytes, too short for the 8-byte "
                           "header length")
    n = int.from_bytes(f.read(8), "little")
    if n > file_size - 8:
        raise _error(path, f"header length {n} is larger than the rest of the file "
                           f"({file_size - 8} bytes)")
    try:
        header = json.loads(f.read(n).decode("utf-8"),
                            object_pairs_hook=_reject_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise _error(path, f"header is not valid UTF-8 JSON ({exc})") from None
    except RecursionError:                           # e.g. [[[[...]]]] nested 100,000 deep
        raise _error(path, "header is not a safetensors header (JSON nested too deeply)") \
            from None
    if not isinstance(header, dict):
        raise _error(path, f"header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise _error(path, "__metadata__ must be an object mapping strings to strings")
    for name, entry in header.items():
        _check_entry(path, name, entry)
    _check_layout(path, header, data_size=file_size - 8 - n)
    return header, metadata, 8 + n


def read_header(path):
    """Return the validated tensor entries of a file without reading the data.

    >>> read_header("model.safetensors")                    # doctest: +SKIP
    {'w': {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [0, 16]}}
    """
    with open(path, "rb") as f:
        return _read_header(f, path)[0]


def read_metadata(path):
    """Return the ``__metadata__`` map of a file (``{}`` if it has none), without checking the
    tensors' bytes (``load_with_metadata`` reads both, checked, from one open file)."""
    with open(path, "rb") as f:
        return _read_header(f, path)[1]


def _verify(path, metadata, digests):
    """Compare the checksums recorded in ``metadata`` (if any) with ``digests`` {name: hex}."""
    if CHECKSUMS not in metadata:
        return
    try:
        recorded = json.loads(metadata[CHECKSUMS])
        tensors, meta = recorded["tensors"], recorded["metadata"]
        if not isinstance(tensors, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise _damaged(path, f"its {CHECKSUMS!r} metadata entry is not readable") from None
    if set(tensors) != set(digests):
        raise _damaged(path, "its checksums name other tensors than the file holds")
    for name, digest in digests.items():
        if tensors[name] != digest:
            raise _damaged(path, f"tensor {name!r} does not match its checksum")
    if meta != _metadata_sha256(metadata):
        raise _damaged(path, "its metadata does not match its checksum")


def load_with_metadata(path):
    """``(tensors, metadata)`` of a safetensors file, both read from one open file (so from one
    version of it, even if it is replaced meanwhile) and verified against its checksums, if it
    has them. Tensors are as ``load_file`` returns them.

    Each tensor is read straight from the file into its own freshly allocated
    array, so memory use is the size of the tensors, not twice that. BF16
    tensors come back as float32 (exact: every bfloat16 is a float32).
    """
    with open(path, "rb") as f:
        tensors, metadata, data_start = _read_header(f, path)
        result, digests = {}, {}
        for name, entry in tensors.items():
            begin, end = entry["data_offsets"]
            try:
                array = np.empty(entry["shape"], dtype=_DTYPES[entry["dtype"]])
            except (ValueError, MemoryError) as e:
                raise _error(path, f"tensor {name!r} of shape {entry['shape']} cannot be "
                                   f"held in memory ({e})") from None
            f.seek(data_start + begin)
            if f.readinto(array.reshape(-1).view(np.uint8)) != end - begin:
                raise _error(path, f"file ended while reading tensor {name!r}")
            if CHECKSUMS in metadata:
                digests[name] = _sha256(array)
            if entry["dtype"] == "BF16":
                array = _bf16_bits_to_f32(array)
            result[name] = array
    _verify(path, metadata, digests)
    return result, metadata


def load_file(path):
    """Load every tensor of a safetensors file into writeable NumPy arrays (verified against
    its checksums, if it has them; see ``load_with_metadata``).

    >>> params = load_file("model.safetensors")             # doctest: +SKIP
    >>> params["w"] += 1.0  # independent, writeable arrays   # doctest: +SKIP
    """
    return load_with_metadata(path)[0]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _prepare(name, array, dtype_name):
    """Return ``(dtype_name, C-contiguous little-endian array)`` for saving."""
    if not isinstance(name, str):
        raise ValueError(f"tensor names must be str, got {name!r}")
    if name == "__metadata__":
        raise ValueError("'__metadata__' is reserved and cannot name a tensor")
    if not isinstance(array, np.ndarray):
        raise ValueError(f"tensor {name!r} is a {type(array).__name__}, "
                         "expected a numpy.ndarray")
    if dtype_name is None:
        dtype_name = _DEFAULT_NAME.get((array.dtype.kind, array.dtype.itemsize))
        if dtype_name is None:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which "
                             "safetensors cannot store")
    elif dtype_name not in _DTYPES:
        raise ValueError(f"tensor {name!r}: unknown target dtype {dtype_name!r} "
                         f"(supported: {', '.join(_DTYPES)})")
    if dtype_name == "BF16":
        if array.dtype.kind != "f":
            raise ValueError(f"tensor {name!r}: only float arrays can be saved as "
                             f"BF16, got {array.dtype}")
        return dtype_name, _f32_to_bf16_bits(array.astype(np.float32))
    target = _DTYPES[dtype_name]
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        raise ValueError(f"tensor {name!r}: cannot store {array.dtype} as {dtype_name}")
    return dtype_name, array.astype(target, order="C", copy=False)


def save_file(tensors, path, metadata=None, dtypes=None, checksums=False):
    """Write ``tensors`` to ``path`` in safetensors format, atomically.

    ``dtypes`` optionally overrides the stored dtype per tensor, e.g.
    ``{"wte": "BF16"}`` stores a float array as bfloat16 (via float32, rounded
    to nearest, ties to even, like ``torch.Tensor.to(torch.bfloat16)``).
    Other targets are converted with ``astype`` within the same kind
    (float64 -> "F16" is fine, float -> "I32" is refused).

    Tensors are laid out largest itemsize first, then by name, so each one
    starts at a multiple of its own itemsize in the file (handy for readers
    that memory-map the file). The file is written to a temporary file in the
    same folder and then moved into place, so ``path`` is never half-written.
    With ``checksums``, the metadata also gets the SHA-256 of every tensor and of
    the other entries (see the module's docstring), verified by every reader here.

    >>> save_file({"w": np.ones(3, np.float32)}, "w.safetensors",
    ...           dtypes={"w": "BF16"})                      # doctest: +SKIP
    """
    if not isinstance(tensors, dict):
        raise ValueError(f"tensors must be a dict of name -> numpy.ndarray, "
                         f"got {type(tensors).__name__}")
    dtypes = dict(dtypes or {})
    unknown = [name for name in dtypes if name not in tensors]
    if unknown:
        raise ValueError(f"dtypes names tensors that are not being saved: {unknown}")
    prepared = {name: _prepare(name, array, dtypes.get(name))
                for name, array in tensors.items()}

    header = {}
    if metadata is not None:
        if not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise ValueError("metadata must be a dict mapping str to str")
    if checksums:
        metadata = dict(metadata or {})
        if CHECKSUMS in metadata:
            raise ValueError(f"metadata entry {CHECKSUMS!r} is reserved for the checksums")
        metadata[CHECKSUMS] = json.dumps({
            "tensors": {name: _sha256(array) for name, (_, array) in prepared.items()},
            "metadata": _metadata_sha256(metadata)})
    if metadata is not None:
        header["__metadata__"] = metadata
    order = sorted(prepared, key=lambda n: (-prepared[n][1].itemsize, n))
    offset = 0
    for name in order:
        dtype_name, array = prepared[name]
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header_bytes = json.dumps(header, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad to a multiple of 8

    # A temporary file next to the target, then one os.replace into place.
    with atomic_open(path, "wb", fsync=True) as f:
        f.write(len(header_bytes).to_bytes(8, "little"))
        f.write(header_bytes)
        for name in order:
            f.write(prepared[name][1].data)  # C-contiguous buffer, no copy
