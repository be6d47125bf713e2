"""The Prefect tasks on MNIST (real models and data): bodies through ``.fn()``, the calibration
cache through real flow runs on the session's Prefect test server."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.orchestration.conftest import MNIST_CAL, MNIST_EVAL, MNIST_EVAL_AGREEMENT


def test_data_and_config_specs(tmp_path):
    from core import HistogramPercentileMethod, QuantizationPrecision, RequantizationMode
    from core.errors import InputError, QuantizationConfigError
    from tasks.data import build_config, config_spec_of, load_samples

    s = load_samples(MNIST_EVAL)
    assert s.inputs.shape == (200, 1, 28, 28) and s.labels.shape == (200,)
    assert load_samples(MNIST_EVAL_AGREEMENT).labels is None
    np.savez(tmp_path / "d.npz", x=s.inputs[:10], y=s.labels[:10])
    n = load_samples({"source": "npz", "path": str(tmp_path / "d.npz"), "input": "x", "labels": "y"})
    assert np.array_equal(n.inputs, s.inputs[:10]) and np.array_equal(n.labels, s.labels[:10])
    with pytest.raises(InputError):
        load_samples({"source": "zoo", "name": "nope"})

    cfg = build_config({"preset": "default", "calibration": "percentile", "weights": {"per_channel": False, "bits": 8},
                        "activations": {"asymmetric": False}, "requantization": "tflite",
                        "int16_nodes": ["MLA_0/conv2d_add_relu_0"]})
    assert isinstance(cfg.calibration_method, HistogramPercentileMethod)
    assert not cfg.weight_quantization_scheme.per_channel and not cfg.activation_quantization_scheme.asymmetric
    assert cfg.requantization_mode is RequantizationMode.tflite
    assert cfg.precision_for("MLA_0/conv2d_add_relu_0") is QuantizationPrecision.INT_16
    assert build_config(config_spec_of(cfg)) == cfg
    assert build_config({"preset": "int16"}).weight_quantization_scheme.bits == 16
    with pytest.raises(QuantizationConfigError):
        build_config({"calibraton": "mse"})


def test_task_bodies_end_to_end(tmp_path, monkeypatch):
    from core import Model
    from tasks import steps

    monkeypatch.setenv("MIXQ_RESULTS_DIR", str(tmp_path / "results"))
    loaded = steps.load_model_task.fn("mnist_cnn")
    assert loaded["summary"]["inputs"] == {"input": [1, 1, 28, 28]} and loaded["summary"]["nodes"] == 7
    stats = steps.calibrate_task.fn(loaded["path"], MNIST_CAL)
    assert stats.startswith(str(tmp_path / "results")) and os.path.isfile(stats)
    assert steps.calibration_info(stats)["samples"] == 64
    out = str(tmp_path / "out")
    q = steps.quantize_task.fn(loaded["path"], stats, {"calibration": "mse"}, out, "mnist")
    assert os.path.isfile(q["sima"]) and os.path.isfile(q["sima_json"]) and q["int16_nodes"] == 0
    m = steps.evaluate_task.fn(q["sima"], loaded["path"], MNIST_EVAL)
    assert m["metric"] == "accuracy" and m["samples"] == 200 and m["accuracy"] > 0.85 and m["agreement"] > 0.95
    assert 20 < m["logit_sqnr_db"] < 200 and m["int16_nodes"] == 0
    ag = steps.evaluate_task.fn(q["sima"], loaded["path"], MNIST_EVAL_AGREEMENT)
    assert ag["metric"] == "agreement" and ag["accuracy"] == ag["agreement"] == m["agreement"]
    # evaluate's numbers are the model's: recompute agreement directly
    model = Model.load("mnist", out)
    x = np.asarray(__import__("tasks.data", fromlist=["x"]).load_samples(MNIST_EVAL).inputs)
    from tasks.evaluation import get_net

    ref = get_net(loaded["path"]).execute({"input": x})[0].argmax(1)
    assert np.mean(model.execute({"input": x})[0].argmax(1) == ref) == pytest.approx(m["agreement"])
    q16 = steps.quantize_task.fn(loaded["path"], stats, {"preset": "int16"}, out, "mnist16")
    assert q16["int16_nodes"] > 0
    a = steps.analyze_task.fn(q["sima"], loaded["path"], MNIST_EVAL, out)
    assert open(a["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n" and a["rows"] and "MLA_0" in a["table"]


def test_compile_and_devkit_tasks_guard(tmp_path, monkeypatch):
    from core import Model
    from core.errors import DevkitAuthenticationError, DevkitConnectionError, DevkitTimeoutError
    from tasks import steps

    with pytest.raises(ValueError, match="password"):
        steps.devkit_password({"host": "h", "password": "hunter2"})
    monkeypatch.setenv("MIXQ_DEVKIT_PASSWORD", "s3")
    assert steps.devkit_password({"host": "h"}) == "s3"
    assert steps.is_ssh_fault(DevkitConnectionError("x")) and steps.is_ssh_fault(DevkitTimeoutError("x"))
    assert not steps.is_ssh_fault(DevkitAuthenticationError("x")) and not steps.is_ssh_fault(NotImplementedError())
    assert steps.accelerator_run_task.retries == 3
    monkeypatch.setenv("MIXQ_RESULTS_DIR", str(tmp_path / "results"))
    loaded = steps.load_model_task.fn("mnist_cnn")
    stats = steps.calibrate_task.fn(loaded["path"], MNIST_CAL)
    q = steps.quantize_task.fn(loaded["path"], stats, None, str(tmp_path), "m")
    if not hasattr(Model, "compile"):
        with pytest.raises(NotImplementedError, match="compile"):
            steps.compile_task.fn(q["sima"], str(tmp_path / "lm"))
    if not hasattr(Model, "execute_in_accelerator_mode"):
        with pytest.raises(NotImplementedError, match="accelerator"):
            steps.accelerator_run_task.fn(q["sima"], MNIST_EVAL, {"host": "127.0.0.1"}, str(tmp_path))


def test_redact_masks_secrets():
    from tasks.tracking import redact

    r = redact({"devkit": {"host": "h", "password": "p", "api_token": "t", "password_env": "X"}, "a": [1]})
    assert r == {"devkit": {"host": "h", "password": "***", "api_token": "***", "password_env": "X"}, "a": [1]}


def test_calibration_cache_hits_across_flow_runs(prefect_server, workdir):
    from prefect import flow

    from tasks import steps

    @flow
    def calib_only(model: str, data: dict) -> str:
        path = steps.load_model_task(model)["path"]
        return steps.calibrate_cached(path, data)

    before = steps.COUNTERS["calibrate"]
    first = calib_only("mnist_cnn", MNIST_CAL)
    assert steps.COUNTERS["calibrate"] == before + 1
    mtime = os.stat(first).st_mtime_ns
    second = calib_only("mnist_cnn", MNIST_CAL)            # a new flow run: served from the cache
    assert second == first and steps.COUNTERS["calibrate"] == before + 1
    assert os.stat(first).st_mtime_ns == mtime
    assert any(p.startswith(str(workdir / "mixq-results")) for p in [first])
    other = calib_only("mnist_cnn", dict(MNIST_CAL, count=32))   # other data: another key
    assert other != first and steps.COUNTERS["calibrate"] == before + 2
    os.remove(first)                                        # statistics deleted: recomputed
    again = calib_only("mnist_cnn", MNIST_CAL)
    assert again == first and os.path.isfile(first) and steps.COUNTERS["calibrate"] == before + 3
    assert calib_only("mnist_cnn", MNIST_CAL) == first and steps.COUNTERS["calibrate"] == before + 3
