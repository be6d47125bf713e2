"""Kill -9 during search_flow, rerun: finished trials are kept (not re-evaluated), the search
continues, and MLflow holds no duplicate candidate runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.orchestration.conftest import MNIST_CAL, MNIST_EVAL_AGREEMENT, child_runs

ARGS = dict(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL_AGREEMENT,
            options={"calibration": ["mse", "min_max"], "weights": [{"per_channel": True}],
                     "activations": [{"asymmetric": True}]},
            target=0.999, max_trials=8, output_dir="out")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_killed_search_resumes_without_duplicates(prefect_server, workdir, mlflow_store):
    from mlflow.tracking import MlflowClient

    from flows.search import search_flow

    env = dict(os.environ, PREFECT_API_URL=prefect_server, MIXQ_KILL_AFTER_CANDIDATES="4",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (
        f"import json; from flows.search import search_flow; search_flow(**json.loads({json.dumps(json.dumps(ARGS))}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = MlflowClient()
    exp = client.get_experiment_by_name("mixq-mnist_cnn")
    before = child_runs(client, exp.experiment_id)
    assert len(before) == 4                                  # 2 options + 2 accuracy-feedback candidates
    assert os.path.isfile(workdir / "out" / "mnist_cnn-search.journal")

    s = search_flow(**ARGS)                                  # the rerun, same storage
    assert s["options"]["evaluations"] == 0                  # both option candidates kept
    af = s["accuracy_feedback"]
    assert af["resumed"] == 2 and af["evaluations"] >= 1     # finished trials kept, the search went on
    rows = [r for r in s["candidates"] if r["stage"] == "accuracy feedback"]
    assert [r["resumed"] for r in rows[:2]] == [True, True]
    assert all(r["mlflow_run_id"] for r in rows)

    after = child_runs(client, exp.experiment_id)
    keys = [r.data.tags["mixq_candidate_key"] for r in after]
    configs = [r.data.tags["mixq_config_key"] for r in after]
    assert len(keys) == len(set(keys)) and len(configs) == len(set(configs))
    assert len(after) == s["options"]["candidates"] + af["candidates"]
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in after}
