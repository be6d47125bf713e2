"""search_quantization_options on the zoo MNIST CNN: the whole grid from one calibration pass."""
import numpy as np
import pytest

from core import (
    HistogramMSEMethod,
    MinMaxMethod,
    QuantizationConfigError,
    load_model,
    onnx_source,
    quantization_scheme,
    zoo,
)


@pytest.fixture(scope="module")
def setup():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration")
    calib = [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 32)[:32]]
    ev = zoo.datasets.digits("evaluation")
    idx = np.arange(0, len(ev), 40)
    dataset = [({"input": ev.inputs[i]}, int(ev.labels[i])) for i in idx]      # no batch dim: added
    return net, calib, dataset


def top1(outputs, labels):
    return float(np.mean([o[0].argmax() == label for o, label in zip(outputs, labels)]))


class Top1:
    """The reset/update/compute form of an accuracy score."""

    def reset(self):
        self.hits, self.n = 0, 0

    def update(self, outputs, label):
        self.hits += int(outputs[0].argmax() == label)
        self.n += 1

    def compute(self):
        return self.hits / self.n


def test_default_grid_is_exhaustive_and_calibrates_once(setup, monkeypatch):
    net, calib, dataset = setup
    calls = []
    real = type(net).calibrate
    monkeypatch.setattr(type(net), "calibrate", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    seen = []
    result = net.search_quantization_options(calib, dataset, top1, callbacks=[seen.append])
    assert result.exhaustive and len(result.candidates) == 20 == result.evaluations == len(seen)
    assert len(calls) == 1
    combos = {tuple(sorted(c.options.items())) for c in result.candidates}
    assert len(combos) == 20
    assert result.best.accuracy == max(c.accuracy for c in result.candidates) >= 0.9
    # the best candidate's configuration reproduces its score
    model = net.quantize(calib, result.best.config)
    from core.search import Evaluator

    assert Evaluator(dataset, net.input_names, net.input_shapes(), top1)(model) == result.best.accuracy


def test_tpe_within_budget_and_object_scores(setup, tmp_path):
    net, calib, dataset = setup
    journal = str(tmp_path / "options.journal")
    r = net.search_quantization_options(calib, dataset, Top1(), max_trials=4, storage=journal, seed=1)
    assert not r.exhaustive and len(r.candidates) == 4
    again = net.search_quantization_options(calib, dataset, Top1(), max_trials=4, storage=journal, seed=1)
    assert again.evaluations == 0 and len(again.candidates) == 4 and again.best.accuracy == r.best.accuracy


def test_equalization_and_bias_correction_options(setup):
    net, calib, dataset = setup
    r = net.search_quantization_options(calib, dataset, top1, {
        "calibration_method": [HistogramMSEMethod()],
        "weight_quantization_scheme": [quantization_scheme(False, False)],
        "activation_quantization_scheme": [quantization_scheme(True, False)],
        "channel_equalization": [False, True], "bias_correction": [False, True]})
    assert len(r.candidates) == 4 and not [c for c in r.candidates if c.error]
    assert {(c.config.channel_equalization, c.config.bias_correction) for c in r.candidates} == \
        {(False, False), (False, True), (True, False), (True, True)}
    assert min(c.accuracy for c in r.candidates) >= 0.85


def test_options_search_from_statistics_records_what_cannot_run(setup):
    net, calib, dataset = setup
    r = net.search_quantization_options(net.calibrate(calib), dataset, top1, {
        "calibration_method": [MinMaxMethod()], "weight_quantization_scheme": [quantization_scheme(False, True)],
        "activation_quantization_scheme": [quantization_scheme(True, False)], "bias_correction": [False, True]})
    failed = [c for c in r.candidates if c.error]
    assert len(r.candidates) == 2 and len(failed) == 1 and "calibration samples" in failed[0].error


def test_bad_options(setup):
    net, calib, dataset = setup
    with pytest.raises(QuantizationConfigError, match="unknown option"):
        net.search_quantization_options(calib, dataset, top1, {"rounding": ["up"]})
    with pytest.raises(QuantizationConfigError, match="no values"):
        net.search_quantization_options(calib, dataset, top1, {"bias_correction": []})


def test_adaround_is_an_option_dimension(setup):
    """Learned rounding on/off as an option: the AdaRound candidate's weights differ from the
    round-to-nearest candidate's, and 4-bit weights without it are a candidate error, not a crash."""
    from core import AdaRoundMethod

    net, calib, dataset = setup
    ada = AdaRoundMethod(iterations=30, rows=256, batch=64, max_samples=8)
    r = net.search_quantization_options(calib, dataset, top1, {
        "calibration_method": [HistogramMSEMethod()],
        "weight_quantization_scheme": [quantization_scheme(False, True), quantization_scheme(False, True, 4)],
        "activation_quantization_scheme": [quantization_scheme(True, False)],
        "adaround": [False, ada]})
    assert len(r.candidates) == 4
    by = {(c.options["weight_quantization_scheme"], c.options["adaround"]): c for c in r.candidates}
    assert by[("sym-per_channel-4", "off")].error and "4-bit" in by[("sym-per_channel-4", "off")].error
    ok = [c for c in r.candidates if not c.error]
    assert len(ok) == 3 and all(np.isfinite(c.accuracy) for c in ok)
    rtn = by[("sym-per_channel-8", "off")].config
    learned = by[("sym-per_channel-8", repr(ada))].config
    assert rtn.adaround is None and learned.adaround == ada
    a, b = net.quantize(calib, rtn), net.quantize(calib, learned)
    assert any(not np.array_equal(a.program.constants[n].w_q, c.w_q)
               for n, c in b.program.constants.items() if c is not None and c.w_q is not None)


def test_output_aware_ranges_are_an_option_dimension(setup):
    """Output-aware ranges on/off as an option: the searched candidate's activation scales differ
    from the calibrated ones, and its configuration is what the search reports."""
    from core import RangeSearchMethod

    net, calib, dataset = setup
    oar = RangeSearchMethod(factors=(0.5, 0.8), samples=4)
    r = net.search_quantization_options(calib, dataset, top1, {
        "calibration_method": [MinMaxMethod()],
        "weight_quantization_scheme": [quantization_scheme(False, True)],
        "activation_quantization_scheme": [quantization_scheme(True, False)],
        "output_aware_ranges": [False, oar]})
    assert len(r.candidates) == 2 and not any(c.error for c in r.candidates)
    by = {c.options["output_aware_ranges"]: c for c in r.candidates}
    assert set(by) == {"off", repr(oar)}
    assert by["off"].config.output_aware_ranges is None and by[repr(oar)].config.output_aware_ranges == oar
    a, b = net.quantize(calib, by["off"].config), net.quantize(calib, by[repr(oar)].config)
    changed = [t for t, q in b.program.tensors.items()
               if t in a.program.tensors and getattr(q, "scale", None) is not None
               and not np.array_equal(np.asarray(q.scale), np.asarray(a.program.tensors[t].scale))]
    assert changed, "output-aware ranges changed no activation scale"
