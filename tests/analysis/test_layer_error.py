"""Model.analyze_quantization_error on the zoo MNIST CNN: both feeds, all metrics, the numbers
checked against direct computations, .sima.json "Layer Statistics", loaded models, plots."""
import json
import math

import numpy as np
import pytest

from core import (
    InputError,
    Model,
    QuantizationConfigError,
    QuantizationPrecision,
    default_quantization,
    int16_quantization,
    load_model,
    onnx_source,
    zoo,
)


@pytest.fixture(scope="module")
def net():
    return load_model(onnx_source(zoo.build("mnist_cnn")))


@pytest.fixture(scope="module")
def calib():
    cal = zoo.datasets.digits("calibration")
    return [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 32)[:32]]


@pytest.fixture(scope="module")
def data():
    ev = zoo.datasets.digits("evaluation")
    return [{"input": ev.inputs[i]} for i in range(0, len(ev), 100)]      # 40 samples, no batch dim


@pytest.fixture(scope="module")
def int8(net, calib):
    return net.quantize(calib, default_quantization, model_name="mnist_int8")


def test_numbers_match_direct_computation(net, int8, data):
    x = np.stack([d["input"] for d in data])
    (q,) = int8.execute({"input": x})
    (f,) = net.execute({"input": x})
    last = int8.program.graph.nodes[-1].name
    first = int8.program.graph.nodes[0].name
    for metric, expected in (
        ("mae", np.abs(q - f).mean()),
        ("mse", ((q.astype(np.float64) - f) ** 2).mean()),
        ("sqnr", 10 * np.log10((f.astype(np.float64) ** 2).sum() / ((q - f.astype(np.float64)) ** 2).sum())),
    ):
        cumulative = dict(
            (r.node, r.error) for r in int8.analyze_quantization_error(data, metric, local_feed=False).rows
        )
        assert cumulative[last] == pytest.approx(float(expected), rel=1e-5)
        local = dict((r.node, r.error) for r in int8.analyze_quantization_error(data, metric, local_feed=True).rows)
        assert local[first] == cumulative[first]              # the first node's input is the same in both feeds
        assert local[last] < cumulative[last] or metric == "sqnr" and local[last] > cumulative[last]
    cosine = int8.analyze_quantization_error(data, "cosine", local_feed=False).rows[-1].error
    qf, ff = q.astype(np.float64).ravel(), f.astype(np.float64).ravel()
    assert cosine == pytest.approx(qf @ ff / np.sqrt((qf @ qf) * (ff @ ff)), rel=1e-9)
    psnr = int8.analyze_quantization_error(data, "psnr", local_feed=False).rows[-1].error
    assert psnr == pytest.approx(10 * math.log10(np.abs(ff).max() ** 2 / ((qf - ff) ** 2).mean()), rel=1e-6)


def test_int16_nodes_add_less_error(net, calib, data, int8):
    r8 = dict((r.node, r.error) for r in int8.analyze_quantization_error(data, "mse", local_feed=True).rows)
    m16 = net.quantize(calib, int16_quantization)
    report = m16.analyze_quantization_error(data, "mse", local_feed=True)
    for r in report.rows:
        if r.op in ("Conv", "Gemm"):
            assert r.precision == "int16" and r.error < r8[r.node], (r, r8[r.node])
        if r.op == "Conv":   # (the dense layers' errors are dominated by evaluation values beyond the calibrated range)
            assert r.error < r8[r.node] / 100, (r, r8[r.node])
    ranking = report.ranking()
    assert [e for _, e in ranking] == sorted((e for _, e in ranking), reverse=True)
    psnr = m16.analyze_quantization_error(data, "psnr", local_feed=True).ranking()
    assert [e for _, e in psnr] == sorted(e for _, e in psnr)            # worst = lowest PSNR first


def test_layer_statistics_saved_loaded_and_reanalyzed(net, calib, data, tmp_path):
    cfg = default_quantization.with_custom_quantization_configs(
        {"MLA_0/conv2d_add_relu_2": {"quantization_precision": QuantizationPrecision.INT_16}})
    model = net.quantize(calib, cfg, model_name="mixed")
    report = model.analyze_quantization_error(data, "mae", local_feed=True)
    model.save("mixed", str(tmp_path))
    layers = {
        l["name"]: l["config"] for l in json.loads((tmp_path / "mixed.sima.json").read_text())["config"]["layers"]
    }
    for row in report.rows:
        stats = layers[row.node]["Layer Statistics"]
        assert stats["metric"] == "mae" and stats["error_value"] == pytest.approx(row.error, rel=1e-12)
        assert stats["__decode_key__"] == "LayerStats"
    loaded = Model.load("mixed", str(tmp_path))
    assert loaded.program.meta["layer_statistics"][report.rows[0].node]["error_value"] == report.rows[0].error
    again = loaded.analyze_quantization_error(data, "mae", local_feed=True)   # works after load, same numbers
    assert [r.error for r in again.rows] == [r.error for r in report.rows]
    again_cumulative = loaded.analyze_quantization_error(data, "mae", local_feed=False)
    assert [r.error for r in again_cumulative.rows] == \
        [r.error for r in model.analyze_quantization_error(data, "mae", local_feed=False).rows]


def test_table_and_plot(int8, data, tmp_path):
    report = int8.analyze_quantization_error(data, "cosine", local_feed=True)
    text = report.table(worst_first=True)
    assert text.splitlines()[0].split() == ["node", "op", "precision", "cosine"]
    assert text.splitlines()[2].split()[0] == report.ranking()[0][0]
    path = report.plot(tmp_path / "errors.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments(int8, data):
    with pytest.raises(QuantizationConfigError, match="error_metric must be one of"):
        int8.analyze_quantization_error(data, "rmse")
    with pytest.raises(InputError, match="empty"):
        int8.analyze_quantization_error([], "mae")
    with pytest.raises(InputError, match="sample 1 must be a dict"):
        int8.analyze_quantization_error([data[0], np.zeros(3)], "mae")
    with pytest.raises(InputError, match="shape"):
        int8.analyze_quantization_error([{"input": np.zeros((1, 1, 27, 28), np.float32)}], "mae")
