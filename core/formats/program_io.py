"""Saving and loading a :class:`~core.quantization.quantizer.QuantizedProgram` (``Model.save`` /
``Model.load``).

A saved model is two files:

* ``<model>.sima`` (:mod:`core.formats.sima`): every array of the program (graph constants,
  ``TensorInfo`` values, array-valued node attributes, per-node integer constants, numpy scalars)
  in the container's checksummed arrays section, and everything else in one JSON *program
  document* stored as the container's metadata.
* ``<model>.sima.json`` (:mod:`core.formats.sima_json`): the Netron-viewable view, one layer per
  graph input and per node. It is written for people; loading never reads it.

The program document (``PROGRAM_FORMAT_VERSION`` 2; version 1 held each node's constants as a
plain object of the same field names, upgraded on load)::

    {"program_format": {"name": "mixq.program", "version": 1},
     "model_name": "<name>",
     "graph": {"name": ..., "inputs": [...], "outputs": [...], "opset": 13, "metadata": <value>,
               "tensors": {"<tensor>": {"shape": [...], "dtype": "<f4", "value": null | <value>}},
               "constants": {"<tensor>": <value>},
               "nodes": [{"name", "op", "inputs", "outputs", "attrs": <value>, "source_name",
                          "segment"}, ...]},
     "tensors": {"<tensor>": <value: a TensorQuant object>},
     "constants": {"<node>": <value: a NodeQuant object>},
     "kinds": {"<node>": "int" | "float" | "apu"},
     "requantization_mode": <value: a RequantizationMode enum>,
     "params": <value: a QuantizationParams object>,
     "meta": <value>}

A ``<value>`` is JSON (null, bool, int, float incl. NaN/Infinity, str, list, and objects with
str keys none of which starts with ``"__"``) or exactly one *tag*, an object with one key:

    {"__array__": "<array name>"}     an ndarray from the container's arrays section
    {"__scalar__": "<array name>"}    a numpy scalar (stored as a 0-d array)
    {"__tuple__": [<value>, ...]}
    {"__dict__": [[<key>, <value>], ...]}   a dict whose keys are not plain JSON-safe strings
    {"__bytes__": "<base64>"}
    {"__str_array__": {"dtype": "<U5", "shape": [...], "values": [...]}}
    {"__dtype__": "<f4"}              a bool/numeric numpy dtype
    {"__enum__": "RequantizationMode.sima"}          only the enums in ``ENUMS``
    {"__object__": {"class": "QuantizationScheme", "fields": {...}}}   only the classes in ``CLASSES``

Loading is data-only: the decoder builds nothing but JSON values, numpy arrays/scalars and the
allow-listed mixq types, looks enum members up by name in their ``__members__`` and classes up in
``CLASSES`` (never ``import``/``getattr`` on a name from the file), and validates the result
(unknown tags, enums, classes or fields, missing keys, wrong types, references to missing arrays,
unknown ops, node inputs no earlier node produces, ...) raising
:class:`~core.errors.ModelFileError` naming the file and the fault. Arrays are read by
:func:`core.formats.sima.read_sima`, which accepts only bool/numeric dtypes (no pickle).

Versioning: a document with a newer ``program_format.version`` than ``PROGRAM_FORMAT_VERSION`` is
refused; an older one is brought up to date by ``_UPGRADERS`` (1 -> 2: node constants as NodeQuant).
Dataclass fields with a default may be absent (a file written before the field existed gets the default); unknown fields
are refused.
"""
from __future__ import annotations

import base64
import dataclasses
import enum
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core.errors import MixqError, ModelFileError
from core.formats.sima import read_sima, write_sima
from core.formats.sima_json import write_sima_json
from core.ir.graph import Graph, Node, TensorInfo
from core.quantization.params import (
    AdaRoundMethod,
    CalibrationMethod,
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    QuantizationFlavor,
    QuantizationParams,
    QuantizationPrecision,
    QuantizationScheme,
    RangeSearchMethod,
    RequantizationMode,
)
from core.quantization.quantizer import NodeQuant, QuantizedProgram, TensorQuant

