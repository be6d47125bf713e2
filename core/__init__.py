"""mixq — an open post-training quantization workbench.

The public API is flat: every public name imports from ``core``.
``import core`` stays light (numpy only); onnx/TensorFlow load when a model does.
"""
from core import zoo  # noqa: E402  (light: numpy only until a model is built)
from core.data import DataGenerator, convert_data_generator_to_iterable, length_hinted
from core.errors import (
    AccuracyTargetError,
    CalibrationError,
    CheckpointError,
    ExecutionError,
    InputError,
    MixqError,
    ModelFileError,
    ModelLoadError,
    QuantizationCollapseWarning,
    QuantizationConfigError,
    ShapeInferenceError,
    UnsupportedOperatorError,
    ZooError,
)
from core.importers.onnx import OnnxParams, onnx_source
from core.importers.sources import ImporterParams, source_for_path
from core.importers.tensorflow import TensorFlowParams, tensorflow_source
from core.importers.tflite import TFLiteParams, tflite_source
from core.loaded_net import LoadedNet, NodeInfo, load_model
from core.model import Model
from core.quantization.calibration import CalibrationStatistics
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
    default_quantization,
    int16_quantization,
    quantization_scheme,
)
from core.types import ScalarType
from core.version import __version__  # noqa: F401  (core.__version__)

__all__ = [
    "AccuracyTargetError",
    "AdaRoundMethod",
    "RangeSearchMethod",
    "CalibrationError",
    "CalibrationMethod",
    "CalibrationStatistics",
    "DataGenerator",
    "CheckpointError",
    "ExecutionError",
    "HistogramEntropyMethod",
    "HistogramMSEMethod",
    "HistogramPercentileMethod",
    "ImporterParams",
    "InputError",
    "LoadedNet",
    "MinMaxMethod",
    "MixqError",
    "Model",
    "ModelFileError",
    "ModelLoadError",
    "MovingAverageMinMaxMethod",
    "NodeInfo",
    "OnnxParams",
    "QuantizationCollapseWarning",
    "QuantizationConfigError",
    "QuantizationFlavor",
    "QuantizationParams",
    "QuantizationPrecision",
    "QuantizationScheme",
    "RequantizationMode",
    "ScalarType",
    "ShapeInferenceError",
    "TFLiteParams",
    "TensorFlowParams",
    "UnsupportedOperatorError",
    "ZooError",
    "default_quantization",
    "int16_quantization",
    "convert_data_generator_to_iterable",
    "length_hinted",
    "load_model",
    "onnx_source",
    "quantization_scheme",
    "source_for_path",
    "tensorflow_source",
    "tflite_source",
    "zoo",
]
