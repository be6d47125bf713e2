"""Accuracy feedback: the fewest INT16 nodes that reach a target accuracy.

The search (every candidate is one quantize + one evaluation; calibration runs once):

1. INT8 (no INT16 node). Done if it reaches the target.
2. Prefixes of the sensitivity ranking (:mod:`core.search.ranking`), bracketing the smallest
   prefix that reaches the target between a miss ``lo`` (INT8 at first) and a hit ``hi``:
   * with a ``surrogate`` (the simulated output error of a node set,
     :class:`~core.search.ranking.SimulatedOutputError`: float passes over a few samples, no
     evaluation), accuracy is predicted from the prefix's error ``e``, fitted to the prefixes
     evaluated so far (:class:`_PrefixModel`: for fraction scores a loss ``1 - a = L * e**p``).
     The next probe is the largest prefix the model predicts to miss, inside the bracket: when the
     model is right, that probe misses and
     the next one, one node longer, hits -- INT8 + 2 evaluations for any answer. A probe on the
     same side of the target as the previous one is followed by a bisection step (doubling
     while no prefix has hit), so a wrong model costs at most about twice bisection's steps;
   * without one: doubling k = 1, 2, 4, ... then bisection.
   The last step up is every ranked node at INT16; if even that misses:
   :class:`AccuracyTargetError` with the best accuracy reached. Greedy fallback (NNCF / Neural
   Compressor: promote one node at a time in ranking order) evaluates k + 1 candidates to find
   the k-node prefix.
3. Measured accuracy is not monotone (a finite evaluation set): prefixes below the best one that
   were never evaluated are checked, smallest first -- all of them without a surrogate (never
   more nodes than greedy's), and with one only those the fitted model puts within its largest
   residual of the target (a prefix predicted far below it is not worth an evaluation).
4. Pruning: drop nodes from the best set, least sensitive first, keeping each drop that still
   reaches the target -- it can go below the smallest prefix.
5. With budget left, Optuna's TPE explores subsets of the top ranked nodes (the history of
   steps 1-4 is in the study, so TPE starts from it).
6. Exact confirmation (``confirm``: an exact-execution evaluator, given when the search scores
   in fast mode): the answer is re-scored bit-accurately. Fast mode is within a few output steps
   of exact execution, so a candidate that reaches the target in fast mode may miss it exactly:
   then the next feasible candidates (fewest INT16 nodes first) are confirmed, then longer
   ranking prefixes (growing by half), until one reaches the target exactly; if none does,
   :class:`AccuracyTargetError` with the best exact accuracy. The exact scores are kept in the
   study's user attributes (a resumed search does not repeat them) and in
   ``AccuracyFeedbackResult.confirmations``.

Every finished candidate is an Optuna trial in ``storage`` (a journal file by default, any
Optuna RDB URL accepted): a search that is killed and rerun with the same arguments reopens
the study, reuses the finished trials without re-evaluating them, and continues. Callbacks
receive each newly evaluated :class:`Candidate` (flows record them, e.g. in MLflow).
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import AccuracyTargetError, QuantizationConfigError
from core.quantization.params import QuantizationParams, QuantizationPrecision
from core.search.parallel import DUPLICATE, fixed_params

log = logging.getLogger("mixq")

__all__ = ["Candidate", "Confirmation", "AccuracyFeedbackResult", "search_int16_nodes", "int16_trial_objective",
           "DEFAULT_STORAGE"]

DEFAULT_STORAGE = "mixq-search.journal"
_PARAM = "int16:"


@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration: its INT16 nodes and accuracy."""

    int16_nodes: tuple[str, ...]
    accuracy: float
    feasible: bool          # accuracy >= target
    source: str             # "int8", "all ranked", "prefix k", "prune", "tpe"
    trial_number: int
    seconds: float          # quantize + evaluate time (0 for trials resumed from storage)
    resumed: bool = False


