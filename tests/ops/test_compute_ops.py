"""Compute-heavy ops (Conv, ConvTranspose, Gemm, MatMul, pools, Resize, Upsample) against
onnxruntime, one single-node ONNX model per variant; plus their error cases, MLA placement and
partition names.

``run_kernel`` drives an op's registry entry directly: ``check``, ``infer`` (which must predict
the kernel's shape and dtype) and the float kernel ``run``.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from core import ShapeInferenceError, UnsupportedOperatorError, load_model, onnx_source
from core.ir.graph import Graph, Node, TensorInfo
from core.ops import conv as conv_module
from core.ops.registry import get_op

OPSET = 19


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def onnxruntime_run(op, inputs, attrs, opset=OPSET, activation=None, n_outputs=1):
    names = [f"in{k}" if a is not None else "" for k, a in enumerate(inputs)]
    outs = [f"out{k}" for k in range(n_outputs)]
    nodes = [helper.make_node(op, names, outs, **attrs)]
    if activation is not None:  # what the fusion pass folds into attrs["activation"]
        nodes[0].output[0] = "pre"
        if activation["kind"] == "relu":
            nodes.append(helper.make_node("Relu", ["pre"], ["out0"]))
        else:
            nodes.append(helper.make_node("Clip", ["pre", "lo", "hi"], ["out0"]))
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in zip(names, inputs) if n]
    inits = []
    if activation is not None and activation["kind"] == "clip":
        inits = [onnx.numpy_helper.from_array(np.float32(activation["min"]), "lo"),
                 onnx.numpy_helper.from_array(np.float32(activation["max"]), "hi")]
    graph = helper.make_graph(nodes, op, ins, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {n: a for n, a in zip(names, inputs) if n})


def run_kernel(op, inputs, attrs=None, const=(), activation=None):
    """check + infer + run of one ``op`` node; ``const``: input indices given as constants."""
    names = [f"in{k}" if a is not None else "" for k, a in enumerate(inputs)]
    node = Node(op, names, ["out0"], dict(attrs or {}), name=f"my_{op.lower()}", source_name=f"my_{op.lower()}")
    if activation is not None:
        node.attrs["activation"] = activation
    opdef = get_op(op)
    infos = [None if a is None else TensorInfo.of(a, constant=k in const) for k, a in enumerate(inputs)]
    if opdef.check is not None:
        opdef.check(node, infos)
    (info,) = opdef.infer(node, infos)
    (y,) = opdef.run(node, list(inputs))
    assert (info.shape, info.dtype) == (y.shape, y.dtype), f"{op}: inference says {info.shape} {info.dtype}"
    return y


def assert_matches(got, want, rtol=1e-5):
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(1.0, float(np.abs(want).max())))


def check_against_onnxruntime(op, inputs, attrs=None, const=(), activation=None, opset=OPSET):
    attrs = dict(attrs or {})
    (want,) = onnxruntime_run(op, inputs, attrs, opset, activation)
    got = run_kernel(op, inputs, attrs, const, activation)
    assert_matches(got, want)
    return got


# ---- Conv --------------------------------------------------------------------------------
RELU = {"kind": "relu"}
RELU6 = {"kind": "clip", "min": 0.0, "max": 6.0}
CONV_CASES = {
    # name: (x shape, w shape, bias?, attrs, fused activation)
    "1x1": ((2, 8, 5, 6), (4, 8, 1, 1), True, {}, None),
    "1x1_stride2_no_bias": ((2, 8, 7, 7), (5, 8, 1, 1), False, {"strides": [2, 2]}, None),
    "3x3_pads_relu": ((2, 4, 9, 9), (6, 4, 3, 3), True, {"pads": [1, 1, 1, 1]}, RELU),
    "3x3_stride2_relu6": ((3, 3, 16, 16), (8, 3, 3, 3), True, {"pads": [1, 1, 1, 1], "strides": [2, 2]}, RELU6),
    "asym_pads_rect_kernel": ((1, 3, 8, 9), (4, 3, 2, 4), True, {"pads": [0, 2, 1, 1]}, None),
    "dilated": ((2, 3, 12, 11), (4, 3, 3, 3), True, {"dilations": [2, 3], "pads": [2, 1, 2, 1]}, None),
    "strided_dilated": ((1, 2, 15, 15), (3, 2, 3, 2), False, {"dilations": [2, 2], "strides": [3, 2]}, None),
    "same_upper": ((1, 3, 10, 7), (4, 3, 5, 5), True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, None),
    "same_lower": ((1, 3, 10, 7), (4, 3, 4, 4), True, {"auto_pad": "SAME_LOWER", "strides": [2, 3]}, None),
    "valid": ((1, 3, 10, 7), (4, 3, 3, 3), True, {"auto_pad": "VALID", "strides": [2, 2]}, None),
    "grouped": ((2, 8, 6, 6), (12, 4, 3, 3), True, {"group": 2, "pads": [1, 1, 1, 1]}, RELU),
    "grouped_1x1": ((2, 6, 5, 5), (9, 2, 1, 1), True, {"group": 3}, None),
    "depthwise_relu6": ((2, 6, 11, 11), (6, 1, 3, 3), True, {"group": 6, "pads": [1, 1, 1, 1]}, RELU6),
    "depthwise_stride2": (
        (3, 5, 12, 12),
        (5, 1, 3, 3),
        True,
        {"group": 5, "pads": [1, 1, 1, 1], "strides": [2, 2]},
        None,
    ),
    "depthwise_no_pad": ((2, 4, 9, 9), (4, 1, 3, 3), False, {"group": 4}, None),
    "depthwise_dilated_asym": (
        (1, 3, 10, 9),
        (3, 1, 5, 3),
        True,
        {"group": 3, "pads": [2, 0, 1, 1], "dilations": [1, 2]},
        None,
    ),
    "depthwise_stride_w_only": (
        (2, 4, 9, 10),
        (4, 1, 3, 3),
        True,
        {"group": 4, "strides": [1, 2], "pads": [1, 1, 1, 1]},
        None,
    ),
    "depthwise_stride_h_only": (
        (2, 4, 9, 10),
        (4, 1, 3, 3),
        True,
        {"group": 4, "strides": [2, 1], "pads": [1, 1, 1, 1]},
        None,
    ),
    "depthwise_same_upper": (
        (1, 4, 9, 8),
        (4, 1, 3, 3),
        True,
        {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
        None,
    ),
    "depth_multiplier": ((2, 4, 6, 6), (8, 1, 3, 3), True, {"group": 4, "pads": [1, 1, 1, 1]}, None),
    "conv1d": ((2, 3, 17), (4, 3, 3), True, {"pads": [1, 2], "strides": [2]}, RELU),
    "conv1d_depthwise": ((2, 4, 17), (4, 1, 5), True, {"group": 4, "pads": [2, 2]}, None),
    "conv3d": ((1, 2, 5, 6, 7), (3, 2, 3, 3, 2), True, {"pads": [1, 0, 1, 1, 1, 0], "strides": [1, 2, 1]}, None),
    "conv3d_depthwise": ((1, 3, 5, 6, 7), (3, 1, 3, 3, 3), False, {"group": 3, "pads": [1] * 6}, None),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_matches_onnxruntime(case):
    x_shape, w_shape, bias, attrs, activation = CONV_CASES[case]
    inputs = [rand(*x_shape), rand(*w_shape, seed=1)] + ([rand(w_shape[0], seed=2)] if bias else [])
    y = check_against_onnxruntime("Conv", inputs, attrs, const={1, 2}, activation=activation)
    assert y.dtype == np.float32


def test_conv_many_gemm_blocks_and_threads(monkeypatch):
    # tiny blocks: the output is split within images and across them, and blocks run on the pool
    monkeypatch.setattr(conv_module, "_BLOCK_BYTES", 64)
    monkeypatch.setattr(conv_module, "_MIN_BLOCK_ROWS", 3)
    for x_shape, w_shape, attrs in [((3, 4, 9, 10), (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
                                    ((5, 8, 2, 2), (7, 8, 1, 1), {})]:
        inputs = [rand(*x_shape), rand(*w_shape, seed=1), rand(w_shape[0], seed=2)]
        check_against_onnxruntime("Conv", inputs, attrs, const={1, 2}, activation=RELU6)


def test_conv_chain_reads_channels_last_views():
    # a conv's output is a logical NCHW view of channels-last memory; the next conv must read it
    x, w1, w2, w3 = rand(2, 6, 8, 9), rand(12, 6, 1, 1, seed=1), rand(12, 1, 3, 3, seed=2), rand(5, 12, 1, 1, seed=3)
    y1 = run_kernel("Conv", [x, w1], {}, const={1})
    assert not y1.flags.c_contiguous
    np.testing.assert_array_equal(np.ascontiguousarray(y1), y1)
    for dw_attrs in ({"group": 12}, {"group": 12, "pads": [1, 1, 1, 1]}, {"group": 12, "strides": [2, 2]}):
        y2 = run_kernel("Conv", [y1, w2], dw_attrs, const={1})
        y3 = run_kernel("Conv", [y2, w3], {}, const={1})
        (want,) = onnxruntime_run(
            "Conv", [onnxruntime_run("Conv", [np.ascontiguousarray(y1), w2], dw_attrs)[0], w3], {}
        )
        assert_matches(y3, want)


def test_conv_leaves_the_blas_thread_count_as_it_was():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    run_kernel("Conv", [rand(4, 8, 40, 40), rand(16, 8, 3, 3, seed=1)], {"pads": [1, 1, 1, 1]}, const={1})
    assert [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"] == before


def _conv_in_child(queue):
    x, w = rand(4, 8, 16, 16), rand(16, 8, 3, 3, seed=1)
    queue.put(np.asarray(run_kernel("Conv", [x, w], {"pads": [1, 1, 1, 1]}, const={1})))


def test_conv_runs_in_a_forked_child_after_the_parent_used_its_threads():
    import multiprocessing

    want = np.asarray(
        run_kernel("Conv", [rand(4, 8, 16, 16), rand(16, 8, 3, 3, seed=1)], {"pads": [1, 1, 1, 1]}, const={1})
    )
    ctx = multiprocessing.get_context("fork")  # the child inherits the thread pool object, not its threads
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    np.testing.assert_array_equal(got, want)


def test_conv_float64_stays_float64():
    x, w = rand(1, 2, 5, 5).astype(np.float64), rand(3, 2, 3, 3, seed=1).astype(np.float64)
    y = run_kernel("Conv", [x, w], {"pads": [1, 1, 1, 1]}, const={1})
    assert y.dtype == np.float64
    (want,) = onnxruntime_run("Conv", [x.astype(np.float32), w.astype(np.float32)], {"pads": [1, 1, 1, 1]})
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_conv_channel_mismatch_names_the_node():
    with pytest.raises(ShapeInferenceError, match=r"my_conv.*5 channels.*expect 4"):
        run_kernel("Conv", [rand(1, 5, 8, 8), rand(6, 4, 3, 3)], const={1})
    with pytest.raises(ShapeInferenceError, match=r"my_conv.*expect 6.*\(3 per group x 2 groups\)"):
        run_kernel("Conv", [rand(1, 4, 8, 8), rand(6, 3, 3, 3)], {"group": 2}, const={1})


def test_conv_other_shape_errors():
    with pytest.raises(ShapeInferenceError, match="my_conv.*bias shape"):
        run_kernel("Conv", [rand(1, 4, 8, 8), rand(6, 4, 3, 3), rand(5)], const={1, 2})
    with pytest.raises(ShapeInferenceError, match="my_conv.*does not fit"):
        run_kernel("Conv", [rand(1, 4, 2, 2), rand(6, 4, 3, 3)], const={1})
    with pytest.raises(ShapeInferenceError, match="my_conv.*rank"):
        run_kernel("Conv", [rand(1, 4, 8, 8), rand(6, 4, 3)], const={1})
    with pytest.raises(ShapeInferenceError, match="my_conv.*not divisible by group"):
        run_kernel("Conv", [rand(1, 4, 8, 8), rand(5, 2, 3, 3)], {"group": 2}, const={1})


# ---- ConvTranspose -------------------------------------------------------------------------
CONVT_CASES = {
    "basic": ((1, 3, 4, 5), (3, 2, 3, 3), True, {}),
    "strides_pads": ((2, 3, 4, 4), (3, 4, 3, 3), True, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "output_padding": ((1, 2, 3, 4), (2, 3, 3, 3), False, {"strides": [3, 2], "output_padding": [1, 1]}),
    "dilations": ((1, 2, 4, 4), (2, 2, 2, 2), True, {"dilations": [2, 2]}),
    "groups": ((2, 4, 3, 3), (4, 3, 3, 3), True, {"group": 2, "strides": [2, 2]}),
    "output_shape": ((1, 2, 3, 3), (2, 2, 3, 3), True, {"strides": [3, 2], "output_shape": [10, 8]}),
    "same_upper": ((1, 2, 3, 4), (2, 3, 3, 3), True, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same_lower": ((1, 2, 3, 4), (2, 3, 4, 4), True, {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "conv1d_transpose": ((2, 3, 5), (3, 2, 3), True, {"strides": [2], "pads": [1, 0]}),
}


@pytest.mark.parametrize("case", sorted(CONVT_CASES))
def test_conv_transpose_matches_onnxruntime(case):
    x_shape, w_shape, bias, attrs = CONVT_CASES[case]
    group = attrs.get("group", 1)
    inputs = [rand(*x_shape), rand(*w_shape, seed=1)] + ([rand(w_shape[1] * group, seed=2)] if bias else [])
    check_against_onnxruntime("ConvTranspose", inputs, attrs, const={1, 2})


def test_conv_transpose_channel_mismatch():
    with pytest.raises(ShapeInferenceError, match="my_convtranspose.*3 channels.*expect 4"):
        run_kernel("ConvTranspose", [rand(1, 3, 4, 4), rand(4, 2, 3, 3)], const={1})


# ---- Gemm / MatMul -------------------------------------------------------------------------
GEMM_CASES = {
    "plain": ((3, 4), (4, 5), None, {}),
    "bias_row": ((3, 4), (4, 5), (5,), {}),
    "bias_full_alpha_beta": ((3, 4), (4, 5), (3, 5), {"alpha": 0.5, "beta": -2.0}),
    "bias_column": ((3, 4), (4, 5), (3, 1), {"beta": 3.0}),
    "bias_scalar": ((3, 4), (4, 5), (1,), {}),
    "transA": ((4, 3), (4, 5), (5,), {"transA": 1}),
    "transB": ((3, 4), (5, 4), (5,), {"transB": 1}),
    "transA_transB_alpha": ((4, 3), (5, 4), None, {"transA": 1, "transB": 1, "alpha": 1.7}),
}


@pytest.mark.parametrize("case", sorted(GEMM_CASES))
def test_gemm_matches_onnxruntime(case):
    a, b, c, attrs = GEMM_CASES[case]
    inputs = [rand(*a), rand(*b, seed=1)] + ([rand(*c, seed=2)] if c else [])
    check_against_onnxruntime("Gemm", inputs, attrs, const={1, 2})


@pytest.mark.parametrize("activation", [RELU, RELU6], ids=["relu", "relu6"])
def test_gemm_fused_activation(activation):
    inputs = [rand(6, 8) * 4, rand(8, 5, seed=1), rand(5, seed=2)]
    check_against_onnxruntime("Gemm", inputs, {"transB": 0}, const={1, 2}, activation=activation)


@pytest.mark.parametrize("a,b", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)),
                                 ((4,), (2, 4, 3)), ((2, 3, 4), (4,)), ((4,), (4,)), ((1, 3, 4), (2, 4, 6))])
def test_matmul_matches_onnxruntime(a, b):
    check_against_onnxruntime("MatMul", [rand(*a), rand(*b, seed=1)])


def test_gemm_and_matmul_shape_errors():
    with pytest.raises(ShapeInferenceError, match="my_gemm.*inner dimensions"):
        run_kernel("Gemm", [rand(3, 4), rand(5, 6)], const={1})
    with pytest.raises(ShapeInferenceError, match="my_gemm.*2-D"):
        run_kernel("Gemm", [rand(2, 3, 4), rand(4, 6)], const={1})
    with pytest.raises(ShapeInferenceError, match="my_gemm.*do not broadcast"):
        run_kernel("Gemm", [rand(3, 4), rand(4, 6), rand(4)], const={1, 2})
    with pytest.raises(ShapeInferenceError, match="my_matmul.*inner dimensions"):
        run_kernel("MatMul", [rand(2, 3, 4), rand(5, 6)])
    with pytest.raises(ShapeInferenceError, match="my_matmul.*do not broadcast"):
        run_kernel("MatMul", [rand(2, 3, 4), rand(3, 4, 6)])


# ---- pools ---------------------------------------------------------------------------------
MAXPOOL_CASES = {
    "2x2_s2": ((2, 3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "3x3_pads": ((1, 2, 7, 6), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "asym_pads_strides": ((1, 2, 9, 7), {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0], "strides": [2, 3]}),
    "same_upper": ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same_lower": ((1, 2, 7, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    "dilations": ((1, 2, 9, 9), {"kernel_shape": [2, 2], "dilations": [2, 3]}),
    "ceil_mode": ((1, 2, 8, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "ceil_mode_pads": ((1, 1, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    "1d": ((2, 3, 11), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    "3d": ((1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2]}),
    "storage_order_ignored": ((1, 2, 6, 6), {"kernel_shape": [2, 2], "storage_order": 1}),
}


@pytest.mark.parametrize("case", sorted(MAXPOOL_CASES))
def test_maxpool_matches_onnxruntime(case):
    shape, attrs = MAXPOOL_CASES[case]
    check_against_onnxruntime("MaxPool", [rand(*shape)], attrs)


AVGPOOL_CASES = {
    "2x2_s2": ((2, 3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "pads_excluded": ((1, 2, 7, 6), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "pads_included": ((1, 2, 7, 6), {"kernel_shape": [3, 3], "pads": [1, 2, 1, 0], "count_include_pad": 1}),
    "ceil_mode": ((1, 2, 8, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    "ceil_mode_pads_included": ((1, 1, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                               "ceil_mode": 1, "count_include_pad": 1}),
    "same_upper": ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "same_lower": ((1, 2, 7, 8), {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "dilations": ((1, 2, 9, 9), {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    "1d": ((2, 3, 11), {"kernel_shape": [4], "strides": [3]}),
    "3d": ((1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2], "pads": [0, 1, 1, 1, 0, 0]}),
}


@pytest.mark.parametrize("case", sorted(AVGPOOL_CASES))
def test_averagepool_matches_onnxruntime(case):
    shape, attrs = AVGPOOL_CASES[case]
    check_against_onnxruntime("AveragePool", [rand(*shape)], attrs)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 9), (1, 2, 3, 4, 5)])
def test_global_average_pool_matches_onnxruntime(shape):
    check_against_onnxruntime("GlobalAveragePool", [rand(*shape)])


def test_pools_reject_what_they_do_not_implement():
    node = Node("MaxPool", ["x"], ["y", "idx"], {"kernel_shape": [2, 2]}, name="my_maxpool")
    with pytest.raises(UnsupportedOperatorError, match="my_maxpool.*Indices"):
        get_op("MaxPool").check(node, [TensorInfo((1, 1, 4, 4), np.float32)])
    with pytest.raises(UnsupportedOperatorError, match="my_averagepool.*kernel_shape"):
        run_kernel("AveragePool", [rand(1, 1, 4, 4)], {})
    with pytest.raises(ShapeInferenceError, match="my_maxpool.*does not fit"):
        run_kernel("MaxPool", [rand(1, 1, 2, 2)], {"kernel_shape": [3, 3]})
    with pytest.raises(ShapeInferenceError, match="my_globalaveragepool"):
        run_kernel("GlobalAveragePool", [rand(2, 3)])


# ---- Resize / Upsample ---------------------------------------------------------------------
def resize_inputs(x, scales=None, sizes=None, roi=None):
    """Resize's inputs, the omitted ones as None."""
    return [x, roi, None if scales is None else np.asarray(scales, np.float32)] + \
        ([np.asarray(sizes, np.int64)] if sizes is not None else [])


