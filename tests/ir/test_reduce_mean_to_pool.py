import numpy as np
import pytest

from core.ir.passes import reduce_mean_to_pool, run_passes
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops


@pytest.mark.parametrize("axes, keepdims, want", [
    ([2, 3], 1, ["GlobalAveragePool"]),
    ([-1, -2], 0, ["GlobalAveragePool", "Flatten"]),
])
def test_spatial_reduce_mean_becomes_global_average_pool(axes, keepdims, want):
    g = make_graph({"x": (2, 3, 4, 5)}, [node("ReduceMean", ["x", "axes"], "y", keepdims=keepdims)], ["y"],
                   {"axes": np.array(axes, np.int64)})
    before = g.copy()
    assert run_passes(g, [reduce_mean_to_pool])
    assert ops(g) == want and g.outputs == ["y"] and g.nodes[-1].outputs == ["y"]
    assert g.tensors["y"].shape == before.tensors["y"].shape
    assert_same_outputs(before, g)


@pytest.mark.parametrize("shape, axes", [((2, 3, 4, 5), [1]), ((2, 3, 4, 5), [1, 2, 3]), ((2, 3, 4), [1, 2])])
def test_other_reductions_stay(shape, axes):
    g = make_graph({"x": shape}, [node("ReduceMean", ["x", "axes"], "y")], ["y"], {"axes": np.array(axes, np.int64)})
    assert not reduce_mean_to_pool(g)
    assert ops(g) == ["ReduceMean"]
