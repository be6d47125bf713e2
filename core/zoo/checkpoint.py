"""Read PyTorch checkpoints (.pth) into numpy arrays without torch and without running their code.

Two container formats exist:

* zip (torch >= 1.6): ``<root>/data.pkl`` is a pickle whose storages live raw in
  ``<root>/data/<key>``; persistent ids are ``('storage', StorageType, key, location, numel)``.
* legacy (torch < 1.6; torchvision's older model files): a stream of pickles — magic number,
  protocol version, system info, the object, the list of storage keys — followed by each
  storage as an int64 element count and its raw bytes; persistent ids are
  ``('storage', StorageType, root_key, location, numel, view_metadata)``.

In both, tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
calls. The unpickler below resolves only those names (and ``collections.OrderedDict``) to
harmless local stand-ins and refuses every other global, so a malicious file can not reach
``os.system``, ``eval`` or any other callable.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from core.errors import CheckpointError

__all__ = ["load_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype of one element (bfloat16 is decoded separately).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """What ``torch.FloatStorage`` etc. unpickle to: a name and an element dtype, not callable."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
    """A storage named by a persistent id; its bytes are attached after unpickling."""

    __slots__ = ("storage_type", "key", "numel", "view")

    def __init__(self, storage_type: _StorageType, key: str, numel: int, view=None):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel
        self.view = view  # legacy format: (view_key, element offset, view numel) or None


class _TensorRef:
    """A tensor recorded by ``_rebuild_tensor_v2``; materialized once storage bytes are known."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"_rebuild_tensor_v2 expects a storage, got {type(storage).__name__}")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
    return data


_ALLOWED_CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuilding globals; everything else is refused before it is looked up."""

    def __init__(self, file, source: str, legacy: bool):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.legacy = legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"{self.source}: refusing to load global {module}.{name} "
            "(only tensors and OrderedDict may appear in a checkpoint)"
        )

    def persistent_load(self, pid):
        expected = 6 if self.legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == expected and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) \
                or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self.source}: malformed storage reference {pid!r:.200}")
        view = pid[5] if self.legacy else None
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3
                    and all(isinstance(v, (int, str)) for v in view)):
                raise CheckpointError(f"{self.source}: malformed storage view {view!r:.200}")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _StorageRef(storage_type, key, numel)
        elif known.storage_type.dtype != storage_type.dtype:
            raise CheckpointError(f"{self.source}: storage {key!r} used with two dtypes")
        if view is not None:
            _view_key, view_offset, view_numel = view
            return _StorageRef(storage_type, key, known.numel, (int(view_offset), int(view_numel)))
        return known


def _unpickle(data: bytes | io.BufferedIOBase, source: str, legacy: bool):
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    unpickler = _RestrictedUnpickler(stream, source, legacy)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except Exception as exc:  # any malformed pickle: EOF, bad opcode, wrong call arity, ...
        raise CheckpointError(f"{source}: malformed checkpoint pickle ({type(exc).__name__}: {exc})") from exc
    return obj, unpickler.storages


def _storage_array(raw: bytes, ref: _StorageRef, little_endian: bool, source: str) -> np.ndarray:
    dtype = ref.storage_type.dtype.newbyteorder("<" if little_endian else ">")
    if len(raw) < ref.numel * dtype.itemsize:
        raise CheckpointError(
            f"{source}: storage {ref.key!r} holds {len(raw)} bytes, "
            f"needs {ref.numel * dtype.itemsize} for {ref.numel} elements"
        )
    array = np.frombuffer(raw, dtype=dtype, count=ref.numel)
    if ref.storage_type.name == "BFloat16Storage":
        # bfloat16 is the top half of a float32.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _materialize(tensor: _TensorRef, storages: dict[str, np.ndarray], source: str, name: str) -> np.ndarray:
    flat = storages[tensor.storage.key]
    offset = tensor.offset
    limit = flat.size
    if tensor.storage.view is not None:
        view_offset, view_numel = tensor.storage.view
        offset += view_offset
        limit = min(limit, view_offset + view_numel)
    size, stride = tensor.size, tensor.stride
    ints = (offset, *size, *stride)
    if not all(isinstance(v, int) for v in ints) or len(size) != len(stride) \
            or min(ints, default=0) < 0:
        raise CheckpointError(f"{source}: tensor {name!r} has malformed offset/size/stride "
                              f"{offset!r}/{size!r}/{stride!r}")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= limit:
        raise CheckpointError(f"{source}: tensor {name!r} (size {size}, stride {stride}, offset {offset}) "
                              f"reaches past its storage of {limit} elements")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)  # own contiguous copy, detached from the file buffer


