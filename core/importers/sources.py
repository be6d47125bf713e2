"""Where a model comes from: ``ImporterParams`` and the ``*_source`` constructors."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

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
    shape_dict    input name -> shape; required for inputs with dynamic dimensions
    dtype_dict    input name -> ScalarType (or numpy dtype); overrides the model's declared type
    output_names  graph outputs to keep (default: the model's own outputs)
    input_values  input name -> array: freeze these graph inputs as constants (e.g. a shape input)
    """

    format: str
    model_path: str
    shape_dict: Optional[dict[str, tuple[int, ...]]] = None
    dtype_dict: Optional[dict[str, np.dtype]] = None
    output_names: Optional[tuple[str, ...]] = None
    input_values: Optional[dict[str, np.ndarray]] = field(default=None, compare=False)


def _norm_shapes(shape_dict: Optional[ShapeDict]) -> Optional[dict[str, tuple[int, ...]]]:
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


def _norm_dtypes(dtype_dict: Optional[DtypeDict]) -> Optional[dict[str, np.dtype]]:
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
    shape_dict: Optional[ShapeDict] = None,
    dtype_dict: Optional[DtypeDict] = None,
    *,
    output_names: Optional[Sequence[str]] = None,
    input_values: Optional[Mapping[str, np.ndarray]] = None,
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
    shape_dict: Optional[ShapeDict] = None,
    dtype_dict: Optional[DtypeDict] = None,
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
    shape_dict: Optional[ShapeDict] = None,
    output_names: Optional[Sequence[str]] = None,
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
