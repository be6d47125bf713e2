"""Calibration statistics and range methods, each checked against a reference on raw data."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CalibrationError, InputError
from core.quantization import calibration as cal
from core.quantization.calibration import (
    CalibrationStatistics,
    TensorObserver,
    compute_range,
    iter_calibration_batches,
)
from core.quantization.params import (
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    QuantizationScheme,
)

SYM8 = QuantizationScheme(asymmetric=False, per_channel=False, bits=8)
ASYM8 = QuantizationScheme(asymmetric=True, per_channel=False, bits=8)
SYM16 = QuantizationScheme(asymmetric=False, per_channel=False, bits=16)
ASYM16 = QuantizationScheme(asymmetric=True, per_channel=False, bits=16)
ALL_SCHEMES = [SYM8, ASYM8, SYM16, ASYM16]
ALL_METHODS = [
    MinMaxMethod(), MovingAverageMinMaxMethod(), HistogramMSEMethod(), HistogramEntropyMethod(),
    HistogramPercentileMethod(),
]


def observed(batches, name="t", num_bins=cal.DEFAULT_FINE_BINS):
    obs = TensorObserver(name, num_bins)
    for b in batches:
        obs.observe(b)
    return obs


def fake_quant_mse(x, lo, hi, bits):
    """Actual mean squared error of quantizing x to the uniform grid of [lo, hi] (raw data)."""
    if lo < 0 < hi and abs(lo + hi) < 1e-12 * hi:  # symmetric: [-a, a] with 2^(b-1)-1 steps a side
        step = hi / (2 ** (bits - 1) - 1)
        q = np.clip(np.round(x / step), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) * step
    else:
        step = (hi - lo) / (2 ** bits - 1)
        q = np.clip(np.round((x - lo) / step), 0, 2 ** bits - 1) * step + lo
    return float(np.mean((x - q) ** 2))


@pytest.fixture(scope="module")
def gaussian_batches():
    rng = np.random.default_rng(1)
    return [rng.normal(0.3, 1.0 + 0.05 * i, size=20_000).astype(np.float32) for i in range(10)]


# ---- MinMax / moving average ---------------------------------------------------------

def test_min_max_is_exact_and_asymmetric_range_includes_zero(gaussian_batches):
    obs = observed(gaussian_batches)
    data = np.concatenate(gaussian_batches)
    assert compute_range(obs, MinMaxMethod(), ASYM8) == (float(data.min()), float(data.max()))
    a = float(np.abs(data).max())
    assert compute_range(obs, MinMaxMethod(), SYM16) == (-a, a)
    positive = observed([np.array([0.5, 2.0, 3.0], np.float32)])
    assert compute_range(positive, MinMaxMethod(), ASYM8) == (0.0, 3.0)  # 0 always representable


def test_moving_average_matches_sequential_ema(gaussian_batches):
    c = 0.2
    obs = observed(gaussian_batches)
    lo = hi = None
    for b in gaussian_batches:  # the definition, one batch at a time
        bmin, bmax = float(b.min()), float(b.max())
        lo = bmin if lo is None else lo + c * (bmin - lo)
        hi = bmax if hi is None else hi + c * (bmax - hi)
    got = compute_range(obs, MovingAverageMinMaxMethod(c), ASYM8)
    np.testing.assert_allclose(got, (lo, hi), rtol=1e-12)
    got_sym = compute_range(obs, MovingAverageMinMaxMethod(c), SYM8)
    np.testing.assert_allclose(got_sym, (-max(-lo, hi), max(-lo, hi)), rtol=1e-12)
    # The average lags behind the growing batches, so it sits inside the overall min/max.
    assert got[1] < obs.max and got[0] > obs.min


# ---- percentile ------------------------------------------------------------------------

@pytest.mark.parametrize("percentile", [50.0, 99.0, 99.9, 99.999])
def test_percentile_matches_numpy_within_one_fine_bin(gaussian_batches, percentile):
    obs = observed(gaussian_batches)
    data = np.concatenate(gaussian_batches).astype(np.float64)
    method = HistogramPercentileMethod(percentile)
    q = percentile / 100.0

    def sample_quantile(values, q):  # the smallest value with a fraction >= q of values at or below it
        return np.quantile(values, q, method="inverted_cdf")

    _, a = compute_range(obs, method, SYM8)
    assert abs(a - sample_quantile(np.abs(data), q)) <= obs.bin_width
    lo, hi = compute_range(obs, method, ASYM8)
    assert abs(hi - max(sample_quantile(data, q), 0.0)) <= obs.bin_width
    assert abs(lo - min(sample_quantile(data, 1.0 - q), 0.0)) <= obs.bin_width
    # np.percentile's interpolation differs by under one sample rank: close where data is dense.
    if percentile <= 99.0:
        assert abs(a - np.percentile(np.abs(data), percentile)) <= obs.bin_width


def test_percentile_counts_exact_zeros_as_zero():
    # 70% exact zeros (a ReLU output): the 60th percentile of |x| is 0, not somewhere in bin 0.
    rng = np.random.default_rng(2)
    x = np.where(rng.random(50_000) < 0.7, 0.0, rng.random(50_000) + 0.5)
    obs = observed([x])
    assert compute_range(obs, HistogramPercentileMethod(60.0), SYM8) == (-0.0, 0.0)
    _, a = compute_range(obs, HistogramPercentileMethod(90.0), SYM8)
    assert abs(a - np.quantile(x, 0.9, method="inverted_cdf")) <= obs.bin_width


# ---- MSE ---------------------------------------------------------------------------------

def test_mse_symmetric_threshold_is_near_the_brute_force_optimum():
    rng = np.random.default_rng(3)
    x = rng.standard_t(4, 30_000)  # heavy tails: the optimum clips them
    obs = observed(np.array_split(x, 7))
    _, a = compute_range(obs, HistogramMSEMethod(), SYM8)
    thresholds = np.linspace(0.5, np.abs(x).max(), 600)
    brute = np.array([fake_quant_mse(x, -t, t, 8) for t in thresholds])
    assert fake_quant_mse(x, -a, a, 8) <= 1.03 * brute.min()
    assert abs(a - thresholds[brute.argmin()]) < 0.05 * np.abs(x).max()
    assert a < 0.95 * np.abs(x).max()  # the optimum clips the sparse tail


def test_mse_asymmetric_range_is_near_the_brute_force_optimum():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.gamma(2.0, 1.0, 30_000) - 1.0, [30.0]])  # skewed, one outlier
    obs = observed([x])
    lo, hi = compute_range(obs, HistogramMSEMethod(), ASYM8)
    los = np.linspace(x.min(), 0.0, 25)
    his = np.linspace(1.0, x.max(), 60)
    brute = min(fake_quant_mse(x, l, h, 8) for l in los for h in his)
    assert fake_quant_mse(x, lo, hi, 8) <= 1.05 * brute
    assert lo <= 0.0 <= hi < 30.0


def test_mse_keeps_a_wider_range_at_16_bits():
    rng = np.random.default_rng(5)
    x = rng.standard_t(3, 50_000)
    obs = observed([x])
    amax = np.abs(x).max()
    _, a8 = compute_range(obs, HistogramMSEMethod(), SYM8)
    _, a16 = compute_range(obs, HistogramMSEMethod(), SYM16)
    # 16-bit rounding is 256^2 times cheaper: clipping the tails no longer pays.
    assert a8 < 0.9 * amax and a16 > 0.98 * amax
    lo8, hi8 = compute_range(obs, HistogramMSEMethod(), ASYM8)
    lo16, hi16 = compute_range(obs, HistogramMSEMethod(), ASYM16)
    assert lo16 <= lo8 and hi16 > hi8


def test_mse_does_not_charge_rounding_error_to_exact_zeros():
    # Half exact zeros: they cost nothing at any range, so the choice equals that on the non-zeros.
    rng = np.random.default_rng(6)
    nonzero = rng.laplace(0.0, 1.0, 20_000)
    with_zeros = observed([np.concatenate([nonzero, np.zeros(20_000)])])
    without = observed([nonzero])
    assert compute_range(with_zeros, HistogramMSEMethod(), SYM8) == compute_range(without, HistogramMSEMethod(), SYM8)


# ---- entropy -------------------------------------------------------------------------------

def loop_kl_reference(hist, start, length, levels):
    """TensorRT / pytorch-quantization's KL for one window, written as plainly as possible."""
    window = hist[start:start + length].astype(np.float64)
    p = window.copy()
    p[0] += hist[:start].sum()
    p[-1] += hist[start + length:].sum()
    q = np.zeros(length)
    for g in range(levels):
        members = [j for j in range(length) if j * levels // length == g]
        nonzero = [j for j in members if window[j] > 0]
        for j in nonzero:
            q[j] = window[members].sum() / len(nonzero)
    p /= p.sum()
    q /= q.sum()
    if np.any((p > 0) & (q == 0)):
        return np.inf
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def test_kl_divergences_match_the_loop_reference():
    rng = np.random.default_rng(7)
    hist = rng.integers(0, 50, 96).astype(np.float64)
    hist[rng.random(96) < 0.2] = 0.0  # empty bins, some at window ends
    starts = np.array([0, 0, 5, 10, 3, 20, 7])
    lengths = np.array([96, 40, 50, 16, 93, 16, 33])
    got = cal._kl_divergences(hist, starts, lengths, 16)
    want = [loop_kl_reference(hist, s, n, 16) for s, n in zip(starts, lengths)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_entropy_clips_outliers_of_a_gaussian():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(200_000), [50.0, -45.0, 48.0]])
    obs = observed(np.array_split(x, 4))
    _, a = compute_range(obs, HistogramEntropyMethod(), SYM8)
    assert 2.5 < a < 0.25 * 50.0
    lo, hi = compute_range(obs, HistogramEntropyMethod(), ASYM8)
    assert -0.25 * 45.0 < lo < -2.5 and 2.5 < hi < 0.25 * 50.0


