"""The Prefect tasks of one quantization: load, calibrate, quantize, evaluate, analyze, register,
compile, accelerator_run. Thin over ``core``; they take and return paths and JSON-friendly dicts.

Calibration is cached across runs: its cache key is the model file's sha256, the data spec and
the sha256 of the data's arrays, and the calibration settings that change statistics (number of
histogram bins, statistics format). Results (the statistics file's path) persist under the
results directory, ``$MIXQ_RESULTS_DIR`` or ``./mixq-results``; the statistics files live in its
``calibration/`` folder. Use :func:`calibrate_cached` (it sets the storage and recomputes if the
statistics file was deleted behind the cache's back).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from prefect import task
from prefect.tasks import exponential_backoff

from tasks.data import build_config, config_spec_of, data_digest, load_samples, resolve_model, spec_json
from tasks.evaluation import file_stamp, get_net, int16_node_count, int16_node_names, model_sha256, scorer_for

__all__ = ["load_model_task", "calibrate_task", "calibrate_cached", "quantize_task", "evaluate_task",
           "analyze_task", "register_task", "compile_task", "accelerator_run_task", "results_dir",
           "calibration_key", "COUNTERS", "is_ssh_fault"]

RESULTS_ENV = "MIXQ_RESULTS_DIR"
PASSWORD_ENV = "MIXQ_DEVKIT_PASSWORD"
COUNTERS = {"calibrate": 0}         # how many times each task body really ran in this process


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mixq.tasks")


def results_dir() -> str:
    return os.path.abspath(os.environ.get(RESULTS_ENV) or "mixq-results")


# ---------------------------------------------------------------- load

@task(name="load-model")
def load_model_task(model: str) -> dict:
    """Validate a model (zoo name or file): import and optimize it; ``{"path", "summary"}``."""
    path = resolve_model(model)
    net = get_net(path)
    segments = net.segments()
    summary = {
        "name": net.graph.name,
        "file": os.path.basename(path),
        "sha256": model_sha256(file_stamp(path)),
        "inputs": {n: list(s) for n, s in net.input_shapes().items()},
        "outputs": list(net.output_names),
        "nodes": len(net.nodes()),
        "segments": {k: len(v) for k, v in segments.items()},
    }
    _logger().info("loaded %s: %d nodes, segments %s", path, summary["nodes"], summary["segments"])
    return {"path": path, "summary": summary}


# ---------------------------------------------------------------- calibrate

def calibration_key(model_path: str, data: dict, num_bins: int | None = None) -> str:
    from core.quantization.calibration import DEFAULT_FINE_BINS, FORMAT_VERSION

    parts = {"model_sha256": model_sha256(file_stamp(model_path)), "data": spec_json(data),
             "data_sha256": data_digest(data), "num_bins": int(num_bins or DEFAULT_FINE_BINS),
             "format": FORMAT_VERSION}
    return "mixq-calibration-" + hashlib.sha256(spec_json(parts).encode()).hexdigest()[:32]


def _calibration_cache_key(context, parameters: dict) -> str:
    return calibration_key(parameters["model_path"], parameters["data"], parameters.get("num_bins"))


@task(name="calibrate", cache_key_fn=_calibration_cache_key, persist_result=True)
def calibrate_task(model_path: str, data: dict, num_bins: int | None = None) -> str:
    """One float pass over the data; returns the path of the saved statistics (``.npz``) with a
    ``.json`` sidecar (seconds, samples)."""
    COUNTERS["calibrate"] += 1
    key = calibration_key(model_path, data, num_bins)
    net = get_net(model_path)
    samples = load_samples(data)
    t0 = time.perf_counter()
    stats = net.calibrate(samples.feeds(net.input_names[0]), num_bins=num_bins)
    seconds = time.perf_counter() - t0
    folder = os.path.join(results_dir(), "calibration")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, key + ".npz")
    stats.save(path)
    with open(path[:-4] + ".json", "w") as f:
        json.dump({"seconds": seconds, "samples": len(samples), "data": data, "model": model_path}, f, indent=1)
    _logger().info("calibrated on %d samples in %.1f s: %s", len(samples), seconds, path)
    return path


def calibrate_cached(model_path: str, data: dict, num_bins: int | None = None) -> str:
    """``calibrate_task`` with its results under :func:`results_dir`; recomputes (refreshing the
    cache) when the cached statistics file no longer exists."""
    storage = Path(results_dir()) / "prefect"
    path = calibrate_task.with_options(result_storage=storage)(model_path, data, num_bins)
    if not os.path.isfile(path):
        _logger().warning("cached calibration statistics %s are gone: recomputing", path)
        path = calibrate_task.with_options(result_storage=storage, refresh_cache=True)(model_path, data, num_bins)
    return path


def calibration_info(statistics_path: str) -> dict:
    """The sidecar of a statistics file (``{"seconds", "samples", ...}``; empty if missing)."""
    try:
        with open(statistics_path[:-4] + ".json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def load_statistics(statistics_path: str):
    from core import CalibrationStatistics

    return CalibrationStatistics.load(statistics_path)


# ---------------------------------------------------------------- quantize

@task(name="quantize")
def quantize_task(model_path: str, statistics_path: str, config: dict | None, output_dir: str,
                  model_name: str) -> dict:
    """Quantize with a config spec (see :mod:`tasks.data`) and save ``<output_dir>/<model_name>.sima``
    (+ ``.sima.json``). Returns ``{"sima", "sima_json", "seconds", "config", "int16_nodes"}``."""
    net = get_net(model_path)
    cfg = build_config(config)
    stats = load_statistics(statistics_path)
    t0 = time.perf_counter()
    model = net.quantize(stats, cfg, model_name=model_name)
    seconds = time.perf_counter() - t0
    model.save(model_name, output_dir)
    sima = os.path.abspath(os.path.join(output_dir, model_name + ".sima"))
    _logger().info("quantized in %.2f s: %s", seconds, sima)
    return {"sima": sima, "sima_json": sima + ".json", "seconds": seconds, "config": config_spec_of(cfg),
            "int16_nodes": int16_node_count(model)}


def load_sima(sima_path: str):
    from core import Model

    directory, name = os.path.split(os.path.abspath(sima_path))
    return Model.load(name, directory)


# ---------------------------------------------------------------- evaluate

@task(name="evaluate")
def evaluate_task(sima_path: str, model_path: str, data: dict, fast_mode: bool = False) -> dict:
    """Metrics of a saved model on a data spec against the float model: ``accuracy`` (top-1 on
    labels, else agreement), ``agreement`` with FP32 top-1, ``logit_sqnr_db``, ``int16_nodes``."""
    model = load_sima(sima_path)
    scorer = scorer_for(model_path, data)
    t0 = time.perf_counter()
    metrics = scorer.evaluate(model, fast_mode=fast_mode)
    metrics["int16_nodes"] = int16_node_count(model)
    metrics["evaluation_seconds"] = time.perf_counter() - t0
    _logger().info("%s %.4f, agreement %.4f, logit SQNR %.1f dB, %d INT16 nodes (%d samples)",
                   metrics["metric"], metrics["accuracy"], metrics["agreement"], metrics["logit_sqnr_db"],
                   metrics["int16_nodes"], metrics["samples"])
    return metrics


# ---------------------------------------------------------------- analyze

def _plot_ranking(rows: list, path: str, title: str, xlabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[:30]
    fig, ax = plt.subplots(figsize=(9, 0.3 * max(len(rows), 4) + 1.2))
    ax.barh([r[0] for r in rows][::-1], [r[1] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
    return path


@task(name="analyze")
def analyze_task(sima_path: str, model_path: str, data: dict, output_dir: str, samples: int = 8,
                 metric: str = "sqnr") -> dict:
    """Per-layer quantization error of a saved model on ``samples`` samples of ``data``: a PNG
    plot and a table. Uses ``Model.analyze_quantization_error`` when core has it, else the
    sensitivity ranking (``core.search.rank_nodes_by_output_gain``)."""
    model = load_sima(sima_path)
    net = get_net(model_path)
    x = load_samples(data).inputs[: max(1, int(samples))]
    name = net.input_names[0]
    os.makedirs(output_dir, exist_ok=True)
    stem = os.path.basename(sima_path)[: -len(".sima")]
    plot = os.path.abspath(os.path.join(output_dir, f"{stem}-layer-error.png"))
    if hasattr(model, "analyze_quantization_error"):
        report = model.analyze_quantization_error([{name: x[i:i + 1]} for i in range(len(x))], metric)
        report.plot(plot)
        rows = [[n, float(v)] for n, v in report.ranking()]
        table = report.table(worst_first=True)
        kind = f"per-layer {report.metric} (worst first)"
        _layer_statistics_into_json(sima_path + ".json", report)
    else:
        from core.search import rank_nodes_by_output_gain

        ranking = rank_nodes_by_output_gain(net, model, {name: x})
        rows = [[n, float(v)] for n, v in ranking]
        _plot_ranking(rows, plot, "sensitivity: output error removed by keeping one node float", "gain")
        table = "\n".join(f"{n}  {v:.6g}" for n, v in rows)
        kind = "sensitivity ranking (output gain)"
    with open(plot[:-4] + ".txt", "w") as f:
        f.write(table + "\n")
    return {"plot": plot, "table": table, "table_path": plot[:-4] + ".txt", "rows": rows[:50], "kind": kind}


def _layer_statistics_into_json(json_path: str, report) -> None:
    """Each node's error into the ``.sima.json`` (``Layer Statistics``, what Netron shows)."""
    from core.formats import read_sima_json, update_layer_statistics

    if not os.path.exists(json_path):
        return
    names = {layer["name"] for layer in read_sima_json(json_path)["config"]["layers"]}
    update_layer_statistics(json_path, {r.node: (report.metric, float(r.error)) for r in report.rows
                                        if r.node in names})


