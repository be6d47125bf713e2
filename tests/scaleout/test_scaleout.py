"""A search on several workers with real servers (tests/scaleout/conftest.py): PostgreSQL, a
Prefect server on it, an MLflow tracking server on it, two Prefect process workers. search_flow
(workers=2) fans its options grid and accuracy-feedback candidates out as trial-batch flow runs
that share the Optuna study; the candidates ran in both workers; killing one worker (SIGKILL)
mid-trial loses nothing: the trial is retried, and the trials and MLflow child runs match."""
from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from core.search.parallel import DUPLICATE, SPARE, open_storage
from tests.orchestration.conftest import MNIST_CAL, MNIST_EVAL_AGREEMENT
from tests.scaleout.conftest import create_database, search_result, start_search

OPTIONS = {"calibration": ["mse", "min_max", "percentile"], "weights": [{"per_channel": True}],
           "activations": [{"asymmetric": True}, {"asymmetric": False}]}


def params(storage: str, out, experiment: str, **kw) -> dict:
    return dict(model="mnist_cnn", calibration=MNIST_CAL, evaluation=MNIST_EVAL_AGREEMENT, options=OPTIONS,
                target=None, max_trials=8, output_dir=str(out), storage=storage, experiment=experiment, workers=2,
                **kw)


def studies(url: str) -> dict[str, optuna.Study]:
    storage = open_storage(url)
    names = optuna.get_all_study_names(storage)
    found = {}
    for stage, prefix in (("options", "mixq-options-"), ("feedback", "mixq-accuracy-feedback-")):
        mine = [n for n in names if n.startswith(prefix)]
        assert len(mine) == 1, names
        found[stage] = optuna.load_study(study_name=mine[0], storage=storage)
    return found


def evaluated(study) -> list:
    """The trials whose candidate was evaluated (not repeats, not spare batches' probes)."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and DUPLICATE not in t.user_attrs and not t.user_attrs.get(SPARE)]


def check_runs_match_trials(stack, result, found) -> dict[str, set]:
    """Every evaluated trial has exactly one MLflow child run of the search's parent run (and no
    run is left over); returns the workers seen per stage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri)
    runs = client.search_runs([result["experiment_id"]], "tags.mixq_kind = 'candidate'", max_results=1000)
    runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["parent_run_id"]]
    reference = [r for r in runs if r.info.run_name == "int16-reference"]      # the parent's own candidate
    assert len(reference) == 1
    runs = [r for r in runs if r not in reference]
    workers = {}
    for stage, study in found.items():
        trials = evaluated(study)
        mine = [r for r in runs if r.data.tags.get("mixq_study") == study.study_name]
        assert len(mine) == len(trials), (stage, len(mine), len(trials))
        by_id = {r.info.run_id: r for r in mine}
        assert sorted(t.user_attrs["mlflow_run_id"] for t in trials) == sorted(by_id)
        for t in trials:
            run = by_id[t.user_attrs["mlflow_run_id"]]
            assert run.data.tags["mixq_worker"] == t.user_attrs["worker"]        # who evaluated it
        workers[stage] = {t.user_attrs["worker"].split(":")[0] for t in trials}
    assert not [r for r in runs if r.data.tags.get("mixq_study") not in {s.study_name for s in found.values()}]
    versions = client.search_model_versions("name = 'mixq-mnist_cnn'")
    assert len([v for v in versions if v.run_id in {r.info.run_id for r in runs + reference}]) == 1   # once
    return workers


