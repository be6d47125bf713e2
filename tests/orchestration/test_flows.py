"""quantize_flow and search_flow end to end on MNIST, on the session's Prefect test server, with
a temporary MLflow SQLite store."""
from __future__ import annotations

import json
import os

import numpy as np

from tests.orchestration.conftest import MNIST_CAL, MNIST_EVAL, MNIST_EVAL_AGREEMENT, child_runs, read_artifacts


def _flow_run_id(parent_run_id):
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(parent_run_id).data.tags["prefect_flow_run_id"]


def test_quantize_flow_end_to_end(prefect_server, workdir, mlflow_store):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from core import Model
    from flows.quantize import quantize_flow
    from tasks.data import load_samples

    s = quantize_flow(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL,
                      config={"calibration": "percentile", "weights": {"per_channel": True}},
                      output_dir="out", name="mnist-q", alias="challenger")
    assert os.path.isfile(workdir / "out" / "mnist-q.sima") and s["sima"] == str(workdir / "out" / "mnist-q.sima")
    assert s["metrics"]["accuracy"] > 0.85 and s["metrics"]["int16_nodes"] == 0

    client = MlflowClient()
    exp = client.get_experiment_by_name("mixq-mnist_cnn")
    parent = client.get_run(s["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["prefect_flow_run_id"]
    assert json.loads(parent.data.params["calibration_data"]) == MNIST_CAL
    children = child_runs(client, exp.experiment_id, parent.info.run_id)
    assert [c.info.run_id for c in children] == [s["mlflow"]["run_id"]]
    child = children[0]
    assert child.data.params["calibration_method"] == "percentile"
    assert json.loads(child.data.params["weight_scheme"])["per_channel"] is True
    assert child.data.params["requantization_mode"] == "sima" and child.data.params["int16_node_count"] == "0"
    for k in ("accuracy", "agreement", "logit_sqnr_db", "int16_node_count", "calibration_seconds",
              "quantization_seconds"):
        assert k in child.data.metrics, k
    assert child.data.metrics["accuracy"] == s["metrics"]["accuracy"]
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"mnist-q.sima", "mnist-q.sima.json", "mnist-q-layer-error.png", "config.json"} <= names

    # the registry: the pyfunc flavor predicts what Model.load(...).execute gives
    assert s["registered"]["alias"] == "challenger"
    pyfunc = mlflow.pyfunc.load_model("models:/mixq-mnist_cnn@challenger")
    x = load_samples(MNIST_EVAL).inputs[:16]
    expected = Model.load("mnist-q", str(workdir / "out")).execute({"input": x})[0]
    assert np.array_equal(pyfunc.predict(x), expected)
    assert np.array_equal(pyfunc.predict({"input": x}), expected)

    arts = read_artifacts(prefect_server, _flow_run_id(parent.info.run_id))
    assert {a["type"] for a in arts} >= {"table", "markdown"}
    assert any("mixq quantize_flow" in (a["data"] or "") for a in arts if a["type"] == "markdown")


def test_search_flow_records_every_candidate(prefect_server, workdir, mlflow_store):
    from mlflow.tracking import MlflowClient

    from flows.search import search_flow

    s = search_flow(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL_AGREEMENT,
                    options={"calibration": ["mse", "min_max"], "weights": [{"per_channel": True}],
                             "activations": [{"asymmetric": True}]},
                    target=0.999, max_trials=5, output_dir="out")
    assert s["metric"] == "agreement" and s["target"] == 0.999
    assert os.path.isfile(s["sima"]) and os.path.isfile(s["pareto_plot"])
    n_options = s["options"]["candidates"]
    n_af = s["accuracy_feedback"]["candidates"]
    assert n_options == 2 and 2 <= n_af <= 5

    client = MlflowClient()
    exp = client.get_experiment_by_name("mixq-mnist_cnn")
    children = child_runs(client, exp.experiment_id, s["mlflow"]["parent_run_id"])
    assert len(children) == n_options + n_af
    keys = [c.data.tags["mixq_candidate_key"] for c in children]
    assert len(set(keys)) == len(keys)
    assert all("agreement" in c.data.metrics and "logit_sqnr_db" in c.data.metrics for c in children)
    chosen = client.get_run(s["mlflow"]["run_id"])
    assert "mnist_cnn-search.sima" in {a.path for a in client.list_artifacts(chosen.info.run_id)}
    assert chosen.data.params["int16_node_count"] == str(len(s["int16_nodes"]))
    parent_files = {a.path for a in client.list_artifacts(s["mlflow"]["parent_run_id"])}
    assert "mnist_cnn-search-pareto.png" in parent_files
    assert client.get_model_version_by_alias("mixq-mnist_cnn", "champion").run_id == chosen.info.run_id

    arts = read_artifacts(prefect_server, _flow_run_id(s["mlflow"]["parent_run_id"]))
    by_type = {}
    for a in arts:
        by_type.setdefault(a["type"], []).append(a)
    assert by_type["progress"][0]["data"] == 100.0
    table = by_type["table"][0]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert len(table) == n_options + n_af
    md = by_type["markdown"][0]["data"]
    assert "Chosen configuration" in md and s["mlflow"]["run_id"] in md and "data:image/png;base64," in md


def test_devkit_password_never_a_parameter(prefect_server, workdir, mlflow_store):
    import pytest

    from flows.quantize import quantize_flow

    with pytest.raises(ValueError, match="MIXQ_DEVKIT_PASSWORD"):
        quantize_flow(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL,
                      devkit={"host": "127.0.0.1", "user": "root", "password": "hunter2"})
    from mlflow.tracking import MlflowClient

    assert MlflowClient().get_experiment_by_name("mixq-mnist_cnn") is None      # nothing was logged


def test_search_flow_default_target_is_halfway_to_int16(prefect_server, workdir, mlflow_store):
    from flows.search import search_flow

    s = search_flow(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL_AGREEMENT,
                    options={"calibration": ["min_max"], "weights": [{"per_channel": True}]},
                    max_trials=5, output_dir="out")
    ref, best = s["int16_reference"], s["options"]["best"]["accuracy"]
    assert s["target"] == best + (max(ref["accuracy"], best) - best) / 2.0
    assert ref["int16_nodes"] > 0 and ref["mlflow_run_id"]
    stages = [r["stage"] for r in s["candidates"]]
    n = s["options"]["candidates"]
    assert stages[:n + 1] == ["options"] * n + ["int16 reference"] and "accuracy feedback" in stages[n + 1:]


def test_quantize_flow_on_a_float_tflite_model(prefect_server, workdir, mlflow_store):
    """A .tflite file goes through quantize_flow like a zoo model: the TFLite importer is chosen by
    the file, inputs stay NHWC, and the saved model agrees with the float TFLite model."""
    import pytest

    tf = pytest.importorskip("tensorflow")
    from mlflow.tracking import MlflowClient

    from core import Model, load_model, tflite_source
    from flows.quantize import quantize_flow
    from tasks.data import load_samples
    from tests.importers.conftest import to_tflite

    tf.keras.utils.set_random_seed(0)
    keras = tf.keras
    x = keras.Input((28, 28, 1), batch_size=1, name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu")(x)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    y = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    path = workdir / "digits_cnn.tflite"
    path.write_bytes(to_tflite(tf, keras.Model(x, y)))

    digits = load_samples({"source": "zoo", "name": "digits", "split": "evaluation", "count": 96}).inputs
    nhwc = np.ascontiguousarray(digits.transpose(0, 2, 3, 1))       # the TFLite model's own layout
    np.savez(workdir / "digits_nhwc.npz", image=nhwc[:48], image_eval=nhwc[48:])
    cal = {"source": "npz", "path": str(workdir / "digits_nhwc.npz"), "input": "image"}
    ev = {"source": "npz", "path": str(workdir / "digits_nhwc.npz"), "input": "image_eval"}

    s = quantize_flow(model=str(path), calibration=cal, evaluation=ev, config={"calibration": "mse"},
                      output_dir="out", name="digits-q")
    assert s["model_path"] == str(path) and os.path.isfile(s["sima"])
    assert s["metrics"]["metric"] == "agreement" and s["metrics"]["samples"] == 48
    assert s["metrics"]["agreement"] >= 0.9 and s["metrics"]["logit_sqnr_db"] > 20

    model = Model.load("digits-q", str(workdir / "out"))
    float_net = load_model(tflite_source(path))
    assert model.input_names == float_net.input_names and len(model.input_names) == 1
    name = model.input_names[0]
    q, = model.execute({name: nhwc[48:]})
    f, = float_net.execute({name: nhwc[48:]})
    assert q.shape == f.shape == (48, 10) and np.mean(q.argmax(1) == f.argmax(1)) == s["metrics"]["agreement"]

    client = MlflowClient()
    assert client.get_experiment_by_name("mixq-digits_cnn") is not None
    assert client.get_run(s["mlflow"]["parent_run_id"]).data.params["model"] == str(path)
