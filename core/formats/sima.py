"""The ``.sima`` container: the arrays and metadata of a saved quantized model.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89SMA\\r\\n\\x1a\\n"   (PNG-style: catches text-mode/7-bit mangling)
    8       8     header_len  (uint64, bytes of the JSON header)
    16      32    header_sha256 (raw sha256 digest of the JSON header bytes)
    48      H     JSON header, UTF-8, H = header_len
    48+H    ...   zero padding up to the first 64-byte boundary
    D       ...   array data: each array's C-order little-endian bytes, starting on a
                  64-byte boundary (zero padding between arrays); the file ends right after
                  the last array's bytes (after the header padding if there are no arrays);
                  its exact length is ``file_size`` in the header

The JSON header is an object::

    {
      "format": "mixq.sima",        # format name
      "version": 1,                 # major version: readers refuse a newer one
      "minor_version": 0,           # additive changes only; readers accept any
      "metadata": {...},            # the caller's JSON metadata, returned as is
      "file_size": N,               # total length of the file in bytes
      "arrays": [                   # in file order, offsets ascending
        {"name": "conv1/weight", "dtype": "<i1", "shape": [8, 3, 3, 3],
         "offset": 128, "nbytes": 216, "sha256": "<64 hex digits>"},
        ...
      ]
    }

``dtype`` is a numpy dtype string restricted to bool and numeric kinds (``|b1``, ``|i1``,
``<i2`` ... ``<i8``, ``|u1`` ... ``<u8``, ``<f2`` ``<f4`` ``<f8``, ``<c8`` ``<c16``).  No
object, string, void/structured or datetime dtype is ever written or accepted, and nothing
in this module unpickles or otherwise executes content from the file: loading a ``.sima``
file can only ever produce numbers.

Integrity: the header's sha256 is checked before the header is parsed, each array's
sha256 before it is returned, and every offset/length against the real file size, so a
truncated or corrupted file raises :class:`~core.errors.ModelFileError` naming the file
and the fault.  Because every array starts on a 64-byte boundary, ``read_sima(path,
mmap=True)`` can hand back read-only ``np.memmap`` views instead of copies.

Writes are atomic: the file is written to a temporary file in the same directory,
fsynced and moved over the destination with ``os.replace``; on any error the temporary
file is removed and a file already at the destination is left untouched.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from typing import Any, BinaryIO

import numpy as np

from core.errors import ModelFileError
from core.formats.atomic import atomic_write

__all__ = ["MAGIC", "FORMAT_NAME", "FORMAT_VERSION", "FORMAT_MINOR_VERSION", "ALIGNMENT",
           "write_sima", "read_sima", "atomic_write"]

MAGIC = b"\x89SMA\r\n\x1a\n"
assert len(MAGIC) == 8
FORMAT_NAME = "mixq.sima"
FORMAT_VERSION = 1
FORMAT_MINOR_VERSION = 0
ALIGNMENT = 64

_PREAMBLE = struct.Struct("<8sQ32s")  # magic, header_len, header sha256
_MAX_HEADER_LEN = 1 << 31

# dtype strings this format can hold: bool and numeric kinds, explicit byte order.
_ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1"]
    + [f"<{k}{n}" for k in "iu" for n in (2, 4, 8)]
    + ["<f2", "<f4", "<f8", "<c8", "<c16"]
)
_DTYPE_RE = re.compile(r"^[<|][biufc][0-9]{1,2}$")


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _check_dtype(path: str, name: str, dtype: np.dtype) -> np.dtype:
    """The little-endian dtype ``dtype`` is stored as, or ModelFileError if not bool/numeric."""
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise ModelFileError(
            f"cannot write {path!r}: array {name!r} has dtype {dtype}; "
            "only bool and numeric dtypes can be saved (no object/string/structured arrays)")
    stored = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    if stored.str not in _ALLOWED_DTYPES:
        raise ModelFileError(f"cannot write {path!r}: array {name!r} has unsupported dtype {dtype}")
    return stored


def _json_default(path: str):
    def default(obj: Any):
        if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
            return obj.item()
        raise ModelFileError(
            f"cannot write {path!r}: metadata value of type {type(obj).__name__} is not JSON-serializable "
            "(store arrays as arrays, not metadata)")
    return default


def write_sima(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> None:
    """Write ``arrays`` (name -> bool/numeric ndarray, any shape incl. 0-d and empty) and the
    JSON-serializable ``metadata`` dict to ``path`` atomically.  See the module docstring
    for the layout.  Raises :class:`ModelFileError` on bad input or an I/O failure."""
    spath = os.fspath(path)
    if not isinstance(arrays, dict):
        raise ModelFileError(f"cannot write {spath!r}: arrays must be a dict of name -> ndarray")
    if not isinstance(metadata, dict):
        raise ModelFileError(f"cannot write {spath!r}: metadata must be a dict")
    prepared = []
    for name, arr in arrays.items():
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"cannot write {spath!r}: array names must be non-empty strings, got {name!r}")
        if isinstance(arr, np.generic):  # a numpy scalar is saved as a 0-d array
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise ModelFileError(
                f"cannot write {spath!r}: array {name!r} is a {type(arr).__name__}, not a numpy ndarray")
        stored = _check_dtype(spath, name, arr.dtype)
        prepared.append((name, arr, stored))
    try:
        meta_json = json.loads(json.dumps(metadata, default=_json_default(spath), allow_nan=True))
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"cannot write {spath!r}: metadata is not JSON-serializable: {e}") from e

    def write(f: BinaryIO) -> None:
        # Serialize and hash every array first: the header (which precedes the data) holds
        # their hashes and its own length fixes the data offsets.
        blobs = []
        entries = []
        for name, arr, stored in prepared:
            data = arr.astype(stored, copy=False).tobytes(order="C")
            expected = int(math.prod(arr.shape)) * stored.itemsize
            if len(data) != expected:
                raise ModelFileError(f"cannot write {spath!r}: array {name!r} serialized to "
                                     f"{len(data)} bytes, expected {expected}")
            blobs.append(data)
            entries.append({"name": name, "dtype": stored.str, "shape": [int(d) for d in arr.shape],
                            "offset": 0, "nbytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "minor_version": FORMAT_MINOR_VERSION,
                  "metadata": meta_json, "file_size": 0, "arrays": entries}
        # Offsets depend on the header length, which depends on the offsets' digits: iterate
        # to a fixed point (converges in a couple of rounds).
        header_bytes = b""
        for _ in range(16):
            pos = _align(_PREAMBLE.size + len(header_bytes))
            for e in entries:
                e["offset"] = pos
                pos = _align(pos + e["nbytes"])
            last = (
                entries[-1]["offset"] + entries[-1]["nbytes"] if entries else _align(_PREAMBLE.size + len(header_bytes))
            )
            header["file_size"] = last
            new = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
            if new == header_bytes:
                break
            header_bytes = new
        else:  # pragma: no cover - cannot happen: lengths only grow and are bounded
            raise ModelFileError(f"cannot write {spath!r}: header layout did not converge")
        f.write(_PREAMBLE.pack(MAGIC, len(header_bytes), hashlib.sha256(header_bytes).digest()))
        f.write(header_bytes)
        pos = _PREAMBLE.size + len(header_bytes)
        for e, data in zip(entries, blobs):
            f.write(b"\0" * (e["offset"] - pos))
            f.write(data)
            pos = e["offset"] + len(data)
        f.write(b"\0" * (header["file_size"] - pos))

    atomic_write(spath, write)


def read_checked_header(spath: str, f: BinaryIO, file_size: int, magic: bytes, max_len: int, bad,
                        kind: str) -> bytes:
    """The header bytes of a mixq container (``.sima``, ``.lm``): preamble ``magic, header_len,
    sha256(header)`` then the header, each checked (magic, truncation, length, checksum);
    ``bad(path, what)`` makes the error naming the file."""
    pre = f.read(_PREAMBLE.size)
    if len(pre) < len(magic) or pre[:len(magic)] != magic:
        raise bad(spath, f"wrong magic bytes (not a {kind} file)")
    if len(pre) < _PREAMBLE.size:
        raise bad(spath, "file is truncated inside the preamble")
    _, header_len, header_digest = _PREAMBLE.unpack(pre)
    if header_len > min(max_len, file_size - _PREAMBLE.size):
        raise bad(spath, f"header length {header_len} exceeds the file size {file_size} (truncated)")
    raw = f.read(header_len)
    if len(raw) != header_len:
        raise bad(spath, "file is truncated inside the header")
    if hashlib.sha256(raw).digest() != header_digest:
        raise bad(spath, "header checksum mismatch (header is corrupt)")
    return raw


def _bad(path: str, what: str) -> ModelFileError:
    return ModelFileError(f"{path!r} is not a valid .sima file: {what}")


def parse_versioned_header(path: str, raw: bytes, file_size: int, bad, kind: str, format_name: str,
                           max_version: int, too_new_hint: str) -> dict:
    """The JSON header of a mixq container, checked: a JSON object naming ``format_name``, a
    version in 1..``max_version`` (a newer one: ``too_new_hint`` says what to do) and the file's
    own size."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(path, f"header is not valid UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise bad(path, "header is not a JSON object")
    if header.get("format") != format_name:
        raise bad(path, f"header names format {header.get('format')!r}, expected {format_name!r}")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(path, f"header has invalid version {version!r}")
    if version > max_version:
        raise ModelFileError(f"{path!r} is a {kind} file of format version {version}, but this mixq reads only up "
                             f"to version {max_version}; {too_new_hint}")
    if header.get("file_size") != file_size:
        raise bad(path, f"file is {file_size} bytes but its header says {header.get('file_size')!r} "
                        "(truncated or has trailing data)")
    return header


