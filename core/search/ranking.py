"""Which nodes lose most to INT8: sensitivity rankings that seed the INT16 search.

:func:`rank_nodes_by_output_gain` (the default): float passes that simulate the INT8 program
(every tensor quantize-dequantized with the program's own scale and zero point, every weight
with its own scales), once with every node quantized and once per node with that node left in
float. A node's score is how much the model output's error (squared error against FP32's
output, relative to the output's variance) drops when that node alone is not quantized: the
marginal gain of promoting it inside an otherwise INT8 model, measured where it matters. One
pass per node over a few samples (MobileNetV2, 16 samples: about 65 passes). "Left in float"
follows what ``INT_16`` on the node does (``core.quantization.quantizer.tensor_widths``): its
weights and every tensor the override widens -- its inputs and outputs, and the chains of layout
ops (Reshape, Transpose...) that share their quantization -- stay float. Leaving only the node's
own output in float would measure nothing wherever a layout op re-quantizes the same values on
the same grid right after it (a transformer's MatMul -> Transpose -> Reshape: every such node
scored exactly 0).

:func:`rank_nodes_by_int8_noise`: one float pass over a few calibration samples. For every node whose
output the INT8 program
stores as an integer tensor, the noise-to-signal ratio its own INT8 rounding adds:

* activation: ``sum((y - dq(q(y)))**2) / sum((y - mean y)**2)`` with the program's own scale and
  zero point for the node's float output ``y`` (rounding + clipping of that tensor);
* weights (Conv/Gemm/MatMul): ``sum((w - dq(q(w)))**2) / sum(w**2)`` with the program's weight
  scales -- the relative error of the weights, which is what an INT16 node also removes
  (INT16 nodes get 16-bit weights).

The score is their sum. It measures what the per-node ``INT_16`` override changes, on its own,
without quantizing the model once per node (the Neural Compressor / NNCF "per-op MSE" idea).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.ops.common import weight_output_axis

__all__ = ["SimulatedOutputError", "rank_nodes_by_int8_noise", "rank_nodes_by_output_gain", "RANKING_KIND",
           "PROBE_CHUNK", "output_errors_on_workers", "ranking_trial_objective"]

RANKING_KIND = "ranking"      # study user attribute ``mixq_kind`` of a ranking study (its trials are probes)
PROBE_CHUNK = 4               # node sets per probe trial (fewer trials, same answers: each set is its own pass)
_PROBE = "mixq_probe"


def _owned_tensors(prog) -> dict[str, list[str]]:
    """Node name -> the integer tensors whose quantization that node's precision decides."""
    owned: dict[str, list[str]] = {}
    for n in prog.graph.nodes:
        # float islands (LayerNormalization, Gelu ...) store their output as an integer tensor too,
        # and INT_16 on them widens it: they are candidates like integer nodes
        if prog.kinds[n.name] in ("int", "float"):
            outs = [o for o in n.outputs if o in prog.tensors and prog.tensors[o].bits <= 16]
            if outs:
                owned[n.name] = outs
    return owned


def _dequantized_weights(prog, dtype=None) -> dict[str, tuple[str, np.ndarray]]:
    """Node name -> (weight constant name, its quantize-dequantized value, in ``dtype`` or the
    float weight's own dtype)."""
    out = {}
    for n in prog.graph.nodes:
        c = prog.constants.get(n.name)
        if c is not None and c.w_q is not None and c.w_scale is not None and np.ndim(c.w_q) >= 2:
            w = np.asarray(prog.graph.constants[n.inputs[1]])
            shape = [1] * w.ndim
            axis = weight_output_axis(n, w.ndim)
            shape[axis] = -1
            out[n.name] = (n.inputs[1], (np.asarray(c.w_q, np.float64) * c.w_scale.reshape(shape))
                           .astype(dtype or w.dtype))
    return out


def _widened_tensors(prog, nodes) -> dict[str, set[str]]:
    """Node name -> the tensors that ``INT_16`` on that node alone makes 16-bit in ``prog`` (the
    quantizer's own width rule; empty for a node already at 16 bits)."""
    from core.quantization.quantizer import tensor_widths

    params = prog.params
    base = tensor_widths(prog.graph, params)
    configs = dict(params.custom_quantization_configs or {})
    int16 = type(params.activation_quantization_scheme.precision).INT_16
    out = {}
    for node in nodes:
        one = dict(configs)
        one[node] = {**dict(configs.get(node, {})), "quantization_precision": int16}
        wide = tensor_widths(prog.graph, params.with_custom_quantization_configs(one))
        out[node] = {t for t, b in wide.items() if b > base.get(t, b)}
    return out


