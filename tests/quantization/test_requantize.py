"""Bit-exactness of the requantization arithmetic against plain-Python-int references.

The ``ref_*`` functions transcribe the C/C++ sources (tflite common.h,
quantization_util.cc, gemmlowp fixedpoint.h) line by line with Python ints, which never
overflow: C's truncating '/', the nudge, the masks. Separate exact-rational checks
(``Fraction``) pin down which rounding each one is, independently of the transcription.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ExecutionError, QuantizationConfigError
from core.quantization import (
    RequantizationMode,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_int64,
    multiply_by_quantized_multiplier_sima,
    multiply_by_quantized_multiplier_single_rounding,
    quantize_multiplier,
    quantize_multiplier_for,
    quantize_multiplier_sima,
    requantize,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
SETTINGS = settings(max_examples=200, deadline=None)


# --------------------------------------------------------------------------- references

def c_div(a: int, b: int) -> int:
    """C integer division: truncates towards zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = c_div(ab_64 + nudge, 1 << 31)
    return INT32_MAX if overflow else ab_x2_high32


def ref_rdbpot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_mbqm_double(x: int, m: int, shift: int) -> int:
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    return ref_rdbpot(ref_srdhm(x * (1 << left_shift), m), right_shift)


def ref_mbqm_single(x: int, m: int, shift: int) -> int:
    total_shift = 31 - shift
    rounding = 1 << (total_shift - 1)
    return (x * m + rounding) >> total_shift


def ref_mbqm_int64(x: int, m: int, shift: int) -> int:
    reduced = ((m + (1 << 15)) >> 16) if m < 0x7FFF0000 else 0x7FFF
    total_shift = 15 - shift
    return (x * reduced + (1 << (total_shift - 1))) >> total_shift


def ref_round_half_away(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2)) if v >= 0 else -math.floor(-v + Fraction(1, 2))


def ref_quantize_multiplier(real: float, single_rounding: bool = False) -> tuple[int, int]:
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = ref_round_half_away(Fraction(q) * (1 << 31))          # TfLiteRound = std::round
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed = c_div(q_fixed, 2)
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    if single_rounding and shift > 30:
        shift, q_fixed = 30, (1 << 31) - 1
    return q_fixed, shift


def ref_quantize_multiplier_sima(real: float) -> tuple[int, int]:
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    m = ref_round_half_away(Fraction(q) * (1 << 15))
    if m == 1 << 15:
        m, e = 1 << 14, e + 1
    s = 15 - e
    if s > 62:
        return 0, 0
    return m, s


def ref_sima(x: int, m: int, s: int) -> int:
    return (x * m + (1 << (s - 1))) >> s if s > 0 else x * m


# --------------------------------------------------------------------------- strategies

INT32_EDGES = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -3, -2, -1, 0, 1, 2, 3, 1 << 30, INT32_MAX - 1, INT32_MAX]
MULT_EDGES = [0, 1, 1 << 30, (1 << 30) + 1, 0x7FFEFFFF, 0x7FFF0000, 0x7FFF7FFF, 0x7FFF8000, INT32_MAX - 1, INT32_MAX]

int32s = st.one_of(st.sampled_from(INT32_EDGES), st.integers(INT32_MIN, INT32_MAX))
multipliers = st.one_of(st.sampled_from(MULT_EDGES), st.integers(1 << 30, INT32_MAX),
                        st.integers(0, INT32_MAX))
shifts = st.one_of(st.sampled_from([-31, -30, -1, 0, 1, 29, 30]), st.integers(-31, 30))
acc64 = st.one_of(st.sampled_from([-(1 << 47), (1 << 47) - 1, -1, 0, 1]),
                  st.integers(-(1 << 47), (1 << 47) - 1))
reals = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 1 - 2.0 ** -33, 1 - 2.0 ** -40, 2.0 ** -31, 2.0 ** -32,
                     2.0 ** -33, 2.0 ** -31 * (1 - 2.0 ** -40), 5e-324, 2.0 ** 30, 2.0 ** 31]),
    st.floats(min_value=0.0, max_value=2.0 ** 40, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-6, max_value=4.0),
)