def _parse_header(path: str, raw: bytes, file_size: int) -> dict:
    header = parse_versioned_header(path, raw, file_size, _bad, ".sima", FORMAT_NAME, FORMAT_VERSION,
                                    "upgrade mixq to load it")
    if not isinstance(header.get("metadata"), dict):
        raise _bad(path, "header 'metadata' is not an object")
    if not isinstance(header.get("arrays"), list):
        raise _bad(path, "header 'arrays' is not a list")
    return header


def _check_entry(path: str, e: Any, data_start: int, file_size: int, prev_end: int, seen: set) -> tuple:
    if not isinstance(e, dict):
        raise _bad(path, "an 'arrays' entry is not an object")
    name = e.get("name")
    if not isinstance(name, str) or not name or name in seen:
        raise _bad(path, f"array name {name!r} is missing, empty or duplicated")
    dt = e.get("dtype")
    # Whitelist before numpy ever sees the string: no object/void/string dtypes, ever.
    if not isinstance(dt, str) or not _DTYPE_RE.match(dt) or dt not in _ALLOWED_DTYPES:
        raise _bad(path, f"array {name!r} declares dtype {dt!r}; only bool/numeric dtypes are allowed "
                         "(object/pickled data is refused)")
    dtype = np.dtype(dt)
    shape = e.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise _bad(path, f"array {name!r} has invalid shape {shape!r}")
    offset, nbytes, digest = e.get("offset"), e.get("nbytes"), e.get("sha256")
    if not isinstance(offset, int) or not isinstance(nbytes, int) or isinstance(offset, bool):
        raise _bad(path, f"array {name!r} has invalid offset/nbytes")
    if nbytes != math.prod(shape) * dtype.itemsize:
        raise _bad(path, f"array {name!r}: nbytes {nbytes} does not match shape {shape} and dtype {dt}")
    if offset % ALIGNMENT or offset < max(data_start, prev_end):
        raise _bad(path, f"array {name!r} has misaligned or overlapping offset {offset}")
    if offset + nbytes > file_size:
        raise _bad(path, f"array {name!r} ends at byte {offset + nbytes} but the file has only "
                         f"{file_size} bytes (truncated)")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _bad(path, f"array {name!r} has invalid sha256 {digest!r}")
    return name, dtype, tuple(shape), offset, nbytes, digest


