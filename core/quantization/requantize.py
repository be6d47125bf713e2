"""Integer requantization: rescale int32/int64 accumulators to the output integer type.

Two arithmetics, both vectorised over int64 numpy arrays and bit-exact (every intermediate
is proven to fit int64; see docs/quantization.md):

``RequantizationMode.tflite``
    TensorFlow Lite's fixed point, literally as in tensorflow/lite/kernels/internal
    (common.h, quantization_util.cc) and gemmlowp's fixedpoint.h:
    :func:`quantize_multiplier`, :func:`saturating_rounding_doubling_high_mul`,
    :func:`rounding_divide_by_pot`, :func:`multiply_by_quantized_multiplier` (the default
    double-rounding build, used by TFLite's reference kernels),
    :func:`multiply_by_quantized_multiplier_single_rounding` (``TFLITE_SINGLE_ROUNDING``
    builds) and :func:`multiply_by_quantized_multiplier_int64` (16x8 kernels with int64
    accumulators). ``multiplier`` is the int32 Q31 value and ``shift`` TFLite's exponent
    (positive = left): ``real ~= multiplier * 2**(shift - 31)``.

``RequantizationMode.sima``
    One 15-bit multiply and one rounding shift:
    ``y = (x * m + 2**(s-1)) >> s`` (``y = x * m`` when ``s == 0``), with
    ``m`` in ``[2**14, 2**15)`` (or 0) and ``s`` in ``[0, 62]`` a *right* shift:
    ``real ~= m / 2**s``. Round half up (towards +inf). :func:`quantize_multiplier_sima`.

:func:`requantize` is the single entry point integer kernels call:
``clamp(scale(acc) + zero_point, qmin, qmax)``. :class:`BlockRequantizer` computes the same, bit
for bit, block by block into a preallocated integer output (float64 where a bound proves it
exact, see the comment above it); :class:`Requant` is how the interpreter asks the conv/dense
kernels for it (or for fast mode's approximate float32 rescaling).

Where the C code is undefined (int32 overflow of ``x << left_shift``) or only guarded by a
DCHECK, these functions raise instead of silently wrapping: accumulator (data) problems
raise :class:`~core.errors.ExecutionError`, parameter problems
:class:`~core.errors.QuantizationConfigError`; both name the argument at fault.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError
from core.quantization.params import RequantizationMode, enum_from

__all__ = [
    "BlockRequantizer",
    "INT32_MAX",
    "Requant",
    "INT32_MIN",
    "TFLITE_ROUNDINGS",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_int64",
    "multiply_by_quantized_multiplier_sima",
    "multiply_by_quantized_multiplier_single_rounding",
    "quantize_multiplier",
    "quantize_multiplier_for",
    "quantize_multiplier_sima",
    "requantize",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
_INT64_ACC_LIMIT = 1 << 47          # |x| bound of the int64-accumulator variants
SIMA_MULTIPLIER_BITS = 15           # m < 2**15: a positive int16
SIMA_MAX_SHIFT = 62
TFLITE_ROUNDINGS = ("double", "single", "int64")


# --------------------------------------------------------------------------- argument checks

def _int_array(value: Any, name: str, error: type[Exception]) -> np.ndarray:
    """``value`` as an int64 array; floats, bools and out-of-int64 Python ints are refused."""
    try:
        arr = np.asarray(value)
    except (OverflowError, ValueError) as exc:
        raise error(f"{name} must be integers that fit int64: {exc}") from None
    if arr.dtype == object:
        try:
            arr = arr.astype(np.int64)
        except (OverflowError, TypeError, ValueError):
            raise error(f"{name} must be integers that fit int64, got {value!r}") from None
    if arr.dtype.kind not in "iu":
        raise error(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise error(f"{name} exceeds the int64 range")
    return arr.astype(np.int64, copy=False)


def _check_range(arr: np.ndarray, lo: int, hi: int, name: str, error: type[Exception],
                 why: str = "") -> None:
    if arr.size == 0:
        return
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        first = int(arr[bad].flat[0])
        raise error(f"{name} must be in [{lo}, {hi}]{why}; got {first}")


def _data(value: Any, name: str, lo: int, hi: int, why: str = "") -> np.ndarray:
    arr = _int_array(value, name, ExecutionError)
    _check_range(arr, lo, hi, name, ExecutionError, why)
    return arr


def _param(value: Any, name: str, lo: int, hi: int, why: str = "") -> np.ndarray:
    arr = _int_array(value, name, QuantizationConfigError)
    _check_range(arr, lo, hi, name, QuantizationConfigError, why)
    return arr


def _out(result: np.ndarray, *inputs: Any) -> Any:
    """A Python int when every input was a scalar, else the int64 array."""
    if all(np.ndim(v) == 0 for v in inputs):
        return int(result)
    return result


def _trunc_div_pow2(v: np.ndarray, k: int) -> np.ndarray:
    # C's '/' truncates towards zero; '>>' floors. |v| < 2**63 so -v never overflows.
    return np.where(v >= 0, v >> k, -((-v) >> k))


# --------------------------------------------------------------------------- TFLite

def _std_round_nonneg(v: np.ndarray) -> np.ndarray:
    # std::round (half away from zero) for v >= 0, exact: the fractional part of a double
    # is itself exactly representable, so 'v - floor(v) >= 0.5' has no rounding error.
    fl = np.floor(v)
    return fl + (v - fl >= 0.5)


def _check_real(real: Any, name: str = "real") -> np.ndarray:
    try:
        arr = np.asarray(real, dtype=np.float64)
    except (TypeError, ValueError):
        raise QuantizationConfigError(f"{name} must be a real number or array, got {real!r}") from None
    if arr.size and not np.all(np.isfinite(arr)):
        raise QuantizationConfigError(f"{name} must be finite, got {arr[~np.isfinite(arr)].flat[0]!r}")
    if arr.size and np.any(arr < 0):
        raise QuantizationConfigError(f"{name} must be >= 0, got {arr[arr < 0].flat[0]!r}")
    return arr


def quantize_multiplier(real: Any, *, single_rounding: bool = False) -> tuple[Any, Any]:
    """TFLite's QuantizeMultiplier: ``real ~= multiplier * 2**(shift - 31)``.

    ``q, shift = frexp(real)``; ``multiplier = round(q * 2**31)`` (half away from zero);
    ``2**31`` becomes ``2**30`` with ``shift + 1``; ``shift < -31`` flushes to ``(0, 0)``;
    ``real == 0`` gives ``(0, 0)``. ``single_rounding=True`` adds the
    ``TFLITE_SINGLE_ROUNDING`` build's saturation ``shift > 30 -> (2**31 - 1, 30)``.
    Scalars give Python ints, arrays int64 arrays (per-channel multipliers).
    """
    arr = _check_real(real)
    q, exp = np.frexp(arr)
    exp = exp.astype(np.int64)
    q_fixed = _std_round_nonneg(q * float(1 << 31)).astype(np.int64)   # q * 2**31 is exact
    carry = q_fixed == (1 << 31)
    q_fixed = np.where(carry, q_fixed // 2, q_fixed)
    exp = np.where(carry, exp + 1, exp)
    tiny = exp < -31
    q_fixed = np.where(tiny, 0, q_fixed)
    exp = np.where(tiny, 0, exp)
    if single_rounding:
        big = exp > 30
        q_fixed = np.where(big, INT32_MAX, q_fixed)
        exp = np.where(big, 30, exp)
    if arr.ndim == 0:
        return int(q_fixed), int(exp)
    return q_fixed.astype(np.int64), exp.astype(np.int64)


def saturating_rounding_doubling_high_mul(a: Any, b: Any) -> Any:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int32 values.

    ``INT32_MAX`` if ``a == b == INT32_MIN``, else ``(a*b + nudge) / 2**31`` with C
    truncating division and ``nudge = 2**30`` if ``a*b >= 0`` else ``1 - 2**30``
    (i.e. ``a*b / 2**31`` rounded to nearest, ties towards +inf: the negative nudge
    ``1 - 2**30`` with truncation makes -2.5 -> -2).
    """
    a_ = _data(a, "a", INT32_MIN, INT32_MAX)
    b_ = _param(b, "b", INT32_MIN, INT32_MAX)
    ab = a_ * b_                                   # |ab| <= 2**62: exact in int64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = _trunc_div_pow2(ab + nudge, 31)          # |ab + nudge| <= 2**62 + 2**30
    overflow = (a_ == INT32_MIN) & (b_ == INT32_MIN)
    return _out(np.where(overflow, INT32_MAX, high), a, b)


