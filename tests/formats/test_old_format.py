"""``.sima`` files written by an older mixq still load and compute what they computed.

``tests/formats/data/*.sima`` were written by mixq before the per-node quantization data became
the typed ``NodeQuant`` (plain dicts of string keys in the program document). Each test loads one
and compares its outputs with the same model quantized (or converted) again by the current code.
``python -m tests.formats.test_old_format`` rewrites the files (only meaningful on old code).
"""
from __future__ import annotations

import os

import numpy as np

from tests.golden.cases import TFLITE_DIR, tflite_feed

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
TFLITE_MODELS = ("mul_add_constant_int8", "concatenation_16x8", "mean_int8", "pad_int8")


SMALL_CONFIGS = ("int8_output_int32", "int16_tflite", "equalized")


def small_model(label: str):
    """tests/formats/test_model_save_load.py's small graph (conv+relu, depthwise+clip, add, a
    float island, pool, gemm, softmax on the APU) quantized under configuration ``label``."""
    import tempfile

    import onnx

    from core import RequantizationMode, ScalarType, default_quantization, int16_quantization, load_model, onnx_source
    from tests.formats.test_model_save_load import DENSE, _small_onnx

    configs = {
        "int8_output_int32": default_quantization.with_custom_quantization_configs({DENSE: {"output_int32": True}}),
        "int16_tflite": int16_quantization.with_requantization_mode(RequantizationMode.tflite),
        "equalized": default_quantization.with_channel_equalization(True).with_bias_correction(True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.onnx")
        onnx.save(_small_onnx(), path)
        net = load_model(onnx_source(path, {"x": [1, 3, 8, 8]}, {"x": ScalarType.float32}))
    x = small_feed()
    return net.quantize([{"x": x[i : i + 4]} for i in range(0, 16, 4)], configs[label], model_name=f"small_{label}")


def small_feed() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32) * 1.5


def tflite_model(name: str):
    from core import load_model, tflite_source
    from core.quantization.params import QuantizationFlavor

    net = load_model(tflite_source(os.path.join(TFLITE_DIR, name + ".tflite")))
    return net.convert_to_sima_quantization(requantization_mode=QuantizationFlavor.tflite)


def test_old_small_sima_files_load_and_match_a_recomputation(monkeypatch):
    from core import Model
    from core.quantization import quantizer

    # the files were written before 16-bit ranges kept a margin (SIXTEEN_BIT_RANGE_MARGIN):
    # recompute with the rule they were quantized under
    monkeypatch.setattr(quantizer, "SIXTEEN_BIT_RANGE_MARGIN", 1.0)
    x = small_feed()
    for label in SMALL_CONFIGS:
        old = Model.load(f"small_{label}", DATA)
        fresh = small_model(label)
        for fast in (False, True):
            got, want = old.execute({"x": x}, fast_mode=fast), fresh.execute({"x": x}, fast_mode=fast)
            assert all(p.dtype == q.dtype and np.array_equal(p, q) for p, q in zip(got, want)), (label, fast)
            assert not np.all(got[0] == 0)


def test_old_tflite_sima_files_load_and_match_a_recomputation():
    from core import Model

    x = tflite_feed()
    for name in TFLITE_MODELS:
        old = Model.load(name, DATA)
        fresh = tflite_model(name)
        inp = fresh.program.graph.inputs[0]
        assert np.array_equal(old.execute({inp: x})[0], fresh.execute({inp: x})[0]), name


if __name__ == "__main__":
    for label in SMALL_CONFIGS:
        small_model(label).save(f"small_{label}", DATA)
    for name in TFLITE_MODELS:
        tflite_model(name).save(name, DATA)