@dataclass(frozen=True)
class Confirmation:
    """An exact-execution score of a node set (step 6)."""

    int16_nodes: tuple[str, ...]
    accuracy: float             # exact execution (fast_mode=False)
    feasible: bool              # accuracy >= target
    resumed: bool = False       # read from the study, not re-scored


@dataclass
class AccuracyFeedbackResult:
    model: Any                                   # the chosen core.model.Model
    int16_nodes: list[str]
    accuracy: float
    target_accuracy: float
    candidates: list[Candidate]                  # every finished candidate, resumed ones included
    evaluations: int                             # candidates evaluated by this call
    ranking: list[tuple[str, float]]
    study_name: str
    pareto_front: list[Candidate] = field(default_factory=list)   # accuracy vs INT16 count
    settled_after: int = 0      # evaluations by this call when the prefix search (steps 1-3) was settled
    exact_accuracy: float | None = None   # the answer's exact score (None: the search scored exactly)
    confirmations: list[Confirmation] = field(default_factory=list)   # step 6, in order

    def exact(self, nodes: Iterable[str]) -> float | None:
        """The exact score of ``nodes`` if step 6 measured it."""
        key = frozenset(nodes)
        return next((c.accuracy for c in self.confirmations if frozenset(c.int16_nodes) == key), None)


def open_study(storage: Any, study_name: str, seed: int, multi_objective: bool,
                directions: list[str] | None = None, metric_names: list[str] | None = None):
    """Create or load the study; ``metric_names`` name its objectives (what optuna-dashboard shows
    instead of "Objective 0")."""
    import optuna

    from core.search.parallel import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage)          # None, a journal path, an RDB URL (heartbeats) or a storage
    # explicit, not Optuna's defaults (they changed between versions): with several workers a
    # running trial counts as a bad one (constant liar), so they do not sample the same subset
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if directions is None:
        directions = ["maximize", "minimize"] if multi_objective else ["minimize"]
    if metric_names is None:
        metric_names = (["accuracy", "INT16 nodes"] if multi_objective
                        else ["INT16 nodes if the target is met, else nodes + 1 + shortfall"])
    study = optuna.create_study(study_name=study_name, storage=st, load_if_exists=True,
                                directions=directions, sampler=sampler)
    if study.metric_names != metric_names and len(metric_names) == len(study.directions):
        study.set_metric_names(metric_names)
    return study


class _PrefixModel:
    """Accuracy of ranking prefixes predicted from the surrogate's error ``e(k)`` with the first
    ``k`` ranked nodes promoted, fitted to the prefixes evaluated so far.

    Scores that look like fractions (all <= 1) are taken as bounded by 1, the float model's: the
    loss ``1 - a`` follows a power law ``L * e**p`` (a line in log-log; ``p = 1`` while a single
    point is known). On MobileNetV2 the loss falls faster than the error (p about 1.4-2: small
    output noise rarely moves the arg max), so a fixed linear model overshoots. Other scores: a
    line ``A - c * e`` once two prefixes are known."""

    def __init__(self, order: Sequence[str], target: float, surrogate, done: dict):
        self.order, self.target, self.surrogate, self.done = list(order), target, surrogate, done

    def error(self, k: int) -> float:
        return float(self.surrogate(self.order[:k]))

    def predictor(self) -> tuple[Callable[[float], float], float] | None:
        """``(accuracy as a function of e, largest residual)``, or None without a usable fit."""
        if self.surrogate is None:
            return None
        pts = [(self.error(k), self.done[frozenset(self.order[:k])]) for k in range(len(self.order) + 1)
               if frozenset(self.order[:k]) in self.done]
        if not pts:
            return None
        e = np.array([x for x, _ in pts])
        a = np.array([y for _, y in pts])
        if a.max() <= 1.0 and self.target <= 1.0:
            use = [(x, 1.0 - y) for x, y in pts if y < 1.0 and x > 0]
            if not use:
                return None
            if len(use) == 1:
                p, log_l = 1.0, float(np.log(use[0][1]) - np.log(use[0][0]))
            else:
                lx = np.log([x for x, _ in use])
                if np.ptp(lx) == 0:
                    return None
                p, log_l = (float(v) for v in np.polyfit(lx, np.log([y for _, y in use]), 1))
                if not p > 0:
                    return None

            def predict(x: float) -> float:
                return 1.0 - float(np.exp(log_l)) * max(x, 0.0) ** p
        else:
            if len(pts) < 2 or np.ptp(e) == 0:
                return None
            slope, intercept = (float(v) for v in np.polyfit(e, a, 1))
            if not slope < 0:
                return None

            def predict(x: float) -> float:
                return intercept + slope * x
        return predict, float(max(abs(y - predict(x)) for x, y in pts))

    def last_predicted_miss(self, lo: int, top: int) -> int | None:
        """The largest prefix in [lo, top] predicted to miss the target (the error falls with k:
        a binary search), ``top`` if every one is; None without a model."""
        fit = self.predictor()
        if fit is None:
            return None
        predict = fit[0]
        hits = lambda k: predict(self.error(k)) >= self.target    # noqa: E731
        if not hits(top):
            return top
        first, last = lo + 1, top
        while first < last:
            mid = (first + last) // 2
            if hits(mid):
                last = mid
            else:
                first = mid + 1
        return first - 1

    def worth_checking(self, k: int) -> bool:
        fit = self.predictor()
        if fit is None:
            return True
        predict, residual = fit
        return predict(self.error(k)) >= self.target - residual


