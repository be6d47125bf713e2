"""Integer kernels of the non-GEMM ops against plain-Python-int transcriptions of TensorFlow
Lite's reference kernels (reference/integer_ops/add.h, mul.h, pooling.h, mean.h,
reference_ops.h ConcatenationWithScaling, sub.h; kernels/add.cc, sub.cc, mul.cc, reduce.cc,
kernel_util.cc CalculateActivationRangeQuantized).

The ``ref_*`` functions follow the C code line by line with Python ints (C's truncating '/',
the SRDHM nudge, the RDBPOT mask), and loops instead of numpy; float32 arithmetic uses numpy
float32 scalars. Hand-computed cases pin down the rounding independently of the transcription.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.errors import ExecutionError, QuantizationConfigError, UnsupportedOperatorError
from core.ir.graph import Node
from core.ops.activation import activation_range_int, clip_int, relu_int
from core.ops.elementwise import add_int, mul_int, sub_int
from core.ops.pool import avg_pool_int, global_avg_pool_int, max_pool_int
from core.ops.resize import resize_nearest_int
from core.ops.shape import concat_int

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
SETTINGS = settings(max_examples=60, deadline=None)
RANGES = {8: (-128, 127), 16: (-32768, 32767)}


# --------------------------------------------------------------------------- references

def c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def ref_quantize_multiplier(real: float) -> tuple[int, int]:
    if real == 0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = math.floor(Fraction(q) * (1 << 31) + Fraction(1, 2))   # std::round, q > 0
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def ref_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def ref_rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if remainder > threshold else 0)


def ref_mbqm(x: int, m: int, shift: int) -> int:
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    v = x * (1 << left)
    assert INT32_MIN <= v <= INT32_MAX
    return ref_rdbpot(ref_srdhm(v, m), right)


def f32(v) -> float:
    return float(np.float32(v))


def ref_add_sub(a, sa, za, b, sb, zb, so, zo, qmin, qmax, bits, op_sign):
    """add.cc/sub.cc Prepare + AddElementwise / SubElementwise."""
    left_shift = 15 if bits == 16 else 20
    sa, sb, so = f32(sa), f32(sb), f32(so)
    twice_max = 2 * max(sa, sb)
    m1, s1 = ref_quantize_multiplier(sa / twice_max)
    m2, s2 = ref_quantize_multiplier(sb / twice_max)
    mo, so_ = ref_quantize_multiplier(twice_max / ((1 << left_shift) * so))
    assert s1 <= 0 and s2 <= 0 and so_ <= 0
    if op_sign < 0 and bits == 16:
        m2 = -m2                           # int16 SUB: the ADD kernel, second multiplier negated
    out = []
    for x1, x2 in zip(a, b):
        v1 = (x1 - za) * (1 << left_shift)
        v2 = (x2 - zb) * (1 << left_shift)
        r1 = ref_mbqm(v1, m1, s1)
        r2 = ref_mbqm(v2, m2, s2)
        raw = r1 - r2 if (op_sign < 0 and bits == 8) else r1 + r2
        raw_out = ref_mbqm(raw, mo, so_) + zo
        out.append(min(qmax, max(qmin, raw_out)))
    return out


def ref_mul(a, sa, za, b, sb, zb, so, zo, qmin, qmax):
    m, s = ref_quantize_multiplier(f32(sa) * f32(sb) / f32(so))
    return [min(qmax, max(qmin, zo + ref_mbqm((x1 - za) * (x2 - zb), m, s))) for x1, x2 in zip(a, b)]


def ref_round_div(acc: int, count: int) -> int:
    return c_div(acc + count // 2, count) if acc > 0 else c_div(acc - count // 2, count)


def ref_avg_pool(x, kh, kw, sh, sw, ph, pw, out_h, out_w, qmin, qmax):
    """integer_ops::AveragePool on one N, C plane (x: list of rows)."""
    height, width = len(x), len(x[0])
    out = []
    for oy in range(out_h):
        row = []
        for ox in range(out_w):
            in_x_origin = ox * sw - pw
            in_y_origin = oy * sh - ph
            fx_start, fx_end = max(0, -in_x_origin), min(kw, width - in_x_origin)
            fy_start, fy_end = max(0, -in_y_origin), min(kh, height - in_y_origin)
            acc, count = 0, 0
            for fy in range(fy_start, fy_end):
                for fx in range(fx_start, fx_end):
                    acc += x[in_y_origin + fy][in_x_origin + fx]
                    count += 1
            assert count
            acc = ref_round_div(acc, count)
            row.append(min(qmax, max(qmin, acc)))
        out.append(row)
    return out


def ref_max_pool(x, kh, kw, sh, sw, ph, pw, out_h, out_w):
    height, width = len(x), len(x[0])
    out = []
    for oy in range(out_h):
        row = []
        for ox in range(out_w):
            ix0, iy0 = ox * sw - pw, oy * sh - ph
            best = None
            for fy in range(max(0, -iy0), min(kh, height - iy0)):
                for fx in range(max(0, -ix0), min(kw, width - ix0)):
                    v = x[iy0 + fy][ix0 + fx]
                    best = v if best is None else max(best, v)
            row.append(best)
        out.append(row)
    return out


def ref_mean(plane, sin, zin, sout, zout, qmin, qmax):
    """reference_integer_ops::Mean for one (batch, channel)."""
    m, s = ref_quantize_multiplier(f32(sin) / f32(sout))
    n = len(plane)
    acc = 0
    for v in plane:
        acc += v - zin
    acc = ref_mbqm(acc, m, s)
    acc = ref_round_div(acc, n)
    acc += zout
    return min(max(acc, qmin), qmax)


def std_round(v: float) -> int:
    r = math.floor(abs(v) + 0.5)        # v is a float32 widened: abs(v) + 0.5 is exact in double
    return -r if v < 0 else r


def ref_concat_part(x, s_in, z_in, s_out, z_out, qmin, qmax):
    """ConcatenationWithScaling's inner loop for one input (float32 arithmetic)."""
    s_in, s_out = np.float32(s_in), np.float32(s_out)
    if z_in == z_out and s_in == s_out:
        return list(x)
    inverse_output_scale = np.float32(1.0) / s_out
    scale = s_in * inverse_output_scale
    bias = np.float32(-z_in) * scale
    out = []
    for v in x:
        value = std_round(float(np.float32(v) * scale + bias)) + z_out
        out.append(max(min(qmax, value), qmin))
    return out


