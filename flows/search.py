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
from dataclasses import dataclass
from typing import Any

from prefect import flow

from flows.artifacts import artifact_key, candidate_table, create_markdown, create_table, image_markdown, pareto_plot
from flows.quantize import DEFAULT_CALIBRATION, DEFAULT_EVALUATION, flow_run_info
from tasks import steps, tracking
from tasks.data import model_label
from tasks.fanout import session as fanout_session
from tasks.fanout import start_batches, workers_spec
from tasks.search import (
    DEFAULT_SEARCH_OPTIONS,
    FeedbackResult,
    Int16Reference,
    OptionsResult,
    ProgressBar,
    accuracy_feedback_task,
    options_grid_size,
    options_search_task,
    reference_task,
)
from tasks.tracking import ParentRun

__all__ = ["search_flow", "ChosenModel", "summary_text"]

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
    workers: int = 0,
    worker_deployment: str | None = None,
) -> dict:
    """Search quantization options and INT16 node sets for ``model``; register the chosen model.
    ``workers``: evaluate the candidates on that many ``trial-batch`` flow runs (deployment
    ``worker_deployment``, default ``mixq-trial-batch/trial-batch``) sharing ``storage``, a
    PostgreSQL URL (docs/scale-out.md); 0: in this process."""
    label = model_label(model)
    name = name or f"{label}-search"
    output_dir, storage = prepare_output(output_dir, storage, label)
    model_path = steps.load_model_task(model)["path"]
    statistics = steps.calibrate_cached(model_path, calibration)
    calibration_seconds = float(steps.calibration_info(statistics).get("seconds") or 0.0)
    flow_run_id, flow_run_name, flow_name = flow_run_info()
    params = {"model": model, "calibration_data": calibration, "evaluation_data": evaluation, "target": target,
              "options": DEFAULT_SEARCH_OPTIONS if options is None else options, "max_trials": max_trials,
              "storage": storage, "base_config": config or {}, "fast_mode": fast_mode, "workers": workers}
    fanout = workers_spec(workers, worker_deployment, session=f"mixq-session-{flow_run_id}" if flow_run_id else None)

    with tracking.parent_run(tracking.experiment_name(label, experiment), f"search {flow_run_name or name}",
                             flow_name=flow_name, flow_run_id=flow_run_id, params=params) as run, \
            fanout_session(fanout, storage):
        start_batches(fanout, storage, run, model_path=model_path, statistics_path=statistics,
                      evaluation=evaluation, fast_mode=fast_mode)
        budget = options_grid_size(options) + (1 if target is None else 0) + int(max_trials)
        progress = start_progress(label, budget)

        found = options_search_task(model_path, statistics, evaluation, options, config, storage, run, progress,
                                    fast_mode, None, calibration_seconds, fanout)
        progress = found.progress
        reference = None
        if target is None:
            reference = reference_task(model_path, statistics, evaluation, found.best_config, run, progress,
                                       fast_mode, study=found.study_name)
            progress = reference.progress
            target = halfway_target(found, reference)

        feedback = accuracy_feedback_task(model_path, statistics, evaluation, found.best_config, float(target),
                                          output_dir, name, max_trials, timeout, storage, run, progress, fast_mode,
                                          calibration_seconds, ranking_samples, fanout)
        finish_progress(feedback.progress)

        chosen = record_chosen(feedback, run, model_path, evaluation, output_dir, name, label, alias,
                               analysis_samples, flow_run_id)
        pareto_path = pareto_plot(feedback.candidates, feedback.pareto, os.path.join(output_dir, f"{name}-pareto.png"),
                                  feedback.target, found.metric,
                                  f"{label}: accuracy feedback candidates ({found.metric}, fast mode)")
        tracking.log_artifacts(run.run_id, [pareto_path, chosen.analysis["plot"]])
        summary = search_summary(model, model_path, storage, found, reference, feedback, chosen, run, pareto_path)
        publish_artifacts(summary, label, fast_mode)
        run.finish(metrics={"target": feedback.target, "chosen_accuracy": chosen.metrics["accuracy"],
                            "chosen_int16_nodes": chosen.metrics["int16_nodes"]},
                   tags={"mixq_chosen_run": chosen.run_id})
    print(summary_text(summary))
    return summary


# ---------------------------------------------------------------- the steps of search_flow

def prepare_output(output_dir: str, storage: str | None, label: str) -> tuple[str, str]:
    """The absolute output directory (created) and Optuna storage (default: a journal file in it)."""
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    storage = storage or os.path.join(output_dir, f"{label}-search.journal")
    if "://" not in storage:          # a journal file, not a database URL
        storage = os.path.abspath(storage)
    return output_dir, storage


def start_progress(label: str, budget: int) -> ProgressBar:
    from prefect.artifacts import create_progress_artifact

    artifact_id = create_progress_artifact(0.0, key=artifact_key("mixq-search", label, "progress"),
                                           description=f"candidates evaluated (budget {budget})")
    return ProgressBar(str(artifact_id), budget)


