"""Calibration: streaming tensor statistics and the five range methods.

One calibration pass fills a :class:`CalibrationStatistics` (tensor name -> :class:`TensorObserver`);
:func:`compute_range` then turns one observer into a range for any calibration method and any
8/16-bit symmetric/asymmetric scheme, without another pass over the data. A method is a function of
the statistics, never of the raw activations, which are not kept: an observer's memory is fixed
(a histogram of ``num_bins`` int64 counts and a few scalars) plus two floats per batch (the per-batch
min/max that moving-average min/max needs).

The histogram
-------------
Each observer keeps ``num_bins`` (default 8192, a power of two) equal bins over ``[-R, R]``, where
``R`` is a power of two (or 0 while only zeros were seen). Bin ``i`` covers
``[-R + i*w, -R + (i+1)*w)`` with ``w = 2R/num_bins`` (the last bin also holds ``R``).

* Symmetric around 0 rather than ``[min, max]``: zero is always a bin edge, so folding the
  histogram into a histogram of ``|x|`` (for symmetric schemes) is exact, and the same counts give
  the two-sided distribution asymmetric schemes need. One histogram answers both.
* Growing by doubling ``R``: old bins ``2m, 2m+1`` merge exactly into new bin ``num_bins/4 + m``,
  so a histogram grown batch by batch equals, count for count, one histogram over the final range.
  A ``[min, max]`` histogram would have to re-bin non-aligned bins on every growth (losing
  precision) or keep the data (what onnxruntime does, hundreds of GB on BERT).
* ``R`` a power of two: ``x / w`` is exact in float64, so bin assignment is exact, and any two
  observers merge exactly (:meth:`TensorObserver.merge`, for calibration split across workers).
* The cost: a one-sided tensor (after ReLU) uses only half the bins. Since ``max|x| > R/2``
  always holds, the data's side still spans more than ``num_bins/4`` bins: with the default 8192,
  more than 2048 bins over ``[0, max|x|]``, at least the methods' default ``num_bins``.
* Exact zeros (a ReLU output is often half zeros) are counted apart: zero is exactly representable
  in every scheme here, so it adds no rounding error (MSE) and is never clipped.

The methods (``compute_range(observer, method, scheme) -> (lo, hi)``)
------------------------------------------------------------------------
Symmetric schemes get ``(-a, a)``; asymmetric ones ``(lo, hi)`` with ``lo <= 0 <= hi``. A
histogram method never returns a range beyond the observed min/max.

* ``MinMaxMethod``: the observed extremes, exact.
* ``MovingAverageMinMaxMethod(c)``: EMA of the per-batch min and max, started at the first batch,
  ``r <- r + c * (batch_r - r)`` (TensorFlow's MovingAverageQuantize, NNCF, onnxruntime).
* ``HistogramMSEMethod(num_bins)``: the range minimising the expected squared error
  ``N_in * step**2 / 12 + sum over clipped values of (|x| - threshold)**2``, evaluated on the fine
  histogram (values uniform within a bin; exact zeros excluded from rounding) for ``num_bins``
  candidate thresholds spread over ``(0, max|x|]``. ``step = a / (2**(bits-1) - 1)`` (symmetric) or
  ``(hi - lo) / (2**bits - 1)`` (asymmetric; every (lo, hi) pair of the candidate grid is tried).
  At 16 bits the rounding term is 256**2 times smaller, so MSE keeps wider ranges.
* ``HistogramEntropyMethod(num_bins)``: TensorRT's KL-divergence calibration on the histogram
  re-binned to ``num_bins`` bins over ``[0, max|x|]`` (symmetric, ``2**(bits-1)`` levels). For
  every candidate window of ``i >= levels`` bins, P = the window with the clipped mass added to its
  end bins, Q = the window merged into ``levels`` groups and spread back over its non-empty bins;
  the window with the smallest KL(P || Q) wins. Asymmetric (``2**bits`` levels): the histogram is
  re-binned over ``[min, max]`` at the same bin width (``max|x| / num_bins``, 0 on a bin edge);
  the search starts from the best window shrinking towards 0 in proportion to the two sides, then
  moves one end at a time while KL drops, so an outlier on one side does not force clipping of
  the other. When ``levels >= num_bins`` (16 bits with the default 2048 bins) every bin is its own
  level, so rounding costs nothing at this resolution while any clipping costs KL > 0: the full
  observed range is the KL optimum and is returned (the same as MinMax); use MSE to trade clipping
  against 16-bit rounding.
* ``HistogramPercentileMethod(p, num_bins)``: the p-th percentile of ``|x|`` (symmetric) or the
  (100-p)-th and p-th percentiles of x (asymmetric), read from the fine histogram by linear
  interpolation within a bin: within one fine bin of the sample quantile (the smallest value with
  at least p% of the values at or below it), at least as fine as a ``num_bins`` histogram would
  give; ``num_bins`` is accepted for the specification's signature.

Results are cached on the observer per (method, bits, asymmetric) until it observes more data, so
a quantizer can call :func:`compute_range` per tensor and per candidate configuration cheaply.

Use (what ``LoadedNet.calibrate`` does: one float pass, every tensor that needs a range)::

    stats = CalibrationStatistics(metadata={"model": name})
    for feeds in iter_calibration_batches(data, input_names, input_shapes, input_dtypes):
        env = run_graph(graph, feeds)                      # every tensor's float value
        stats.record_sample({t: env[t] for t in tensors_needing_ranges})
    stats.save("calibration.npz")                          # optional; CalibrationStatistics.load
    lo, hi = compute_range(stats[t], HistogramMSEMethod(), scheme)
"""
from __future__ import annotations