__all__ = ["PROGRAM_FORMAT_NAME", "PROGRAM_FORMAT_VERSION", "CLASSES", "ENUMS", "known_classes", "save_program",
           "load_program", "program_document", "netron_layers"]

PROGRAM_FORMAT_NAME = "mixq.program"
PROGRAM_FORMAT_VERSION = 2

# The only classes and enums a saved program may name.
CLASSES: dict[str, type] = {c.__name__: c for c in (
    QuantizationParams, QuantizationScheme, MinMaxMethod, MovingAverageMinMaxMethod, HistogramMSEMethod,
    HistogramEntropyMethod, HistogramPercentileMethod, TensorQuant, NodeQuant, AdaRoundMethod,
    RangeSearchMethod)}


def known_classes() -> dict[str, type]:
    """``CLASSES`` and every registered calibration method (``CalibrationMethod.registered()``: a
    method added later is saved and loaded with no change here); a name already in ``CLASSES``
    keeps its class."""
    return {**{c.__name__: c for c in CalibrationMethod.registered()}, **CLASSES}


ENUMS: dict[str, type[enum.Enum]] = {e.__name__: e for e in (
    RequantizationMode, QuantizationPrecision, QuantizationFlavor)}
KINDS = ("int", "float", "apu")


def _upgrade_1_to_2(doc: dict) -> dict:
    """Version 1 stored a node's constants as a plain object of NodeQuant's field names; version 2
    stores a NodeQuant object. Unknown keys are refused by the object decoder, naming them."""
    constants = doc.get("constants")
    if isinstance(constants, dict):
        doc = dict(doc, constants={
            k: {"__object__": {"class": "NodeQuant", "fields": v}} if isinstance(v, dict) and not any(
                str(key).startswith("__") for key in v) else v
            for k, v in constants.items()})
    return doc


# version n -> function turning a version-n document into a version-(n+1) one
_UPGRADERS: dict[int, Callable[[dict], dict]] = {1: _upgrade_1_to_2}

# numpy dtypes the container (and TensorInfo.dtype / __dtype__) may hold
_NUMERIC_DTYPES = frozenset(
    ["|b1", "|i1", "|u1"] + [f"<{k}{n}" for k in "iu" for n in (2, 4, 8)] + ["<f2", "<f4", "<f8", "<c8", "<c16"])
_STR_DTYPE_RE = re.compile(r"^<U[0-9]{1,6}$")
_TAGS = ("__array__", "__scalar__", "__tuple__", "__dict__", "__bytes__", "__str_array__", "__dtype__",
         "__enum__", "__object__")


def _dtype_str(dtype: np.dtype) -> str:
    d = np.dtype(dtype)
    return (d.newbyteorder("<") if d.itemsize > 1 else d).str


# --------------------------------------------------------------------------- encoding