def ref_activation_range(zp, scale, lo, hi, qmin, qmax):
    def quantize(f):
        return zp + std_round(float(np.float32(f) / np.float32(scale)))
    act_min = qmin if lo == -math.inf else max(qmin, quantize(lo))
    act_max = qmax if hi == math.inf else min(qmax, quantize(hi))
    return act_min, act_max


# --------------------------------------------------------------------------- strategies

scales = st.floats(2.0 ** -13, 10.0, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def binary_case(draw, bits):
    qmin, qmax = RANGES[bits]
    n = draw(st.integers(1, 8))
    vals = st.integers(qmin, qmax)
    a = draw(st.lists(vals, min_size=n, max_size=n))
    b = draw(st.lists(vals, min_size=n, max_size=n))
    if bits == 8:
        zps = [draw(st.sampled_from([qmin, qmax]) | vals) for _ in range(3)]
    else:
        zps = [0, 0, 0]                    # TFLite's int16 is symmetric
    sa = draw(scales)
    sb = draw(st.sampled_from([sa]) | scales | st.just(sa * 1e-3))
    so = draw(scales)
    return a, sa, zps[0], b, sb, zps[1], so, zps[2], qmin, qmax


def _add_ok(sa, sb, so, bits):
    left = 15 if bits == 16 else 20
    sa, sb, so = f32(sa), f32(sb), f32(so)
    return sa > 0 and sb > 0 and 2 * max(sa, sb) / ((1 << left) * so) < 1 and min(sa, sb) / (2 * max(sa, sb)) > 2.0**-31


# --------------------------------------------------------------------------- Add / Sub / Mul

@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("op,sign", [(add_int, 1), (sub_int, -1)])
@SETTINGS
@given(data=st.data())
def test_add_sub_match_tflite_reference(bits, op, sign, data):
    a, sa, za, b, sb, zb, so, zo, qmin, qmax = data.draw(binary_case(bits))
    assume(_add_ok(sa, sb, so, bits))
    dtype = np.int8 if bits == 8 else np.int16
    got = op(np.array(a, dtype), sa, za, np.array(b, dtype), sb, zb, so, zo, qmin, qmax, bits)
    assert got.dtype == np.int64
    assert got.tolist() == ref_add_sub(a, sa, za, b, sb, zb, so, zo, qmin, qmax, bits, sign)


@pytest.mark.parametrize("bits", [8, 16])
@SETTINGS
@given(data=st.data())
def test_mul_matches_tflite_reference(bits, data):
    a, sa, za, b, sb, zb, so, zo, qmin, qmax = data.draw(binary_case(bits))
    m, s = ref_quantize_multiplier(f32(sa) * f32(sb) / f32(so))
    assume(-31 <= s <= 0 or max(abs(x - za) * abs(y - zb) for x, y in zip(a, b)) << s <= INT32_MAX)
    assume(s <= 30)
    dtype = np.int8 if bits == 8 else np.int16
    got = mul_int(np.array(a, dtype), sa, za, np.array(b, dtype), sb, zb, so, zo, qmin, qmax)
    assert got.tolist() == ref_mul(a, sa, za, b, sb, zb, so, zo, qmin, qmax)


def test_add_equal_scales_is_exact_integer_sum_and_saturates():
    a = np.array([-128, -100, 0, 50, 100, 127], np.int8)
    b = np.array([-128, -50, 0, 50, 27, 127], np.int8)
    got = add_int(a, 0.5, 0, b, 0.5, 0, 0.5, 0, -128, 127)
    assert got.tolist() == [-128, -128, 0, 100, 127, 127]       # saturation at both ends
    got = sub_int(a, 0.5, 0, b, 0.5, 0, 0.5, 0, -128, 127)
    assert got.tolist() == [0, -50, 0, 0, 73, 0]


def test_add_zero_points_at_range_ends_and_rounding():
    # real a = 0.1 * (a + 128), b = 0.1 * (b - 127); out scale 0.2, zp -128
    a = np.array([-128, 127, 0, 1], np.int8)
    b = np.array([127, -128, 127, 127], np.int8)
    got = add_int(a, 0.1, -128, b, 0.1, 127, 0.2, -128, -128, 127)
    want = [-128, -128, -64, -63]  # 0 -> -128; 25.5-25.5=0 -> -128; 12.8/0.2=64; 12.9/0.2=64.5
    assert got.tolist() == want
    assert got.tolist() == ref_add_sub(a.tolist(), 0.1, -128, b.tolist(), 0.1, 127, 0.2, -128, -128, 127, 8, 1)


def test_add_very_different_scales_stays_within_one_lsb():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, 200).astype(np.int8)
    b = rng.integers(-128, 128, 200).astype(np.int8)
    sa, sb, so = 0.5, 0.5e-4, 0.5
    got = add_int(a, sa, 3, b, sb, -7, so, 1, -128, 127)
    real = (f32(sa) * (a.astype(float) - 3) + f32(sb) * (b.astype(float) + 7)) / f32(so) + 1
    assert np.all(np.abs(got - np.clip(real, -128, 127)) <= 1)
    assert got.tolist() == ref_add_sub(a.tolist(), sa, 3, b.tolist(), sb, -7, so, 1, -128, 127, 8, 1)


