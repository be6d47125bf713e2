"""mixq — an open post-training quantization workbench.

The public API is flat: every public name imports from ``core``.
``import core`` stays light (numpy only); onnx/TensorFlow load when a model does.
"""
from core.errors import (
    CheckpointError,
    ExecutionError,
    InputError,
    MixqError,
    ModelLoadError,
    ShapeInferenceError,
    UnsupportedOperatorError,
    ZooError,
)
from core.importers.sources import ImporterParams, onnx_source
from core.loaded_net import LoadedNet, NodeInfo, load_model
from core.types import ScalarType
from core import zoo  # noqa: E402  (light: numpy only until a model is built)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ExecutionError",
    "ImporterParams",
    "InputError",
    "LoadedNet",
    "MixqError",
    "ModelLoadError",
    "NodeInfo",
    "ScalarType",
    "ShapeInferenceError",
    "UnsupportedOperatorError",
    "ZooError",
    "load_model",
    "onnx_source",
    "zoo",
]
