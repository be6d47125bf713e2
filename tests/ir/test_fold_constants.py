import numpy as np
import pytest

from core.errors import MixqError
from core.ir.graph import Graph
from core.ir.passes import fold_constants, run_passes
from core.runtime.float_interpreter import run_graph
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops, rand


def test_folds_all_constant_nodes_and_keeps_the_rest():
    g = make_graph(
        {"x": (1, 4)},
        [node("Add", ["a", "b"], "ab"), node("Mul", ["ab", "c"], "abc"), node("Mul", ["x", "abc"], "y")],
        ["y"],
        {"a": rand(4, seed=1), "b": rand(4, seed=2), "c": np.float32(3.0)},
    )
    before = g.copy()
    assert fold_constants(g)
    assert ops(g) == ["Mul"]
    np.testing.assert_allclose(g.constants["abc"], (before.constants["a"] + before.constants["b"]) * 3, rtol=1e-6)
    assert_same_outputs(before, g)
    assert not fold_constants(g)  # a fixpoint: nothing left to fold


def test_folds_a_pytorch_style_shape_subgraph():
    # x.view(x.size(0), -1), as torch.onnx exports it
    g = make_graph(
        {"x": (1, 3, 4, 4)},
        [
            node("Shape", ["x"], "shape"),
            node("Gather", ["shape", "zero"], "n", axis=0),
            node("Unsqueeze", ["n", "axes0"], "n1"),
            node("Concat", ["n1", "minus1"], "target", axis=0),
            node("Reshape", ["x", "target"], "y"),
            node("Relu", ["y"], "out"),
        ],
        ["out"],
        {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)},
    )
    before = g.copy()
    assert run_passes(g, [fold_constants])
    assert ops(g) == ["Reshape", "Relu"]
    assert g.constants[g.nodes[0].inputs[1]].tolist() == [1, -1]
    assert_same_outputs(before, g)


def test_shape_with_start_end_folds_to_the_sliced_shape():
    g = make_graph({"x": (2, 3, 5, 7)}, [node("Shape", ["x"], "s", start=1, end=-1)], ["s"])
    assert fold_constants(g)
    assert g.constants["s"].tolist() == [3, 5]


def test_a_graph_output_that_becomes_constant_keeps_its_name():
    g = make_graph(
        {"x": (2, 3)},
        [node("Shape", ["x"], "s"), node("Relu", ["x"], "r")],
        ["s", "r"],
    )
    run_passes(g, [fold_constants])
    assert g.outputs == ["s", "r"] and ops(g) == ["Relu"]
    out = run_graph(g, {"x": np.ones((2, 3), np.float32)})
    assert out["s"].tolist() == [2, 3]


def test_a_failing_fold_names_the_node():
    g = Graph("bad")
    g.add_constant("a", np.ones(2, np.float32))
    g.add_constant("b", np.ones(3, np.float32))
    g.nodes = [node("Add", ["a", "b"], "y", name="the_bad_add")]
    g.outputs = ["y"]
    with pytest.raises(MixqError, match="the_bad_add"):
        fold_constants(g)