@st.composite
def double_rounding_args(draw):
    """x, multiplier, shift with x * 2**max(shift, 0) inside int32 (C overflow is UB)."""
    shift = draw(shifts)
    left = max(shift, 0)
    x = draw(st.one_of(st.sampled_from([INT32_MIN >> left, INT32_MAX >> left, 0, -1, 1]),
                       st.integers(INT32_MIN >> left, INT32_MAX >> left)))
    return x, draw(st.one_of(multipliers, st.integers(INT32_MIN, -1))), shift


# --------------------------------------------------------------------------- primitives

@SETTINGS
@given(int32s, int32s)
def test_srdhm_matches_gemmlowp(a, b):
    assert saturating_rounding_doubling_high_mul(a, b) == ref_srdhm(a, b)


@SETTINGS
@given(int32s, int32s)
def test_srdhm_is_round_to_nearest_ties_up_except_saturation(a, b):
    # Independent of the transcription: the nudge + truncation rounds ties towards +inf.
    expected = INT32_MAX if a == b == INT32_MIN else math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))
    assert saturating_rounding_doubling_high_mul(a, b) == expected


def test_srdhm_known_values():
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN) == INT32_MAX
    assert saturating_rounding_doubling_high_mul(INT32_MAX, INT32_MAX) == INT32_MAX - 1
    assert saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX) == -INT32_MAX
    # -5 * 0.5 = -2.5 rounds to -2 (ties up), +5 * 0.5 = 2.5 to 3.
    assert saturating_rounding_doubling_high_mul(-5, 1 << 30) == -2
    assert saturating_rounding_doubling_high_mul(5, 1 << 30) == 3


@SETTINGS
@given(int32s, st.integers(0, 31))
def test_rdbpot_matches_gemmlowp_and_rounds_half_away_from_zero(x, exponent):
    got = rounding_divide_by_pot(x, exponent)
    assert got == ref_rdbpot(x, exponent)
    assert got == ref_round_half_away(Fraction(x, 1 << exponent))


def test_rdbpot_ties():
    assert [rounding_divide_by_pot(v, 1) for v in (-5, -3, -1, 1, 3, 5)] == [-3, -2, -1, 1, 2, 3]
    assert rounding_divide_by_pot(INT32_MIN, 31) == -1
    assert rounding_divide_by_pot(INT32_MAX, 31) == 1


# --------------------------------------------------------------------------- quantize_multiplier

@SETTINGS
@given(reals, st.booleans())
def test_quantize_multiplier_matches_tflite(real, single_rounding):
    assert quantize_multiplier(real, single_rounding=single_rounding) == ref_quantize_multiplier(real, single_rounding)


@SETTINGS
@given(st.integers(1 << 31, (1 << 32) - 1), st.integers(-40, 40))
def test_quantize_multiplier_ties_round_half_away(n, exp):
    # real = n / 2**32 * 2**exp: odd n puts q * 2**31 exactly on a .5 tie.
    real = math.ldexp(n, exp - 32)
    assert quantize_multiplier(real) == ref_quantize_multiplier(real)


def test_quantize_multiplier_edge_cases():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(1 - 2.0 ** -33) == (1 << 30, 1)     # round(q * 2**31) == 2**31
    assert quantize_multiplier(2.0 ** -32) == (1 << 30, -31)
    assert quantize_multiplier(2.0 ** -33) == (0, 0)                # shift < -31 flushes to zero
    assert quantize_multiplier(0.75 + 2.0 ** -33) == (0x60000000, 0)  # tie .5 rounds up
    assert quantize_multiplier(2.0 ** 40) == (1 << 30, 41)
    assert quantize_multiplier(2.0 ** 40, single_rounding=True) == (INT32_MAX, 30)


def test_quantize_multiplier_per_channel_arrays():
    reals_ = np.array([0.0, 0.5, 1 - 2.0 ** -33, 2.0 ** -33, 0.0123, 3.7])
    m, s = quantize_multiplier(reals_)
    assert m.dtype == np.int64 and s.dtype == np.int64 and m.shape == reals_.shape
    assert list(zip(m.tolist(), s.tolist())) == [ref_quantize_multiplier(float(r)) for r in reals_]


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "x"])
def test_quantize_multiplier_rejects_bad_reals(bad):
    with pytest.raises(QuantizationConfigError, match="real"):
        quantize_multiplier(bad)


