"""Model.export_onnx: a QDQ ONNX model that onnxruntime runs, close to mixq's exact outputs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core import (QuantizationPrecision, RequantizationMode, default_quantization, int16_quantization, load_model,
                  onnx_source, zoo)


@pytest.fixture(scope="module")
def mnist():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration").inputs[::50]
    ev = zoo.datasets.digits("evaluation").inputs[::10]
    return net, [{"input": cal[i : i + 1]} for i in range(len(cal))], ev


def run_ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("mode", [RequantizationMode.sima, RequantizationMode.tflite])
def test_int8_qdq_within_one_lsb(mnist, tmp_path, mode):
    net, calib, x = mnist
    model = net.quantize(calib, default_quantization.with_requantization_mode(mode))
    path = model.export_onnx(str(tmp_path / "mnist_qdq.onnx"))
    proto = onnx.load(path)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MaxPool"} <= ops
    w_inits = [i for i in proto.graph.initializer if i.name.endswith("/w_q")]
    assert w_inits and all(i.data_type == onnx.TensorProto.INT8 for i in w_inits)
    q = model.execute({"input": x})[0]
    o = run_ort(path, x)                           # batch 400: the batch dimension is free
    lsb = np.abs(o - q) / model.program.tensors[net.output_names[0]].scale
    assert (lsb <= 1.0001).mean() >= 0.999, (lsb <= 1.0001).mean()
    assert (o.argmax(1) == q.argmax(1)).mean() >= 0.99


def test_int16_and_mixed_export_run(mnist, tmp_path):
    net, calib, x = mnist
    (f,) = net.execute({"input": x})
    for name, cfg in (("int16", int16_quantization),
                      ("mixed", default_quantization.with_custom_quantization_configs(
                          {"MLA_0/conv2d_add_relu_2": {"quantization_precision": QuantizationPrecision.INT_16}}))):
        model = net.quantize(calib, cfg)
        path = model.export_onnx(str(tmp_path / f"{name}.onnx"))
        proto = onnx.load(path)
        assert any(i.data_type == onnx.TensorProto.INT16 for i in proto.graph.initializer)
        o = run_ort(path, x)
        q = model.execute({"input": x})[0]
        assert (o.argmax(1) == q.argmax(1)).mean() >= 0.99
        assert np.abs(o - f).mean() < 2 * np.abs(q - f).mean() + 1e-3      # as close to FP32 as mixq is


def test_export_is_atomic_and_valid(mnist, tmp_path):
    net, calib, _ = mnist
    model = net.quantize(calib, default_quantization)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    model.export_onnx(str(target))
    onnx.checker.check_model(onnx.load(str(target)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp file left behind
