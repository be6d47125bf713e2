"""Quantization error analysis (numpy only; matplotlib is imported only to plot)."""
from core.analysis.layer_error import METRICS, LayerError, LayerErrorReport, analyze_quantization_error

__all__ = ["METRICS", "LayerError", "LayerErrorReport", "analyze_quantization_error"]
