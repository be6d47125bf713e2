"""AdaRound on the zoo MNIST CNN: learned weights are valid integer weights on round-to-nearest's
scales, differ from it, and save/load keeps execution bit-identical; the cache reuses them.
Output-aware activation ranges: plain per-tensor scales, a lower scored error, bit-identical
save/load/export with AdaRound, cached."""
import numpy as np
import pytest

from core import (
    AdaRoundMethod,
    CalibrationError,
    Model,
    RangeSearchMethod,
    default_quantization,
    load_model,
    onnx_source,
    quantization_scheme,
    zoo,
)
from core.ops.common import weight_output_axis
from core.quantization.quantizer import quantize_weights

FAST = AdaRoundMethod(iterations=100, rows=1024, batch=128)
TINY = AdaRoundMethod(iterations=30, rows=256, batch=64, max_samples=8)   # combinations: seconds


@pytest.fixture(scope="module")
def setup():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration")
    calib = [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 32)[:32]]
    return net, calib, cal.inputs[:64]


@pytest.mark.parametrize("bits", [8, 4])
def test_learned_weights_are_valid_integers(setup, bits, tmp_path):
    net, calib, x = setup
    cfg = default_quantization.with_adaround(FAST).with_weight_quantization(quantization_scheme(False, True, bits))
    model = net.quantize(calib, cfg)
    qmax = (1 << (bits - 1)) - 1
    moved = 0
    for n in net.graph.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul"):
            continue
        c = model.program.constants[n.name]
        w = net.graph.constants[n.inputs[1]]
        rtn, scale = quantize_weights(w, weight_output_axis(n, w.ndim), bits)
        assert c.w_q.dtype == rtn.dtype == np.int8 and c.w_q.shape == rtn.shape
        assert np.array_equal(c.w_scale, scale)
        assert c.w_q.min() >= -qmax and c.w_q.max() <= qmax
        # up or down: within one step of round-to-nearest and of floor(w / s)
        shape = [1] * w.ndim
        shape[weight_output_axis(n, w.ndim)] = -1
        fl = np.floor(np.asarray(w, np.float64) / scale.reshape(shape))
        d = c.w_q.astype(np.int64) - fl
        assert np.all((d == 0) | (d == 1) | (np.abs(c.w_q) == qmax))
        moved += int((c.w_q != rtn).sum())
    assert moved > 0, "learned rounding must differ from round-to-nearest somewhere"
    out = model.execute({"input": x})[0]
    model.save("m", str(tmp_path))
    again = Model.load("m", str(tmp_path))
    assert np.array_equal(again.execute({"input": x})[0], out)


def test_cache_and_needs_samples(setup):
    net, calib, _ = setup
    cfg = default_quantization.with_adaround(FAST)
    a = net.quantize(calib, cfg)
    b = net.quantize(calib, cfg)          # from the cache
    for n in a.program.constants:
        if a.program.constants[n].w_q is not None:
            assert np.array_equal(a.program.constants[n].w_q, b.program.constants[n].w_q)
    with pytest.raises(CalibrationError, match="adaround"):
        net.quantize(net.calibrate(calib), cfg)


def check_learned(model, graph, qmax_of) -> int:
    """Every dense node's integer weights are floor or ceil of w / scale on the program's own
    scales (clipped to the range of its width); returns how many differ from round-to-nearest."""
    moved = 0
    for n in graph.nodes:
        c = model.program.constants.get(n.name)
        if n.op not in ("Conv", "Gemm", "MatMul") or c is None or c.w_q is None:
            continue
        w = np.asarray(graph.constants[n.inputs[1]], np.float64)
        axis = weight_output_axis(n, w.ndim)
        shape = [1] * w.ndim
        shape[axis] = -1
        ws = w / np.asarray(c.w_scale, np.float64).reshape(shape)
        qmax = qmax_of(n, c.w_q)
        assert c.w_q.dtype.kind == "i" and c.w_q.shape == w.shape, n.name
        assert np.abs(c.w_q).max() <= qmax, n.name
        d = c.w_q.astype(np.int64) - np.floor(ws)
        assert np.all((d == 0) | (d == 1) | (np.abs(c.w_q) == qmax)), n.name
        moved += int((c.w_q != np.clip(np.round(ws), -qmax, qmax)).sum())
    return moved


def _container_qmax(n, w_q):
    return np.iinfo(w_q.dtype).max


