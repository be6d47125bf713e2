"""Exact integer accumulators of quantized Conv / Gemm / MatMul (conv_accumulate,
dense_accumulate) against slow, obviously-correct int64 references: explicit loops over
output positions and kernel taps (conv), np.einsum on int64 (dense).

Covers the three computation paths the kernels pick from a proven bound (float32 BLAS,
float64 BLAS, int64), and batch-split invariance bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node
from core.ops.conv import conv_accumulate, conv_forward, exact_accumulation_dtype
from core.ops.gemm import dense_accumulate

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- references ------------------------------------------------------------------------------

def ref_pads(in_spatial, kernel, strides, dilations, pads, auto_pad):
    """ONNX's auto_pad rule, written out independently of core.ops.conv."""
    n = len(in_spatial)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for d in range(n):
            out = (in_spatial[d] + strides[d] - 1) // strides[d]
            total = max(0, (out - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - in_spatial[d])
            lo = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return begin + end
    return list(pads)


def ref_conv(x, zp, w, bias, strides, dilations, pads, group):
    """acc[n, o, p] = bias[o] + sum_{c in o's group, k} w[o, c, k] * (xpad[n, c, p*s + k*d] - zp)."""
    n = x.ndim - 2
    xs = x.astype(np.int64) - zp
    xp = np.pad(xs, [(0, 0), (0, 0)] + [(pads[d], pads[d + n]) for d in range(n)])  # 0 == zp - zp
    N, C = x.shape[:2]
    O = w.shape[0]
    kernel = w.shape[2:]
    cg, og = C // group, O // group
    out = [(xp.shape[2 + d] - (kernel[d] - 1) * dilations[d] - 1) // strides[d] + 1 for d in range(n)]
    acc = np.zeros((N, O, *out), np.int64)
    w64 = w.astype(np.int64)
    for o in range(O):
        g = o // og
        for pos in np.ndindex(*out):
            total = np.zeros(N, np.int64)
            for k in np.ndindex(*kernel):
                idx = tuple(pos[d] * strides[d] + k[d] * dilations[d] for d in range(n))
                total += xp[(slice(None), slice(g * cg, (g + 1) * cg)) + idx] @ w64[(o, slice(None)) + k]
            acc[(slice(None), o) + pos] = total
    if bias is not None:
        acc += bias.astype(np.int64).reshape((1, O) + (1,) * n)
    return acc


def conv_node(n, group=1, strides=None, dilations=None, pads=None, auto_pad=None, kernel=None):
    attrs = {"group": group}
    if strides is not None:
        attrs["strides"] = list(strides)
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    if pads is not None:
        attrs["pads"] = list(pads)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    if kernel is not None:
        attrs["kernel_shape"] = list(kernel)
    return Node("Conv", ["x", "w", "b"], ["y"], attrs, name="conv_q")


def int_array(rng, lo, hi, shape, dtype):
    return rng.integers(lo, hi, shape, endpoint=True).astype(dtype)


# ---- conv: property tests --------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 2, 2, 2, 3]))
    depthwise = draw(st.booleans())
    if depthwise:
        group = draw(st.integers(1, 6))
        cg, og = 1, draw(st.sampled_from([1, 1, 2]))      # og > 1: channel multiplier (grouped GEMM)
    else:
        group = draw(st.integers(1, 3))
        cg, og = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    C, O = group * cg, group * og
    N = draw(st.integers(1, 3))
    small = n == 3
    kernel = [draw(st.integers(1, 2 if small else 3)) for _ in range(n)]
    strides = [draw(st.integers(1, 3)) for _ in range(n)]
    dilations = [draw(st.integers(1, 2)) for _ in range(n)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * n)]
    min_in = [(kernel[d] - 1) * dilations[d] + 1 for d in range(n)]
    in_spatial = [draw(st.integers(max(1, min_in[d] - (0 if auto_pad in ("VALID", "NOTSET") else 9)),
                                   min_in[d] + (3 if small else 6))) for d in range(n)]
    if auto_pad == "NOTSET":  # the kernel must fit the padded input
        in_spatial = [max(in_spatial[d], min_in[d] - pads[d] - pads[d + n], 1) for d in range(n)]
    act_bits = draw(st.sampled_from([8, 8, 16]))
    if act_bits == 8:
        zp = draw(st.integers(-128, 127))
        x = int_array(rng, -128, 127, (N, C, *in_spatial), np.int8)
    else:
        zp = draw(st.sampled_from([0, 0, -7, 1234]))
        x = int_array(rng, -32768, 32767, (N, C, *in_spatial), np.int16)
    w_bits = draw(st.sampled_from([8, 8, 16]))
    wmax = 127 if w_bits == 8 else 32767
    # per-channel ranges: each output channel its own symmetric range
    ranges = rng.integers(0, wmax, O, endpoint=True)
    w = np.stack([int_array(rng, -r, r, (cg, *kernel), np.int8 if w_bits == 8 else np.int16) for r in ranges])
    bias_kind = draw(st.sampled_from(["none", "int32", "int64"]))
    bias = None if bias_kind == "none" else \
        int_array(rng, -(2**31), 2**31 - 1, O, np.int32) if bias_kind == "int32" else \
        int_array(rng, -(2**40), 2**40, O, np.int64)
    channels_last = draw(st.booleans())
    if channels_last:  # the float path hands convs channels-last memory; both layouts must work
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose((0, n + 1) + tuple(range(1, n + 1)))
    return dict(x=x, zp=zp, w=w, bias=bias, group=group, strides=strides, dilations=dilations,
                pads=pads, auto_pad=auto_pad)


@SETTINGS
@given(conv_cases())
def test_conv_accumulate_matches_int64_reference(case):
    x, w, group = case["x"], case["w"], case["group"]
    n = x.ndim - 2
    node = conv_node(n, group, case["strides"], case["dilations"], case["pads"], case["auto_pad"])
    pads = ref_pads(x.shape[2:], w.shape[2:], case["strides"], case["dilations"], case["pads"], case["auto_pad"])
    if any((x.shape[2 + d] + pads[d] + pads[d + n] - (w.shape[2 + d] - 1) * case["dilations"][d] - 1) < 0
           for d in range(n)):
        with pytest.raises(ShapeInferenceError, match="conv_q"):
            conv_accumulate(x, case["zp"], w, case["bias"], node)
        return
    acc = conv_accumulate(x, case["zp"], w, case["bias"], node)
    ref = ref_conv(x, case["zp"], w, case["bias"], case["strides"], case["dilations"], pads, group)
    assert acc.dtype == np.int64
    assert acc.shape == ref.shape
    np.testing.assert_array_equal(acc, ref)


@SETTINGS
@given(conv_cases(), st.data())
def test_conv_accumulate_batch_split_invariant(case, data):
    x, w = case["x"], case["w"]
    n = x.ndim - 2
    node = conv_node(n, case["group"], case["strides"], case["dilations"], case["pads"], case["auto_pad"])
    try:
        whole = conv_accumulate(x, case["zp"], w, case["bias"], node)
    except ShapeInferenceError:
        return
    # a bigger batch (the same images repeated), then arbitrary splits of it
    big = np.concatenate([x, x[::-1], x], axis=0)
    full = conv_accumulate(big, case["zp"], w, case["bias"], node)
    cut = sorted(data.draw(st.lists(st.integers(0, big.shape[0]), max_size=3)))
    parts = [conv_accumulate(big[a:b], case["zp"], w, case["bias"], node)
             for a, b in zip([0] + cut, cut + [big.shape[0]]) if b > a]
    np.testing.assert_array_equal(np.concatenate(parts, axis=0), full)
    np.testing.assert_array_equal(full[:x.shape[0]], whole)
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(conv_accumulate(x[i:i + 1], case["zp"], w, case["bias"], node), whole[i:i + 1])


# ---- the three paths, each forced --------------------------------------------------------------

def _conv_float_gemm(x, zp, w, node, dtype):
    """What a float GEMM of the shifted operands gives (to show a path was needed)."""
    return conv_forward((x.astype(np.int64) - zp).astype(dtype), w.astype(dtype), None, node)


def test_paths_chosen_from_the_bound():
    node = conv_node(2)
    x8 = np.zeros((1, 4, 3, 3), np.int8)
    w8 = np.full((2, 4, 1, 1), 127, np.int8)
    # int8 x: |x - zp| <= 255 from the dtype alone; 255 * 127 * 4 < 2**24
    assert exact_accumulation_dtype(x8, -128, w8.reshape(2, -1), None, node) == np.float32
    # int16 x at full range with K = 1024: 65535 * 127 * 1024 > 2**24 but < 2**53
    x16 = np.array([[-32768, 32767]], np.int16)
    wk = np.full((3, 1024), 127, np.int8)
    assert exact_accumulation_dtype(x16, 0, wk, None, node) == np.float64
    # ... but small int16 data keeps float32: the bound uses the data's range
    assert exact_accumulation_dtype(np.array([[-3, 5]], np.int16), 0, wk, None, node) == np.float32
    # and per-channel sums of |w|, not max|w| * K: one big channel among small ones
    wpc = np.ones((3, 1024), np.int8)
    wpc[0, 0] = 127
    assert exact_accumulation_dtype(np.array([[-100, 100]], np.int16), 0, wpc, None, node) == np.float32
    # int32-range operands: past 2**53 -> int64
    x32 = np.array([[-(2**31), 2**31 - 1]], np.int32)
    w32 = np.full((1, 64), 2**20, np.int32)
    assert exact_accumulation_dtype(x32, 0, w32, None, node) == np.int64
    # past 2**63 -> refused
    with pytest.raises(ExecutionError, match="conv_q.*overflow int64"):
        exact_accumulation_dtype(x32, 0, np.full((1, 64), 2**31 - 1, np.int32), None, node)
    with pytest.raises(ExecutionError, match="conv_q"):
        exact_accumulation_dtype(x32, 0, np.full((1, 2), 2**30, np.int32), np.array([2**62], np.int64), node)


def test_float64_path_exact_where_float32_is_not():
    # int16 activations (16x8 mode) with K = 256 * 9: partial sums reach ~2**34
    rng = np.random.default_rng(1)
    x = int_array(rng, 30000, 32767, (2, 256, 5, 5), np.int16)
    x[0, :, 0, 0] = -32768
    w = int_array(rng, 120, 127, (4, 256, 3, 3), np.int8)
    w[1] *= -1
    node = conv_node(2, pads=[1, 1, 1, 1])
    assert exact_accumulation_dtype(x, 0, w.reshape(4, -1), None, node) == np.float64
    bias = np.array([2**40, -(2**40), 7, 0], np.int64)
    acc = conv_accumulate(x, 0, w, bias, node)
    ref = ref_conv(x, 0, w, bias, [1, 1], [1, 1], [1, 1, 1, 1], 1)
    np.testing.assert_array_equal(acc, ref)
    assert np.abs(ref).max() > 2**32
    # float32 would not be exact here
    assert not np.array_equal(_conv_float_gemm(x, 0, w, node, np.float32).astype(np.int64), ref - bias[:, None, None])


@pytest.mark.parametrize("depthwise", [False, True])
def test_int64_fallback_exact_beyond_2_53(depthwise):
    # int32-range activations and 20-bit weights: max|x - zp| * sum|w| > 2**53, < 2**63
    rng = np.random.default_rng(2)
    C = 6
    if depthwise:
        w = int_array(rng, 2**19, 2**20, (C, 1, 3, 3), np.int32)
        group, K = C, 9
    else:
        w = int_array(rng, 2**19, 2**20, (4, C, 3, 3), np.int32)
        group, K = 1, C * 9
    w.reshape(-1)[::3] *= -1
    x = int_array(rng, 2**31 - 2**20, 2**31 - 1, (2, C, 5, 6), np.int64)
    zp = -(2**31) + 5
    node = conv_node(2, group=group, pads=[1, 0, 2, 1], strides=[1, 2])
    assert (2**32) * (2**20) * K > 2**53
    assert exact_accumulation_dtype(x, zp, w.reshape(w.shape[0], -1), None, node) == np.int64
    bias = int_array(rng, -(2**40), 2**40, w.shape[0], np.int64)
    acc = conv_accumulate(x, zp, w, bias, node)
    ref = ref_conv(x, zp, w, bias, [1, 2], [1, 1], [1, 0, 2, 1], group)
    np.testing.assert_array_equal(acc, ref)
    assert np.abs(ref).max() > 2**53
    # float64 BLAS would have rounded: the fallback was needed
    assert not np.array_equal(_conv_float_gemm(x, zp, w, node, np.float64).astype(np.int64),
                              ref - bias.reshape(-1, 1, 1))
    # batch-split invariance on this path too
    np.testing.assert_array_equal(
        np.concatenate([conv_accumulate(x[i : i + 1], zp, w, bias, node) for i in range(2)]), acc
    )


@pytest.mark.parametrize("shape", ["pointwise", "pointwise_grouped", "3x3", "depthwise"])
@pytest.mark.parametrize("regime", ["f32_wide_dtype", "f64", "int64"])
def test_every_kernel_on_every_path(shape, regime):
    # The kernels subtract the zero point themselves (block by block) or get a shifted copy,
    # depending on the path and x's dtype; each combination must be exact.
    rng = np.random.default_rng(7)
    C = 6
    O, group, k = {"pointwise": (4, 1, 1), "pointwise_grouped": (6, 3, 1), "3x3": (4, 2, 3),
                   "depthwise": (C, C, 3)}[shape]
    pads = [0, 0, 0, 0] if k == 1 else [1, 0, 1, 2]
    if regime == "f32_wide_dtype":   # int32 data near 2**30, zero point nearby: x - zp is small
        zp = 2**30 + 50
        x = int_array(rng, 2**30, 2**30 + 100, (3, C, 5, 4), np.int32)
        w = int_array(rng, -127, 127, (O, C // group, k, k), np.int8)
        expect = np.float32
    elif regime == "f64":            # int16 x, 16-bit weights
        zp = 0
        x = int_array(rng, -32768, 32767, (3, C, 5, 4), np.int16)
        w = int_array(rng, -32767, 32767, (O, C // group, k, k), np.int16)
        expect = np.float64
    else:
        zp = -(2**31)
        x = int_array(rng, -(2**31), 2**31 - 1, (3, C, 5, 4), np.int64)
        w = int_array(rng, -(2**24), 2**24, (O, C // group, k, k), np.int32)
        expect = np.int64
    node = conv_node(2, group=group, pads=pads)
    assert exact_accumulation_dtype(x, zp, w.reshape(O, -1), None, node) == expect
    bias = int_array(rng, -(2**31), 2**31 - 1, O, np.int32)
    ref = ref_conv(x, zp, w, bias, [1, 1], [1, 1], pads, group)
    np.testing.assert_array_equal(conv_accumulate(x, zp, w, bias, node), ref)
    np.testing.assert_array_equal(conv_accumulate(np.asarray(x, order="F"), zp, w, None, node),
                                  ref - bias.reshape(-1, 1, 1))


def test_batch_split_across_paths():
    # one image with a wide int16 range (float64), the others narrow (float32): same bits
    rng = np.random.default_rng(3)
    x = int_array(rng, -50, 50, (4, 64, 6, 6), np.int16)
    x[2] = int_array(rng, -32768, 32767, (64, 6, 6), np.int16)
    w = int_array(rng, -127, 127, (8, 64, 3, 3), np.int8)
    node = conv_node(2, pads=[1, 1, 1, 1])
    dtypes = {exact_accumulation_dtype(x[i:i + 1], 0, w.reshape(8, -1), None, node) for i in range(4)}
    assert dtypes == {np.dtype(np.float32), np.dtype(np.float64)}
    acc = conv_accumulate(x, 0, w, None, node)
    np.testing.assert_array_equal(
        np.concatenate([conv_accumulate(x[i : i + 1], 0, w, None, node) for i in range(4)]), acc
    )
    np.testing.assert_array_equal(acc, ref_conv(x, 0, w, None, [1, 1], [1, 1], [1, 1, 1, 1], 1))


def test_scratch_buffers_do_not_corrupt_zero_borders():
    # A staged depthwise 1x1 conv with pads computes into a scratch buffer of the shape a padded
    # depthwise float conv uses for its zero-bordered input; they must be kept apart.
    rng = np.random.default_rng(4)
    C = 5
    xq = int_array(rng, -128, 127, (1, C, 4, 4), np.int8)
    wq = int_array(rng, -127, 127, (C, 1, 1, 1), np.int8)
    node1 = conv_node(2, group=C, pads=[1, 1, 1, 1])           # output 6x6xC
    acc = conv_accumulate(xq, 3, wq, None, node1)
    np.testing.assert_array_equal(acc, ref_conv(xq, 3, wq, None, [1, 1], [1, 1], [1, 1, 1, 1], C))
    # float depthwise conv whose padded input is 6x6xC float32: borders must still read 0
    xf = int_array(rng, -9, 9, (1, C, 4, 4), np.float32)
    wf = int_array(rng, -9, 9, (C, 1, 3, 3), np.float32)
    yf = conv_forward(xf, wf, None, node1)
    ref = ref_conv(xf.astype(np.int64), 0, wf.astype(np.int64), None, [1, 1], [1, 1], [1, 1, 1, 1], C)
    np.testing.assert_array_equal(yf, ref.astype(np.float32))
    acc2 = conv_accumulate(xq, 3, wq, None, node1)  # and the other way round
    np.testing.assert_array_equal(acc2, acc)


def test_float_forward_unchanged_by_refactor():
    # conv_forward still returns the float dtype and the fused bias + activation
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    node = conv_node(2, group=2, pads=[1, 1, 1, 1])
    node.attrs["activation"] = {"kind": "relu"}
    y = conv_forward(x, w, b, node)
    assert y.dtype == np.float32
    xs = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)])
    ref = np.zeros((2, 6, 6, 6))
    for o in range(6):
        g = o // 3
        for i in range(3):
            for j in range(3):
                ref[:, o] += np.einsum("nchw,c->nhw", xs[:, 2 * g:2 * g + 2, i:i + 6, j:j + 6], w[o, :, i, j])
    ref = np.maximum(ref + b.reshape(1, 6, 1, 1), 0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ---- conv: errors ------------------------------------------------------------------------------

def test_conv_accumulate_errors_name_parameter_and_node():
    x = np.zeros((1, 4, 5, 5), np.int8)
    w = np.zeros((2, 4, 3, 3), np.int8)
    node = conv_node(2)
    with pytest.raises(QuantizationConfigError, match="conv_q.*x_q"):
        conv_accumulate(x.astype(np.float32), 0, w, None, node)
    with pytest.raises(QuantizationConfigError, match="conv_q.*w_q"):
        conv_accumulate(x, 0, w.astype(np.float64), None, node)
    with pytest.raises(QuantizationConfigError, match="conv_q.*bias_q"):
        conv_accumulate(x, 0, w, np.zeros(2, np.float32), node)
    with pytest.raises(QuantizationConfigError, match="conv_q.*x_zero_point"):
        conv_accumulate(x, np.array([0, 1]), w, None, node)
    with pytest.raises(QuantizationConfigError, match="x_zero_point"):
        conv_accumulate(x, 0.5, w, None, node)
    with pytest.raises(ShapeInferenceError, match="conv_q.*bias"):
        conv_accumulate(x, 0, w, np.zeros(3, np.int32), node)
    with pytest.raises(ShapeInferenceError, match="conv_q.*channels"):
        conv_accumulate(x, 0, np.zeros((2, 3, 3, 3), np.int8), None, node)
    with pytest.raises(ShapeInferenceError, match="conv_q.*kernel_shape"):
        conv_accumulate(x, 0, w, None, conv_node(2, kernel=[2, 2]))
    # np.int8 and Python ints both work as the zero point; an int8 zero point of 127 too
    a = conv_accumulate(x, np.int8(127), w + 1, None, node)
    assert np.all(a == -127 * 4 * 9)


# ---- dense -------------------------------------------------------------------------------------

@st.composite
def dense_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    op = draw(st.sampled_from(["Gemm", "MatMul"]))
    K, O = draw(st.integers(1, 40)), draw(st.integers(1, 8))
    bits = draw(st.sampled_from([8, 16]))
    lo, hi, dt = (-128, 127, np.int8) if bits == 8 else (-32768, 32767, np.int16)
    zp = draw(st.integers(lo, hi)) if bits == 8 else draw(st.sampled_from([0, 0, 99]))
    ranges = rng.integers(0, 127, O, endpoint=True)
    w = np.stack([int_array(rng, -r, r, K, np.int8) for r in ranges], axis=1)  # (K, O), per-column ranges
    attrs = {}
    if op == "Gemm":
        M = draw(st.integers(1, 6))
        x = int_array(rng, lo, hi, (M, K), dt)
        if draw(st.booleans()):
            attrs["transA"] = 1
            x = np.ascontiguousarray(x.T)
        if draw(st.booleans()):
            attrs["transB"] = 1
            w = np.ascontiguousarray(w.T)
    else:
        batch = draw(st.lists(st.integers(1, 3), max_size=2))
        x = int_array(rng, lo, hi, (*batch, K), dt)
        if draw(st.integers(0, 4)) == 0:
            w, O = w[:, 0].copy(), 1
    bias = None if op == "MatMul" and w.ndim == 1 or draw(st.booleans()) else \
        int_array(rng, -(2**31), 2**31 - 1, O, np.int32)
    return op, x, zp, w, bias, attrs


@SETTINGS
@given(dense_cases())
def test_dense_accumulate_matches_einsum_reference(case):
    op, x, zp, w, bias, attrs = case
    node = Node(op, ["x", "w"], ["y"], dict(attrs), name="fc_q")
    acc = dense_accumulate(x, zp, w, bias, node)
    xs = x.astype(np.int64) - zp
    w64 = w.astype(np.int64)
    if attrs.get("transA"):
        xs = xs.T
    if attrs.get("transB"):
        w64 = w64.T
    ref = np.einsum("...k,ko->...o", xs, w64) if w64.ndim == 2 else np.einsum("...k,k->...", xs, w64)
    if bias is not None:
        ref = ref + bias.astype(np.int64)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, ref)
    if op == "MatMul" and x.ndim >= 2:  # batch-split invariance along the first axis
        np.testing.assert_array_equal(
            np.concatenate([dense_accumulate(x[i:i + 1], zp, w, bias, node) for i in range(x.shape[0])]), acc)


def test_dense_int64_fallback_and_float64():
    rng = np.random.default_rng(6)
    node = Node("MatMul", ["x", "w"], ["y"], {}, name="fc_q")
    x = int_array(rng, 2**31 - 2**10, 2**31 - 1, (3, 4, 300), np.int64)
    w = int_array(rng, 2**18, 2**20, (300, 5), np.int32)
    w[::2] *= -1
    zp = -(2**31)
    assert exact_accumulation_dtype(x, zp, w.T, None, node) == np.int64
    acc = dense_accumulate(x, zp, w, np.arange(5), node)
    ref = np.einsum("...k,ko->...o", x.astype(np.int64) - zp, w.astype(np.int64)) + np.arange(5)
    np.testing.assert_array_equal(acc, ref)
    assert np.abs(ref).max() > 2**53
    assert not np.array_equal(((x.astype(np.int64) - zp).astype(np.float64) @ w.astype(np.float64)).astype(np.int64),
                              ref - np.arange(5))
    # 16x8: int16 x, K = 4096 -> float64
    x16 = int_array(rng, -32768, 32767, (7, 4096), np.int16)
    w8 = int_array(rng, -127, 127, (4096, 3), np.int8)
    gemm = Node("Gemm", ["x", "w", "b"], ["y"], {}, name="fc_q")
    assert exact_accumulation_dtype(x16, 0, w8.T, None, gemm) == np.float64
    b64 = np.array([2**45, -3, 0], np.int64)
    np.testing.assert_array_equal(dense_accumulate(x16, 0, w8, b64, gemm),
                                  x16.astype(np.int64) @ w8.astype(np.int64) + b64)


def test_dense_accumulate_errors():
    x = np.zeros((2, 4), np.int8)
    w = np.zeros((4, 3), np.int8)
    with pytest.raises(UnsupportedOperatorError, match="fc_q.*alpha"):
        dense_accumulate(x, 0, w, None, Node("Gemm", ["x", "w"], ["y"], {"alpha": 0.5}, name="fc_q"))
    with pytest.raises(UnsupportedOperatorError, match="fc_q.*beta"):
        dense_accumulate(
            x, 0, w, np.zeros(3, np.int32), Node("Gemm", ["x", "w", "b"], ["y"], {"beta": 2.0}, name="fc_q")
        )
    # beta without a bias is irrelevant
    assert dense_accumulate(x, 0, w, None, Node("Gemm", ["x", "w"], ["y"], {"beta": 2.0}, name="fc_q")).shape == (2, 3)
    gemm = Node("Gemm", ["x", "w", "b"], ["y"], {}, name="fc_q")
    with pytest.raises(ShapeInferenceError, match="fc_q.*inner"):
        dense_accumulate(x, 0, np.zeros((5, 3), np.int8), None, gemm)
    with pytest.raises(ShapeInferenceError, match="fc_q.*bias_q"):
        dense_accumulate(x, 0, w, np.zeros(4, np.int32), gemm)
    with pytest.raises(ShapeInferenceError, match="fc_q.*2-D"):
        dense_accumulate(x[None], 0, w, None, gemm)
    with pytest.raises(QuantizationConfigError, match="fc_q.*x_q"):
        dense_accumulate(x.astype(np.float32), 0, w, None, gemm)
    with pytest.raises(UnsupportedOperatorError, match="fc_q.*weights"):
        dense_accumulate(x, 0, np.zeros((2, 4, 3), np.int8), None, Node("MatMul", ["x", "w"], ["y"], {}, name="fc_q"))
    with pytest.raises(UnsupportedOperatorError, match="Relu"):
        dense_accumulate(x, 0, w, None, Node("Relu", ["x"], ["y"], {}, name="fc_q"))
    # Gemm's C of shape (1, O) is accepted
    np.testing.assert_array_equal(dense_accumulate(x, 1, w + 2, np.array([[1, 2, 3]], np.int32), gemm),
                                  np.array([[-7, -6, -5]] * 2))
