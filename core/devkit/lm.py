"""The ``.lm`` package: a compiled quantized model for the devkit runtime.

One self-contained, versioned, checksummed file, no pickle, written atomically::

    bytes 0..7     magic  b"\\x89MIXQLM\\n"
    bytes 8..15    header length H (uint64, little-endian)
    bytes 16..47   sha256 of the header
    bytes 48..     header: UTF-8 JSON, H bytes
    then           the data section: the blobs, back to back, at the offsets the header gives

The header::

    {"format": "mixq.lm", "version": 1, "minor_version": 0,
     "file_size": <bytes of the whole file>,
     "model_name": "<name>",
     "program": <the program document of core.formats.program_io: ops in order, graph,
                 quantization parameters, per-node integer constants (weights, biases,
                 requantization multipliers / shifts) as references to blobs>,
     "plan": <the memory plan: target, batch size, per-layer rows, homes, totals>,
     "meta": {"batch_size", "target", "compiled_at" (UTC ISO 8601), "compile_seconds" (planning
              and encoding, before the write), "mixq_version", "codec", "constant_bytes",
              "stored_constant_bytes", "stripped_float_weights": [...]},
     "blobs": [{"name", "dtype" (bool/numeric, little-endian), "shape", "codec": "raw" | "zlib"
                | "lzma", "offset" (from the start of the data section), "stored_nbytes",
                "nbytes" (inflated), "sha256" (of the stored bytes)}, ...]}

Every array of the program is a blob. With compression, a blob is stored deflated (``zlib``,
level 6, or ``lzma``) when that makes it smaller, else ``raw``. The float copies of weights that
only integer Conv/Gemm/MatMul layers consume (they run on ``w_q``) are replaced by empty arrays
(their names listed in ``meta.stripped_float_weights``): the ``.lm`` holds the integer program.

Reading checks the magic, the header checksum, the format name and version (a newer version is
refused), the file size (truncation), each blob's bounds, dtype allow-list, checksum and inflated
size, then decodes the program with the allow-listed decoder of :mod:`core.formats.program_io`.
Every fault raises :class:`~core.errors.ModelFileError` naming the file.

numpy + the standard library only (the devkit runtime reads this).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import lzma
import math
import os
import re
import struct
import time
import zlib
from typing import Any, BinaryIO

import numpy as np

from core.devkit.planner import CompileReport, MemoryPlan, Target, plan_memory
from core.errors import ModelFileError
from core.formats.atomic import atomic_write
from core.formats.sima import parse_versioned_header, read_checked_header
from core.ops.quant_rules import rule_of

__all__ = ["LM_MAGIC", "LM_FORMAT_NAME", "LM_FORMAT_VERSION", "CODECS", "write_lm", "read_lm", "read_lm_header"]

LM_MAGIC = b"\x89MIXQLM\n"
assert len(LM_MAGIC) == 8
LM_FORMAT_NAME = "mixq.lm"
LM_FORMAT_VERSION = 1
LM_MINOR_VERSION = 0
CODECS = ("raw", "zlib", "lzma")

_PREAMBLE = struct.Struct("<8sQ32s")
_MAX_HEADER_LEN = 1 << 30
_ALLOWED_DTYPES = frozenset(
    ["|b1", "|i1", "|u1"] + [f"<{k}{n}" for k in "iu" for n in (2, 4, 8)] + ["<f2", "<f4", "<f8", "<c8", "<c16"])
_DTYPE_RE = re.compile(r"^[<|][biufc][0-9]{1,2}$")
_MIN_COMPRESS = 64  # blobs smaller than this are stored raw


def _codec_of(compress: Any) -> str:
    if compress is True:
        return "zlib"
    if compress is False or compress is None:
        return "raw"
    if compress in ("zlib", "lzma"):
        return compress
    raise ValueError(f"compress must be True, False, 'zlib' or 'lzma', got {compress!r}")


def _deflate(codec: str, data: bytes) -> bytes:
    if codec == "zlib":
        return zlib.compress(data, 6)
    return lzma.compress(data, preset=6)


def _inflate(path: str, name: str, codec: str, data: bytes, nbytes: int) -> bytes:
    try:
        if codec == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, nbytes + 1)
            ok = d.eof and not d.unconsumed_tail
        else:
            d = lzma.LZMADecompressor()
            out = d.decompress(data, max_length=nbytes + 1)
            ok = d.eof
    except (zlib.error, lzma.LZMAError) as e:
        raise _bad(path, f"blob {name!r} does not inflate ({codec}: {e})") from None
    if not ok or len(out) != nbytes:
        raise _bad(path, f"blob {name!r} inflates to {len(out)} bytes, expected {nbytes}")
    return out


def _bad(path: str, what: str) -> ModelFileError:
    return ModelFileError(f"{path!r} is not a valid .lm file: {what}")


def _lm_program(program):
    """The program as the .lm holds it: float weights consumed only by integer Conv/Gemm/MatMul
    layers (which run on their ``w_q``) become empty arrays. Returns ``(program, stripped names)``."""
    from core.quantization.quantizer import QuantizedProgram

    g = program.graph
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for n in g.nodes:
        for k, t in enumerate(n.inputs):
            if t in g.constants:
                consumers.setdefault(t, []).append((n, k))
    stripped = []
    for t, uses in consumers.items():
        if t in g.outputs or t in g.inputs:
            continue
        if all(program.kinds.get(n.name) == "int" and getattr(rule_of(n), "weighted", False) and k in (1, 2)
               and isinstance(program.constants[n.name].w_q, np.ndarray) for n, k in uses):
            stripped.append(t)
    if not stripped:
        return program, []
    g2 = g.copy()
    for t in stripped:
        empty = np.zeros(0, dtype=np.asarray(g.constants[t]).dtype)
        g2.constants[t] = empty
        info = g2.tensors.get(t)
        if info is not None:
            info.value = None
    return QuantizedProgram(g2, program.tensors, program.constants, program.kinds, program.requantization_mode,
                            program.params, program.meta), stripped


def write_lm(path: str | os.PathLike, program, model_name: str, *, batch_size: int = 1, compress: Any = True,
             target: Target | None = None) -> CompileReport:
    """Plan ``program`` for ``target`` at ``batch_size`` and write the ``.lm`` to ``path``
    (atomically). ``compress``: True (zlib), ``'lzma'`` or False. Returns the
    :class:`~core.devkit.planner.CompileReport`. Raises :class:`~core.errors.ModelFileError`."""
    from core.formats.program_io import program_document
    from core.version import __version__

    t0 = time.perf_counter()
    spath = os.fspath(path)
    if not isinstance(model_name, str) or not model_name:
        raise ModelFileError(f"cannot write {spath!r}: model_name must be a non-empty string, got {model_name!r}")
    codec = _codec_of(compress)
    target = target if target is not None else Target()
    plan = plan_memory(program, batch_size, target)
    lm_program, stripped = _lm_program(program)
    doc, arrays = program_document(spath, model_name, lm_program)

    blobs: list[bytes] = []
    entries: list[dict] = []
    offset = constant_bytes = 0
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
        if dt.str not in _ALLOWED_DTYPES:
            raise ModelFileError(f"cannot write {spath!r}: array {name!r} has unsupported dtype {arr.dtype}")
        raw = np.ascontiguousarray(arr, dtype=dt).tobytes()
        stored, used = raw, "raw"
        if codec != "raw" and len(raw) >= _MIN_COMPRESS:
            packed = _deflate(codec, raw)
            if len(packed) < len(raw):
                stored, used = packed, codec
        entries.append({"name": name, "dtype": dt.str, "shape": [int(d) for d in arr.shape], "codec": used,
                        "offset": offset, "stored_nbytes": len(stored), "nbytes": len(raw),
                        "sha256": hashlib.sha256(stored).hexdigest()})
        blobs.append(stored)
        offset += len(stored)
        constant_bytes += len(raw)
    stored_bytes = offset
    meta = {"batch_size": plan.batch_size, "target": target.to_dict(),
            "compiled_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "compile_seconds": time.perf_counter() - t0, "mixq_version": __version__,
            "codec": codec if codec != "raw" else "none", "constant_bytes": constant_bytes,
            "stored_constant_bytes": stored_bytes, "stripped_float_weights": stripped}
    header = {"format": LM_FORMAT_NAME, "version": LM_FORMAT_VERSION, "minor_version": LM_MINOR_VERSION,
              "file_size": 0, "model_name": model_name, "program": doc, "plan": plan.to_dict(), "meta": meta,
              "blobs": entries}
    # the file size depends on the header's length, which depends on the file size's digits
    header_bytes = b""
    for _ in range(8):
        header["file_size"] = _PREAMBLE.size + len(header_bytes) + stored_bytes
        new = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
        if new == header_bytes:
            break
        header_bytes = new
    else:  # pragma: no cover - the length converges in two rounds
        raise ModelFileError(f"cannot write {spath!r}: header layout did not converge")

    def write(f: BinaryIO) -> None:
        f.write(_PREAMBLE.pack(LM_MAGIC, len(header_bytes), hashlib.sha256(header_bytes).digest()))
        f.write(header_bytes)
        for b in blobs:
            f.write(b)

    try:
        atomic_write(spath, write, what=".lm")
    except ModelFileError:
        raise
    except OSError as e:  # pragma: no cover - atomic_write converts these
        raise ModelFileError(f"cannot write {spath!r}: {e}") from e
    return CompileReport(model_name, os.path.abspath(spath), plan, time.perf_counter() - t0,
                         header["file_size"], constant_bytes, stored_bytes, meta["codec"])


def _read_header(spath: str, f: BinaryIO, file_size: int) -> tuple[dict, int]:
    raw = read_checked_header(spath, f, file_size, LM_MAGIC, _MAX_HEADER_LEN, _bad, ".lm")
    header = parse_versioned_header(spath, raw, file_size, _bad, ".lm", LM_FORMAT_NAME, LM_FORMAT_VERSION,
                                    "recompile the model or upgrade mixq on this machine")
    for key, typ in (("model_name", str), ("program", dict), ("plan", dict), ("meta", dict), ("blobs", list)):
        if not isinstance(header.get(key), typ):
            raise _bad(spath, f"header {key!r} is missing or not a {typ.__name__}")
    return header, _PREAMBLE.size + len(raw)


def read_lm_header(path: str | os.PathLike) -> dict:
    """The checked header of a ``.lm`` (model name, program document, plan, meta, blobs) without
    reading the data section."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            return _read_header(spath, f, os.fstat(f.fileno()).st_size)[0]
    except OSError as e:
        raise ModelFileError(f"cannot read {spath!r}: {e}") from e