class _Encoder:
    """Program values -> JSON, collecting arrays under stable names (one copy per array object)."""

    def __init__(self, path: str):
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}
        self._names_by_id: dict[int, str] = {}
        self._keep: list[Any] = []  # keeps ids stable while encoding

    def _fail(self, where: str, what: str) -> ModelFileError:
        return ModelFileError(f"cannot write {self.path!r}: {where}: {what}")

    def array(self, arr: np.ndarray, hint: str) -> str:
        name = self._names_by_id.get(id(arr))
        if name is not None:
            return name
        name, k = hint, 1
        while name in self.arrays:
            name, k = f"{hint}#{k}", k + 1
        self.arrays[name] = arr
        self._names_by_id[id(arr)] = name
        self._keep.append(arr)
        return name

    def value(self, v: Any, hint: str) -> Any:
        if isinstance(v, enum.Enum):  # before str/int: an Enum may subclass them
            cls = type(v)
            if ENUMS.get(cls.__name__) is not cls:
                raise self._fail(hint, f"enum {cls.__module__}.{cls.__qualname__} cannot be saved "
                                       f"(known enums: {', '.join(ENUMS)})")
            return {"__enum__": f"{cls.__name__}.{v.name}"}
        if isinstance(v, np.generic):  # before float/str: np.float64 and np.str_ subclass them
            if v.dtype.kind in "biufc":
                arr = np.asarray(v)
                self._keep.append(arr)
                return {"__scalar__": self.array(arr, hint)}
            if v.dtype.kind == "U":
                return str(v)
            if v.dtype.kind == "S":
                return {"__bytes__": base64.b64encode(bytes(v)).decode("ascii")}
            raise self._fail(hint, f"numpy scalar of dtype {v.dtype} cannot be saved")
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            return str(v)
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "U":
                return {"__str_array__": {"dtype": _dtype_str(v.dtype), "shape": list(v.shape),
                                          "values": [str(s) for s in v.reshape(-1).tolist()]}}
            if v.dtype.kind not in "biufc" or v.dtype.fields is not None or v.dtype.subdtype is not None:
                raise self._fail(hint, f"array of dtype {v.dtype} cannot be saved (bool/numeric/str only)")
            return {"__array__": self.array(v, hint)}
        if isinstance(v, np.dtype):
            s = _dtype_str(v)
            if s not in _NUMERIC_DTYPES:
                raise self._fail(hint, f"dtype {v} cannot be saved")
            return {"__dtype__": s}
        if isinstance(v, (bytes, bytearray)):
            return {"__bytes__": base64.b64encode(bytes(v)).decode("ascii")}
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return {"__tuple__": [self.value(x, f"{hint}/{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{hint}/{i}") for i, x in enumerate(v)]
        if isinstance(v, Mapping):
            if all(isinstance(k, str) and type(k) is str and not k.startswith("__") for k in v):
                return {k: self.value(x, f"{hint}/{k}") for k, x in v.items()}
            return {"__dict__": [[self.value(k, f"{hint}/key{i}"), self.value(x, f"{hint}/{k}")]
                                 for i, (k, x) in enumerate(v.items())]}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            if known_classes().get(cls.__name__) is not cls:
                raise self._fail(hint, f"object of class {cls.__module__}.{cls.__qualname__} cannot be saved "
                                       f"(known classes: {', '.join(known_classes())})")
            fields = {f.name: self.value(getattr(v, f.name), f"{hint}/{f.name}")
                      for f in dataclasses.fields(v) if f.init}
            return {"__object__": {"class": cls.__name__, "fields": fields}}
        raise self._fail(hint, f"value of type {type(v).__module__}.{type(v).__qualname__} cannot be saved")


def program_document(path: str, model_name: str, program: QuantizedProgram) -> tuple[dict, dict[str, np.ndarray]]:
    """The program document and the arrays it references (see the module docstring)."""
    if not isinstance(program, QuantizedProgram):
        raise ModelFileError(f"cannot write {path!r}: expected a QuantizedProgram, got {type(program).__name__}")
    enc = _Encoder(path)
    g = program.graph
    graph_doc = {
        "name": str(g.name),
        "inputs": list(g.inputs),
        "outputs": list(g.outputs),
        "opset": int(g.opset),
        "metadata": enc.value(dict(g.metadata), "graph/metadata"),
        # constants first: their arrays are usually the same objects as the TensorInfo values
        "constants": {k: enc.value(np.asarray(v), f"graph/constants/{k}") for k, v in g.constants.items()},
        "tensors": {},
        "nodes": [],
    }
    for k, info in g.tensors.items():
        dt = _dtype_str(info.dtype)
        if dt not in _NUMERIC_DTYPES and not _STR_DTYPE_RE.match(dt):
            raise enc._fail(f"tensor {k!r}", f"dtype {info.dtype} cannot be saved")
        graph_doc["tensors"][k] = {
            "shape": [int(d) for d in info.shape], "dtype": dt,
            "value": None if info.value is None else enc.value(np.asarray(info.value), f"graph/tensors/{k}/value")}
    for n in g.nodes:
        graph_doc["nodes"].append({
            "name": n.name, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs),
            "attrs": enc.value(dict(n.attrs), f"graph/nodes/{n.name}/attrs"),
            "source_name": n.source_name, "segment": n.segment})
    doc = {
        "program_format": {"name": PROGRAM_FORMAT_NAME, "version": PROGRAM_FORMAT_VERSION},
        "model_name": model_name,
        "graph": graph_doc,
        "tensors": {k: enc.value(q, f"tensors/{k}") for k, q in program.tensors.items()},
        "constants": {k: enc.value(c, f"constants/{k}") for k, c in program.constants.items()},
        "kinds": dict(program.kinds),
        "requantization_mode": enc.value(program.requantization_mode, "requantization_mode"),
        "params": enc.value(program.params, "params"),
        "meta": enc.value(dict(program.meta), "meta"),
    }
    return doc, enc.arrays


