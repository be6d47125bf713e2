import numpy as np
import pytest

from core.ir.passes import fuse_gelu, fuse_layer_norm, run_passes
from core.ir.shape_inference import infer_shapes
from tests.ir.graphs import assert_same_outputs, make_graph, node, ops, rand


def written_out_ln(square="pow", gamma=True, beta=True, gamma_first=False, axes=(-1,), shape=(2, 5, 8)):
    nodes = [
        node("ReduceMean", ["x", "axes"], "m"),
        node("Sub", ["x", "m"], "d"),
        node("Pow", ["d", "two"], "p") if square == "pow" else node("Mul", ["d", "d"], "p"),
        node("ReduceMean", ["p", "axes"], "v"),
        node("Add", ["v", "eps"], "e"),
        node("Sqrt", ["e"], "s"),
        node("Div", ["d", "s"], "n"),
    ]
    out = "n"
    norm = shape[min(a % len(shape) for a in axes):]
    consts = {"axes": np.array(axes, np.int64), "two": np.float32(2), "eps": np.float32(1e-5)}
    if gamma:
        nodes.append(node("Mul", ["g", out] if gamma_first else [out, "g"], "y"))
        consts["g"] = rand(*norm, seed=3, low=0.5, high=1.5)
        out = "y"
    if beta:
        nodes.append(node("Add", ["b", out], "z"))
        consts["b"] = rand(*norm, seed=4)
        out = "z"
    return make_graph({"x": shape}, nodes, [out], consts)


@pytest.mark.parametrize("kw", [
    {}, {"square": "mul"}, {"gamma": False, "beta": False}, {"beta": False, "gamma_first": True},
    {"axes": (-2, -1)}, {"axes": (1, 2)},
])
def test_written_out_layer_norm_becomes_one_node(kw):
    g = written_out_ln(**kw)
    before = g.copy()
    assert run_passes(g, [fuse_layer_norm])
    assert ops(g) == ["LayerNormalization"]
    ln = g.nodes[0]
    assert ln.outputs == before.outputs and ln.attrs["epsilon"] == pytest.approx(1e-5)
    assert ln.attrs["axis"] == min(a % 3 for a in kw.get("axes", (-1,)))
    assert_same_outputs(before, g, rtol=1e-5, atol=1e-5)


def test_layer_norm_over_a_leading_axis_is_not_fused():
    g = written_out_ln(axes=(1,), gamma=False, beta=False, shape=(2, 5, 8))
    assert not fuse_layer_norm(g)
    assert "LayerNormalization" not in ops(g)


def test_centered_value_read_elsewhere_is_not_fused():
    g = written_out_ln(gamma=False, beta=False)
    g.outputs.append("d")
    assert not fuse_layer_norm(g)


def test_per_token_gamma_is_not_a_layer_norm_scale():
    g = written_out_ln(beta=False)
    g.constants["g"] = rand(5, 1, seed=5)    # varies over tokens, not the normalized axis
    g.tensors["g"].value = g.constants["g"]
    infer_shapes(g)
    before = g.copy()
    run_passes(g, [fuse_layer_norm])
    assert ops(g) == ["LayerNormalization", "Mul"]
    assert_same_outputs(before, g, rtol=1e-5, atol=1e-5)


SQRT2 = np.float32(1.4142135381698608)


@pytest.mark.parametrize("form", ["torch", "half_first", "half_of_c", "mul_inv_sqrt2"])
def test_erf_gelu_becomes_one_node(form):
    scaled = (node("Mul", ["x", "inv_sqrt2"], "a") if form == "mul_inv_sqrt2" else node("Div", ["x", "sqrt2"], "a"))
    nodes = [scaled, node("Erf", ["a"], "e"), node("Add", ["one", "e"], "c")]
    if form in ("torch", "mul_inv_sqrt2"):
        nodes += [node("Mul", ["x", "c"], "xc"), node("Mul", ["xc", "half"], "y")]
    elif form == "half_first":
        nodes += [node("Mul", ["half", "x"], "hx"), node("Mul", ["hx", "c"], "y")]
    else:
        nodes += [node("Mul", ["c", "half"], "ch"), node("Mul", ["x", "ch"], "y")]
    consts = {"sqrt2": SQRT2, "inv_sqrt2": np.float32(1 / np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}
    g = make_graph({"x": (3, 7)}, nodes, ["y"], consts)
    before = g.copy()
    assert run_passes(g, [fuse_gelu])
    assert ops(g) == ["Gelu"] and g.nodes[0].inputs == ["x"] and g.nodes[0].outputs == ["y"]
    assert_same_outputs(before, g, {"x": rand(3, 7, seed=2, low=-4, high=4)}, rtol=1e-6, atol=1e-6)


def test_other_erf_expressions_stay():
    nodes = [node("Div", ["x", "sqrt2"], "a"), node("Erf", ["a"], "e"), node("Add", ["e", "two"], "c"),
             node("Mul", ["x", "c"], "xc"), node("Mul", ["xc", "half"], "y")]
    g = make_graph({"x": (3, 7)}, nodes, ["y"], {"sqrt2": SQRT2, "two": np.float32(2), "half": np.float32(0.5)})
    assert not fuse_gelu(g)
    assert "Gelu" not in ops(g)
