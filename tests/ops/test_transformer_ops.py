"""The transformer / detection-head ops (LayerNormalization, Gelu, Erf, Pow, Sqrt, Mod, Equal,
Not, And, Or, Where, Expand, Tile, ScatterND, Max, Min) through load_model against onnxruntime,
and mixq's errors for what they cannot do."""
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import load_model, onnx_source
from core.errors import ExecutionError, UnsupportedOperatorError
from core.ops.arith import erf

T = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
     np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}


def one_node(op, feeds: dict, consts: dict, n_out=1, opset=17, **attrs):
    ins = list(feeds) + list(consts)
    outs = [f"y{k}" for k in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op, ins, outs, name=f"/{op}", **attrs)], op,
        [helper.make_tensor_value_info(k, T[v.dtype], list(v.shape)) for k, v in feeds.items()],
        [helper.make_empty_tensor_value_info(o) for o in outs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compare(model, feeds, tmp_path, rtol=1e-6, atol=1e-6):
    import onnxruntime as ort

    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    got = load_model(onnx_source(path)).execute(feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


rng = np.random.default_rng(0)
X = rng.standard_normal((2, 5, 8)).astype(np.float32) * 3


def test_erf_matches_math_erf_to_float64_precision():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.logspace(-30, 1, 300), -np.logspace(-30, 1, 300), [0.0]])
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)) < 1e-13
    assert erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0] and np.isnan(erf(np.array([np.nan])))[0]


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
def test_layer_normalization(axis, tmp_path):
    shape = X.shape[axis:] if axis != 0 else X.shape
    scale = rng.standard_normal(shape).astype(np.float32)
    bias = rng.standard_normal(shape).astype(np.float32)
    m = one_node("LayerNormalization", {"x": X}, {"s": scale, "b": bias}, n_out=3, axis=axis, epsilon=1e-3)
    compare(m, {"x": X}, tmp_path, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate, tmp_path):
    compare(one_node("Gelu", {"x": X}, {}, opset=20, approximate=approximate), {"x": X}, tmp_path, rtol=1e-6)


@pytest.mark.parametrize("op, consts, attrs", [
    ("Erf", {}, {}),
    ("Sqrt", {}, {}),          # NaN below zero, as onnxruntime
    ("Pow", {"e": np.float32(2.0)}, {}),
    ("Pow", {"e": np.array([0.5, 1.0, 3.0, 2.0, -1.0, 0.0, 2.0, 1.5], np.float32)}, {}),
    ("Mod", {"d": np.float32(1.7)}, {"fmod": 1}),
    ("Max", {"m": np.float32(0.5)}, {}),
    ("Min", {"m": np.zeros((5, 1), np.float32)}, {}),
])
def test_float_elementwise(op, consts, attrs, tmp_path):
    x = np.abs(X) if op == "Pow" else X
    compare(one_node(op, {"x": x}, consts, **attrs), {"x": x}, tmp_path, rtol=1e-6)


def test_integer_mod_takes_the_divisors_sign(tmp_path):
    a = np.array([-7, -3, 0, 3, 7, 9], np.int64)
    got = compare(one_node("Mod", {"a": a}, {"b": np.array([3, -3, 2, -2, 4, -4], np.int64)}), {"a": a}, tmp_path)
    assert got[0].tolist() == [2, 0, 0, -1, 3, -3]


def test_float_mod_without_fmod_is_an_error(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(one_node("Mod", {"x": X}, {"d": np.float32(2)}), path)
    with pytest.raises(Exception, match="fmod=1"):
        load_model(onnx_source(path))


def test_masks_equal_not_and_or_where(tmp_path):
    a = rng.integers(0, 3, (4, 6)).astype(np.int64)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Equal", ["a", "zero"], ["eq"]),
        helper.make_node("Not", ["eq"], ["ne"]),
        helper.make_node("Less", ["x", "fzero"], ["neg"]),
        helper.make_node("And", ["ne", "neg"], ["both"]),
        helper.make_node("Or", ["eq", "neg"], ["either"]),
        helper.make_node("GreaterOrEqual", ["a", "one"], ["ge"]),
        helper.make_node("Where", ["both", "minus100", "x"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "masks", [helper.make_tensor_value_info("a", TensorProto.INT64, [4, 6]),
                                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                              [helper.make_empty_tensor_value_info(o)
                               for o in ("y", "either", "ge")],
                              [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                               numpy_helper.from_array(np.array(1, np.int64), "one"),
                               numpy_helper.from_array(np.array(0, np.float32), "fzero"),
                               numpy_helper.from_array(np.array(-100, np.float32), "minus100")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y, either, ge = compare(m, {"a": a, "x": x}, tmp_path)
    assert either.dtype == np.bool_ and np.any(y == -100) and np.any(y != -100)


def test_expand_tile_scatter_nd(tmp_path):
    x = rng.standard_normal((3, 1, 4)).astype(np.float32)
    compare(one_node("Expand", {"x": x}, {"s": np.array([2, 1, 5, 1], np.int64)}), {"x": x}, tmp_path)
    compare(one_node("Tile", {"x": x}, {"r": np.array([1, 3, 2], np.int64)}), {"x": x}, tmp_path)
    data = rng.standard_normal((4, 4, 3)).astype(np.float32)
    idx = np.array([[[0, 1], [3, 3]], [[-1, 0], [2, 2]]], np.int64)
    upd = rng.standard_normal((2, 2, 3)).astype(np.float32)
    for reduction in ("none", "add", "max"):
        compare(one_node("ScatterND", {"d": data}, {"i": idx, "u": upd}, opset=18, reduction=reduction),
                {"d": data}, tmp_path)


def test_expand_needs_a_constant_shape(tmp_path):
    s = np.array([2, 3, 4], np.int64)
    path = str(tmp_path / "m.onnx")
    onnx.save(one_node("Expand", {"x": X[:1, :1, :4].reshape(1, 4), "s": s}, {}), path)
    with pytest.raises(UnsupportedOperatorError, match=r"Expand.*/Expand.*must be a constant"):
        load_model(onnx_source(path))


def test_unknown_gelu_approximation_names_the_node(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(one_node("Gelu", {"x": X}, {}, opset=20, approximate="erf"), path)
    with pytest.raises(UnsupportedOperatorError, match=r"Gelu.*/Gelu"):
        load_model(onnx_source(path))


def test_scatter_nd_index_out_of_range_is_an_execution_error(tmp_path):
    path = str(tmp_path / "m.onnx")
    data = np.zeros((2, 3), np.float32)
    onnx.save(one_node("ScatterND", {"d": data}, {"i": np.array([[2]], np.int64), "u": np.ones((1, 3), np.float32)}),
              path)
    net = load_model(onnx_source(path))
    with pytest.raises(ExecutionError, match="out of range"):
        net.execute({"d": data})
