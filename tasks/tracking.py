"""MLflow helpers: experiments, parent/child runs, candidate logging without duplicates, the
model registry (a pyfunc flavor that runs the ``.sima``).

* Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<working directory>/mlflow.db``.
* One experiment per model (``mixq-<model>``), one parent run per flow run (tagged with the
  Prefect flow run id), one nested child run per candidate (``mlflow.parentRunId``).
* Every child run carries ``mixq_candidate_key`` (study name + trial number) and
  ``mixq_config_key`` (study name + configuration); a candidate whose key already has a run in
  the experiment is not logged again -- a killed search that resumes adds no duplicates.
* Nothing secret is logged: :func:`redact` masks password/secret/token-like keys everywhere.

The client API (``MlflowClient``) is used with explicit run ids, so logging from task threads
never depends on MLflow's "active run" stack.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mixq.tracking")

__all__ = ["tracking_uri", "get_client", "experiment_name", "ensure_experiment", "start_parent_run", "end_run",
           "ParentRun", "parent_run",
           "CandidateLogger", "candidate_key", "config_key", "redact", "register_model", "run_link",
           "PARENT_TAG", "KEY_TAG", "CONFIG_TAG", "LONG_PARAM"]

PARENT_TAG = "mlflow.parentRunId"
KEY_TAG = "mixq_candidate_key"
CONFIG_TAG = "mixq_config_key"
FLOW_RUN_TAG = "prefect_flow_run_id"
LONG_PARAM = 240            # longer values go to a JSON artifact (the param keeps a prefix)
_SECRET = re.compile(r"pass(word|phrase)?|secret|token|credential|api_?key|private_?key", re.I)
_lock = threading.Lock()


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or a SQLite file ``mlflow.db`` in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath("mlflow.db")


def get_client():
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_name(model_label: str, experiment: str | None = None) -> str:
    return experiment or f"mixq-{model_label}"


def ensure_experiment(name: str) -> str:
    """The experiment's id (created if missing)."""
    client = get_client()
    with _lock:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001  (created meanwhile by another process)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id


def redact(value: Any, key: str = "") -> Any:
    """``value`` with every password/secret/token-like entry masked (recursively)."""
    if key and _SECRET.search(key) and not key.endswith("_env"):
        return "***" if value not in (None, "") else value
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params; long values are cut (the full value goes to ``params/<name>.json``)."""
    from mlflow.entities import Param

    batch = []
    for k, v in redact(dict(params)).items():
        text = _param_text(v)
        if len(text) > LONG_PARAM:
            _json_artifact(client, run_id, f"{k}.json", v, "params")
            text = text[:LONG_PARAM - 40] + f"... (full: params/{k}.json)"
        batch.append(Param(str(k), text))
    if batch:
        client.log_batch(run_id, params=batch)


def _json_artifact(client, run_id: str, name: str, value: Any, artifact_path: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "w") as f:
            json.dump(value, f, indent=1, sort_keys=True, default=str)
        client.log_artifact(run_id, path, artifact_path)


def _metrics(client, run_id: str, metrics: Mapping[str, Any]) -> None:
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for k, v in metrics.items():
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            batch.append(Metric(str(k), v, now, 0))
    if batch:
        client.log_batch(run_id, metrics=batch)


def start_parent_run(experiment_id: str, run_name: str, *, flow_name: str = "", flow_run_id: str = "",
                     params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> str:
    """A parent run for one flow run; returns its id."""
    client = get_client()
    all_tags = {FLOW_RUN_TAG: flow_run_id or "", "prefect_flow_name": flow_name, "mixq_kind": "flow"}
    all_tags.update(tags or {})
    run = client.create_run(experiment_id, run_name=run_name, tags={k: str(v) for k, v in redact(all_tags).items()})
    if params:
        _params(client, run.info.run_id, params)
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED", metrics: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
    client = get_client()
    if metrics:
        _metrics(client, run_id, metrics)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, str(redact(v, k)))
    client.set_terminated(run_id, status)


@dataclass
class ParentRun:
    """The MLflow parent run of one flow run: where its candidates go as child runs. ``finish``
    sets what is logged when the run ends (see :func:`parent_run`)."""

    experiment_id: str
    run_id: str
    final_metrics: dict[str, Any] = field(default_factory=dict)
    final_tags: dict[str, str] = field(default_factory=dict)

    def finish(self, metrics: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> None:
        self.final_metrics.update(metrics or {})
        self.final_tags.update(tags or {})

    def candidates(self) -> CandidateLogger:
        return CandidateLogger(self.experiment_id, self.run_id)

    def link(self, run_id: str | None = None) -> str:
        return run_link(self.experiment_id, run_id or self.run_id)


@contextmanager
def parent_run(experiment: str, run_name: str, *, flow_name: str = "", flow_run_id: str = "",
               params: Mapping[str, Any] | None = None) -> Iterator[ParentRun]:
    """A parent run for the ``with`` block: FINISHED (with what ``finish`` set) when the block
    completes, FAILED when it raises (also on KeyboardInterrupt / cancellation)."""
    exp_id = ensure_experiment(experiment)
    run = ParentRun(exp_id, start_parent_run(exp_id, run_name, flow_name=flow_name, flow_run_id=flow_run_id,
                                             params=params))
    try:
        yield run
    except BaseException:
        end_run(run.run_id, "FAILED")
        raise
    end_run(run.run_id, "FINISHED", metrics=run.final_metrics, tags=run.final_tags)


def candidate_key(study: str, trial_number: int) -> str:
    return f"{study}#{int(trial_number)}"


def config_key(study: str, config: Any) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return f"{study}@{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def run_link(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI (``$MIXQ_MLFLOW_UI`` or ``mlflow ui``'s default address)."""
    base = os.environ.get("MIXQ_MLFLOW_UI", "http://127.0.0.1:5000").rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


