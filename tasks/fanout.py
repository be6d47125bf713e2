"""Searches on several workers with Prefect: the parent's :class:`core.search.parallel.TrialPool`
launches its workers as flow runs of the ``trial-batch`` deployment (``flows/trial_batch.py``,
on the ``mixq-pool`` process work pool; ``prefect worker start --pool mixq-pool --limit N`` on
each machine) with :func:`prefect.deployments.run_deployment`. Each flow run serves the shared
Optuna study (PostgreSQL) until the parent closes it; Prefect's pool and deployment concurrency
decide how many run at once. Nothing here schedules trials: Optuna's storage is the queue.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from tasks.tracking import ParentRun

__all__ = ["DEFAULT_DEPLOYMENT", "worker_pool", "workers_spec", "PrefectLauncher"]

DEFAULT_DEPLOYMENT = "mixq-trial-batch/trial-batch"
log = logging.getLogger("mixq.fanout")


def workers_spec(count: int, deployment: str | None = None, idle_timeout: float = 900.0) -> dict | None:
    """The ``workers`` argument of the search tasks (None: one process)."""
    if not count or int(count) < 1:
        return None
    return {"count": int(count), "deployment": deployment or DEFAULT_DEPLOYMENT, "idle_timeout": float(idle_timeout)}


class PrefectLauncher:
    """``launch(study_name, n)``: ``n`` flow runs of the trial-batch deployment for the study;
    ``alive(study_name)``: how many of them are not finished; ``finish(study_name)``: after the
    parent closed the study, waits for them, and marks the ones whose worker died (still
    "Running" for Prefect) Crashed -- their trials were retried by the others."""

    def __init__(self, deployment: str, parameters: dict):
        self.deployment = deployment
        self.parameters = dict(parameters)
        self.runs: dict[str, list[str]] = {}

    def launch(self, study_name: str, count: int) -> None:
        from prefect.deployments import run_deployment

        for _ in range(int(count)):
            fr = run_deployment(self.deployment, parameters=dict(self.parameters, study_name=study_name),
                                timeout=0, tags=["mixq", "trial-batch"])
            self.runs.setdefault(study_name, []).append(str(fr.id))
            log.info("trial batch %s for study %s: flow run %s", self.deployment, study_name, fr.id)

    def _states(self, study_name: str) -> dict[str, Any]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return {i: client.read_flow_run(i).state for i in self.runs.get(study_name, [])}

    def alive(self, study_name: str) -> int:
        return sum(1 for s in self._states(study_name).values() if s is None or not s.is_final())

    def finish(self, study_name: str, timeout: float = 20.0) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:          # the running batches leave once the study is closed
            states = self._states(study_name).values()
            if not any(s is not None and s.is_running() for s in states):
                break
            time.sleep(0.5)
        with get_client(sync_client=True) as client:
            for run_id, state in self._states(study_name).items():
                if state is None or state.is_final():
                    continue
                if state.is_running():
                    new = Crashed(message="its worker stopped (no heartbeat); its trials were retried by others")
                else:
                    new = Cancelled(message="the search finished before this batch started")
                client.set_flow_run_state(run_id, new, force=True)
                log.warning("trial batch flow run %s: %s -> %s", run_id, state.type.value, new.type.value)


def worker_pool(workers: dict, stage: str, storage: str, run: ParentRun | None, *, model_path: str,
                statistics_path: str, evaluation: dict, base_config: dict, options: dict | None = None,
                fast_mode: bool = True, model_name: str | None = None):
    """The executor of a search stage (``"options"`` or ``"feedback"``) on ``workers["count"]``
    trial-batch flow runs. ``storage`` must be a database URL every worker reaches."""
    from core.errors import QuantizationConfigError
    from core.search.parallel import TrialPool, is_rdb_url

    if not is_rdb_url(storage):
        raise QuantizationConfigError(
            f"a search on several workers needs a shared Optuna database (postgresql+psycopg://...), "
            f"got storage {storage!r}")
    params = {"stage": stage, "storage": storage, "model_path": model_path, "statistics_path": statistics_path,
              "evaluation": evaluation, "base_config": base_config, "options": options, "fast_mode": fast_mode,
              "model_name": model_name, "experiment_id": None if run is None else run.experiment_id,
              "parent_run_id": None if run is None else run.run_id,
              "idle_timeout": float(workers.get("idle_timeout", 900.0))}
    launcher = PrefectLauncher(workers.get("deployment") or DEFAULT_DEPLOYMENT, params)

    class _Pool(TrialPool):
        def close(self, study) -> None:
            super().close(study)
            launcher.finish(study.study_name)

    pool = _Pool(int(workers["count"]), launcher.launch, launcher.alive, progress=log.info)
    pool.launcher = launcher
    return pool