# --------------------------------------------------------------------------- Netron view

def _view(v: Any, depth: int = 0) -> Any:
    """A small JSON-safe rendering of an attribute for the Netron view."""
    if v is None or isinstance(v, (bool, int, float, str)) and not isinstance(v, enum.Enum):
        return v
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if isinstance(v, np.ndarray):
        if v.size <= 16 and v.dtype.kind in "biufU":
            return v.tolist()
        return f"<array shape={list(v.shape)} dtype={v.dtype}>"
    if isinstance(v, np.generic):
        return v.item() if v.dtype.kind in "biuf" else str(v)
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if depth < 4 and isinstance(v, (list, tuple)):
        return [_view(x, depth + 1) for x in v]
    if depth < 4 and isinstance(v, Mapping):
        return {str(k): _view(x, depth + 1) for k, x in v.items()}
    return repr(v)


def _precision(bits: list[int]) -> str:
    return f"int{max(bits)}" if bits else "float32"


def netron_layers(program: QuantizedProgram) -> list[dict]:
    """The ``.sima.json`` layers: one ``InputLayer`` per graph input, then one per node."""
    g = program.graph
    tq = program.tensors
    consts = g.constants
    node_names = {n.name for n in g.nodes}
    # set by Model.analyze_quantization_error: {node: {"metric": ..., "error_value": ...}}
    layer_stats = program.meta.get("layer_statistics") or {}
    layer_of: dict[str, str] = {}
    layers: list[dict] = []

    def quant(names: list[str]) -> dict:
        qs = [tq[t] for t in names if t in tq]
        if not qs:
            return {}
        return {"scales": [float(q.scale) for q in qs], "zero_points": [int(q.zero_point) for q in qs],
                "bits": [int(q.bits) for q in qs]}

    for inp in g.inputs:
        name = inp if inp not in node_names else f"input:{inp}"
        layer_of[inp] = name
        info = g.tensors.get(inp)
        cfg = {"segment": "input", "kind": "input",
               "batch_input_shape": list(info.shape) if info is not None else None,
               "dtype": str(info.dtype) if info is not None else None,
               "precision": _precision([tq[inp].bits] if inp in tq and tq[inp].bits in (8, 16) else []),
               "input_int16": False, "Layer Statistics": None}
        cfg.update(quant([inp]))
        layers.append({"name": name, "op": "InputLayer", "inbound": [], "config": cfg})
    for n in g.nodes:
        kind = program.kinds.get(n.name, "apu")
        acts = [i for i in n.inputs if i and i not in consts]
        outs = [o for o in n.outputs if o]
        c = program.constants.get(n.name) or NodeQuant()
        if kind == "apu":
            precision, input_int16 = "float32", False
        else:
            precision = _precision([tq[t].bits for t in acts + outs if t in tq and tq[t].bits in (8, 16)])
            input_int16 = any(tq[i].bits == 16 for i in acts if i in tq)
        cfg: dict[str, Any] = {"segment": n.segment, "kind": kind, "source_name": n.source_name,
                               "precision": precision, "input_int16": input_int16}
        cfg.update(quant(outs))
        if isinstance(c.w_scale, np.ndarray):
            cfg["weight_scales"] = c.w_scale
        if isinstance(c.w_q, np.ndarray):
            cfg["weight_bits"] = int(c.w_q.dtype.itemsize * 8)
        if c.output_int32 is not None:
            cfg["output_int32"] = bool(c.output_int32)
        if n.attrs:
            cfg["attrs"] = _view(dict(n.attrs))
        cfg["Layer Statistics"] = layer_stats.get(n.name)
        layers.append({"name": n.name, "op": n.op, "inbound": [layer_of[i] for i in acts if i in layer_of],
                       "config": cfg})
        for o in outs:
            layer_of[o] = n.name
    return layers