def rounding_divide_by_pot(x: Any, exponent: Any) -> Any:
    """gemmlowp's RoundingDivideByPOT: ``x / 2**exponent`` rounded half away from zero.

    ``mask = 2**e - 1; (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0)))``, ``e`` in [0, 31].
    """
    x_ = _data(x, "x", INT32_MIN, INT32_MAX)
    e = _param(exponent, "exponent", 0, 31)
    mask = np.left_shift(np.int64(1), e) - 1
    # On int64 the low 32 bits of x & mask equal the int32 result (mask < 2**31).
    remainder = x_ & mask
    threshold = (mask >> 1) + (x_ < 0)
    return _out((x_ >> e) + (remainder > threshold), x, exponent)


def _shift_param(shift: Any, lo: int, hi: int) -> np.ndarray:
    return _param(shift, "shift", lo, hi)


def multiply_by_quantized_multiplier(x: Any, multiplier: Any, shift: Any) -> Any:
    """TFLite's MultiplyByQuantizedMultiplier, default (double-rounding) build:
    ``RDBPOT(SRDHM(x * 2**max(shift, 0), multiplier), max(-shift, 0))``.

    ``x`` int32, ``multiplier`` int32, ``shift`` in [-31, 30]. ``x * 2**left_shift`` must
    fit int32 (C overflow is undefined there; this raises ExecutionError instead).
    Per-channel ``multiplier``/``shift`` arrays broadcast against ``x``.
    """
    x_ = _data(x, "x", INT32_MIN, INT32_MAX)
    m = _param(multiplier, "multiplier", INT32_MIN, INT32_MAX)
    s = _shift_param(shift, -31, 30)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    shifted = np.left_shift(x_, left)              # |x| * 2**30 < 2**62: exact
    _check_range(shifted, INT32_MIN, INT32_MAX, "x * 2**shift", ExecutionError,
                 " (TFLite computes it in int32; overflow is undefined there)")
    return _out(rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m), right),
                x, multiplier, shift)