import json
import math
import operator
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from core.errors import CalibrationError, QuantizationConfigError
from core.formats.atomic import atomic_write
from core.inputs import InputSignature, check_samples
from core.quantization.params import (
    CalibrationMethod,
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    QuantizationScheme,
)

__all__ = [
    "CalibrationStatistics",
    "DEFAULT_FINE_BINS",
    "FORMAT_VERSION",
    "TensorObserver",
    "compute_range",
    "iter_calibration_batches",
]

DEFAULT_FINE_BINS = 8192
FORMAT_NAME = "mixq-calibration-statistics"
FORMAT_VERSION = 1
_CHUNK = 1 << 20  # elements converted to float64 at a time while histogramming a batch
_PAIR_BUDGET = 1 << 20  # float64 cells per vectorised block (MSE pairs, KL windows)


def _check_fine_bins(num_bins: Any) -> int:
    if isinstance(num_bins, bool):
        raise CalibrationError(f"observer num_bins must be a power of two >= 16, got {num_bins!r}")
    try:
        n = operator.index(num_bins)
    except TypeError:
        raise CalibrationError(f"observer num_bins must be a power of two >= 16, got {num_bins!r}") from None
    if n < 16 or n & (n - 1):
        raise CalibrationError(f"observer num_bins must be a power of two >= 16, got {n}")
    return n


def _pow2_at_least(x: float) -> float:
    """The smallest power of two >= x (x > 0)."""
    m, e = math.frexp(x)  # x = m * 2**e, 0.5 <= m < 1
    return math.ldexp(1.0, e - 1) if m == 0.5 else math.ldexp(1.0, e)


def _is_pow2(x: float) -> bool:
    return x > 0 and math.isfinite(x) and math.frexp(x)[0] == 0.5


def _doublings(r_from: float, r_to: float) -> int:
    """log2(r_to / r_from) for powers of two (exponent difference: no overflow)."""
    return math.frexp(r_to)[1] - math.frexp(r_from)[1]