def test_entropy_asymmetric_does_not_clip_the_clean_side_for_an_outlier_on_the_other():
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(200_000), [60.0]])
    obs = observed([x])
    lo, hi = compute_range(obs, HistogramEntropyMethod(), ASYM8)
    assert hi < 0.25 * 60.0
    assert lo < 0.7 * x.min()  # the negative side keeps most of its own tail


def test_entropy_at_16_bits_keeps_the_full_range():
    rng = np.random.default_rng(10)
    obs = observed([np.concatenate([rng.standard_normal(10_000), [50.0]])])
    assert compute_range(obs, HistogramEntropyMethod(), SYM16) == (-50.0, 50.0)
    assert compute_range(obs, HistogramEntropyMethod(), ASYM16) == (obs.min, 50.0)


# ---- one pass, every method and scheme -------------------------------------------------------

def test_one_pass_serves_every_method_and_scheme(gaussian_batches):
    stats = CalibrationStatistics()
    for b in gaussian_batches:
        stats.record_sample({"act": b, "relu": np.maximum(b, 0)})
    for name in ("act", "relu"):
        obs = stats[name]
        for method in ALL_METHODS:
            for scheme in ALL_SCHEMES:
                lo, hi = stats.compute_range(name, method, scheme)
                if scheme.asymmetric:
                    assert min(obs.min, 0.0) <= lo <= 0.0 < hi <= obs.max
                    assert lo < 0.0 if name == "act" else lo == 0.0
                else:
                    assert lo == -hi and 0 < hi <= max(-obs.min, obs.max)


