"""The specification's "cycling through quantization options" as one function.

Calibration method x weight scheme x activation scheme x channel equalization x bias
correction x learned rounding (``adaround``: None/False for round-to-nearest, True or an
``AdaRoundMethod``) x output-aware activation ranges (``output_aware_ranges``: None/False for
the calibrated ranges, True or a ``RangeSearchMethod``; candidates with either need calibration
samples, not only statistics), each
candidate quantized from one shared calibration pass and scored by an evaluator. A combination
mixq rejects (e.g. 4-bit weights without learned rounding) is a candidate with an error.
Optuna runs it: a ``GridSampler`` visits every combination when the grid fits the trial
budget, TPE samples it otherwise. Finished candidates persist in ``storage`` like the
accuracy-feedback search, so a rerun resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import MixqError, QuantizationConfigError
from core.quantization.params import (
    AdaRoundMethod,
    CalibrationMethod,
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    QuantizationParams,
    QuantizationScheme,
    default_quantization,
    quantization_scheme,
)

log = logging.getLogger("mixq")

__all__ = ["OptionCandidate", "OptionsSearchResult", "search_quantization_options", "options_trial_objective",
           "DEFAULT_OPTIONS"]

DEFAULT_OPTIONS: dict[str, list] = {
    "calibration_method": [MinMaxMethod(), MovingAverageMinMaxMethod(), HistogramMSEMethod(1024),
                           HistogramEntropyMethod(), HistogramPercentileMethod(99.9)],
    "weight_quantization_scheme": [quantization_scheme(asymmetric=False, per_channel=True),
                                   quantization_scheme(asymmetric=False, per_channel=False)],
    "activation_quantization_scheme": [quantization_scheme(asymmetric=False, per_channel=False),
                                       quantization_scheme(asymmetric=True, per_channel=False)],
    "channel_equalization": [False],
    "bias_correction": [False],
    "adaround": [None],
    "output_aware_ranges": [None],
}


def describe(value: Any) -> str:
    """A short stable label for an option value (also its Optuna grid choice)."""
    if isinstance(value, QuantizationScheme):
        return (f"{'asym' if value.asymmetric else 'sym'}-{'per_channel' if value.per_channel else 'per_tensor'}"
                f"-{value.bits}")
    if isinstance(value, CalibrationMethod):
        return repr(value)
    if value is None or value is False:
        return "off" if value is False else "None"
    if isinstance(value, AdaRoundMethod):
        return repr(value)
    return repr(value)


@dataclass(frozen=True)
class OptionCandidate:
    options: dict                  # field name -> label (describe())
    config: QuantizationParams
    accuracy: float
    trial_number: int
    seconds: float
    error: str = ""                # a configuration mixq rejected (e.g. not implemented)
    resumed: bool = False


@dataclass
class OptionsSearchResult:
    best: OptionCandidate
    candidates: list[OptionCandidate]
    evaluations: int
    exhaustive: bool
    study_name: str


def search_quantization_options(
    net,
    statistics,
    evaluator: Callable[[Any], float],
    options: dict[str, Sequence] | None = None,
    *,
    base_config: QuantizationParams = default_quantization,
    max_trials: int | None = None,
    timeout: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    study_key: str = "",
    seed: int = 0,
    callbacks: Iterable[Callable[[OptionCandidate], None]] = (),
    model_name: str | None = None,
    executor: Callable[..., None] | None = None,
) -> OptionsSearchResult:
    """Evaluate combinations of ``options`` (field name -> values; ``DEFAULT_OPTIONS`` fills the
    fields not given) on top of ``base_config``. Exhaustive when the grid has at most
    ``max_trials`` points (default: the whole grid), TPE otherwise. ``executor``
    (:class:`core.search.parallel.TrialPool`): the grid points are enqueued in grid order (so
    trial numbers, and the tie-break between equal scores, do not depend on the workers) and
    evaluated by workers (:func:`options_trial_objective`); TPE trials are sampled by them."""
    import optuna

    from core.search.accuracy_feedback import open_study

    grid, labels = _grid(options)
    size = math.prod(len(v) for v in grid.values())
    budget = size if max_trials is None else int(max_trials)
    exhaustive = size <= budget
    if study_name is None:
        h = hashlib.sha256(repr((net.graph.name, study_key, repr(base_config), labels, exhaustive)).encode())
        study_name = f"mixq-options-{net.graph.name}-{h.hexdigest()[:16]}"
    study = open_study(storage, study_name, seed, False, ["maximize"], ["accuracy"])   # the objective is the score
    if exhaustive:
        study.sampler = optuna.samplers.GridSampler(labels, seed=seed)
    callbacks = list(callbacks)
    candidates: list[OptionCandidate] = []
    done: dict[tuple, float] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        key = tuple(t.params.get(k) for k in grid)
        if None in key:
            continue
        acc = float(t.user_attrs.get("accuracy", float("nan")))
        done[key] = acc
        cfg = _config_or_base(base_config, grid, labels, dict(zip(grid, key)))[0]
        candidates.append(OptionCandidate(dict(zip(grid, key)), cfg, acc, t.number, 0.0,
                                          str(t.user_attrs.get("error", "")), resumed=True))
    evaluations = 0

    def objective(trial):
        nonlocal evaluations
        chosen = {k: trial.suggest_categorical(k, labels[k]) for k in grid}
        key = tuple(chosen[k] for k in grid)
        if key in done:
            acc = done[key]
            trial.set_user_attr("accuracy", acc)
            return acc if math.isfinite(acc) else -math.inf
        cfg, error = _config_or_base(base_config, grid, labels, chosen)
        t0 = time.perf_counter()
        try:
            if error:
                raise QuantizationConfigError(error)
            model = net.quantize(statistics, cfg, model_name)   # statistics: CalibrationStatistics or samples
            acc = float(evaluator(model))
        except MixqError as e:               # e.g. an option this version does not implement
            acc, error = float("nan"), error or f"{type(e).__name__}: {e}"
            trial.set_user_attr("error", error)
        seconds = time.perf_counter() - t0
        trial.set_user_attr("accuracy", acc)
        trial.set_user_attr("seconds", seconds)
        done[key] = acc
        evaluations += 1
        cand = OptionCandidate(chosen, cfg, acc, trial.number, seconds, error)
        candidates.append(cand)
        log.info("options search: %s -> %s", chosen, error or f"{acc:.4f}")
        for cb in callbacks:
            cb(cand)
        return acc if math.isfinite(acc) else -math.inf

    finished = len(done)
    remaining = (size if exhaustive else budget) - finished
    if remaining > 0 and executor is None:
        study.optimize(objective, n_trials=remaining, timeout=timeout, gc_after_trial=False)
    elif remaining > 0:
        seen = {c.trial_number for c in candidates}
        try:
            if exhaustive:
                todo = [dict(zip(grid, key)) for key in itertools.product(*(labels[k] for k in grid))
                        if key not in done]
                for params in todo:
                    study.enqueue_trial(params, skip_if_exists=True)
                executor(study, len(todo), "enqueued", None)
            else:
                executor(study, remaining, "tpe", list(grid))
        finally:
            if hasattr(executor, "close"):
                executor.close(study)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = tuple(t.params.get(k) for k in grid)
            if t.number in seen or None in key or "accuracy" not in t.user_attrs or key in done:
                continue
            acc = float(t.user_attrs["accuracy"])
            done[key] = acc
            evaluations += 1
            chosen = dict(zip(grid, key))
            cand = OptionCandidate(chosen, _config_or_base(base_config, grid, labels, chosen)[0], acc, t.number,
                                   float(t.user_attrs.get("seconds", 0.0)), str(t.user_attrs.get("error", "")))
            candidates.append(cand)
            for cb in callbacks:
                cb(cand)
    scored = [c for c in candidates if math.isfinite(c.accuracy)]
    if not scored:
        raise QuantizationConfigError("no option combination could be quantized: " +
                                      "; ".join(sorted({c.error for c in candidates})))
    best = max(scored, key=lambda c: (c.accuracy, -c.trial_number))
    return OptionsSearchResult(best, candidates, evaluations, exhaustive, study_name)


def options_trial_objective(net, statistics, evaluator: Callable[[Any], float], options: dict[str, Sequence] | None,
                            *, base_config: QuantizationParams = default_quantization,
                            callbacks: Iterable[Callable[[OptionCandidate, Any], None]] = (),
                            model_name: str | None = None):
    """The objective a worker runs for a parallel :func:`search_quantization_options`: the trial
    (enqueued grid point, retried, or sampled) names one combination of ``options``; callbacks
    get each evaluated ``(OptionCandidate, trial)`` before the trial is finished."""
    grid, labels = _grid(options)
    callbacks = list(callbacks)

    def objective(trial) -> float:
        chosen = {k: trial.suggest_categorical(k, labels[k]) for k in grid}
        cfg, error = _config_or_base(base_config, grid, labels, chosen)
        t0 = time.perf_counter()
        try:
            if error:
                raise QuantizationConfigError(error)
            model = net.quantize(statistics, cfg, model_name)
            acc = float(evaluator(model))
        except MixqError as e:
            acc, error = float("nan"), error or f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        cand = OptionCandidate(chosen, cfg, acc, trial.number, seconds, error)
        for cb in callbacks:
            cb(cand, trial)
        if error:
            trial.set_user_attr("error", error)
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("accuracy", acc)
        return acc if math.isfinite(acc) else -math.inf

    return objective


def _grid(options: dict[str, Sequence] | None) -> tuple[dict[str, list], dict[str, list[str]]]:
    """The option grid (``DEFAULT_OPTIONS`` for the fields not given) and its labels."""
    grid = {k: list(v) for k, v in DEFAULT_OPTIONS.items()}
    for k, v in (options or {}).items():
        if k not in grid:
            raise QuantizationConfigError(f"unknown option {k!r}; options are {sorted(grid)}")
        v = list(v)
        if not v:
            raise QuantizationConfigError(f"option {k!r} has no values")
        grid[k] = v
    labels = {k: [describe(v) for v in vals] for k, vals in grid.items()}
    for k, ls in labels.items():
        if len(set(ls)) != len(ls):
            raise QuantizationConfigError(f"option {k!r} lists the same value twice: {ls}")
    return grid, labels


def _config(base: QuantizationParams, grid, labels, chosen: dict) -> QuantizationParams:
    values = {k: grid[k][labels[k].index(chosen[k])] for k in grid}
    return dataclasses.replace(base, **values)


def _config_or_base(base: QuantizationParams, grid, labels, chosen: dict) -> tuple[QuantizationParams, str]:
    """The candidate's configuration and "", or ``base`` and the reason a combination is invalid
    (e.g. 4-bit weights without learned rounding): such a candidate is scored as an error."""
    try:
        return _config(base, grid, labels, chosen), ""
    except QuantizationConfigError as e:
        return base, f"{type(e).__name__}: {e}"