class CandidateLogger:
    """Logs candidates as child runs of ``parent_run_id``, at most one run per candidate key or
    configuration key in the experiment."""

    def __init__(self, experiment_id: str, parent_run_id: str):
        self.client = get_client()
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.logged: list[str] = []

    def existing(self, key: str, cfg_key: str | None = None) -> str | None:
        """The run id already holding this candidate (by candidate or configuration key), or None."""
        for tag, value in ((KEY_TAG, key), (CONFIG_TAG, cfg_key)):
            if not value:
                continue
            runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.{tag} = '{value}'",
                                           max_results=1)
            if runs:
                return runs[0].info.run_id
        return None

    def log(self, key: str, *, run_name: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
            tags: Mapping[str, str] | None = None, artifacts: Iterable[str] = (),
            json_artifacts: Mapping[str, Any] | None = None, cfg_key: str | None = None) -> str | None:
        """Create the child run; returns its id, or None when the candidate is already logged."""
        with _lock:
            if self.existing(key, cfg_key):
                log.info("candidate %s is already in MLflow: not logged again", key)
                return None
            all_tags = {PARENT_TAG: self.parent_run_id, KEY_TAG: key, "mixq_kind": "candidate"}
            if cfg_key:
                all_tags[CONFIG_TAG] = cfg_key
            all_tags.update({k: str(v) for k, v in (tags or {}).items()})
            run = self.client.create_run(self.experiment_id, run_name=run_name,
                                         tags={k: str(redact(v, k)) for k, v in all_tags.items()})
        run_id = run.info.run_id
        try:
            _params(self.client, run_id, params)
            _metrics(self.client, run_id, metrics)
            for name, value in (json_artifacts or {}).items():
                _json_artifact(self.client, run_id, name, value)
            for path in artifacts:
                if path and os.path.exists(path):
                    self.client.log_artifact(run_id, path)
        finally:
            self.client.set_terminated(run_id, "FINISHED")
        self.logged.append(run_id)
        return run_id

    def add_artifacts(self, run_id: str, paths: Iterable[str], metrics: Mapping[str, Any] | None = None) -> None:
        for path in paths:
            if path and os.path.exists(path):
                self.client.log_artifact(run_id, path)
        if metrics:
            _metrics(self.client, run_id, metrics)


def log_artifacts(run_id: str, paths: Iterable[str], artifact_path: str | None = None) -> None:
    client = get_client()
    for path in paths:
        if path and os.path.exists(path):
            client.log_artifact(run_id, path, artifact_path)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    _params(get_client(), run_id, params)


def log_metrics(run_id: str, metrics: Mapping[str, Any]) -> None:
    _metrics(get_client(), run_id, metrics)


def register_model(run_id: str, sima_path: str, registered_name: str, alias: str | None = "champion",
                   tags: Mapping[str, str] | None = None) -> dict:
    """Log the ``.sima`` as a pyfunc model (:class:`tasks.pyfunc.SimaPyfunc`, logged as code from
    ``tasks/pyfunc_model.py``, not pickled) in ``run_id``,
    register it as a new version of ``registered_name`` and point ``alias`` at it. Returns
    ``{"name", "version", "alias", "model_uri", "run_id"}``."""
    import mlflow

    from tasks.pyfunc import requirements

    code = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py")   # models from code
    client = get_client()
    with _lock:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(name="model", python_model=code,
                                           artifacts={"sima": os.path.abspath(sima_path)},
                                           pip_requirements=requirements())
        try:
            client.create_registered_model(registered_name)
        except Exception:  # noqa: BLE001  (it exists)
            pass
        version = client.create_model_version(registered_name, info.model_uri, run_id=run_id,
                                              tags={k: str(v) for k, v in (tags or {}).items()},
                                              model_id=info.model_id)    # a tracking server wants both
        if alias:
            client.set_registered_model_alias(registered_name, alias, version.version)
    return {"name": registered_name, "version": str(version.version), "alias": alias or "",
            "model_uri": f"models:/{registered_name}/{version.version}", "run_id": run_id}


def champion_config(registered_name: str, alias: str = "champion") -> dict | None:
    """The config spec stored with the version ``alias`` points at (None when there is none)."""
    client = get_client()
    try:
        version = client.get_model_version_by_alias(registered_name, alias)
    except Exception:  # noqa: BLE001  (no such model or alias)
        return None
    text = (version.tags or {}).get("mixq_config")
    if text:
        return json.loads(text)
    return None