def test_compute_range_is_cached_until_more_data_arrives(gaussian_batches):
    obs = observed(gaussian_batches[:3])
    method = HistogramEntropyMethod()
    first = compute_range(obs, method, ASYM8)
    assert obs._cache[(method, 8, True)] == first
    obs.observe(gaussian_batches[3] * 4.0)
    assert (method, 8, True) not in obs._cache
    assert compute_range(obs, method, ASYM8) != first


def test_a_tensor_of_zeros_gives_an_empty_range_and_an_unseen_one_raises():
    zeros = observed([np.zeros((4, 4), np.float32)])
    for method in ALL_METHODS:
        assert compute_range(zeros, method, ASYM8) == (0.0, 0.0)
    with pytest.raises(CalibrationError, match="'never_seen'"):
        compute_range(TensorObserver("never_seen"), MinMaxMethod(), SYM8)
    with pytest.raises(CalibrationError, match="'missing'"):
        CalibrationStatistics()["missing"]


def test_non_finite_activation_is_refused_naming_the_tensor():
    obs = TensorObserver("conv1_out")
    with pytest.raises(CalibrationError, match="'conv1_out'.*1 NaN/Inf"):
        obs.observe(np.array([1.0, np.inf, 2.0]))


# ---- the histogram ---------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(
    scales=st.lists(st.integers(-30, 30), min_size=1, max_size=6),
    seed=st.integers(0, 2**31 - 1),
)
def test_grown_histogram_equals_one_histogram_over_the_final_range(scales, seed):
    rng = np.random.default_rng(seed)
    batches = [(rng.standard_normal(300) * 2.0**s).astype(np.float32) for s in sorted(scales)]
    batches.append(np.zeros(5, np.float32))
    obs = observed(batches, num_bins=64)  # few bins: many doublings collapse the early batches
    data = np.concatenate(batches)
    r = obs.half_range
    assert np.abs(data).max() <= r < 2 * np.abs(data).max()
    want, _ = np.histogram(data, bins=64, range=(-r, r))
    np.testing.assert_array_equal(obs.histogram, want)
    np.testing.assert_array_equal(obs.bin_edges, np.linspace(-r, r, 65))
    assert obs.zero_count == np.count_nonzero(data == 0)


