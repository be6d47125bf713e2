"""TFLite importer: small Keras models converted with TensorFlow's TFLiteConverter import into
mixq's IR and match tf.lite.Interpreter; pre-quantized models keep their quantization parameters;
bad files raise ModelLoadError / UnsupportedOperatorError."""
import numpy as np
import pytest

from core import ModelLoadError, UnsupportedOperatorError, load_model, tflite_source
from tests.importers.conftest import max_rel_err, run_interpreter, to_tflite

TOL = 1e-4
# TensorFlow's and Keras's own deprecation chatter
pytestmark = [pytest.mark.filterwarnings(r"ignore::UserWarning:(keras|tensorflow)(\..*)?"),
              pytest.mark.filterwarnings(r"ignore::DeprecationWarning:(keras|tensorflow)(\..*)?")]


def _models(tf):
    keras = tf.keras
    L = keras.layers

    def inp(h=16, w=16, c=3):
        return keras.Input((h, w, c), batch_size=1)

    def conv_same_strided():
        x = inp(15, 17, 3)
        y = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        y = L.Conv2D(6, (2, 3), strides=(2, 1), padding="same")(y)
        return keras.Model(x, y)

    def conv_valid_dilated():
        x = inp(17, 16, 4)
        y = L.Conv2D(6, 3, dilation_rate=2, padding="valid")(x)
        y = L.Conv2D(5, 3, dilation_rate=(2, 1), padding="same", activation="relu6")(y)
        return keras.Model(x, y)

    def depthwise():
        x = inp(12, 12, 4)
        y = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)(x)
        y = L.ReLU(6.0)(y)
        y = L.DepthwiseConv2D(3, padding="valid")(y)
        return keras.Model(x, y)

    def dense_after_flatten():
        x = inp(6, 5, 3)
        y = L.Conv2D(4, 3, padding="same", activation="relu")(x)
        y = L.Flatten()(y)  # flattens NHWC: the importer must flatten in that order
        y = L.Dense(7, activation="relu")(y)
        y = L.Dense(5)(y)
        y = L.Softmax()(y)
        return keras.Model(x, y)

    def add_mul():
        x = inp(8, 8, 4)
        a = L.Conv2D(4, 1)(x)
        b = L.Conv2D(4, 3, padding="same")(x)
        s = L.Add()([a, b])
        m = L.Multiply()([s, a])
        m = L.BatchNormalization()(m)  # standalone: per-channel MUL/ADD constants broadcast over NHWC
        m = L.Rescaling(0.5, offset=0.25)(m)
        sub = L.Subtract()([m, b])
        return keras.Model(x, sub)

    def pools():
        x = inp(11, 10, 3)
        a = L.AveragePooling2D(3, strides=2, padding="same")(x)  # TFLite excludes the padding
        b = L.MaxPooling2D(3, strides=2, padding="same")(x)
        c = L.Concatenate()([a, b])
        d = L.AveragePooling2D(2)(c)
        e = L.MaxPooling2D(2, padding="valid")(c)
        return keras.Model(x, [d, e])

    def global_pool():
        x = inp(7, 9, 3)
        y = L.Conv2D(8, 3, activation="relu")(x)
        a = L.GlobalAveragePooling2D()(y)
        b = L.GlobalAveragePooling2D(keepdims=True)(y)
        a = L.Dense(4, activation="sigmoid")(a)
        return keras.Model(x, [a, b])

    def concat_axes():
        x = inp(6, 6, 3)
        a = L.Conv2D(4, 3, padding="same")(x)
        b = L.Conv2D(2, 1)(x)
        c = L.Concatenate(axis=-1)([a, b])
        d = L.Concatenate(axis=1)([a, a])
        e = L.Concatenate(axis=2)([c, c])
        return keras.Model(x, [d, e])

    def reshape_softmax():
        x = inp(4, 6, 5)
        y = L.Conv2D(6, 1)(x)
        r = L.Reshape((4 * 6, 6))(y)
        r = L.Softmax(axis=-1)(r)
        r = L.Reshape((6, 4, 6))(r)
        z = L.Conv2D(3, 3, padding="same")(r)
        s = L.Softmax(axis=-1)(z)  # softmax on a 4-D tensor's channels
        return keras.Model(x, s)

    def zero_padding():
        x = inp(5, 7, 3)
        y = L.ZeroPadding2D(((1, 2), (0, 3)))(x)
        y = L.Conv2D(4, 3)(y)
        y = L.ZeroPadding2D(1)(y)
        return keras.Model(x, y)

    def activations():
        x = inp(6, 6, 4)
        a = L.Activation("sigmoid")(x)
        b = L.Activation("tanh")(x)
        c = L.ReLU()(x)
        d = L.ReLU(6.0)(L.Rescaling(8.0)(x))
        y = L.Concatenate()([a, b, c, d])
        y = L.Conv2D(4, 1, activation="tanh")(y)
        return keras.Model(x, y)

    def upsampling():
        x = inp(5, 6, 3)
        a = L.UpSampling2D(2, interpolation="nearest")(x)
        b = L.UpSampling2D(2, interpolation="bilinear")(x)
        c = L.Resizing(7, 11, interpolation="bilinear")(x)
        d = L.Resizing(8, 9, interpolation="nearest")(x)
        return keras.Model(x, [a, b, c, d])

    def mobilenet_block():
        x = inp(16, 16, 8)
        y = L.Conv2D(48, 1, use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.ReLU(6.0)(y)
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.ReLU(6.0)(y)
        y = L.Conv2D(8, 1, use_bias=False)(y)
        y = L.BatchNormalization()(y)
        y = L.Add()([x, y])
        z = L.Conv2D(16, 3, strides=2, padding="same")(y)
        z = L.GlobalAveragePooling2D()(z)
        z = L.Dense(10)(z)
        return keras.Model(x, z)

    def transpose_mean():
        x = inp(4, 6, 3)
        a = L.Permute((2, 1, 3))(x)  # TRANSPOSE (H <-> W)
        a = L.Conv2D(2, 3, padding="same")(a)
        b = L.Lambda(lambda t: keras.ops.mean(t, axis=1))(x)  # MEAN over H only: (N, W, C)
        c = L.Lambda(lambda t: keras.ops.squeeze(t, axis=1))(L.Conv2D(3, (4, 1))(x))  # SQUEEZE
        return keras.Model(x, [a, b, c])

    return {f.__name__: f for f in (conv_same_strided, conv_valid_dilated, depthwise, dense_after_flatten, add_mul,
                                    pools, global_pool, concat_axes, reshape_softmax, zero_padding, activations,
                                    upsampling, mobilenet_block, transpose_mean)}


def _randomize_bn(model, rng):
    for layer in model.layers:
        if layer.__class__.__name__ == "BatchNormalization":
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.2, b.shape),
                               rng.normal(0, 0.2, m.shape), rng.uniform(0.5, 1.5, v.shape)])