class SimulatedOutputError:
    """The output error of the INT8 program with a set of nodes left in float (about what promoting
    them to INT16 gives), from float passes over a few samples: every tensor the program stores as
    an integer is quantize-dequantized with its own scale and zero point, every weight with its own
    scales, except those of the nodes left in float. The error is the squared difference from
    FP32's output relative to the output's variance. ``error(nodes)`` is cached per node set; one
    call is one float pass (MobileNetV2, 16 samples: about 2 s on 2 cores)."""

    def __init__(self, net, int8_model, samples: Mapping[str, np.ndarray]):
        from core.runtime.float_interpreter import run_graph

        self._run_graph = run_graph
        self.prog = prog = int8_model.program
        self.graph = graph = int8_model.float_graph   # the graph the program was quantized from (maybe equalized)
        self.feeds = net.check_inputs(samples)
        owned = _owned_tensors(prog)
        self.nodes = list(owned)
        self._owner = {t: node for node, ts in owned.items() for t in ts}
        self._widened = _widened_tensors(prog, self.nodes)
        self._weights = _dequantized_weights(prog)
        self._q_inputs = {name: prog.tensors[name] for name in graph.inputs if name in prog.tensors}
        reference = run_graph(graph, self.feeds)
        self._ref = np.concatenate([np.asarray(reference[o], np.float64).ravel() for o in graph.outputs])
        self._variance = max(float(((self._ref - self._ref.mean()) ** 2).mean()), 1e-30)
        self._cache: dict[frozenset, float] = {}

    def __call__(self, float_nodes=()) -> float:
        key = frozenset(float_nodes)
        if key not in self._cache:
            self._cache[key] = self._error(key)
        return self._cache[key]

    def known(self, float_nodes) -> bool:
        """Whether the error of ``float_nodes`` is cached (computed or :meth:`remember`-ed)."""
        return frozenset(float_nodes) in self._cache

    def remember(self, float_nodes, value: float) -> None:
        """Cache the error of ``float_nodes`` computed elsewhere (a worker's identical pass)."""
        self._cache.setdefault(frozenset(float_nodes), float(value))

    def _error(self, float_nodes: frozenset) -> float:
        prog, graph = self.prog, self.graph
        g = graph.copy()
        g.constants = dict(graph.constants)
        for node, (const, dq) in self._weights.items():
            if node not in float_nodes:
                g.constants[const] = dq

        floats = set().union(*(self._widened.get(node, ()) for node in float_nodes))

        def fake_quant(name, value):
            if name in self._owner and name not in floats and value.dtype.kind == "f":
                tq = prog.tensors[name]
                return tq.dequantize(tq.quantize(value))
            return None

        q = self._q_inputs
        x = {k: (q[k].dequantize(q[k].quantize(v)) if k in q and k not in floats else v)
             for k, v in self.feeds.items()}
        out = self._run_graph(g, x, on_tensor=fake_quant)
        y = np.concatenate([np.asarray(out[o], np.float64).ravel() for o in graph.outputs])
        return float(((y - self._ref) ** 2).mean()) / self._variance


def rank_nodes_by_output_gain(net, int8_model, samples: Mapping[str, np.ndarray], *,
                              error: SimulatedOutputError | None = None, executor=None, storage=None,
                              study_name: str | None = None) -> list[tuple[str, float]]:
    """``[(node name, gain), ...]``, largest gain first (module docstring), except that a node adding
    nothing to the nodes above it (its widened tensors all widened already) comes after the rest. ``samples``: one
    batch ``{input name: array}``; ``int8_model``: ``net`` quantized at INT8. ``error``: a
    :class:`SimulatedOutputError` to use (and fill) instead of a new one on ``samples``.
    ``executor`` (:class:`core.search.parallel.TrialPool`, with ``storage`` and ``study_name``):
    the per-node passes are probe trials that workers evaluate (:func:`output_errors_on_workers`);
    the same errors, so the same ranking."""
    error = error or SimulatedOutputError(net, int8_model, samples)
    if executor is not None:
        output_errors_on_workers(error, [()] + [(n,) for n in error.nodes], executor, storage, study_name)
    base = error(())
    gains = {node: base - error((node,)) for node in error.nodes}
    return _redundant_last(sorted(gains.items(), key=lambda kv: -kv[1]), error)