def test_merged_observers_equal_one_observer(gaussian_batches):
    whole = observed(gaussian_batches)
    part = observed(gaussian_batches[:4]).merge(observed([b * 3 for b in gaussian_batches[4:]]))
    whole_scaled = observed(gaussian_batches[:4] + [b * 3 for b in gaussian_batches[4:]])
    np.testing.assert_array_equal(part.histogram, whole_scaled.histogram)
    np.testing.assert_array_equal(part.batch_maxs, whole_scaled.batch_maxs)
    assert (part.count, part.min, part.max) == (whole_scaled.count, whole_scaled.min, whole_scaled.max)
    assert part.half_range > whole.half_range  # the merge grew the range


def test_observer_memory_does_not_grow_with_the_number_of_samples():
    rng = np.random.default_rng(11)
    few = observed(rng.standard_normal((10, 1000)))
    many = observed(rng.standard_normal((1000, 1000)))
    assert few.state_nbytes(include_batch_lists=False) == many.state_nbytes(include_batch_lists=False)
    assert many.state_nbytes(include_batch_lists=False) == many.histogram.nbytes + 48
    # Only the per-batch min/max lists grow: two floats per batch, never per element.
    assert many.state_nbytes() - few.state_nbytes() == 16 * 990
    assert many.state_nbytes() < 1000 * 1000 * 8 / 20  # far below the 8 MB of raw values


# ---- the statistics file -----------------------------------------------------------------------

@pytest.fixture
def stats(gaussian_batches):
    s = CalibrationStatistics(metadata={"model": "toy", "inputs": ["x"]})
    for b in gaussian_batches[:5]:
        s.record_sample({"x": b, "conv/Relu:0": np.maximum(b, 0), "ünïcode name": b[:10] * 0.01})
    s.observer("zeros").observe(np.zeros(3))
    return s


def test_save_load_round_trip_is_exact(tmp_path, stats):
    path = tmp_path / "calib.npz"
    stats.save(path)
    back = CalibrationStatistics.load(path)
    assert back.names() == stats.names()
    assert (back.num_samples, back.metadata, back.num_bins) == (5, {"model": "toy", "inputs": ["x"]}, stats.num_bins)
    for name in stats:
        a, b = stats[name], back[name]
        np.testing.assert_array_equal(a.histogram, b.histogram)
        np.testing.assert_array_equal(a.batch_mins, b.batch_mins)
        np.testing.assert_array_equal(a.batch_maxs, b.batch_maxs)
        assert (a.half_range, a.count, a.zero_count, a.min, a.max) == (
            b.half_range,
            b.count,
            b.zero_count,
            b.min,
            b.max,
        )
        for method in ALL_METHODS:
            assert compute_range(a, method, ASYM8) == compute_range(b, method, ASYM8)
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]  # no temp file left behind


def test_metadata_that_is_not_json_is_refused(tmp_path):
    stats = CalibrationStatistics(metadata={"when": object()})
    with pytest.raises(CalibrationError, match="metadata"):
        stats.save(tmp_path / "calib.npz")
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_when_writing_fails(tmp_path, stats, monkeypatch):
    path = tmp_path / "calib.npz"
    stats.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(CalibrationError, match="calib.npz.*disk full"):
        stats.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["calib.npz"]
    with pytest.raises(CalibrationError, match="no_such_dir"):
        stats.save(tmp_path / "no_such_dir" / "calib.npz")