@pytest.fixture(scope="module")
def float_models(tf, tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite_float")
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    paths = {}
    for name, build in _models(tf).items():
        m = build()
        _randomize_bn(m, rng)
        p = d / f"{name}.tflite"
        p.write_bytes(to_tflite(tf, m))
        paths[name] = p
    paths["raw_tf_ops"] = d / "raw_tf_ops.tflite"
    paths["raw_tf_ops"].write_bytes(_raw_tf_ops_model(tf))
    dyn = _dynamic_batch_model(tf)
    paths["dynamic_batch"] = d / "dynamic_batch.tflite"
    paths["dynamic_batch"].write_bytes(dyn)
    paths["squeeze"] = d / "squeeze.tflite"
    paths["squeeze"].write_bytes(_reshape_to_squeeze(dyn))
    return paths


def _dynamic_batch_model(tf):
    """A model with a dynamic batch: standalone RELU6 / TANH (after PAD), EXPAND_DIMS, SUB + RELU."""
    import warnings

    @tf.function(input_signature=[tf.TensorSpec((None, 6, 1, 4), tf.float32)])
    def f(x):
        pad = [[0, 0], [1, 0], [0, 0], [0, 0]]
        a = tf.nn.relu6(tf.pad(x * 4.0 - 1.0, pad))
        s = tf.squeeze(x, axis=2)
        e = tf.expand_dims(s, 1)
        r = tf.nn.relu(tf.pad(x, pad) - 0.5)
        return [a, s, e, r, tf.tanh(tf.pad(x, pad))]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()]).convert()


