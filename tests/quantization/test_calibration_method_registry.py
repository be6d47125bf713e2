"""A calibration method is one class (docs/architecture.md, "Adding a calibration method"): a
CalibrationMethod subclass with a ``name`` and a ``range`` rule registers itself, so from_str,
quantization and the program format (save / load) take it with no other change."""
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from core import CalibrationMethod, MinMaxMethod, Model, default_quantization, load_model, onnx_source
from core.errors import QuantizationConfigError
from tests.ops.test_elu import X, conv_elu_conv


@dataclass(frozen=True)
class ScaledMinMaxMethod(CalibrationMethod):
    """Range = factor * [min, max] (a test method)."""

    factor: float = 0.5
    name: ClassVar[str] = "scaled_min_max"
    aliases: ClassVar[tuple[str, ...]] = ("scaled",)

    def range(self, observer, bits, asymmetric):
        return self.factor * observer.min, self.factor * observer.max


def test_a_new_method_is_found_by_name():
    assert CalibrationMethod.from_str("Scaled-Min-Max") == ScaledMinMaxMethod()
    assert CalibrationMethod.from_str("scaled") == ScaledMinMaxMethod()
    assert ScaledMinMaxMethod in CalibrationMethod.registered()
    with pytest.raises(QuantizationConfigError, match="'scaled_min_max'"):
        CalibrationMethod.from_str("no_such_method")


def test_a_new_method_quantizes_and_saves(onnx_model_file, tmp_path):
    net = load_model(onnx_source(onnx_model_file(conv_elu_conv())))
    stats = net.calibrate([{"x": X[i:i + 2]} for i in range(0, 8, 2)])
    plain = net.quantize(stats, default_quantization.with_calibration(MinMaxMethod()))
    scaled = net.quantize(stats, default_quantization.with_calibration(ScaledMinMaxMethod(0.5)))
    # symmetric activations: every calibrated scale is exactly half the min/max one
    assert scaled.program.tensors.keys() == plain.program.tensors.keys()
    halved = [t for t, q in plain.program.tensors.items() if q.bits in (8, 16)]
    assert halved and all(scaled.program.tensors[t].scale == plain.program.tensors[t].scale / 2 for t in halved)
    scaled.save("scaled", str(tmp_path))
    loaded = Model.load("scaled", str(tmp_path))
    assert loaded.program.params.calibration_method == ScaledMinMaxMethod(0.5)
    assert np.array_equal(loaded.execute({"x": X})[0], scaled.execute({"x": X})[0])


def test_a_name_is_taken_once():
    with pytest.raises(ValueError, match="'min_max' is taken by MinMaxMethod"):
        @dataclass(frozen=True)
        class Other(CalibrationMethod):
            name: ClassVar[str] = "min_max"