def test_truncated_or_garbage_files_raise_naming_the_file(tmp_path, stats):
    path = tmp_path / "calib.npz"
    stats.save(path)
    data = path.read_bytes()
    for i, cut in enumerate([len(data) // 2, len(data) - 30, 100]):
        bad = tmp_path / f"cut{i}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CalibrationError, match=f"cut{i}.npz"):
            CalibrationStatistics.load(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00\x01 not a zip at all" * 20)
    with pytest.raises(CalibrationError, match="garbage.npz"):
        CalibrationStatistics.load(garbage)
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationStatistics.load(tmp_path / "absent.npz")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(CalibrationError, match="single.npy"):
        CalibrationStatistics.load(single)


def rewrite(path, out, **changes):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(out, **arrays)
    return out


def test_wrong_version_or_format_raises(tmp_path, stats):
    path = tmp_path / "calib.npz"
    stats.save(path)
    with np.load(path) as z:
        header = json.loads(str(z["header"][()]))
    newer = rewrite(path, tmp_path / "newer.npz", header=np.array(json.dumps({**header, "version": 2})))
    with pytest.raises(CalibrationError, match="newer.npz.*version 2"):
        CalibrationStatistics.load(newer)
    other = rewrite(path, tmp_path / "other.npz", header=np.array(json.dumps({**header, "format": "x"})))
    with pytest.raises(CalibrationError, match="other.npz.*format"):
        CalibrationStatistics.load(other)
    counts = rewrite(path, tmp_path / "counts.npz", counts=np.zeros(len(header["tensors"]), np.int64))
    with pytest.raises(CalibrationError, match="counts.npz.*inconsistent"):
        CalibrationStatistics.load(counts)
    dtype = rewrite(path, tmp_path / "dtype.npz", mins=np.zeros(len(header["tensors"]), np.float32))
    with pytest.raises(CalibrationError, match="dtype.npz.*'mins'"):
        CalibrationStatistics.load(dtype)


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return "pwned"


class _Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_a_crafted_object_array_is_refused_without_running_code(tmp_path, stats):
    path = tmp_path / "calib.npz"
    stats.save(path)
    crafted = tmp_path / "crafted.npz"
    mins = np.empty(len(stats), dtype=object)
    mins[:] = [_Payload() for _ in range(len(stats))]
    rewrite(path, crafted, mins=mins)
    with pytest.raises(CalibrationError, match="crafted.npz"):
        CalibrationStatistics.load(crafted)
    assert UNPICKLED == []


# ---- calibration data ------------------------------------------------------------------------------

SHAPES = {"image": (1, 4, 4, 3), "scale": (1, 2)}
DTYPES = {"image": np.float32, "scale": np.float32}


def sample(**over):
    s = {"image": np.ones((1, 4, 4, 3), np.float32), "scale": np.ones((1, 2), np.float32)}
    s.update(over)
    return s


def batches(data):
    return list(iter_calibration_batches(data, list(SHAPES), SHAPES, DTYPES))


def test_valid_samples_are_yielded_with_the_batch_dimension_added():
    got = batches([sample(), sample(image=np.zeros((4, 4, 3)), scale=np.zeros(2, np.float64)),
                   sample(image=np.zeros((8, 4, 4, 3), np.float32), scale=np.zeros((8, 2), np.float32))])
    assert [g["image"].shape for g in got] == [(1, 4, 4, 3), (1, 4, 4, 3), (8, 4, 4, 3)]
    assert got[1]["scale"].shape == (1, 2) and got[1]["scale"].dtype == np.float32


def test_samples_are_read_lazily():
    seen = []

    def gen():
        for i in range(3):
            seen.append(i)
            yield sample()

    it = iter_calibration_batches(gen(), list(SHAPES), SHAPES, DTYPES)
    next(it)
    assert seen == [0]


def test_empty_or_non_iterable_calibration_data_raises():
    with pytest.raises(CalibrationError, match="empty"):
        batches([])
    with pytest.raises(CalibrationError, match="empty"):
        batches(iter(()))
    with pytest.raises(CalibrationError, match="iterable"):
        batches(None)
    with pytest.raises(CalibrationError, match="single dict"):
        batches(sample())


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not a dict", r"sample 1 must be a dict.*got str"),
        ({"image": np.ones((1, 4, 4, 3), np.float32)}, r"sample 1: missing input\(s\) \['scale'\]"),
        (
            sample(image=np.ones((1, 5, 4, 3), np.float32)),
            r"sample 1: input 'image' expects shape \(1, 4, 4, 3\) .*got shape \(1, 5, 4, 3\)",
        ),
        (sample(image=np.ones((4, 3), np.float32)), r"sample 1: input 'image' expects .*got shape \(4, 3\)"),
        (sample(scale=np.array([[1.0, np.nan]], np.float32)), r"sample 1: input 'scale' holds 1 NaN/Inf"),
        (sample(image=np.full((1, 4, 4, 3), np.inf, np.float32)), r"sample 1: input 'image' holds 48 NaN/Inf"),
        (sample(image=np.ones((1, 4, 4, 3), np.uint8)), r"sample 1: input 'image' expects float32, got uint8"),
        ({**sample(), "extra": np.ones(1)}, r"sample 1: unknown input name\(s\) \['extra'\]"),
    ],
)
def test_bad_samples_raise_naming_sample_and_input(bad, message):
    with pytest.raises(InputError, match=message):
        batches([sample(), bad])