def multiply_by_quantized_multiplier_single_rounding(x: Any, multiplier: Any, shift: Any) -> Any:
    """TFLite's MultiplyByQuantizedMultiplier in ``TFLITE_SINGLE_ROUNDING`` builds:
    ``t = 31 - shift; (x * multiplier + 2**(t-1)) >> t`` (round half up).

    ``x`` int32, ``multiplier`` in [0, 2**31 - 1], ``shift`` in [-31, 30]. The exact int64
    result is returned even where TFLite only DCHECKs that it fits int32.
    """
    x_ = _data(x, "x", INT32_MIN, INT32_MAX)
    m = _param(multiplier, "multiplier", 0, INT32_MAX)
    s = _shift_param(shift, -31, 30)
    total = 31 - s                                  # in [1, 62]
    # |x * m| < 2**62 and the rounding term <= 2**61: the sum stays below 2**63.
    result = (x_ * m + np.left_shift(np.int64(1), total - 1)) >> total
    return _out(result, x, multiplier, shift)


def multiply_by_quantized_multiplier_int64(x: Any, multiplier: Any, shift: Any) -> Any:
    """TFLite's MultiplyByQuantizedMultiplier for int64 accumulators (16x8 kernels).

    The multiplier is first rounded to 16 bits:
    ``r = (multiplier + 2**15) >> 16 if multiplier < 0x7FFF0000 else 0x7FFF``; then
    ``t = 15 - shift; (x * r + 2**(t-1)) >> t``. ``multiplier`` in [0, 2**31 - 1], ``shift`` in
    [-31, 7] (TFLite's asserted ranges). ``x`` in [-2**47, 2**47) (TFLite's range) is computed in
    int64; beyond it the same formula is evaluated exactly in Python integers instead of raising.
    """
    x_ = _int_array(x, "x", ExecutionError)
    m = _param(multiplier, "multiplier", 0, INT32_MAX)
    s = _shift_param(shift, -31, 7)
    reduced = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)   # <= 0x7FFF
    total = 15 - s                                  # in [8, 46]
    # |x * reduced| < 2**47 * 2**15 = 2**62; rounding term <= 2**45.
    result = _round_shift_exact(x_, reduced, total, -_INT64_ACC_LIMIT, _INT64_ACC_LIMIT - 1)
    return _out(result, x, multiplier, shift)


