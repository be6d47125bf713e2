"""prefect.yaml on a real Prefect server: create the process pool, `prefect deploy --all` from a
copy of prefect.yaml with MNIST-sized parameters (deployments/smoke-mnist.yaml), start a worker,
run each deployment, see it complete with its artifacts; then stop everything."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLOWS = {"nightly-champion": ("mixq-quantize", "quantize_flow"), "weekly-search": ("mixq-search", "search_flow"),
         "trial-batch": ("mixq-trial-batch", "trial_batch_flow")}
SCHEDULED = ("nightly-champion", "weekly-search")          # trial-batch runs are started by search_flow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_parameter_files_match_prefect_yaml():
    with open(os.path.join(ROOT, "prefect.yaml")) as f:
        project = yaml.safe_load(f)
    deployments = {d["name"]: d for d in project["deployments"]}
    assert set(deployments) == set(FLOWS)
    for name, d in deployments.items():
        with open(os.path.join(ROOT, "deployments", f"{name}.yaml")) as f:
            assert yaml.safe_load(f) == d["parameters"], name
        assert d["work_pool"]["name"] == "mixq-pool"
        if name in SCHEDULED:
            assert d["schedules"] and d["schedules"][0]["cron"]
        assert d["entrypoint"].split(":")[1] == FLOWS[name][1]


def _wait_ready(api: str, server: subprocess.Popen, log_path: str, timeout: float = 150) -> None:
    end = time.time() + timeout
    while time.time() < end:
        assert server.poll() is None, open(log_path).read()[-3000:]
        try:
            if httpx.get(f"{api}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the Prefect server did not become ready: " + open(log_path).read()[-3000:])


def _run_deployment(api: str, flow: str, deployment: str) -> str:
    dep = httpx.get(f"{api}/deployments/name/{flow}/{deployment}", timeout=30)
    dep.raise_for_status()
    run = httpx.post(f"{api}/deployments/{dep.json()['id']}/create_flow_run", json={}, timeout=30)
    run.raise_for_status()
    return run.json()["id"]


def _wait_done(api: str, run_id: str, worker: subprocess.Popen, log_path: str, timeout: float = 240) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]
        if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        assert worker.poll() is None, open(log_path).read()[-3000:]
        time.sleep(1)
    raise AssertionError("flow run did not finish: " + open(log_path).read()[-4000:])


def test_deployments_run_on_a_real_server(tmp_path, mlflow_template):
    import shutil

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "prefect-home"
    home.mkdir()
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MIXQ_RESULTS_DIR=str(tmp_path / "results"),
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    server_log = str(tmp_path / "server.log")
    worker_log = str(tmp_path / "worker.log")
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                              env=env, stdout=open(server_log, "w"), stderr=subprocess.STDOUT, cwd=tmp_path)
    worker = None
    try:
        _wait_ready(api, server, server_log)
        subprocess.run([prefect, "work-pool", "create", "mixq-pool", "--type", "process"], env=env, check=True,
                       capture_output=True, timeout=120)

        # the project: prefect.yaml with MNIST-sized parameters, code linked from the checkout
        project = tmp_path / "project"
        project.mkdir()
        for name in ("flows", "tasks", "core", "deployments"):
            os.symlink(os.path.join(ROOT, name), project / name)
        with open(os.path.join(ROOT, "prefect.yaml")) as f:
            config = yaml.safe_load(f)
        with open(os.path.join(ROOT, "deployments", "smoke-mnist.yaml")) as f:
            smoke = yaml.safe_load(f)
        for d in config["deployments"]:
            if d["name"] not in SCHEDULED:
                continue
            d["parameters"] = dict(smoke[FLOWS[d["name"]][1]])
            d["parameters"]["output_dir"] = str(tmp_path / d["parameters"]["output_dir"])
            for s in d.get("schedules") or []:
                s["active"] = False
        with open(project / "prefect.yaml", "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=project,
                                capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        worker = subprocess.Popen([prefect, "worker", "start", "--pool", "mixq-pool", "--limit", "1"], env=env,
                                  cwd=project, stdout=open(worker_log, "w"), stderr=subprocess.STDOUT)
        # the search first: it registers mixq-mnist_cnn@champion, which the nightly run re-evaluates
        for name in ("weekly-search", "nightly-champion"):
            flow_name = FLOWS[name][0]
            dep = httpx.get(f"{api}/deployments/name/{flow_name}/{name}", timeout=30).json()
            assert dep["work_pool_name"] == "mixq-pool" and dep["schedules"][0]["schedule"]["cron"]
            run_id = _run_deployment(api, flow_name, name)
            state = _wait_done(api, run_id, worker, worker_log)
            assert state["type"] == "COMPLETED", (name, state, open(worker_log).read()[-4000:])
            arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
                              timeout=30).json()
            kinds = {a["type"] for a in arts}
            assert {"table", "markdown"} <= kinds, (name, kinds)
            if name == "weekly-search":
                assert "progress" in kinds
        out = tmp_path / "mixq-output"
        assert (out / "smoke-search" / "mnist_cnn-search.sima").is_file()
        assert (out / "smoke" / "mnist_cnn-smoke.sima").is_file()
        # the nightly run re-quantized the champion's configuration
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias("mixq-mnist_cnn", "champion")
        exp = client.get_experiment_by_name("mixq-mnist_cnn")
        nightly = [r for r in client.search_runs([exp.experiment_id], "tags.mixq_kind = 'candidate'", max_results=500)
                   if r.info.run_name == "mnist_cnn-smoke"]
        assert len(nightly) == 1 and nightly[0].data.tags["mixq_config"] == champion.tags["mixq_config"]
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