def _read_blobs(spath: str, f: BinaryIO, header: dict, data_start: int, file_size: int) -> dict[str, np.ndarray]:
    data_size = file_size - data_start
    arrays: dict[str, np.ndarray] = {}
    prev_end = 0
    for e in header["blobs"]:
        if not isinstance(e, dict):
            raise _bad(spath, "a 'blobs' entry is not an object")
        name = e.get("name")
        if not isinstance(name, str) or not name or name in arrays:
            raise _bad(spath, f"blob name {name!r} is missing, empty or duplicated")
        dt = e.get("dtype")
        if not isinstance(dt, str) or not _DTYPE_RE.match(dt) or dt not in _ALLOWED_DTYPES:
            raise _bad(spath, f"blob {name!r} declares dtype {dt!r}; only bool/numeric dtypes are allowed")
        dtype = np.dtype(dt)
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise _bad(spath, f"blob {name!r} has invalid shape {shape!r}")
        codec = e.get("codec")
        if codec not in CODECS:
            raise _bad(spath, f"blob {name!r} has unknown codec {codec!r} (known: {', '.join(CODECS)})")
        offset, stored, nbytes, digest = e.get("offset"), e.get("stored_nbytes"), e.get("nbytes"), e.get("sha256")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, stored, nbytes)):
            raise _bad(spath, f"blob {name!r} has invalid offset/sizes")
        if nbytes != math.prod(shape) * dtype.itemsize or (codec == "raw" and stored != nbytes):
            raise _bad(spath, f"blob {name!r}: sizes do not match shape {shape} and dtype {dt}")
        if offset < prev_end:
            raise _bad(spath, f"blob {name!r} overlaps the previous one")
        if offset + stored > data_size:
            raise _bad(spath, f"blob {name!r} ends at byte {data_start + offset + stored} but the file has only "
                              f"{file_size} bytes (truncated)")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _bad(spath, f"blob {name!r} has invalid sha256 {digest!r}")
        f.seek(data_start + offset)
        data = f.read(stored)
        if len(data) != stored:
            raise _bad(spath, f"blob {name!r} is truncated ({len(data)} of {stored} bytes)")
        if hashlib.sha256(data).hexdigest() != digest:
            raise _bad(spath, f"blob {name!r} checksum mismatch (data is corrupt)")
        if codec != "raw":
            data = _inflate(spath, name, codec, data, nbytes)
        arr = np.frombuffer(data, dtype=dtype).reshape(shape).copy() if nbytes else np.zeros(shape, dtype)
        if dtype.kind == "b" and nbytes and int(arr.view(np.uint8).max()) > 1:
            raise _bad(spath, f"blob {name!r} is bool but holds bytes other than 0 and 1")
        arrays[name] = arr
        prev_end = offset + stored
    return arrays