def read_sima(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True
              ) -> tuple[dict[str, np.ndarray], dict]:
    """Read a ``.sima`` file; return ``(arrays, metadata)``.

    Arrays come back bit-exact with the dtype (little-endian) and shape they were written
    with.  With ``mmap=True`` they are read-only ``np.memmap`` views of the file (cheap for
    large models).  ``verify=False`` skips the per-array sha256 (never the header's).
    Raises :class:`ModelFileError` naming the file for a missing, truncated, corrupt,
    foreign or newer-version file.
    """
    spath = os.fspath(path)
    try:
        f = open(spath, "rb")
    except OSError as e:
        raise ModelFileError(f"cannot read {spath!r}: {e}") from e
    with f:
        try:
            file_size = os.fstat(f.fileno()).st_size
            raw = read_checked_header(spath, f, file_size, MAGIC, _MAX_HEADER_LEN, _bad, ".sima")
            header = _parse_header(spath, raw, file_size)
            data_start = _PREAMBLE.size + len(raw)
            entries, seen, prev_end = [], set(), data_start
            for e in header["arrays"]:
                ent = _check_entry(spath, e, data_start, file_size, prev_end, seen)
                seen.add(ent[0])
                prev_end = ent[3] + ent[4]
                entries.append(ent)
            arrays: dict[str, np.ndarray] = {}
            for name, dtype, shape, offset, nbytes, digest in entries:
                if mmap and nbytes > 0:
                    arr = np.memmap(spath, dtype=dtype, mode="r", offset=offset, shape=shape)
                    buf = memoryview(arr.reshape(-1).view(np.uint8))
                else:
                    arr = np.empty(shape, dtype=dtype)
                    buf = memoryview(arr.reshape(-1).view(np.uint8))
                    f.seek(offset)
                    got = f.readinto(buf) if nbytes else 0
                    if got != nbytes:
                        raise _bad(spath, f"array {name!r} is truncated ({got} of {nbytes} bytes)")
                if verify and hashlib.sha256(buf).hexdigest() != digest:
                    raise _bad(spath, f"array {name!r} checksum mismatch (data is corrupt)")
                if dtype.kind == "b" and nbytes and int(np.frombuffer(buf, np.uint8).max()) > 1:
                    raise _bad(spath, f"array {name!r} is bool but holds bytes other than 0 and 1")
                arrays[name] = arr
        except OSError as e:
            raise ModelFileError(f"cannot read {spath!r}: {e}") from e
    return arrays, header["metadata"]
