"""Prefect tasks over core's searches: the options search (calibration x schemes) and accuracy
feedback (INT16 node sets toward a target). Every newly evaluated candidate goes to MLflow as a
child run (through core's callbacks) and advances the flow's progress artifact.

Options spec (JSON, every key optional; the values are tried in every combination)::

    {"calibration": ["mse", "min_max", "percentile"],
     "weights": [{"per_channel": true}, {"per_channel": false}],
     "activations": [{"asymmetric": true}, {"asymmetric": false}],
     "bias_correction": [false], "channel_equalization": [false]}

Fault injection for tests: with ``$MIXQ_KILL_AFTER_CANDIDATES=N`` the process SIGKILLs itself
right after the N-th candidate it evaluated has been recorded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import Any

from prefect import task

from core.search.ranking import RANKING_KIND
from tasks.data import build_config, config_spec_of, spec_json
from tasks.evaluation import file_stamp, get_net, int16_node_count, model_sha256, scorer_for
from tasks.steps import load_statistics
from tasks.tracking import ParentRun

__all__ = ["DEFAULT_SEARCH_OPTIONS", "options_search_task", "reference_task", "accuracy_feedback_task",
           "options_grid_size", "KILL_ENV", "ProgressBar", "OptionsResult", "Int16Reference", "FeedbackResult",
           "trial_batch_task", "serve_stage"]

KILL_ENV = "MIXQ_KILL_AFTER_CANDIDATES"
DEFAULT_SEARCH_OPTIONS = {
    "calibration": ["mse", "min_max", "percentile"],
    "weights": [{"per_channel": True}, {"per_channel": False}],
    "activations": [{"asymmetric": True}],
}
_OPTION_FIELDS = {"calibration": "calibration_method", "weights": "weight_quantization_scheme",
                  "activations": "activation_quantization_scheme", "bias_correction": "bias_correction",
                  "channel_equalization": "channel_equalization"}
_evaluated = [0]        # candidates evaluated by this process (for the fault-injection hook)


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mixq.tasks")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(spec_json(list(parts)).encode()).hexdigest()[:16]


def options_grid_size(options: dict | None) -> int:
    opts = DEFAULT_SEARCH_OPTIONS if options is None else options
    return math.prod(len(v) for v in opts.values()) if opts else 1


@dataclass(frozen=True)
class ProgressBar:
    """A Prefect progress artifact and how many of its ``total`` candidates are done. Tasks get
    one and return it advanced (task arguments are copies, so nothing is shared by mutation)."""

    artifact_id: str | None
    total: int
    done: int = 0

    def step(self, what: str = "") -> ProgressBar:
        """One more candidate: the artifact updated, the advanced bar returned."""
        bar = replace(self, done=self.done + 1)
        if not bar.artifact_id:
            return bar
        from prefect.artifacts import update_progress_artifact

        total = max(1, bar.total)
        try:
            update_progress_artifact(bar.artifact_id, min(100.0, 100.0 * bar.done / total),
                                     description=f"{bar.done} candidate(s) evaluated (budget {total})"
                                                 + (f"; last: {what}" if what else ""))
        except Exception as e:  # noqa: BLE001  (progress must never fail a search)
            _logger().warning("cannot update the progress artifact: %s", e)
        return bar


@dataclass(frozen=True)
class OptionsResult:
    """What the options search found: the best configuration (a config spec) and every candidate
    as a table row."""

    study_name: str
    best_config: dict
    best_accuracy: float
    best_trial: int
    evaluations: int              # newly evaluated (not resumed) candidates
    metric: str                   # "accuracy" (labels) or "agreement" (with FP32 top-1)
    candidates: list[dict]
    progress: ProgressBar


@dataclass(frozen=True)
class Int16Reference:
    """The INT16 version of a configuration, scored: the upper end of the default target."""

    accuracy: float
    agreement: float
    logit_sqnr_db: float
    int16_nodes: int
    seconds: float
    mlflow_run_id: str | None
    config: dict
    progress: ProgressBar

    def row(self) -> dict:
        """Its row in the candidate table."""
        return {"stage": "int16 reference", "trial": "-", "int16_nodes": self.int16_nodes, "accuracy": self.accuracy,
                "agreement": self.agreement, "logit_sqnr_db": self.logit_sqnr_db, "seconds": round(self.seconds, 3),
                "mlflow_run_id": self.mlflow_run_id}


@dataclass(frozen=True)
class FeedbackResult:
    """What accuracy feedback chose (saved as ``sima``) and every candidate it evaluated."""

    study_name: str
    config: dict                  # the chosen configuration (a config spec with its INT16 nodes)
    int16_nodes: list[str]
    accuracy: float               # as scored during the search (fast mode if asked)
    target: float
    sima: str
    evaluations: int
    resumed: int                  # candidates taken from storage instead of evaluated
    candidates: list[dict]
    pareto: list[dict]            # {"trial", "int16_nodes", "accuracy"} on the front
    ranking: list[list]
    chosen_trial: int | None
    chosen_run_id: str | None     # the chosen candidate's MLflow run, when it has one
    progress: ProgressBar


def _after_candidate() -> None:
    _evaluated[0] += 1
    limit = os.environ.get(KILL_ENV)
    if limit and _evaluated[0] >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def _candidate_params(spec: dict, source: str, trial: Any) -> dict:
    return {"calibration_method": spec.get("calibration"), "weight_scheme": spec.get("weights"),
            "activation_scheme": spec.get("activations"), "requantization_mode": spec.get("requantization"),
            "bias_correction": spec.get("bias_correction"), "channel_equalization": spec.get("channel_equalization"),
            "int16_nodes": spec.get("int16_nodes", []), "int16_node_count": len(spec.get("int16_nodes", [])),
            "source": source, "trial_number": trial}


def _logger_for(run):
    return None if run is None else run.candidates()


def _log_candidate(logger, study: str, trial: Any, spec: dict, metrics: dict, source: str, run_name: str,
                   resumed: bool = False, tags: dict | None = None) -> str | None:
    if logger is None:
        return None
    from tasks.tracking import candidate_key, config_key

    key = candidate_key(study, trial) if isinstance(trial, int) else f"{study}#{trial}"
    json_artifacts = {"int16_nodes.json": spec.get("int16_nodes", [])} if len(spec.get("int16_nodes", [])) > 4 else None
    cfg = config_key(study, spec)
    run_id = logger.log(key, cfg_key=cfg, run_name=run_name, params=_candidate_params(spec, source, trial),
                        metrics=metrics, tags={"mixq_study": study, "mixq_resumed": str(bool(resumed)).lower(),
                                               "mixq_config": json.dumps(spec, sort_keys=True), **(tags or {})},
                        json_artifacts=json_artifacts)
    return run_id or logger.existing(key, cfg)      # already logged (by an earlier, killed run): its id


def _core_options(options: dict | None, base_spec: dict):
    """JSON options -> (core options dict, {field: {label: JSON value}})."""
    from core import CalibrationMethod
    from core.errors import QuantizationConfigError
    from core.search.options import describe
    from tasks.data import scheme_from_spec

    opts = DEFAULT_SEARCH_OPTIONS if options is None else options
    unknown = set(opts) - set(_OPTION_FIELDS)
    if unknown:
        raise QuantizationConfigError(f"unknown option(s) {sorted(unknown)}; options are {sorted(_OPTION_FIELDS)}")
    base = build_config(base_spec)
    core_opts, labels = {}, {}
    for key, values in opts.items():
        if not isinstance(values, list) or not values:
            raise QuantizationConfigError(f"option {key!r} must be a non-empty list, got {values!r}")
        field = _OPTION_FIELDS[key]
        objs = []
        for v in values:
            if key == "calibration":
                obj = CalibrationMethod.from_str(v)
            elif key == "weights":
                obj = scheme_from_spec(base.weight_quantization_scheme, v, "weights")
            elif key == "activations":
                obj = scheme_from_spec(base.activation_quantization_scheme, v, "activations")
            else:
                obj = bool(v)
            objs.append(obj)
            labels.setdefault(field, {})[describe(obj)] = v
        core_opts[field] = objs
    return core_opts, labels


def _spec_from_labels(chosen: dict, labels: dict, base_spec: dict) -> dict:
    spec = config_spec_of(build_config(base_spec))
    inverse = {v: k for k, v in _OPTION_FIELDS.items()}
    for field, label in chosen.items():
        if field not in labels or label not in labels[field]:
            continue
        key, value = inverse[field], labels[field][label]
        if key in ("weights", "activations"):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return config_spec_of(build_config(spec))


def _metric_dict(scorer, extra: dict) -> dict:
    last = dict(scorer.last)
    out = {"accuracy": last.get("accuracy"), "agreement": last.get("agreement"),
           "logit_sqnr_db": last.get("logit_sqnr_db")}
    if "top1_accuracy" in last:
        out["top1_accuracy"] = last["top1_accuracy"]
    out.update(extra)
    return out


@task(name="options-search")
def options_search_task(model_path: str, statistics_path: str, evaluation: dict, options: dict | None = None,
                        base_config: dict | None = None, storage: str | None = None,
                        run: ParentRun | None = None, progress: ProgressBar | None = None, fast_mode: bool = True,
                        max_trials: int | None = None, calibration_seconds: float = 0.0,
                        workers: dict | None = None) -> OptionsResult:
    """Every combination of ``options`` on one calibration; returns the candidates and the best
    one's config spec. Candidates go to ``run`` as MLflow child runs. ``workers`` (see
    :func:`tasks.fanout.worker_pool`): the candidates are evaluated by ``trial-batch`` flow runs."""
    from core.errors import QuantizationConfigError

    log = _logger()
    net = get_net(model_path)
    stats = load_statistics(statistics_path)
    scorer = scorer_for(model_path, evaluation)
    base_spec = dict(base_config or {})
    core_opts, labels = _core_options(options, base_spec)
    study = "mixq-options-" + _digest(model_sha256(file_stamp(model_path)), os.path.basename(statistics_path),
                                      scorer.samples.digest(), base_spec, options, fast_mode, max_trials)
    logger = _logger_for(run)
    bar = progress or ProgressBar(None, 0)
    rows: list[dict] = []

    def on_candidate(c) -> None:
        nonlocal bar
        spec = _spec_from_labels(c.options, labels, base_spec)
        metrics = {} if c.error else _metric_dict(scorer, {})
        metrics.update({"int16_node_count": 0, "quantize_evaluate_seconds": c.seconds,
                        "calibration_seconds": calibration_seconds})
        run_id = _log_candidate(logger, study, c.trial_number, spec, metrics, "options",
                                f"options-{c.trial_number}")
        if workers and run_id:            # a worker evaluated (and logged) it: its metrics, not this scorer's
            metrics = dict(logger.client.get_run(run_id).data.metrics)
        rows.append(_option_row(c, spec, metrics, run_id))
        log.info("options candidate %d: %s %s -> %s", c.trial_number, spec["calibration"],
                 {"w": spec["weights"], "a": spec["activations"]}, c.error or f"{c.accuracy:.4f}")
        bar = bar.step(f"options #{c.trial_number}")
        _after_candidate()

    executor = None
    if workers:
        from tasks.fanout import worker_pool

        executor = worker_pool(workers, "options", storage, run, model_path=model_path,
                               statistics_path=statistics_path, evaluation=evaluation, options=options,
                               base_config=base_spec, fast_mode=fast_mode)
    result = net.search_quantization_options(stats, scorer.dataset, scorer, core_opts,
                                             base_config=build_config(base_spec), max_trials=max_trials,
                                             storage=storage, study_name=study, callbacks=[on_candidate],
                                             fast_mode=fast_mode, executor=executor)
    for c in result.candidates:
        if c.resumed:
            spec = _spec_from_labels(c.options, labels, base_spec)
            metrics = {"accuracy": c.accuracy, "int16_node_count": 0}
            run_id = _log_candidate(logger, study, c.trial_number, spec, metrics, "options",
                                    f"options-{c.trial_number}", resumed=True)
            rows.append(_option_row(c, spec, metrics, run_id))
    rows.sort(key=lambda r: r["trial"])
    best = _spec_from_labels(result.best.options, labels, base_spec)
    if not math.isfinite(result.best.accuracy):
        raise QuantizationConfigError("the options search found no usable configuration")
    return OptionsResult(study, best, float(result.best.accuracy), result.best.trial_number, result.evaluations,
                         scorer.metric, rows, bar)


def _option_row(c, spec: dict, metrics: dict, run_id: str | None) -> dict:
    return {"stage": "options", "trial": c.trial_number, "calibration": spec["calibration"],
            "weights": _scheme_label(spec["weights"]), "activations": _scheme_label(spec["activations"]),
            "int16_nodes": 0, "accuracy": None if c.error or not math.isfinite(c.accuracy) else c.accuracy,
            "agreement": metrics.get("agreement"), "logit_sqnr_db": metrics.get("logit_sqnr_db"),
            "seconds": round(c.seconds, 3), "error": c.error, "resumed": bool(c.resumed), "mlflow_run_id": run_id,
            "config": spec}


def _scheme_label(s: dict) -> str:
    return (f"{'asym' if s.get('asymmetric') else 'sym'}-{'per_channel' if s.get('per_channel') else 'per_tensor'}"
            f"-{s.get('bits', 8)}")


@task(name="int16-reference")
def reference_task(model_path: str, statistics_path: str, evaluation: dict, config: dict,
                   run: ParentRun | None = None, progress: ProgressBar | None = None, fast_mode: bool = True,
                   study: str = "mixq-reference") -> Int16Reference:
    """The INT16 version of ``config`` (every node at 16 bits), scored: the upper end of the
    accuracy-feedback target."""
    net = get_net(model_path)
    stats = load_statistics(statistics_path)
    scorer = scorer_for(model_path, evaluation)
    spec = dict(config, preset="int16", weights={**config.get("weights", {}), "bits": 16},
                activations={**config.get("activations", {}), "bits": 16, "asymmetric": False}, int16_nodes=[])
    t0 = time.perf_counter()
    model = net.quantize(stats, build_config(spec))
    metrics = scorer.evaluate(model, fast_mode=fast_mode)
    seconds = time.perf_counter() - t0
    n16 = int16_node_count(model)
    full = config_spec_of(build_config(spec))
    run_id = _log_candidate(_logger_for(run), study, "int16", full,
                            {"accuracy": metrics["accuracy"], "agreement": metrics["agreement"],
                             "logit_sqnr_db": metrics["logit_sqnr_db"], "int16_node_count": n16,
                             "quantize_evaluate_seconds": seconds}, "int16 reference", "int16-reference")
    bar = (progress or ProgressBar(None, 0)).step("int16 reference")
    return Int16Reference(metrics["accuracy"], metrics["agreement"], metrics["logit_sqnr_db"], n16, seconds, run_id,
                          full, bar)


@task(name="accuracy-feedback")
def accuracy_feedback_task(model_path: str, statistics_path: str, evaluation: dict, config: dict, target: float,
                           output_dir: str, model_name: str, max_trials: int = 12, timeout: float | None = None,
                           storage: str | None = None, run: ParentRun | None = None,
                           progress: ProgressBar | None = None, fast_mode: bool = True,
                           calibration_seconds: float = 0.0, ranking_samples: int = 16,
                           workers: dict | None = None) -> FeedbackResult:
    """The fewest INT16 nodes on top of ``config`` that reach ``target``; saves the chosen model
    as ``<output_dir>/<model_name>.sima`` and returns every candidate and the Pareto front.
    ``workers``: the candidates are evaluated by ``trial-batch`` flow runs (independent ones at
    the same time); the exact confirmation runs here."""
    log = _logger()
    net = get_net(model_path)
    stats = load_statistics(statistics_path)
    scorer = scorer_for(model_path, evaluation)
    base_spec = config_spec_of(build_config(config))
    study = "mixq-accuracy-feedback-" + _digest(model_sha256(file_stamp(model_path)), os.path.basename(statistics_path),
                                                scorer.samples.digest(), base_spec, round(float(target), 9),
                                                fast_mode, int(ranking_samples))
    logger = _logger_for(run)
    bar = progress or ProgressBar(None, 0)
    run_ids: dict[int, str | None] = {}

    def spec_for(nodes) -> dict:
        return dict(base_spec, int16_nodes=sorted(set(base_spec.get("int16_nodes", [])) | set(nodes)))

    def on_candidate(c) -> None:
        nonlocal bar
        metrics = _metric_dict(scorer, {"int16_node_count": len(c.int16_nodes), "quantize_evaluate_seconds": c.seconds,
                                        "calibration_seconds": calibration_seconds, "target": target,
                                        "feasible": float(c.feasible)})
        run_ids[c.trial_number] = _log_candidate(logger, study, c.trial_number, spec_for(c.int16_nodes), metrics,
                                                 c.source, f"af-{c.trial_number}-{len(c.int16_nodes)}x16")
        log.info("accuracy feedback #%d (%s): %d INT16 node(s) -> %.4f%s", c.trial_number, c.source,
                 len(c.int16_nodes), c.accuracy, " (meets target)" if c.feasible else "")
        bar = bar.step(f"accuracy feedback #{c.trial_number}")
        _after_candidate()

    executor = None
    if workers:
        from tasks.fanout import worker_pool

        executor = worker_pool(workers, "feedback", storage, run, model_path=model_path,
                               statistics_path=statistics_path, evaluation=evaluation, base_config=base_spec,
                               fast_mode=fast_mode, model_name=model_name)
    model = net.quantize_with_accuracy_feedback(
        stats, scorer.dataset, build_config(base_spec), scorer, float(target), model_name=model_name,
        max_trials=int(max_trials), timeout=timeout, storage=storage, study_name=study, callbacks=[on_candidate],
        fast_mode=fast_mode, ranking_samples=int(ranking_samples), executor=executor)
    r = model.accuracy_feedback
    for c in r.candidates:
        if c.resumed and c.trial_number not in run_ids:
            run_ids[c.trial_number] = _log_candidate(
                logger, study, c.trial_number, spec_for(c.int16_nodes),
                {"accuracy": c.accuracy, "int16_node_count": len(c.int16_nodes), "target": target,
                 "feasible": float(c.feasible)}, c.source, f"af-{c.trial_number}-{len(c.int16_nodes)}x16",
                resumed=True)
    if logger is not None:                     # the ids of candidates logged by an earlier (killed) run
        from tasks.tracking import candidate_key

        for c in r.candidates:
            if run_ids.get(c.trial_number) is None:
                run_ids[c.trial_number] = logger.existing(candidate_key(study, c.trial_number))
    model.save(model_name, output_dir)
    sima = os.path.abspath(os.path.join(output_dir, model_name + ".sima"))
    chosen = min((c for c in r.candidates if c.feasible and set(c.int16_nodes) == set(r.int16_nodes)),
                 key=lambda c: c.trial_number, default=None)
    rows = [{"stage": "accuracy feedback", "trial": c.trial_number, "source": c.source,
             "int16_nodes": len(c.int16_nodes), "int16_node_names": list(c.int16_nodes), "accuracy": c.accuracy,
             "feasible": c.feasible, "seconds": round(c.seconds, 3), "resumed": c.resumed,
             "mlflow_run_id": run_ids.get(c.trial_number)} for c in sorted(r.candidates, key=lambda c: c.trial_number)]
    return FeedbackResult(
        study_name=study, config=spec_for(r.int16_nodes), int16_nodes=list(r.int16_nodes), accuracy=float(r.accuracy),
        target=float(target), sima=sima, evaluations=r.evaluations, resumed=sum(1 for c in r.candidates if c.resumed),
        candidates=rows,
        pareto=[{"trial": c.trial_number, "int16_nodes": len(c.int16_nodes), "accuracy": c.accuracy}
                for c in r.pareto_front],
        ranking=[[n, float(s)] for n, s in r.ranking[:50]],
        chosen_trial=None if chosen is None else chosen.trial_number,
        chosen_run_id=None if chosen is None else run_ids.get(chosen.trial_number), progress=bar)


@task(name="trial-batch")
def trial_batch_task(session: str, storage: str, model_path: str, statistics_path: str, evaluation: dict,
                     fast_mode: bool = True, experiment_id: str | None = None, parent_run_id: str | None = None,
                     idle_timeout: float = 900.0) -> dict:
    """A worker's share of a search on several workers, for the whole search: the search's
    session (a small Optuna study in the shared storage, :mod:`tasks.fanout`) names the stage
    whose study to serve; each stage is served (:func:`serve_stage`) until the search closes its
    study, then the next one, until the search closes the session. The model, data and FP32
    reference stay loaded between stages."""
    import time

    import optuna

    from core.search.parallel import CLOSED, open_storage, worker_name
    from tasks.fanout import CURRENT

    log = _logger()
    sess = optuna.load_study(study_name=session, storage=open_storage(storage))
    if os.path.exists(model_path):         # loaded (and the FP32 reference computed) while the search prepares
        scorer_for(model_path, evaluation)
    served, done = [], set()
    idle_since = time.monotonic()
    while True:
        attrs = sess.user_attrs
        if attrs.get(CLOSED):
            break
        cur = attrs.get(CURRENT)
        if cur and cur["study_name"] not in done:
            done.add(cur["study_name"])
            served.append(serve_stage(cur["stage"], cur["study_name"], storage, model_path, statistics_path,
                                      evaluation, cur.get("base_config") or {}, cur.get("options"), fast_mode,
                                      cur.get("model_name"), experiment_id, parent_run_id, idle_timeout))
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > idle_timeout:
            log.warning("session %s: idle for %.0f s, leaving", session, idle_timeout)
            break
        else:
            time.sleep(0.2)
    return {"worker": worker_name(), "session": session, "stages": served}


def serve_stage(stage: str, study_name: str, storage: str, model_path: str, statistics_path: str,
                evaluation: dict, base_config: dict, options: dict | None = None, fast_mode: bool = True,
                model_name: str | None = None, experiment_id: str | None = None,
                parent_run_id: str | None = None, idle_timeout: float = 900.0) -> dict:
    """Serve one stage's shared Optuna study (:func:`core.search.parallel.serve_study`) --
    evaluate the candidates the parent enqueued (and TPE trials when it asks) until it closes the
    study. ``stage``: ``"options"`` (a grid point per trial) or ``"feedback"`` (an INT16 node set
    per trial; order and target from the study's user attributes). Each candidate is logged as an
    MLflow child run of ``parent_run_id`` (tagged with the worker) before its trial is finished, so
    a retried trial finds it instead of logging it twice."""
    import optuna

    from core.errors import InputError
    from core.search import Evaluator
    from core.search.accuracy_feedback import int16_trial_objective
    from core.search.options import options_trial_objective
    from core.search.parallel import open_storage, serve_study, worker_name
    from tasks.tracking import CandidateLogger

    log = _logger()
    for what, path in (("model", model_path), ("calibration statistics", statistics_path)):
        if not os.path.exists(path):
            raise InputError(f"trial batch on {worker_name()}: the search's {what} {path!r} is not on this machine; "
                             f"share MIXQ_RESULTS_DIR and MIXQ_CACHE_DIR at the same path on every worker "
                             f"(docs/scale-out.md)")
    net = get_net(model_path)
    stats = load_statistics(statistics_path)
    scorer = scorer_for(model_path, evaluation)
    evaluator = Evaluator(scorer.dataset, net.input_names, net.input_shapes(), scorer, batch_size=32,
                          fast_mode=fast_mode)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage),
                              sampler=optuna.samplers.TPESampler(multivariate=True, constant_liar=True))
    logger = CandidateLogger(experiment_id, parent_run_id) if experiment_id and parent_run_id else None
    me = worker_name()
    base_spec = dict(base_config or {})
    ran: list[int] = []

    def note(run_id: str | None, trial) -> None:
        trial.set_user_attr("mlflow_run_id", run_id or "")
        ran.append(trial.number)
        _after_candidate()

    if stage == "options":
        core_opts, labels = _core_options(options, base_spec)

        def on_option(c, trial) -> None:
            spec = _spec_from_labels(c.options, labels, base_spec)
            metrics = {} if c.error else _metric_dict(scorer, {})
            metrics.update({"int16_node_count": 0, "quantize_evaluate_seconds": c.seconds})
            run_id = _log_candidate(logger, study_name, c.trial_number, spec, metrics, "options",
                                    f"options-{c.trial_number}", tags={"mixq_worker": me})
            log.info("%s: options candidate %d -> %s", me, c.trial_number, c.error or f"{c.accuracy:.4f}")
            note(run_id, trial)

        objective = options_trial_objective(net, stats, evaluator, core_opts, base_config=build_config(base_spec),
                                            callbacks=[on_option], model_name=model_name)

        def tpe_objective(space):
            return objective
    elif stage == "feedback" and study.user_attrs.get("mixq_kind") == RANKING_KIND:
        # the sensitivity ranking's probes: float passes of the INT8 program with node sets in float
        from core.search.accuracy_feedback import quantize_with
        from core.search.ranking import SimulatedOutputError, ranking_trial_objective

        built: dict = {}

        def error_for(st):
            if "error" not in built:
                import numpy as np

                int8 = quantize_with(net, stats, build_config(base_spec), None)
                head = evaluator.samples[:int(st.user_attrs["mixq_samples"])]
                built["error"] = SimulatedOutputError(
                    net, int8, {n: np.concatenate([x[n] for x in head]) for n in net.input_names})
            return built["error"]

        def on_probe(trial) -> None:
            ran.append(trial.number)

        probe = ranking_trial_objective(error_for)

        def objective(trial):
            value = probe(trial)
            on_probe(trial)
            return value

        tpe_objective = None
    elif stage == "feedback":
        order = list(study.user_attrs["mixq_order"])
        target = float(study.user_attrs["mixq_target"])

        def spec_for(nodes) -> dict:
            return dict(base_spec, int16_nodes=sorted(set(base_spec.get("int16_nodes", [])) | set(nodes)))

        def on_set(c, trial) -> None:
            metrics = _metric_dict(scorer, {"int16_node_count": len(c.int16_nodes),
                                            "quantize_evaluate_seconds": c.seconds, "target": target,
                                            "feasible": float(c.feasible)})
            run_id = _log_candidate(logger, study_name, c.trial_number, spec_for(c.int16_nodes), metrics, c.source,
                                    f"af-{c.trial_number}-{len(c.int16_nodes)}x16", tags={"mixq_worker": me})
            log.info("%s: accuracy feedback #%d (%s): %d INT16 node(s) -> %.4f", me, c.trial_number, c.source,
                     len(c.int16_nodes), c.accuracy)
            note(run_id, trial)

        config = build_config(base_spec)
        objective = int16_trial_objective(net, stats, evaluator, config, target, order, callbacks=[on_set],
                                          model_name=model_name)

        def tpe_objective(space):
            return int16_trial_objective(net, stats, evaluator, config, target, order, tpe_space=space,
                                         callbacks=[on_set], model_name=model_name)
    else:
        from core.errors import QuantizationConfigError

        raise QuantizationConfigError(f"trial_batch: unknown stage {stage!r} (options, feedback)")
    log.info("%s serves study %s (%s)", me, study_name, stage)
    count = serve_study(study, objective, tpe_objective=tpe_objective, idle_timeout=idle_timeout)
    return {"worker": me, "study": study_name, "stage": stage, "trials": count, "evaluated": ran}