def _reshape_to_squeeze(data):
    """TensorFlow's converter turns tf.squeeze into RESHAPE; write a real SQUEEZE operator in its
    place with the schema's object API, to test SQUEEZE."""
    import flatbuffers

    from core.importers.tflite import _schema

    S = _schema()
    m = S.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sub = m.subgraphs[0]
    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.SQUEEZE
    code.version = 1
    m.operatorCodes.append(code)
    for op in sub.operators:
        c = m.operatorCodes[op.opcodeIndex]
        if (
            max(c.builtinCode, c.deprecatedBuiltinCode) == S.BuiltinOperator.RESHAPE
            and len(sub.tensors[op.outputs[0]].shape) == 3
        ):
            op.opcodeIndex = len(m.operatorCodes) - 1
            op.inputs = op.inputs[:1]
            op.builtinOptionsType = S.BuiltinOptions.SqueezeOptions
            op.builtinOptions = S.SqueezeOptionsT()
            op.builtinOptions.squeezeDims = [2]
            break
    else:
        raise AssertionError("no RESHAPE to rank 3 in the model")
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _raw_tf_ops_model(tf):
    """Ops Keras layers do not produce: DIV, LEAKY_RELU, HARD_SWISH, RELU_N1_TO_1, PADV2, a 4-D
    TRANSPOSE out of NHWC, STRIDED_SLICE with a negative stride, MEAN over one axis."""
    import warnings

    w = tf.constant(np.random.default_rng(4).standard_normal((1, 5, 4, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec((1, 6, 5, 4), tf.float32)])
    def f(x):
        m = tf.nn.relu6(tf.reduce_mean(x, axis=[1], keepdims=True) * 4.0)
        s = tf.squeeze(tf.nn.conv2d(x, w, 1, "VALID"), axis=2)
        p = tf.pad(x, [[0, 0], [1, 1], [2, 0], [0, 0]], constant_values=0.5)
        d = tf.math.divide(x, tf.sigmoid(x) + 1.0)
        lr = tf.nn.leaky_relu(x, 0.2)
        h = x * tf.nn.relu6(x + 3.0) / 6.0
        r = tf.clip_by_value(x, -1.0, 1.0)
        t = tf.transpose(x, [0, 3, 1, 2])
        ss = x[:, 1:5:2, ::-1, :]
        return [m, s, p, d, lr, h, r, t, ss]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()]).convert()


MODEL_NAMES = ["conv_same_strided", "conv_valid_dilated", "depthwise", "dense_after_flatten", "add_mul", "pools",
               "global_pool", "concat_axes", "reshape_softmax", "zero_padding", "activations", "upsampling",
               "mobilenet_block", "transpose_mean", "raw_tf_ops", "dynamic_batch", "squeeze"]