# ---------------------------------------------------------------- register (MLflow registry)

@task(name="register-model")
def register_task(run_id: str, sima_path: str, registered_name: str, alias: str | None = "champion",
                  config: dict | None = None) -> dict:
    """Log the ``.sima`` as a pyfunc model in MLflow run ``run_id``, register it and set ``alias``."""
    from tasks.tracking import register_model

    tags = {"mixq_config": json.dumps(config or {}, sort_keys=True)}
    info = register_model(run_id, sima_path, registered_name, alias, tags=tags)
    _logger().info("registered %s version %s%s", info["name"], info["version"],
                   f" as @{alias}" if alias else "")
    return info


# ---------------------------------------------------------------- compile / accelerator

@task(name="compile")
def compile_task(sima_path: str, output_dir: str, batch_size: int = 1) -> dict:
    """``Model.compile`` (the ``.lm`` for the accelerator) when core has it."""
    model = load_sima(sima_path)
    if not hasattr(model, "compile"):
        raise NotImplementedError("this mixq has no Model.compile yet (issue 'Accelerator mode'): "
                                  "cannot compile " + sima_path)
    report = model.compile(output_dir, batch_size=batch_size)
    return {"output_dir": os.path.abspath(output_dir), "report": str(report)}


def is_ssh_fault(exc: BaseException) -> bool:
    """Faults worth a retry: connection, timeout and transfer errors (not authentication, host
    keys, missing features or bad inputs)."""
    import socket

    from core.errors import DevkitConnectionError, DevkitTimeoutError, DevkitTransferError

    if isinstance(exc, (DevkitConnectionError, DevkitTimeoutError, DevkitTransferError, socket.timeout,
                        ConnectionError, EOFError)):
        return True
    return type(exc).__module__.startswith("paramiko") and "Authentication" not in type(exc).__name__