@pytest.mark.parametrize("case", ["int16_weights", "mixed", "equalization", "bias_correction"])
def test_combinations_stay_valid_integer_weights(setup, case):
    from core import QuantizationPrecision

    net, calib, x = setup
    cfg = default_quantization.with_adaround(TINY)
    if case == "int16_weights":
        cfg = cfg.with_weight_quantization(quantization_scheme(False, True, 16))
    elif case == "mixed":
        cfg = cfg.with_custom_quantization_configs(
            {"MLA_0/conv2d_add_relu_2": {"quantization_precision": QuantizationPrecision.INT_16}})
    elif case == "equalization":
        cfg = cfg.with_channel_equalization(True)
    else:
        cfg = cfg.with_bias_correction(True)
    model = net.quantize(calib, cfg)
    graph = model.program.graph        # the equalized graph when equalization is on
    moved = check_learned(model, graph, _container_qmax if case != "int16_weights" else
                          lambda n, w_q: 32767)
    assert moved > 0, "learned rounding must differ from round-to-nearest somewhere"
    rtn = net.quantize(calib, cfg.with_adaround(False))
    out, ref = model.execute({"input": x})[0], rtn.execute({"input": x})[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9      # a valid program, close to round-to-nearest's
    if case == "bias_correction":
        # bias correction comes after learned rounding and keeps its weights (the same cached rounding)
        plain = net.quantize(calib, default_quantization.with_adaround(TINY))
        for n, c in plain.program.constants.items():
            if c is not None and c.w_q is not None:
                assert np.array_equal(model.program.constants[n].w_q, c.w_q), n


def test_integer_onnx_export_and_save_load_bit_identical(setup, tmp_path):
    import onnxruntime as ort

    net, calib, x = setup
    model = net.quantize(calib, default_quantization.with_adaround(TINY))
    out = model.execute({"input": x}, fast_mode=False)[0]
    path = model.export_onnx(str(tmp_path / "ada_int.onnx"), form="integer")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {"input": x})[0], out)
    model.save("ada", str(tmp_path))
    again = Model.load("ada", str(tmp_path))
    for n, c in model.program.constants.items():
        if c is not None and c.w_q is not None:
            assert np.array_equal(again.program.constants[n].w_q, c.w_q), n
    assert np.array_equal(again.execute({"input": x}, fast_mode=False)[0], out)


def test_cache_file_is_reused_by_a_new_net(setup, tmp_path, monkeypatch):
    """A second LoadedNet (no in-memory cache) reads the learned rounding from the .npz cache
    instead of learning it again; another method learns anew."""
    from core.quantization import adaround

    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    _, calib, _ = setup
    calls = []
    real = adaround.learn_rounding
    monkeypatch.setattr(adaround, "learn_rounding", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_model(onnx_source(zoo.build("mnist_cnn")))
    a = first.quantize(calib, default_quantization.with_adaround(TINY))
    assert len(calls) == 1 and list((tmp_path / "adaround").glob("*.npz"))
    second = load_model(onnx_source(zoo.build("mnist_cnn")))
    b = second.quantize(calib, default_quantization.with_adaround(TINY))
    assert len(calls) == 1
    for n, c in a.program.constants.items():
        if c is not None and c.w_q is not None:
            assert np.array_equal(b.program.constants[n].w_q, c.w_q), n
    other = AdaRoundMethod(iterations=20, rows=256, batch=64, max_samples=8)
    second.quantize(calib, default_quantization.with_adaround(other))
    assert len(calls) == 2


def test_4bit_weight_scales_minimise_the_weight_error():
    """4-bit weights take, per channel, the clipping of the largest weight with the least squared
    error: never worse than scaling by the largest weight, strictly better on heavy tails."""
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=(32, 16, 3, 3))
    q, s = quantize_weights(w, 0, 4)
    amax = np.abs(w).reshape(32, -1).max(1)
    assert q.dtype == np.int8 and np.abs(q).max() <= 7 and np.all(s <= amax / 7 + 1e-12)
    err = ((w - q * s[:, None, None, None]) ** 2).reshape(32, -1).sum(1)
    q_max = np.clip(np.round(w / (amax / 7)[:, None, None, None]), -7, 7)
    err_max = ((w - q_max * (amax / 7)[:, None, None, None]) ** 2).reshape(32, -1).sum(1)
    assert np.all(err <= err_max + 1e-12) and err.sum() < 0.9 * err_max.sum()
    q8, s8 = quantize_weights(w, 0, 8)            # 8 and 16 bits keep the largest weight's scale
    assert np.allclose(s8, amax / 127)


# --------------------------------------------------------------------------- output-aware activation ranges

RANGES = RangeSearchMethod(samples=8)