def _feeds(ins, rng, batch=None):
    out = []
    for d in ins:
        shape = tuple(d["shape"]) if batch is None else (batch,) + tuple(d["shape"][1:])
        out.append(rng.standard_normal(shape).astype(np.float32))
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float_model_matches_interpreter(tf, float_models, name):
    path = float_models[name]
    net = load_model(tflite_source(path))
    rng = np.random.default_rng(1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ins = tf.lite.Interpreter(model_path=str(path)).get_input_details()
    feeds = _feeds(ins, rng)
    ref, ins, outs = run_interpreter(tf, path, feeds)
    got = net.execute({d["name"]: x for d, x in zip(ins, feeds)})
    assert net.input_names == [d["name"] for d in ins]
    assert net.output_names == [d["name"] for d in outs]
    for r, g in zip(ref, got):
        assert max_rel_err(r, g) < TOL


def test_layout_is_nhwc_at_the_edges_and_nchw_inside(float_models):
    net = load_model(tflite_source(float_models["mobilenet_block"]))
    g = net.graph
    assert g.tensors[g.inputs[0]].shape == (1, 16, 16, 8)
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert convs and all(g.tensors[n.inputs[1]].shape[1] in (8, 1, 48) for n in convs)
    dw = [n for n in convs if n.attrs.get("group", 1) > 1]
    assert len(dw) == 1 and dw[0].attrs["group"] == 48 and g.tensors[dw[0].inputs[1]].shape == (48, 1, 3, 3)
    # the ReLU6 after each conv fused into it as a clip (mixq's fusion passes saw Clip)
    assert sum(1 for n in convs if (n.attrs.get("activation") or {}).get("kind") == "clip") == 2
    assert g.metadata["source_format"] == "tflite"


def test_any_batch_size(tf, float_models):
    path = float_models["dense_after_flatten"]
    net = load_model(tflite_source(path))
    x = np.random.default_rng(2).standard_normal((3, 6, 5, 3)).astype(np.float32)
    ref = []
    for row in x:  # the model was converted at batch 1
        out, ins, _ = run_interpreter(tf, path, [row[None]])
        ref.append(out[0])
    got = net.execute({ins[0]["name"]: x})[0]
    assert got.shape == (3, 5) and max_rel_err(np.concatenate(ref), got) < TOL


@pytest.mark.parametrize("name", ["dynamic_batch", "squeeze"])
def test_dynamic_batch_model_at_batch_3(tf, float_models, name):
    path = float_models[name]
    net = load_model(tflite_source(path))
    ops = {o["op"] for o in net.graph.metadata["tflite_ops"]}
    assert ops >= {"RELU6", "TANH", "EXPAND_DIMS", "PAD"}
    assert ("SQUEEZE" in ops) == (name == "squeeze")
    x = np.random.default_rng(3).standard_normal((3, 6, 1, 4)).astype(np.float32)
    ref, ins, _ = run_interpreter(tf, path, [x])
    got = net.execute({ins[0]["name"]: x})
    for r, g in zip(ref, got):
        assert r.shape[0] == 3 and max_rel_err(r, g) < TOL


def test_shape_dict_by_signature_name(tf, float_models):
    path = float_models["conv_same_strided"]
    sig = load_model(tflite_source(path)).graph.metadata["tflite_signatures"][0]
    key = next(iter(sig["inputs"]))
    net = load_model(tflite_source(path, shape_dict={key: (2, 15, 17, 3)}))
    assert net.input_shapes()[sig["inputs"][key]] == (2, 15, 17, 3)
    with pytest.raises(ModelLoadError, match="no_such_input"):
        load_model(tflite_source(path, shape_dict={"no_such_input": (1, 15, 17, 3)}))


# ---- pre-quantized models ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def quant_models(tf, tmp_path_factory):
    keras = tf.keras
    L = keras.layers
    tf.keras.utils.set_random_seed(1)
    x = keras.Input((12, 12, 3), batch_size=1)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    y = L.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6", name="dw")(y)
    y = L.Conv2D(16, 1, name="pw")(y)
    y = L.GlobalAveragePooling2D()(y)
    y = L.Dense(5, name="fc")(y)
    m = keras.Model(x, y)
    rng = np.random.default_rng(3)
    calib = [rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32) for _ in range(16)]

    def representative():
        for c in calib:
            yield [c]

    d = tmp_path_factory.mktemp("tflite_quant")
    paths = {}
    for mode in ("int8", "int8_io", "16x8"):
        p = d / f"{mode}.tflite"
        p.write_bytes(to_tflite(tf, m, mode, representative))
        paths[mode] = p
    return paths, calib


def _per_channel_conv_weights(meta, net):
    qc = net.graph.metadata["tflite_quantized_constants"]
    found = []
    for tname, q in meta.items():
        if tname in qc and qc[tname].ndim == 4 and len(q["scale"]) > 1:
            found.append((tname, q))
    return found