# --------------------------------------------------------------------------- MBQM variants

@SETTINGS
@given(double_rounding_args())
def test_mbqm_double_rounding_matches_tflite(args):
    x, m, shift = args
    assert multiply_by_quantized_multiplier(x, m, shift) == ref_mbqm_double(x, m, shift)


@SETTINGS
@given(int32s, st.one_of(st.sampled_from([INT32_MIN, INT32_MAX]), int32s))
def test_mbqm_double_saturates_int32_min_squared(x, m):
    # shift 0 exercises SRDHM's saturation directly through the public wrapper.
    assert multiply_by_quantized_multiplier(x, m, 0) == ref_mbqm_double(x, m, 0)
    assert multiply_by_quantized_multiplier(INT32_MIN, INT32_MIN, 0) == INT32_MAX


def test_mbqm_double_rounding_ties():
    half = 1 << 30                                       # multiplier 0.5 with shift 0
    # Ties resolved by SRDHM (no right shift) go up; ties resolved by RDBPOT go away from 0.
    assert multiply_by_quantized_multiplier(-3, half, 0) == -1
    assert multiply_by_quantized_multiplier(3, half, 0) == 2
    assert multiply_by_quantized_multiplier(-6, half, -1) == -2     # -1.5, exact SRDHM then RDBPOT
    assert multiply_by_quantized_multiplier(6, half, -1) == 2
    assert multiply_by_quantized_multiplier_single_rounding(-6, half, -1) == -1  # single: half up


def test_mbqm_double_rejects_int32_overflow_of_left_shift():
    with pytest.raises(ExecutionError, match=r"x \* 2\*\*shift"):
        multiply_by_quantized_multiplier(1 << 30, 1 << 30, 1)
    with pytest.raises(QuantizationConfigError, match="shift"):
        multiply_by_quantized_multiplier(1, 1 << 30, 31)
    with pytest.raises(ExecutionError, match="x"):
        multiply_by_quantized_multiplier(1 << 31, 1 << 30, 0)


@SETTINGS
@given(int32s, multipliers, shifts)
def test_mbqm_single_rounding_matches_tflite(x, m, shift):
    got = multiply_by_quantized_multiplier_single_rounding(x, m, shift)
    assert got == ref_mbqm_single(x, m, shift)
    assert got == math.floor(Fraction(x * m, 1 << (31 - shift)) + Fraction(1, 2))


@SETTINGS
@given(acc64, multipliers, st.integers(-31, 7))
def test_mbqm_int64_matches_tflite_16x8(x, m, shift):
    assert multiply_by_quantized_multiplier_int64(x, m, shift) == ref_mbqm_int64(x, m, shift)


def test_mbqm_int64_reduces_multiplier_to_16_bits():
    # 0x7FFF0000 and above saturate to 0x7FFF instead of rounding up to 0x8000.
    assert multiply_by_quantized_multiplier_int64(1 << 20, 0x7FFF0000, 0) == ((1 << 20) * 0x7FFF + (1 << 14)) >> 15
    assert multiply_by_quantized_multiplier_int64(1 << 20, 0x7FFEFFFF, 0) == ((1 << 20) * 0x7FFF + (1 << 14)) >> 15
    assert multiply_by_quantized_multiplier_int64(1 << 20, (1 << 30) + (1 << 15), 0) == ref_mbqm_int64(
        1 << 20, (1 << 30) + (1 << 15), 0
    )
    # beyond TFLite's [-2**47, 2**47): the same formula, exact (no raising, no wrapping)
    assert multiply_by_quantized_multiplier_int64(1 << 47, 1 << 30, 0) == ref_mbqm_int64(1 << 47, 1 << 30, 0)
    with pytest.raises(QuantizationConfigError, match="shift"):
        multiply_by_quantized_multiplier_int64(1, 1 << 30, 8)


wide_accs = st.one_of(st.sampled_from([-(1 << 62), (1 << 62), -(1 << 47) - 1, 1 << 47, (1 << 47) + 1]),
                      st.integers(-(1 << 62), 1 << 62))


