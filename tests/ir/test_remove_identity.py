import numpy as np

from core.ir.passes import remove_identity, run_passes
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops


def test_identity_and_dropout_in_the_middle_are_removed():
    g = make_graph(
        {"x": (2, 3)},
        [
            node("Relu", ["x"], "a"),
            node("Identity", ["a"], "b"),
            node("Dropout", ["b", "ratio"], "c"),
            node("Relu", ["c"], "y"),
        ],
        ["y"],
        {"ratio": np.array(0.5, np.float32)},
    )
    before = g.copy()
    assert run_passes(g, [remove_identity])
    assert ops(g) == ["Relu", "Relu"]
    assert g.nodes[1].inputs == ["a"]
    assert_same_outputs(before, g)


def test_an_identity_making_a_graph_output_renames_its_producer_output():
    g = make_graph(
        {"x": (2, 3)},
        [node("Relu", ["x"], "r"), node("Identity", ["r"], "y"), node("Relu", ["r"], "z")],
        ["y", "z"],
    )
    before = g.copy()
    assert run_passes(g, [remove_identity])
    assert ops(g) == ["Relu", "Relu"] and g.outputs == ["y", "z"]
    assert g.nodes[0].outputs == ["y"] and g.nodes[1].inputs == ["y"]
    assert_same_outputs(before, g)


def test_identities_that_must_keep_two_names_stay():
    # input -> output, and an output that is also another output's source
    g = make_graph(
        {"x": (2, 3)},
        [node("Identity", ["x"], "y"), node("Relu", ["x"], "r"), node("Identity", ["r"], "r2")],
        ["y", "r", "r2"],
    )
    assert not remove_identity(g)
    assert ops(g) == ["Identity", "Relu", "Identity"]


def test_dropout_whose_mask_is_used_stays():
    g = make_graph({"x": (2, 3)}, [node("Dropout", ["x"], ["y", "mask"])], ["y", "mask"])
    assert not remove_identity(g)


def test_identity_of_a_constant_graph_output_becomes_that_constant():
    g = make_graph({"x": (2,)}, [node("Identity", ["c"], "y"), node("Relu", ["x"], "r")], ["y", "r"],
                   {"c": np.arange(3, dtype=np.float32)})
    before = g.copy()
    assert run_passes(g, [remove_identity])
    assert ops(g) == ["Relu"] and g.constants["y"].tolist() == [0, 1, 2]
    assert_same_outputs(before, g)