def test_add_broadcasts_and_int16():
    a = np.array([[1000], [-32768]], np.int16)
    b = np.array([[1, 2, 3]], np.int16)
    got = add_int(a, 2.0 ** -8, 0, b, 2.0 ** -8, 0, 2.0 ** -8, 0, -32768, 32767, bits=16)
    assert got.shape == (2, 3)
    assert got.tolist() == [[1001, 1002, 1003], [-32767, -32766, -32765]]


def test_mul_values():
    a = np.array([10, -10, 127, -128], np.int8)
    b = np.array([3, 3, 127, -128], np.int8)
    got = mul_int(a, 0.1, 0, b, 0.1, 0, 0.1, 0, -128, 127)
    assert got.tolist() == [3, -3, 127, 127]     # 0.1*10*0.1*3/0.1 = 3; saturates at qmax


def test_binary_errors():
    x = np.array([1, 2], np.int8)
    with pytest.raises(QuantizationConfigError, match="bits"):
        add_int(x, 0.1, 0, x, 0.1, 0, 0.1, 0, -128, 127, bits=12)
    with pytest.raises(QuantizationConfigError, match="out_scale"):
        add_int(x, 0.1, 0, x, 0.1, 0, -1.0, 0, -128, 127)
    with pytest.raises(QuantizationConfigError, match="out_zp"):
        add_int(x, 0.1, 0, x, 0.1, 0, 0.1, 200, -128, 127)
    with pytest.raises(QuantizationConfigError, match=r"\(0, 1\)"):
        add_int(x, 1.0, 0, x, 1.0, 0, 1e-9, 0, -128, 127)        # output multiplier >= 1
    with pytest.raises(ExecutionError, match="a_q"):
        add_int(np.array([0.5]), 0.1, 0, x, 0.1, 0, 0.1, 0, -128, 127)
    with pytest.raises(ExecutionError, match="overflows int32"):
        add_int(np.array([70000], np.int32), 0.1, -32768, x, 0.1, 0, 0.1, 0, -32768, 32767, bits=16)
    with pytest.raises(ExecutionError, match="broadcast"):
        mul_int(x, 0.1, 0, np.array([1, 2, 3], np.int8), 0.1, 0, 0.1, 0, -128, 127)


