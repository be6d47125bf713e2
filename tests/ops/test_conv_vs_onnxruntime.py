"""Conv variants through load_model (so fusion and the channels-last kernels are exercised)
against onnxruntime on the same ONNX file."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import load_model, onnx_source

CASES = {
    # name: (input shape, weight shape, attrs, activation)
    "3x3_pad1": ((2, 4, 9, 9), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1]), None),
    "3x3_stride2_relu": ((2, 4, 10, 10), (6, 4, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), "Relu"),
    "1x1_stride2": ((3, 8, 7, 7), (5, 8, 1, 1), dict(strides=[2, 2]), None),
    "depthwise_relu6": ((2, 6, 11, 11), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1]), "Clip"),
    "depthwise_stride2_dilated": (
        (2, 6, 12, 12),
        (6, 1, 3, 3),
        dict(group=6, pads=[2, 2, 2, 2], strides=[2, 2], dilations=[2, 2]),
        None,
    ),
    "depthwise_asym_pads": ((1, 3, 8, 9), (3, 1, 5, 3), dict(group=3, pads=[2, 0, 1, 1]), None),
    "grouped": ((2, 8, 6, 6), (12, 4, 3, 3), dict(group=2, pads=[1, 1, 1, 1]), "Relu"),
    "depth_multiplier": ((2, 4, 6, 6), (8, 1, 3, 3), dict(group=4), None),
    "same_upper_5x5": ((1, 3, 10, 7), (4, 3, 5, 5), dict(auto_pad="SAME_UPPER", strides=[2, 2]), None),
    "conv1d": ((2, 3, 17), (4, 3, 3), dict(pads=[1, 1]), None),
}


def build(x_shape, w_shape, attrs, activation, seed=0):
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(w_shape[0]).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs)]
    inits = [w, b]
    if activation == "Relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif activation == "Clip":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_matches_onnxruntime(case, tmp_path):
    import onnxruntime as ort

    x_shape, w_shape, attrs, activation = CASES[case]
    path = str(tmp_path / f"{case}.onnx")
    onnx.save(build(x_shape, w_shape, attrs, activation), path)
    net = load_model(onnx_source(path))
    assert [n.op for n in net.graph.nodes] == ["Conv"]  # bias and activation fused
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    (got,) = net.execute({"x": x})
    (want,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_scratch_padding_buffers_do_not_leak_between_pad_layouts():
    """Two depthwise convs whose padded shapes match but whose pads differ share no stale border."""
    import core.ops.conv as conv_module
    from core.ir.graph import Node

    x = np.random.default_rng(0).random((1, 3, 6, 6)).astype(np.float32)
    w = np.random.default_rng(1).random((3, 1, 3, 3)).astype(np.float32)
    top_heavy = Node("Conv", [], [], {"group": 3, "pads": [2, 2, 0, 0]})
    centred = Node("Conv", [], [], {"group": 3, "pads": [1, 1, 1, 1]})
    conv_module._local.__dict__.clear()
    fresh = np.array(conv_module.conv_forward(x, w, None, centred))
    conv_module.conv_forward(x, w, None, top_heavy)  # same padded shape (8x8), interior elsewhere
    again = np.array(conv_module.conv_forward(x, w, None, centred))
    np.testing.assert_array_equal(again, fresh)
