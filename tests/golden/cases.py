"""The models, configurations and samples whose integer outputs must never change by accident.

MobileNetV2 and the MNIST CNN (zoo) under INT8, INT16, mixed precision, TFLite requantization,
channel equalization + bias correction, per-node INT32 output and fast mode; the TFLite int8 and
16x8 op models converted with ``convert_to_sima_quantization`` (TFLite flavor). ``all_outputs``
computes every array; ``tests/golden/outputs.npz`` holds the reference copy.
"""
from __future__ import annotations

import glob
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_FILE = os.path.join(HERE, "outputs.npz")
TFLITE_DIR = os.path.join(HERE, "tflite")


def configs(net):
    from core import QuantizationPrecision, RequantizationMode, default_quantization, int16_quantization

    nodes = [n.name for n in net.nodes() if not n.segment.startswith("APU")]
    int16_nodes = (nodes[1], nodes[len(nodes) // 2])
    int16 = {name: {"quantization_precision": QuantizationPrecision.INT_16} for name in int16_nodes}
    last = {nodes[-1]: {"output_int32": True}}
    return {
        "int8": default_quantization,
        "int16": int16_quantization,
        "mixed": default_quantization.with_custom_quantization_configs(int16),
        "tflite": default_quantization.with_requantization_mode(RequantizationMode.tflite),
        "ce_bc": default_quantization.with_channel_equalization(True).with_bias_correction(True),
        "int32_out": default_quantization.with_custom_quantization_configs(last),
    }


def zoo_cases():
    """(model name, calibration samples, evaluation feed) for the two zoo models."""
    from core import zoo

    crops = zoo.datasets.natural_images("calibration", 16)
    images = zoo.datasets.imagenet_samples()
    digits_cal = zoo.datasets.digits("calibration")
    digits_ev = zoo.datasets.digits("evaluation")
    idx = np.arange(0, len(digits_cal), len(digits_cal) // 32)[:32]
    return [
        ("mobilenet_v2", [{"input": crops.inputs[i : i + 4]} for i in range(0, 16, 4)], images.inputs[:8]),
        ("mnist_cnn", [{"input": digits_cal.inputs[i : i + 1]} for i in idx], digits_ev.inputs[::50]),
    ]


# Calibration's float pass runs float32 BLAS, whose summation order (so the last bits of the float
# activations, so the calibrated ranges) follows the thread count: the goldens were made with 2
# BLAS threads, and are recomputed with 2 whatever OMP_NUM_THREADS says.
BLAS_THREADS = 2


def zoo_outputs(name, calibration, x) -> dict[str, np.ndarray]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        return _zoo_outputs(name, calibration, x)


def _zoo_outputs(name, calibration, x) -> dict[str, np.ndarray]:
    from core import load_model, onnx_source, zoo

    net = load_model(onnx_source(zoo.build(name)))
    inp = net.input_names[0]
    calibration = [{inp: s["input"]} for s in calibration]
    out = {}
    for label, cfg in configs(net).items():
        model = net.quantize(calibration, cfg, model_name=f"{name}_{label}")
        out[f"{name}/{label}"] = model.execute({inp: x})[0]
        if label == "int8":
            out[f"{name}/int8_fast"] = model.execute({inp: x}, fast_mode=True)[0]
    return out


def tflite_files() -> list[str]:
    return sorted(glob.glob(os.path.join(TFLITE_DIR, "*.tflite")))


def tflite_feed() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(24 + 8, 12, 12, 3)).astype(np.float32)[24:]


def tflite_outputs(path) -> np.ndarray:
    from core import load_model, tflite_source
    from core.quantization.params import QuantizationFlavor

    net = load_model(tflite_source(path))
    model = net.convert_to_sima_quantization(requantization_mode=QuantizationFlavor.tflite)
    return model.execute({net.graph.inputs[0]: tflite_feed()}, fast_mode=False)[0]


def tflite_key(path) -> str:
    return "tflite/" + os.path.basename(path)[: -len(".tflite")]


def all_outputs() -> dict[str, np.ndarray]:
    out = {}
    for name, cal, x in zoo_cases():
        out.update(zoo_outputs(name, cal, x))
    for path in tflite_files():
        out[tflite_key(path)] = tflite_outputs(path)
    return out
