import numpy as np

from core.ir.passes import fuse_bias_activation, run_passes
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops, rand

C = 4


def conv_graph(tail_nodes, outputs, consts=None):
    consts = {"w": rand(C, 3, 3, 3, seed=5), "b": rand(C, 1, 1, seed=6), **(consts or {})}
    return make_graph({"x": (1, 3, 6, 6)}, [node("Conv", ["x", "w"], "t"), *tail_nodes], outputs, consts)


def test_matmul_plus_bias_becomes_gemm():
    g = make_graph(
        {"x": (2, 5)},
        [node("MatMul", ["x", "w"], "t"), node("Add", ["c", "t"], "y")],
        ["y"],
        {"w": rand(5, C, seed=1), "c": rand(1, C, seed=2)},
    )
    before = g.copy()
    assert run_passes(g, [fuse_bias_activation])
    assert ops(g) == ["Gemm"] and g.nodes[0].outputs == ["y"]
    assert g.constants[g.nodes[0].inputs[2]].shape == (C,)
    assert_same_outputs(before, g)


def test_matmul_on_a_3d_input_stays():
    g = make_graph(
        {"x": (2, 3, 5)},
        [node("MatMul", ["x", "w"], "t"), node("Add", ["t", "c"], "y")],
        ["y"],
        {"w": rand(5, C, seed=1), "c": rand(C, seed=2)},
    )
    assert not fuse_bias_activation(g)


def test_conv_bias_and_relu_fuse_into_the_conv():
    g = conv_graph([node("Add", ["t", "b"], "u"), node("Relu", ["u"], "y")], ["y"])
    before = g.copy()
    assert run_passes(g, [fuse_bias_activation])
    assert ops(g) == ["Conv"]
    conv = g.nodes[0]
    assert conv.attrs["activation"] == {"kind": "relu"} and conv.outputs == ["y"] and len(conv.inputs) == 3
    assert_same_outputs(before, g)


def test_gemm_and_clip_fuse_with_constant_bounds():
    g = make_graph(
        {"x": (2, 5)},
        [node("Gemm", ["x", "w", "c"], "t"), node("Clip", ["t", "lo", "hi"], "y")],
        ["y"],
        {"w": rand(5, C, seed=1), "c": rand(C, seed=2), "lo": np.float32(0.0), "hi": np.float32(0.3)},
    )
    before = g.copy()
    assert run_passes(g, [fuse_bias_activation])
    assert ops(g) == ["Gemm"]
    assert g.nodes[0].attrs["activation"] == {"kind": "clip", "min": 0.0, "max": np.float32(0.3).item()}
    assert_same_outputs(before, g)


def test_clip_without_max_fuses_with_an_infinite_bound():
    g = conv_graph([node("Clip", ["t", "lo"], "y")], ["y"], {"lo": np.float32(-0.1)})
    before = g.copy()
    assert run_passes(g, [fuse_bias_activation])
    assert g.nodes[0].attrs["activation"]["max"] == np.inf
    assert_same_outputs(before, g)


def test_no_fusion_when_the_intermediate_is_shared_or_an_output_or_bounds_are_dynamic():
    shared = conv_graph([node("Relu", ["t"], "y"), node("Sigmoid", ["t"], "z")], ["y", "z"])
    output = conv_graph([node("Relu", ["t"], "y")], ["y", "t"])
    dynamic = make_graph(
        {"x": (1, 3, 6, 6), "hi": ()},
        [node("Conv", ["x", "w"], "t"), node("Clip", ["t", "", "hi"], "y")],
        ["y"],
        {"w": rand(C, 3, 3, 3)},
    )
    for g in (shared, output, dynamic):
        assert not fuse_bias_activation(g)
        assert "activation" not in g.nodes[0].attrs


def test_a_second_activation_does_not_fuse_onto_a_fused_one():
    g = conv_graph([node("Relu", ["t"], "u"), node("Clip", ["u", "lo", "hi"], "y")], ["y"],
                   {"lo": np.float32(0), "hi": np.float32(0.5)})
    before = g.copy()
    assert run_passes(g, [fuse_bias_activation])
    assert ops(g) == ["Conv", "Clip"]
    assert_same_outputs(before, g)
