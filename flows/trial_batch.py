"""``trial_batch_flow``: one worker's share of a search on several workers (deployment
``trial-batch`` in ``prefect.yaml``, on the ``mixq-pool`` process pool). ``search_flow(workers=N)``
starts N of these with ``run_deployment``; each serves the search's shared Optuna studies
(PostgreSQL: the options stage, then accuracy feedback) until the search closes its session,
logging its candidates as MLflow child runs of the search's parent run. See docs/scale-out.md."""
from __future__ import annotations

from prefect import flow

from tasks.search import trial_batch_task

__all__ = ["trial_batch_flow"]


@flow(name="mixq-trial-batch", log_prints=True)
def trial_batch_flow(session: str, storage: str, model_path: str, statistics_path: str, evaluation: dict,
                     fast_mode: bool = True, experiment_id: str | None = None, parent_run_id: str | None = None,
                     idle_timeout: float = 900.0) -> dict:
    """Evaluate the trials of the search whose session is ``session`` until the search is done."""
    result = trial_batch_task(session, storage, model_path, statistics_path, evaluation, fast_mode, experiment_id,
                              parent_run_id, idle_timeout)
    for stage in result["stages"]:
        print(f"trial batch on {result['worker']}: {stage['trials']} trial(s) of {stage['study']} ({stage['stage']}), "
              f"evaluated {stage['evaluated']}")
    return result
