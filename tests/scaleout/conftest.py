"""Real servers for the scale-out tests (tasks/servers.py): a private PostgreSQL cluster run by an
unprivileged user, a Prefect server and an MLflow tracking server on it, the mixq-pool process
pool with the trial-batch deployment, and two process workers (w1, w2) -- all on 127.0.0.1 and
free ports, all stopped after the module."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.servers import ROOT, start_stack

HEARTBEAT = {"MIXQ_HEARTBEAT_SECONDS": "1", "MIXQ_HEARTBEAT_GRACE_SECONDS": "4"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    env = dict(HEARTBEAT, MIXQ_RESULTS_DIR=str(root / "results"))
    s = start_stack(str(root), workers=2, env=env)
    try:
        yield s
    finally:
        s.stop()


def create_database(stack, name: str) -> str:
    import psycopg

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.pg_port}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return stack.pg_url(name)


def start_search(stack, cwd, params: dict) -> subprocess.Popen:
    """search_flow in its own process (the parent), against the stack's servers."""
    code = ("import json, sys\n"
            "from flows.search import search_flow\n"
            "s = search_flow(**json.loads(sys.argv[1]))\n"
            "print('RESULT ' + json.dumps({'parent_run_id': s['mlflow']['parent_run_id'], "
            "'experiment_id': s['mlflow']['experiment_id'], 'registered': s['registered'], "
            "'int16_nodes': s['int16_nodes'], 'target': s['target'], 'metrics': s['metrics'], "
            "'options_study': None, 'feedback_study': s['accuracy_feedback']['study']}))\n")
    env = dict(stack.env, PYTHONPATH=ROOT)
    log = open(os.path.join(cwd, "parent.log"), "w")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def search_result(proc: subprocess.Popen, cwd, timeout: float = 600) -> dict:
    proc.wait(timeout=timeout)
    with open(os.path.join(cwd, "parent.log")) as f:
        out = f.read()
    assert proc.returncode == 0, out[-6000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])
