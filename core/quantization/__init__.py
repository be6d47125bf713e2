"""Quantization configuration and integer requantization arithmetic.

``params``: the configuration API (schemes, calibration methods, modes, presets).
``requantize``: bit-exact integer rescaling (TFLite's fixed point and mixq's "sima" arithmetic).
"""
from core.errors import QuantizationConfigError
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
    check_custom_config_nodes,
    default_quantization,
    int16_quantization,
    quantization_scheme,
)
from core.quantization.requantize import (
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_int64,
    multiply_by_quantized_multiplier_sima,
    multiply_by_quantized_multiplier_single_rounding,
    quantize_multiplier,
    quantize_multiplier_for,
    quantize_multiplier_sima,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

__all__ = [
    "AdaRoundMethod",
    "RangeSearchMethod",
    "CalibrationMethod",
    "HistogramEntropyMethod",
    "HistogramMSEMethod",
    "HistogramPercentileMethod",
    "MinMaxMethod",
    "MovingAverageMinMaxMethod",
    "QuantizationConfigError",
    "QuantizationFlavor",
    "QuantizationParams",
    "QuantizationPrecision",
    "QuantizationScheme",
    "RequantizationMode",
    "check_custom_config_nodes",
    "default_quantization",
    "int16_quantization",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_int64",
    "multiply_by_quantized_multiplier_sima",
    "multiply_by_quantized_multiplier_single_rounding",
    "quantization_scheme",
    "quantize_multiplier",
    "quantize_multiplier_for",
    "quantize_multiplier_sima",
    "requantize",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]