def save_program(sima_path: str | os.PathLike, json_path: str | os.PathLike, model_name: str,
                 program: QuantizedProgram) -> None:
    """Write ``program`` as ``sima_path`` (arrays + program document) and then its Netron view
    ``json_path``, each atomically. Everything is encoded before either file is touched."""
    spath, jpath = os.fspath(sima_path), os.fspath(json_path)
    if not isinstance(model_name, str) or not model_name:
        raise ModelFileError(f"cannot write {spath!r}: model_name must be a non-empty string, got {model_name!r}")
    doc, arrays = program_document(spath, model_name, program)
    layers = netron_layers(program)
    write_sima(spath, arrays, doc)
    write_sima_json(jpath, model_name, layers)


# --------------------------------------------------------------------------- decoding

class _Decoder:
    """JSON -> program values; builds only JSON values, arrays and allow-listed mixq types."""

    def __init__(self, path: str, arrays: dict[str, np.ndarray]):
        self.path = path
        self.arrays = arrays

    def fail(self, where: str, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path!r} is not a valid mixq model: {where}: {what}")

    def _array_ref(self, name: Any, where: str) -> np.ndarray:
        if not isinstance(name, str):
            raise self.fail(where, f"array reference {name!r} is not a string")
        if name not in self.arrays:
            raise self.fail(where, f"references array {name!r}, which the file does not contain")
        return self.arrays[name]

    def value(self, j: Any, where: str) -> Any:
        if j is None or isinstance(j, (bool, int, float, str)):
            return j
        if isinstance(j, list):
            return [self.value(x, f"{where}/{i}") for i, x in enumerate(j)]
        if not isinstance(j, dict):  # pragma: no cover - json.loads builds nothing else
            raise self.fail(where, f"unexpected JSON value of type {type(j).__name__}")
        tagged = [k for k in j if k.startswith("__")]
        if not tagged:
            return {k: self.value(x, f"{where}/{k}") for k, x in j.items()}
        if len(j) != 1 or tagged[0] not in _TAGS:
            raise self.fail(where, f"unknown tag {sorted(j)!r} (known tags: {', '.join(_TAGS)})")
        tag, arg = tagged[0], j[tagged[0]]
        if tag == "__array__":
            return self._array_ref(arg, where)
        if tag == "__scalar__":
            arr = self._array_ref(arg, where)
            if arr.ndim != 0:
                raise self.fail(where, f"scalar array {arg!r} has shape {arr.shape}, expected ()")
            return np.array(arr)[()]
        if tag == "__tuple__":
            if not isinstance(arg, list):
                raise self.fail(where, "__tuple__ must hold a list")
            return tuple(self.value(x, f"{where}/{i}") for i, x in enumerate(arg))
        if tag == "__dict__":
            if not isinstance(arg, list) or not all(isinstance(p, list) and len(p) == 2 for p in arg):
                raise self.fail(where, "__dict__ must hold a list of [key, value] pairs")
            out = {}
            for i, (k, x) in enumerate(arg):
                key = self.value(k, f"{where}/key{i}")
                try:
                    hash(key)
                except TypeError:
                    raise self.fail(where, f"dict key {key!r} is not hashable") from None
                out[key] = self.value(x, f"{where}/{key}")
            return out
        if tag == "__bytes__":
            if not isinstance(arg, str):
                raise self.fail(where, "__bytes__ must hold a base64 string")
            try:
                return base64.b64decode(arg.encode("ascii"), validate=True)
            except (ValueError, UnicodeEncodeError) as e:
                raise self.fail(where, f"invalid base64 in __bytes__ ({e})") from None
        if tag == "__str_array__":
            if not isinstance(arg, dict) or set(arg) != {"dtype", "shape", "values"}:
                raise self.fail(where, "__str_array__ needs exactly 'dtype', 'shape' and 'values'")
            dt, shape, values = arg["dtype"], arg["shape"], arg["values"]
            if not isinstance(dt, str) or not _STR_DTYPE_RE.match(dt):
                raise self.fail(where, f"__str_array__ has invalid dtype {dt!r}")
            if not _is_shape(shape) or not isinstance(values, list) or not all(isinstance(s, str) for s in values) \
                    or len(values) != math.prod(shape):
                raise self.fail(where, "__str_array__ shape/values are inconsistent")
            return np.array(values, dtype=np.dtype(dt)).reshape(shape)
        if tag == "__dtype__":
            if not isinstance(arg, str) or arg not in _NUMERIC_DTYPES:
                raise self.fail(where, f"unknown dtype {arg!r}")
            return np.dtype(arg)
        if tag == "__enum__":
            return self.enum(arg, where)
        return self.object(arg, where)

    def enum(self, arg: Any, where: str) -> enum.Enum:
        if not isinstance(arg, str) or arg.count(".") != 1:
            raise self.fail(where, f"__enum__ must be 'Enum.member', got {arg!r}")
        cls_name, member = arg.split(".")
        cls = ENUMS.get(cls_name)
        if cls is None:
            raise self.fail(where, f"unknown enum {cls_name!r} (known enums: {', '.join(ENUMS)})")
        m = cls.__members__.get(member)
        if m is None:
            raise self.fail(where, f"{cls_name} has no member {member!r}")
        return m

    def object(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, dict) or set(arg) != {"class", "fields"} or not isinstance(arg["fields"], dict):
            raise self.fail(where, "__object__ needs exactly 'class' (a name) and 'fields' (an object)")
        cls = known_classes().get(arg["class"]) if isinstance(arg["class"], str) else None
        if cls is None:
            raise self.fail(where, f"unknown class {arg['class']!r} (known classes: {', '.join(known_classes())})")
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [k for k in arg["fields"] if k not in known]
        if unknown:
            raise self.fail(where, f"{cls.__name__} has no field(s) {unknown!r}")
        missing = [k for k, f in known.items() if k not in arg["fields"]
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise self.fail(where, f"{cls.__name__} is missing field(s) {missing!r}")
        kwargs = {k: self.value(x, f"{where}/{k}") for k, x in arg["fields"].items()}
        try:
            return cls(**kwargs)
        except (MixqError, TypeError, ValueError) as e:
            raise self.fail(where, f"invalid {cls.__name__}: {e}") from None


def _is_shape(s: Any) -> bool:
    return isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s)


