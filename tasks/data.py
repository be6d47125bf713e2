"""JSON specs -> what ``core`` takes: data specs -> samples, config specs -> QuantizationParams.

Tasks and flows exchange only JSON-friendly values (paths, names, numbers, dicts); these
helpers turn them into arrays and ``core`` objects inside a task.

Data specs::

    {"source": "zoo", "name": "natural_images", "split": "evaluation", "count": 100}
    {"source": "zoo", "name": "imagenet_samples"}
    {"source": "zoo", "name": "digits", "split": "evaluation", "count": 500}
    {"source": "zoo", "name": "digits", "split": "evaluation", "count": 500, "labels": false}
    {"source": "npz", "path": "data.npz", "input": "<array key>", "labels": "<key or null>"}

``"labels": false`` drops a zoo set's labels: scores are then agreement with FP32's top-1.

Config specs (every key optional)::

    {"preset": "default" | "int16", "calibration": "mse",
     "weights": {"per_channel": true, "bits": 8, "asymmetric": false},
     "activations": {"asymmetric": true, "bits": 8, "per_channel": false},
     "requantization": "sima" | "tflite", "int16_nodes": ["MLA_0/conv2d_add_relu_0", ...],
     "bias_correction": false, "channel_equalization": false}
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.formats.atomic import sha256_file

__all__ = ["Samples", "load_samples", "data_digest", "spec_json", "build_config", "config_spec_of",
           "resolve_model", "sha256_file", "model_label", "scheme_from_spec"]

ZOO_DATA = ("natural_images", "imagenet_samples", "digits")
CONFIG_KEYS = {"preset", "calibration", "weights", "activations", "requantization", "int16_nodes",
               "bias_correction", "channel_equalization"}


def spec_json(spec: Any) -> str:
    """A canonical JSON text of a spec (sorted keys): equal specs give equal text."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)


# ---------------------------------------------------------------- models

def resolve_model(model: str) -> str:
    """A zoo model name (built and cached by ``core.zoo``) or a model file path (any format a
    registered importer reads: ONNX, TFLite, TensorFlow) -> the file path."""
    from core import zoo
    from core.errors import ModelLoadError

    if not isinstance(model, str) or not model:
        raise ModelLoadError(f"model must be a zoo model name or a file path, got {model!r}")
    if os.path.exists(model):
        return os.path.abspath(model)
    if model in zoo.list_models():
        return str(zoo.build(model))
    raise ModelLoadError(f"{model!r} is neither a model file nor a zoo model ({', '.join(zoo.list_models())})")


def model_label(model: str) -> str:
    """A short name for a model (zoo name or file stem), used for experiment and file names."""
    base = os.path.basename(os.path.normpath(str(model)))
    for ext in (".onnx", ".tflite", ".keras", ".h5", ".hdf5", ".pb", ".sima"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in base) or "model"


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class Samples:
    """Model inputs of one data spec: ``inputs`` (first axis = sample) and ``labels`` or None."""

    inputs: np.ndarray
    labels: np.ndarray | None
    spec: str                     # canonical spec text

    def __len__(self) -> int:
        return len(self.inputs)

    def feeds(self, input_name: str) -> list[dict[str, np.ndarray]]:
        """One ``{input name: array of batch 1}`` per sample (what ``LoadedNet.calibrate`` takes)."""
        return [{input_name: self.inputs[i:i + 1]} for i in range(len(self.inputs))]

    def digest(self) -> str:
        h = hashlib.sha256()
        x = np.ascontiguousarray(self.inputs)
        h.update(f"{x.dtype.str}|{x.shape}|".encode())
        h.update(x.tobytes())
        if self.labels is not None:
            y = np.ascontiguousarray(self.labels)
            h.update(f"labels|{y.dtype.str}|{y.shape}|".encode())
            h.update(y.tobytes())
        return h.hexdigest()


def _check_spec(spec: Any) -> dict:
    from core.errors import InputError

    if not isinstance(spec, dict):
        raise InputError(f"a data spec must be a dict such as {{'source': 'zoo', 'name': 'digits'}}, got {spec!r}")
    source = spec.get("source", "zoo")
    if source == "zoo":
        if spec.get("name") not in ZOO_DATA:
            raise InputError(f"unknown zoo data set {spec.get('name')!r}; known: {', '.join(ZOO_DATA)}")
    elif source == "npz":
        if not spec.get("path"):
            raise InputError(f"an npz data spec needs 'path': {spec!r}")
    else:
        raise InputError(f"data spec source must be 'zoo' or 'npz', got {source!r}")
    return spec


def load_samples(spec: dict) -> Samples:
    """The samples a data spec names (memoized per process by the spec's canonical text; npz
    files also by their modification time)."""
    spec = _check_spec(spec)
    key = spec_json(spec)
    stamp = None
    if spec.get("source") == "npz":
        st = os.stat(spec["path"])
        stamp = (os.path.abspath(spec["path"]), st.st_mtime_ns, st.st_size)
    return _load(key, stamp)


