"""``quantize_flow``: one configuration end to end.

load -> calibrate (cached across runs) -> quantize -> evaluate -> analyze -> save/register
[-> accelerator_run when ``devkit`` is given]. One MLflow parent run per flow run with one child
run for the candidate (params, metrics, ``.sima``/``.sima.json``/plot artifacts); the model is
registered (pyfunc flavor) and gets ``alias`` when one is given.

``config`` is a config spec (:mod:`tasks.data`), or ``{"from_registry": "<registered model>",
"alias": "champion"}`` to re-run the configuration of a registered model (e.g. the nightly
re-evaluation of the champion on fresh data); keys given next to ``from_registry`` override it.
"""
from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow

from flows.artifacts import artifact_key, candidate_table, create_markdown, create_table, image_markdown
from tasks import steps, tracking
from tasks.data import model_label

__all__ = ["quantize_flow", "DEFAULT_CALIBRATION", "DEFAULT_EVALUATION"]

DEFAULT_CALIBRATION: dict[str, Any] = {"source": "zoo", "name": "natural_images", "split": "calibration", "count": 64}
DEFAULT_EVALUATION: dict[str, Any] = {"source": "zoo", "name": "natural_images", "split": "evaluation", "count": 100}


def flow_run_info() -> tuple[str, str, str]:
    from prefect.runtime import flow_run

    return str(flow_run.id or ""), str(flow_run.name or ""), str(flow_run.flow_name or "")


def resolve_config(config: dict | None, label: str) -> dict:
    config = dict(config or {})
    source = config.pop("from_registry", None)
    alias = config.pop("alias", "champion")
    if not source:
        return config
    stored = tracking.champion_config(source, alias)
    if stored is None:
        from prefect.logging import get_run_logger

        get_run_logger().warning("no %s@%s in the MLflow registry yet: using the default configuration",
                                 source, alias)
        stored = {}
    stored.update(config)
    return stored


@flow(name="mixq-quantize", log_prints=True)
def quantize_flow(
    model: str = "mobilenet_v2",
    calibration: dict[str, Any] = DEFAULT_CALIBRATION,
    evaluation: dict[str, Any] = DEFAULT_EVALUATION,
    config: dict[str, Any] | None = None,
    output_dir: str = "mixq-output",
    devkit: dict[str, Any] | None = None,
    experiment: str | None = None,
    name: str | None = None,
    register_model: bool = True,
    alias: str | None = None,
    fast_mode: bool = False,
    analysis_samples: int = 8,
) -> dict:
    """Quantize ``model`` (zoo name or file) with one ``config``; evaluate it against FP32 on
    ``evaluation``; save ``<output_dir>/<name>.sima``; record it in MLflow (and the registry)."""
    label = model_label(model)
    name = name or f"{label}-quantized"
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if devkit:
        steps.devkit_password(devkit)          # refuse secrets in parameters before anything runs
    run_id, run_name, flow_name = flow_run_info()

    loaded = steps.load_model_task(model)
    model_path = loaded["path"]
    cfg = resolve_config(config, label)
    stats_path = steps.calibrate_cached(model_path, calibration)
    cal_info = steps.calibration_info(stats_path)

    exp_id = tracking.ensure_experiment(tracking.experiment_name(label, experiment))
    parent = tracking.start_parent_run(
        exp_id, f"quantize {run_name or name}", flow_name=flow_name, flow_run_id=run_id,
        params={"model": model, "calibration_data": calibration, "evaluation_data": evaluation, "config": cfg,
                "output_dir": output_dir, "devkit": devkit or {}, "fast_mode": fast_mode})
    try:
        q = steps.quantize_task(model_path, stats_path, cfg, output_dir, name)
        metrics = steps.evaluate_task(q["sima"], model_path, evaluation, fast_mode)
        analysis = steps.analyze_task(q["sima"], model_path, evaluation, output_dir, analysis_samples)
        spec = q["config"]
        logger = tracking.CandidateLogger(exp_id, parent)
        child = logger.log(
            f"quantize:{run_id or parent}", run_name=name,
            params={"calibration_method": spec["calibration"], "weight_scheme": spec["weights"],
                    "activation_scheme": spec["activations"], "requantization_mode": spec["requantization"],
                    "bias_correction": spec["bias_correction"], "channel_equalization": spec["channel_equalization"],
                    "int16_nodes": spec["int16_nodes"], "int16_node_count": metrics["int16_nodes"],
                    "source": "quantize_flow", "evaluation_metric": metrics["metric"]},
            metrics={"accuracy": metrics["accuracy"], "agreement": metrics["agreement"],
                     "logit_sqnr_db": metrics["logit_sqnr_db"], "int16_node_count": metrics["int16_nodes"],
                     "calibration_seconds": cal_info.get("seconds", 0.0), "quantization_seconds": q["seconds"],
                     "evaluation_seconds": metrics["evaluation_seconds"],
                     **({"top1_accuracy": metrics["top1_accuracy"]} if "top1_accuracy" in metrics else {})},
            tags={"mixq_config": json.dumps(spec, sort_keys=True)},
            artifacts=[q["sima"], q["sima_json"], analysis["plot"], analysis["table_path"]],
            json_artifacts={"config.json": spec, "metrics.json": metrics})
        registered = None
        if register_model and child:
            registered = steps.register_task(child, q["sima"], f"mixq-{label}", alias, spec)
        device = None
        if devkit:
            device = steps.accelerator_run_task(q["sima"], evaluation, devkit, output_dir)
            if child:
                tracking.log_metrics(child, {"devkit_seconds": device["seconds"],
                                             "devkit_bit_identical": float(device["bit_identical"])})
        summary = {"model": model, "model_path": model_path, "sima": q["sima"], "config": spec, "metrics": metrics,
                   "calibration": {"statistics": stats_path, **{k: cal_info.get(k) for k in ("seconds", "samples")}},
                   "analysis": {"plot": analysis["plot"], "kind": analysis["kind"]},
                   "mlflow": {"tracking_uri": tracking.tracking_uri(), "experiment_id": exp_id, "parent_run_id": parent,
                              "run_id": child, "link": tracking.run_link(exp_id, child or parent)},
                   "registered": registered, "devkit": device}
        _artifacts(summary, analysis, label)
        tracking.end_run(
            parent, "FINISHED", metrics={k: metrics[k] for k in ("accuracy", "agreement", "logit_sqnr_db")}
        )
    except BaseException:
        tracking.end_run(parent, "FAILED")
        raise
    return summary


