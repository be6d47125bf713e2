import numpy as np
import pytest

from core.ir.passes import DEFAULT_PIPELINE, batch_agnostic_reshape, run_passes
from core.runtime.float_interpreter import run_graph
from tests.ir.graphs import feeds_for, make_graph, node, rand


def flatten_graph(target, x_shape=(1, 2, 3, 4), **attrs):
    return make_graph({"x": x_shape}, [node("Reshape", ["x", "target"], "y", **attrs)], ["y"],
                      {"target": np.array(target, np.int64)})


@pytest.mark.parametrize("target, rest", [
    ([1, 24], (24,)), ([1, -1], (24,)), ([1, 6, 4], (6, 4)), ([1, 0, -1], (2, 12)),
])
def test_reshape_spelling_the_batch_copies_dim_0(target, rest):
    g = flatten_graph(target)
    assert batch_agnostic_reshape(g)
    new_target = g.constants[g.nodes[0].inputs[1]]
    assert new_target[0] == 0 and new_target[1:].tolist() == target[1:]
    x = rand(3, 2, 3, 4)
    (y,) = run_graph(g, {"x": x}).values()
    np.testing.assert_array_equal(y, x.reshape((3,) + rest))


@pytest.mark.parametrize("target, attrs", [([24], {}), ([2, 12], {}), ([1, 24], {"allowzero": 1})])
def test_reshapes_that_do_not_keep_the_batch_stay(target, attrs):
    g = flatten_graph(target, **attrs)
    assert not batch_agnostic_reshape(g)


def test_inputs_with_different_batches_leave_reshapes_alone():
    g = make_graph({"x": (1, 6), "z": (2, 3)},
                   [node("Reshape", ["x", "t"], "y"), node("Relu", ["z"], "r")], ["y", "r"],
                   {"t": np.array([1, 2, 3], np.int64)})
    assert not batch_agnostic_reshape(g)


def test_folded_size_0_view_runs_at_any_batch():
    # x.view(x.size(0), -1) exported at batch 1: constant folding bakes in 1, this pass undoes it.
    g = make_graph(
        {"x": (1, 3, 4, 4)},
        [
            node("Relu", ["x"], "r"),
            node("Shape", ["r"], "shape"),
            node("Gather", ["shape", "zero"], "n", axis=0),
            node("Unsqueeze", ["n", "axes0"], "n1"),
            node("Concat", ["n1", "minus1"], "target", axis=0),
            node("Reshape", ["r", "target"], "y"),
        ],
        ["y"],
        {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
    )
    run_passes(g, DEFAULT_PIPELINE)
    assert [n.op for n in g.nodes] == ["Relu", "Reshape"]
    feeds = feeds_for(g, batch=5)
    (y,) = run_graph(g, feeds).values()
    np.testing.assert_array_equal(y, np.maximum(feeds["x"], 0).reshape(5, -1))


def _tokens_batch_model(path, t=5, e=6, heads=2):
    """torch's MultiheadAttention layout, exported with a symbolic batch: (B, T, E) -> (T, B, E),
    ``view(T, B * heads, E / heads)``, back, then ``view(T * B, E)`` @ W -> ``view(T, B, E)``; every
    Reshape target computed from ``Shape`` as torch writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = {"i0": np.array([0], np.int64), "i1": np.array([1], np.int64), "h": np.array([heads], np.int64),
         "eh": np.array([e // heads], np.int64), "e": np.array([e], np.int64),
         "w": rng.standard_normal((e, e)).astype(np.float32)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["xt"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["tt"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["bb"], axis=0),
        helper.make_node("Mul", ["bb", "h"], ["bh"]),
        helper.make_node("Concat", ["tt", "bh", "eh"], ["s1"], axis=0),
        helper.make_node("Reshape", ["xt", "s1"], ["heads"]),         # (T, B*heads, E/heads)
        helper.make_node("Relu", ["heads"], ["hr"]),
        helper.make_node("Concat", ["tt", "bb", "e"], ["s2"], axis=0),
        helper.make_node("Reshape", ["hr", "s2"], ["back"]),          # (T, B, E)
        helper.make_node("Mul", ["tt", "bb"], ["tb"]),
        helper.make_node("Concat", ["tb", "e"], ["s3"], axis=0),
        helper.make_node("Reshape", ["back", "s3"], ["flat"]),        # (T*B, E)
        helper.make_node("MatMul", ["flat", "w"], ["m"]),
        helper.make_node("Reshape", ["m", "s2"], ["y3"]),             # (T, B, E)
        helper.make_node("Transpose", ["y3"], ["y"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", t, e])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", t, e])],
                              [numpy_helper.from_array(v, k) for k, v in c.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_batch_off_dim_0_runs_at_any_batch(tmp_path):
    # ViT's attention at batch 4 raised "cannot reshape (197, 4, 576) to [0, 1, 3, 192]": the
    # batch-1 targets were read as if dim 0 were the batch; the importer now finds the batch axis of
    # each Reshape target by importing at batch 2 as well
    import onnxruntime as ort

    from core import load_model, onnx_source

    path = str(tmp_path / "tokens.onnx")
    _tokens_batch_model(path)
    net = load_model(onnx_source(path))
    assert net.input_shapes()["x"] == (1, 5, 6)
    x = rand(4, 5, 6)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {"x": x})
    (got,) = net.execute({"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