@SETTINGS
@given(st.lists(st.tuples(wide_accs, multipliers, st.integers(-31, 7)), min_size=1, max_size=20))
def test_mbqm_int64_exact_beyond_2_47(rows):
    # regression (issue 12): INT16 layers whose bias dwarfs the accumulator scale raised
    # "x must be in [-2**47, 2**47]"; now exact, vectorised, mixed with in-range elements
    x, m, s = (np.array(col, dtype=np.int64) for col in zip(*rows))
    want = [max(-(1 << 62), min(1 << 62, ref_mbqm_int64(int(a), int(b), int(c)))) for a, b, c in rows]
    assert multiply_by_quantized_multiplier_int64(x, m, s).tolist() == want


@SETTINGS
@given(st.lists(st.tuples(wide_accs, st.integers(0, (1 << 15) - 1), st.integers(0, 62)), min_size=1, max_size=20))
def test_sima_exact_beyond_2_47(rows):
    x, m, s = (np.array(col, dtype=np.int64) for col in zip(*rows))
    want = [max(-(1 << 62), min(1 << 62, (int(a) * int(b) + ((1 << (int(c) - 1)) if c else 0)) >> int(c)))
            for a, b, c in rows]
    assert multiply_by_quantized_multiplier_sima(x, m, s).tolist() == want
    # requantize of such accumulators clamps to the output range instead of raising
    out = requantize(x, m, s, RequantizationMode.sima, 0, -32768, 32767)
    assert out.tolist() == [min(max(v, -32768), 32767) for v in want]


@SETTINGS
@given(st.lists(double_rounding_args(), min_size=1, max_size=40))
def test_mbqm_vectorised_elementwise(rows):
    x, m, s = (np.array(col, dtype=np.int64) for col in zip(*rows))
    assert multiply_by_quantized_multiplier(x, m, s).tolist() == [ref_mbqm_double(*r) for r in rows]
    pos = np.abs(m) & INT32_MAX
    assert multiply_by_quantized_multiplier_single_rounding(x, pos, s).tolist() == [
        ref_mbqm_single(int(a), int(b), int(c)) for a, b, c in zip(x, pos, s)]


@SETTINGS
@given(st.lists(int32s, min_size=1, max_size=12), st.lists(st.tuples(multipliers, st.integers(-31, 0)),
                                                         min_size=1, max_size=6))
def test_per_channel_multipliers_broadcast(xs, channels):
    # acc of shape (N, C) with one (multiplier, shift) per channel C.
    acc = np.array([[x] * len(channels) for x in xs], dtype=np.int64)
    m = np.array([c[0] for c in channels], dtype=np.int64)
    s = np.array([c[1] for c in channels], dtype=np.int64)
    expected = [[ref_mbqm_double(x, mc, sc) for mc, sc in channels] for x in xs]
    assert multiply_by_quantized_multiplier(acc, m, s).tolist() == expected
    assert multiply_by_quantized_multiplier_int64(acc, m, s).tolist() == [
        [ref_mbqm_int64(x, mc, sc) for mc, sc in channels] for x in xs]


@SETTINGS
@given(reals.filter(lambda r: 2.0 ** -20 <= r < 1.0), st.integers(-(1 << 24), 1 << 24))
def test_tflite_multiplier_approximates_real_product(real, x):
    # Requantization is only useful if it lands within one unit of the exact product.
    m, s = quantize_multiplier(real)
    assert abs(multiply_by_quantized_multiplier(x, m, s) - x * real) <= 1.0


# --------------------------------------------------------------------------- sima

sima_reals = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 1 - 2.0 ** -17, 2.0 ** -48, 2.0 ** -49, 2.0 ** -47, 5e-324,
                     2.0 ** 15 - 0.75, 2.0 ** 14]),
    st.floats(min_value=0.0, max_value=2.0 ** 15 - 1, allow_nan=False),
    st.floats(min_value=1e-6, max_value=4.0),
)


@SETTINGS
@given(sima_reals)
def test_quantize_multiplier_sima_matches_definition(real):
    m, s = quantize_multiplier_sima(real)
    assert (m, s) == ref_quantize_multiplier_sima(real)
    assert m == 0 or (1 << 14) <= m < (1 << 15)
    assert 0 <= s <= 62
    if m:
        assert abs(Fraction(m, 1 << s) - Fraction(real)) <= Fraction(real) * Fraction(1, 1 << 15)