def quantize_with(net, calibration, config: QuantizationParams, model_name: str | None):
    """``net.quantize`` from calibration statistics, or from calibration samples (which learned
    rounding and bias correction need: every candidate then learns its own, cached by digest)."""
    from core.quantization.calibration import CalibrationStatistics

    if isinstance(calibration, CalibrationStatistics):
        return net.quantize(statistics=calibration, quantization_config=config, model_name=model_name)
    return net.quantize(calibration, config, model_name)


def search_int16_nodes(
    net,
    statistics,
    evaluator: Callable[[Any], float],
    quantization_config: QuantizationParams,
    target_accuracy: float,
    ranking: Sequence[tuple[str, float]],
    *,
    max_trials: int = 40,
    timeout: float | None = None,
    storage: Any = DEFAULT_STORAGE,
    study_name: str | None = None,
    study_key: str = "",
    multi_objective: bool = False,
    seed: int = 0,
    callbacks: Iterable[Callable[[Candidate], None]] = (),
    model_name: str | None = None,
    surrogate: Callable[[Sequence[str]], float] | None = None,
    confirm: Callable[[Any], float] | None = None,
    max_confirmations: int = 4,
    executor: Callable[..., None] | None = None,
) -> AccuracyFeedbackResult:
    """Run the search (module docstring). ``evaluator(model) -> accuracy``; ``ranking`` is
    ``[(node, score)]`` most sensitive first; ``study_key`` identifies the data (part of the
    default study name, so a rerun on the same data resumes); ``surrogate(nodes) -> error``
    (lower is better, e.g. :class:`~core.search.ranking.SimulatedOutputError`) guides step 2;
    ``confirm(model) -> accuracy`` under exact execution (step 6), when ``evaluator`` is not exact;
    ``max_confirmations``: feasible candidates confirmed before longer prefixes are tried.
    ``statistics``: calibration statistics, or the calibration samples when the configuration
    learns from them (AdaRound, bias correction; :func:`quantize_with`).
    ``executor(study, n, mode, space)`` (:mod:`core.search.parallel`): candidates are enqueued in
    the study and evaluated by workers (:func:`int16_trial_objective`); independent probes go out
    together, ``executor.width`` at a time (prefix probes around the model's guess, the gap
    checks, the single-node drops of pruning, TPE trials)."""
    import optuna

    if not isinstance(quantization_config, QuantizationParams):
        raise QuantizationConfigError(f"quantization_config must be QuantizationParams, got "
                                      f"{type(quantization_config).__name__}")
    try:
        target = float(target_accuracy)
    except (TypeError, ValueError):
        raise QuantizationConfigError(f"target_accuracy must be a number, got {target_accuracy!r}") from None
    if not math.isfinite(target):
        raise QuantizationConfigError(f"target_accuracy must be finite, got {target}")
    if int(max_trials) < 2:
        raise QuantizationConfigError(f"max_trials must be at least 2 (INT8 and all-INT16), got {max_trials}")
    order = [n for n, _ in ranking]
    if not order:
        raise QuantizationConfigError("the sensitivity ranking is empty: no node can be promoted to INT16")
    rank_of = {n: i for i, n in enumerate(order)}
    if study_name is None:
        h = hashlib.sha256(repr((net.graph.name, study_key, repr(quantization_config), target, order)).encode())
        study_name = f"mixq-accuracy-feedback-{net.graph.name}-{h.hexdigest()[:16]}"
    study = open_study(storage, study_name, seed, multi_objective)
    if executor is not None and multi_objective:
        raise QuantizationConfigError("a multi-objective accuracy-feedback search runs in one process (no executor)")
    width = max(1, int(getattr(executor, "width", 2))) if executor is not None else 1
    if executor is not None:          # what the workers' objective needs (int16_trial_objective)
        study.set_user_attr("mixq_order", order)
        study.set_user_attr("mixq_target", target)
    callbacks = list(callbacks)
    started = time.perf_counter()

    def config_for(nodes) -> QuantizationParams:
        custom = {k: dict(v) for k, v in (quantization_config.custom_quantization_configs or {}).items()}
        for n in nodes:
            custom.setdefault(n, {})["quantization_precision"] = QuantizationPrecision.INT_16
        return quantization_config.with_custom_quantization_configs(custom or None)

    # ---- what the storage already holds (a resumed search)
    done: dict[frozenset, float] = {}
    candidates: list[Candidate] = []
    seen: set[int] = set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        nodes = tuple(sorted((p[len(_PARAM):] for p, v in t.params.items() if p.startswith(_PARAM) and v),
                             key=lambda n: rank_of.get(n, len(order))))
        acc = float(t.user_attrs.get("accuracy", float("nan")))
        if not math.isfinite(acc) or any(n not in rank_of for n in nodes):
            continue
        done.setdefault(frozenset(nodes), acc)
        seen.add(t.number)
        candidates.append(Candidate(nodes, acc, acc >= target, str(t.user_attrs.get("source", "?")), t.number, 0.0,
                                    resumed=True))
    if candidates:
        log.info("accuracy feedback: resuming study %r with %d finished candidates", study_name, len(candidates))
    evaluations = 0

    class _Budget(Exception):
        pass

    def quantize(nodes):
        return quantize_with(net, statistics, config_for(nodes), model_name)

    def counted() -> int:          # trials that spend the budget (a dead worker's failed trial does not)
        if executor is None:
            return len(study.trials)
        return sum(1 for t in study.get_trials(deepcopy=False)
                   if t.state != optuna.trial.TrialState.FAIL and not t.user_attrs.get("mixq_spare"))

    def budget_left() -> bool:
        if counted() >= max_trials:
            return False
        return timeout is None or time.perf_counter() - started < timeout

    def measure(nodes: Sequence[str]) -> tuple[float, float]:
        t0 = time.perf_counter()
        model = quantize(nodes)
        return evaluator(model), time.perf_counter() - t0

    def values(acc: float, n16: int):
        if multi_objective:
            return [acc, float(n16)]
        return [float(n16) if acc >= target else len(order) + 1.0 + (target - acc)]

    def record(nodes: tuple, acc: float, seconds: float, source: str, number: int) -> Candidate:
        nonlocal evaluations
        evaluations += 1
        done[frozenset(nodes)] = acc
        cand = Candidate(nodes, acc, acc >= target, source, number, seconds)
        candidates.append(cand)
        log.info("accuracy feedback: %s, %d INT16 nodes -> accuracy %.4f%s", source, len(nodes), acc,
                 " (meets target)" if acc >= target else "")
        for cb in callbacks:
            cb(cand)
        return cand

    space = {f"{_PARAM}{n}": optuna.distributions.CategoricalDistribution([False, True]) for n in order}

    def evaluate(nodes: Iterable[str], source: str) -> float:
        nodes = tuple(sorted(set(nodes), key=rank_of.__getitem__))
        key = frozenset(nodes)
        if key in done:
            return done[key]
        if not budget_left():
            raise _Budget()
        acc, seconds = measure(nodes)
        trial = optuna.trial.create_trial(
            params={p: (p[len(_PARAM):] in key) for p in space}, distributions=space,
            values=values(acc, len(nodes)), user_attrs={"accuracy": acc, "source": source,
                                                        "int16_nodes": list(nodes), "seconds": seconds})
        study.add_trial(trial)
        record(nodes, acc, seconds, source, study.trials[-1].number)
        return acc

    def collect() -> None:
        """Record the trials workers finished (parallel mode)."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.number in seen or "accuracy" not in t.user_attrs:
                continue
            seen.add(t.number)
            nodes = tuple(sorted((p[len(_PARAM):] for p, v in t.params.items() if p.startswith(_PARAM) and v),
                                 key=lambda n: rank_of.get(n, len(order))))
            acc = float(t.user_attrs["accuracy"])
            if frozenset(nodes) in done or not math.isfinite(acc):
                done.setdefault(frozenset(nodes), acc)
                continue
            record(nodes, acc, float(t.user_attrs.get("seconds", 0.0)), str(t.user_attrs.get("source", "?")),
                   t.number)

    def evaluate_many(items: Sequence[tuple[Sequence[str], str]]) -> list[float]:
        """Evaluate independent candidates: one after the other, or all at once on the workers."""
        if executor is None:
            return [evaluate(nodes, source) for nodes, source in items]
        todo, keys = [], []
        for nodes, source in items:
            nodes = tuple(sorted(set(nodes), key=rank_of.__getitem__))
            keys.append(frozenset(nodes))
            if keys[-1] not in done and all(keys[-1] != frozenset(n) for n, _ in todo):
                todo.append((nodes, source))
        cut = False
        if todo:
            if timeout is not None and time.perf_counter() - started >= timeout:
                raise _Budget()
            room = max_trials - counted()
            if room <= 0:
                raise _Budget()
            cut, todo = len(todo) > room, todo[:room]
            for nodes, source in todo:
                study.enqueue_trial({p: (p[len(_PARAM):] in nodes) for p in space}, user_attrs={"source": source},
                                    skip_if_exists=True)
            executor(study, len(todo), "enqueued", None)
            collect()
        if cut or any(k not in done for k in keys):
            raise _Budget()
        return [done[k] for k in keys]

    def best_feasible() -> Candidate | None:
        feasible = [c for c in candidates if c.feasible]
        return min(feasible, key=lambda c: (len(c.int16_nodes), -c.accuracy)) if feasible else None

    settled = 0
    try:
        # 1: INT8; 2: the smallest ranking prefix that reaches the target
        first = [((), "int8")] + ([(order[:1], "all ranked" if len(order) == 1 else "prefix 1")] if width > 1 else [])
        if evaluate_many(first)[0] < target:
            prefixes = _PrefixModel(order, target, surrogate, done)
            lo, hi, sides = 0, None, []      # prefix lo misses the target, prefix hi reaches it
            while hi is None or hi - lo > 1:
                top = len(order) if hi is None else hi - 1
                # the model's guess, unless the last two probes fell on one side: then bisect (double)
                guess = prefixes.last_predicted_miss(lo, top) if len(sides) < 2 or sides[-1] != sides[-2] else None
                if guess is None:
                    guess = (lo + hi) // 2 if hi is not None else max(2 * lo, 1)
                k = min(max(guess, lo + 1), top)
                # with several workers: the guess and the prefixes just above it together (when
                # the model is right, the guess misses and the next one hits: one round)
                probes = [k + i for i in range(width) if k + i <= top]
                if executor is not None:          # known prefixes inside the bracket narrow it too
                    probes += [j for j in range(lo + 1, top + 1) if frozenset(order[:j]) in done and j not in probes]
                accs = evaluate_many([(order[:j], "all ranked" if j == len(order) else f"prefix {j}")
                                      for j in probes])
                hits = [j for j, a in zip(probes, accs) if a >= target]
                sides.append(accs[0] >= target)
                if hits:
                    hi = min(hits)
                    lo = max([lo] + [j for j, a in zip(probes, accs) if a < target and j < hi])
                elif max(probes) == len(order):
                    best = max(c.accuracy for c in candidates)
                    raise AccuracyTargetError(
                        f"target accuracy {target:g} is out of reach: INT8 reaches {done[frozenset()]:.4f}, "
                        f"all {len(order)} ranked nodes at INT16 {done[frozenset(order)]:.4f} (best {best:.4f})",
                        best_accuracy=best)
                else:
                    lo = max(probes)
            # 3: accuracy measured on a finite set is not monotone in k: the search can step over
            # a smaller prefix that reaches the target. Check the prefixes below the best one that
            # were never evaluated, smallest first (all of them without a surrogate: never more
            # nodes than the greedy fallback; with one, those the model puts near the target).
            if executor is None:
                for k in range(1, len(best_feasible().int16_nodes)):
                    if frozenset(order[:k]) not in done and prefixes.worth_checking(k) and \
                            evaluate(order[:k], f"prefix {k}") >= target:
                        break
            else:                  # independent: all at once
                gaps = [k for k in range(1, len(best_feasible().int16_nodes))
                        if frozenset(order[:k]) not in done and prefixes.worth_checking(k)]
                if gaps:
                    evaluate_many([(order[:k], f"prefix {k}") for k in gaps])
            settled = evaluations
            # 4: prune the best set, least sensitive first
            current = list(best_feasible().int16_nodes)
            drops = sorted(current, key=rank_of.__getitem__, reverse=True)
            if executor is not None and len(current) > 1:
                # every single-node drop at once, then the droppable ones together; one at a time
                # (as in one process) only when that combination misses
                accs = evaluate_many([([m for m in current if m != n], "prune") for n in drops])
                drops = [n for n, a in zip(drops, accs) if a >= target]
                together = [m for m in current if m not in drops]
                if len(drops) > 1 and together and evaluate_many([(together, "prune")])[0] >= target:
                    current, drops = together, []
                elif len(drops) == 1:
                    current, drops = [m for m in current if m != drops[0]], []
            for n in drops:
                trial_set = [m for m in current if m != n]
                if trial_set and evaluate_many([(trial_set, "prune")])[0] >= target:
                    current = trial_set
            # 5: TPE over the top ranked nodes with the remaining budget
            width = min(len(order), 2 * len(best_feasible().int16_nodes) + 4)
            tpe_space = order[:width]

            def objective(trial):
                nodes = tuple(n for n in tpe_space if trial.suggest_categorical(f"{_PARAM}{n}", [False, True]))
                trial.set_user_attr("source", "tpe")
                trial.set_user_attr("int16_nodes", list(nodes))
                key = frozenset(nodes)
                if key in done:
                    acc, seconds = done[key], 0.0
                else:
                    acc, seconds = measure(nodes)
                    record(nodes, acc, seconds, "tpe", trial.number)
                trial.set_user_attr("accuracy", acc)
                trial.set_user_attr("seconds", seconds)
                return values(acc, len(nodes)) if multi_objective else values(acc, len(nodes))[0]

            remaining = max_trials - counted()
            if remaining > 0 and budget_left():
                if executor is not None:          # workers sample (TPE, constant liar) and evaluate
                    executor(study, remaining, "tpe", tpe_space)
                    collect()
                else:
                    left = None if timeout is None else max(0.0, timeout - (time.perf_counter() - started))
                    study.optimize(objective, n_trials=remaining, timeout=left, gc_after_trial=False)
    except _Budget:
        log.info("accuracy feedback: budget spent (%d trials, max_trials=%d)", counted(), max_trials)
    finally:
        if executor is not None and hasattr(executor, "close"):
            executor.close(study)

    best = best_feasible()
    if best is None:
        top = max(c.accuracy for c in candidates)
        raise AccuracyTargetError(
            f"no candidate reached target accuracy {target:g} within the budget ({len(study.trials)} trials); "
            f"best accuracy {top:.4f}", best_accuracy=top)
    front = []
    for c in sorted(candidates, key=lambda c: (len(c.int16_nodes), -c.accuracy)):
        if not front or c.accuracy > front[-1].accuracy:
            front.append(c)
    if confirm is None:
        model = quantize(best.int16_nodes)
        return AccuracyFeedbackResult(model, list(best.int16_nodes), best.accuracy, target, candidates, evaluations,
                                      list(ranking), study_name, front, settled or evaluations)
    nodes, model, confirmations = confirm_exactly(
        study, quantize,
        confirm, target, candidates, order, max_confirmations)
    fast = done.get(frozenset(nodes))
    exact = confirmations[-1].accuracy
    return AccuracyFeedbackResult(model, list(nodes), exact if fast is None else fast, target, candidates,
                                  evaluations, list(ranking), study_name, front, settled or evaluations,
                                  exact_accuracy=exact, confirmations=confirmations)


def int16_trial_objective(net, statistics, evaluator: Callable[[Any], float], quantization_config: QuantizationParams,
                          target_accuracy: float, order: Sequence[str], *, tpe_space: Sequence[str] | None = None,
                          callbacks: Iterable[Callable[[Candidate], None]] = (), model_name: str | None = None):
    """The objective a worker runs for a parallel :func:`search_int16_nodes`: an enqueued (or
    retried) trial carries its node set in its parameters; a TPE trial (``tpe_space``) samples one
    among the top ranked nodes. Callbacks get each evaluated ``(Candidate, trial)``."""
    target = float(target_accuracy)
    order = list(order)
    callbacks = list(callbacks)

    def config_for(nodes) -> QuantizationParams:
        custom = {k: dict(v) for k, v in (quantization_config.custom_quantization_configs or {}).items()}
        for n in nodes:
            custom.setdefault(n, {})["quantization_precision"] = QuantizationPrecision.INT_16
        return quantization_config.with_custom_quantization_configs(custom or None)

    def objective(trial) -> float:
        import optuna

        fixed = fixed_params(trial)
        if fixed:          # enqueued, or a retried trial: its node set is in its parameters
            names = [n for n in order if f"{_PARAM}{n}" in fixed]
        else:
            names = list(order if tpe_space is None else tpe_space)
        nodes = tuple(n for n in names if trial.suggest_categorical(f"{_PARAM}{n}", [False, True]))
        source = str(trial.user_attrs.get("source") or "tpe")
        key = frozenset(nodes)
        def value(acc):
            return (float(len(nodes)) if acc >= target else len(order) + 1.0 + (target - acc))
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if "accuracy" in t.user_attrs and frozenset(t.user_attrs.get("int16_nodes", ())) == key:
                acc = float(t.user_attrs["accuracy"])       # evaluated already (a TPE repeat): not again
                for k, v in {"accuracy": acc, "source": source, "int16_nodes": list(nodes), "seconds": 0.0,
                             DUPLICATE: t.number}.items():
                    trial.set_user_attr(k, v)
                return value(acc)
        t0 = time.perf_counter()
        model = quantize_with(net, statistics, config_for(nodes), model_name)
        acc = float(evaluator(model))
        seconds = time.perf_counter() - t0
        cand = Candidate(nodes, acc, acc >= target, source, trial.number, seconds)
        for cb in callbacks:          # (MLflow) before the trial is told: a retry finds the run by its config
            cb(cand, trial)
        for k, v in {"accuracy": acc, "source": source, "int16_nodes": list(nodes), "seconds": seconds}.items():
            trial.set_user_attr(k, v)
        return value(acc)

    return objective


_EXACT = "mixq_exact:"


def _exact_key(nodes: Iterable[str]) -> str:
    return _EXACT + hashlib.sha256("\n".join(sorted(nodes)).encode()).hexdigest()[:20]


def confirm_exactly(study, quantize: Callable[[Sequence[str]], Any], confirm: Callable[[Any], float], target: float,
                    candidates: Sequence[Candidate], order: Sequence[str], max_confirmations: int = 4,
                    ) -> tuple[tuple[str, ...], Any, list[Confirmation]]:
    """Step 6 (module docstring): the first node set that reaches ``target`` under exact execution
    -- feasible candidates first (fewest INT16 nodes, then highest accuracy), then ranking prefixes
    longer than the smallest feasible one, growing by half up to every ranked node. Returns
    ``(nodes, model, confirmations)``; raises :class:`AccuracyTargetError` with the best exact
    accuracy when none reaches it."""
    rank_of = {n: i for i, n in enumerate(order)}
    known = {}
    for key, value in study.user_attrs.items():
        if key.startswith(_EXACT) and isinstance(value, dict):
            known[frozenset(value.get("nodes", []))] = float(value["accuracy"])
    confirmations: list[Confirmation] = []

    def check(nodes: Sequence[str]):
        nodes = tuple(sorted(set(nodes), key=lambda n: rank_of.get(n, len(order))))
        key = frozenset(nodes)
        model = None
        if key in known:
            acc, resumed = known[key], True
        else:
            model = quantize(nodes)
            acc, resumed = float(confirm(model)), False
            known[key] = acc
            try:
                study.set_user_attr(_exact_key(nodes), {"nodes": list(nodes), "accuracy": acc})
            except Exception as e:  # noqa: BLE001  (a read-only storage: the score is only not kept)
                log.warning("accuracy feedback: cannot keep the exact score in the study: %s", e)
        confirmations.append(Confirmation(nodes, acc, acc >= target, resumed))
        log.info("accuracy feedback: exact execution, %d INT16 nodes -> %.4f%s", len(nodes), acc,
                 " (meets target)" if acc >= target else " (misses the target)")
        if acc >= target:
            return nodes, model if model is not None else quantize(nodes)
        return None

    tried: set[frozenset] = set()
    feasible = sorted((c for c in candidates if c.feasible), key=lambda c: (len(c.int16_nodes), -c.accuracy))
    for c in feasible:
        if len(tried) >= max(1, int(max_confirmations)):
            break
        if frozenset(c.int16_nodes) in tried:
            continue
        tried.add(frozenset(c.int16_nodes))
        hit = check(c.int16_nodes)
        if hit:
            return hit[0], hit[1], confirmations
    k = max(1, min((len(c.int16_nodes) for c in feasible), default=1))
    while True:
        k = min(len(order), max(k + 1, k + k // 2))
        if frozenset(order[:k]) not in tried:
            tried.add(frozenset(order[:k]))
            hit = check(order[:k])
            if hit:
                return hit[0], hit[1], confirmations
        if k >= len(order):
            break
    best = max(confirmations, key=lambda c: c.accuracy)
    raise AccuracyTargetError(
        f"target accuracy {target:g} is met in fast mode but not under exact execution: best exact accuracy "
        f"{best.accuracy:.4f} ({len(best.int16_nodes)} INT16 nodes; {len(confirmations)} node set(s) confirmed)",
        best_accuracy=best.accuracy)