def onnx_reference_run(op, inputs, attrs, opset=OPSET):
    """ONNX's reference implementation: the spec's own oracle (its backend test data come from it)."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if a is not None else "" for k, a in enumerate(inputs)]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in zip(names, inputs) if n]
    graph = helper.make_graph([helper.make_node(op, names, ["out0"], **attrs)], op, ins,
                              [helper.make_tensor_value_info("out0", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, {n: a for n, a in zip(names, inputs) if n})


def check_resize(inputs, attrs):
    """Against ONNX's reference implementation (where onnxruntime departs from the spec)."""
    got = run_kernel("Resize", inputs, attrs, const={1, 2, 3})
    (want,) = onnx_reference_run("Resize", inputs, attrs)
    assert_matches(got, want.astype(np.float32))
    return got


NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("ctm", TRANSFORMS)
def test_resize_nearest_upsample_matches_onnxruntime(nearest_mode, ctm):
    attrs = {"mode": "nearest", "nearest_mode": nearest_mode, "coordinate_transformation_mode": ctm}
    check_against_onnxruntime("Resize", resize_inputs(rand(2, 3, 5, 4), [1, 1, 2, 3]), attrs, const={1, 2, 3})


@pytest.mark.parametrize("ctm", TRANSFORMS)
@pytest.mark.parametrize("scales,sizes", [([1, 1, 2, 2.5], None), (None, [2, 3, 9, 3]), (None, [2, 3, 1, 6])],
                         ids=["up", "sizes", "sizes_to_one"])