def finish_progress(progress: ProgressBar) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(progress.artifact_id, 100.0, description="search finished")


def halfway_target(found: OptionsResult, reference: Int16Reference) -> float:
    """Halfway between the best INT8 options and their INT16 version (never below INT8)."""
    int8 = found.best_accuracy
    target = int8 + (max(reference.accuracy, int8) - int8) / 2.0
    print(f"target {target:.4f}: halfway between INT8 {int8:.4f} (best options) and INT16 {reference.accuracy:.4f}")
    return target


@dataclass(frozen=True)
class ChosenModel:
    """The chosen model evaluated exactly (``fast_mode=False``), analyzed, in MLflow and the registry."""

    metrics: dict
    analysis: dict
    run_id: str
    registered: dict


def record_chosen(feedback: FeedbackResult, run: ParentRun, model_path: str, evaluation: dict, output_dir: str,
                  name: str, label: str, alias: str, analysis_samples: int, flow_run_id: str) -> ChosenModel:
    """Exact evaluation and per-layer analysis of the chosen model, attached to its candidate's
    MLflow run (a new run when it has none, e.g. chosen by an earlier run whose record is gone),
    then registered as ``mixq-<label>@alias``."""
    metrics = steps.evaluate_task(feedback.sima, model_path, evaluation, False)
    analysis = steps.analyze_task(feedback.sima, model_path, evaluation, output_dir, analysis_samples)
    exact = {"exact_accuracy": metrics["accuracy"], "exact_agreement": metrics["agreement"],
             "exact_logit_sqnr_db": metrics["logit_sqnr_db"], "int16_node_count": metrics["int16_nodes"]}
    files = [feedback.sima, feedback.sima + ".json", analysis["plot"], analysis["table_path"]]
    candidates = run.candidates()
    run_id = feedback.chosen_run_id
    if run_id is None:
        run_id = candidates.log(f"chosen:{flow_run_id or run.run_id}", run_name=f"{name}-chosen",
                                params={"int16_nodes": feedback.int16_nodes, "source": "chosen"}, metrics=exact,
                                tags={"mixq_config": json.dumps(feedback.config, sort_keys=True)}, artifacts=files)
    else:
        candidates.add_artifacts(run_id, files, exact)
    registered = steps.register_task(run_id, feedback.sima, f"mixq-{label}", alias, feedback.config)
    return ChosenModel(metrics, analysis, run_id, registered)


def search_summary(model: str, model_path: str, storage: str, found: OptionsResult,
                   reference: Int16Reference | None, feedback: FeedbackResult, chosen: ChosenModel,
                   run: ParentRun, pareto_path: str) -> dict:
    """What ``search_flow`` returns (JSON-friendly): the chosen model and every candidate."""
    rows = found.candidates + ([reference.row()] if reference else []) + feedback.candidates
    return {
        "model": model,
        "model_path": model_path,
        "sima": feedback.sima,
        "config": feedback.config,
        "target": feedback.target,
        "metric": found.metric,
        "int16_nodes": feedback.int16_nodes,
        "search_accuracy": feedback.accuracy,
        "metrics": chosen.metrics,
        "options": {
            "best": {"config": found.best_config, "accuracy": found.best_accuracy, "trial": found.best_trial},
            "evaluations": found.evaluations,
            "candidates": len(found.candidates),
        },
        "int16_reference": None if reference is None else {
            k: getattr(reference, k) for k in ("accuracy", "agreement", "logit_sqnr_db", "int16_nodes", "seconds",
                                               "mlflow_run_id", "config")},
        "accuracy_feedback": {
            "evaluations": feedback.evaluations,
            "candidates": len(feedback.candidates),
            "resumed": feedback.resumed,
            "study": feedback.study_name,
        },
        "pareto": feedback.pareto,
        "pareto_plot": pareto_path,
        "analysis_plot": chosen.analysis["plot"],
        "storage": storage,
        "mlflow": {
            "tracking_uri": tracking.tracking_uri(),
            "experiment_id": run.experiment_id,
            "parent_run_id": run.run_id,
            "run_id": chosen.run_id,
            "link": run.link(chosen.run_id),
        },
        "registered": chosen.registered,
        "candidates": rows,
    }


def publish_artifacts(summary: dict, label: str, fast_mode: bool) -> None:
    """The Prefect artifacts: every candidate as a table, the chosen configuration as markdown."""
    create_table(candidate_table(summary["candidates"], TABLE_COLUMNS),
                 artifact_key("mixq-search", label, "candidates"),
                 f"every candidate of search_flow on {label} ({summary['metric']}, fast mode = {fast_mode})")
    create_markdown(summary_markdown(summary, label), artifact_key("mixq-search", label, "summary"),
                    "search_flow summary: the chosen configuration")


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


def summary_markdown(s: dict, label: str) -> str:
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


if __name__ == "__main__":            # python -m flows.search ['{"model": ..., "workers": 2}'] (mixq search --workers)
    import sys

    search_flow(**(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}))
