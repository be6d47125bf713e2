"""The ``.sima.json`` companion file: a Netron-viewable view of a quantized model.

The file is Keras model JSON ("functional" form), which Netron's Keras reader opens
(it matches any JSON object with ``class_name`` and ``config``)::

    {
      "class_name": "Functional",
      "config": {
        "name": "<model name>",
        "layers": [
          {"class_name": "<op>",              # shown by Netron as the node type
           "name": "<layer name>",
           "config": {"name": "<layer name>", # Netron takes the node name from config.name
                      "segment": ..., "precision": "int8", "scales": [...],
                      "zero_points": [...], "input_int16": false,
                      "Layer Statistics": {"metric": "mae", "error_value": 3.9,
                                           "__decode_key__": "LayerStats"} | null,
                      ...},                   # every other key is shown as an attribute
           "inbound_nodes": [[["<producer>", 0, 0, {}], ...]]   # [] for a graph input
          }, ...],
        "input_layers": [["<layer>", 0, 0], ...],
        "output_layers": [["<layer>", 0, 0], ...]
      },
      "keras_version": "mixq-<version>",
      "backend": "mixq",
      "mixq_format": {"name": "mixq.sima.json", "version": 1}
    }

Non-finite floats (NaN, inf), which strict JSON (and so Netron) cannot parse, are written as
the strings ``"nan"``, ``"inf"``, ``"-inf"``; numpy scalars and arrays become JSON numbers
and lists.  Writes are atomic (see :func:`core.formats.sima.atomic_write`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from core.errors import ModelFileError
from core.formats.sima import atomic_write

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "KERAS_VERSION", "write_sima_json", "read_sima_json",
           "update_layer_statistics", "layer_statistics"]

FORMAT_NAME = "mixq.sima.json"
FORMAT_VERSION = 1
KERAS_VERSION = "mixq-0.1.0"
_CONTAINER_CLASSES = {"Model", "Functional", "Sequential"}


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (strict: no NaN/inf literals)."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelFileError(f"{where}: key {k!r} is not a string")
            out[k] = _jsonable(v, where)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    raise ModelFileError(f"{where}: value of type {type(value).__name__} cannot be written as JSON")


def layer_statistics(metric: str, error_value: float) -> dict:
    """The ``"Layer Statistics"`` object of one layer."""
    if not isinstance(metric, str) or not metric:
        raise ModelFileError(f"Layer Statistics metric must be a non-empty string, got {metric!r}")
    try:
        value = float(error_value)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"Layer Statistics error_value must be a number, got {error_value!r}") from e
    return {"metric": metric, "error_value": _jsonable(value, "Layer Statistics"), "__decode_key__": "LayerStats"}


def _normalize_stats(stats: Any, where: str) -> dict | None:
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        if "metric" not in stats or "error_value" not in stats:
            raise ModelFileError(f"{where}: 'Layer Statistics' needs 'metric' and 'error_value'")
        return layer_statistics(stats["metric"], stats["error_value"])
    if isinstance(stats, (tuple, list)) and len(stats) == 2:
        return layer_statistics(stats[0], stats[1])
    raise ModelFileError(f"{where}: 'Layer Statistics' must be None, (metric, value) or a dict, got {stats!r}")


def _build(path: str, model_name: str, layers: Iterable[Mapping]) -> dict:
    where = f"cannot write {path!r}"
    if not isinstance(model_name, str) or not model_name:
        raise ModelFileError(f"{where}: model_name must be a non-empty string")
    layers = list(layers)
    names: list[str] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, Mapping):
            raise ModelFileError(f"{where}: layer #{i} is not a dict")
        name = layer.get("name")
        if not isinstance(name, str) or not name:
            raise ModelFileError(f"{where}: layer #{i} has no name")
        if name in names:
            raise ModelFileError(f"{where}: duplicate layer name {name!r}")
        names.append(name)
    known = set(names)
    consumed: set[str] = set()
    out_layers = []
    inputs = []
    for layer in layers:
        name = layer["name"]
        lw = f"{where}: layer {name!r}"
        op = layer.get("op")
        if not isinstance(op, str) or not op:
            raise ModelFileError(f"{lw} has no op")
        if op in _CONTAINER_CLASSES:
            raise ModelFileError(f"{lw} has op {op!r}, which Netron would read as a nested model")
        inbound = list(layer.get("inbound", []) or [])
        for src in inbound:
            if src not in known:
                raise ModelFileError(f"{lw} lists unknown inbound layer {src!r}")
            if src == name:
                raise ModelFileError(f"{lw} lists itself as inbound")
        consumed.update(inbound)
        config = layer.get("config") or {}
        if not isinstance(config, Mapping):
            raise ModelFileError(f"{lw}: config must be a dict")
        cfg = {"name": name}
        cfg.update(_jsonable({k: v for k, v in config.items() if k != "name"}, lw))
        cfg["input_int16"] = bool(config.get("input_int16", False))
        cfg["Layer Statistics"] = _normalize_stats(config.get("Layer Statistics"), lw)
        out_layers.append({
            "class_name": op,
            "name": name,
            "config": cfg,
            "inbound_nodes": [[[src, 0, 0, {}] for src in inbound]] if inbound else [],
        })
        if not inbound:
            inputs.append(name)
    outputs = [n for n in names if n not in consumed]
    return {
        "class_name": "Functional",
        "config": {
            "name": model_name,
            "layers": out_layers,
            "input_layers": [[n, 0, 0] for n in inputs],
            "output_layers": [[n, 0, 0] for n in outputs],
        },
        "keras_version": KERAS_VERSION,
        "backend": "mixq",
        "mixq_format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
    }


def _dump(path: str, doc: dict) -> None:
    data = json.dumps(doc, indent=2, allow_nan=False).encode("utf-8") + b"\n"
    atomic_write(path, lambda f: f.write(data))


def write_sima_json(path: str | os.PathLike, model_name: str, layers: list[dict]) -> None:
    """Write the Netron-viewable ``.sima.json`` of a quantized model atomically.

    Each layer dict has ``name`` (unique), ``op`` (shown as the node type), ``inbound``
    (names of the layers feeding it, in input order; empty for a graph input) and
    ``config`` (a dict: segment, precision, scales, zero points, ``"input_int16"`` (bool,
    default False), ``"Layer Statistics"`` (None, ``(metric, value)`` or
    ``{"metric", "error_value"}``), anything else JSON-serializable).  Layers nobody
    consumes are the model outputs.  Raises :class:`ModelFileError` on bad input or I/O.
    """
    spath = os.fspath(path)
    _dump(spath, _build(spath, model_name, layers))


def read_sima_json(path: str | os.PathLike) -> dict:
    """Load and structurally check a ``.sima.json`` file; return the JSON document."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModelFileError(f"cannot read {spath!r}: {e}") from e
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{spath!r} is not a valid .sima.json file: not UTF-8 JSON ({e})") from e
    bad = f"{spath!r} is not a valid .sima.json file"
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict) or "class_name" not in doc:
        raise ModelFileError(f"{bad}: missing 'class_name'/'config'")
    fmt = doc.get("mixq_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("version"), int) and fmt["version"] > FORMAT_VERSION:
        raise ModelFileError(f"{spath!r} is a .sima.json file of format version {fmt['version']}, but this "
                             f"mixq reads only up to version {FORMAT_VERSION}; upgrade mixq to load it")
    layers = doc["config"].get("layers")
    if not isinstance(layers, list) or not all(
            isinstance(l, dict) and isinstance(l.get("name"), str) and isinstance(l.get("config"), dict)
            for l in layers):
        raise ModelFileError(f"{bad}: 'config.layers' must be a list of layers with a name and a config")
    return doc


def update_layer_statistics(path: str | os.PathLike, stats: Mapping[str, tuple[str, float]]) -> None:
    """Set ``"Layer Statistics"`` of the named layers (``name -> (metric, error_value)``,
    or ``None`` to clear) and rewrite ``path`` atomically.  An unknown layer name raises
    :class:`ModelFileError` before anything is written."""
    spath = os.fspath(path)
    doc = read_sima_json(spath)
    by_name = {l["name"]: l for l in doc["config"]["layers"]}
    unknown = [n for n in stats if n not in by_name]
    if unknown:
        raise ModelFileError(f"cannot update {spath!r}: no layer named {', '.join(map(repr, unknown))}")
    for name, value in stats.items():
        by_name[name]["config"]["Layer Statistics"] = _normalize_stats(
            value, f"cannot update {spath!r}: layer {name!r}"
        )
    _dump(spath, doc)