_WIDE_SATURATION = 1 << 62


def _round_shift_exact(x: np.ndarray, m: np.ndarray, t: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``(x * m + 2**(t-1)) >> t`` (``x * m`` where ``t == 0``), exact: int64 for ``x`` in
    [lo, hi] (where the bounds above hold), Python integers for the rest (accumulators beyond
    2**47: an INT16 layer whose bias dwarfs its accumulator scale). Results beyond +/-2**62
    saturate there (every caller clamps to an int32-or-narrower range afterwards)."""
    inside = (x >= lo) & (x <= hi)
    rounding = np.where(t > 0, np.left_shift(np.int64(1), np.maximum(t - 1, 0)), 0)
    if inside.all():
        return (x * m + rounding) >> t
    xs, ms, ts, rs = np.broadcast_arrays(x, m, t, rounding)
    result = np.where(inside, (np.where(inside, xs, 0) * ms + rs) >> ts, 0)
    out = inside == 0
    wide = [(int(a) * int(b) + int(r)) >> int(e) for a, b, r, e in zip(xs[out], ms[out], rs[out], ts[out])]
    result[out] = np.clip(np.array(wide, dtype=object), -_WIDE_SATURATION, _WIDE_SATURATION).astype(np.int64)
    return result


# --------------------------------------------------------------------------- sima

def quantize_multiplier_sima(real: Any) -> tuple[Any, Any]:
    """sima multiplier: ``real ~= m / 2**s`` with ``m`` in ``[2**14, 2**15)`` and ``s`` in [0, 62].

    ``q, e = frexp(real)`` (``q`` in [0.5, 1)); ``m = round(q * 2**15)`` half away from zero;
    ``m == 2**15`` becomes ``2**14`` with ``e + 1``; ``s = 15 - e``. ``real == 0`` and
    ``s > 62`` (real below about 2**-48, where every in-range product rounds to 0 anyway)
    give ``(0, 0)``. ``s < 0`` (real >= 2**15 - 1/2) is refused. The relative error of
    ``m / 2**s`` is at most 2**-15.
    """
    arr = _check_real(real)
    q, exp = np.frexp(arr)
    exp = exp.astype(np.int64)
    m = _std_round_nonneg(q * float(1 << SIMA_MULTIPLIER_BITS)).astype(np.int64)
    carry = m == (1 << SIMA_MULTIPLIER_BITS)
    m = np.where(carry, m // 2, m)
    exp = np.where(carry, exp + 1, exp)
    s = SIMA_MULTIPLIER_BITS - exp
    zero = (m == 0) | (s > SIMA_MAX_SHIFT)
    m = np.where(zero, 0, m)
    s = np.where(zero, 0, s)
    if np.any(s < 0):
        bad = arr[s < 0].flat[0] if arr.ndim else float(arr)
        raise QuantizationConfigError(
            f"real must be < 2**15 - 0.5 for the sima requantization multiplier, got {bad!r}"
        )
    if arr.ndim == 0:
        return int(m), int(s)
    return m.astype(np.int64), s.astype(np.int64)


def multiply_by_quantized_multiplier_sima(x: Any, multiplier: Any, shift: Any) -> Any:
    """sima scaling: ``(x * m + 2**(s-1)) >> s`` for ``s >= 1``, ``x * m`` for ``s == 0``.

    ``x`` any int64: in [-2**47, 2**47] (any int32 accumulator, and int64 16-bit-path
    accumulators) in int64 arithmetic, where ``|x * m| <= 2**47 * (2**15 - 1) < 2**62`` and the
    rounding term is at most ``2**61``, so every intermediate is below ``2**63``; beyond that,
    exactly in Python integers (results beyond +/-2**62 saturate). ``m`` in [0, 2**15 - 1],
    ``s`` in [0, 62].
    """
    x_ = _int_array(x, "x", ExecutionError)
    m = _param(multiplier, "multiplier", 0, (1 << SIMA_MULTIPLIER_BITS) - 1)
    s = _param(shift, "shift", 0, SIMA_MAX_SHIFT)
    return _out(_round_shift_exact(x_, m, s, -_INT64_ACC_LIMIT, _INT64_ACC_LIMIT), x, multiplier, shift)


# --------------------------------------------------------------------------- entry point

def _mode(mode: Any) -> RequantizationMode:
    return enum_from(RequantizationMode, mode, "mode")


def _rounding(tflite_rounding: Any) -> str:
    if tflite_rounding not in TFLITE_ROUNDINGS:
        raise QuantizationConfigError(
            f"tflite_rounding must be one of {', '.join(map(repr, TFLITE_ROUNDINGS))}, got {tflite_rounding!r}"
        )
    return tflite_rounding


def quantize_multiplier_for(real: Any, mode: Any, *, tflite_rounding: str = "double") -> tuple[Any, Any]:
    """The ``(multiplier, shift)`` pair :func:`requantize` expects for ``mode``.

    sima: :func:`quantize_multiplier_sima`; tflite: :func:`quantize_multiplier` (with the
    single-rounding build's shift saturation when ``tflite_rounding == 'single'``).
    """
    mode = _mode(mode)
    if mode is RequantizationMode.sima:
        return quantize_multiplier_sima(real)
    return quantize_multiplier(real, single_rounding=_rounding(tflite_rounding) == "single")


def _along_axis(value: np.ndarray, name: str, ndim: int, axis: int, length: int) -> np.ndarray:
    if value.ndim == 0 or value.size == 1 and value.ndim <= 1:
        return value.reshape(())
    if value.ndim != 1 or value.shape[0] != length:
        raise QuantizationConfigError(
            f"{name} must be a scalar or have one value per channel ({length}) along "
            f"channel_axis, got shape {value.shape}"
        )
    shape = [1] * ndim
    shape[axis] = length
    return value.reshape(shape)


def requantize(acc: Any, multiplier: Any, shift: Any, mode: Any, zero_point: Any,
               qmin: int, qmax: int, *, tflite_rounding: str = "double",
               channel_axis: int | None = None) -> np.ndarray:
    """``clamp(scale(acc, multiplier, shift) + zero_point, qmin, qmax)`` as an int64 array.

    ``mode``: RequantizationMode (or 'sima'/'tflite'); ``multiplier``/``shift`` come from
    :func:`quantize_multiplier_for` for that mode. For tflite, ``tflite_rounding`` picks the
    kernel variant: 'double' (default build, reference kernels; int32 accumulators),
    'single' (TFLITE_SINGLE_ROUNDING builds) or 'int64' (16x8 conv/fully-connected with
    int64 accumulators). ``channel_axis``: per-channel ``multiplier``/``shift``/
    ``zero_point`` 1-D arrays are laid along this axis of ``acc``; without it, they
    broadcast by numpy's rules. ``[qmin, qmax]`` must lie in the int32 range and hold
    ``zero_point``.
    """
    mode = _mode(mode)
    variant = _rounding(tflite_rounding)
    acc_arr = _int_array(acc, "acc", ExecutionError)
    qmin_i = int(_param(qmin, "qmin", INT32_MIN, INT32_MAX))
    qmax_i = int(_param(qmax, "qmax", INT32_MIN, INT32_MAX))
    if qmin_i > qmax_i:
        raise QuantizationConfigError(f"qmin ({qmin_i}) must be <= qmax ({qmax_i})")
    zp = _param(zero_point, "zero_point", qmin_i, qmax_i, " (the output range [qmin, qmax])")
    m = _int_array(multiplier, "multiplier", QuantizationConfigError)
    s = _int_array(shift, "shift", QuantizationConfigError)
    if channel_axis is not None:
        if not -acc_arr.ndim <= channel_axis < acc_arr.ndim:
            raise QuantizationConfigError(
                f"channel_axis {channel_axis} is out of range for acc of shape {acc_arr.shape}"
            )
        axis = channel_axis % acc_arr.ndim
        n = acc_arr.shape[axis]
        m = _along_axis(m, "multiplier", acc_arr.ndim, axis, n)
        s = _along_axis(s, "shift", acc_arr.ndim, axis, n)
        zp = _along_axis(zp, "zero_point", acc_arr.ndim, axis, n)
    try:
        np.broadcast_shapes(acc_arr.shape, m.shape, s.shape, zp.shape)
    except ValueError:
        raise QuantizationConfigError(
            f"multiplier {m.shape}, shift {s.shape} and zero_point {zp.shape} do not broadcast "
            f"against acc {acc_arr.shape}"
        ) from None

    if mode is RequantizationMode.sima:
        scaled = multiply_by_quantized_multiplier_sima(acc_arr, m, s)
    elif variant == "double":
        scaled = multiply_by_quantized_multiplier(acc_arr, m, s)
    elif variant == "single":
        scaled = multiply_by_quantized_multiplier_single_rounding(acc_arr, m, s)
    else:
        scaled = multiply_by_quantized_multiplier_int64(acc_arr, m, s)
    # Exact: |scaled| < 2**62 and |zero_point| <= 2**31.
    out = np.clip(np.asarray(scaled, dtype=np.int64) + zp, qmin_i, qmax_i)
    return np.asarray(out, dtype=np.int64)


# --------------------------------------------------------------------------- block requantizers
#
# requantize() runs many full-array int64 passes (and range checks); kernels that produce
# accumulators block by block (conv, dense) instead bind a requantizer that validates its
# parameters once and writes each block, while it is in cache, into the integer output.
#
# Float64 route: every variant but TFLite's double rounding is "round half up of x * m / 2**t"
# (sima: m, t = s; single: m, t = 31 - shift; int64: the 16-bit reduced m, t = 15 - shift),
# i.e. y = floor(x * m * 2**-t + 1/2). With x = acc + bias and r = m * 2**-t, compute
# floor(acc * r + c), c = bias * r + 1/2 + zp. Every term is an integer multiple of 2**-t
# (t >= 1; of 2**-1 when t == 0, hence a factor 2 below); when
# ((|acc| + |bias|) * m + 2**(t-1) + |zp| * 2**t) * (2 if t == 0 else 1) < 2**53 each of them,
# and their sum, is exact in float64 (an integer below 2**53 scaled by a power of two), so
# floor gives the exact result.
# TFLite's double rounding: h = SRDHM(x * 2**left, M) = floor(x * M * 2**(left-31) + 1/2) (its
# nudges make ties go to +inf, for both signs), exact under |x| * 2**left * M + 2**30 < 2**53;
# then RDBPOT(h, right) = trunc(h * 2**-right + copysign(1/2, h)) (half away from zero), exact
# since |h| < 2**31 and right <= 31 need at most 63 - 31 bits. The bound |acc| comes from the
# kernel's static proof, or else from the block itself (one min/max); when neither proves the
# float route exact, the block goes through requantize() in int64.

_F64_EXACT = 1 << 53


class BlockRequantizer:
    """``out[...] = requantize(acc + bias, multiplier, shift, mode, zero_point, qmin, qmax,
    tflite_rounding=...)`` for blocks whose *last* axis is the channel axis, bit for bit.

    ``multiplier``/``shift``/``zero_point``: scalars or one value per channel; ``bias``: None or
    one integer per channel; ``acc_bound``: a proven bound on ``|acc|`` (without the bias), or
    None. ``dtype``: the output's integer dtype ([qmin, qmax] must fit it). Call it as
    ``requantizer(out_block, acc_block)`` (acc in float32/float64 holding exact integers, or int64).
    """

    def __init__(self, multiplier, shift, mode, zero_point, qmin, qmax, *, tflite_rounding="double",
                 bias=None, acc_bound=None, dtype=np.int8):
        self.args = dict(multiplier=multiplier, shift=shift, mode=mode, zero_point=zero_point, qmin=qmin,
                         qmax=qmax, tflite_rounding=tflite_rounding)
        self.dtype = np.dtype(dtype)
        mode = _mode(mode)
        variant = _rounding(tflite_rounding)
        self.qmin, self.qmax = int(qmin), int(qmax)
        if not (np.iinfo(self.dtype).min <= self.qmin <= self.qmax <= np.iinfo(self.dtype).max):
            raise QuantizationConfigError(f"[qmin, qmax] = [{qmin}, {qmax}] does not fit {self.dtype}")
        # validate once, as requantize() would (on a one-element accumulator)
        requantize(np.zeros(1, np.int64), multiplier, shift, mode, zero_point, qmin, qmax, tflite_rounding=variant)
        m = np.asarray(multiplier, np.int64).reshape(-1)
        s = np.asarray(shift, np.int64).reshape(-1)
        zp = np.asarray(zero_point, np.int64).reshape(-1)
        self.bias = None if bias is None else np.asarray(bias, np.int64).reshape(-1)
        b_max = 0 if self.bias is None or not self.bias.size else int(np.abs(self.bias).max())
        self.double = mode is RequantizationMode.tflite and variant == "double"
        # the accumulator range where the original raises: int32 for the int32-accumulator
        # TFLite variants, 2**47 otherwise
        self.x_limit = INT32_MAX if mode is RequantizationMode.tflite and variant != "int64" else _INT64_ACC_LIMIT - 1
        bias_f = 0.0 if self.bias is None else self.bias.astype(np.float64)
        if self.double:
            left, right = np.maximum(s, 0), np.maximum(-s, 0)
            self.r = m * np.exp2(left - 31.0)                      # exact: M < 2**31
            self.c = bias_f * self.r + 0.5
            self.r2 = np.exp2(-right.astype(np.float64))
            self.zp = zp.astype(np.float64)
            # |x| * 2**left * M + 2**30 < 2**53, and x * 2**left within int32
            self.m_eff = np.abs(m) << left
            self.x_limit = min(self.x_limit, int((INT32_MAX >> int(left.max())) if left.size else INT32_MAX))
            self.extra, self.unit = 1 << 30, 1
        else:
            if mode is RequantizationMode.sima:
                m_eff, t = m, s
            elif variant == "single":
                m_eff, t = m, 31 - s
            else:
                m_eff, t = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF), 15 - s
            self.r = m_eff * np.exp2(-t.astype(np.float64))
            self.c = bias_f * self.r + 0.5 + zp
            self.m_eff = m_eff
            t_max = int(t.max()) if t.size else 0
            self.extra = (1 << max(t_max - 1, 0)) + int(np.abs(zp).max()) * (1 << t_max)
            self.unit = 2 if t.size and int(t.min()) == 0 else 1
        self.m_max = int(self.m_eff.max()) if self.m_eff.size else 0
        self.b_max = b_max
        self.static_ok = acc_bound is not None and self._float_ok(int(acc_bound))

    def _float_ok(self, acc_max: int) -> bool:
        x_max = acc_max + self.b_max
        return x_max <= self.x_limit and (x_max * self.m_max + self.extra) * self.unit < _F64_EXACT

    def __call__(self, out: np.ndarray, acc: np.ndarray) -> None:
        ok = self.static_ok
        if not ok and acc.size:
            ok = self._float_ok(max(-int(acc.min()), int(acc.max())))
        if not ok:   # the int64 arithmetic, raising where requantize() raises
            x = acc.astype(np.int64) if acc.dtype != np.int64 else acc
            if self.bias is not None:
                x = x + self.bias
            np.copyto(out, requantize(x, channel_axis=-1 if np.size(self.args["multiplier"]) > 1 else None,
                                      **self.args), casting="unsafe")
            return
        y = _scratch(acc.shape, np.float64)
        np.multiply(acc, self.r, out=y)
        y += self.c
        np.floor(y, out=y)
        if self.double:
            y *= self.r2
            half = _scratch(acc.shape, np.float64, "half")
            np.copysign(0.5, y, out=half)
            y += half
            np.trunc(y, out=y)
            y += self.zp
        np.clip(y, self.qmin, self.qmax, out=out, casting="unsafe")   # exact integers: the cast is exact


_local = threading.local()


def _scratch(shape, dtype, tag: str = "") -> np.ndarray:
    """A per-thread scratch array (reused: a fresh large array costs page faults every block)."""
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = {}
    size = int(np.prod(shape))
    key = (np.dtype(dtype).str, tag)
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(size, 1 << 16), dtype)
    return buf[:size].reshape(shape)


class Requant:
    """What an accumulating kernel (conv_accumulate, dense_accumulate) should turn its
    accumulators into: ``requantize(acc, multiplier, shift, mode, zero_point, qmin, qmax, ...)``
    as ``dtype``, block by block (:class:`BlockRequantizer`, bit for bit).

    With ``real`` (per-channel or scalar real multipliers) it is instead the *approximate*
    fast-mode rescaling ``clamp(rint(acc * real + bias * real + zero_point))`` in float32: the
    kernel multiplies its weights by ``weight_scale`` (= real, per output channel) and
    accumulates in float32, so its blocks already hold ``acc * real`` (a pass fewer).
    """

    def __init__(self, multiplier, shift, mode, zero_point, qmin, qmax, *, tflite_rounding="double",
                 dtype=np.int8, real=None):
        self.args = dict(multiplier=multiplier, shift=shift, mode=mode, zero_point=zero_point, qmin=qmin, qmax=qmax,
                         tflite_rounding=tflite_rounding)
        self.dtype = np.dtype(dtype)
        self.real = None if real is None else np.asarray(real, np.float32).reshape(-1)
        self.weight_scale = self.real

    def bind(self, acc_dtype, bias_q, acc_bound):
        """(the dtype to accumulate in, finish(out_block, acc_block)) for one call of a kernel
        whose accumulators (without bias) are proven to satisfy |acc| <= acc_bound in acc_dtype."""
        if self.real is None:
            return acc_dtype, BlockRequantizer(bias=bias_q, acc_bound=acc_bound, dtype=self.dtype, **self.args)
        offset = np.float32(self.args["zero_point"]) + (0 if bias_q is None else
                                                        np.asarray(bias_q, np.float32).reshape(-1) * self.real)
        lo, hi = self.args["qmin"], self.args["qmax"]

        def finish(out, scaled_acc):
            y = _scratch(scaled_acc.shape, np.float32)
            np.add(scaled_acc, offset, out=y)
            np.rint(y, out=y)
            np.clip(y, lo, hi, out=y)
            np.copyto(out, y, casting="unsafe")
        return np.dtype(np.float32), finish
