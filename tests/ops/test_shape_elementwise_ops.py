"""Tricky semantics and error cases of the elementwise, activation, normalization and shape ops.

``run_node`` drives one op the way the importer does (upgrade hook, shape inference, float
kernel) and checks that inference predicted the kernel's shape and dtype. Old-opset forms are
checked end to end against onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from core import ExecutionError, ShapeInferenceError, UnsupportedOperatorError, load_model, onnx_source
from core.ir.graph import Graph, Node, TensorInfo
from core.ir.shape_inference import infer_shapes
from core.ops.registry import get_op
from core.runtime.float_interpreter import run_graph


def run_node(op, inputs, attrs=None, const=(), opset=18, n_outputs=1):
    """Run one ``op`` node. ``inputs``: arrays (None = omitted); indices in ``const`` are constants."""
    g = Graph(op)
    g.opset = opset
    names, feeds = [], {}
    for k, value in enumerate(inputs):
        if value is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        value = np.asarray(value)
        if k in const:
            g.add_constant(name, value)
        else:
            g.inputs.append(name)
            g.tensors[name] = TensorInfo(value.shape, value.dtype)
            feeds[name] = value
    outs = [f"out{k}" for k in range(n_outputs)]
    node = Node(op, names, outs, dict(attrs or {}), name=f"my_{op.lower()}", source_name=f"my_{op.lower()}")
    g.nodes = [node]
    g.outputs = outs
    upgrade = get_op(op).upgrade
    if upgrade is not None:
        upgrade(node, g)
    infer_shapes(g)
    got = run_graph(g, feeds)
    results = [got[o] for o in outs]
    for o, r in zip(outs, results):
        assert (g.tensors[o].shape, g.tensors[o].dtype) == (r.shape, r.dtype), (
            f"{op}: inference disagrees with the kernel"
        )
    return results


def run1(op, inputs, attrs=None, const=(), opset=18):
    return run_node(op, inputs, attrs, const, opset)[0]


# ---- Reshape ----
def test_reshape_zero_copies_the_input_dimension_and_minus_one_is_inferred():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = run1("Reshape", [x, np.array([0, -1], np.int64)], const={1})
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    assert run1("Reshape", [x, np.array([-1, 0, 2], np.int64)], const={1}).shape == (4, 3, 2)


def test_reshape_errors_name_the_node():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ShapeInferenceError, match="my_reshape.*more than one -1"):
        run1("Reshape", [x, np.array([-1, -1], np.int64)], const={1})
    with pytest.raises(ShapeInferenceError, match="cannot reshape"):
        run1("Reshape", [x, np.array([5, -1], np.int64)], const={1})
    with pytest.raises(ShapeInferenceError, match="does not have"):
        run1("Reshape", [x, np.array([1, 0, 0, 0], np.int64)], const={1})
    with pytest.raises(ShapeInferenceError, match="both 0 and -1"):
        run1("Reshape", [x, np.array([0, -1], np.int64)], {"allowzero": 1}, const={1})


def test_a_shape_input_computed_at_run_time_is_rejected():
    with pytest.raises(UnsupportedOperatorError, match="my_reshape.*shape .input 1. must be a constant"):
        run1("Reshape", [np.zeros((2, 3), np.float32), np.array([3, 2], np.int64)])
    with pytest.raises(UnsupportedOperatorError, match="my_slice.*starts"):
        run1("Slice", [np.zeros((4,), np.float32), np.array([1]), np.array([3])])


# ---- Slice ----
SLICE_CASES = [  # starts, ends, axes, steps on a (5, 6) array
    ([4], [-100], [0], [-1]),  # reverse all of axis 0
    ([-1, 5], [-100, 0], [0, 1], [-2, -2]),
    ([-100], [100], [1], [-1]),  # start below the range clamps to 0: one element
    ([100], [1], [1], [-2]),  # start above the range clamps to the last index
    ([1, -4], [1000, -1], [-2, -1], [1, 3]),
    ([0], [2], None, None),
]


@pytest.mark.parametrize("starts, ends, axes, steps", SLICE_CASES)
def test_slice_matches_onnxruntime(starts, ends, axes, steps):
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    args = [x, np.array(starts, np.int64), np.array(ends, np.int64),
            None if axes is None else np.array(axes, np.int64), None if steps is None else np.array(steps, np.int64)]
    if steps is None:
        args = args[:4] if axes is not None else args[:3]
    got = run1("Slice", args, const={1, 2, 3, 4})
    want = _ort_single_node("Slice", args, {}, 18)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


_bound = st.integers(-9, 9) | st.sampled_from([-(2**63), 2**63 - 1])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, -1, -2]), _bound, _bound, st.sampled_from([-3, -2, -1, 1, 2, 4])),
                min_size=1, max_size=2, unique_by=lambda t: t[0] % 2))
def test_slice_any_bounds_match_onnxruntime(specs):
    x = np.arange(35, dtype=np.float32).reshape(5, 7)
    # onnxruntime reads ends=INT64_MAX with a negative step as "through index 0"; the ONNX spec
    # (and onnx's own shape inference) clamps it to dim-1, an empty slice. mixq follows the spec.
    assume(not any(e == 2**63 - 1 and step < 0 for _, _, e, step in specs))
    axes, starts, ends, steps = (np.array(v, np.int64) for v in zip(*specs))
    args = [x, starts, ends, axes, steps]
    want = _ort_single_node("Slice", args, {}, 18)
    got = run1("Slice", args, const={1, 2, 3, 4})
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_slice_clamps_a_negative_step_start_to_zero():
    # ONNX: with a negative step, starts clamp to [0, dim-1]; starts=-100 is index 0, not -1
    x = np.arange(5, dtype=np.float32)
    y = run1("Slice", [x, np.array([-100]), np.array([-200]), np.array([0]), np.array([-1])], const={1, 2, 3, 4})
    np.testing.assert_array_equal(y, [0.0])


def test_slice_rejects_step_zero_and_mismatched_lengths():
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(ShapeInferenceError, match="step 0"):
        run1("Slice", [x, np.array([0]), np.array([2]), np.array([0]), np.array([0])], const={1, 2, 3, 4})
    with pytest.raises(ShapeInferenceError, match="different lengths"):
        run1("Slice", [x, np.array([0, 1]), np.array([2])], const={1, 2})
    with pytest.raises(ShapeInferenceError, match="axes 2 is out of range for rank 2"):
        run1("Slice", [x, np.array([0]), np.array([2]), np.array([2])], const={1, 2, 3})


# ---- Pad ----
def test_pad_reflect_edge_wrap_and_negative_pads():
    x = np.array([[1, 2, 3, 4]], np.float32)
    pads = np.array([0, 2, 0, 1], np.int64)
    np.testing.assert_array_equal(run1("Pad", [x, pads], {"mode": "reflect"}, const={1}), [[3, 2, 1, 2, 3, 4, 3]])
    np.testing.assert_array_equal(run1("Pad", [x, pads], {"mode": "edge"}, const={1}), [[1, 1, 1, 2, 3, 4, 4]])
    np.testing.assert_array_equal(run1("Pad", [x, pads], {"mode": "wrap"}, const={1}), [[3, 4, 1, 2, 3, 4, 1]])
    # negative pads crop; constant_value fills; axes picks the padded dimensions
    y = run1(
        "Pad", [x, np.array([-1, 2], np.int64), np.array(9, np.float32), np.array([-1], np.int64)], const={1, 2, 3}
    )
    np.testing.assert_array_equal(y, [[2, 3, 4, 9, 9]])


def test_pad_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(UnsupportedOperatorError, match="my_pad.*mode 'mirror'"):
        run1("Pad", [x, np.array([1, 1, 1, 1])], {"mode": "mirror"}, const={1})
    with pytest.raises(ShapeInferenceError, match="pads .* should hold 2 x 2"):
        run1("Pad", [x, np.array([1, 1, 1])], const={1})
    with pytest.raises(
        ShapeInferenceError, match="my_pad.*reflect pads .2, 0. on axis 0 need more than its 2 elements"
    ):
        run1("Pad", [x, np.array([2, 0, 0, 0])], {"mode": "reflect"}, const={1})


# ---- Softmax ----
def test_softmax_old_opsets_normalize_over_the_flattened_trailing_dimensions():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    old = run1("Softmax", [x], {"axis": 1}, opset=11)
    new = run1("Softmax", [x], {"axis": 1}, opset=13)
    np.testing.assert_allclose(old.reshape(2, 12).sum(axis=1), 1, rtol=1e-6)  # one distribution per batch row
    np.testing.assert_allclose(new.sum(axis=1), 1, rtol=1e-6)  # one per (batch, last) pair
    assert not np.allclose(old, new)
    # opset < 13 default axis is 1, 13+ default is -1
    np.testing.assert_allclose(run1("Softmax", [x], opset=11), old, rtol=1e-6)
    np.testing.assert_allclose(run1("Softmax", [x], opset=13).sum(axis=-1), 1, rtol=1e-6)


def test_softmax_axis_out_of_range():
    with pytest.raises(ShapeInferenceError, match="my_softmax.*axis 3 is out of range"):
        run1("Softmax", [np.zeros((2, 3, 4), np.float32)], {"axis": 3})


# ---- elementwise ----
def test_integer_div_truncates_toward_zero_and_int64_stays_int64():
    a = np.array([7, -7, 7, -7], np.int64)
    b = np.array([2, 2, -2, -2], np.int64)
    y = run1("Div", [a, b])
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [3, -3, -3, 3])
    np.testing.assert_allclose(run1("Div", [a.astype(np.float32), b.astype(np.float32)]), [3.5, -3.5, -3.5, 3.5])


def test_integer_division_by_zero_is_an_execution_error_naming_the_node():
    with pytest.raises(ExecutionError, match="my_div.*division by zero"):
        run1("Div", [np.array([1, 2], np.int32), np.array([1, 0], np.int32)])


def test_elementwise_type_and_broadcast_errors():
    with pytest.raises(ShapeInferenceError, match="my_add.*different types"):
        run1("Add", [np.zeros(3, np.float32), np.zeros(3, np.int64)])
    with pytest.raises(ShapeInferenceError, match="do not broadcast"):
        run1("Mul", [np.zeros((2, 3), np.float32), np.zeros((4,), np.float32)])


def test_shape_arithmetic_stays_int64():
    x = np.zeros((2, 3, 8, 8), np.float32)
    shape = run1("Shape", [x], {"start": 1})
    assert shape.dtype == np.int64 and shape.tolist() == [3, 8, 8]
    picked = run1("Gather", [shape, np.array([-1], np.int64)], const={0, 1})
    prod = run1("Mul", [picked, np.array([2], np.int64)], const={0, 1})
    cat = run1("Concat", [np.array([1], np.int64), prod], {"axis": 0}, const={0, 1})
    assert cat.dtype == np.int64 and cat.tolist() == [1, 16]
    r = run1("Range", [np.array(10, np.int64), np.array(1, np.int64), np.array(-3, np.int64)], const={0, 1, 2})
    assert r.dtype == np.int64 and r.tolist() == [10, 7, 4]


# ---- activations ----
def test_activations_against_formulas():
    x = np.array([-100.0, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0], np.float32)
    np.testing.assert_allclose(run1("Sigmoid", [x]), 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(run1("HardSwish", [x]), x * np.clip(x / 6 + 0.5, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(run1("HardSigmoid", [x], {"alpha": 0.5, "beta": 0.25}), np.clip(0.5 * x + 0.25, 0, 1))
    np.testing.assert_allclose(run1("LeakyRelu", [x], {"alpha": 0.1}), np.where(x < 0, 0.1 * x, x), rtol=1e-6)
    y = run1("Clip", [x, None, np.array(1.5, np.float32)], const={2})  # min omitted
    np.testing.assert_array_equal(y, np.minimum(x, 1.5))


def test_clip_bounds_must_be_scalars():
    with pytest.raises(ShapeInferenceError, match="my_clip.*min must be a scalar"):
        run1("Clip", [np.zeros(3, np.float32), np.zeros(2, np.float32)], const={1})


# ---- normalization ----
def test_batchnorm_inference_including_1d_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    s, b, m = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    v = rng.uniform(0.5, 2, 3).astype(np.float32)
    y = run1("BatchNormalization", [x, s, b, m, v], {"epsilon": 1e-3}, const={1, 2, 3, 4})
    c = (1, 3, 1, 1)
    want = (x - m.reshape(c)) / np.sqrt(v.reshape(c) + 1e-3) * s.reshape(c) + b.reshape(c)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    x1 = rng.standard_normal(5).astype(np.float32)  # (N,) with C = 1
    y1 = run1("BatchNormalization", [x1, s[:1], b[:1], m[:1], v[:1]], const={1, 2, 3, 4})
    assert y1.shape == (5,)
    np.testing.assert_allclose(y1, (x1 - m[0]) / np.sqrt(v[0] + 1e-5) * s[0] + b[0], rtol=1e-5, atol=1e-6)


def test_batchnorm_training_mode_is_unsupported():
    x = np.zeros((1, 2, 2, 2), np.float32)
    p = np.ones(2, np.float32)
    with pytest.raises(UnsupportedOperatorError, match="my_batchnormalization.*training mode"):
        run1("BatchNormalization", [x, p, p, p, p], {"training_mode": 1}, const={1, 2, 3, 4})


def test_reduce_mean_axes_keepdims_and_noop():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = run1("ReduceMean", [x, np.array([-1, 0], np.int64)], {"keepdims": 0}, const={1})
    np.testing.assert_allclose(y, x.mean(axis=(0, 2)))
    assert run1("ReduceMean", [x]).shape == (1, 1, 1)  # no axes: all of them
    np.testing.assert_array_equal(
        run1("ReduceMean", [x, np.array([], np.int64)], {"noop_with_empty_axes": 1}, const={1}), x
    )
    with pytest.raises(ShapeInferenceError, match="my_reducemean.*repeat an axis"):
        run1("ReduceMean", [x, np.array([1, -2], np.int64)], const={1})


def test_reduce_mean_upgrade_moves_the_axes_attribute_to_an_input():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_allclose(run1("ReduceMean", [x], {"axes": [1]}, opset=13), x.mean(axis=1, keepdims=True))


# ---- shape ops ----
def test_squeeze_unsqueeze_transpose_concat_split():
    x = np.zeros((1, 3, 1, 2), np.float32)
    assert run1("Squeeze", [x]).shape == (3, 2)
    assert run1("Squeeze", [x, np.array([-2])], const={1}).shape == (1, 3, 2)
    assert run1("Unsqueeze", [np.zeros((3, 2), np.float32), np.array([3, 0], np.int64)], const={1}).shape == (
        1,
        3,
        2,
        1,
    )
    assert run1("Transpose", [np.zeros((2, 3, 4), np.float32)]).shape == (4, 3, 2)
    parts = run_node("Split", [np.arange(7, dtype=np.float32)], {"num_outputs": 3}, n_outputs=3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]
    parts = run_node("Split", [np.arange(5, dtype=np.float32), np.array([1, 4], np.int64)], const={1}, n_outputs=2)
    assert [p.shape for p in parts] == [(1,), (4,)]


def test_shape_op_errors_name_the_node():
    with pytest.raises(ShapeInferenceError, match="my_squeeze.*cannot squeeze axis 1"):
        run1("Squeeze", [np.zeros((1, 3), np.float32), np.array([1])], const={1})
    with pytest.raises(ShapeInferenceError, match="my_unsqueeze.*repeat an axis"):
        run1("Unsqueeze", [np.zeros(3, np.float32), np.array([0, 0])], const={1})
    with pytest.raises(ShapeInferenceError, match="my_transpose.*not a permutation"):
        run1("Transpose", [np.zeros((2, 3), np.float32)], {"perm": [0, 0]})
    with pytest.raises(ShapeInferenceError, match="my_concat.*axis 2 is out of range"):
        run1("Concat", [np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32)], {"axis": 2})
    with pytest.raises(ShapeInferenceError, match="my_concat.*do not concatenate"):
        run1("Concat", [np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)], {"axis": 0})
    with pytest.raises(ShapeInferenceError, match="my_split.*cannot split"):
        run_node("Split", [np.zeros(5, np.float32)], {"num_outputs": 4}, n_outputs=4)
    with pytest.raises(ShapeInferenceError, match="my_flatten.*axis 3 is out of range"):
        run1("Flatten", [np.zeros((2, 3), np.float32)], {"axis": 3})
    with pytest.raises(ShapeInferenceError, match="my_range.*delta is 0"):
        run1("Range", [np.array(0), np.array(3), np.array(0)], const={0, 1, 2})
    with pytest.raises(UnsupportedOperatorError, match="my_cast.*ONNX type 16"):
        run1("Cast", [np.zeros(2, np.float32)], {"to": TensorProto.BFLOAT16})


def test_gather_negative_and_out_of_range_indices():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(run1("Gather", [data, np.array([[-1, 0]], np.int64)], {"axis": 1}),
                                  data[:, [[3, 0]]])
    with pytest.raises(ExecutionError, match="my_gather.*index 4 is out of range for axis 1 of size 4"):
        run1("Gather", [data, np.array([4], np.int64)], {"axis": 1})


def test_constant_and_constant_of_shape():
    assert run1("Constant", [], {"value_ints": [1, 2]}).dtype == np.int64
    assert run1("Constant", [], {"value_float": 2.5}).tolist() == 2.5
    y = run1("ConstantOfShape", [np.array([2, 3], np.int64)], {"value": np.array([7], np.int32)}, const={0})
    assert y.dtype == np.int32 and y.shape == (2, 3) and (y == 7).all()
    assert run1("ConstantOfShape", [np.array([2], np.int64)], const={0}).dtype == np.float32
    with pytest.raises(UnsupportedOperatorError, match="my_constant.*needs value"):
        run1("Constant", [], {"value_string": "a"})


def test_range_float16_is_computed_in_float32():
    # stash_type=1 (default): 2048 + k in float16 steps, accumulated in float16, would stall at 2048
    r = run1(
        "Range", [np.array(2040, np.float16), np.array(2056, np.float16), np.array(2, np.float16)], const={0, 1, 2}
    )
    assert r.dtype == np.float16
    np.testing.assert_array_equal(r.astype(np.float32), np.arange(2040, 2056, 2, dtype=np.float32))


def test_dropout_inference_and_training_mode():
    x = np.arange(4, dtype=np.float32)
    y, mask = run_node("Dropout", [x, np.array(0.3, np.float32)], const={1}, n_outputs=2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()
    y, = run_node("Dropout", [x, np.array(0.0, np.float32), np.array(True)], const={1, 2})  # ratio 0: identity
    np.testing.assert_array_equal(y, x)
    with pytest.raises(UnsupportedOperatorError, match="my_dropout.*training_mode=True with ratio 0.5"):
        run_node("Dropout", [x, None, np.array(True)], const={2})
    with pytest.raises(UnsupportedOperatorError, match="my_dropout.*training_mode .input 2. must be a constant"):
        run_node("Dropout", [x, None, np.array(True)])


# ---- old-opset forms, end to end against onnxruntime ----
def _model(nodes, inputs, outputs, initializers, opset):
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _ort_single_node(op, args, attrs, opset):
    """onnxruntime's output for one node whose input 0 is fed and the others are initializers."""
    names = ["x"] + [f"c{k}" if a is not None else "" for k, a in enumerate(args) if k]
    inits = {n: np.asarray(a) for n, a in zip(names[1:], args[1:]) if a is not None}
    x = np.asarray(args[0])
    model = _model([helper.make_node(op, names, ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)],
                   [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(x.dtype), None)], inits, opset)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


