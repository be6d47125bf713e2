"""Acceptance of the engine foundation on real models: mixq's float execution of the zoo models
against onnxruntime on the same ONNX file and inputs, and their accuracy on real labelled data."""
import numpy as np
import pytest

from core import load_model, onnx_source, zoo


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over the largest |want|: the logit error relative to the logit scale."""
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def mobilenet(built_models):
    path = built_models["mobilenet_v2"]
    return path, load_model(onnx_source(path))


def test_mobilenet_v2_matches_onnxruntime_and_labels(mobilenet):
    path, net = mobilenet
    images = zoo.datasets.imagenet_samples()
    (logits,) = net.execute({"input": images.inputs})  # one batch of 20: also checks batch-agnostic import
    want = ort_run(path, images.inputs)
    err = max_relative_error(logits, want)
    print(f"MobileNetV2 mixq vs onnxruntime: max relative logit error {err:.2e}")
    assert err < 1e-4
    top1 = logits.argmax(1)
    assert int((top1 == images.labels).sum()) == 18
    assert np.array_equal(top1, want.argmax(1))


def test_mobilenet_v2_is_folded_fused_and_on_the_accelerator(mobilenet):
    _, net = mobilenet
    ops = [n.op for n in net.graph.nodes]
    assert "BatchNormalization" not in ops and "Clip" not in ops  # folded into convs / fused as ReLU6
    assert ops.count("Conv") == 52
    names = [n.name for n in net.nodes()]
    assert names[0] == "MLA_0/conv2d_add_clip_0"
    assert set(net.segments()) == {"MLA_0"}  # the whole network runs on the MLA


def test_mnist_cnn_on_opencv_digits(built_models):
    net = load_model(onnx_source(built_models["mnist_cnn"]))
    digits = zoo.datasets.digits()
    correct = 0
    for start in range(0, len(digits), 500):
        (logits,) = net.execute({"input": digits.inputs[start : start + 500]})
        correct += int((logits.argmax(1) == digits.labels[start : start + 500]).sum())
    acc = correct / len(digits)
    print(f"MNIST CNN in mixq on OpenCV digits.png: {acc:.4f} ({correct}/{len(digits)})")
    assert acc >= 0.94
    names = [n.name for n in net.nodes()]
    assert names[:2] == ["MLA_0/conv2d_add_relu_0", "MLA_0/max_pool2d_1"]
