"""The web UIs that show a results folder (``mixq ui``, ``make ui``): the Prefect UI (flow runs,
task runs, artifacts), the MLflow UI (candidates side by side, the registry), Netron (the chosen
``.sima.json``) and optuna-dashboard (the search's Optuna study).

A results folder is what ``make demo`` leaves in ``mixq-demo/`` (and ``scripts/demo.py --folder``
elsewhere): ``mlflow.db`` (+ ``mlruns/``), ``prefect/prefect.db`` (the Prefect database the flow
runs were written to), ``mixq-output/*.sima.json`` and ``mixq-output/*-search.journal``.

Every server is a subprocess on 127.0.0.1 (``prefect``, ``mlflow``, ``netron`` and
``optuna-dashboard`` from the same environment as this Python); nothing here imports Prefect or
MLflow.
"""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

__all__ = ["UI_NAMES", "prefect_env", "ui_env", "find_results", "ui_commands", "start_uis", "UIServers", "free_port",
           "wait_for_http", "stop_process_groups"]

UI_NAMES = ("prefect", "mlflow", "netron", "optuna")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "netron": 8081, "optuna": 8082}
_HEALTH = {"prefect": "/api/health", "mlflow": "/health", "netron": "/", "optuna": "/dashboard"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tool(name: str) -> str:
    """``name`` from this Python's environment (``.venv/bin``), else from PATH."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def prefect_env(folder: str) -> dict[str, str]:
    """Environment that makes Prefect keep its database (and profile) under ``folder/prefect``:
    flow runs made with it (ephemeral API) are what ``prefect server start`` with it shows."""
    home = os.path.join(os.path.abspath(folder), "prefect")
    return {"PREFECT_HOME": home,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///" + os.path.join(home, "prefect.db"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def ui_env(name: str, folder: str, host: str = "127.0.0.1", port: int | None = None) -> dict[str, str]:
    """Environment variables the UI ``name`` needs on top of the user's: Prefect's database under
    ``folder`` and the API address its UI talks to (Prefect builds it from PREFECT_SERVER_API_HOST/PORT,
    not from ``--host``/``--port``: without them the UI looks for the API on port 4200)."""
    if name != "prefect":
        return {}
    port = port or DEFAULT_PORTS["prefect"]
    return dict(prefect_env(folder), PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port),
                PREFECT_UI_API_URL=f"http://{host}:{port}/api")


def find_results(folder: str) -> dict[str, str | None]:
    """The files of a results folder: ``mlflow`` (tracking URI), ``prefect`` (database file),
    ``sima_json`` (the newest ``.sima.json``), ``journal`` (the newest Optuna journal)."""
    folder = os.path.abspath(folder)

    def newest(pattern: str) -> str | None:
        files = glob.glob(os.path.join(folder, "**", pattern), recursive=True)
        own = [f for f in files if "mlruns" not in os.path.relpath(f, folder).split(os.sep)]   # not MLflow's copies
        files = own or files
        return max(files, key=os.path.getmtime) if files else None

    db = os.path.join(folder, "mlflow.db")
    pdb = os.path.join(folder, "prefect", "prefect.db")
    return {"mlflow": f"sqlite:///{db}" if os.path.exists(db) else None,
            "prefect": pdb if os.path.exists(pdb) else None,
            "sima_json": newest("*.sima.json"), "journal": newest("*.journal")}


def ui_commands(folder: str, ports: dict[str, int] | None = None, host: str = "127.0.0.1",
                which=UI_NAMES) -> dict[str, list[str]]:
    """``name -> argv`` of each UI that has something to show in ``folder``."""
    ports = dict(DEFAULT_PORTS, **(ports or {}))
    found = find_results(folder)
    cmds: dict[str, list[str]] = {}
    if "prefect" in which and found["prefect"]:
        cmds["prefect"] = [_tool("prefect"), "server", "start", "--host", host, "--port", str(ports["prefect"]),
                           "--no-services"]
    if "mlflow" in which and found["mlflow"]:
        cmds["mlflow"] = [_tool("mlflow"), "server", "--backend-store-uri", found["mlflow"], "--host", host,
                          "--port", str(ports["mlflow"]), "--workers", "1"]
    if "netron" in which and found["sima_json"]:
        cmds["netron"] = [_tool("netron"), found["sima_json"], "--host", host, "--port", str(ports["netron"])]
    if "optuna" in which and found["journal"]:
        cmds["optuna"] = [_tool("optuna-dashboard"), found["journal"], "--host", host,
                          "--port", str(ports["optuna"])]
    return cmds


@dataclass
class UIServers:
    """Running UIs: ``urls[name]``; :meth:`stop` (or leaving the ``with`` block) ends them."""

    urls: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process_groups(self.processes.values(), timeout=15)
        self.processes.clear()

    def __enter__(self) -> UIServers:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process_groups(processes, timeout: float) -> None:
    """SIGTERM each still-running process's group (a server and the workers it started), in the
    given order, then wait; a group still alive after ``timeout`` s gets SIGKILL."""
    processes = list(processes)
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float, log_tail=lambda: "") -> None:
    """Wait until ``url`` answers below 500, failing early when ``proc`` exits; ``log_tail()``
    (e.g. the end of the server's log) goes into the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}: {log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no answer from {url} after {timeout:.0f} s: {log_tail()}")


def start_uis(folder: str, which=UI_NAMES, ports: dict[str, int] | None = None, host: str = "127.0.0.1",
              log_dir: str | None = None, timeout: float = 180.0, progress=print) -> UIServers:
    """Start the UIs of ``folder`` (free ports unless ``ports`` names them) and wait until each
    answers; returns a :class:`UIServers`. Each server's output goes to ``log_dir/<name>.log``
    (default: ``folder/ui-logs``)."""
    folder = os.path.abspath(folder)
    ports = {n: (ports or {}).get(n) or free_port(host) for n in which}
    cmds = ui_commands(folder, ports, host, which)
    log_dir = log_dir or os.path.join(folder, "ui-logs")
    os.makedirs(log_dir, exist_ok=True)
    base = dict(os.environ)
    for k in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL", "PREFECT_PROFILE"):
        base.pop(k, None)
    servers = UIServers()
    try:
        for name, argv in cmds.items():
            log = os.path.join(log_dir, f"{name}.log")
            servers.logs[name] = log
            env = dict(base, **ui_env(name, folder, host, ports[name]))
            with open(log, "ab") as out:
                servers.processes[name] = subprocess.Popen(argv, cwd=folder, env=env, stdout=out,
                                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                           start_new_session=True)
            servers.urls[name] = f"http://{host}:{ports[name]}"
            progress(f"starting {name}: {' '.join(argv)}")
        for name, proc in servers.processes.items():
            t = time.perf_counter()
            try:
                wait_for_http(servers.urls[name] + _HEALTH[name], proc, timeout)
            except (RuntimeError, TimeoutError) as exc:
                with open(servers.logs[name], errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"{name} UI did not start ({exc}); log {servers.logs[name]}:\n{tail}") from None
            progress(f"{name} is up after {time.perf_counter() - t:.1f} s: {servers.urls[name]}")
    except BaseException:
        servers.stop()
        raise
    return servers
