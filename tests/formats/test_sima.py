"""The .sima container: round trip, integrity checks, no code loading, atomic writes."""
from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import pickle
import struct

import numpy as np
import pytest

import core.formats.sima as sima
from core.errors import MixqError, ModelFileError
from core.formats import read_sima, write_sima

RNG = np.random.default_rng(0)


def _arrays():
    return {
        "int8": RNG.integers(-128, 128, size=(3, 5), dtype=np.int8),
        "int16": RNG.integers(-2**15, 2**15, size=(7,), dtype=np.int16),
        "int32": RNG.integers(-2**31, 2**31, size=(2, 3, 4), dtype=np.int32),
        "int64": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64),
        "float32": np.array([0.0, -0.0, 1.5, np.inf, -np.inf, np.nan, 1e-45, 3.4e38], dtype=np.float32),
        "bool": np.array([[True, False], [False, True]]),
        "empty_f32": np.zeros((0, 4), dtype=np.float32),
        "empty_i8": np.zeros((0,), dtype=np.int8),
        "scalar_i32": np.array(-7, dtype=np.int32),
        "scalar_f32": np.array(0.125, dtype=np.float32),
        "scalar_bool": np.array(True),
        "uint8": np.arange(256, dtype=np.uint8),
        "float64_fortran": np.asfortranarray(RNG.standard_normal((3, 4))),
        "strided_view": np.arange(20, dtype=np.int16)[::3],
        "big_endian_i32": np.arange(5, dtype=">i4") * -3,
    }


META = {"model_name": "tut_resnet50", "format_note": "ünïcode ok", "layers": 3,
        "scales": [0.5, 0.25], "int16_nodes": ["MLA_0/conv2d_add_5"], "nested": {"a": None, "b": True}}


def _write(tmp_path, arrays=None, meta=None, name="m.sima"):
    path = tmp_path / name
    write_sima(path, _arrays() if arrays is None else arrays, META if meta is None else meta)
    return path


def _assert_bit_exact(got: dict, want: dict):
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        assert g.dtype == w.dtype.newbyteorder("<") or g.dtype == w.dtype, name
        assert g.dtype.isnative or g.dtype.itemsize == 1, name
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w.astype(g.dtype)).tobytes(), name


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_bit_exact(tmp_path, mmap):
    arrays = _arrays()
    path = _write(tmp_path, arrays)
    got, meta = read_sima(path, mmap=mmap)
    _assert_bit_exact(got, arrays)
    assert meta == META
    assert np.isnan(got["float32"][5]) and np.signbit(got["float32"][1])
    assert got["scalar_i32"].ndim == 0 and int(got["scalar_i32"]) == -7
    assert got["bool"].dtype == np.bool_
    assert os.listdir(tmp_path) == ["m.sima"]


def test_mmap_returns_read_only_views_and_copy_is_writable(tmp_path):
    path = _write(tmp_path)
    got, _ = read_sima(path, mmap=True)
    assert isinstance(got["int32"], np.memmap)
    assert not got["int32"].flags.writeable
    got2, _ = read_sima(path)
    assert not isinstance(got2["int32"], np.memmap)
    got2["int32"][0, 0, 0] = 1  # a plain read returns independent, writable arrays


def test_layout_is_documented_and_aligned(tmp_path):
    path = _write(tmp_path)
    raw = path.read_bytes()
    assert raw[:8] == sima.MAGIC
    header_len, digest = struct.unpack_from("<Q32s", raw, 8)
    header_bytes = raw[48:48 + header_len]
    assert hashlib.sha256(header_bytes).digest() == digest
    header = json.loads(header_bytes)
    assert header["format"] == "mixq.sima" and header["version"] == 1
    assert header["file_size"] == len(raw)
    assert header["metadata"] == META
    names = [e["name"] for e in header["arrays"]]
    assert names == list(_arrays())
    for e in header["arrays"]:
        assert e["offset"] % 64 == 0 and e["offset"] >= 48 + header_len
        blob = raw[e["offset"]:e["offset"] + e["nbytes"]]
        assert hashlib.sha256(blob).hexdigest() == e["sha256"]
    by_name = {e["name"]: e for e in header["arrays"]}
    assert by_name["big_endian_i32"]["dtype"] == "<i4"
    assert by_name["bool"]["dtype"] == "|b1"
    assert by_name["scalar_f32"]["shape"] == []
    assert by_name["empty_f32"]["shape"] == [0, 4] and by_name["empty_f32"]["nbytes"] == 0