@SETTINGS
@given(st.integers(1 << 15, (1 << 16) - 1), st.integers(-30, 14))
def test_quantize_multiplier_sima_ties(n, exp):
    real = math.ldexp(n, exp - 16)                       # odd n: q * 2**15 is a .5 tie
    assert quantize_multiplier_sima(real) == ref_quantize_multiplier_sima(real)


def test_quantize_multiplier_sima_edges():
    assert quantize_multiplier_sima(0.0) == (0, 0)
    assert quantize_multiplier_sima(0.5) == (1 << 14, 15)
    assert quantize_multiplier_sima(1 - 2.0 ** -17) == (1 << 14, 14)   # rounds to 2**15: carry
    assert quantize_multiplier_sima(2.0 ** -48) == (1 << 14, 62)
    assert quantize_multiplier_sima(2.0 ** -49) == (0, 0)
    with pytest.raises(QuantizationConfigError, match="real"):
        quantize_multiplier_sima(2.0 ** 15)
    m, s = quantize_multiplier_sima(np.array([0.25, 0.3]))
    assert m.tolist() == [1 << 14, 19661] and s.tolist() == [16, 16]


sima_ms = st.one_of(st.sampled_from([0, 1, 1 << 14, (1 << 15) - 1]), st.integers(0, (1 << 15) - 1))
sima_xs = st.one_of(st.sampled_from([-(1 << 47), 1 << 47, INT32_MIN, INT32_MAX, -1, 0, 1]),
                    st.integers(-(1 << 47), 1 << 47), int32s)


@SETTINGS
@given(sima_xs, sima_ms, st.one_of(st.sampled_from([0, 1, 61, 62]), st.integers(0, 62)))
def test_sima_matches_definition_without_overflow(x, m, s):
    got = multiply_by_quantized_multiplier_sima(x, m, s)
    assert got == ref_sima(x, m, s)
    assert got == math.floor(Fraction(x * m, 1 << s) + Fraction(1, 2))      # round half up


def test_sima_ties_round_half_up():
    m, s = quantize_multiplier_sima(0.5)
    assert [multiply_by_quantized_multiplier_sima(v, m, s) for v in (-3, -1, 1, 3)] == [-1, 0, 1, 2]


@SETTINGS
@given(sima_reals.filter(lambda r: 2.0 ** -20 <= r < 1.0), int32s)
def test_sima_approximates_real_product(real, x):
    m, s = quantize_multiplier_sima(real)
    bound = 0.5 + abs(x) * real * 2.0 ** -15 + 1e-9
    assert abs(multiply_by_quantized_multiplier_sima(x, m, s) - x * real) <= bound


def test_sima_rejects_out_of_range_arguments():
    with pytest.raises(QuantizationConfigError, match="multiplier"):
        multiply_by_quantized_multiplier_sima(1, 1 << 15, 3)
    with pytest.raises(QuantizationConfigError, match="shift"):
        multiply_by_quantized_multiplier_sima(1, 1 << 14, 63)
    assert multiply_by_quantized_multiplier_sima((1 << 47) + 1, 1 << 14, 3) == (((1 << 47) + 1) * (1 << 14) + 4) >> 3


# --------------------------------------------------------------------------- requantize

@SETTINGS
@given(st.lists(int32s, min_size=1, max_size=30), st.floats(min_value=1e-5, max_value=2.0),
       st.integers(-128, 127))
def test_requantize_sima_and_tflite_match_references(accs, real, zp):
    acc = np.array(accs, dtype=np.int64)
    m, s = quantize_multiplier_for(real, RequantizationMode.sima)
    got = requantize(acc, m, s, RequantizationMode.sima, zp, -128, 127)
    assert got.dtype == np.int64
    assert got.tolist() == [min(max(ref_sima(a, m, s) + zp, -128), 127) for a in accs]

    m, s = quantize_multiplier_for(real, "tflite")
    big = [a >> 2 for a in accs]           # real <= 2 gives shift <= 2: x * 2**shift stays int32
    got = requantize(np.array(big), m, s, "tflite", zp, -128, 127)
    assert got.tolist() == [min(max(ref_mbqm_double(a, m, s) + zp, -128), 127) for a in big]

    m, s = quantize_multiplier_for(real, "tflite", tflite_rounding="single")
    got = requantize(acc, m, s, "tflite", zp, -128, 127, tflite_rounding="single")
    assert got.tolist() == [min(max(ref_mbqm_single(a, m, s) + zp, -128), 127) for a in accs]