def test_resize_linear_matches_onnxruntime(ctm, scales, sizes):
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    check_against_onnxruntime("Resize", resize_inputs(rand(2, 3, 5, 4), scales, sizes), attrs, const={1, 2, 3})


@pytest.mark.parametrize("ctm", TRANSFORMS)
@pytest.mark.parametrize("mode", ["linear"] + [f"nearest-{m}" for m in NEAREST_MODES])
def test_resize_fractional_scales_follow_the_onnx_reference(mode, ctm):
    mode, _, nearest_mode = mode.partition("-")
    attrs = {
        "mode": mode,
        "coordinate_transformation_mode": ctm,
        **({"nearest_mode": nearest_mode} if nearest_mode else {}),
    }
    for scales in ([1, 1, 0.6, 1.7], [1, 1, 0.5, 0.7], [1, 1, 1.3, 2.5]):
        check_resize(resize_inputs(rand(2, 3, 5, 4), scales), attrs)


def test_resize_where_onnxruntime_departs_from_the_spec():
    # align_corners maps through the unrounded resized length (in * scale = 2.5 here), as ONNX's
    # reference does; onnxruntime uses the rounded output length (2). mixq follows the spec.
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5, 1)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "align_corners"}
    y = check_resize(resize_inputs(x, [1, 1, 0.5, 1]), attrs)
    np.testing.assert_allclose(y.ravel(), [0, 4 / 1.5], rtol=1e-6)
    (theirs,) = onnxruntime_run("Resize", resize_inputs(x, [1, 1, 0.5, 1]), attrs)
    np.testing.assert_allclose(theirs.ravel(), [0, 4], rtol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_tf_crop_and_resize(mode):
    roi = np.array([0, 0, 0.2, -0.3, 1, 1, 0.9, 1.2], np.float32)  # partly outside the image
    attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": -7.0}
    inputs = resize_inputs(rand(1, 2, 6, 5), sizes=[1, 2, 4, 7], roi=roi)
    check_against_onnxruntime("Resize", inputs, attrs, const={1, 2, 3})
    check_resize(inputs, attrs)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_resize_sizes_with_axes_and_aspect_ratio_policy(policy):
    x = rand(1, 2, 6, 9)
    attrs = {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    y = check_against_onnxruntime("Resize", [x, None, None, np.array([4, 4], np.int64)], attrs, const={3})
    assert y.shape == ((1, 2, 3, 4) if policy == "not_larger" else (1, 2, 4, 6))


def test_resize_shape_comes_from_constant_scales_and_sizes():
    node = Node("Resize", ["x", "", "s"], ["y"], {"mode": "nearest"}, name="my_resize")
    x = TensorInfo((1, 3, 10, 10), np.float32)
    (info,) = get_op("Resize").infer(node, [x, None, TensorInfo.of(np.array([1, 1, 1.5, 0.25], np.float32))])
    assert info.shape == (1, 3, 15, 2)
    node.inputs = ["x", "", "", "z"]
    (info,) = get_op("Resize").infer(node, [x, None, None, TensorInfo.of(np.array([1, 3, 7, 20], np.int64))])
    assert info.shape == (1, 3, 7, 20)
    with pytest.raises(UnsupportedOperatorError, match="my_resize.*sizes.*constant"):
        get_op("Resize").infer(node, [x, None, None, TensorInfo((4,), np.int64)])


@pytest.mark.parametrize(
    "attrs,match",
    [
        ({"mode": "cubic"}, "cubic"),
        ({"mode": "linear", "antialias": 1}, "antialias"),
        ({"mode": "nearest", "nearest_mode": "stochastic"}, "nearest_mode"),
    ],
)
def test_resize_variants_mixq_does_not_implement(attrs, match):
    inputs = resize_inputs(rand(1, 1, 4, 4), [1, 1, 2, 2])
    node = Node("Resize", ["x", "roi", "s"], ["y"], attrs, name="my_resize")
    infos = [TensorInfo.of(a, constant=k > 0) for k, a in enumerate(inputs)]
    with pytest.raises(UnsupportedOperatorError, match=f"my_resize.*{match}"):
        get_op("Resize").check(node, infos)


def test_cubic_resize_is_rejected_at_load_time(tmp_path):
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="upscale")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scales])
    path = tmp_path / "cubic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)
    with pytest.raises(UnsupportedOperatorError, match="upscale.*cubic"):
        load_model(onnx_source(str(path)))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_matches_onnxruntime(mode):
    x, scales = rand(2, 3, 4, 5), np.array([1, 1, 2, 1.5], np.float32)
    (want,) = onnxruntime_run("Upsample", [x, scales], {"mode": mode}, opset=9)
    assert_matches(run_kernel("Upsample", [x, scales], {"mode": mode}, const={1}), want)