def _collect(obj: Any, storages: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Flatten (possibly nested) dicts of tensors into ``{dotted.name: array}``; other leaves are dropped."""
    out: dict[str, np.ndarray] = {}

    def walk(value, prefix):
        if isinstance(value, _TensorRef):
            out[prefix] = _materialize(value, storages, source, prefix)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))

    if isinstance(obj, _TensorRef):
        raise CheckpointError(f"{source}: checkpoint holds a single tensor, not a dict of named tensors")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    walk(obj, "")
    if not out:
        raise CheckpointError(f"{source}: checkpoint contains no tensors")
    return out


def _load_zip(path: str, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: zip checkpoint without a single <root>/data.pkl")
    root = pickles[0][: -len("data.pkl")]
    obj, refs = _unpickle(archive.read(pickles[0]), path, legacy=False)
    names = set(archive.namelist())
    little_endian = True
    if root + "byteorder" in names:
        little_endian = archive.read(root + "byteorder").strip() != b"big"
    storages = {}
    for key, ref in refs.items():
        member = f"{root}data/{key}"
        if member not in names:
            raise CheckpointError(f"{path}: storage {key!r} missing (no {member} in the archive)")
        expected = ref.numel * ref.storage_type.dtype.itemsize
        if archive.getinfo(member).file_size != expected:  # checked before reading (no zip bombs)
            raise CheckpointError(f"{path}: storage {key!r} holds {archive.getinfo(member).file_size} bytes, "
                                  f"needs {expected} for {ref.numel} elements")
        storages[key] = _storage_array(archive.read(member), ref, little_endian, path)
    return _collect(obj, storages, path)


def _load_legacy(path: str, stream: io.BufferedIOBase) -> dict[str, np.ndarray]:
    magic, _ = _unpickle(stream, path, legacy=True)
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: neither a zip nor a legacy PyTorch checkpoint (bad magic number)")
    protocol, _ = _unpickle(stream, path, legacy=True)
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: unsupported legacy checkpoint protocol {protocol!r}")
    sys_info, _ = _unpickle(stream, path, legacy=True)
    little_endian = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    obj, refs = _unpickle(stream, path, legacy=True)
    keys, _ = _unpickle(stream, path, legacy=True)
    if not isinstance(keys, list) or set(keys) != set(refs):
        raise CheckpointError(f"{path}: legacy checkpoint's storage key list does not match its tensors")
    file_size = os.fstat(stream.fileno()).st_size
    storages = {}
    for key in keys:
        header = stream.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q" if little_endian else ">q", header)
        ref = refs[key]
        if numel != ref.numel:
            raise CheckpointError(f"{path}: storage {key!r} holds {numel} elements, its tensors say {ref.numel}")
        nbytes = numel * ref.storage_type.dtype.itemsize
        if nbytes > file_size - stream.tell():  # checked before reading: read(n) allocates n bytes up front
            raise CheckpointError(f"{path}: truncated: storage {key!r} needs {nbytes} bytes, "
                                  f"{file_size - stream.tell()} remain")
        raw = stream.read(nbytes)
        storages[key] = _storage_array(raw, ref, little_endian, path)
    return _collect(obj, storages, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return the named tensors of a PyTorch checkpoint as numpy arrays (nested dicts get dotted names).

    Raises ``CheckpointError`` for a missing, truncated or malformed file, and for any pickle that
    names a global other than the tensor-rebuilding ones (nothing from the file is ever executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(path, archive)
        with open(path, "rb") as stream:
            if stream.read(4) == b"PK\x03\x04":
                raise CheckpointError(f"{path}: truncated or corrupt zip checkpoint (no central directory)")
            stream.seek(0)
            return _load_legacy(path, stream)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