OLD_FORMS = [  # op, attrs, constant inputs, opset
    ("Clip", {"min": -0.5, "max": 0.25}, [], 10),
    ("Clip", {"max": 0.25}, [], 10),
    ("Squeeze", {"axes": [2]}, [], 11),
    ("Unsqueeze", {"axes": [0, -1]}, [], 11),
    ("ReduceMean", {"axes": [-1, 1], "keepdims": 0}, [], 13),
    ("Pad", {"pads": [0, 1, 0, 0, 0, 2, 0, 1], "value": 1.5}, [], 10),
    ("Pad", {"pads": [0, 3, 0, 1, 0, 2, 0, 4], "mode": "reflect"}, [], 10),
    ("Softmax", {"axis": 1}, [], 11),
    ("Softmax", {}, [], 12),
    ("Slice", {"starts": [3, 1], "ends": [0, 100], "axes": [1, 3]}, [], 9),
]


@pytest.mark.parametrize(
    "op, attrs, consts, opset", OLD_FORMS, ids=[f"{o[0]}-opset{o[3]}-{i}" for i, o in enumerate(OLD_FORMS)]
)
def test_old_opset_forms_match_onnxruntime(tmp_path, op, attrs, consts, opset):
    # a Relu first, so the upgraded node's input is an intermediate tensor (not yet shape-inferred)
    x = np.random.default_rng(2).standard_normal((2, 4, 1, 5)).astype(np.float32)
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], **attrs)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {}, opset)
    path = tmp_path / "old.onnx"
    onnx.save(model, path)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = load_model(onnx_source(path)).execute({"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_split_attribute_form_matches_onnxruntime(tmp_path):
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    model = _model([helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[2, 3])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "ab"], {}, 11)
    path = tmp_path / "split.onnx"
    onnx.save(model, path)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = load_model(onnx_source(path)).execute({"x": x})
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