def flow_runs(stack, name: str) -> list[dict]:
    import httpx

    r = httpx.post(f"{stack.prefect_api}/flow_runs/filter",
                   json={"flows": {"name": {"any_": [name]}}, "limit": 200}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_search_on_two_workers(stack, tmp_path):
    url = create_database(stack, "optuna_two")
    result = search_result(start_search(stack, tmp_path, params(url, tmp_path / "out", "scaleout-two")), tmp_path)
    found = studies(url)
    assert len(evaluated(found["options"])) == 6                                  # the whole grid, once
    assert not [t for t in found["options"].get_trials() if t.state == TrialState.FAIL]
    workers = check_runs_match_trials(stack, result, found)
    print(f"candidates per stage and worker: {workers}; chosen {result['int16_nodes']}")
    assert set().union(*workers.values()) == {"w1", "w2"}, workers                 # both workers evaluated
    assert result["metrics"]["accuracy"] >= result["target"]                       # confirmed exactly
    batches = flow_runs(stack, "mixq-trial-batch")
    assert len(batches) == 2 and all(b["state_type"] == "COMPLETED" for b in batches), \
        [(b["name"], b["state_type"]) for b in batches]
    assert {b["parent_task_run_id"] is not None for b in batches} == {True}       # started from the search


def test_killed_worker_trial_is_retried(stack, tmp_path):
    url = create_database(stack, "optuna_kill")
    storage = open_storage(url)
    killed: dict = {}

    def kill_w2_mid_trial():
        end = time.monotonic() + 300
        while time.monotonic() < end and not killed:
            for name in optuna.get_all_study_names(storage):
                study = optuna.load_study(study_name=name, storage=storage)
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if str(t.user_attrs.get("worker", "")).startswith("w2:"):
                        killed.update(study=name, trial=t.number, pids=stack.kill_worker("w2"))
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_w2_mid_trial, daemon=True)
    proc = start_search(stack, tmp_path, params(url, tmp_path / "out", "scaleout-kill"))
    killer.start()
    result = search_result(proc, tmp_path)
    killer.join(5)
    assert killed, "w2 never ran a trial"
    print(f"killed w2 (pids {killed['pids']}) while it ran trial {killed['trial']} of {killed['study']}")
    assert stack.workers["w2"].poll() is not None
    found = studies(url)
    study = next(s for s in found.values() if s.study_name == killed["study"])
    trials = {t.number: t for t in study.get_trials()}
    dead = trials[killed["trial"]]
    assert dead.state == TrialState.FAIL                                           # failed by its stale heartbeat
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    print(f"trial {dead.number}: {dead.state.name}; retried as trial {retries[0].number} on "
          f"{retries[0].user_attrs['worker']}: {retries[0].state.name}")
    # the same candidate (the dead trial may have died before suggesting every parameter)
    assert dead.params.items() <= retries[0].params.items() and retries[0].user_attrs["worker"].startswith("w1:")
    if "fixed_params" in dead.system_attrs:
        assert retries[0].system_attrs["fixed_params"] == dead.system_attrs["fixed_params"]
    assert [t.number for t in trials.values() if t.state == TrialState.FAIL] == [dead.number]
    if study is found["options"]:
        assert len(evaluated(study)) == 6
    check_runs_match_trials(stack, result, found)                                  # no run lost, none twice
    crashed = [b for b in flow_runs(stack, "mixq-trial-batch") if b["state_type"] == "CRASHED"]
    assert len(crashed) == 1                                                       # the dead worker's batch


@pytest.fixture(autouse=True)
def _workers_alive(stack):
    """Each test starts with w1 and w2 running (the kill test leaves w2 dead)."""
    for name in ("w1", "w2"):
        if stack.workers[name].poll() is not None:
            stack.start_worker(name)
    yield


def test_mixq_search_workers_command(stack, tmp_path):
    """``mixq search --workers 2``: the command line hands over to search_flow on the workers."""
    import subprocess
    import sys

    from tasks.servers import ROOT

    url = create_database(stack, "optuna_cli")
    argv = [sys.executable, "-m", "core", "search", "mnist_cnn", "--data", "zoo:digits:calibration:64",
            "--evaluate", "zoo:digits:evaluation:200", "--storage", url, "--workers", "2", "--trials", "6",
            "--output", str(tmp_path / "out"), "--name", "mnist_cnn-cli"]
    run = subprocess.run(argv, cwd=tmp_path, env=dict(stack.env, PYTHONPATH=ROOT), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "registered models:/mixq-mnist_cnn/" in run.stdout + run.stderr     # search_flow's summary
    assert (tmp_path / "out" / "mnist_cnn-cli.sima").is_file()
    found = studies(url)
    assert len(evaluated(found["options"])) == 6
    assert all(t.user_attrs["worker"].split(":")[0] in ("w1", "w2") for s in found.values() for t in evaluated(s))
    no_db = subprocess.run(argv[:argv.index("--storage")] + ["--workers", "2", "--output", str(tmp_path)],
                           cwd=tmp_path, env=dict(stack.env, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert no_db.returncode != 0 and "--workers needs --storage" in no_db.stderr + no_db.stdout
