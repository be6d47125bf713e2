"""``trial_batch_flow``: one worker's share of a search on several workers (deployment
``trial-batch`` in ``prefect.yaml``, on the ``mixq-pool`` process pool). ``search_flow(workers=N)``
starts N of these with ``run_deployment``; each serves the shared Optuna study (PostgreSQL) until
the search closes it, logging its candidates as MLflow child runs of the search's parent run.
See docs/scale-out.md."""
from __future__ import annotations

from prefect import flow

from tasks.search import trial_batch_task

__all__ = ["trial_batch_flow"]


@flow(name="mixq-trial-batch", log_prints=True)
def trial_batch_flow(stage: str, study_name: str, storage: str, model_path: str, statistics_path: str,
                     evaluation: dict, base_config: dict, options: dict | None = None, fast_mode: bool = True,
                     model_name: str | None = None, experiment_id: str | None = None,
                     parent_run_id: str | None = None, idle_timeout: float = 900.0) -> dict:
    """Evaluate trials of ``study_name`` (``stage`` "options" or "feedback") until the search is done."""
    result = trial_batch_task(stage, study_name, storage, model_path, statistics_path, evaluation, base_config,
                              options, fast_mode, model_name, experiment_id, parent_run_id, idle_timeout)
    print(f"trial batch on {result['worker']}: {result['trials']} trial(s) of {study_name}, "
          f"evaluated {result['evaluated']}")
    return result
