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
