"""Tests for minillm.safetensors: round trips, the exact byte layout, every
kind of malformed file, bfloat16 rounding, and interop with the reference
``safetensors`` package and torch (those tests skip when not installed)."""

import json
import os
import struct

import numpy as np
import pytest

from minillm.formats.safetensors import (load_file, load_with_metadata, read_header,
                                         read_metadata, save_file)

NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}
SHAPES = [(), (0,), (5,), (2, 3), (2, 0, 3)]


def sample(dtype, shape, seed=0):
    """Deterministic test values covering the dtype's range (and inf/nan for floats)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.kind == "f":
        x = np.asarray(rng.standard_normal(shape) * 100, dtype=dtype)
        if x.size >= 3:
            x.reshape(-1)[:3] = [np.inf, -np.inf, np.nan]
        return x
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def raw_file(path, header, data=b"", header_len=None):
    """Write a safetensors file by hand. ``header`` is a JSON-able object or raw bytes."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode("utf-8")
    n = len(header) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + header + data)
    return path


def split_file(path):
    """Return (header bytes, data section bytes) of a file, parsed by hand."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8:8 + n], raw[8 + n:]


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("code", list(NUMPY_DTYPES))
def test_round_trip_every_dtype_and_shape(tmp_path, code, shape):
    x = sample(NUMPY_DTYPES[code], shape)
    path = tmp_path / "t.safetensors"
    save_file({"x": x}, path)

    assert read_header(path)["x"]["dtype"] == code
    assert read_header(path)["x"]["shape"] == list(shape)
    y = load_file(path)["x"]
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)  # treats NaN == NaN
    assert y.flags.writeable and y.flags.c_contiguous


def test_many_tensors_round_trip_and_are_independent(tmp_path):
    tensors = {f"layer{i}.{kind}": sample(dt, (3, i + 1), seed=i)
               for i, (kind, dt) in enumerate([("w", np.float32), ("b", np.float16),
                                               ("idx", np.int64), ("mask", np.bool_)])}
    path = tmp_path / "m.safetensors"
    save_file(tensors, path)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name in tensors:
        np.testing.assert_array_equal(loaded[name], tensors[name])
    # In-place updates (what an optimizer does) must not leak between tensors.
    loaded["layer0.w"] += 1
    np.testing.assert_array_equal(loaded["layer0.w"], tensors["layer0.w"] + 1)
    arrays = list(loaded.values())
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])


def test_no_tensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_file({}, path)
    assert load_file(path) == {}
    assert read_metadata(path) == {}


@pytest.mark.parametrize("make", [
    pytest.param(lambda a: a.T, id="transposed"),
    pytest.param(lambda a: a[:, ::2], id="strided"),
    pytest.param(lambda a: np.asfortranarray(a), id="fortran"),
    pytest.param(lambda a: a.astype(">f4"), id="big-endian"),
])
def test_any_memory_layout_is_written_c_order_little_endian(tmp_path, make):
    x = make(np.arange(24, dtype=np.float32).reshape(4, 6))
    path = tmp_path / "t.safetensors"
    save_file({"x": x}, path)
    _, data = split_file(path)
    assert data == np.ascontiguousarray(x, dtype="<f4").tobytes()
    np.testing.assert_array_equal(load_file(path)["x"], x)


@pytest.mark.parametrize("metadata", [{}, {"format": "np"},
                                      {"step": "12", "note": "héllo ✓", "": ""}])
def test_metadata_round_trip(tmp_path, metadata):
    path = tmp_path / "t.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, path, metadata=metadata)
    assert read_metadata(path) == metadata
    assert list(load_file(path)) == ["x"]  # metadata is not a tensor


def test_read_metadata_without_metadata(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, path)
    assert read_metadata(path) == {}


def test_dtypes_override_converts(tmp_path):
    path = tmp_path / "t.safetensors"
    x = np.array([1.5, -2.25, 65504.0], dtype=np.float64)
    save_file({"x": x}, path, dtypes={"x": "F16"})
    assert read_header(path)["x"]["dtype"] == "F16"
    y = load_file(path)["x"]
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x)


# ------------------------------------------------------------ exact byte layout
def test_written_bytes_follow_the_format(tmp_path):
    tensors = {"b": np.arange(3, dtype=np.int8), "a": np.arange(2, dtype=np.float16),
               "c": np.arange(4, dtype=np.float64).reshape(2, 2)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"k": "v"})
    header_bytes, data = split_file(path)

    assert (8 + len(header_bytes)) % 8 == 0
    text = header_bytes.decode("utf-8")
    assert text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" ")))
    header = json.loads(text)
    assert header.pop("__metadata__") == {"k": "v"}
    # Largest itemsize first, ties by name; offsets contiguous from 0.
    assert list(header) == ["c", "a", "b"]
    assert header == {
        "c": {"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 32]},
        "a": {"dtype": "F16", "shape": [2], "data_offsets": [32, 36]},
        "b": {"dtype": "I8", "shape": [3], "data_offsets": [36, 39]},
    }
    assert data == b"".join(tensors[n].astype(tensors[n].dtype.newbyteorder("<")).tobytes()
                            for n in ["c", "a", "b"])


def test_reads_hand_built_file(tmp_path):
    # Tensors listed out of offset order, header padded with spaces.
    header = json.dumps({
        "ints": {"dtype": "I16", "shape": [2], "data_offsets": [10, 14]},
        "__metadata__": {"who": "hand"},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "h": {"dtype": "BF16", "shape": [], "data_offsets": [8, 10]},
    }).encode() + b"   "
    data = struct.pack("<2f", 1.5, -3.0) + struct.pack("<H", 0x4049) + struct.pack("<2h", -2, 300)
    path = raw_file(tmp_path / "h.safetensors", header, data)

    out = load_file(path)
    assert list(out) == ["ints", "w", "h"]
    np.testing.assert_array_equal(out["w"], np.array([1.5, -3.0], np.float32))
    np.testing.assert_array_equal(out["ints"], np.array([-2, 300], np.int16))
    assert out["h"].dtype == np.float32 and out["h"].shape == ()
    assert out["h"] == np.float32(3.140625)  # 0x4049 is bfloat16 for 3.140625
    assert read_metadata(path) == {"who": "hand"}


# ------------------------------------------------------------ malformed files
F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def with_entry(**changes):
    return {"x": {**F32x2, **changes}}


def without(field):
    return {"x": {k: v for k, v in F32x2.items() if k != field}}


BAD_FILES = [  # id, header, data, header_len override, expected message fragment
    ("empty-file", None, b"", None, "too short"),
    ("7-bytes", None, b"\x00" * 7, None, "too short"),
    ("header-len-too-big", {"x": F32x2}, b"\x00" * 8, 10_000, "larger than the rest of the file"),
    ("not-utf8", b'{"x\xff": 1}', b"", None, "not valid UTF-8 JSON"),
    ("not-json", b'{"x": ', b"", None, "not valid UTF-8 JSON"),
    ("json-list", [1, 2], b"", None, "header is a JSON list"),
    ("duplicate-name", b'{"x": %s, "x": %s}' % ((json.dumps(F32x2).encode(),) * 2),
     b"\x00" * 8, None, "duplicate key 'x'"),
    ("entry-not-object", {"x": [1, 2]}, b"", None, "not a JSON object"),
    ("missing-dtype", without("dtype"), b"\x00" * 8, None, "missing 'dtype'"),
    ("missing-shape", without("shape"), b"\x00" * 8, None, "missing 'shape'"),
    ("missing-offsets", without("data_offsets"), b"\x00" * 8, None, "missing 'data_offsets'"),
    ("unknown-dtype", with_entry(dtype="Q7"), b"\x00" * 8, None, "unsupported dtype 'Q7'"),
    ("fp8-dtype", with_entry(dtype="F8_E4M3", shape=[8]), b"\x00" * 8, None, "unsupported dtype"),
    ("shape-not-list", with_entry(shape=2), b"\x00" * 8, None, "shape 2"),
    ("shape-negative", with_entry(shape=[-2]), b"\x00" * 8, None, "non-negative integers"),
    ("shape-float", with_entry(shape=[2.0]), b"\x00" * 8, None, "non-negative integers"),
    ("shape-bool", with_entry(shape=[True, 2]), b"\x00" * 8, None, "non-negative integers"),
    ("offsets-3-long", with_entry(data_offsets=[0, 4, 8]), b"\x00" * 8, None, "[begin, end]"),
    ("offsets-negative", with_entry(data_offsets=[-8, 0]), b"\x00" * 8, None, "[begin, end]"),
    ("begin-after-end", with_entry(data_offsets=[8, 0]), b"\x00" * 8, None, "begin 8 > end 0"),
    ("size-mismatch", with_entry(shape=[3]), b"\x00" * 8, None, "needs 12 bytes"),
    ("past-the-end", {"x": F32x2}, b"\x00" * 4, None, "holds only 4 bytes"),
    ("overlap", {"x": F32x2, "y": {**F32x2, "data_offsets": [4, 12]}}, b"\x00" * 12, None,
     "overlaps tensor 'x'"),
    ("empty-inside-other", {"x": F32x2, "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}},
     b"\x00" * 8, None, "overlaps"),
    ("gap", {"x": F32x2, "y": {**F32x2, "data_offsets": [12, 20]}}, b"\x00" * 20, None,
     "bytes 8..12 belong to no tensor"),
    ("not-from-zero", with_entry(data_offsets=[4, 12]), b"\x00" * 12, None, "bytes 0..4"),
    ("trailing-bytes", {"x": F32x2}, b"\x00" * 12, None, "4 trailing bytes"),
    ("metadata-not-str", {"__metadata__": {"a": 1}}, b"", None, "__metadata__"),
    ("metadata-not-object", {"__metadata__": "a"}, b"", None, "__metadata__"),
    ("nested-brackets", b"[" * 100_000, b"", None, "nested too deeply"),
    ("nested-objects", b'{"a":' * 100_000, b"", None, "nested too deeply"),
    ("shape-product-overflows", with_entry(shape=[2**62, 2**62, 0], data_offsets=[0, 0]), b"",
     None, "larger than any array can be"),
    ("dimension-past-int64", with_entry(shape=[2**64, 0], data_offsets=[0, 0]), b"", None,
     "larger than any array can be"),
    ("too-many-dimensions", with_entry(shape=[1] * 40 + [0], data_offsets=[0, 0]), b"", None,
     "larger than any array can be"),
]


@pytest.mark.parametrize("reader", [load_file, read_header, read_metadata])
@pytest.mark.parametrize("header, data, header_len, fragment",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_FILES])
def test_malformed_file_is_rejected_with_clear_message(tmp_path, reader, header, data,
                                                       header_len, fragment):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        raw_file(path, header, data, header_len)
    with pytest.raises(ValueError) as excinfo:
        reader(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert fragment in message


@pytest.mark.parametrize("cut", [1, 7, 8])
def test_truncated_file_is_rejected(tmp_path, cut):
    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones((4, 4), np.float32), "b": np.ones(2, np.int64)}, path)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match="truncated"):
        load_file(path)


@pytest.mark.parametrize("reader", [load_file, read_header, read_metadata])
def test_missing_file(tmp_path, reader):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        reader(path)


# ------------------------------------------------------------ bad save input
X = np.zeros(2, np.float32)
BAD_SAVES = [  # id, tensors, keyword arguments, expected message fragment
    ("not-a-dict", [("x", X)], {}, "must be a dict"),
    ("int-name", {1: X}, {}, "names must be str"),
    ("list-value", {"x": [1.0, 2.0]}, {}, "is a list, expected a numpy.ndarray"),
    ("reserved-name", {"__metadata__": X}, {}, "reserved"),
    ("complex", {"x": np.zeros(2, np.complex64)}, {}, "complex64"),
    ("object", {"x": np.array([None, 1])}, {}, "object"),
    ("metadata-int-value", {"x": X}, {"metadata": {"a": 1}}, "metadata must be"),
    ("metadata-not-dict", {"x": X}, {"metadata": ["a"]}, "metadata must be"),
    ("dtypes-unknown-tensor", {"x": X}, {"dtypes": {"y": "BF16"}}, "['y']"),
    ("dtypes-unknown-code", {"x": X}, {"dtypes": {"x": "F12"}}, "unknown target dtype 'F12'"),
    ("bf16-from-int", {"x": np.arange(2)}, {"dtypes": {"x": "BF16"}}, "only float arrays"),
    ("float-to-int", {"x": X}, {"dtypes": {"x": "I32"}}, "cannot store float32 as I32"),
]


@pytest.mark.parametrize("tensors, kwargs, fragment",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_SAVES])
def test_bad_save_input_leaves_existing_file_alone(tmp_path, tensors, kwargs, fragment):
    path = tmp_path / "t.safetensors"
    save_file({"old": np.arange(3, dtype=np.int32)}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as excinfo:
        save_file(tensors, path, **kwargs)
    assert fragment in str(excinfo.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no temporary files left


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"old": np.arange(3, dtype=np.int32)}, path)
    save_file({"new": np.ones(2, np.float32)}, str(path))
    assert list(load_file(path)) == ["new"]
    assert os.listdir(tmp_path) == ["t.safetensors"]


# ------------------------------------------------------------ bfloat16
def bf16_bits_in_file(path):
    _, data = split_file(path)
    return np.frombuffer(data, dtype="<u2")


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("value, bits", [
    (1.0, 0x3F80),
    (1 + 2**-8, 0x3F80),            # exactly halfway, kept part even -> round down
    (1 + 3 * 2**-8, 0x3F82),        # exactly halfway, kept part odd -> round up to even
    (1 + 2**-8 + 2**-20, 0x3F81),   # just above halfway -> round up
    (-(1 + 3 * 2**-8), 0xBF82),     # sign does not change the rounding
    (3.14159265, 0x4049),
    (0.0, 0x0000),
    (-0.0, 0x8000),
    (2.0**-149, 0x0000),            # smallest float32 subnormal rounds to zero
    (np.inf, 0x7F80),
    (-np.inf, 0xFF80),
    (F32_MAX, 0x7F80),              # rounds past the largest bfloat16 -> inf
    (np.nan, 0x7FC0),
], ids=lambda v: f"{v:#x}" if isinstance(v, int) else repr(v))
def test_bf16_writer_rounds_to_nearest_even(tmp_path, value, bits):
    path = tmp_path / "t.safetensors"
    save_file({"x": np.array([value], np.float32)}, path, dtypes={"x": "BF16"})
    assert read_header(path)["x"] == {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}
    assert bf16_bits_in_file(path).tolist() == [bits]
    y = load_file(path)["x"]
    assert y.dtype == np.float32
    assert y.view(np.uint32).tolist() == [bits << 16]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bf16_round_trip_of_representable_values_is_exact(tmp_path, shape):
    # float32 values whose low 16 bits are zero are exactly representable in bfloat16.
    x = np.asarray(sample(np.float32, shape).view(np.uint32) & 0xFFFF0000).view(np.float32)
    path = tmp_path / "t.safetensors"
    save_file({"x": x, "y": np.ones(1, np.float64)}, path, dtypes={"x": "BF16"})
    y = load_file(path)["x"]
    assert y.dtype == np.float32 and y.shape == x.shape and y.flags.writeable
    np.testing.assert_array_equal(y, x)


# ------------------------------------------------------------ reference package
def test_files_written_by_minillm_load_in_safetensors(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {f"{code}{shape}": sample(dt, shape)
               for code, dt in NUMPY_DTYPES.items() for shape in SHAPES}
    path = tmp_path / "ours.safetensors"
    save_file(tensors, path, metadata={"format": "np", "epoch": "3"})
    theirs = st_numpy.load_file(str(path))
    assert set(theirs) == set(tensors)
    for name, x in tensors.items():
        assert theirs[name].dtype == x.dtype and theirs[name].shape == x.shape
        np.testing.assert_array_equal(theirs[name], x)

    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "np", "epoch": "3"}


def test_files_written_by_safetensors_load_in_minillm(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {f"{code}{shape}": sample(dt, shape, seed=1)
               for code, dt in NUMPY_DTYPES.items() for shape in SHAPES}
    path = tmp_path / "theirs.safetensors"
    st_numpy.save_file(tensors, str(path), metadata={"source": "reference"})
    ours = load_file(path)
    assert set(ours) == set(tensors)
    for name, x in tensors.items():
        assert ours[name].dtype == x.dtype and ours[name].shape == x.shape
        np.testing.assert_array_equal(ours[name], x)
    assert read_metadata(path) == {"source": "reference"}


def special_and_random_float32(n=4096):
    rng = np.random.default_rng(42)
    random_bits = rng.integers(0, 2**32, size=n, dtype=np.uint32).view(np.float32)
    specials = np.array([0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, np.inf, -np.inf,
                         F32_MAX, -F32_MAX, 2.0**-149, 2.0**-126, np.nan], np.float32)
    return np.concatenate([specials, random_bits, rng.standard_normal(n).astype(np.float32)])


def test_bf16_written_by_torch_loads_as_float32(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    t = torch.from_numpy(special_and_random_float32()).reshape(-1, 4).to(torch.bfloat16)
    path = tmp_path / "torch.safetensors"
    st_torch.save_file({"w": t, "scalar": t[0, 0].clone()}, str(path))
    ours = load_file(path)
    assert ours["w"].dtype == np.float32 and ours["w"].shape == tuple(t.shape)
    np.testing.assert_array_equal(ours["w"], t.float().numpy())
    assert ours["scalar"].shape == ()
    np.testing.assert_array_equal(ours["scalar"], t[0, 0].float().numpy())


def test_bf16_writer_matches_torch_rounding(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    x = special_and_random_float32()
    path = tmp_path / "ours.safetensors"
    save_file({"x": x}, path, dtypes={"x": "BF16"})

    expected = torch.from_numpy(x).to(torch.bfloat16)
    expected_bits = expected.view(torch.int16).numpy().view(np.uint16)
    ours_bits = bf16_bits_in_file(path)
    nan = np.isnan(x)
    assert nan.any() and (~nan).sum() > 4000
    np.testing.assert_array_equal(ours_bits[~nan], expected_bits[~nan])
    assert torch.isnan(expected[torch.from_numpy(nan)]).all()
    np.testing.assert_array_equal(ours_bits[nan], 0x7FC0)

    # And the reference reader agrees on what we wrote.
    theirs = st_torch.load_file(str(path))["x"]
    assert theirs.dtype == torch.bfloat16
    assert torch.equal(theirs[~torch.from_numpy(nan)], expected[~torch.from_numpy(nan)])


# ------------------------------------------------------------ checksums
def test_checksums_are_verified_and_a_flipped_bit_is_a_damaged_file(tmp_path):
    path = tmp_path / "c.safetensors"
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float64),
               "h": np.array([1.0, 2.0], np.float32)}
    save_file(tensors, path, metadata={"step": "7"}, dtypes={"h": "BF16"}, checksums=True)
    loaded, meta = load_with_metadata(path)
    assert meta["step"] == "7" and set(json.loads(meta["sha256"])["tensors"]) == set(tensors)
    np.testing.assert_array_equal(loaded["w"], tensors["w"])
    good = path.read_bytes()
    header_end = 8 + int.from_bytes(good[:8], "little")
    for position in range(header_end, len(good)):              # every byte of every tensor
        damaged = bytearray(good)
        damaged[position] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"c.safetensors is damaged: tensor '[whb]' does not "
                                             "match its checksum"):
            load_file(path)
    meta_at = good.index(b'"step":"7"') + len(b'"step":"')
    damaged = bytearray(good)
    damaged[meta_at] = ord("8")                                # 7 -> 8: still valid JSON
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="is damaged: its metadata does not match its checksum"):
        load_file(path)


def test_the_checksum_entry_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="'sha256' is reserved"):
        save_file({"x": X}, tmp_path / "a.safetensors", metadata={"sha256": "x"}, checksums=True)
