import numpy as np
import pytest

from core.ir.passes import fold_batchnorm, run_passes
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops, rand

C = 4


def bn_params(prefix="bn", seed=0):
    return {
        f"{prefix}.scale": rand(C, seed=seed, low=0.5, high=2.0),
        f"{prefix}.bias": rand(C, seed=seed + 1),
        f"{prefix}.mean": rand(C, seed=seed + 2),
        f"{prefix}.var": rand(C, seed=seed + 3, low=0.1, high=2.0),
    }


def bn(x, y, prefix="bn"):
    return node("BatchNormalization", [x, f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"], y,
                epsilon=1e-3)


def conv_graph(tail_nodes, outputs, extra_consts=None, bias=True):
    consts = {"w": rand(C, 3, 3, 3, seed=5), **bn_params(), **(extra_consts or {})}
    inputs = ["x", "w"]
    if bias:
        consts["b"] = rand(C, seed=6)
        inputs.append("b")
    return make_graph({"x": (1, 3, 6, 6)}, [node("Conv", inputs, "t", pads=[1, 1, 1, 1]), *tail_nodes], outputs, consts)


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_after_conv_folds_into_weights_and_bias(bias):
    g = conv_graph([bn("t", "y")], ["y"], bias=bias)
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert ops(g) == ["Conv"] and g.nodes[0].outputs == ["y"] and len(g.nodes[0].inputs) == 3
    assert_same_outputs(before, g)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_after_gemm_folds(trans_b):
    w = rand(5, C, seed=3)
    g = make_graph(
        {"x": (2, 5)},
        [node("Gemm", ["x", "w", "c"], "t", transB=trans_b, alpha=0.5, beta=2.0), bn("t", "y")],
        ["y"],
        {"w": w.T.copy() if trans_b else w, "c": rand(C, seed=4), **bn_params()},
    )
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert ops(g) == ["Gemm"]
    assert_same_outputs(before, g)


def test_decomposed_batchnorm_chain_folds_to_a_fixpoint():
    g = conv_graph(
        [
            node("Mul", ["t", "s"], "t1"),  # per-channel, NCHW-broadcast
            node("Add", ["sh", "t1"], "t2"),  # constant first
            node("Sub", ["t2", "k"], "t3"),  # scalar
            node("Div", ["t3", "d"], "t4"),
            node("Sub", ["k", "t4"], "y"),  # constant minus x: negates the weights
        ],
        ["y"],
        {"s": rand(1, C, 1, 1, seed=7), "sh": rand(C, 1, 1, seed=8), "k": np.float32(0.25),
         "d": rand(C, 1, 1, seed=9, low=1, high=2)},
    )
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert ops(g) == ["Conv"] and g.outputs == ["y"]
    assert_same_outputs(before, g)


def test_mul_that_is_not_per_channel_stays():
    g = conv_graph([node("Mul", ["t", "m"], "y")], ["y"], {"m": rand(1, 1, 6, 6, seed=2)})
    assert not fold_batchnorm(g)
    assert ops(g) == ["Conv", "Mul"]


def test_batchnorm_after_a_shared_conv_output_is_decomposed():
    g = conv_graph([bn("t", "y"), node("Relu", ["t"], "z")], ["y", "z"])
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert sorted(ops(g)) == ["Add", "Conv", "Mul", "Relu"]
    assert "BatchNormalization" not in ops(g)
    mul = next(n for n in g.nodes if n.op == "Mul")
    assert g.constants[mul.inputs[1]].shape == (C, 1, 1) and mul.source_name == "y"
    assert_same_outputs(before, g)


def test_batchnorm_after_an_input_is_decomposed_and_a_shared_weight_is_not_changed():
    # Two convs share weight w; only the second is followed by a batch-norm.
    g = make_graph(
        {"x": (1, 3, 5, 5)},
        [
            bn("x", "xn", prefix="in"),
            node("Conv", ["xn", "w"], "a"),
            node("Conv", ["x", "w"], "t"),
            bn("t", "b"),
            node("Add", ["a", "b"], "y"),
        ],
        ["y"],
        {"w": rand(C, 3, 1, 1, seed=1), **bn_params(),
         **{k.replace("bn.", "in."): v[:3] for k, v in bn_params().items()}},
    )
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert sorted(ops(g)) == ["Add", "Add", "Conv", "Conv", "Mul"]
    assert_same_outputs(before, g)


def test_matmul_scale_folds_but_a_shift_cannot():
    g = make_graph(
        {"x": (3, 5)},
        [node("MatMul", ["x", "w"], "t"), node("Mul", ["t", "s"], "u"), node("Add", ["u", "c"], "y")],
        ["y"],
        {"w": rand(5, C, seed=1), "s": rand(C, seed=2), "c": rand(C, seed=3)},
    )
    before = g.copy()
    assert run_passes(g, [fold_batchnorm])
    assert ops(g) == ["MatMul", "Add"]
    assert_same_outputs(before, g)
