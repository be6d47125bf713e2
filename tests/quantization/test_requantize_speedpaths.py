"""BlockRequantizer (the block-by-block requantization the conv/dense kernels fuse) against
requantize() itself, bit for bit: on its float64 route (taken where a bound proves it exact),
right at and just past that bound, at rounding ties, and on the int64 fallback.
requantize() is checked against plain-Python references in test_requantize.py."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import ExecutionError
from core.quantization import RequantizationMode, quantize_multiplier_for, requantize
from core.quantization.requantize import BlockRequantizer

SETTINGS = settings(max_examples=150, deadline=None)
VARIANTS = [(RequantizationMode.sima, "double"), (RequantizationMode.tflite, "double"),
            (RequantizationMode.tflite, "single"), (RequantizationMode.tflite, "int64")]


def reference(acc, bias, m, s, mode, zp, qmin, qmax, variant):
    x = np.asarray(acc, np.int64) + (0 if bias is None else np.asarray(bias, np.int64))
    return requantize(x, m, s, mode, zp, qmin, qmax, tflite_rounding=variant,
                      channel_axis=-1 if np.size(m) > 1 else None)


def run_block(acc, bias, m, s, mode, zp, qmin, qmax, variant, acc_bound, acc_dtype=np.int64, out_dtype=np.int8):
    rq = BlockRequantizer(m, s, mode, zp, qmin, qmax, tflite_rounding=variant, bias=bias,
                          acc_bound=acc_bound, dtype=out_dtype)
    out = np.empty(np.shape(acc), out_dtype)
    rq(out, np.asarray(acc).astype(acc_dtype))
    return rq, out


@st.composite
def cases(draw):
    mode, variant = draw(st.sampled_from(VARIANTS))
    channels = draw(st.integers(1, 5))
    hi = 4.0 if variant != "double" else 0.999   # double: keep x * 2**left within int32
    reals = np.array([draw(st.floats(2.0 ** -24, hi)) for _ in range(channels)])
    if draw(st.booleans()):
        reals = reals[:1]
    m, s = quantize_multiplier_for(reals, mode, tflite_rounding=variant)
    bits = draw(st.sampled_from([8, 16]))
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    zp = draw(st.integers(qmin, qmax))
    limit = draw(st.sampled_from([1 << 10, 1 << 20, 1 << 23, 1 << 30, 1 << 40]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    acc = rng.integers(-limit, limit, (7, channels), endpoint=True)
    acc[0], acc[1] = limit, -limit
    bias = None if draw(st.booleans()) else rng.integers(-(limit >> 2), limit >> 2, channels, endpoint=True)
    return dict(acc=acc, bias=bias, m=m, s=s, mode=mode, zp=zp, qmin=qmin, qmax=qmax, variant=variant,
                bits=bits, limit=limit)


@SETTINGS
@given(cases(), st.sampled_from(["static", "block"]))
def test_block_requantizer_equals_requantize(case, bound_from):
    c = dict(case)
    limit, bits = c.pop("limit"), c.pop("bits")
    args = [c[k] for k in ("acc", "bias", "m", "s", "mode", "zp", "qmin", "qmax", "variant")]
    out_dtype = np.int8 if bits == 8 else np.int16
    try:
        ref = reference(*args)
    except ExecutionError:   # the accumulator is out of the variant's range: both raise
        with pytest.raises(ExecutionError):
            run_block(*args, acc_bound=limit, out_dtype=out_dtype)
        return
    _, got = run_block(*args, acc_bound=limit if bound_from == "static" else None, out_dtype=out_dtype)
    np.testing.assert_array_equal(got, ref)
    if limit < 1 << 24:   # float32 / float64 accumulators hold the same integers
        for dtype in (np.float32, np.float64):
            _, got = run_block(*args, acc_bound=limit, acc_dtype=dtype, out_dtype=out_dtype)
            np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("mode,variant", VARIANTS)
@pytest.mark.parametrize("real", [2.0 ** -3, 2.0 ** -9, 3 * 2.0 ** -12, 0.5, 0.75])
def test_ties_on_the_float_route(mode, variant, real):
    # power-of-two multipliers put exact ties (x * m / 2**t = k + 1/2) at every other value;
    # TFLite's double rounding has ties in both of its roundings
    m, s = quantize_multiplier_for(real, mode, tflite_rounding=variant)
    acc = np.arange(-5000, 5001, dtype=np.int64).reshape(-1, 1)
    for zp, (qmin, qmax), dtype in ((3, (-128, 127), np.int8), (-7, (-32768, 32767), np.int16)):
        rq, got = run_block(acc, None, m, s, mode, zp, qmin, qmax, variant, acc_bound=5000, out_dtype=dtype)
        assert rq.static_ok
        np.testing.assert_array_equal(got, reference(acc, None, m, s, mode, zp, qmin, qmax, variant))


@pytest.mark.parametrize("mode,variant", VARIANTS)
def test_float_route_at_and_past_its_bound(mode, variant):
    # The largest accumulator bound the float64 route accepts, and one more: both exact,
    # the first on the float route, the second on the int64 fallback.
    real = 0.999 if variant == "double" else 0.9999
    m, s = quantize_multiplier_for(np.array([real, real / 3]), mode, tflite_rounding=variant)
    zp, qmin, qmax = -5, -(1 << 31), (1 << 31) - 1   # a wide range, so nothing saturates
    probe = BlockRequantizer(m, s, mode, zp, qmin, qmax, tflite_rounding=variant, dtype=np.int64)
    lo, hi = 0, 1 << 53                                # bisect the largest accepted bound
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if probe._float_ok(mid) else (lo, mid)
    edge = lo
    assert (edge * probe.m_max + probe.extra) * probe.unit < 1 << 53 or edge == probe.x_limit
    rng = np.random.default_rng(0)
    for bound, on_float in ((edge, True), (edge + 1, False)):
        acc = rng.integers(-bound, bound, (4096, 2), endpoint=True)
        acc[:3] = [[bound, -bound], [-bound, bound], [bound - 1, 1 - bound]]
        try:
            ref = reference(acc, None, m, s, mode, zp, qmin, qmax, variant)
        except ExecutionError:
            assert not on_float
            continue
        rq, got = run_block(acc, None, m, s, mode, zp, qmin, qmax, variant, acc_bound=bound, out_dtype=np.int64)
        assert rq.static_ok is on_float
        np.testing.assert_array_equal(got, ref)


def test_block_bound_decides_the_route_per_block():
    # no static bound: a block of small accumulators takes the float route, a block with one
    # huge accumulator the int64 fallback; both equal requantize()
    m, s = quantize_multiplier_for(0.3, RequantizationMode.tflite)
    rq = BlockRequantizer(m, s, "tflite", 0, -128, 127)
    assert not rq.static_ok
    for big in (1000, (1 << 31) - 1):
        acc = np.array([[big, -big, 7, -7, 0]], np.int64).T
        out = np.empty(acc.shape, np.int8)
        rq(out, acc)
        np.testing.assert_array_equal(out, requantize(acc, m, s, "tflite", 0, -128, 127))


def test_shift_zero_halves_the_float_bound():
    # sima with s == 0 (real >= 2**14): y = x * m exactly; the + 1/2 term makes the float
    # route's unit 2**-1, so its bound is half that of s >= 1
    m, s = quantize_multiplier_for(np.array([20000.0, 0.5]), RequantizationMode.sima)
    assert s[0] == 0 and s[1] > 0
    rq0 = BlockRequantizer(m[:1], s[:1], "sima", 0, -(1 << 31), (1 << 31) - 1, dtype=np.int64)
    rq1 = BlockRequantizer(m[1:], s[1:], "sima", 0, -(1 << 31), (1 << 31) - 1, dtype=np.int64)
    assert rq0.unit == 2 and rq1.unit == 1
    acc = np.arange(-300000, 300001, 7, dtype=np.int64).reshape(-1, 1)
    for mi, si, rq in ((m[:1], s[:1], rq0), (m[1:], s[1:], rq1)):
        out = np.empty(acc.shape, np.int64)
        rq(out, acc)
        np.testing.assert_array_equal(out, requantize(acc, mi, si, "sima", 0, -(1 << 31), (1 << 31) - 1))