@functools.lru_cache(maxsize=8)
def _load(key: str, stamp) -> Samples:
    from core import zoo
    from core.errors import InputError

    spec = json.loads(key)
    count = spec.get("count")
    if spec.get("source", "zoo") == "zoo":
        name = spec["name"]
        if name == "natural_images":
            images = zoo.datasets.natural_images(spec.get("split", "calibration"), int(count or 64))
        elif name == "imagenet_samples":
            images = zoo.datasets.imagenet_samples()
        else:
            images = zoo.datasets.digits(spec.get("split"))
        x, y = images.inputs, images.labels
        if spec.get("labels") is False:          # score by agreement with FP32 instead
            y = None
    else:
        try:
            with np.load(spec["path"], allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001  (any unreadable file)
            raise InputError(f"cannot read {spec['path']!r} as an .npz file: {e}") from None
        name = spec.get("input") or (sorted(arrays)[0] if len(arrays) == 1 else None)
        if name not in arrays:
            raise InputError(f"{spec['path']}: no input array {spec.get('input')!r}; it holds {sorted(arrays)}")
        x = arrays[name]
        y = None
        if spec.get("labels"):
            if spec["labels"] not in arrays:
                raise InputError(f"{spec['path']}: no labels array {spec['labels']!r}; it holds {sorted(arrays)}")
            y = arrays[spec["labels"]]
    if count is not None and int(count) < len(x):
        idx = np.linspace(0, len(x) - 1, int(count)).round().astype(int)     # spread over the classes
        x = x[idx]
        y = None if y is None else y[idx]
    x = np.ascontiguousarray(x)
    x.setflags(write=False)
    return Samples(x, None if y is None else np.asarray(y), key)


def data_digest(spec: dict) -> str:
    """sha256 of the data a spec names (its arrays, not only its text)."""
    return load_samples(spec).digest()


# ---------------------------------------------------------------- configs

def scheme_from_spec(base, given: Any, what: str):
    from core import quantization_scheme
    from core.errors import QuantizationConfigError

    if given is None:
        return base
    if not isinstance(given, dict):
        raise QuantizationConfigError(f"config {what!r} must be a dict like {{'per_channel': true, 'bits': 8}}, "
                                      f"got {given!r}")
    unknown = set(given) - {"asymmetric", "per_channel", "bits"}
    if unknown:
        raise QuantizationConfigError(f"config {what!r}: unknown key(s) {sorted(unknown)}")
    return quantization_scheme(asymmetric=bool(given.get("asymmetric", base.asymmetric)),
                               per_channel=bool(given.get("per_channel", base.per_channel)),
                               bits=int(given.get("bits", base.bits)))


def build_config(spec: dict | None):
    """A config spec (module docstring) -> ``core.QuantizationParams``."""
    from core import (
        CalibrationMethod,
        QuantizationPrecision,
        RequantizationMode,
        default_quantization,
        int16_quantization,
    )
    from core.errors import QuantizationConfigError

    spec = dict(spec or {})
    unknown = set(spec) - CONFIG_KEYS
    if unknown:
        raise QuantizationConfigError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    preset = spec.get("preset", "default")
    if preset not in ("default", "int16"):
        raise QuantizationConfigError(f"config preset must be 'default' or 'int16', got {preset!r}")
    cfg = int16_quantization if preset == "int16" else default_quantization
    if spec.get("calibration"):
        cfg = cfg.with_calibration(CalibrationMethod.from_str(spec["calibration"]))
    cfg = cfg.with_weight_quantization(scheme_from_spec(cfg.weight_quantization_scheme, spec.get("weights"), "weights"))
    cfg = cfg.with_activation_quantization(
        scheme_from_spec(cfg.activation_quantization_scheme, spec.get("activations"), "activations"))
    if spec.get("requantization"):
        cfg = cfg.with_requantization_mode(RequantizationMode.from_str(spec["requantization"]))
    if spec.get("bias_correction"):
        cfg = cfg.with_bias_correction(True)
    if spec.get("channel_equalization"):
        cfg = cfg.with_channel_equalization(True)
    nodes = spec.get("int16_nodes") or []
    if isinstance(nodes, str):
        nodes = [nodes]
    if nodes:
        cfg = cfg.with_custom_quantization_configs(
            {n: {"quantization_precision": QuantizationPrecision.INT_16} for n in nodes})
    return cfg


def config_spec_of(cfg) -> dict:
    """A ``QuantizationParams`` -> its full config spec (explicit, JSON-friendly)."""
    from core import QuantizationPrecision

    w, a = cfg.weight_quantization_scheme, cfg.activation_quantization_scheme
    nodes = [n for n, c in (cfg.custom_quantization_configs or {}).items()
             if c.get("quantization_precision") == QuantizationPrecision.INT_16]
    return {
        "preset": "default",
        "calibration": cfg.calibration_method.name,
        "weights": {"asymmetric": bool(w.asymmetric), "per_channel": bool(w.per_channel), "bits": int(w.bits)},
        "activations": {"asymmetric": bool(a.asymmetric), "per_channel": bool(a.per_channel), "bits": int(a.bits)},
        "requantization": cfg.requantization_mode.name,
        "bias_correction": bool(cfg.bias_correction),
        "channel_equalization": bool(cfg.channel_equalization),
        "int16_nodes": nodes,
    }