def _artifacts(summary: dict, analysis: dict, label: str) -> None:
    m = summary["metrics"]
    rows = [{"metric": k, "value": v} for k, v in (
        (m["metric"], m["accuracy"]), ("agreement with FP32 top-1", m["agreement"]),
        ("logit SQNR (dB)", m["logit_sqnr_db"]), ("INT16 nodes", m["int16_nodes"]), ("samples", m["samples"]))]
    create_table(candidate_table(rows, ["metric", "value"]), artifact_key("mixq-quantize", label, "metrics"),
                 f"quantize_flow metrics of {summary['sima']}")
    reg = summary["registered"]
    md = [f"# mixq quantize_flow: {label}", "",
          f"- model: `{summary['model_path']}`",
          f"- saved: `{summary['sima']}` (+ `.sima.json`)",
          f"- {m['metric']}: **{m['accuracy']:.4f}**, agreement with FP32 top-1 {m['agreement']:.4f}, "
          f"logit SQNR {m['logit_sqnr_db']:.1f} dB, {m['int16_nodes']} INT16 node(s), {m['samples']} samples",
          f"- configuration: `{json.dumps(summary['config'], sort_keys=True)}`",
          f"- MLflow run: `{summary['mlflow']['run_id']}` ({summary['mlflow']['link']}; tracking "
          f"`{summary['mlflow']['tracking_uri']}`)"]
    if reg:
        md.append(f"- registered: `{reg['model_uri']}`" + (f" (alias `{reg['alias']}`)" if reg.get("alias") else ""))
    if summary.get("devkit"):
        md.append(f"- devkit: {summary['devkit']}")
    md += ["", f"## {analysis['kind']}", "", image_markdown(analysis["plot"], "per-layer error"), "",
           "```", "\n".join(analysis["table"].splitlines()[:40]), "```"]
    create_markdown("\n".join(md), artifact_key("mixq-quantize", label, "summary"), "quantize_flow summary")


if __name__ == "__main__":
    print(json.dumps(quantize_flow(), indent=1, default=str))