def test_empty_model_and_numpy_scalar_metadata(tmp_path):
    path = _write(tmp_path, arrays={}, meta={"n": np.int64(3), "s": np.float32(0.5)})
    arrays, meta = read_sima(path)
    assert arrays == {} and meta == {"n": 3, "s": 0.5}
    path = _write(tmp_path, arrays={"x": np.float32(2.5)}, meta={}, name="s.sima")
    arrays, _ = read_sima(path)
    assert arrays["x"].shape == () and arrays["x"].dtype == np.float32 and arrays["x"] == 2.5


def test_overwrite_replaces_existing_file(tmp_path):
    path = _write(tmp_path)
    write_sima(path, {"only": np.ones(3, np.int8)}, {"v": 2})
    arrays, meta = read_sima(path)
    assert list(arrays) == ["only"] and meta == {"v": 2}
    assert os.listdir(tmp_path) == ["m.sima"]


# ---- refused input at write time -------------------------------------------------------

@pytest.mark.parametrize("bad", [
    np.array([1, "a", None], dtype=object),
    np.array(["ab", "cd"]),
    np.array([b"ab"]),
    np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
])
def test_write_refuses_non_numeric_dtypes(tmp_path, bad):
    path = tmp_path / "m.sima"
    with pytest.raises(ModelFileError, match="'bad'"):
        write_sima(path, {"ok": np.ones(2), "bad": bad}, {})
    assert os.listdir(tmp_path) == []


def test_write_refuses_non_arrays_and_unserializable_metadata(tmp_path):
    path = tmp_path / "m.sima"
    with pytest.raises(ModelFileError, match="not a numpy ndarray"):
        write_sima(path, {"x": [1, 2, 3]}, {})
    with pytest.raises(ModelFileError, match="metadata"):
        write_sima(path, {}, {"x": object()})
    with pytest.raises(ModelFileError, match="metadata"):
        write_sima(path, {}, {"x": np.ones(3)})
    assert issubclass(ModelFileError, MixqError)
    assert os.listdir(tmp_path) == []


# ---- corrupt / hostile files -------------------------------------------------------------

def _header_info(raw: bytes):
    header_len = struct.unpack_from("<Q", raw, 8)[0]
    return header_len, json.loads(raw[48:48 + header_len])


def test_truncated_at_many_offsets(tmp_path):
    path = _write(tmp_path)
    raw = path.read_bytes()
    header_len, header = _header_info(raw)
    cuts = {0, 3, 8, 12, 47, 48, 48 + header_len // 2, 48 + header_len, 48 + header_len + 1, len(raw) - 1}
    cuts |= {e["offset"] + e["nbytes"] // 2 for e in header["arrays"] if e["nbytes"] > 1}
    cuts |= {e["offset"] for e in header["arrays"]}
    for cut in sorted(c for c in cuts if c < len(raw)):
        bad = tmp_path / f"cut{cut}.sima"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError) as info:
            read_sima(bad)
        assert f"cut{cut}.sima" in str(info.value), cut
        with pytest.raises(ModelFileError):
            read_sima(bad, mmap=True)


def test_trailing_garbage_is_refused(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="trailing|truncated"):
        read_sima(path)


@pytest.mark.parametrize("mmap", [False, True])
def test_flipped_byte_in_each_array_is_detected(tmp_path, mmap):
    path = _write(tmp_path)
    raw = path.read_bytes()
    _, header = _header_info(raw)
    for e in header["arrays"]:
        if e["nbytes"] == 0:
            continue
        pos = e["offset"] + e["nbytes"] - 1
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(ModelFileError, match=f"{e['name']!r} checksum mismatch") as info:
            read_sima(path, mmap=mmap)
        assert "m.sima" in str(info.value)


def test_verify_false_skips_array_hash_but_not_header_hash(tmp_path):
    path = _write(tmp_path, arrays={"x": np.arange(4, dtype=np.int32)}, meta={})
    raw = bytearray(path.read_bytes())
    _, header = _header_info(bytes(raw))
    raw[header["arrays"][0]["offset"]] ^= 0x02
    path.write_bytes(bytes(raw))
    arrays, _ = read_sima(path, verify=False)
    assert arrays["x"].tolist() == [2, 1, 2, 3]
    raw[60] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="header checksum"):
        read_sima(path, verify=False)


