"""The fused fast paths of the integer kernels against their unfused definitions, bit for bit:

* conv_accumulate / dense_accumulate with ``requant`` (requantization block by block, in cache)
  == requantize(the exact accumulators) for every requantization arithmetic, on every
  accumulation path (float32, float64, int64) and conv shape (GEMM, grouped, depthwise);
* add_int / sub_int / mul_int on 8-bit arrays (a table lookup) == the arithmetic itself,
  also for channels-last strides (the result keeps its operand's memory layout).
The unfused kernels are checked against plain references in test_integer_accumulate.py and
test_integer_kernels.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ExecutionError
from core.ir.graph import Node
from core.ops import elementwise
from core.ops.conv import conv_accumulate, exact_accumulation_dtype
from core.ops.elementwise import add_int, mul_int, sub_int
from core.ops.gemm import dense_accumulate
from core.quantization import RequantizationMode, quantize_multiplier_for, requantize
from core.quantization.requantize import Requant

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VARIANTS = [(RequantizationMode.sima, "double"), (RequantizationMode.tflite, "double"),
            (RequantizationMode.tflite, "single"), (RequantizationMode.tflite, "int64")]


def requant_params(rng, O, mode, variant, out_bits, scale):
    reals = rng.uniform(0.2, 1.0, O) * scale
    m, s = quantize_multiplier_for(reals, mode, tflite_rounding=variant)
    qmin, qmax = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    zp = int(rng.integers(qmin // 2, qmax // 2))
    return dict(multiplier=m, shift=s, mode=mode, zero_point=zp, qmin=qmin, qmax=qmax, tflite_rounding=variant)


def unfused(acc, p, axis):
    return requantize(acc, p["multiplier"], p["shift"], p["mode"], p["zero_point"], p["qmin"], p["qmax"],
                      tflite_rounding=p["tflite_rounding"], channel_axis=axis)


def check(fn, x, zp, w, bias, node, p, axis, out_dtype):
    try:
        ref = unfused(fn(x, zp, w, bias, node), p, axis)
    except ExecutionError:
        with pytest.raises(ExecutionError):
            fn(x, zp, w, bias, node, requant=Requant(dtype=out_dtype, **p))
        return
    got = fn(x, zp, w, bias, node, requant=Requant(dtype=out_dtype, **p))
    assert got.dtype == out_dtype
    np.testing.assert_array_equal(got, ref)


@st.composite
def conv_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from(["pointwise", "3x3", "grouped", "depthwise", "depthwise_s2"]))
    C = draw(st.integers(1, 6)) * (2 if shape == "grouped" else 1)
    group = {"grouped": 2, "depthwise": C, "depthwise_s2": C}.get(shape, 1)
    O = C if group == C else draw(st.integers(1, 9))
    O = O if group == 1 or O % group == 0 else group * draw(st.integers(1, 3))
    k = 1 if shape == "pointwise" else 3
    attrs = {"group": group, "kernel_shape": [k, k]}
    if k == 3:
        attrs["pads"] = [1, 0, 1, 2]
    if shape == "depthwise_s2":
        attrs["strides"] = [2, 2]
    regime = draw(st.sampled_from(["int8", "int8", "int16", "int16_w16", "wide"]))
    x_dtype, w_dtype = {"int8": (np.int8, np.int8), "int16": (np.int16, np.int8),
                        "int16_w16": (np.int16, np.int16), "wide": (np.int32, np.int32)}[regime]
    xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
    x_hi = min(xi.max, 1 << 24)
    x = rng.integers(-x_hi, x_hi, (draw(st.integers(1, 3)), C, 7, 6)).astype(x_dtype)
    w = rng.integers(-min(wi.max, 1 << 20), min(wi.max, 1 << 20), (O, C // group, k, k)).astype(w_dtype)
    if draw(st.booleans()):   # channels-last memory, as the interpreter hands it over
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(0, 3, 1, 2)
    zp = int(rng.integers(-100, 100))
    bias = None if draw(st.booleans()) else rng.integers(-(1 << 20), 1 << 20, O).astype(np.int32)
    mode, variant = draw(st.sampled_from(VARIANTS))
    out_bits = draw(st.sampled_from([8, 16]))
    # scale the multipliers to the accumulators' size so that outputs do not all saturate
    acc_size = (np.abs(w.astype(np.float64)).reshape(O, -1).sum(1).max() + 1) * (np.abs(x.astype(np.float64)).max() + 1)
    scale = min(0.99, (1 << out_bits) / acc_size)
    p = requant_params(rng, O, mode, variant, out_bits, scale)
    return x, zp, w, bias, Node("Conv", ["x", "w", "b"], ["y"], attrs, name="conv_q"), p, out_bits


@SETTINGS
@given(conv_cases())
def test_conv_requant_equals_requantized_accumulators(case):
    x, zp, w, bias, node, p, out_bits = case
    check(conv_accumulate, x, zp, w, bias, node, p, 1, np.int8 if out_bits == 8 else np.int16)


@pytest.mark.parametrize("x_dtype,w_dtype,expect", [(np.int8, np.int8, np.float32), (np.int16, np.int16, np.float64),
                                                    (np.int64, np.int32, np.int64)])
@pytest.mark.parametrize("mode,variant", VARIANTS)
def test_conv_requant_on_each_accumulation_path(x_dtype, w_dtype, expect, mode, variant):
    rng = np.random.default_rng(5)
    C, O = 16, 8
    if expect == np.int64:   # five x of 2**44 and +-1 weights: the bound passes 2**53, |acc| < 2**47
        C, x_hi = 64, 1 << 44
        x = np.zeros((2, C, 6, 5), x_dtype)
        x.reshape(-1)[rng.integers(0, x.size, 5)] = rng.choice([-x_hi, x_hi], 5)
        w = rng.choice([-1, 1], (O, C, 3, 3)).astype(w_dtype)
    else:
        xi, wi = np.iinfo(x_dtype), np.iinfo(w_dtype)
        x_hi = xi.max
        x = rng.integers(-x_hi, x_hi, (2, C, 6, 5)).astype(x_dtype)
        w = rng.integers(-wi.max, wi.max, (O, C, 3, 3)).astype(w_dtype)
    node = Node("Conv", ["x", "w", "b"], ["y"], {"pads": [1, 1, 1, 1]}, name="conv_q")
    assert exact_accumulation_dtype(x, 0, w.reshape(O, -1), None, node) == expect
    acc_size = float(np.abs(w.astype(np.float64)).reshape(O, -1).sum(1).max()) * float(x_hi)
    p = requant_params(rng, O, mode, variant, 8, min(0.99, 256 / acc_size))
    check(conv_accumulate, x, 0, w, rng.integers(-1000, 1000, O), node, p, 1, np.int8)


@pytest.mark.parametrize("op,attrs", [("Gemm", {}), ("Gemm", {"transB": 1}), ("MatMul", {})])
@pytest.mark.parametrize("mode,variant", VARIANTS)
def test_dense_requant_equals_requantized_accumulators(op, attrs, mode, variant):
    rng = np.random.default_rng(11)
    K, O = 300, 7
    x = rng.integers(-128, 127, (5, K)).astype(np.int8)
    w = rng.integers(-127, 127, (O, K) if attrs.get("transB") else (K, O)).astype(np.int8)
    bias = rng.integers(-5000, 5000, O).astype(np.int32)
    node = Node(op, ["x", "w", "b"], ["y"], dict(attrs), name="fc_q")
    p = requant_params(rng, O, mode, variant, 8, 2.0 ** -14)
    check(dense_accumulate, x, 3, w, bias if op == "Gemm" else None, node, p, -1, np.int8)


def test_fast_requant_is_close_to_exact():
    # fast mode (approximate): within one output step of the exact requantization here
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 127, (2, 8, 9, 9)).astype(np.int8)
    w = rng.integers(-127, 127, (4, 8, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, 4).astype(np.int32)
    node = Node("Conv", ["x", "w", "b"], ["y"], {"pads": [1, 1, 1, 1]}, name="conv_q")
    reals = rng.uniform(0.5, 1.0, 4) * 2.0 ** -12
    p = requant_params(rng, 4, RequantizationMode.sima, "double", 8, 1.0)
    p["multiplier"], p["shift"] = quantize_multiplier_for(reals, RequantizationMode.sima)
    exact = unfused(conv_accumulate(x, 5, w, bias, node), p, 1)
    fast = conv_accumulate(x, 5, w, bias, node, requant=Requant(dtype=np.int8, real=reals, **p))
    assert np.abs(fast.astype(np.int64) - exact).max() <= 1


# ---- 8-bit elementwise by table --------------------------------------------------------------

def generic(fn, a, b, *args, **kw):
    # int64 operands never take the table
    return fn(a.astype(np.int64), *args[:2], b.astype(np.int64), *args[2:], **kw)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(["add", "sub", "mul"]), st.sampled_from([np.int8, np.uint8]),
       st.booleans())
def test_elementwise_table_equals_arithmetic(seed, which, dtype, channels_last):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    shape = (2, 40, 30, 30)      # above the table's size threshold
    a = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    b = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    if channels_last:
        a = np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2)
        b = np.ascontiguousarray(np.moveaxis(b, 1, -1)).transpose(0, 3, 1, 2)
    sa, sb, so = (float(v) for v in rng.uniform(0.01, 0.2, 3))
    za, zb = (int(v) for v in rng.integers(info.min, info.max, 2, endpoint=True))
    qmin, qmax = sorted(int(v) for v in rng.integers(-128, 127, 2, endpoint=True))
    zo = int(rng.integers(qmin, qmax, endpoint=True))
    args = (sa, za, sb, zb, so, zo, qmin, qmax)
    fn, kw = {"add": (add_int, {"bits": 8}), "sub": (sub_int, {"bits": 8}), "mul": (mul_int, {})}[which]
    ref = generic(fn, a, b, *args, **kw)
    for out_dtype in (None, np.int8):
        got = fn(a, sa, za, b, sb, zb, so, zo, qmin, qmax, dtype=out_dtype, **kw)
        assert got.dtype == (np.int64 if out_dtype is None else out_dtype)
        np.testing.assert_array_equal(got, ref)
        if channels_last:   # the result keeps the operands' memory layout
            assert got.transpose(0, 2, 3, 1).flags.c_contiguous


def test_elementwise_table_is_used_and_cached():
    elementwise._table.cache_clear()
    a = np.zeros((4, 128, 128), np.int8)
    add_int(a, 0.1, 0, a, 0.1, 0, 0.2, 0, -128, 127, dtype=np.int8)
    add_int(a, 0.1, 0, a, 0.1, 0, 0.2, 0, -128, 127, dtype=np.int8)
    info = elementwise._table.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    # broadcast or small operands take the arithmetic itself
    add_int(a, 0.1, 0, a[:1], 0.1, 0, 0.2, 0, -128, 127)
    add_int(a[:, :2, :2], 0.1, 0, a[:, :2, :2], 0.1, 0, 0.2, 0, -128, 127)
    assert elementwise._table.cache_info().misses == 1