def _get(d: Any, key: str, types: type | tuple, dec: _Decoder, where: str) -> Any:
    if not isinstance(d, dict):
        raise dec.fail(where, "is not a JSON object")
    if key not in d:
        raise dec.fail(where, f"missing key {key!r}")
    v = d[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        want = "/".join(t.__name__ for t in allowed)
        raise dec.fail(f"{where}.{key}", f"expected {want}, got {type(v).__name__}")
    return v


def _str_list(d: dict, key: str, dec: _Decoder, where: str) -> list[str]:
    v = _get(d, key, list, dec, where)
    if not all(isinstance(x, str) for x in v):
        raise dec.fail(f"{where}.{key}", "expected a list of strings")
    return list(v)


def _decode_graph(gd: Any, dec: _Decoder) -> Graph:
    from core.ops.registry import get_op

    w = "graph"
    g = Graph(_get(gd, "name", str, dec, w))
    g.inputs = _str_list(gd, "inputs", dec, w)
    g.outputs = _str_list(gd, "outputs", dec, w)
    g.opset = _get(gd, "opset", int, dec, w)
    meta = dec.value(_get(gd, "metadata", dict, dec, w), f"{w}.metadata")
    if not isinstance(meta, dict):
        raise dec.fail(f"{w}.metadata", "expected an object")
    g.metadata = meta
    for k, v in _get(gd, "constants", dict, dec, w).items():
        arr = dec.value(v, f"{w}.constants[{k!r}]")
        if not isinstance(arr, np.ndarray):
            raise dec.fail(f"{w}.constants[{k!r}]", f"expected an array, got {type(arr).__name__}")
        g.constants[k] = arr
    for k, td in _get(gd, "tensors", dict, dec, w).items():
        tw = f"{w}.tensors[{k!r}]"
        shape = _get(td, "shape", list, dec, tw)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise dec.fail(tw, f"invalid shape {shape!r}")
        dt = _get(td, "dtype", str, dec, tw)
        if dt not in _NUMERIC_DTYPES and not _STR_DTYPE_RE.match(dt):
            raise dec.fail(tw, f"unknown dtype {dt!r}")
        if "value" not in td:
            raise dec.fail(tw, "missing key 'value'")
        value = None if td["value"] is None else dec.value(td["value"], f"{tw}.value")
        if value is not None and not isinstance(value, np.ndarray):
            raise dec.fail(tw, f"value must be an array or null, got {type(value).__name__}")
        g.tensors[k] = TensorInfo(tuple(shape), np.dtype(dt), value)
    seen: set[str] = set()
    for i, nd in enumerate(_get(gd, "nodes", list, dec, w)):
        nw = f"{w}.nodes[{i}]"
        name = _get(nd, "name", str, dec, nw)
        nw = f"node {name!r}"
        if not name or name in seen:
            raise dec.fail(nw, "node name is empty or duplicated")
        seen.add(name)
        attrs = dec.value(_get(nd, "attrs", dict, dec, nw), f"{nw}.attrs")
        if not isinstance(attrs, dict):
            raise dec.fail(f"{nw}.attrs", "expected an object")
        node = Node(_get(nd, "op", str, dec, nw), _str_list(nd, "inputs", dec, nw), _str_list(nd, "outputs", dec, nw),
                    attrs, name=name, source_name=_get(nd, "source_name", str, dec, nw),
                    segment=_get(nd, "segment", str, dec, nw))
        try:
            get_op(node.op, node)
        except MixqError:
            raise dec.fail(nw, f"unknown op {node.op!r} (not in mixq's operator registry)") from None
        g.nodes.append(node)
    # consistency: every input produced before use, outputs exist, inputs have shape information
    available = set(g.inputs) | set(g.constants) | {""}
    for inp in g.inputs:
        if inp not in g.tensors:
            raise dec.fail(f"graph input {inp!r}", "has no tensor information")
    for n in g.nodes:
        for t in n.inputs:
            if t not in available:
                raise dec.fail(f"node {n.name!r}", f"reads tensor {t!r}, which no graph input, constant or "
                                                   "earlier node provides")
        available.update(n.outputs)
    for o in g.outputs:
        if o not in available:
            raise dec.fail(f"graph output {o!r}", "is not produced by any node")
    return g


def _decode_program(path: str, doc: dict, arrays: dict[str, np.ndarray]) -> tuple[str, QuantizedProgram]:
    dec = _Decoder(path, arrays)
    model_name = _get(doc, "model_name", str, dec, "document")
    g = _decode_graph(_get(doc, "graph", dict, dec, "document"), dec)
    node_names = [n.name for n in g.nodes]
    name_set = set(node_names)
    known_tensors = set(g.inputs) | set(g.constants) | {o for n in g.nodes for o in n.outputs if o}

    tensors: dict[str, TensorQuant] = {}
    for k, v in _get(doc, "tensors", dict, dec, "document").items():
        tw = f"tensors[{k!r}]"
        q = dec.value(v, tw)
        if not isinstance(q, TensorQuant):
            raise dec.fail(tw, f"expected a TensorQuant object, got {type(q).__name__}")
        if k not in known_tensors:
            raise dec.fail(tw, "names a tensor the graph does not have")
        if isinstance(q.scale, (bool, np.bool_)) or not isinstance(q.scale, (float, int, np.floating)) \
                or not math.isfinite(float(q.scale)) or float(q.scale) <= 0:
            raise dec.fail(tw, f"scale must be a positive finite number, got {q.scale!r}")
        if isinstance(q.zero_point, (bool, np.bool_)) or not isinstance(q.zero_point, (int, np.integer)):
            raise dec.fail(tw, f"zero_point must be an integer, got {q.zero_point!r}")
        if q.bits not in (8, 16, 32) or isinstance(q.bits, bool):
            raise dec.fail(tw, f"bits must be 8, 16 or 32, got {q.bits!r}")
        tensors[k] = q

    kinds = _get(doc, "kinds", dict, dec, "document")
    if set(kinds) != name_set:
        missing = sorted(name_set - set(kinds))[:5]
        extra = sorted(set(kinds) - name_set)[:5]
        raise dec.fail("kinds", f"must name every node exactly once (missing {missing}, unknown {extra})")
    for k, v in kinds.items():
        if v not in KINDS:
            raise dec.fail(f"kinds[{k!r}]", f"unknown kind {v!r} (known: {', '.join(KINDS)})")

    constants: dict[str, dict[str, Any]] = {}
    for k, v in _get(doc, "constants", dict, dec, "document").items():
        cw = f"constants[{k!r}]"
        if k not in name_set:
            raise dec.fail(cw, "names a node the graph does not have")
        c = dec.value(v, cw)
        if not isinstance(c, NodeQuant):
            raise dec.fail(cw, f"expected a NodeQuant object, got {type(c).__name__}")
        constants[k] = c
    for n in g.nodes:
        kind = kinds[n.name]
        if kind == "int" and n.name not in constants:
            raise dec.fail(f"node {n.name!r}", "runs in integers but has no constants entry")
        if kind != "apu":
            for t in [i for i in n.inputs if i and i not in g.constants] + [o for o in n.outputs if o]:
                if t not in tensors:
                    raise dec.fail(f"node {n.name!r}", f"tensor {t!r} has no quantization parameters")

    mode = dec.value(_get(doc, "requantization_mode", dict, dec, "document"), "requantization_mode")
    if not isinstance(mode, RequantizationMode):
        raise dec.fail("requantization_mode", f"expected a RequantizationMode, got {type(mode).__name__}")
    params = dec.value(_get(doc, "params", dict, dec, "document"), "params")
    if not isinstance(params, QuantizationParams):
        raise dec.fail("params", f"expected a QuantizationParams object, got {type(params).__name__}")
    meta = dec.value(_get(doc, "meta", dict, dec, "document"), "meta")
    if not isinstance(meta, dict):
        raise dec.fail("meta", "expected an object")
    return model_name, QuantizedProgram(g, tensors, constants, dict(kinds), mode, params, meta)


def load_program(sima_path: str | os.PathLike) -> tuple[str, QuantizedProgram]:
    """Read a ``.sima`` written by :func:`save_program`; return ``(model_name, program)``.
    Raises :class:`ModelFileError` naming the file for anything missing, corrupt, foreign,
    newer or inconsistent."""
    spath = os.fspath(sima_path)
    try:
        arrays, doc = read_sima(spath, mmap=False, verify=True)
    except RecursionError as e:  # a crafted, absurdly nested JSON header
        raise ModelFileError(f"{spath!r} is not a valid .sima file: header is nested too deeply") from e
    fmt = doc.get("program_format")
    if not isinstance(fmt, dict) or fmt.get("name") != PROGRAM_FORMAT_NAME:
        raise ModelFileError(f"{spath!r} is not a saved mixq model: its metadata has no "
                             f"'program_format' {PROGRAM_FORMAT_NAME!r}")
    version = fmt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{spath!r} is not a valid mixq model: invalid program_format version {version!r}")
    if version > PROGRAM_FORMAT_VERSION:
        raise ModelFileError(
            f"{spath!r} holds a mixq program of format version {version}, but this mixq reads only up to "
            f"version {PROGRAM_FORMAT_VERSION}; upgrade mixq to load it")
    while version < PROGRAM_FORMAT_VERSION:
        if version not in _UPGRADERS:
            raise ModelFileError(f"{spath!r}: no upgrade from program_format version {version}")
        doc = _UPGRADERS[version](doc)
        version += 1
    try:
        return _decode_program(spath, doc, arrays)
    except ModelFileError:
        raise
    except Exception as e:  # a safety net: never a bare KeyError/TypeError from a crafted file
        raise ModelFileError(f"{spath!r} is not a valid mixq model: {type(e).__name__}: {e}") from e