def _retry_on_ssh_fault(task, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001
        return is_ssh_fault(exc)
    return False


def devkit_password(devkit: dict) -> str:
    """The password named by ``devkit["password_env"]`` (default ``$MIXQ_DEVKIT_PASSWORD``);
    passwords are never flow or task parameters (Prefect stores those)."""
    if any(k.lower() in ("password", "passwd", "secret") for k in devkit):
        raise ValueError("do not pass a devkit password as a parameter (Prefect stores parameters): set "
                         f"the environment variable {PASSWORD_ENV} or name another one with 'password_env'")
    return os.environ.get(devkit.get("password_env") or PASSWORD_ENV, "")


@task(name="accelerator-run", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=_retry_on_ssh_fault)
def accelerator_run_task(sima_path: str, data: dict, devkit: dict, output_dir: str, samples: int = 8) -> dict:
    """Run a saved model on a devkit over SSH (``Model.execute_in_accelerator_mode`` when core has
    it); compares with local execution. ``devkit``: ``{"host", "user", "port", "key_filename",
    "accept_unknown_host", "password_env"}``. Retries SSH faults with exponential backoff."""
    import numpy as np

    password = devkit_password(devkit)
    model = load_sima(sima_path)
    if not hasattr(model, "execute_in_accelerator_mode"):
        raise NotImplementedError("this mixq has no Model.execute_in_accelerator_mode yet (issue 'Accelerator "
                                  "mode'): cannot run " + sima_path + " on a devkit")
    x = load_samples(data).inputs[: max(1, int(samples))]
    name = model.input_names[0]
    feeds = [{name: x[i:i + 1]} for i in range(len(x))]
    t0 = time.perf_counter()
    outputs = model.execute_in_accelerator_mode(
        feeds, devkit["host"], username=devkit.get("user", "root"), password=password,
        port=int(devkit.get("port", 22)), key_filename=devkit.get("key_filename"),
        accept_unknown_host=bool(devkit.get("accept_unknown_host", False)))
    seconds = time.perf_counter() - t0
    local = [model.execute(f) for f in feeds]
    same = all(np.array_equal(a, b) for o, l in zip(outputs, local) for a, b in zip(o, l))
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(output_dir, os.path.basename(sima_path)[:-5] + "-devkit-outputs.npz"))
    np.savez(path, **{f"output_{k}": np.concatenate([o[k] for o in outputs]) for k in range(len(outputs[0]))})
    return {"outputs": path, "seconds": seconds, "samples": len(feeds), "bit_identical": bool(same),
            "host": devkit["host"]}


def model_int16_nodes(sima_path: str) -> list[str]:
    return int16_node_names(load_sima(sima_path))


def describe_statistics(statistics_path: str) -> dict:
    info = calibration_info(statistics_path)
    return {"path": statistics_path, "seconds": info.get("seconds"), "samples": info.get("samples")}

