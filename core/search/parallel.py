"""Searches on several workers: Optuna storages with heartbeats, and trials that workers take
from a shared study (numpy + optuna only, imported lazily; the orchestration that starts the
workers lives in ``tasks/`` and ``flows/``).

How a search fans out (the searches take an ``executor``, a :class:`TrialPool`; :mod:`tasks.fanout`
launches its workers as Prefect flow runs of the ``trial-batch`` deployment):

* the study is created once by the parent; the parent enqueues the candidates it wants
  (``study.enqueue_trial(params, skip_if_exists=True)``: WAITING trials in the shared storage)
  and calls ``executor(study, n, "enqueued")``, which blocks until they are finished;
  independent candidates (the options grid, prefix probes, single-node drops) go in together;
* each worker batch runs :func:`serve_study` on the same study: ``study.optimize`` pops one
  WAITING trial at a time (PostgreSQL's row locks: no two workers get the same one) and
  evaluates it, with heartbeats; when a worker dies, the next trial of any process (or
  :func:`fail_stale`, which the parent calls while it waits) marks its trial FAILED after the
  grace period and :class:`optuna.storages.RetryFailedTrialCallback` re-enqueues it: retried,
  not lost;
* ``executor(study, n, "tpe", space)``: workers sample ``n`` trials with TPE
  (``constant_liar=True``: a running trial counts as a bad one, so parallel workers do not all
  pick the same subset); a sampled set that was already evaluated is not evaluated again
  (``mixq_duplicate_of``);
* ``executor.close(study)``: the workers leave.

:func:`open_storage` is the one place storages are made: a path is an Optuna journal file (one
machine, several processes, no heartbeats), a ``postgresql+psycopg://`` (or any SQLAlchemy) URL
an :class:`optuna.storages.RDBStorage` with heartbeats (``$MIXQ_HEARTBEAT_SECONDS``, default 10;
grace period 3 heartbeats; ``$MIXQ_TRIAL_RETRIES`` retries, default 2).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mixq")

__all__ = ["open_storage", "is_rdb_url", "fixed_params", "serve_study", "TrialPool", "fail_stale", "trial_counts",
           "counted_trials", "worker_name", "SPARE", "CLOSED", "TPE_STAGE", "DUPLICATE"]

SPARE = "mixq_spare"          # user attribute of a trial a worker opened when nothing was left to take
DUPLICATE = "mixq_duplicate_of"   # a sampled trial whose candidate was already evaluated (not evaluated again)
CLOSED = "mixq_closed"        # study user attribute: the parent is done with the study, workers leave
TPE_STAGE = "mixq_tpe"        # study user attribute: {"space": [...], "limit": n}: workers sample up to n trials
_storages: dict[str, Any] = {}


def is_rdb_url(storage: Any) -> bool:
    return isinstance(storage, str) and "://" in storage and not storage.startswith("journal")


def open_storage(storage: Any, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int | None = None):
    """An Optuna storage for ``storage`` (None: in memory; a path: a journal file; an RDB URL:
    RDBStorage with heartbeats and retries; a storage object: itself). RDB storages are shared
    per process and URL (one connection pool)."""
    if storage is None:
        return None
    if not isinstance(storage, (str, os.PathLike)):
        return storage
    storage = os.fspath(storage)
    if "://" not in storage:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(storage))
    if storage in _storages:
        return _storages[storage]
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    hb = int(heartbeat_interval or os.environ.get("MIXQ_HEARTBEAT_SECONDS") or 10)
    grace = int(grace_period or os.environ.get("MIXQ_HEARTBEAT_GRACE_SECONDS") or 3 * hb)
    retries = int(os.environ.get("MIXQ_TRIAL_RETRIES", 2) if max_retry is None else max_retry)
    engine = {"pool_pre_ping": True}
    if not storage.startswith("sqlite"):
        engine.update(pool_size=2, max_overflow=4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # heartbeats are "experimental" in Optuna's eyes
        st = RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=hb, grace_period=grace,
                        heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=retries))
    _storages[storage] = st
    return st


def worker_name() -> str:
    """Who runs a trial: ``$MIXQ_WORKER_NAME`` (set per worker) or host, plus the process id."""
    return f"{os.environ.get('MIXQ_WORKER_NAME') or socket.gethostname()}:{os.getpid()}"


def trial_counts(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def fail_stale(study) -> None:
    """Mark trials whose worker stopped beating FAILED (their retries become WAITING trials)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def fixed_params(trial) -> dict:
    """The parameters an enqueued (or retried) trial was created with ({} for a sampled one)."""
    from optuna.trial import TrialState

    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number == trial.number:
            return dict(t.system_attrs.get("fixed_params") or t.params or {})
    return {}


