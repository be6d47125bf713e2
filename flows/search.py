"""``search_flow``: the options search (calibration x schemes), then accuracy feedback (INT16 node
sets) from the best options toward a target.

* ``target``: a number, or None for halfway between the best INT8 options' accuracy and the
  INT16 version of the same configuration (both on ``evaluation``).
* Every candidate is an MLflow child run of the flow run's parent run; the chosen model is
  evaluated exactly (``fast_mode=False``), analyzed, logged with its ``.sima``/``.sima.json``/plot
  and registered as ``mixq-<model>`` with alias ``champion``.
* Prefect artifacts: a progress artifact updated per candidate, a table of all candidates, a
  markdown summary (chosen configuration, MLflow run id and link) and the Pareto-front image
  (accuracy vs number of INT16 nodes; PNG in ``output_dir``, inline in the markdown, in MLflow).
* ``storage`` (Optuna): default ``<output_dir>/<model>-search.journal``; a killed search rerun
  with the same arguments resumes there (finished candidates are neither re-evaluated nor logged
  to MLflow twice).

The embedded defaults fit a 2-core machine: MobileNetV2, 64 calibration crops, 100 evaluation
crops, 6 option combinations, 12 accuracy-feedback trials, fast-mode evaluations. Most of the
time goes to core's sensitivity ranking (one float pass per node over ``ranking_samples``
evaluation samples); ``ranking_samples=8`` halves it.
"""
from __future__ import annotations

import json
import os
from typing import Any

from prefect import flow

from flows.artifacts import artifact_key, candidate_table, create_markdown, create_table, image_markdown, pareto_plot
from flows.quantize import DEFAULT_CALIBRATION, DEFAULT_EVALUATION, flow_run_info
from tasks import steps, tracking
from tasks.data import model_label
from tasks.search import (
    DEFAULT_SEARCH_OPTIONS,
    accuracy_feedback_task,
    options_grid_size,
    options_search_task,
    reference_task,
)

__all__ = ["search_flow"]

TABLE_COLUMNS = ["stage", "trial", "source", "calibration", "weights", "activations", "int16_nodes", "accuracy",
                 "agreement", "logit_sqnr_db", "feasible", "seconds", "resumed", "error", "mlflow_run_id"]


