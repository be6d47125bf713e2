"""Shared fixtures of the orchestration tests: one Prefect test server per session, MLflow SQLite
stores copied from one migrated template (creating MLflow's tables takes ~10 s), MNIST specs."""
from __future__ import annotations

import shutil

import pytest

MNIST_CAL = {"source": "zoo", "name": "digits", "split": "calibration", "count": 64}
MNIST_EVAL = {"source": "zoo", "name": "digits", "split": "evaluation", "count": 200}
MNIST_EVAL_AGREEMENT = dict(MNIST_EVAL, labels=False)


@pytest.fixture(scope="session")
def prefect_server():
    """A Prefect test server (SQLite) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty, migrated MLflow SQLite database to copy."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path, mlflow_template, monkeypatch):
    """A fresh MLflow store for one test (MLFLOW_TRACKING_URI points at it)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temporary working directory with its own results directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIXQ_RESULTS_DIR", str(tmp_path / "mixq-results"))
    return tmp_path


def child_runs(client, experiment_id: str, parent_run_id: str | None = None):
    runs = client.search_runs([experiment_id], filter_string="tags.mixq_kind = 'candidate'", max_results=1000)
    if parent_run_id:
        runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    return runs


def read_artifacts(api_url: str, flow_run_id: str) -> list[dict]:
    import httpx

    r = httpx.post(f"{api_url}/artifacts/filter",
                   json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}, timeout=30)
    r.raise_for_status()
    return r.json()