def _redundant_last(ranked: list[tuple[str, float]], error: SimulatedOutputError) -> list[tuple[str, float]]:
    """Move to the end the nodes (without weights) whose every widened tensor the nodes ranked above
    them already widen: once those are INT16 such a node adds nothing (Swin: Add -> Reshape ->
    Transpose share one grid and took 3 of the top 4 places with the same gain)."""
    covered: set[str] = set()
    useful, redundant = [], []
    for node, gain in ranked:
        widened = error._widened.get(node, set())
        if node not in error._weights and widened and widened <= covered:
            redundant.append((node, gain))
        else:
            useful.append((node, gain))
            covered |= widened
    return useful + redundant


def rank_nodes_by_int8_noise(net, int8_model, samples: Mapping[str, np.ndarray]) -> list[tuple[str, float]]:
    """``[(node name, score), ...]``, highest score (most sensitive) first. ``samples`` is one
    batch of inputs ``{input name: array}``; ``int8_model`` is ``net`` quantized at INT8."""
    from core.runtime.float_interpreter import run_graph

    prog = int8_model.program
    owner: dict[str, str] = {}
    for n in prog.graph.nodes:
        if prog.kinds[n.name] in ("int", "float"):
            for o in n.outputs:
                if o in prog.tensors and prog.tensors[o].bits == 8:
                    owner[o] = n.name
    noise: dict[str, float] = {}
    signal: dict[str, float] = {}

    def observe(name, value):
        if name in owner and value.dtype.kind == "f":
            tq = prog.tensors[name]
            v = np.asarray(value, np.float64)
            noise[name] = noise.get(name, 0.0) + float(((v - tq.dequantize(tq.quantize(v))) ** 2).sum())
            signal[name] = signal.get(name, 0.0) + float(((v - v.mean()) ** 2).sum())

    run_graph(int8_model.float_graph, net.check_inputs(samples), on_tensor=observe)
    scores: dict[str, float] = {}
    for t in noise:
        scores[owner[t]] = max(scores.get(owner[t], 0.0), noise[t] / max(signal[t], 1e-30))
    for node, (const, dq) in _dequantized_weights(prog, np.float64).items():
        if node in scores:
            w = np.asarray(prog.graph.constants[const], np.float64)
            scores[node] += float(((w - dq) ** 2).sum() / max((w ** 2).sum(), 1e-30))
    return sorted(scores.items(), key=lambda kv: -kv[1])


def output_errors_on_workers(error: SimulatedOutputError, node_sets, executor, storage, study_name: str) -> None:
    """Fill ``error``'s cache with the errors of ``node_sets`` computed by workers: a study
    ``study_name`` in ``storage`` (user attributes ``mixq_kind="ranking"``, ``mixq_probes``: the
    node sets, ``mixq_samples``: how many evaluation samples make the batch) whose enqueued trials
    are chunks of :data:`PROBE_CHUNK` sets (:func:`ranking_trial_objective`); the errors come back
    as the trials' ``errors`` user attribute. Sets already known (cached, or in a resumed study)
    are not probed again."""
    import optuna

    from core.search.parallel import open_storage

    sets = [tuple(s) for s in node_sets]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage), load_if_exists=True)
    study.set_user_attr("mixq_kind", RANKING_KIND)
    study.set_user_attr("mixq_probes", [list(s) for s in sets])
    study.set_user_attr("mixq_samples", int(len(next(iter(error.feeds.values())))))
    try:
        def harvest() -> None:
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                for nodes, value in t.user_attrs.get("errors") or []:
                    error.remember(nodes, value)

        harvest()
        todo = [i for i in range(0, len(sets), PROBE_CHUNK)
                if not all(error.known(s) for s in sets[i:i + PROBE_CHUNK])]
        for i in todo:
            study.enqueue_trial({_PROBE: i}, skip_if_exists=True)
        if todo:
            executor(study, len(todo), "enqueued", None)
        harvest()
    finally:
        if hasattr(executor, "close"):
            executor.close(study)
    missing = [s for s in sets if not error.known(s)]
    for s in missing:          # (a probe the workers could not finish: computed here)
        error(s)


def ranking_trial_objective(error_for):
    """The objective a worker runs on a ranking study (:func:`output_errors_on_workers`):
    ``error_for(study)`` gives the :class:`SimulatedOutputError` on the study's samples (built once
    by the caller); a trial evaluates its chunk of the study's node sets."""
    from core.search.parallel import fixed_params

    def objective(trial) -> float:
        start = int(fixed_params(trial)[_PROBE])
        study = trial.study
        sets = [tuple(s) for s in study.user_attrs["mixq_probes"][start:start + PROBE_CHUNK]]
        err = error_for(study)
        values = [[list(s), float(err(s))] for s in sets]
        trial.set_user_attr("errors", values)
        trial.set_user_attr("source", "ranking")
        return float(len(values))

    return objective