@flow(name="mixq-search", log_prints=True)
def search_flow(
    model: str = "mobilenet_v2",
    calibration: dict[str, Any] = DEFAULT_CALIBRATION,
    evaluation: dict[str, Any] = DEFAULT_EVALUATION,
    target: float | None = None,
    options: dict[str, list] | None = None,
    max_trials: int = 12,
    output_dir: str = "mixq-output",
    storage: str | None = None,
    experiment: str | None = None,
    config: dict[str, Any] | None = None,
    fast_mode: bool = True,
    timeout: float | None = None,
    name: str | None = None,
    alias: str = "champion",
    analysis_samples: int = 8,
    ranking_samples: int = 16,
) -> dict:
    """Search quantization options and INT16 node sets for ``model``; register the chosen model."""
    label = model_label(model)
    name = name or f"{label}-search"
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    storage = storage or os.path.join(output_dir, f"{label}-search.journal")
    if "://" not in storage:
        storage = os.path.abspath(storage)
    run_id, run_name, flow_name = flow_run_info()

    loaded = steps.load_model_task(model)
    model_path = loaded["path"]
    stats_path = steps.calibrate_cached(model_path, calibration)
    cal_seconds = float(steps.calibration_info(stats_path).get("seconds") or 0.0)

    exp_id = tracking.ensure_experiment(tracking.experiment_name(label, experiment))
    parent = tracking.start_parent_run(
        exp_id, f"search {run_name or name}", flow_name=flow_name, flow_run_id=run_id,
        params={"model": model, "calibration_data": calibration, "evaluation_data": evaluation, "target": target,
                "options": DEFAULT_SEARCH_OPTIONS if options is None else options, "max_trials": max_trials,
                "storage": storage, "base_config": config or {}, "fast_mode": fast_mode})
    track = {"experiment_id": exp_id, "parent_run_id": parent}
    from prefect.artifacts import create_progress_artifact

    total = options_grid_size(options) + (1 if target is None else 0) + int(max_trials)
    progress_id = create_progress_artifact(0.0, key=artifact_key("mixq-search", label, "progress"),
                                           description=f"candidates evaluated (budget {total})")
    progress = {"artifact_id": str(progress_id), "total": total, "done": 0}
    try:
        opts = options_search_task(model_path, stats_path, evaluation, options, config, storage, track, progress,
                                   fast_mode, None, cal_seconds)
        progress = opts["progress"]
        best = opts["best"]["config"]
        reference = None
        if target is None:
            reference = reference_task(model_path, stats_path, evaluation, best, track, progress, fast_mode,
                                       study=opts["study_name"])
            progress["done"] = progress.get("done", 0) + 1
            int8 = opts["best"]["accuracy"]
            target = int8 + (max(reference["accuracy"], int8) - int8) / 2.0
            print(f"target {target:.4f}: halfway between INT8 {int8:.4f} (best options) and INT16 "
                  f"{reference['accuracy']:.4f}")
        af = accuracy_feedback_task(model_path, stats_path, evaluation, best, float(target), output_dir, name,
                                    max_trials, timeout, storage, track, progress, fast_mode, cal_seconds,
                                    ranking_samples)
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(progress_id, 100.0, description="search finished")

        # the chosen model: exact evaluation, analysis, artifacts, registry
        metrics = steps.evaluate_task(af["sima"], model_path, evaluation, False)
        analysis = steps.analyze_task(af["sima"], model_path, evaluation, output_dir, analysis_samples)
        pareto_path = pareto_plot(af["candidates"], af["pareto"], os.path.join(output_dir, f"{name}-pareto.png"),
                                  af["target"], opts["metric"],
                                  f"{label}: accuracy feedback candidates ({opts['metric']}, fast mode)")
        chosen_run = af["chosen_run_id"]
        logger = tracking.CandidateLogger(exp_id, parent)
        exact = {"exact_accuracy": metrics["accuracy"], "exact_agreement": metrics["agreement"],
                 "exact_logit_sqnr_db": metrics["logit_sqnr_db"], "int16_node_count": metrics["int16_nodes"]}
        artifacts = [af["sima"], af["sima"] + ".json", analysis["plot"], analysis["table_path"]]
        if chosen_run is None:          # e.g. chosen in an earlier run whose MLflow record is gone
            chosen_run = logger.log(f"chosen:{run_id or parent}", run_name=f"{name}-chosen",
                                    params={"int16_nodes": af["int16_nodes"], "source": "chosen"},
                                    metrics=exact, tags={"mixq_config": json.dumps(af["config"], sort_keys=True)},
                                    artifacts=artifacts)
        else:
            logger.add_artifacts(chosen_run, artifacts, exact)
        tracking.log_artifacts(parent, [pareto_path, analysis["plot"]])
        registered = steps.register_task(chosen_run, af["sima"], f"mixq-{label}", alias, af["config"])

        rows = opts["candidates"] + ([dict(stage="int16 reference", trial="-", int16_nodes=reference["int16_nodes"],
                                           accuracy=reference["accuracy"], agreement=reference["agreement"],
                                           logit_sqnr_db=reference["logit_sqnr_db"],
                                           seconds=round(reference["seconds"], 3),
                                           mlflow_run_id=reference["mlflow_run_id"])] if reference else []) \
            + af["candidates"]
        table = candidate_table(rows, TABLE_COLUMNS)
        create_table(table, artifact_key("mixq-search", label, "candidates"),
                     f"every candidate of search_flow on {label} ({opts['metric']}, fast mode = {fast_mode})")
        summary = {
            "model": model,
            "model_path": model_path,
            "sima": af["sima"],
            "config": af["config"],
            "target": af["target"],
            "metric": opts["metric"],
            "int16_nodes": af["int16_nodes"],
            "search_accuracy": af["accuracy"],
            "metrics": metrics,
            "options": {
                "best": opts["best"],
                "evaluations": opts["evaluations"],
                "candidates": len(opts["candidates"]),
            },
            "int16_reference": reference,
            "accuracy_feedback": {
                "evaluations": af["evaluations"],
                "candidates": len(af["candidates"]),
                "resumed": af["resumed"],
                "study": af["study_name"],
            },
            "pareto": af["pareto"],
            "pareto_plot": pareto_path,
            "analysis_plot": analysis["plot"],
            "storage": storage,
            "mlflow": {
                "tracking_uri": tracking.tracking_uri(),
                "experiment_id": exp_id,
                "parent_run_id": parent,
                "run_id": chosen_run,
                "link": tracking.run_link(exp_id, chosen_run),
            },
            "registered": registered,
            "candidates": rows,
        }
        create_markdown(_markdown(summary, label), artifact_key("mixq-search", label, "summary"),
                        "search_flow summary: the chosen configuration")
        tracking.end_run(parent, "FINISHED", metrics={"target": af["target"], "chosen_accuracy": metrics["accuracy"],
                                                      "chosen_int16_nodes": metrics["int16_nodes"]},
                         tags={"mixq_chosen_run": chosen_run})
        print(summary_text(summary))
    except BaseException:
        tracking.end_run(parent, "FAILED")
        raise
    return summary