def counted_trials(study, trials=None) -> int:
    """Trials that spend a search's budget: not FAILED (a dead worker's trial, retried) and not
    spare."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return sum(1 for t in trials if t.state != TrialState.FAIL and not t.user_attrs.get(SPARE))


def _pending(trials) -> tuple[int, int]:
    from optuna.trial import TrialState

    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return waiting, running


class TrialPool:
    """The parent side of a search on several workers: the ``executor`` the searches take.

    ``launch(study_name, count)`` starts ``count`` worker batches that serve the study
    (:func:`serve_study`; :mod:`tasks.fanout` submits Prefect flow runs); ``alive(study_name)``
    (optional) says how many of them are still running. ``pool(study, n, mode, space)``:
    ``mode="enqueued"``: the ``n`` candidates the search enqueued are evaluated; ``mode="tpe"``:
    workers sample ``n`` more trials over ``space`` (TPE, constant liar). It returns when they are
    finished, dead workers' trials included (failed after the heartbeat grace period, retried by
    the other workers). :meth:`close` sends the workers home."""

    def __init__(self, width: int, launch: Callable[[str, int], Any], alive: Callable[[str], int] | None = None, *,
                 poll: float = 0.2, relaunch_after: float = 180.0, progress: Callable[[str], None] | None = None):
        self.width = max(1, int(width))
        self.launch = launch
        self.alive = alive
        self.poll = float(poll)
        self.relaunch_after = float(relaunch_after)
        self.progress = progress or (lambda msg: log.info("%s", msg))
        self._launched: dict[str, int] = {}

    def __call__(self, study, n: int, mode: str = "enqueued", space=None) -> None:
        import time

        name = study.study_name
        if name not in self._launched:
            study.set_user_attr(CLOSED, False)
            self.launch(name, self.width)
            self._launched[name] = self.width
            self.progress(f"{self.width} worker batch(es) serve study {name}")
        limit = None
        if mode == "tpe":
            limit = counted_trials(study) + int(n)
            study.set_user_attr(TPE_STAGE, {"space": list(space or []), "limit": limit})
        last_change, last_seen = time.monotonic(), None
        try:
            while True:
                fail_stale(study)          # a dead worker's trial: FAILED, and retried (WAITING)
                trials = study.get_trials(deepcopy=False)
                waiting, running = _pending(trials)
                done = waiting == 0 and running == 0 and (limit is None or counted_trials(study, trials) >= limit)
                if done:
                    return
                seen = (len(trials), waiting, running, sum(1 for t in trials if t.state.is_finished()))
                if seen != last_seen:
                    last_seen, last_change = seen, time.monotonic()
                alive = self.alive(name) if self.alive is not None else None
                if (alive == 0 or time.monotonic() - last_change > self.relaunch_after) and running == 0:
                    self.progress(f"no worker serves study {name} ({waiting} waiting): one more batch")
                    self.launch(name, 1)
                    self._launched[name] += 1
                    last_change = time.monotonic()
                time.sleep(self.poll)
        finally:
            if limit is not None:
                study.set_user_attr(TPE_STAGE, None)

    def close(self, study) -> None:
        if study.study_name in self._launched:
            study.set_user_attr(CLOSED, True)


def serve_study(study, objective: Callable[[Any], Any], *, tpe_objective: Callable[[list], Callable] | None = None,
                sampler: Any = None, poll: float = 0.2, idle_timeout: float = 900.0,
                on_trial: Callable[[Any], None] | None = None) -> int:
    """The worker side: evaluate the study's WAITING (enqueued or retried) trials one at a time,
    and while the parent asks for it (the ``mixq_tpe`` study attribute) sampled ones
    (``tpe_objective(space)``), until the parent closes the study (or nothing happened for
    ``idle_timeout`` seconds). Every trial is recorded with heartbeats (``study.optimize``), tagged
    with :func:`worker_name`. Returns how many trials this worker ran."""
    import time

    import optuna
    from optuna.trial import TrialState

    if sampler is not None:
        study.sampler = sampler
    ran = [0]
    idle_since = time.monotonic()

    def wrapped(trial):
        fixed = bool(fixed_params(trial))
        trial.set_user_attr("worker", worker_name())
        if fixed:
            return objective(trial)
        stage = study.user_attrs.get(TPE_STAGE)
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if not stage or tpe_objective is None or counted_trials(study, before) >= int(stage["limit"]):
            trial.set_user_attr(SPARE, True)          # another worker took the last one meanwhile
            raise optuna.TrialPruned("nothing left to evaluate")
        return tpe_objective(list(stage["space"]))(trial)

    while True:
        attrs = study.user_attrs
        if attrs.get(CLOSED):
            break
        fail_stale(study)
        trials = study.get_trials(deepcopy=False)
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        stage = attrs.get(TPE_STAGE)
        wanted = waiting > 0 or (stage and tpe_objective is not None
                                 and counted_trials(study, trials) < int(stage["limit"]))
        if not wanted:
            if time.monotonic() - idle_since > idle_timeout:
                log.warning("study %s: idle for %.0f s, leaving", study.study_name, idle_timeout)
                break
            time.sleep(poll)
            continue
        study.optimize(wrapped, n_trials=1, gc_after_trial=False, catch=())
        ran[0] += 1
        idle_since = time.monotonic()
        if on_trial is not None:
            on_trial(study)
    return ran[0]