# --------------------------------------------------------------------------- pooling

@st.composite
def pool_case(draw, bits):
    qmin, qmax = RANGES[bits]
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    assume(h + 2 * ph >= kh and w + 2 * pw >= kw)
    x = draw(st.lists(st.lists(st.integers(qmin, qmax), min_size=w, max_size=w), min_size=h, max_size=h))
    return x, kh, kw, sh, sw, ph, pw


def _pool_node(op, kh, kw, sh, sw, ph, pw, **extra):
    return Node(op, ["x"], ["y"], {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], **extra},
                name="pool0")


@pytest.mark.parametrize("bits", [8, 16])
@SETTINGS
@given(data=st.data())
def test_avg_pool_matches_tflite_reference(bits, data):
    x, kh, kw, sh, sw, ph, pw = data.draw(pool_case(bits))
    qmin, qmax = RANGES[bits]
    lo, hi = data.draw(st.sampled_from([(qmin, qmax), (qmin // 2, qmax // 3)]))
    dtype = np.int8 if bits == 8 else np.int16
    got = avg_pool_int(np.array(x, dtype)[None, None], _pool_node("AveragePool", kh, kw, sh, sw, ph, pw), lo, hi)
    out_h, out_w = got.shape[2:]
    assert (out_h, out_w) == ((len(x) + 2 * ph - kh) // sh + 1, (len(x[0]) + 2 * pw - kw) // sw + 1)
    assert got[0, 0].tolist() == ref_avg_pool(x, kh, kw, sh, sw, ph, pw, out_h, out_w, lo, hi)


@pytest.mark.parametrize("bits", [8, 16])
@SETTINGS
@given(data=st.data())
def test_max_pool_matches_tflite_reference(bits, data):
    x, kh, kw, sh, sw, ph, pw = data.draw(pool_case(bits))
    dtype = np.int8 if bits == 8 else np.int16
    got = max_pool_int(np.array(x, dtype)[None, None], _pool_node("MaxPool", kh, kw, sh, sw, ph, pw))
    assert got.dtype == dtype
    out_h, out_w = got.shape[2:]
    assert got[0, 0].tolist() == ref_max_pool(x, kh, kw, sh, sw, ph, pw, out_h, out_w)


def test_max_pool_padding_never_wins_and_fused_clamp():
    x = np.full((1, 1, 2, 2), -128, np.int8)
    node = _pool_node("MaxPool", 3, 3, 1, 1, 1, 1)
    assert max_pool_int(x, node).tolist() == x.tolist()                  # -128, not the pad
    x = np.array([[[[-100, 5], [20, 120]]]], np.int8)
    assert max_pool_int(x, _pool_node("MaxPool", 1, 1, 1, 1, 0, 0), -10, 100).tolist() == [[[[-10, 5], [20, 100]]]]


def test_avg_pool_ties_round_away_from_zero_and_padding_excluded():
    # 2x2 windows, stride 2: sums 2, -2, 6, -6 over 4 taps -> 0.5, -0.5, 1.5, -1.5
    x = np.array([[1, 1, -1, -1, 2, 2, -2, -2],
                  [0, 0, 0, 0, 1, 1, -1, -1]], np.int8)[None, None]
    node = _pool_node("AveragePool", 2, 2, 2, 2, 0, 0)
    assert avg_pool_int(x, node, -128, 127).tolist() == [[[[1, -1, 2, -2]]]]
    # 3x3 with pad 1 on a 2x2 input of 7s: every window holds only the 4 real taps -> 7
    x = np.full((1, 1, 2, 2), 7, np.int8)
    node = _pool_node("AveragePool", 3, 3, 1, 1, 1, 1)
    assert avg_pool_int(x, node, -128, 127).tolist() == [[[[7, 7], [7, 7]]]]
    # count_include_pad: pads count as the zero point (real 0): (4*7 + 5*(-3)) / 9 = 13/9 -> 1
    node = _pool_node("AveragePool", 3, 3, 1, 1, 1, 1, count_include_pad=1)
    assert avg_pool_int(x, node, -128, 127, zero_point=-3).tolist() == [[[[1, 1], [1, 1]]]]
    with pytest.raises(QuantizationConfigError, match="zero_point"):
        avg_pool_int(x, node, -128, 127)


def test_avg_pool_saturates_to_fused_range_and_errors():
    x = np.full((1, 2, 2, 2), 127, np.int8)
    node = _pool_node("AveragePool", 2, 2, 1, 1, 0, 0)
    assert avg_pool_int(x, node, -128, 100).tolist() == [[[[100]], [[100]]]]
    with pytest.raises(ExecutionError, match="pool0"):
        avg_pool_int(np.zeros((1, 1, 2, 2), np.float32), node, -128, 127)
    with pytest.raises(ExecutionError, match="pool0"):
        max_pool_int(np.zeros((2, 2), np.int8), node)


@pytest.mark.parametrize("bits", [8, 16])
@SETTINGS
@given(data=st.data())
def test_global_avg_pool_matches_tflite_mean(bits, data):
    qmin, qmax = RANGES[bits]
    c, h, w = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = np.array(data.draw(st.lists(st.integers(qmin, qmax), min_size=c * h * w, max_size=c * h * w)))
    x = x.reshape(1, c, h, w).astype(np.int8 if bits == 8 else np.int16)
    zin = data.draw(st.integers(qmin, qmax)) if bits == 8 else 0
    zout = data.draw(st.integers(qmin, qmax)) if bits == 8 else 0
    sin = data.draw(scales)
    sout = data.draw(st.just(sin) | scales.filter(lambda s: 0.01 < f32(sin) / f32(s) < 100))
    got = global_avg_pool_int(x, sin, zin, sout, zout, qmin, qmax)
    assert got.shape == (1, c, 1, 1)
    want = [ref_mean(x[0, k].reshape(-1).tolist(), sin, zin, sout, zout, qmin, qmax) for k in range(c)]
    assert got.reshape(-1).tolist() == want


def test_global_avg_pool_ties_and_requantization():
    x = np.array([1, 2, 3, 4, -1, -2, -3, -4], np.int8).reshape(1, 2, 2, 2)   # means 2.5, -2.5
    assert global_avg_pool_int(x, 0.1, 0, 0.1, 0, -128, 127).reshape(-1).tolist() == [3, -3]
    # output scale twice the input's: 1.25, -1.25 -> 1, -1 (+ zp 5)
    assert global_avg_pool_int(x, 0.1, 0, 0.2, 5, -128, 127).reshape(-1).tolist() == [6, 4]
    with pytest.raises(QuantizationConfigError, match="out_zp"):
        global_avg_pool_int(x, 0.1, 0, 0.1, 300, -128, 127)


# --------------------------------------------------------------------------- activations

@SETTINGS
@given(zp=st.integers(-128, 127), scale=scales,
       lo=st.sampled_from([-math.inf, 0.0, -1.0, -6.0]) | st.floats(-10.0, 0.0, width=32),
       hi=st.sampled_from([math.inf, 6.0, 1.0]) | st.floats(0.0, 10.0, width=32),
       x=st.lists(st.integers(-128, 127), min_size=1, max_size=10))
def test_clip_matches_tflite_activation_range(zp, scale, lo, hi, x):
    act_min, act_max = ref_activation_range(zp, scale, lo, hi, -128, 127)
    assert activation_range_int(zp, scale, lo, hi, -128, 127) == (act_min, act_max)
    got = clip_int(np.array(x, np.int8), zp, scale, lo, hi, -128, 127)
    assert got.tolist() == [min(act_max, max(act_min, v)) for v in x]


def test_relu_and_relu6_values():
    x = np.array([-128, -11, -10, -9, 0, 100, 110, 111, 127], np.int8)
    assert relu_int(x, -10, 0.05, -128, 127).tolist() == [-10, -10, -10, -9, 0, 100, 110, 111, 127]
    # relu6: 6 / 0.05 = 120 -> -10 + 120 = 110
    assert clip_int(x, -10, 0.05, 0.0, 6.0, -128, 127).tolist() == [-10, -10, -10, -9, 0, 100, 110, 110, 110]
    # zero point at the top of the range: relu keeps only the zero point
    assert relu_int(x, 127, 0.1, -128, 127).tolist() == [127] * 9
    # a tie: 0.25 / 0.5 = 0.5 rounds away from zero -> 1; -0.25 -> -1
    assert activation_range_int(0, 0.5, -0.25, 0.25, -128, 127) == (-1, 1)
    assert relu_int(np.array([-5, 5], np.int16), 0, 1e-3, -32768, 32767).tolist() == [0, 5]


def test_clip_errors():
    with pytest.raises(QuantizationConfigError, match="scale"):
        clip_int(np.array([1], np.int8), 0, 0.0, 0, 6, -128, 127)
    with pytest.raises(QuantizationConfigError, match="lo"):
        clip_int(np.array([1], np.int8), 0, 0.1, 6, 0, -128, 127)
    with pytest.raises(ExecutionError, match="x_q"):
        relu_int(np.array([1.0]), 0, 0.1, -128, 127)


# --------------------------------------------------------------------------- concat, resize

@SETTINGS
@given(data=st.data())
def test_concat_matches_tflite_concatenation_with_scaling(data):
    qmin, qmax = -128, 127
    k = data.draw(st.integers(1, 3))
    s_out, z_out = data.draw(scales), data.draw(st.integers(qmin, qmax))
    parts, s_in, z_in = [], [], []
    for _ in range(k):
        n = data.draw(st.integers(1, 4))
        parts.append(data.draw(st.lists(st.integers(qmin, qmax), min_size=n, max_size=n)))
        same = data.draw(st.booleans())
        s_in.append(s_out if same else data.draw(scales))
        z_in.append(z_out if same else data.draw(st.integers(qmin, qmax)))
    got = concat_int([np.array([p], np.int8) for p in parts], s_in, z_in, s_out, z_out, 1, qmin, qmax)
    want = []
    for p, s, z in zip(parts, s_in, z_in):
        want += ref_concat_part(p, s, z, s_out, z_out, qmin, qmax)
    assert got.tolist() == [want]


def test_concat_values_and_ties():
    a = np.array([[1, -2]], np.int8)
    b = np.array([[1, 3, -3]], np.int8)
    # b: scale 0.5 -> out scale 1: 0.5 rounds to 1, 1.5 to 2, -1.5 to -2 (half away from zero)
    got = concat_int([a, b], [1.0, 0.5], [0, 0], 1.0, 0, 1, -128, 127)
    assert got.tolist() == [[1, -2, 1, 2, -2]]
    # saturation and zero points at the range ends
    got = concat_int([np.array([127, -128], np.int8)], [1.0], [-128], 1.0, 127, 0, -128, 127)
    assert got.tolist() == [127, 127]
    with pytest.raises(QuantizationConfigError, match="in_scales"):
        concat_int([a, b], [1.0], [0, 0], 1.0, 0, 1, -128, 127)
    with pytest.raises(ExecutionError, match="axis"):
        concat_int([a, b], [1.0, 1.0], [0, 0], 1.0, 0, 0, -128, 127)


def test_resize_nearest_int_is_the_float_gather():
    x = np.arange(-6, 6, dtype=np.int8).reshape(1, 1, 3, 4)
    node = Node("Resize", ["x", "", "s"], ["y"], {"mode": "nearest", "nearest_mode": "floor",
                                                  "coordinate_transformation_mode": "asymmetric"}, name="rs")
    scales = np.array([1, 1, 2, 0.5], np.float32)
    got = resize_nearest_int(x, node, scales=scales)
    assert got.dtype == np.int8
    assert got[0, 0].tolist() == [[-6, -4], [-6, -4], [-2, 0], [-2, 0], [2, 4], [2, 4]]
    from core.ops.resize import _run
    want = _run(node, [x.astype(np.float32), None, scales])[0]
    assert np.array_equal(got, want.astype(np.int8))
    with pytest.raises(UnsupportedOperatorError):
        resize_nearest_int(x, Node("Resize", ["x"], ["y"], {"mode": "linear"}), scales=scales)
    crop = Node("Resize", ["x"], ["y"], {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"})
    with pytest.raises(QuantizationConfigError, match="extrapolation_q"):
        resize_nearest_int(x, crop, roi=np.array([0, 0, 0, 0, 1, 1, 1, 1.5], np.float32), scales=scales)


def test_int16_sub_negates_the_multiplier_at_srdhm_ties():
    # m_b = Q31(32769/2**17): odd * 2**15, so (b << 15) * m_b is an exact SRDHM tie for odd b.
    # SRDHM rounds ties towards +inf, so SRDHM(x, -m) != -SRDHM(x, m): TFLite's int16 SUB (ADD
    # kernel with m_b negated) gives 8192 / -8191 where subtracting the scaled b would give
    # 8191 / -8192.
    sb, so = 32769 / 65536, float(np.float32(2 / 32768 * 1.0001))
    a = np.zeros(2, np.int16)
    b = np.array([-1, 1], np.int16)
    got = sub_int(a, 1.0, 0, b, sb, 0, so, 0, -32768, 32767, bits=16)
    assert got.tolist() == [8192, -8191]
    assert got.tolist() == ref_add_sub([0, 0], 1.0, 0, [-1, 1], sb, 0, so, 0, -32768, 32767, 16, -1)


def test_pinned_cases_where_tflite_differs_from_exact_arithmetic():
    # Concat requantizes in float32: -68 -> round(0.41441208 * (-68 - 74) / 0.34717709) = -170
    # (exact rational arithmetic gives -169), + zero point 100.
    got = concat_int([np.array([-68], np.int8)], [0.41441208124160767], [74], 0.34717708826065063, 100, 0, -128, 127)
    assert got.tolist() == [-70]
    assert got.tolist() == ref_concat_part([-68], 0.41441208124160767, 74, 0.34717708826065063, 100, -128, 127)
    # Mean double-rounds: MBQM(11, 0.401) = RDBPOT(SRDHM(11, 0.802 Q31) = 9, 1) = 5 (not 4),
    # then (5 + 1) / 3 = 2, while the exact mean 11 * 0.401 / 3 = 1.47 rounds to 1.
    x = np.array([-71, 5, 77], np.int8).reshape(1, 1, 1, 3)
    assert global_avg_pool_int(x, 0.28325074911117554, 0, 0.7063497304916382, 0, -128, 127).item() == 2
    # Add uses the float32 scales: with the float64 values the multipliers differ and give -94.
    sa, sb, so = 0.5278831675413366, 0.8910371634738442, 0.9144509091869953
    got = add_int(np.array([-108], np.int8), sa, 0, np.array([-33], np.int8), sb, 0, so, 0, -128, 127)
    assert got.tolist() == [-95]
    assert got.tolist() == ref_add_sub([-108], sa, 0, [-33], sb, 0, so, 0, -128, 127, 8, 1)


def test_resize_nearest_int_crop_fills_the_quantized_extrapolation_value():
    x = np.arange(-6, 6, dtype=np.int8).reshape(1, 1, 3, 4)
    crop = Node("Resize", ["x"], ["y"], {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize",
                                         "extrapolation_value": 0.0}, name="crop")
    roi = np.array([0, 0, 0, 0, 1, 1, 1, 1.5], np.float32)
    scales = np.array([1, 1, 1, 2], np.float32)
    got = resize_nearest_int(x, crop, roi=roi, scales=scales, extrapolation_q=-7)
    from core.ops.resize import _run
    marker = Node("Resize", ["x"], ["y"], {**crop.attrs, "extrapolation_value": 99.0})
    want = _run(marker, [x.astype(np.float32), roi, scales, None])[0]
    inside = want != 99
    assert got.dtype == np.int8 and got.shape == want.shape
    assert np.array_equal(got[inside], want[inside].astype(np.int8))
    assert got[0, 0, :, 5:].tolist() == [[-7] * 3] * 3 and np.all(got[~inside] == -7)
    with pytest.raises(QuantizationConfigError, match="does not fit"):
        resize_nearest_int(x, crop, roi=roi, scales=scales, extrapolation_q=300)