def _decode_program(spath: str, doc: dict, arrays: dict[str, np.ndarray]):
    # The program document is core.formats.program_io's: same checks as load_program.
    from core.formats import program_io

    fmt = doc.get("program_format")
    if not isinstance(fmt, dict) or fmt.get("name") != program_io.PROGRAM_FORMAT_NAME:
        raise _bad(spath, f"its program has no 'program_format' {program_io.PROGRAM_FORMAT_NAME!r}")
    version = fmt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(spath, f"invalid program_format version {version!r}")
    if version > program_io.PROGRAM_FORMAT_VERSION:
        raise ModelFileError(f"{spath!r} holds a mixq program of format version {version}, but this mixq reads only "
                             f"up to version {program_io.PROGRAM_FORMAT_VERSION}; upgrade mixq to load it")
    while version < program_io.PROGRAM_FORMAT_VERSION:
        upgrade = program_io._UPGRADERS.get(version)
        if upgrade is None:
            raise ModelFileError(f"{spath!r}: no upgrade from program_format version {version}")
        doc = upgrade(doc)
        version += 1
    return program_io._decode_program(spath, doc, arrays)


def read_lm(path: str | os.PathLike) -> tuple[str, Any, MemoryPlan, dict]:
    """Read a ``.lm``: ``(model_name, program, plan, meta)`` with ``program`` a
    :class:`~core.quantization.quantizer.QuantizedProgram` ready for ``run_program``, ``plan`` a
    :class:`~core.devkit.planner.MemoryPlan` and ``meta`` the header's metadata dict. Raises
    :class:`~core.errors.ModelFileError` naming the file for a missing, truncated, corrupt, foreign
    or newer-version file."""
    spath = os.fspath(path)
    try:
        f = open(spath, "rb")
    except OSError as e:
        raise ModelFileError(f"cannot read {spath!r}: {e}") from e
    try:
        with f:
            file_size = os.fstat(f.fileno()).st_size
            header, data_start = _read_header(spath, f, file_size)
            arrays = _read_blobs(spath, f, header, data_start, file_size)
        name, program = _decode_program(spath, header["program"], arrays)
        try:
            plan = MemoryPlan.from_dict(header["plan"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _bad(spath, f"its memory plan is invalid ({type(e).__name__}: {e})") from None
        meta = header["meta"]
        batch = meta.get("batch_size")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise _bad(spath, f"meta.batch_size must be a positive integer, got {batch!r}")
        if name != header["model_name"]:
            raise _bad(spath, f"model name {header['model_name']!r} differs from its program's {name!r}")
        return name, program, plan, meta
    except ModelFileError:
        raise
    except OSError as e:
        raise ModelFileError(f"cannot read {spath!r}: {e}") from e
    except RecursionError:
        raise _bad(spath, "its program document is nested too deeply") from None
    except Exception as e:  # a safety net: never a bare KeyError/TypeError from a crafted file
        raise _bad(spath, f"{type(e).__name__}: {e}") from e