def test_flipped_byte_in_header_and_preamble(tmp_path):
    path = _write(tmp_path)
    raw = path.read_bytes()
    header_len, _ = _header_info(raw)
    for pos, match in [(48 + 5, "header checksum"), (48 + header_len - 2, "header checksum"),
                       (20, "header checksum"), (8, "header length|truncated|header checksum"),
                       (2, "magic")]:
        bad = bytearray(raw)
        bad[pos] ^= 0x40
        path.write_bytes(bytes(bad))
        with pytest.raises(ModelFileError, match=match):
            read_sima(path)


def _craft(path, header: dict, data: bytes = b"", magic: bytes = sima.MAGIC, mutate=None):
    """Write a file with a valid preamble and header checksum but attacker-chosen header
    content: offsets and file_size are laid out consistently, then ``mutate(entry)`` (if
    given) alters the first array entry, so only the fault under test remains."""
    start = 64
    for _ in range(10):
        h = copy.deepcopy(header)
        for e in h.get("arrays", []):
            e["offset"] = start
        h["file_size"] = start + len(data)
        if mutate is not None:
            mutate(h["arrays"][0])
        hb = json.dumps(h).encode()
        new_start = (48 + len(hb) + 63) // 64 * 64
        if new_start == start:
            break
        start = new_start
    body = magic + struct.pack("<Q", len(hb)) + hashlib.sha256(hb).digest() + hb
    body += b"\0" * (start - len(body)) + data
    path.write_bytes(body)


def _base_header(**kw):
    h = {"format": "mixq.sima", "version": 1, "minor_version": 0, "metadata": {}, "file_size": 0, "arrays": []}
    h.update(kw)
    return h


def test_wrong_magic_and_foreign_files(tmp_path):
    path = tmp_path / "m.sima"
    _craft(path, _base_header(), magic=b"NOTSIMA!")
    with pytest.raises(ModelFileError, match="magic"):
        read_sima(path)
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="magic"):
        read_sima(path)
    np.save(tmp_path / "x.npy", np.ones(3))
    with pytest.raises(ModelFileError, match="magic"):
        read_sima(tmp_path / "x.npy")
    with pytest.raises(ModelFileError, match="missing.sima"):
        read_sima(tmp_path / "missing.sima")
    _craft(path, _base_header(format="something.else"))
    with pytest.raises(ModelFileError, match="format"):
        read_sima(path)


def test_future_major_version_is_refused_minor_is_accepted(tmp_path):
    path = tmp_path / "m.sima"
    _craft(path, _base_header(version=2))
    with pytest.raises(ModelFileError, match="version 2.*upgrade mixq") as info:
        read_sima(path)
    assert "m.sima" in str(info.value)
    _craft(path, _base_header(minor_version=7, metadata={"k": 1}, future_field=[1, 2]))
    assert read_sima(path) == ({}, {"k": 1})


class _Marker:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("dtype", ["|O8", "|O", "O", "object", "<U4", "|S4", "|V8",
                                   "[('a', '<i4')]", "<M8[D]", ">i4", "i4", "int32",
                                   "<f16", "<i3", "<c32", 7, None])
