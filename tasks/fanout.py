"""Searches on several workers with Prefect: the parent's :class:`core.search.parallel.TrialPool`
launches its workers as flow runs of the ``trial-batch`` deployment (``flows/trial_batch.py``,
on the ``mixq-pool`` process work pool; ``prefect worker start --pool mixq-pool --limit N`` on
each machine) with :func:`prefect.deployments.run_deployment`. Nothing here schedules trials:
Optuna's storage is the queue, Prefect's pool and deployment concurrency decide what runs where.

One search, one *session*: a small Optuna study (``mixq-session-<flow run>``) in the shared
storage whose user attributes say which stage's study the workers serve now (``mixq_current``),
which flow runs serve the search (``mixq_runs``) and when the search is over (``mixq_closed``).
The search starts its N batches once (its first stage); they serve the options study, then the
accuracy-feedback study, with the model and data loaded once. :func:`close_session` ends them and
marks the batches whose worker died (still "Running" for Prefect) Crashed -- their trials were
retried by the others.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.tracking import ParentRun

__all__ = ["DEFAULT_DEPLOYMENT", "CURRENT", "RUNS", "workers_spec", "open_session", "close_session", "session",
           "worker_pool", "start_batches", "SessionLauncher"]

DEFAULT_DEPLOYMENT = "mixq-trial-batch/trial-batch"
CURRENT = "mixq_current"
RUNS = "mixq_runs"
log = logging.getLogger("mixq.fanout")


def workers_spec(count: int, deployment: str | None = None, idle_timeout: float = 900.0,
                 session: str | None = None) -> dict | None:
    """The ``workers`` argument of the search tasks (None: one process)."""
    if not count or int(count) < 1:
        return None
    return {"count": int(count), "deployment": deployment or DEFAULT_DEPLOYMENT, "idle_timeout": float(idle_timeout),
            "session": session or f"mixq-session-{uuid.uuid4().hex[:16]}"}


def _session(workers: dict, storage: str):
    import optuna

    from core.search.parallel import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=workers["session"], storage=open_storage(storage), load_if_exists=True)


def open_session(workers: dict | None, storage: str) -> None:
    """Create the search's session study (before any stage fans out)."""
    from core.errors import QuantizationConfigError
    from core.search.parallel import CLOSED, is_rdb_url

    if not workers:
        return
    if not is_rdb_url(storage):
        raise QuantizationConfigError(
            f"a search on several workers needs a shared Optuna database (postgresql+psycopg://...), "
            f"got storage {storage!r}")
    _session(workers, storage).set_user_attr(CLOSED, False)


def _states(run_ids) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {i: client.read_flow_run(i).state for i in run_ids}


def close_session(workers: dict | None, storage: str, timeout: float = 20.0) -> None:
    """The search is over: its batches leave; the ones that cannot (their worker died) are marked
    Crashed, the ones never started Cancelled."""
    if not workers:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled, Crashed

    from core.search.parallel import CLOSED

    sess = _session(workers, storage)
    sess.set_user_attr(CLOSED, True)
    runs = list(sess.user_attrs.get(RUNS) or [])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(s is not None and s.is_running() for s in _states(runs).values()):
            break
        time.sleep(0.5)
    with get_client(sync_client=True) as client:
        for run_id, state in _states(runs).items():
            if state is None or state.is_final():
                continue
            if state.is_running():
                new = Crashed(message="its worker stopped (no heartbeat); its trials were retried by others")
            else:
                new = Cancelled(message="the search finished before this batch started")
            client.set_flow_run_state(run_id, new, force=True)
            log.warning("trial batch flow run %s: %s -> %s", run_id, state.type.value, new.type.value)


@contextmanager
def session(workers: dict | None, storage: str) -> Iterator[None]:
    """The search's session for the ``with`` block (nothing when ``workers`` is None)."""
    open_session(workers, storage)
    try:
        yield
    finally:
        close_session(workers, storage)


