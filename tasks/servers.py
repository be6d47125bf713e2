"""The servers of a search on several workers, started on 127.0.0.1 for tests and benchmarks (on
real machines, docs/scale-out.md starts them by hand): a private PostgreSQL cluster (Debian's
``postgresql``, ``scripts/ensure_postgres.sh``; run as a dedicated unprivileged user, since
PostgreSQL refuses to run as root), a Prefect server on it (``postgresql+asyncpg``), an MLflow
tracking server on it (``--backend-store-uri postgresql+psycopg://... --artifacts-destination``),
the ``mixq-pool`` process work pool with the ``trial-batch`` deployment, and process workers
(``prefect worker start --pool mixq-pool --limit 1``). Free ports; :meth:`Stack.stop` ends all.

Only subprocesses and the standard library here (plus psycopg to create the databases).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from core.ui_servers import free_port, stop_process_groups, wait_for_http

__all__ = ["Stack", "start_stack", "PG_USER", "ROOT"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_USER = "mixq-pg"
DATABASES = ("prefect", "mlflow", "optuna")


def _tool(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def _pg_bin() -> str:
    out = subprocess.run([os.path.join(ROOT, "scripts", "ensure_postgres.sh")], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"ensure_postgres.sh failed: {out.stdout}{out.stderr}")
    return out.stdout.strip().split()[-1]


def _pg_account() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user PostgreSQL runs as (created when missing); None when
    not root (then it runs as the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(PG_USER)
    return pw.pw_uid, pw.pw_gid


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        a, b = line.split()
        children.setdefault(int(b), []).append(int(a))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


@dataclass
class Stack:
    """Running servers: ``pg_url(db)``, ``prefect_api``, ``mlflow_uri``, ``env`` (what a client or
    worker needs: PREFECT_API_URL, MLFLOW_TRACKING_URI, ...), ``workers`` (name -> process)."""

    root: str
    pg_port: int = 0
    pg_bin: str = ""
    pg_data: str = ""
    pg_root: str = ""
    pg_account: tuple[int, int] | None = None
    prefect_api: str = ""
    mlflow_uri: str = ""
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)

    def pg_url(self, db: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.pg_port}/{db}"

    @property
    def optuna_url(self) -> str:
        return self.pg_url("optuna")

    def _spawn(self, name: str, argv: list[str], env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
        log = os.path.join(self.root, f"{name}.log")
        self.logs[name] = log
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, env=env or self.env, cwd=cwd or self.root, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes[name] = proc
        return proc

    # ------------------------------------------------------------ PostgreSQL
    def start_postgres(self) -> None:
        self.pg_bin = _pg_bin()
        self.pg_account = _pg_account()
        # its own directory outside the (possibly 0700, root-owned) stack root, owned by its user
        self.pg_root = tempfile.mkdtemp(prefix="mixq-pg-")
        self.pg_data = os.path.join(self.pg_root, "data")
        sock = os.path.join(self.pg_root, "sock")
        os.makedirs(sock, exist_ok=True)
        if self.pg_account:
            for d in (self.pg_root, sock):
                os.chown(d, *self.pg_account)
        kw = {"user": self.pg_account[0], "group": self.pg_account[1], "extra_groups": []} if self.pg_account else {}
        env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        init = subprocess.run([os.path.join(self.pg_bin, "initdb"), "-D", self.pg_data, "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"], capture_output=True, text=True,
                              env=env, cwd=self.pg_root, **kw)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}{init.stderr}")
        self.pg_port = free_port()
        log = os.path.join(self.pg_root, "postgres.log")
        self.logs["postgres"] = log
        start = subprocess.run([os.path.join(self.pg_bin, "pg_ctl"), "-D", self.pg_data, "-l", log, "-w", "-t", "120",
                                "-o", f"-h 127.0.0.1 -p {self.pg_port} -k {sock} -c max_connections=200",
                                "start"], capture_output=True, text=True, env=env, cwd=self.pg_root, **kw)
        if start.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {start.stdout}{start.stderr}{_tail(log)}")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres", autocommit=True) as c:
            for db in DATABASES:
                c.execute(f'CREATE DATABASE "{db}"')
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.pg_port}/prefect", autocommit=True) as p:
                p.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")

    def stop_postgres(self) -> None:
        if not self.pg_data or not os.path.isdir(self.pg_data):
            return
        kw = {"user": self.pg_account[0], "group": self.pg_account[1], "extra_groups": []} if self.pg_account else {}
        subprocess.run([os.path.join(self.pg_bin, "pg_ctl"), "-D", self.pg_data, "-m", "fast", "-w", "stop"],
                       capture_output=True, env={"PATH": os.environ.get("PATH", "")}, cwd=self.pg_root, **kw)
        shutil.rmtree(self.pg_root, ignore_errors=True)

    # ------------------------------------------------------------ Prefect, MLflow
    def start_prefect(self, timeout: float = 240.0) -> None:
        port = free_port()
        self.prefect_api = f"http://127.0.0.1:{port}/api"
        home = os.path.join(self.root, "prefect-home")
        os.makedirs(home, exist_ok=True)
        self.env.update(PREFECT_HOME=home, PREFECT_API_URL=self.prefect_api,
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                        PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5")
        server_env = dict(self.env, PREFECT_API_DATABASE_CONNECTION_URL=self.pg_url("prefect", "asyncpg"),
                          PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
        proc = self._spawn("prefect-server", [_tool("prefect"), "server", "start", "--host", "127.0.0.1",
                                              "--port", str(port), "--no-ui"], env=server_env)
        wait_for_http(f"{self.prefect_api}/ready", proc, timeout, lambda: _tail(self.logs["prefect-server"]))

    def start_mlflow(self, timeout: float = 240.0) -> None:
        port = free_port()
        artifacts = os.path.join(self.root, "mlflow-artifacts")
        os.makedirs(artifacts, exist_ok=True)
        proc = self._spawn("mlflow-server", [_tool("mlflow"), "server", "--backend-store-uri", self.pg_url("mlflow"),
                                             "--artifacts-destination", artifacts, "--host", "127.0.0.1",
                                             "--port", str(port), "--workers", "1"])
        self.mlflow_uri = f"http://127.0.0.1:{port}"
        self.env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        wait_for_http(f"{self.mlflow_uri}/health", proc, timeout, lambda: _tail(self.logs["mlflow-server"]))

    def deploy(self) -> None:
        """The ``mixq-pool`` process pool and the ``trial-batch`` deployment (``prefect deploy``
        from a project directory linking this checkout)."""
        import yaml

        run = subprocess.run([_tool("prefect"), "work-pool", "create", "mixq-pool", "--type", "process"],
                             env=self.env, capture_output=True, text=True, timeout=180, cwd=self.root)
        if run.returncode != 0 and "already exists" not in run.stdout + run.stderr:
            raise RuntimeError(f"work-pool create failed: {run.stdout}{run.stderr}")
        project = os.path.join(self.root, "project")
        os.makedirs(project, exist_ok=True)
        for name in ("flows", "tasks", "core", "deployments"):
            if not os.path.exists(os.path.join(project, name)):
                os.symlink(os.path.join(ROOT, name), os.path.join(project, name))
        with open(os.path.join(ROOT, "prefect.yaml")) as f:
            config = yaml.safe_load(f)
        config["deployments"] = [d for d in config["deployments"] if d["name"] == "trial-batch"]
        with open(os.path.join(project, "prefect.yaml"), "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        run = subprocess.run([_tool("prefect"), "--no-prompt", "deploy", "--name", "trial-batch"], env=self.env,
                             cwd=project, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise RuntimeError(f"prefect deploy failed: {run.stdout[-3000:]}{run.stderr[-3000:]}")
        self.project = project

    # ------------------------------------------------------------ workers
    def start_worker(self, name: str, limit: int = 1, threads: int = 1, extra_env: dict | None = None) -> None:
        env = dict(self.env, MIXQ_WORKER_NAME=name, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), **(extra_env or {}))
        proc = self._spawn(f"worker-{name}", [_tool("prefect"), "worker", "start", "--pool", "mixq-pool",
                                              "--limit", str(limit), "--name", name], env=env,
                           cwd=getattr(self, "project", self.root))
        self.workers[name] = proc

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL the worker and every process it started (its flow-run processes run in
        sessions of their own); returns the pids killed."""
        proc = self.workers[name]
        pids = [proc.pid] + _descendants(proc.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        return pids

    def stop(self) -> None:
        stop_process_groups(reversed(list(self.processes.values())), timeout=20)
        self.stop_postgres()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_stack(root: str | None = None, *, workers: int = 0, env: dict | None = None, progress=print) -> Stack:
    """PostgreSQL, Prefect server, MLflow server, the pool + deployment and ``workers`` workers
    (named w1, w2, ...). ``env``: extra environment for the workers and clients."""
    root = root or tempfile.mkdtemp(prefix="mixq-stack-")
    os.makedirs(root, exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    base["PYTHONPATH"] = ROOT + os.pathsep + base.get("PYTHONPATH", "")
    stack = Stack(root=os.path.abspath(root), env=dict(base, **(env or {})))
    try:
        t = time.perf_counter()
        stack.start_postgres()
        progress(f"PostgreSQL on 127.0.0.1:{stack.pg_port} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        stack.start_prefect()
        progress(f"Prefect server on PostgreSQL: {stack.prefect_api} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        stack.start_mlflow()
        progress(f"MLflow server on PostgreSQL: {stack.mlflow_uri} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        stack.deploy()
        progress(f"work pool mixq-pool + deployment trial-batch ({time.perf_counter() - t:.1f} s)")
        for i in range(workers):
            stack.start_worker(f"w{i + 1}")
    except BaseException:
        stack.stop()
        raise
    return stack