def test_upsample_opset7_scales_attribute_is_upgraded():
    g = Graph("g")
    g.opset = 7
    node = Node("Upsample", ["x"], ["y"], {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, name="up")
    get_op("Upsample").upgrade(node, g)
    assert len(node.inputs) == 2 and "scales" not in node.attrs
    np.testing.assert_array_equal(g.constants[node.inputs[1]], [1, 1, 2, 3])
    x = rand(1, 2, 3, 3)
    (y,) = get_op("Upsample").run(node, [x, g.constants[node.inputs[1]]])
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))


# ---- placement and names -------------------------------------------------------------------
def graph_with(node: Node, constants=()) -> Graph:
    g = Graph("g")
    for name in constants:
        g.add_constant(name, np.zeros(1, np.float32))
    g.nodes = [node]
    return g


@pytest.mark.parametrize("inputs,attrs,kind", [
    (["x", "w"], {"kernel_shape": [3, 3]}, "conv2d"),
    (["x", "w", "b"], {"kernel_shape": [1, 1]}, "conv2d_add"),
    (["x", "w", "b"], {"kernel_shape": [3, 3], "activation": {"kind": "relu"}}, "conv2d_add_relu"),
    (["x", "w", "b"], {"kernel_shape": [3, 3], "activation": RELU6}, "conv2d_add_clip"),
    (["x", "w", ""], {"kernel_shape": [3], "activation": {"kind": "relu"}}, "conv1d_relu"),
    (["x", "w", "b"], {"kernel_shape": [3, 3, 3]}, "conv3d_add"),
])
def test_conv_kind_and_placement(inputs, attrs, kind):
    node = Node("Conv", inputs, ["y"], attrs)
    assert get_op("Conv").kind_of(node) == kind
    assert get_op("Conv").on_mla(node, graph_with(node, ["w", "b"]))