class SessionLauncher:
    """``launch(study_name, n)`` for a stage: the session points the batches at the study; the
    first call of a stage tops the batches up to ``n``, later calls (the pool saw no worker
    progress) add ``n``. ``alive()``: batches not finished."""

    def __init__(self, workers: dict, storage: str, stage: dict, parameters: dict):
        self.workers = workers
        self.storage = storage
        self.stage = dict(stage)
        self.parameters = dict(parameters)
        self.studies: set[str] = set()

    def _runs(self) -> list[str]:
        return list(_session(self.workers, self.storage).user_attrs.get(RUNS) or [])

    def alive(self, study_name: str | None = None) -> int:
        return sum(1 for s in _states(self._runs()).values() if s is None or not s.is_final())

    def launch(self, study_name: str, count: int) -> None:
        sess = _session(self.workers, self.storage)
        sess.set_user_attr(CURRENT, dict(self.stage, study_name=study_name))
        new = int(count) if study_name in self.studies else max(0, int(count) - self.alive())
        self.studies.add(study_name)
        self.start(new, sess)

    def start(self, new: int, sess=None) -> None:
        """Submit ``new`` trial-batch flow runs of the session (they wait for a stage)."""
        from prefect.deployments import run_deployment

        sess = sess or _session(self.workers, self.storage)
        runs = self._runs()
        for _ in range(new):
            fr = run_deployment(self.workers.get("deployment") or DEFAULT_DEPLOYMENT,
                                parameters=dict(self.parameters, session=self.workers["session"]),
                                timeout=0, tags=["mixq", "trial-batch"])
            runs.append(str(fr.id))
            log.info("trial batch %s (session %s): flow run %s", self.workers.get("deployment"),
                     self.workers["session"], fr.id)
        sess.set_user_attr(RUNS, runs)


def worker_pool(workers: dict, stage: str, storage: str, run: ParentRun | None, *, model_path: str,
                statistics_path: str, evaluation: dict, base_config: dict, options: dict | None = None,
                fast_mode: bool = True, model_name: str | None = None):
    """The executor of a search stage (``"options"`` or ``"feedback"``) on ``workers["count"]``
    trial-batch flow runs of the search's session. ``storage`` must be a database URL every worker
    reaches."""
    from core.search.parallel import TrialPool

    open_session(workers, storage)
    params = _batch_parameters(workers, storage, run, model_path, statistics_path, evaluation, fast_mode)
    launcher = SessionLauncher(workers, storage, {"stage": stage, "base_config": base_config, "options": options,
                                                  "model_name": model_name}, params)
    return TrialPool(int(workers["count"]), launcher.launch, launcher.alive, progress=log.info)


def _batch_parameters(workers: dict, storage: str, run: ParentRun | None, model_path: str, statistics_path: str,
                      evaluation: dict, fast_mode: bool) -> dict:
    return {"storage": storage, "model_path": model_path, "statistics_path": statistics_path,
            "evaluation": evaluation, "fast_mode": fast_mode,
            "experiment_id": None if run is None else run.experiment_id,
            "parent_run_id": None if run is None else run.run_id,
            "idle_timeout": float(workers.get("idle_timeout", 900.0))}


def start_batches(workers: dict | None, storage: str, run: ParentRun | None, *, model_path: str,
                  statistics_path: str, evaluation: dict, fast_mode: bool = True) -> None:
    """Submit the session's ``workers["count"]`` trial-batch flow runs now, before the first stage
    fans out: their start (a process, imports, the model and data loaded) overlaps the search's
    own preparation; the stages then find them alive and launch none."""
    if not workers:
        return
    open_session(workers, storage)
    params = _batch_parameters(workers, storage, run, model_path, statistics_path, evaluation, fast_mode)
    launcher = SessionLauncher(workers, storage, {}, params)
    launcher.start(max(0, int(workers["count"]) - launcher.alive()))
