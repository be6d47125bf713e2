"""Model.export_onnx: a QDQ ONNX model that onnxruntime runs, close to mixq's exact outputs, and
the integer form, bit-identical to Model.execute(fast_mode=False) under onnxruntime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core import (
    QuantizationConfigError,
    QuantizationPrecision,
    RequantizationMode,
    default_quantization,
    int16_quantization,
    load_model,
    onnx_source,
    zoo,
)


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
    # uint8 weights with zero point 128 (int8 values + 128): onnxruntime's U8U8 kernels are exact on
    # every x86 CPU, its U8S8/S8S8 ones saturate on AVX2 without VNNI (off by many LSB)
    assert w_inits and all(i.data_type == onnx.TensorProto.UINT8 for i in w_inits)
    zps = [onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("/w_zp")]
    assert zps and all((z == 128).all() for z in zps)
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


@pytest.mark.parametrize("mode", [RequantizationMode.sima, RequantizationMode.tflite])
def test_integer_form_is_bit_exact(mnist, tmp_path, mode):
    net, calib, x = mnist
    model = net.quantize(calib, default_quantization.with_requantization_mode(mode))
    path = model.export_onnx(str(tmp_path / "mnist_int.onnx"), form="integer")
    proto = onnx.load(path)
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" not in ops and "Conv" in ops   # the 8-bit convs accumulate exactly in float32
    assert "run as float" not in proto.doc_string               # every integer op has its integer lowering
    assert np.array_equal(run_ort(path, x), model.execute({"input": x})[0])


def test_integer_form_int16_mixed_int32_output_and_equalization(mnist, tmp_path):
    """16-bit operands (byte-split ConvInteger), a per-node INT16 override, an int32 final
    output, and per-channel ReLU6 bounds from channel equalization: all bit-exact."""
    net, calib, x = mnist
    last = [n.name for n in net.graph.nodes if n.op == "Gemm"][-1]
    configs = {
        "int16": int16_quantization,
        "mixed": default_quantization.with_custom_quantization_configs(
            {"MLA_0/conv2d_add_relu_2": {"quantization_precision": QuantizationPrecision.INT_16}}),
        "int32_out": default_quantization.with_custom_quantization_configs({last: {"output_int32": True}}),
        "equalized": default_quantization.with_channel_equalization(True).with_bias_correction(True),
    }
    for name, cfg in configs.items():
        model = net.quantize(calib, cfg)
        path = model.export_onnx(str(tmp_path / f"{name}.onnx"), form="integer")
        proto = onnx.load(path)
        assert "run as float" not in proto.doc_string, name
        assert _integer_operand_types(proto) == {onnx.TensorProto.UINT8}, name
        assert np.array_equal(run_ort(path, x), model.execute({"input": x})[0]), name


def _integer_operand_types(proto) -> set[int]:
    """Element types of every ConvInteger/MatMulInteger operand and zero point (inferred)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return {types[i] for n in proto.graph.node if n.op_type in ("ConvInteger", "MatMulInteger") for i in n.input if i}


def test_integer_form_survives_products_that_saturate_int16(mnist, tmp_path):
    """Inputs at the top of their range times weights at +-127: pairs of such products overflow
    int16, where onnxruntime's int8 kernels on AVX2-without-VNNI CPUs saturate; the uint8 operands
    of the export keep the logits bit-identical on any CPU."""
    net, calib, _ = mnist
    model = net.quantize(calib, int16_quantization.with_custom_quantization_configs(
        {"MLA_0/conv2d_add_relu_0": {"quantization_precision": QuantizationPrecision.INT_8}}))
    path = model.export_onnx(str(tmp_path / "sat.onnx"), form="integer")
    x = np.full((2, 1, 28, 28), 3.0, np.float32)    # saturates the input grid: every code at its top
    x[1, :, ::2] = -3.0
    assert np.array_equal(run_ort(path, x), model.execute({"input": x})[0])


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("mode", [RequantizationMode.sima, RequantizationMode.tflite])
def test_integer_form_every_integer_op(onnx_model_file, tmp_path, bits, mode):
    """Conv, Relu, APU Tanh, Add, Pad, AveragePool, Concat (rescaling), nearest Resize, Clip,
    Mul, GlobalAveragePool, Flatten, Gemm: the logits are bit-identical."""
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "quantization"))
    from test_quantize_end_to_end import _mixed_model

    proto = _mixed_model()
    del proto.graph.node[-1]                                     # stop at the logits (Softmax is float)
    proto.graph.output[0].name = "logits"
    net = load_model(onnx_source(onnx_model_file(proto)))
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    base = default_quantization if bits == 8 else int16_quantization
    model = net.quantize([{"x": x[i : i + 4]} for i in range(0, 16, 4)], base.with_requantization_mode(mode))
    assert set(model.program.kinds.values()) == {"int", "apu"}
    path = model.export_onnx(str(tmp_path / "mixed.onnx"), form="integer")
    assert "run as float" not in onnx.load(path).doc_string
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(out, model.execute({"x": x})[0])


def test_mobilenet_v2_integer_form_exact_and_qdq_close(tmp_path):
    """The acceptance model: the integer form is bit-identical; the QDQ form (onnxruntime's own
    requantization) stays close on the classification."""
    net = load_model(onnx_source(zoo.build("mobilenet_v2")))
    name = net.input_names[0]
    calib = zoo.datasets.natural_images("calibration", 8).inputs
    x = zoo.datasets.natural_images("evaluation", 8).inputs
    model = net.quantize([{name: calib[i : i + 1]} for i in range(len(calib))], default_quantization)
    q = model.execute({name: x})[0]
    path = model.export_onnx(str(tmp_path / "mnv2_int.onnx"), form="integer")
    o = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    assert np.array_equal(o, q)
    path = model.export_onnx(str(tmp_path / "mnv2_qdq.onnx"))
    o = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    assert (o.argmax(1) == q.argmax(1)).mean() >= 0.5


def test_unknown_form_is_refused(mnist, tmp_path):
    net, calib, _ = mnist
    model = net.quantize(calib, default_quantization)
    with pytest.raises(QuantizationConfigError, match="form"):
        model.export_onnx(str(tmp_path / "m.onnx"), form="qoperator")
    assert not list(tmp_path.iterdir())
