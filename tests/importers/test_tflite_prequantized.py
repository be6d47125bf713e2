"""Pre-quantized (full-int8) TFLite models -> ``LoadedNet.convert_to_sima_quantization``.

With the tflite flavor, ``Model.execute(fast_mode=False)`` must equal TensorFlow Lite's reference
kernels (``OpResolverType.BUILTIN_REF``) bit for bit, on every output element. The optimized
built-in kernels and the default (XNNPACK) ones are compared too, for information only (they
round differently). Models: one small Keras model per supported op, a MobileNetV2-style model
(random weights) and the real Keras CIFAR-10 CNN of the ``cifar-10-model`` package.
"""
import importlib.util
import logging
import os
import warnings

import numpy as np
import pytest

from core import load_model, tflite_source
from core.errors import QuantizationConfigError, UnsupportedOperatorError
from core.quantization.params import QuantizationFlavor, RequantizationMode

from .conftest import to_tflite

RESOLVERS = ("BUILTIN_REF", "BUILTIN", "AUTO")


def _interpreter(tf, path, x, resolver):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=getattr(
            tf.lite.experimental.OpResolverType, resolver))
    d = it.get_input_details()[0]
    if tuple(d["shape"]) != x.shape:
        it.resize_tensor_input(d["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.astype(d["dtype"]))
    it.invoke()
    o = it.get_output_details()[0]
    return it.get_tensor(o["index"]), o


def _compare(y, ref, out_detail, out_quant):
    """(% equal elements, max difference in output LSB) of mixq's float output vs the interpreter's."""
    scale, zp = out_detail["quantization"]
    if scale == 0:   # a float output: the LSB of the int8 tensor DEQUANTIZE reads
        scale = out_quant.scale
    if ref.dtype == np.int8:   # int8 outputs: mixq returns real values; back to the int8 codes
        yq = np.round(y.astype(np.float64) / scale + zp).astype(np.int64)
        diff = np.abs(yq - ref.astype(np.int64))
        return 100.0 * float(np.mean(diff == 0)), int(diff.max())
    lsb = np.abs(y.astype(np.float64) - ref.astype(np.float64)) / scale
    return 100.0 * float(np.mean(y == ref)), int(np.round(lsb.max()))


def _build(tf, tmp, name, keras_model, calib, io="float32", mode="int8"):
    rep = lambda: ([c[None]] for c in calib)   # noqa: E731
    data = to_tflite(tf, keras_model, "int8_io" if io == "int8" else mode, rep)
    path = os.path.join(tmp, f"{name}.tflite")
    with open(path, "wb") as f:
        f.write(data)
    return path


def _check(tf, path, x, name, results):
    net = load_model(tflite_source(path))
    model = net.convert_to_sima_quantization(requantization_mode=QuantizationFlavor.tflite, model_name=name)
    d = net.graph.tensors[net.graph.inputs[0]].dtype
    feed = x
    if d.kind == "i":   # an int8-input model: quantize the samples as TFLite's QUANTIZE would
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            it = tf.lite.Interpreter(model_path=str(path))
        s, z = it.get_input_details()[0]["quantization"]
        feed = np.clip(np.round(x / s) + z, -128, 127).astype(np.int8)
    y = model.execute({net.graph.inputs[0]: feed}, fast_mode=False)[0]
    row = {}
    for r in RESOLVERS:
        ref, od = _interpreter(tf, path, feed, r)
        row[r] = _compare(y.reshape(ref.shape), ref, od, model.program.tensors[model.output_names[0]])
    results[name] = (row, model)
    print(f"{name:24s} vs BUILTIN_REF {row['BUILTIN_REF'][0]:7.2f}% equal, max {row['BUILTIN_REF'][1]} LSB | "
          f"BUILTIN {row['BUILTIN'][0]:7.2f}% / {row['BUILTIN'][1]} | default {row['AUTO'][0]:7.2f}% / {row['AUTO'][1]}"
          f"   float islands: {model.program.meta['tflite_float_islands']}")
    return row, model


# --------------------------------------------------------------------------- models

def _op_models(tf):
    L = tf.keras.layers
    K = tf.keras

    def inp(shape=(12, 12, 3)):
        return K.Input(shape)

    models = {}
    i = inp()
    models["conv2d"] = K.Model(i, L.Conv2D(6, 3, strides=2, activation="relu")(i))
    i = inp()
    x = L.Conv2D(4, 3, padding="same")(i)
    models["depthwise_conv2d"] = K.Model(i, L.DepthwiseConv2D(3, depth_multiplier=2, padding="same",
                                                              activation="relu6")(x))
    i = inp()
    x = L.Flatten()(i)
    x = L.Dense(16, activation="relu")(x)
    models["fully_connected"] = K.Model(i, L.Dense(5)(x))
    i = inp()
    a = L.Conv2D(4, 1)(i)
    b = L.Conv2D(4, 3, padding="same")(i)
    models["add"] = K.Model(i, L.ReLU()(L.Add()([a, b])))
    i = inp()
    a = L.Conv2D(4, 1)(i)
    b = L.Conv2D(4, 3, padding="same")(i)
    models["mul"] = K.Model(i, L.Multiply()([a, b]))
    i = inp()
    x = L.Conv2D(4, 3, activation="relu")(i)  # BatchNormalization after a ReLU: MUL/ADD by constants
    models["mul_add_constant"] = K.Model(i, L.BatchNormalization(beta_initializer="random_normal",
                                                                 gamma_initializer="random_uniform")(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    models["average_pool_2d"] = K.Model(i, L.AveragePooling2D(3, strides=2, padding="same")(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    models["max_pool_2d"] = K.Model(i, L.MaxPooling2D(2)(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    models["mean"] = K.Model(i, L.GlobalAveragePooling2D()(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    models["mean_keepdims"] = K.Model(i, L.GlobalAveragePooling2D(keepdims=True)(x))
    i = inp()
    a = L.Conv2D(4, 1)(i)
    b = L.Conv2D(3, 3, padding="same")(i)
    models["concatenation"] = K.Model(i, L.Concatenate()([a, b]))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    x = L.Reshape((576,))(x)
    models["reshape"] = K.Model(i, L.Dense(3)(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    x = L.ZeroPadding2D(((1, 2), (2, 1)))(x)
    models["pad"] = K.Model(i, L.Conv2D(3, 3)(x))
    i = inp()
    x = L.Conv2D(4, 1)(i)
    models["resize_nearest"] = K.Model(i, L.Resizing(24, 24, interpolation="nearest")(x))
    i = inp()
    x = L.Flatten()(i)
    models["logistic"] = K.Model(i, L.Dense(8, activation="sigmoid")(x))
    i = inp()
    x = L.Flatten()(i)
    models["softmax"] = K.Model(i, L.Dense(10, activation="softmax")(x))
    return models


def _mobilenet_v2_style(tf):
    L = tf.keras.layers
    i = tf.keras.Input((32, 32, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(i)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)

    def block(x, expand, out, stride):
        cin = x.shape[-1]
        y = L.Conv2D(cin * expand, 1, use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.ReLU(6.0)(y)
        y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.ReLU(6.0)(y)
        y = L.Conv2D(out, 1, use_bias=False)(y)
        y = L.BatchNormalization()(y)
        return L.Add()([x, y]) if stride == 1 and cin == out else y

    x = block(x, 1, 16, 1)
    x = block(x, 4, 24, 2)
    x = block(x, 4, 24, 1)
    x = block(x, 4, 32, 2)
    x = block(x, 4, 32, 1)
    x = L.Conv2D(64, 1, use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.GlobalAveragePooling2D()(x)
    return tf.keras.Model(i, L.Dense(10)(x))


def _op_results(tf, tmp_path_factory, mode):
    """Every op model converted in ``mode`` ("int8" or "16x8") and checked against the interpreter."""
    tf.keras.utils.set_random_seed(0)
    tmp = str(tmp_path_factory.mktemp(f"prequant_ops_{mode}"))
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(24, 12, 12, 3)).astype(np.float32)
    x = rng.normal(size=(8, 12, 12, 3)).astype(np.float32)
    results = {}
    for name, m in _op_models(tf).items():
        _check(tf, _build(tf, tmp, f"{name}_{mode}", m, calib, mode=mode), x, name, results)
    if mode == "int8":   # int8 input and output
        path = _build(tf, tmp, "conv2d_int8_io", _op_models(tf)["depthwise_conv2d"], calib, io="int8")
        _check(tf, path, x, "depthwise_int8_io", results)
    return results


@pytest.fixture(scope="module")
def op_results(tf, tmp_path_factory):
    return _op_results(tf, tmp_path_factory, "int8")


BIT_EXACT_OPS = [
    "conv2d",
    "depthwise_conv2d",
    "fully_connected",
    "add",
    "mul",
    "mul_add_constant",
    "average_pool_2d",
    "max_pool_2d",
    "mean",
    "mean_keepdims",
    "concatenation",
    "reshape",
    "pad",
    "resize_nearest",
    "logistic",
    "softmax",
    "depthwise_int8_io",
]


@pytest.mark.parametrize("name", BIT_EXACT_OPS)
def test_op_bit_exact_with_reference_kernels(op_results, name):
    row, model = op_results[name]
    assert row["BUILTIN_REF"] == (100.0, 0), row
    assert model.program.meta["tflite_float_islands"] == []


@pytest.fixture(scope="module")
def op_results_16x8(tf, tmp_path_factory):
    """The same op models through TensorFlow's 16x8 converter mode (int16 activations, int8 weights)."""
    return _op_results(tf, tmp_path_factory, "16x8")


BIT_EXACT_OPS_16X8 = [n for n in BIT_EXACT_OPS if n not in ("logistic", "softmax", "depthwise_int8_io")]


@pytest.mark.parametrize("name", BIT_EXACT_OPS_16X8)
def test_16x8_op_bit_exact_with_reference_kernels(op_results_16x8, tmp_path, name):
    """16x8 models: bit-identical with the reference kernels (FULLY_CONNECTED requantizes in double,
    CONCATENATION's inputs through TFLite's Requantize), and so is their integer ONNX export."""
    import onnxruntime as ort

    row, model = op_results_16x8[name]
    assert row["BUILTIN_REF"] == (100.0, 0), row
    assert model.program.meta["tflite_float_islands"] == []
    assert {q.bits for q in model.program.tensors.values()} == {16}
    inp = model.input_names[0]
    x = np.random.default_rng(7).normal(size=(4, 12, 12, 3)).astype(np.float32)
    path = model.export_onnx(str(tmp_path / f"{name}.onnx"), form="integer")
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
    assert np.array_equal(out, model.execute({inp: x})[0])


@pytest.mark.parametrize("name", ["logistic", "softmax"])
def test_16x8_logistic_softmax_are_float_islands(op_results_16x8, name):
    # TFLite's int16 LOGISTIC/SOFTMAX use lookup tables mixq does not reproduce: float, named, within one step
    row, model = op_results_16x8[name]
    assert model.program.meta["tflite_float_islands"] and row["BUILTIN_REF"][1] <= 1, row


@pytest.fixture(scope="module")
def mobilenet_result(tf, tmp_path_factory):
    tf.keras.utils.set_random_seed(1)
    tmp = str(tmp_path_factory.mktemp("prequant_mnv2"))
    rng = np.random.default_rng(1)
    calib = rng.uniform(-1, 1, size=(32, 32, 32, 3)).astype(np.float32)
    x = rng.uniform(-1, 1, size=(8, 32, 32, 3)).astype(np.float32)
    path = _build(tf, tmp, "mnv2_style", _mobilenet_v2_style(tf), calib)
    results = {}
    _check(tf, path, x, "mobilenet_v2_style", results)
    return results["mobilenet_v2_style"], path


def test_mobilenet_v2_style_bit_exact(mobilenet_result):
    (row, model), _ = mobilenet_result
    assert row["BUILTIN_REF"] == (100.0, 0), row
    assert model.program.meta["tflite_float_islands"] == []
    ops = {n.op for n in model.program.graph.nodes}
    assert {"Conv", "Add", "GlobalAveragePool", "Gemm"} <= ops
    assert all(k == "int" for k in model.program.kinds.values())


def test_cifar10_cnn_bit_exact(tf, tmp_path_factory):
    from core.zoo.data import _foolbox_files, _open_image, foolbox_cifar10

    spec = importlib.util.find_spec("cifar_10_model")
    if spec is None:
        pytest.skip("cifar-10-model is not installed")
    h5 = os.path.join(list(spec.submodule_search_locations)[0], "trained_models", "cnn_model.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras_model = tf.keras.models.load_model(h5, compile=False)
    calib = np.stack([np.asarray(_open_image(p).convert("RGB")) for p, _ in _foolbox_files("cifar100")]
                     ).astype(np.float32)
    evaluation = foolbox_cifar10()
    path = _build(tf, str(tmp_path_factory.mktemp("prequant_cifar")), "cifar10_cnn", keras_model, calib)
    results = {}
    row, model = _check(tf, path, evaluation.inputs, "cifar10_cnn", results)
    assert row["BUILTIN_REF"] == (100.0, 0), row
    assert model.program.meta["tflite_float_islands"] == []
    # the converted model classifies like the Keras model on most images (a sanity check)
    y = model.execute({model.input_names[0]: evaluation.inputs})[0]
    k = np.asarray(keras_model(evaluation.inputs))
    agree = float(np.mean(np.argmax(y, 1) == np.argmax(k, 1)))
    top1 = float(np.mean(np.argmax(y, 1) == evaluation.labels))
    print(f"cifar10_cnn int8: top-1 agreement with Keras FP32 {agree:.0%}, accuracy {top1:.0%} "
          f"(Keras {float(np.mean(np.argmax(k, 1) == evaluation.labels)):.0%}) on {len(y)} foolbox images")
    assert agree >= 0.6


def test_sima_flavor_and_default(op_results, tf):
    _, model = op_results["conv2d"]
    path = model.program.graph.metadata["source_path"]
    net = load_model(tflite_source(path))
    sima = net.convert_to_sima_quantization()
    assert sima.program.requantization_mode is RequantizationMode.sima
    x = np.random.default_rng(3).normal(size=(4, 12, 12, 3)).astype(np.float32)
    ref, od = _interpreter(tf, path, x, "BUILTIN_REF")
    y = sima.execute({net.graph.inputs[0]: x})[0]
    assert (
        _compare(y.reshape(ref.shape), ref, od, sima.program.tensors[sima.output_names[0]])[1] <= 1
    )  # sima arithmetic: within one step
    exact = net.convert_to_sima_quantization(requantization_mode=RequantizationMode.tflite, model_name="m",
                                             log_level=logging.INFO)
    assert exact.name == "m" and exact.program.requantization_mode is RequantizationMode.tflite


@pytest.mark.parametrize("name", ["add", "fully_connected", "mean", "softmax", "mul_add_constant"])
def test_save_load_round_trip(op_results, tmp_path, name):
    from core.model import Model

    _, model = op_results[name]
    model.save("prequant", str(tmp_path))
    loaded = Model.load("prequant", str(tmp_path))
    x = np.random.default_rng(4).normal(size=(2, 12, 12, 3)).astype(np.float32)
    inp = model.input_names[0]
    assert np.array_equal(model.execute({inp: x})[0], loaded.execute({inp: x})[0])
    assert all(q.rounding == "tflite" for q in loaded.program.tensors.values())


def test_float_model_is_refused(tf, tmp_path):
    i = tf.keras.Input((4,))
    m = tf.keras.Model(i, tf.keras.layers.Dense(2)(i))
    path = tmp_path / "float.tflite"
    path.write_bytes(to_tflite(tf, m))
    net = load_model(tflite_source(str(path)))
    with pytest.raises(QuantizationConfigError, match="not a pre-quantized"):
        net.convert_to_sima_quantization()
    with pytest.raises(QuantizationConfigError):
        net.convert_to_sima_quantization(requantization_mode="bogus")


def test_unconvertible_operator_is_named(op_results):
    _, model = op_results["conv2d"]
    net = load_model(tflite_source(model.program.graph.metadata["source_path"]))
    conv = next(n for n in net.graph.nodes if n.op == "Conv")
    raw = net.graph.metadata["tflite_quantized_constants"]
    for name, e in net.graph.metadata["tflite_quantization"].items():
        if e.get("ir_tensor") == conv.inputs[1]:
            raw.pop(name)          # the file's int8 weights are gone: the conv cannot be converted
    with pytest.raises(UnsupportedOperatorError, match="Conv"):
        net.convert_to_sima_quantization(requantization_mode=QuantizationFlavor.tflite)


@pytest.mark.parametrize("name", BIT_EXACT_OPS)
def test_integer_onnx_export_of_converted_model(op_results, tmp_path, name):
    """A converted TFLite model exported in the integer ONNX form runs in onnxruntime with the
    same codes as mixq (and so as TFLite's reference kernels); LOGISTIC and SOFTMAX, which have
    no integer lowering, run as float there, are named in the file, and stay within one step."""
    import onnx
    import onnxruntime as ort

    _, model = op_results[name]
    path = model.export_onnx(str(tmp_path / f"{name}.onnx"), form="integer")
    inp = model.input_names[0]
    x = (
        np.random.default_rng(5)
        .normal(size=(4,) + tuple(model.program.graph.tensors[inp].shape[1:]))
        .astype(np.float32)
    )
    if model.program.graph.tensors[inp].dtype == np.int8:
        x = np.random.default_rng(5).integers(-128, 128, size=x.shape).astype(np.int8)
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
    ref = model.execute({inp: x})[0]
    doc = onnx.load(path).doc_string
    if name in ("logistic", "softmax"):
        assert "run as float" in doc
        step = model.program.tensors[model.output_names[0]].scale
        assert np.abs(out.astype(np.float64) - ref).max() <= step * 1.0001
    else:
        assert "run as float" not in doc
        assert np.array_equal(out, ref)


def test_integer_onnx_export_of_converted_mobilenet(mobilenet_result, tmp_path):
    import onnxruntime as ort

    (_, model), _ = mobilenet_result
    path = model.export_onnx(str(tmp_path / "mnv2_style.onnx"), form="integer")
    inp = model.input_names[0]
    x = np.random.default_rng(6).uniform(-1, 1, size=(4, 32, 32, 3)).astype(np.float32)
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {inp: x})[0]
    assert np.array_equal(out, model.execute({inp: x})[0])
