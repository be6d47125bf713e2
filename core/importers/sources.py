"""Where a model comes from: ``ImporterParams``, the base of every importer's parameters.

Importers register themselves: each importer module (``core/importers/<format>.py``) subclasses
``ImporterParams`` with its ``format``, the file names it reads and ``import_graph``; subclassing
adds it to the table ``load_model`` and :func:`source_for_path` dispatch on. Its ``*_source``
constructor lives next to it and is re-exported flat from ``core``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from core.errors import ModelLoadError
from core.types import ScalarType

if TYPE_CHECKING:  # pragma: no cover
    from core.ir.graph import Graph

__all__ = ["ImporterParams", "importer_formats", "source_for_path", "normalize_shapes", "normalize_dtypes"]

ShapeDict = Mapping[str, Sequence[int]]
DtypeDict = Mapping[str, Any]

_IMPORTERS: dict[str, type[ImporterParams]] = {}       # format -> its ImporterParams subclass


@dataclass(frozen=True)
class ImporterParams:
    """What ``load_model`` needs to import a model (built by ``onnx_source``, ``tflite_source``,
    ``tensorflow_source``; one subclass per format).

    model_path    the model file (or SavedModel directory)
    shape_dict    input name -> shape; required for inputs with dynamic dimensions other than
                  dim 0 (a symbolic dim 0 is the batch and defaults to 1)
    dtype_dict    input name -> ScalarType (or numpy dtype); overrides the model's declared type
    output_names  graph outputs to keep (default: the model's own outputs)
    input_values  input name -> array: freeze these graph inputs as constants (e.g. a shape input)
    """

    model_path: str
    shape_dict: dict[str, tuple[int, ...]] | None = None
    dtype_dict: dict[str, np.dtype] | None = None
    output_names: tuple[str, ...] | None = None
    input_values: dict[str, np.ndarray] | None = field(default=None, compare=False)

    format: ClassVar[str] = ""                     # "onnx", "tflite", ...: set by each importer
    suffixes: ClassVar[tuple[str, ...]] = ()       # file name endings it reads (lowercase)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.format:
            _IMPORTERS[cls.format] = cls

    @classmethod
    def reads(cls, path: str) -> bool:
        """Whether this importer reads ``path`` (by its name; directories: see subclasses)."""
        return os.path.isfile(path) and path.lower().endswith(cls.suffixes)

    @classmethod
    def from_path(cls, path: str) -> ImporterParams:
        """Default parameters for a model file."""
        return cls(model_path=os.fspath(path))

    def import_graph(self) -> Graph:
        """The model as mixq's IR (before graph passes)."""
        raise ModelLoadError(f"no importer for {type(self).__name__} ({self.model_path}); "
                             f"model formats: {', '.join(importer_formats())}")


def importer_formats() -> list[str]:
    """The registered model formats."""
    return sorted(_IMPORTERS)


def source_for_path(path: str | os.PathLike) -> ImporterParams:
    """Default importer parameters for a model file, chosen by the registered importers' file
    names (``.onnx``, ``.tflite``, ``.keras``/``.h5``/``.pb``, a SavedModel directory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}")
    for params_type in _IMPORTERS.values():
        if params_type.reads(path):
            return params_type.from_path(path)
    endings = sorted({s for t in _IMPORTERS.values() for s in t.suffixes})
    raise ModelLoadError(f"{path}: no importer reads this file (known endings: {', '.join(endings)}; "
                         f"or a SavedModel directory)")


def normalize_shapes(shape_dict: ShapeDict | None) -> dict[str, tuple[int, ...]] | None:
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


def normalize_dtypes(dtype_dict: DtypeDict | None) -> dict[str, np.dtype] | None:
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