def test_object_and_foreign_dtypes_are_refused_and_no_code_runs(tmp_path, dtype):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Marker(str(marker)))
    payload += b"\0" * (-len(payload) % 8)
    path = tmp_path / "m.sima"
    entry = {"name": "evil", "dtype": dtype, "shape": [len(payload) // 8], "offset": 0,
             "nbytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    _craft(path, _base_header(arrays=[entry]), data=payload)
    for mmap in (False, True):
        with pytest.raises(ModelFileError, match="dtype"):
            read_sima(path, mmap=mmap)
    assert not marker.exists()
    # sanity: the payload really would have run code if it had been unpickled
    pickle.loads(payload.rstrip(b"\0")).close()
    assert marker.exists()


def test_raw_pickle_file_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "m.sima"
    path.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ModelFileError, match="magic"):
        read_sima(path)
    assert not marker.exists()


def test_module_never_imports_pickle():
    tree = ast.parse(open(sima.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"pickle", "cPickle", "dill", "marshal", "shelve"}
    assert "allow_pickle" not in open(sima.__file__).read()


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e.update(nbytes=e["nbytes"] + 4), "nbytes"),
    (lambda e: e.update(shape=[-1]), "shape"),
    (lambda e: e.update(shape="3"), "shape"),
    (lambda e: e.update(offset=e["offset"] + 1), "offset"),
    (lambda e: e.update(offset=16), "offset"),
    (lambda e: e.update(sha256="zz"), "sha256"),
    (lambda e: e.update(name=""), "name"),
])
def test_inconsistent_entries_are_refused(tmp_path, mutate, match):
    data = np.arange(4, dtype=np.int32).tobytes()
    entry = {"name": "x", "dtype": "<i4", "shape": [4], "offset": 0, "nbytes": 16,
             "sha256": hashlib.sha256(data).hexdigest()}
    path = tmp_path / "m.sima"
    _craft(path, _base_header(arrays=[entry]), data=data)
    assert read_sima(path)[0]["x"].tolist() == [0, 1, 2, 3]  # the unmutated craft is valid
    _craft(path, _base_header(arrays=[entry]), data=data, mutate=mutate)
    with pytest.raises(ModelFileError, match=match):
        read_sima(path)


def test_bool_array_with_non_boolean_bytes_is_refused(tmp_path):
    data = bytes([0, 1, 7])
    entry = {"name": "b", "dtype": "|b1", "shape": [3], "offset": 0, "nbytes": 3,
             "sha256": hashlib.sha256(data).hexdigest()}
    path = tmp_path / "m.sima"
    _craft(path, _base_header(arrays=[entry]), data=data)
    with pytest.raises(ModelFileError, match="bool"):
        read_sima(path)


# ---- atomic writes -------------------------------------------------------------------------

class _ExplodingArray(np.ndarray):
    def tobytes(self, order="C"):
        raise RuntimeError("disk on fire")


def test_failed_write_midway_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = _write(tmp_path)
    before = path.read_bytes()
    arrays = _arrays()
    arrays["zz_boom"] = np.arange(10, dtype=np.int32).view(_ExplodingArray)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_sima(path, arrays, {"new": True})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.sima"]
    assert read_sima(path)[1] == META


def test_failed_replace_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = _write(tmp_path)
    before = path.read_bytes()
    seen = []

    def failing_replace(src, dst):
        seen.append(src)
        assert os.path.dirname(os.path.abspath(src)) == str(tmp_path)  # temp is in the same dir
        assert os.path.getsize(src) > 0
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sima.os, "replace", failing_replace)
    with pytest.raises(ModelFileError, match="m.sima.*No space left"):
        write_sima(path, {"x": np.ones(1000, np.float32)}, {})
    assert seen
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.sima"]


def test_failed_write_to_new_path_leaves_nothing(tmp_path):
    arrays = {"boom": np.arange(3).view(_ExplodingArray)}
    with pytest.raises(RuntimeError):
        write_sima(tmp_path / "new.sima", arrays, {})
    assert os.listdir(tmp_path) == []


def test_fsync_is_called_before_replace(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(sima.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(sima.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    _write(tmp_path)
    assert "fsync" in calls and calls.index("fsync") < calls.index("replace")
