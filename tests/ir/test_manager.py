import logging

import numpy as np

from core.ir.passes import DEFAULT_PIPELINE, optimize, run_passes
from tests.ir.graphs import assert_same_outputs, make_graph, node, rand


def relu_graph():
    return make_graph({"x": (1, 2)}, [node("Relu", ["x"], "y")], ["y"])


def test_passes_repeat_until_none_changes_the_graph():
    calls = []

    def changes_twice(graph):
        calls.append(len(calls))
        return len(calls) <= 2

    assert run_passes(relu_graph(), [changes_twice])
    assert len(calls) == 3  # two changing rounds, then one quiet round


def test_nothing_to_do_reports_no_change():
    g = relu_graph()
    assert not run_passes(g, DEFAULT_PIPELINE)
    assert [n.op for n in g.nodes] == ["Relu"]


def test_a_pass_that_never_settles_stops_at_max_iterations(caplog):
    calls = []

    def always(graph):
        calls.append(1)
        return True

    with caplog.at_level(logging.WARNING, logger="mixq"):
        assert run_passes(relu_graph(), [always], max_iterations=4)
    assert len(calls) == 4 and "fixpoint" in caplog.text


def test_after_a_pass_the_graph_is_sorted_pruned_and_shape_inferred():
    g = relu_graph()

    def add_dead_and_unsorted(graph):
        if len(graph.nodes) > 1:
            return False
        graph.nodes = [node("Relu", ["z"], "y2"), node("Relu", ["y"], "z"), *graph.nodes]
        graph.outputs.append("y2")
        return True

    run_passes(g, [add_dead_and_unsorted])
    assert [n.outputs[0] for n in g.nodes] == ["y", "z", "y2"]
    assert g.tensors["y2"].shape == (1, 2)


def test_optimize_folds_fuses_and_partitions_a_conv_bn_relu6_block():
    g = make_graph(
        {"x": (1, 3, 6, 6)},
        [
            node("Conv", ["x", "w"], "c"),
            node("Identity", ["c"], "c1"),
            node("BatchNormalization", ["c1", "s", "b", "m", "v"], "bn"),
            node("Clip", ["bn", "lo", "hi"], "y"),
            node("Shape", ["y"], "shape"),
        ],
        ["y", "shape"],
        {"w": rand(4, 3, 3, 3), "s": rand(4, low=0.5, high=2), "b": rand(4, seed=1), "m": rand(4, seed=2),
         "v": rand(4, seed=3, low=0.5, high=1), "lo": np.float32(0), "hi": np.float32(6)},
    )
    before = g.copy()
    assert optimize(g) is g
    assert [n.op for n in g.nodes] == ["Conv"]
    assert g.nodes[0].attrs["activation"] == {"kind": "clip", "min": 0.0, "max": 6.0}
    assert g.nodes[0].name == "MLA_0/conv2d_add_clip_0" and g.outputs == ["y", "shape"]
    assert_same_outputs(before, g)