def test_conv_kind_uses_the_weight_rank_when_kernel_shape_is_absent():
    g = Graph("g")
    g.opset = OPSET
    g.add_constant("w", np.zeros((4, 3, 5), np.float32))
    node = Node("Conv", ["x", "w"], ["y"], {})
    get_op("Conv").upgrade(node, g)
    assert get_op("Conv").kind_of(node) == "conv1d"


def test_gemm_runs_on_the_mla_only_with_constant_weights_matmul_also_with_two_activations():
    gemm = Node("Gemm", ["a", "w", "c"], ["y"], {"activation": {"kind": "relu"}})
    assert get_op("Gemm").kind_of(gemm) == "dense_add_relu"
    assert get_op("Gemm").on_mla(gemm, graph_with(gemm, ["w", "c"]))
    assert not get_op("Gemm").on_mla(gemm, graph_with(gemm, ["c"]))
    assert get_op("Gemm").kind_of(Node("Gemm", ["a", "w"], ["y"])) == "dense"
    matmul = Node("MatMul", ["a", "w"], ["y"])
    assert get_op("MatMul").kind_of(matmul) == "dense"
    assert get_op("MatMul").on_mla(matmul, graph_with(matmul, ["w"]))
    assert get_op("MatMul").on_mla(matmul, graph_with(matmul))   # attention: both operands quantized


