"""Searches on several workers: Optuna storages with heartbeats, and trials that workers take
from a shared study (numpy + optuna only, imported lazily; the orchestration that starts the
workers lives in ``tasks/`` and ``flows/``).

How a search fans out (the searches call an ``executor``; :mod:`tasks.fanout` implements one
with Prefect deployments):

* the parent enqueues the candidates it wants (``study.enqueue_trial(params, skip_if_exists=True)``,
  WAITING trials in the shared storage) and calls ``executor(study, n, mode="enqueued")``, which
  blocks until they are finished;
* each worker opens the same study and runs :func:`run_trials`: ``study.optimize`` pops one
  WAITING trial at a time (``SELECT ... FOR UPDATE`` in PostgreSQL: no two workers get the same
  one) and evaluates it, with heartbeats; when a worker dies, the next ``optimize`` step of any
  process (or :func:`fail_stale`) marks its trial FAILED after the grace period and
  :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` re-enqueues it: retried, not lost;
* ``mode="tpe"``: workers sample with TPE (``constant_liar=True``: a running trial counts as a
  bad one, so parallel workers do not all pick the same subset).

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

__all__ = ["open_storage", "is_rdb_url", "run_trials", "fail_stale", "trial_counts", "worker_name", "SPARE"]

SPARE = "mixq_spare"          # user attribute of a trial a worker opened when nothing was left to take
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

    if not optuna.storages.is_heartbeat_enabled(study._storage):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def run_trials(study, objective: Callable[[Any], Any], n_trials: int | None = None, *, mode: str = "enqueued",
               sampler: Any = None) -> int:
    """Evaluate trials of a shared ``study`` in this process: the WAITING (enqueued) ones while
    any are left (``mode="enqueued"``), or ``n_trials`` sampled ones (``mode="tpe"``); at most
    ``n_trials`` either way. Returns how many trials this call ran."""
    import optuna
    from optuna.trial import TrialState

    if sampler is not None:
        study.sampler = sampler
    ran = [0]

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def wrapped(trial):
        ran[0] += 1
        enqueued = trial.system_attrs.get("fixed_params") is not None or bool(trial.params)
        if mode == "enqueued" and not enqueued:
            trial.set_user_attr(SPARE, True)       # another worker took the last one meanwhile
            study.stop()
            raise optuna.TrialPruned("nothing left to evaluate")
        trial.set_user_attr("worker", worker_name())
        return objective(trial)

    def stop_when_empty(st, _trial) -> None:
        if mode == "enqueued" and waiting() == 0:
            st.stop()

    fail_stale(study)
    if mode == "enqueued" and waiting() == 0:
        return 0
    study.optimize(wrapped, n_trials=n_trials, callbacks=[stop_when_empty], gc_after_trial=False)
    return ran[0]
