"""Where a model comes from: ``ImporterParams`` and the ``*_source`` constructors."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ModelLoadError
from core.types import ScalarType

ShapeDict = Mapping[str, Sequence[int]]
DtypeDict = Mapping[str, Any]


@dataclass(frozen=True)
class ImporterParams:
    """What ``load_model`` needs to import a model.

    format        "onnx" (later: "tflite", "tensorflow")
    model_path    the model file
    shape_dict    input name -> shape; required for inputs with dynamic dimensions other than
                  dim 0 (a symbolic dim 0 is the batch and defaults to 1)
    dtype_dict    input name -> ScalarType (or numpy dtype); overrides the model's declared type
    output_names  graph outputs to keep (default: the model's own outputs)
    input_values  input name -> array: freeze these graph inputs as constants (e.g. a shape input)
    """

    format: str
    model_path: str
    shape_dict: dict[str, tuple[int, ...]] | None = None
    dtype_dict: dict[str, np.dtype] | None = None
    output_names: tuple[str, ...] | None = None
    input_values: dict[str, np.ndarray] | None = field(default=None, compare=False)


def _norm_shapes(shape_dict: ShapeDict | None) -> dict[str, tuple[int, ...]] | None:
    if shape_dict is None:
        return None
    if not isinstance(shape_dict, Mapping):
        raise ModelLoadError(f"shape_dict must be a dict of input name -> shape, got {type(shape_dict).__name__}")
    out = {}
    for name, shape in shape_dict.items():
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise ModelLoadError(f"shape_dict[{name!r}] must be a sequence of ints, got {shape!r}") from None
        if any(d <= 0 for d in dims):
            raise ModelLoadError(f"shape_dict[{name!r}] = {dims}: every dimension must be positive")
        out[name] = dims
    return out


def _norm_dtypes(dtype_dict: DtypeDict | None) -> dict[str, np.dtype] | None:
    if dtype_dict is None:
        return None
    if not isinstance(dtype_dict, Mapping):
        raise ModelLoadError(f"dtype_dict must be a dict of input name -> ScalarType, got {type(dtype_dict).__name__}")
    out = {}
    for name, t in dtype_dict.items():
        try:
            out[name] = t.numpy_dtype if isinstance(t, ScalarType) else np.dtype(t)
        except TypeError:
            raise ModelLoadError(f"dtype_dict[{name!r}] = {t!r} is not a ScalarType or numpy dtype") from None
    return out


def onnx_source(
    model_path: str | os.PathLike,
    shape_dict: ShapeDict | None = None,
    dtype_dict: DtypeDict | None = None,
    *,
    output_names: Sequence[str] | None = None,
    input_values: Mapping[str, np.ndarray] | None = None,
) -> ImporterParams:
    """Parameters to import an ONNX model (opset 11 to 20; newer opsets where op semantics are known)."""
    return ImporterParams(
        format="onnx",
        model_path=os.fspath(model_path),
        shape_dict=_norm_shapes(shape_dict),
        dtype_dict=_norm_dtypes(dtype_dict),
        output_names=tuple(output_names) if output_names else None,
        input_values={k: np.asarray(v) for k, v in input_values.items()} if input_values else None,
    )


def tflite_source(
    model_path: str | os.PathLike,
    shape_dict: ShapeDict | None = None,
    dtype_dict: DtypeDict | None = None,
) -> ImporterParams:
    """Parameters to import a TFLite flatbuffer (float or pre-quantized int8 / 16x8).

    Inputs and outputs keep the model's layout (NHWC); ``shape_dict``/``dtype_dict`` keys are
    the model's input tensor names (or its signature's input names).
    """
    return ImporterParams(
        format="tflite",
        model_path=os.fspath(model_path),
        shape_dict=_norm_shapes(shape_dict),
        dtype_dict=_norm_dtypes(dtype_dict),
    )


def tensorflow_source(
    model_path: str | os.PathLike,
    shape_dict: ShapeDict | None = None,
    output_names: Sequence[str] | None = None,
) -> ImporterParams:
    """Parameters to import a TensorFlow model: a SavedModel directory, a Keras ``.keras``/``.h5``
    file or a frozen GraphDef ``.pb`` (which needs ``shape_dict`` and ``output_names``).

    The model is converted with TensorFlow's own TFLite converter (float) and imported as TFLite.
    """
    if isinstance(output_names, str):
        output_names = [output_names]
    return ImporterParams(
        format="tensorflow",
        model_path=os.fspath(model_path),
        shape_dict=_norm_shapes(shape_dict),
        output_names=tuple(output_names) if output_names else None,
    )
