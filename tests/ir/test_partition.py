import re

from core.ir.passes import optimize, partition
from tests.ir.graphs import assert_same_outputs, make_graph, node, rand

NAME = re.compile(r"^(MLA|APU)_\d+/[a-z0-9_]+_\d+$")
C = 4


def classifier():
    """conv + bias + relu -> pool -> flatten -> gemm -> softmax, plus a tanh head (both APU ops)."""
    return make_graph(
        {"x": (1, 3, 8, 8)},
        [
            node("Conv", ["x", "w", "b"], "c", name="features.0", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            node("Relu", ["c"], "r", name="features.1"),
            node("MaxPool", ["r"], "p", name="pool", kernel_shape=[2, 2], strides=[2, 2]),
            node("GlobalAveragePool", ["p"], "g", name="gap"),
            node("Flatten", ["g"], "f", name="flatten", axis=1),
            node("Gemm", ["f", "fc.w", "fc.b"], "logits", name="fc", transB=1),
            node("Softmax", ["logits"], "probs", name="softmax", axis=-1),
            node("Tanh", ["logits"], "gate", name="tanh"),
        ],
        ["probs", "gate"],
        {"w": rand(C, 3, 3, 3), "b": rand(C, seed=1), "fc.w": rand(10, C, seed=2), "fc.b": rand(10, seed=3)},
    )


def test_names_follow_the_spec_and_softmax_tanh_run_on_the_apu():
    g = classifier()
    before = g.copy()
    optimize(g)
    names = [n.name for n in g.nodes]
    assert all(NAME.match(s) for s in names), names
    assert names[0] == "MLA_0/conv2d_add_relu_0"
    assert [int(s.rsplit("_", 1)[1]) for s in names] == list(range(len(names)))
    for n in g.nodes:
        assert n.name.startswith(n.segment + "/")
        if n.op in ("Softmax", "Tanh"):
            assert n.segment.startswith("APU_")
    assert {n.source_name for n in g.nodes if n.op in ("Softmax", "Tanh")} == {"softmax", "tanh"}
    assert g.nodes[0].source_name == "features.0"
    assert_same_outputs(before, g)


def test_names_are_identical_across_runs_and_partitioning_twice():
    a, b = optimize(classifier()), optimize(classifier())
    described = lambda g: [(n.name, n.segment, n.source_name) for n in g.nodes]  # noqa: E731
    assert described(a) == described(b)
    first = [(n.name, n.source_name) for n in a.nodes]
    assert not partition(a)
    assert [(n.name, n.source_name) for n in a.nodes] == first


def test_order_prefers_staying_in_the_current_segment():
    # Source order alternates MLA / APU; the partition groups the independent branches.
    g = make_graph(
        {"x": (1, 3, 4, 4)},
        [
            node("Conv", ["x", "w"], "a"),
            node("Tanh", ["a"], "sa"),
            node("Conv", ["x", "w"], "b"),
            node("Tanh", ["b"], "sb"),
            node("Add", ["sa", "sb"], "y"),
            node("Conv", ["y", "w2"], "z"),
        ],
        ["z"],
        {"w": rand(C, 3, 1, 1), "w2": rand(2, C, 1, 1, seed=1)},
    )
    before = g.copy()
    assert partition(g)
    segments = [n.segment for n in g.nodes]
    assert segments[:2] == ["MLA_0", "MLA_0"] and segments[2:4] == ["APU_0", "APU_0"]
    assert segments[-1] == "MLA_1"
    assert [n.op for n in g.nodes][:4] == ["Conv", "Conv", "Tanh", "Tanh"]
    assert_same_outputs(before, g)