def test_output_aware_ranges_are_plain_scales_and_lower_the_scored_error(setup):
    """The searched ranges replace calibrated ones as ordinary per-tensor (scale, zero point);
    greedy with the factor 1 among the candidates, the simulated output error on the scored
    samples never rises above the calibrated ranges' (downstream quantized: each step starts
    where the last ended)."""
    from core.quantization import range_search
    from core.quantization.quantizer import activation_quant
    from core.runtime.float_interpreter import run_graph

    net, calib, _ = setup
    base = net.quantize(calib, default_quantization)
    model = net.quantize(calib, default_quantization.with_output_aware_ranges(RANGES))
    ranges = range_search.search_ranges(base.program, net.graph, calib, RANGES, progress=False)
    assert ranges, "the search must move some range on this model"
    own = set(range_search.searchable_tensors(base.program))
    assert set(ranges) <= own
    for t, q in model.program.tensors.items():
        assert isinstance(q.scale, float) and isinstance(q.zero_point, int)
        if t in ranges:
            assert q == activation_quant(*ranges[t], q.bits, True), t
        elif t in own:
            assert q == base.program.tensors[t], t
    feeds = range_search.pick_samples(calib, RANGES)
    ref = run_graph(net.graph, feeds)
    err = lambda m: sum(float(np.mean((range_search.fake_quant_outputs(m.program, feeds)[k] - v) ** 2))  # noqa: E731
                        for k, v in ref.items())
    assert err(model) <= err(base)


def test_output_aware_ranges_with_adaround_save_load_and_export_bit_identical(setup, tmp_path):
    import onnxruntime as ort

    net, calib, x = setup
    cfg = default_quantization.with_output_aware_ranges(RANGES).with_adaround(TINY).with_bias_correction(True)
    model = net.quantize(calib, cfg)
    assert check_learned(model, net.graph, _container_qmax) > 0
    out = model.execute({"input": x}, fast_mode=False)[0]
    path = model.export_onnx(str(tmp_path / "oar_int.onnx"), form="integer")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {"input": x})[0], out)
    model.save("oar", str(tmp_path))
    again = Model.load("oar", str(tmp_path))
    assert again.program.params.output_aware_ranges == RANGES
    assert again.program.tensors == model.program.tensors
    assert np.array_equal(again.execute({"input": x}, fast_mode=False)[0], out)


def test_output_aware_ranges_cache_and_needs_samples(setup, tmp_path, monkeypatch):
    from core.quantization import range_search

    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    _, calib, _ = setup
    calls = []
    real = range_search.search_ranges
    monkeypatch.setattr(range_search, "search_ranges", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = default_quantization.with_output_aware_ranges(RANGES)
    first = load_model(onnx_source(zoo.build("mnist_cnn")))
    a = first.quantize(calib, cfg)
    first.quantize(calib, cfg)                   # in memory
    assert len(calls) == 1 and list((tmp_path / "ranges").glob("*.npz"))
    second = load_model(onnx_source(zoo.build("mnist_cnn")))
    b = second.quantize(calib, cfg)              # from the file
    assert len(calls) == 1 and b.program.tensors == a.program.tensors
    second.quantize(calib, default_quantization.with_output_aware_ranges(RangeSearchMethod(samples=4)))
    assert len(calls) == 2
    with pytest.raises(CalibrationError, match="output_aware_ranges"):
        second.quantize(second.calibrate(calib), cfg)


def test_range_search_method_is_validated():
    from core import QuantizationConfigError

    assert default_quantization.with_output_aware_ranges(True).output_aware_ranges == RangeSearchMethod()
    assert default_quantization.with_output_aware_ranges(False).output_aware_ranges is None
    for bad in ({"factors": ()}, {"factors": (0.0,)}, {"samples": 0}, {"downstream": "both"}):
        with pytest.raises(QuantizationConfigError):
            RangeSearchMethod(**bad)


@pytest.mark.parametrize("bits", [8, 4])
def test_4bit_ranges_are_searched_on_the_learned_weights(setup, bits, tmp_path, monkeypatch):
    """4-bit round-to-nearest weights break the network, so with 4-bit weights the ranges are
    searched on the program with the learned rounding (and the final model keeps those weights);
    at 8 bits the ranges come first and the rounding is learned on them."""
    from core.quantization import range_search

    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    _, calib, _ = setup
    seen = []
    real = range_search.search_ranges
    monkeypatch.setattr(range_search, "search_ranges", lambda p, *a, **k: seen.append(p) or real(p, *a, **k))
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cfg = default_quantization.with_output_aware_ranges(RangeSearchMethod(samples=4)).with_adaround(TINY) \
        .with_weight_quantization(quantization_scheme(False, True, bits))
    model = net.quantize(calib, cfg)
    learned_alone = net.quantize(calib, default_quantization.with_adaround(TINY).with_weight_quantization(
        quantization_scheme(False, True, bits)))
    assert len(seen) == 1
    dense = [n for n, c in model.program.constants.items() if c is not None and c.w_q is not None]
    searched_on = seen[0].constants
    same_as_final = all(np.array_equal(searched_on[n].w_q, model.program.constants[n].w_q) for n in dense)
    assert same_as_final == (bits == 4)
    assert check_learned(model, net.graph, lambda n, w_q: (1 << (bits - 1)) - 1) > 0
    if bits == 4:   # the learned weights are the ones learned on the calibrated ranges
        alone = learned_alone.program.constants
        assert all(np.array_equal(alone[n].w_q, model.program.constants[n].w_q) for n in dense)