def test_requantize_int64_variant_for_16x8():
    acc = np.array([-(1 << 40), -12345678901, 0, 987654321, (1 << 40)], dtype=np.int64)
    m, s = quantize_multiplier(3.1e-7)
    got = requantize(acc, m, s, RequantizationMode.tflite, 0, -32768, 32767, tflite_rounding="int64")
    assert got.tolist() == [min(max(ref_mbqm_int64(int(a), m, s), -32768), 32767) for a in acc]


def test_requantize_saturates_to_output_range_and_int32_outputs_pass_through():
    m, s = quantize_multiplier_sima(1.0)
    acc = np.array([-1000, -129, -128, 0, 127, 128, 1000])
    assert requantize(acc, m, s, "sima", 0, -128, 127).tolist() == [-128, -128, -128, 0, 127, 127, 127]
    assert requantize(acc, m, s, "sima", 5, -128, 127).tolist() == [-128, -124, -123, 5, 127, 127, 127]
    assert requantize(acc, m, s, "sima", 0, INT32_MIN, INT32_MAX).tolist() == acc.tolist()


def test_requantize_channel_axis_nchw():
    acc = np.arange(2 * 3 * 2 * 2, dtype=np.int64).reshape(2, 3, 2, 2) * 1000 - 6000
    reals_ = np.array([0.01, 0.002, 0.05])
    m, s = quantize_multiplier(reals_)
    got = requantize(acc, m, s, "tflite", -3, -128, 127, channel_axis=1)
    expected = np.empty_like(acc)
    for idx in np.ndindex(acc.shape):
        c = idx[1]
        expected[idx] = min(max(ref_mbqm_double(int(acc[idx]), int(m[c]), int(s[c])) - 3, -128), 127)
    assert got.tolist() == expected.tolist()
    # The same numbers laid out NHWC with channel_axis=-1.
    got_nhwc = requantize(acc.transpose(0, 2, 3, 1), m, s, "tflite", -3, -128, 127, channel_axis=-1)
    assert got_nhwc.tolist() == expected.transpose(0, 2, 3, 1).tolist()


def test_requantize_is_fast_enough_for_conv_outputs():
    # A 1x64x56x56 conv output (200k values) must not be a bottleneck of execution.
    import time

    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 20), 1 << 20, size=(1, 64, 56, 56), dtype=np.int64)
    m, s = quantize_multiplier(rng.uniform(1e-4, 1e-2, size=64))
    start = time.perf_counter()
    requantize(acc, m, s, "tflite", 0, -128, 127, channel_axis=1)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "kwargs, error, culprit",
    [
        (dict(mode="fast"), QuantizationConfigError, "mode"),
        (dict(mode=3), QuantizationConfigError, "mode"),
        (dict(qmin=10, qmax=-10), QuantizationConfigError, "qmin"),
        (dict(qmax=1 << 31), QuantizationConfigError, "qmax"),
        (dict(zero_point=200), QuantizationConfigError, "zero_point"),
        (dict(tflite_rounding="triple"), QuantizationConfigError, "tflite_rounding"),
        (dict(acc=np.array([1.5, 2.0])), ExecutionError, "acc"),
        (dict(multiplier=np.array([1 << 30] * 4), channel_axis=0), QuantizationConfigError, "multiplier"),
        (dict(shift=np.array([-1, -2]), channel_axis=5), QuantizationConfigError, "channel_axis"),
        (dict(multiplier=np.array([1 << 30] * 4)), QuantizationConfigError, "broadcast"),
        (dict(multiplier=2.5), QuantizationConfigError, "multiplier"),
    ],
)
def test_requantize_rejects_bad_arguments_naming_them(kwargs, error, culprit):
    args = dict(acc=np.array([1, 2, 3]), multiplier=1 << 30, shift=-1, mode="tflite",
                zero_point=0, qmin=-128, qmax=127)
    args.update(kwargs)
    with pytest.raises(error, match=culprit):
        requantize(**args)
