"""Collapse report: a quantized node whose output collapsed is named by analyze_quantization_error
(LayerErrorReport.collapses, table, plot) and by a QuantizationCollapseWarning at quantize time."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from core import (
    MinMaxMethod,
    QuantizationCollapseWarning,
    default_quantization,
    int16_quantization,
    load_model,
    onnx_source,
)
from tests.quantization.test_int16_margin import conv_net

MINMAX = default_quantization.with_calibration(MinMaxMethod())


def _calib(n=8, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _first_conv(net):
    return next(n for n in net.graph.nodes if n.op == "Conv")


def _quantize(net, stats, cfg):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = net.quantize(statistics=stats, quantization_config=cfg)
    return model, [w for w in caught if issubclass(w.category, QuantizationCollapseWarning)]


def broken(onnx_model_file):
    """The first conv's output range calibrated 10**6 times too wide (one absurd value observed):
    its 8-bit output rounds to a constant, as a clipped bias or a broken scale would leave it."""
    net = load_model(onnx_source(onnx_model_file(conv_net())))
    stats = net.calibrate(_calib())
    conv = _first_conv(net)
    stats.observe(conv.outputs[0], np.array([1e6], np.float32))
    return net, stats, conv


def test_a_collapsed_node_is_named_at_quantize_time(onnx_model_file):
    net, stats, conv = broken(onnx_model_file)
    _, caught = _quantize(net, stats, MINMAX)
    assert len(caught) == 1
    assert repr(conv.name) in str(caught[0].message) and "constant" in str(caught[0].message)


def test_analysis_reports_the_collapse(onnx_model_file, tmp_path):
    net, stats, conv = broken(onnx_model_file)
    model, _ = _quantize(net, stats, MINMAX)
    report = model.analyze_quantization_error(_calib(4, seed=2), "mae")
    assert report.collapsed == [conv.name]
    assert report.collapses[0].sqnr < 1.0
    line = next(ln for ln in report.table().splitlines() if ln.startswith(conv.name))
    assert "COLLAPSED" in line
    others = [ln for ln in report.table().splitlines()[2:] if not ln.startswith(conv.name)]
    assert others and not any("COLLAPSED" in ln for ln in others)
    assert report.plot(tmp_path / "layers.png")
    # a cumulative feed does not judge collapses
    assert model.analyze_quantization_error(_calib(2, seed=2), "sqnr", local_feed=False).collapses == []


@pytest.mark.parametrize("cfg", [default_quantization, MINMAX, int16_quantization], ids=["int8", "minmax", "int16"])
def test_a_healthy_model_gets_no_collapse_warning(onnx_model_file, cfg):
    net = load_model(onnx_source(onnx_model_file(conv_net())))
    model, caught = _quantize(net, net.calibrate(_calib()), cfg)
    assert caught == []
    assert model.analyze_quantization_error(_calib(4, seed=2), "sqnr").collapses == []


def test_the_gap_rule_flags_a_node_far_below_its_neighbours():
    from core.analysis.collapse import find_collapses

    entries = [(f"n{k}", "Conv", "int8", db, True, True, False) for k, db in enumerate([45, 48, 12, 47, 50])]
    assert [c.node for c in find_collapses(entries)] == ["n2"]
    entries[2] = ("n2", "Conv", "int8", 40.0, True, True, False)
    assert find_collapses(entries) == []


def test_a_constant_output_that_is_right_is_no_collapse():
    """A saturated gate (HardSigmoid at 1 +- 1e-4) is constant on its 8-bit grid at 70 dB: fine;
    the same constant at 5 dB is the collapse."""
    from core.analysis.collapse import find_collapses

    entries = [(f"n{k}", "HardSigmoid", "int8", db, True, True, True) for k, db in enumerate([70.0, 5.0])]
    found = find_collapses(entries)
    assert [c.node for c in found] == ["n1"] and "constant" in found[0].reason