def summary_text(s: dict) -> str:
    """The final summary as plain text (what ``search_flow`` prints)."""
    m = s["metrics"]
    lines = [f"search_flow on {s['model']}: {s['options']['evaluations']} option candidate(s), "
             f"{s['accuracy_feedback']['evaluations']} accuracy-feedback evaluation(s) "
             f"({s['accuracy_feedback']['resumed']} resumed)",
             f"  best options: {s['options']['best']['config']['calibration']}, weights "
             f"{s['options']['best']['config']['weights']}, activations {s['options']['best']['config']['activations']}"
             f" -> {s['options']['best']['accuracy']:.4f}"]
    if s.get("int16_reference"):
        lines.append(f"  INT16 reference: {s['int16_reference']['accuracy']:.4f}")
    lines += [f"  target {s['metric']}: {s['target']:.4f}",
              f"  chosen: {len(s['int16_nodes'])} INT16 node(s) {s['int16_nodes']}: {s['metric']} "
              f"{s['search_accuracy']:.4f} (fast mode); exact: {m['accuracy']:.4f}, agreement {m['agreement']:.4f}, "
              f"logit SQNR {m['logit_sqnr_db']:.1f} dB",
              f"  saved: {s['sima']}",
              f"  MLflow run {s['mlflow']['run_id']} ({s['mlflow']['tracking_uri']}); registered "
              f"{s['registered']['model_uri']} @{s['registered']['alias']}",
              f"  Pareto front: {s['pareto_plot']}"]
    return "\n".join(lines)


def _markdown(s: dict, label: str) -> str:
    m = s["metrics"]
    reg = s["registered"]
    md = [f"# mixq search_flow: {label}", "",
          "## Chosen configuration", "",
          f"- INT16 nodes ({len(s['int16_nodes'])}): " + (", ".join(f"`{n}`" for n in s["int16_nodes"]) or "none"),
          f"- configuration: `{json.dumps(s['config'], sort_keys=True)}`",
          f"- target {s['metric']}: {s['target']:.4f}; search (fast mode): {s['search_accuracy']:.4f}; "
          f"exact: **{m['accuracy']:.4f}**, agreement {m['agreement']:.4f}, logit SQNR {m['logit_sqnr_db']:.1f} dB",
          f"- saved: `{s['sima']}`",
          f"- MLflow run: `{s['mlflow']['run_id']}` — [{s['mlflow']['link']}]({s['mlflow']['link']}) "
          f"(tracking `{s['mlflow']['tracking_uri']}`; `mlflow ui --backend-store-uri {s['mlflow']['tracking_uri']}`)",
          f"- registered: `{reg['model_uri']}` alias `{reg['alias']}`",
          f"- Optuna storage: `{s['storage']}`",
          "", "## Search", "",
          f"- options: {s['options']['evaluations']} evaluated, {s['options']['candidates']} candidates; best "
          f"{s['options']['best']['accuracy']:.4f}",
          f"- accuracy feedback: {s['accuracy_feedback']['evaluations']} evaluated "
          f"({s['accuracy_feedback']['resumed']} resumed from storage)",
          "", "## Pareto front (accuracy vs INT16 nodes)", "",
          "| INT16 nodes | accuracy | trial |", "|---|---|---|"]
    md += [f"| {p['int16_nodes']} | {p['accuracy']:.4f} | {p['trial']} |" for p in s["pareto"]]
    md += ["", image_markdown(s["pareto_plot"], "Pareto front")]
    return "\n".join(md)


if __name__ == "__main__":
    search_flow()
