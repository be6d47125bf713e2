"""The passes on ONNX models as exporters write them, through load_model, against onnxruntime."""
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import load_model, onnx_source
from tests.ir.graphs import rand

NAME = re.compile(r"^(MLA|APU)_\d+/[a-z0-9_]+_\d+$")


def ort_run(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def torch_style_model():
    """Conv -> BatchNorm -> Relu -> Dropout -> x.view(x.size(0), -1) -> MatMul + Add -> Softmax."""
    inits = {
        "w": rand(4, 3, 3, 3), "bn.s": rand(4, seed=1, low=0.5, high=2), "bn.b": rand(4, seed=2),
        "bn.m": rand(4, seed=3), "bn.v": rand(4, seed=4, low=0.5, high=2),
        "fc.w": rand(4 * 6 * 6, 10, seed=5), "fc.b": rand(10, seed=6),
        "zero": np.array(0, np.int64), "axes0": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="/features/conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"], ["bn"], name="/features/bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="/features/relu"),
        helper.make_node("Dropout", ["r"], ["d"], name="/drop"),
        helper.make_node("Shape", ["d"], ["shape"], name="/Shape"),
        helper.make_node("Gather", ["shape", "zero"], ["n"], name="/Gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="/Unsqueeze"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="/Concat", axis=0),
        helper.make_node("Reshape", ["d", "target"], ["flat"], name="/Reshape"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["mm"], name="/fc/MatMul"),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"], name="/fc/Add"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "torchish",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pytorch_style_model_is_simplified_and_runs_at_any_batch(onnx_model_file):
    path = onnx_model_file(torch_style_model())
    net = load_model(onnx_source(path))
    rows = net.nodes()
    assert [r.op for r in rows] == ["Conv", "Reshape", "Gemm", "Softmax"]
    assert all(NAME.match(r.name) for r in rows)
    assert rows[0].name == "MLA_0/conv2d_add_relu_0" and rows[0].source_name == "/features/conv"
    assert rows[-1].segment.startswith("APU_") and rows[-1].source_name == "/Softmax"
    x = rand(5, 3, 6, 6, seed=9)
    (got,) = net.execute({"x": x})
    want = np.concatenate([ort_run(path, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [r.name for r in load_model(onnx_source(path)).nodes()] == [r.name for r in rows]


@pytest.mark.parametrize("keepdims", [0, 1])
def test_keras_style_global_average_pool(onnx_model_file, keepdims):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r", "axes"], ["y"], name="gap", keepdims=keepdims),
    ]
    graph = helper.make_graph(
        nodes, "kerasish",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )
    path = onnx_model_file(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    net = load_model(onnx_source(path))
    assert "ReduceMean" not in [r.op for r in net.nodes()] and "GlobalAveragePool" in [r.op for r in net.nodes()]
    x = rand(1, 8, 5, 5, seed=3)
    (got,) = net.execute({"x": x})
    np.testing.assert_allclose(got, ort_run(path, {"x": x})[0], rtol=1e-5, atol=1e-6)