def test_pool_resize_and_conv_transpose_placement():
    for op, kind in [
        ("MaxPool", "max_pool2d"),
        ("AveragePool", "avg_pool2d"),
        ("GlobalAveragePool", "global_avg_pool2d"),
    ]:
        node = Node(op, ["x"], ["y"], {"kernel_shape": [2, 2]})
        assert get_op(op).kind_of(node) == kind and get_op(op).on_mla(node, graph_with(node))
    for op in ("Resize", "Upsample"):
        nearest, linear = Node(op, ["x"], ["y"], {"mode": "nearest"}), Node(op, ["x"], ["y"], {"mode": "linear"})
        assert get_op(op).kind_of(nearest) == "resize"
        assert get_op(op).on_mla(nearest, graph_with(nearest))
        assert get_op(op).on_mla(Node(op, ["x"], ["y"], {}), graph_with(nearest))  # nearest is the default
        assert not get_op(op).on_mla(linear, graph_with(linear))
    convt = Node("ConvTranspose", ["x", "w"], ["y"], {})
    assert get_op("ConvTranspose").kind_of(convt) == "conv2d_transpose"
    assert not get_op("ConvTranspose").on_mla(convt, graph_with(convt, ["w"]))


def test_every_compute_op_documents_itself():
    for op in (
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "Resize",
        "Upsample",
    ):
        assert get_op(op).doc.strip(), op