def _double_range(hist: np.ndarray, times: int) -> np.ndarray:
    """``hist`` over [-R, R] re-expressed over [-R*2**times, R*2**times], exactly."""
    n = hist.size
    # After log2(n) doublings every count sits in the two bins next to zero, which further
    # doublings leave in place: no need to loop more.
    for _ in range(min(times, n.bit_length())):
        merged = np.zeros_like(hist)
        merged[n // 4: n // 4 + n // 2] = hist.reshape(-1, 2).sum(axis=1)
        hist = merged
    return hist


class TensorObserver:
    """Streaming statistics of one tensor's values over the calibration data, in fixed memory.

    ``observe(array)`` once per batch (one calibration sample is one batch). Keeps the count, the
    number of exact zeros, the min/max, the per-batch min/max lists and a ``num_bins`` histogram
    over ``[-half_range, half_range]`` (see the module docstring).
    """

    def __init__(self, name: str = "", num_bins: int = DEFAULT_FINE_BINS):
        self.name = str(name)
        self.num_bins = _check_fine_bins(num_bins)
        self.histogram = np.zeros(self.num_bins, np.int64)
        self.half_range = 0.0  # R: 0 while only zeros were seen, else a power of two >= max|x|
        self.count = 0
        self.zero_count = 0
        self.min = math.inf
        self.max = -math.inf
        self._batch_mins: list[float] = []
        self._batch_maxs: list[float] = []
        self._cache: dict[Any, Any] = {}

    # ---- recording -------------------------------------------------------
    def observe(self, value: Any) -> None:
        """Add one batch of values (any shape; float, integer or bool)."""
        a = np.asarray(value)
        if a.dtype.kind not in "fiub":
            raise CalibrationError(f"tensor {self.name!r}: cannot calibrate values of dtype {a.dtype}")
        if a.size == 0:
            return
        flat = a.reshape(-1)
        bmin, bmax = float(flat.min()), float(flat.max())
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise CalibrationError(
                f"tensor {self.name!r}: {bad} NaN/Inf value(s) in calibration batch {len(self._batch_mins)}; "
                "ranges cannot be computed from non-finite values"
            )
        amax = max(-bmin, bmax)
        if amax > self.half_range:
            target = _pow2_at_least(amax)
            if self.half_range > 0:
                times = _doublings(self.half_range, target)
                self.histogram = _double_range(self.histogram, times)
            # While R was 0 every count sat in bin num_bins/2 ([0, w)), where zero stays at any R.
            self.half_range = target
        n = self.num_bins
        counts = np.zeros(n, np.int64)
        zeros = 0
        if self.half_range == 0:  # all zeros so far
            zeros = flat.size
            counts[n // 2] = zeros
        else:
            inv_width = n / (2.0 * self.half_range)  # a power of two: x * inv_width is exact
            for start in range(0, flat.size, _CHUNK):
                chunk = flat[start:start + _CHUNK].astype(np.float64, copy=False)
                zeros += int(np.count_nonzero(chunk == 0))
                idx = np.floor(chunk * inv_width)
                idx += n // 2
                np.clip(idx, 0, n - 1, out=idx)  # x == R belongs to the last bin
                counts += np.bincount(idx.astype(np.intp), minlength=n)
        self.histogram += counts
        self.count += int(flat.size)
        self.zero_count += zeros
        self.min = min(self.min, bmin)
        self.max = max(self.max, bmax)
        self._batch_mins.append(bmin)
        self._batch_maxs.append(bmax)
        self._cache.clear()

    def merge(self, other: TensorObserver) -> TensorObserver:
        """Add ``other``'s statistics to this observer (exact); returns self.

        Batch lists are concatenated, self's first (moving averages follow that order)."""
        if not isinstance(other, TensorObserver):
            raise CalibrationError(f"tensor {self.name!r}: can only merge a TensorObserver, got {type(other).__name__}")
        if other.num_bins != self.num_bins:
            raise CalibrationError(
                f"tensor {self.name!r}: cannot merge observers with {self.num_bins} and {other.num_bins} bins"
            )
        r = max(self.half_range, other.half_range)
        mine = self._regridded(r)
        theirs = other._regridded(r)
        self.histogram = mine + theirs
        self.half_range = r
        self.count += other.count
        self.zero_count += other.zero_count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self._batch_mins.extend(other._batch_mins)
        self._batch_maxs.extend(other._batch_maxs)
        self._cache.clear()
        return self

    def _regridded(self, half_range: float) -> np.ndarray:
        if self.half_range == 0 or half_range == self.half_range:
            return self.histogram.copy()
        return _double_range(self.histogram, _doublings(self.half_range, half_range))

    # ---- views -----------------------------------------------------------
    @property
    def num_batches(self) -> int:
        return len(self._batch_mins)

    @property
    def batch_mins(self) -> np.ndarray:
        return np.asarray(self._batch_mins, np.float64)

    @property
    def batch_maxs(self) -> np.ndarray:
        return np.asarray(self._batch_maxs, np.float64)

    @property
    def bin_width(self) -> float:
        return 2.0 * self.half_range / self.num_bins

    @property
    def bin_edges(self) -> np.ndarray:
        """The ``num_bins + 1`` histogram edges (exact: multiples of a power of two)."""
        return np.linspace(-self.half_range, self.half_range, self.num_bins + 1)

    @property
    def abs_max(self) -> float:
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    def state_nbytes(self, *, include_batch_lists: bool = True) -> int:
        """Bytes of statistics kept: fixed (histogram + scalars), plus 16 per batch if asked."""
        fixed = self.histogram.nbytes + 6 * 8
        return fixed + (16 * len(self._batch_mins) if include_batch_lists else 0)

    def _sides(self) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) counts per bin in units of the bin width: ``pos[k]`` over
        ``[k, k+1)``, ``neg[k]`` over ``|x|`` in ``(k, k+1]``, exact zeros removed (kept apart)."""
        key = "sides"
        if key not in self._cache:
            half = self.num_bins // 2
            pos = self.histogram[half:].astype(np.float64)
            neg = self.histogram[:half][::-1].astype(np.float64)
            pos[0] -= self.zero_count
            self._cache[key] = (pos, neg)
        return self._cache[key]

    def __repr__(self) -> str:
        return (
            f"TensorObserver({self.name!r}, count={self.count}, min={self.min}, max={self.max}, "
            f"batches={self.num_batches}, half_range={self.half_range})"
        )


# --------------------------------------------------------------------------- range methods

def compute_range(
    observer: TensorObserver, method: CalibrationMethod, scheme: QuantizationScheme
) -> tuple[float, float]:
    """The (lo, hi) float range that ``method`` gives ``observer``'s tensor under ``scheme``.

    Symmetric schemes: ``(-a, a)``. Asymmetric: ``lo <= 0 <= hi``. A tensor that only held zeros
    gives ``(0.0, 0.0)``. ``scheme.per_channel`` is not used: activation ranges are per tensor
    (per-channel weight ranges come from the constant weights themselves).
    """
    if not isinstance(observer, TensorObserver):
        raise CalibrationError(f"compute_range takes a TensorObserver, got {type(observer).__name__}")
    if not isinstance(scheme, QuantizationScheme):
        raise QuantizationConfigError(f"scheme must be a QuantizationScheme, got {type(scheme).__name__}")
    if not isinstance(method, CalibrationMethod):
        names = ", ".join(c.__name__ for c in CalibrationMethod.registered())
        raise QuantizationConfigError(f"calibration method must be one of {names}; got {method!r}")
    if observer.count == 0:
        raise CalibrationError(f"tensor {observer.name!r} has no calibration values: it was never observed")
    key = (method, scheme.bits, scheme.asymmetric)
    hit = observer._cache.get(key)
    if hit is not None:
        return hit
    bits, asymmetric = scheme.bits, scheme.asymmetric
    lo0, hi0 = min(observer.min, 0.0), max(observer.max, 0.0)
    if hi0 == lo0 == 0.0:
        result = (0.0, 0.0)
    else:
        rule = _METHODS.get(type(method))   # a built-in method; any other brings its own range rule
        if rule is not None:
            lo, hi = rule(observer, method, bits, asymmetric)
        else:
            lo, hi = method.range(observer, bits, asymmetric)
        if asymmetric:
            result = (float(min(max(lo, lo0), 0.0)), float(max(min(hi, hi0), 0.0)))
        else:
            a = float(min(max(abs(lo), abs(hi)), observer.abs_max))
            result = (-a, a)
    observer._cache[key] = result
    return result


def _min_max(obs: TensorObserver, method: MinMaxMethod, bits: int, asymmetric: bool) -> tuple[float, float]:
    return obs.min, obs.max


def _ema(values: np.ndarray, c: float) -> float:
    # r_0 = v_0, r_k = (1-c) r_{k-1} + c v_k, in closed form: one dot product, no loop.
    n = values.size
    weights = c * np.power(1.0 - c, np.arange(n - 1, -1, -1, dtype=np.float64))
    weights[0] = (1.0 - c) ** (n - 1)
    return float(weights @ values)


def _moving_average(obs: TensorObserver, method: MovingAverageMinMaxMethod, bits: int, asymmetric: bool):
    c = method.averaging_constant
    return _ema(obs.batch_mins, c), _ema(obs.batch_maxs, c)


def _side_terms(counts: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For thresholds ``t`` (in bin units, >= 0) on one side's counts (bin k over [k, k+1),
    values uniform within a bin): the count inside [0, t] and the clipping error
    ``sum (x - t)**2`` over values beyond t, in bin units squared. O(bins + thresholds)."""
    h = counts.size
    centres = np.arange(h, dtype=np.float64) + 0.5
    prefix = np.concatenate(([0.0], np.cumsum(counts)))

    def suffix(v: np.ndarray) -> np.ndarray:  # suffix[m] = sum over k >= m
        return np.concatenate((np.cumsum(v[::-1])[::-1], [0.0]))

    s0, s1, s2 = suffix(counts), suffix(counts * centres), suffix(counts * centres**2)
    t = np.minimum(t, float(h))
    m = np.minimum(np.floor(t).astype(np.intp), h - 1)
    frac = t - m
    inside = prefix[m] + counts[m] * frac
    # Bins wholly beyond t: integral over [k, k+1] of (x - t)^2 = (k + 1/2 - t)^2 + 1/12.
    beyond = s2[m + 1] - 2.0 * t * s1[m + 1] + (t * t + 1.0 / 12.0) * s0[m + 1]
    # The bin holding t: integral over [t, m+1] of (x - t)^2 = (m + 1 - t)^3 / 3.
    straddle = counts[m] * (1.0 - frac) ** 3 / 3.0
    return inside, np.maximum(beyond, 0.0) + straddle


def _mse(obs: TensorObserver, method: HistogramMSEMethod, bits: int, asymmetric: bool):
    pos, neg = obs._sides()
    width = obs.bin_width
    nb = method.num_bins
    if not asymmetric:
        amax = obs.abs_max / width
        t = amax * np.arange(1, nb + 1, dtype=np.float64) / nb
        in_p, clip_p = _side_terms(pos, t)
        in_n, clip_n = _side_terms(neg, t)
        step = t / ((1 << (bits - 1)) - 1)
        err = (in_p + in_n) * step * step / 12.0 + clip_p + clip_n
        a = t[int(np.argmin(err))] * width
        return -a, a
    a0, b0 = -min(obs.min, 0.0) / width, max(obs.max, 0.0) / width
    ka = int(round(nb * a0 / (a0 + b0)))
    ka = min(max(ka, 1 if a0 > 0 else 0), nb - (1 if b0 > 0 else 0))
    kb = nb - ka
    lows = a0 * np.arange(ka + 1, dtype=np.float64) / max(ka, 1)  # distance of lo below 0
    highs = b0 * np.arange(kb + 1, dtype=np.float64) / max(kb, 1)
    in_n, clip_n = _side_terms(neg, lows)
    in_p, clip_p = _side_terms(pos, highs)
    levels = (1 << bits) - 1
    best, best_err = (0, 0), math.inf
    rows = max(1, _PAIR_BUDGET // highs.size)
    for r0 in range(0, lows.size, rows):
        lo_blk = slice(r0, r0 + rows)
        step = (lows[lo_blk, None] + highs[None, :]) / levels
        err = (in_n[lo_blk, None] + in_p[None, :]) * step * step / 12.0 + clip_n[lo_blk, None] + clip_p[None, :]
        if r0 == 0:
            err[0, 0] = math.inf  # the empty range [0, 0]
        i, j = np.unravel_index(int(np.argmin(err)), err.shape)
        if err[i, j] < best_err:
            best, best_err = (r0 + i, j), float(err[i, j])
    return -lows[best[0]] * width, highs[best[1]] * width


def _rebin(cum_at_edges: np.ndarray, edges: np.ndarray, new_edges: np.ndarray) -> np.ndarray:
    """Counts over ``new_edges`` from cumulative counts at ``edges`` (values uniform within a bin)."""
    return np.diff(np.interp(new_edges, edges, cum_at_edges))


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _kl_divergences(hist: np.ndarray, starts: np.ndarray, lengths: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for each window ``hist[start:start+length]`` (TensorRT's entropy calibration).

    P: the window, with the mass outside it added to its first/last bin (clipping).
    Q: the window (without that mass) merged into ``levels`` contiguous groups (column j of a
    window of n bins in group ``j * levels // n``), each group's count spread evenly over its
    non-empty bins. Windows where P > 0 and Q == 0 (clipped mass landing on an empty end bin)
    get inf. Every length must be >= levels.

    Computed from prefix sums of h, [h > 0] and h*log(h): O(levels) per window, not O(length):
    Q is constant over a group's non-empty bins, so sum_j P_j log Q_j needs only group sums.
    """
    total = float(hist.sum())
    log_total = math.log(total)
    prefix = np.concatenate(([0.0], np.cumsum(hist)))
    nz_prefix = np.concatenate(([0.0], np.cumsum(hist > 0)))
    xl_prefix = np.concatenate(([0.0], np.cumsum(_xlogx(hist))))
    out = np.empty(lengths.size)
    groups = np.arange(levels + 1)
    block = max(1, _PAIR_BUDGET // (levels + 1))
    for b0 in range(0, lengths.size, block):
        s = starts[b0:b0 + block].astype(np.intp)
        n = lengths[b0:b0 + block].astype(np.intp)
        e = s + n
        edges = s[:, None] + (groups[None, :] * n[:, None] + levels - 1) // levels
        g_sum = np.diff(prefix[edges], axis=1)
        g_cnt = np.diff(nz_prefix[edges], axis=1)
        inside = prefix[e] - prefix[s]
        left, right = prefix[s], total - prefix[e]
        first, last = hist[s], hist[e - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            # log Q_j for the bins of each group (Q normalised by the window's own mass).
            log_q = np.where(g_sum > 0, np.log(g_sum / (np.maximum(g_cnt, 1.0) * inside[:, None])), 0.0)

        def f(x):  # x * log(x / total), the P log P term of a bin holding x counts (0 for x = 0)
            return _xlogx(x) - x * log_total

        p_log_p = (
            (xl_prefix[e] - xl_prefix[s]) - inside * log_total - f(first) - f(last) + f(first + left) + f(last + right)
        )
        p_log_q = (g_sum * log_q).sum(axis=1) + left * log_q[:, 0] + right * log_q[:, -1]
        kl = (p_log_p - p_log_q) / total
        impossible = (inside <= 0) | ((left > 0) & (first == 0)) | ((right > 0) & (last == 0))
        out[b0:b0 + block] = np.where(impossible, np.inf, np.maximum(kl, 0.0))
    return out


def _entropy(obs: TensorObserver, method: HistogramEntropyMethod, bits: int, asymmetric: bool):
    nb = method.num_bins
    width = obs.bin_width
    n = obs.num_bins
    levels = 1 << (bits - (0 if asymmetric else 1))
    if levels >= nb:
        # Every bin is its own level: KL sees no rounding loss, only clipping loss, so the full
        # observed range is optimal (KL = 0). compute_range clamps to the observed min/max.
        return obs.min, obs.max
    if not asymmetric:
        folded = obs.histogram[n // 2:] + obs.histogram[:n // 2][::-1]  # zeros stay in bin 0, as TensorRT has them
        amax = obs.abs_max / width
        cum = np.concatenate(([0.0], np.cumsum(folded, dtype=np.float64)))
        hist = _rebin(cum, np.arange(n // 2 + 1, dtype=np.float64), np.linspace(0.0, amax, nb + 1))
        lengths = np.arange(levels, nb + 1)
        kl = _kl_divergences(hist, np.zeros_like(lengths), lengths, levels)
        a = amax * lengths[int(np.argmin(kl))] / nb * width
        return -a, a
    # Two-sided: re-bin [min, max] with 0 on an edge (index k_neg), at the symmetric case's bin
    # width (max|x| / num_bins), so the shortest window (levels bins) spans as little as there.
    a0, b0 = -min(obs.min, 0.0) / width, max(obs.max, 0.0) / width
    bin_w = max(a0, b0) / nb
    k_neg = int(math.ceil(a0 / bin_w - 1e-9)) if a0 > 0 else 0
    k_pos = int(math.ceil(b0 / bin_w - 1e-9)) if b0 > 0 else 0
    total_bins = k_neg + k_pos
    cum = np.concatenate(([0.0], np.cumsum(obs.histogram, dtype=np.float64)))
    fine_edges = np.arange(n + 1, dtype=np.float64) - n // 2
    hist = _rebin(cum, fine_edges, (np.arange(total_bins + 1, dtype=np.float64) - k_neg) * bin_w)
    # Start from the best window shrinking towards 0 in proportion to the two sides (the
    # symmetric family), then move one end at a time while KL drops (an outlier on one side
    # must not force clipping on the other). Windows always contain 0 and >= levels bins.
    lengths = np.arange(levels, total_bins + 1)
    neg_part = np.rint(lengths * (k_neg / total_bins)).astype(np.intp)
    kl = _kl_divergences(hist, k_neg - neg_part, lengths, levels)
    i = int(np.argmin(kl))
    start, end, best = k_neg - int(neg_part[i]), k_neg - int(neg_part[i]) + int(lengths[i]), float(kl[i])
    for _ in range(16 if k_neg and k_pos else 0):  # one-sided: the sweep above was already exhaustive
        moved = False
        ends = np.arange(max(k_neg, start + levels), total_bins + 1)
        kl = _kl_divergences(hist, np.full(ends.size, start), ends - start, levels)
        j = int(np.argmin(kl))
        if kl[j] < best:
            end, best, moved = int(ends[j]), float(kl[j]), True
        starts = np.arange(0, min(k_neg, end - levels) + 1)
        kl = _kl_divergences(hist, starts, end - starts, levels)
        j = int(np.argmin(kl))
        if kl[j] < best:
            start, best, moved = int(starts[j]), float(kl[j]), True
        if not moved:
            break
    return (start - k_neg) * bin_w * width, (end - k_neg) * bin_w * width


def _quantile(counts: np.ndarray, zero_edge: int, zeros: float, q: float) -> float:
    """The q-quantile (0 < q < 1), in bin units from edge 0, of ``counts`` (uniform within a bin)
    plus a point mass ``zeros`` at edge ``zero_edge``."""
    n = counts.size
    cum = np.concatenate(([0.0], np.cumsum(counts)))
    xs = np.concatenate((np.arange(zero_edge + 1), np.arange(zero_edge, n + 1))).astype(np.float64)
    ys = np.concatenate((cum[:zero_edge + 1], cum[zero_edge:] + zeros))
    target = q * ys[-1]
    k = int(np.searchsorted(ys, target, side="left"))
    k = min(max(k, 1), ys.size - 1)
    span = ys[k] - ys[k - 1]
    frac = (target - ys[k - 1]) / span if span > 0 else 0.0
    return float(xs[k - 1] + frac * (xs[k] - xs[k - 1]))


def _percentile(obs: TensorObserver, method: HistogramPercentileMethod, bits: int, asymmetric: bool):
    q = method.percentile / 100.0
    width = obs.bin_width
    pos, neg = obs._sides()
    if q >= 1.0:
        return obs.min, obs.max
    if not asymmetric:
        a = _quantile(pos + neg, 0, obs.zero_count, q) * width
        return -a, a
    two_sided = np.concatenate((neg[::-1], pos))
    half = obs.num_bins // 2
    lo = (_quantile(two_sided, half, obs.zero_count, 1.0 - q) - half) * width
    hi = (_quantile(two_sided, half, obs.zero_count, q) - half) * width
    return min(lo, 0.0), max(hi, 0.0)


_METHODS = {
    MinMaxMethod: _min_max,
    MovingAverageMinMaxMethod: _moving_average,
    HistogramMSEMethod: _mse,
    HistogramEntropyMethod: _entropy,
    HistogramPercentileMethod: _percentile,
}



# --------------------------------------------------------------------------- statistics

class CalibrationStatistics:
    """Tensor name -> :class:`TensorObserver`, with the number of samples seen and metadata.

    ``record_sample({name: array})`` once per calibration sample; ``stats[name]`` gives an observer;
    ``stats.compute_range(name, method, scheme)``; ``save(path)`` / ``CalibrationStatistics.load(path)``.
    """

    def __init__(self, num_bins: int = DEFAULT_FINE_BINS, metadata: Mapping[str, Any] | None = None):
        self.num_bins = _check_fine_bins(num_bins)
        self.num_samples = 0
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._observers: dict[str, TensorObserver] = {}

    def observer(self, name: str) -> TensorObserver:
        """The observer of tensor ``name``, created empty if new."""
        obs = self._observers.get(name)
        if obs is None:
            obs = self._observers[name] = TensorObserver(name, self.num_bins)
        return obs

    def observe(self, name: str, value: Any) -> None:
        self.observer(name).observe(value)

    def record_sample(self, tensors: Mapping[str, Any]) -> None:
        """Observe every tensor of one calibration sample and count the sample."""
        for name, value in tensors.items():
            self.observer(name).observe(value)
        self.num_samples += 1

    def merge(self, other: CalibrationStatistics) -> CalibrationStatistics:
        """Add another pass's statistics (e.g. from another worker); returns self."""
        if not isinstance(other, CalibrationStatistics):
            raise CalibrationError(f"can only merge CalibrationStatistics, got {type(other).__name__}")
        for name, obs in other._observers.items():
            self.observer(name).merge(obs)
        self.num_samples += other.num_samples
        return self

    def compute_range(self, name: str, method: CalibrationMethod, scheme: QuantizationScheme) -> tuple[float, float]:
        return compute_range(self[name], method, scheme)

    def __getitem__(self, name: str) -> TensorObserver:
        try:
            return self._observers[name]
        except (KeyError, TypeError):
            known = list(self._observers)
            shown = ", ".join(repr(k) for k in known[:8]) + (", ..." if len(known) > 8 else "")
            raise CalibrationError(
                f"no calibration statistics for tensor {name!r} ({len(known)} tensors recorded: {shown})"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._observers

    def __iter__(self) -> Iterator[str]:
        return iter(self._observers)

    def __len__(self) -> int:
        return len(self._observers)

    def names(self) -> list[str]:
        return list(self._observers)

    def items(self):
        return self._observers.items()

    def __repr__(self) -> str:
        return f"CalibrationStatistics({len(self)} tensors, {self.num_samples} samples)"

    # ---- file format -----------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a versioned .npz (no pickled objects), atomically (core.formats.atomic)."""
        path = os.fspath(path)
        names = list(self._observers)
        observers = [self._observers[n] for n in names]
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fine_bins": self.num_bins,
            "num_samples": self.num_samples,
            "tensors": names,
            "metadata": self.metadata,
        }
        try:
            header_text = json.dumps(header, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CalibrationError(f"calibration statistics metadata must be JSON-serialisable: {e}") from None
        lengths = [o.num_batches for o in observers]
        arrays = {
            "header": np.array(header_text),
            "histograms": np.stack([o.histogram for o in observers]) if observers
            else np.zeros((0, self.num_bins), np.int64),
            "half_ranges": np.array([o.half_range for o in observers], np.float64),
            "mins": np.array([o.min for o in observers], np.float64),
            "maxs": np.array([o.max for o in observers], np.float64),
            "counts": np.array([o.count for o in observers], np.int64),
            "zero_counts": np.array([o.zero_count for o in observers], np.int64),
            "batch_offsets": np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int64),
            "batch_mins": np.concatenate([o.batch_mins for o in observers] + [np.zeros(0)]),
            "batch_maxs": np.concatenate([o.batch_maxs for o in observers] + [np.zeros(0)]),
        }
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays),
                     error=CalibrationError, what="calibration statistics file")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationStatistics:
        """Read a file written by :meth:`save`; any other content raises CalibrationError naming it."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CalibrationError(f"calibration statistics file {path!r} does not exist or is not a file")

        def bad(why: str) -> CalibrationError:
            return CalibrationError(f"{path!r} is not a valid mixq calibration statistics file: {why}")

        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise bad(f"it holds a single {type(loaded).__name__}, not an .npz archive")
            with loaded as npz:
                missing = sorted(set(_ARRAY_SPECS) - set(npz.files))
                if missing:
                    raise bad(f"missing arrays {missing}")
                # Reading a member decompresses and CRC-checks it: truncation shows up here.
                arrays = {k: npz[k] for k in _ARRAY_SPECS}
        except CalibrationError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise bad(f"{type(e).__name__}: {e}") from None

        header_arr = arrays["header"]
        if header_arr.dtype.kind != "U" or header_arr.ndim != 0:
            raise bad("the header is not a text string")
        try:
            header = json.loads(str(header_arr[()]))
        except ValueError as e:
            raise bad(f"unreadable header ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise bad(f"format is {header.get('format') if isinstance(header, dict) else None!r}, not {FORMAT_NAME!r}")
        version = header.get("version")
        if version != FORMAT_VERSION:
            raise CalibrationError(
                f"{path!r} has calibration statistics format version {version!r}; "
                f"this mixq reads version {FORMAT_VERSION}"
            )
        names = header.get("tensors")
        fine_bins = header.get("fine_bins")
        num_samples = header.get("num_samples")
        metadata = header.get("metadata")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
            raise bad("the header's tensor names are not a list of distinct strings")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise bad(f"num_samples is {num_samples!r}")
        if not isinstance(metadata, dict):
            raise bad("metadata is not a JSON object")
        try:
            fine_bins = _check_fine_bins(fine_bins)
        except CalibrationError:
            raise bad(f"fine_bins is {fine_bins!r}") from None

        t = len(names)
        for key, (kind, shape_of) in _ARRAY_SPECS.items():
            if key == "header":
                continue
            arr = arrays[key]
            expected = shape_of(t, fine_bins, arrays)
            if arr.dtype != np.dtype(kind) or (expected is not None and arr.shape != expected):
                raise bad(f"array {key!r} has dtype {arr.dtype} and shape {arr.shape}, expected {kind} {expected}")
        offsets = arrays["batch_offsets"]
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != arrays["batch_mins"].size \
                or arrays["batch_mins"].shape != arrays["batch_maxs"].shape:
            raise bad("batch offsets do not match the batch min/max arrays")
        hist, counts, zeros = arrays["histograms"], arrays["counts"], arrays["zero_counts"]
        if np.any(hist < 0) or np.any(zeros < 0) or np.any(zeros > counts) or np.any(hist.sum(axis=1) != counts):
            raise bad("histogram counts are inconsistent with the element counts")

        stats = cls(fine_bins, metadata)
        stats.num_samples = num_samples
        for i, name in enumerate(names):
            obs = TensorObserver(name, fine_bins)
            r = float(arrays["half_ranges"][i])
            if not (r == 0.0 or _is_pow2(r)):
                raise bad(f"tensor {name!r}: histogram half range {r} is not 0 or a power of two")
            lo, hi = float(arrays["mins"][i]), float(arrays["maxs"][i])
            if counts[i] and not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and max(-lo, hi) <= r):
                raise bad(f"tensor {name!r}: min {lo} / max {hi} do not fit the histogram range {r}")
            bm = arrays["batch_mins"][offsets[i]:offsets[i + 1]]
            bx = arrays["batch_maxs"][offsets[i]:offsets[i + 1]]
            if not (np.all(np.isfinite(bm)) and np.all(np.isfinite(bx))):
                raise bad(f"tensor {name!r}: non-finite per-batch min/max")
            obs.histogram = hist[i].copy()
            obs.half_range = r
            obs.count = int(counts[i])
            obs.zero_count = int(zeros[i])
            obs.min, obs.max = lo, hi
            obs._batch_mins = bm.tolist()
            obs._batch_maxs = bx.tolist()
            stats._observers[name] = obs
        return stats


# key -> (dtype, expected shape from (tensor count, fine bins, arrays) or None when checked apart)
_ARRAY_SPECS = {
    "header": ("U", lambda t, f, a: ()),
    "histograms": ("int64", lambda t, f, a: (t, f)),
    "half_ranges": ("float64", lambda t, f, a: (t,)),
    "mins": ("float64", lambda t, f, a: (t,)),
    "maxs": ("float64", lambda t, f, a: (t,)),
    "counts": ("int64", lambda t, f, a: (t,)),
    "zero_counts": ("int64", lambda t, f, a: (t,)),
    "batch_offsets": ("int64", lambda t, f, a: (t + 1,)),
    "batch_mins": ("float64", lambda t, f, a: (a["batch_mins"].size,)),
    "batch_maxs": ("float64", lambda t, f, a: (a["batch_mins"].size,)),
}


# --------------------------------------------------------------------------- calibration data

def iter_calibration_batches(
    data: Iterable[Mapping[str, Any]],
    input_names: Iterable[str],
    input_shapes: Mapping[str, tuple[int, ...]],
    input_dtypes: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Validate calibration samples one at a time, yielding ``{input name: array}`` per sample.

    ``data`` is any iterable of dicts (a list, a generator, ``convert_data_generator_to_iterable``'s
    result, ``length_hinted(...)``); it is read once, lazily. ``input_shapes`` are the model's shapes,
    batch dimension first: a sample may have any batch size, and a sample whose arrays lack the batch
    dimension (rank one less than the model's) gets one added. ``input_dtypes`` (numpy dtypes or
    ``ScalarType``), when given, must match in kind (float/integer/bool) and are cast to.

    Raises CalibrationError for data that is not an iterable of samples or holds none, and
    InputError naming the sample index and input for a sample that is not a dict, misses or adds an
    input, has the wrong shape or dtype kind, or holds NaN/Inf.
    """
    if data is None or isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise CalibrationError(
            f"calibration_data must be an iterable of dicts (input name -> array), got {type(data).__name__}"
        )
    if isinstance(data, Mapping):
        raise CalibrationError(
            "calibration_data is a single dict; pass an iterable of samples, e.g. [sample] or a list of dicts"
        )
    names = list(input_names)
    shapes = {n: tuple(int(d) for d in input_shapes[n]) for n in names}
    dtypes = None
    if input_dtypes is not None:
        dtypes = {n: np.dtype(getattr(input_dtypes[n], "numpy_dtype", input_dtypes[n])) for n in names}
    return _validated(data, InputSignature(tuple(names), shapes, dtypes))


def _validated(data, signature: InputSignature) -> Iterator[dict[str, np.ndarray]]:
    count = 0
    for sample in check_samples(data, signature, what="calibration sample", finite=True):
        yield sample
        count += 1
    if count == 0:
        raise CalibrationError("calibration_data is empty: calibration needs at least one sample")