@pytest.mark.parametrize("mode", ["int8", "int8_io", "16x8"])
def test_prequantized_model_records_quantization(tf, quant_models, mode):
    paths, calib = quant_models
    path = paths[mode]
    net = load_model(tflite_source(path))
    meta = net.graph.metadata["tflite_quantization"]
    import json

    json.dumps(meta)  # JSON-friendly
    convs = _per_channel_conv_weights(meta, net)
    assert len(convs) >= 3  # conv, depthwise, pointwise weights: per-channel
    qc = net.graph.metadata["tflite_quantized_constants"]
    for tname, q in convs:
        raw = qc[tname]
        assert raw.dtype == np.int8 and q["dtype"] == "int8" and set(q["zero_point"]) == {0}
        assert len(q["scale"]) == raw.shape[q["quantized_dimension"]]
        assert q["ir_quantized_dimension"] == 0  # OIHW / (C*M)1HW: output channels first
    act_types = {q["dtype"] for t, q in meta.items() if t not in qc}
    assert act_types == ({"int16"} if mode == "16x8" else {"int8"}) | ({"float32"} & act_types)
    io = net.graph.metadata["tflite_io"]
    assert len(io["inputs"]) == 1 and len(io["outputs"]) == 1

    x = calib[0]
    feed = x
    if mode == "int8_io":
        q = io["inputs"][0]["quantization"]
        feed = np.clip(np.round(x / q["scale"][0] + q["zero_point"][0]), -128, 127).astype(np.int8)
        assert net.graph.tensors[net.input_names[0]].dtype == np.int8
    ref, ins, outs = run_interpreter(tf, path, [feed])
    ref = ref[0].astype(np.float32)
    if mode == "int8_io":
        q = io["outputs"][0]["quantization"]
        ref = (ref - q["zero_point"][0]) * q["scale"][0]
    got = net.execute({ins[0]["name"]: feed})[0]
    # the float graph (dequantized weights, float activations) approximates the integer model
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert max_rel_err(ref, got) < 0.1


def test_quantize_dequantize_become_identity(quant_models):
    paths, _ = quant_models
    net = load_model(tflite_source(paths["int8"]))
    ops = [o["op"] for o in net.graph.metadata["tflite_ops"]]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert {n.op for n in net.graph.nodes} <= {"Transpose", "Conv", "GlobalAveragePool", "ReduceMean", "Gemm",
                                               "Reshape", "Flatten", "Identity"}


# ---- errors -------------------------------------------------------------------------------------

def test_unsupported_op_is_named(tf, tmp_path):
    keras = tf.keras
    x = keras.Input((4, 4, 2), batch_size=1)
    y = keras.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1))(x)
    p = tmp_path / "cumsum.tflite"
    p.write_bytes(to_tflite(tf, keras.Model(x, y)))
    with pytest.raises(UnsupportedOperatorError, match="CUMSUM") as e:
        load_model(tflite_source(p))
    assert e.value.op_type == "CUMSUM"


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*nope.tflite"):
        load_model(tflite_source(tmp_path / "nope.tflite"))


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(tflite_source(tmp_path))


@pytest.mark.parametrize("cut", [0, 6, 64, 0.5, 0.9])
def test_truncated_file(float_models, tmp_path, cut):
    data = float_models["mobilenet_block"].read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    p = tmp_path / f"truncated_{n}.tflite"
    p.write_bytes(data[:n])
    with pytest.raises(ModelLoadError, match=f"truncated_{n}.tflite"):
        load_model(tflite_source(p))


def test_random_bytes_and_wrong_type(tmp_path):
    p = tmp_path / "random.tflite"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match="random.tflite.*not a TFLite"):
        load_model(tflite_source(p))
    # random bytes behind a valid identifier: still a clean error
    data = bytearray(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data[4:8] = b"TFL3"
    p2 = tmp_path / "garbage.tflite"
    p2.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="garbage.tflite"):
        load_model(tflite_source(p2))
    p3 = tmp_path / "model.onnx.tflite"
    p3.write_bytes(b"\x08\x07\x12\x04test" + bytes(100))
    with pytest.raises(ModelLoadError, match="model.onnx.tflite"):
        load_model(tflite_source(p3))


def test_import_core_does_not_import_tensorflow_for_tflite(float_models):
    import subprocess
    import sys

    code = ("import sys; from core import load_model, tflite_source; "
            f"load_model(tflite_source({str(float_models['depthwise'])!r})); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
