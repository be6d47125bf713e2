"""``load_model`` and ``LoadedNet``: an imported, optimized, partitioned float model."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import CalibrationError, MixqError, ModelLoadError, QuantizationConfigError
from core.importers.sources import ImporterParams
from core.inputs import InputSignature
from core.ir.graph import Graph
from core.progress import progress_bar
from core.quantization.params import QuantizationParams, check_custom_config_nodes, default_quantization

if TYPE_CHECKING:  # pragma: no cover
    from core.model import Model

log = logging.getLogger("mixq")


@dataclass(frozen=True)
class NodeInfo:
    """One row of ``LoadedNet.nodes()``: what users need to pick nodes for mixed precision."""

    name: str
    op: str
    segment: str
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]
    source_name: str


def load_model(params: ImporterParams, *, log_level: int | None = logging.NOTSET) -> LoadedNet:
    """Import a model, run mixq's graph passes and partition it into MLA/APU segments."""
    if log_level:
        log.setLevel(log_level)
    if not isinstance(params, ImporterParams):
        raise ModelLoadError(f"load_model expects ImporterParams (from onnx_source(...), tflite_source(...), ...), "
                             f"got {type(params).__name__}")
    graph = params.import_graph()          # each importer's ImporterParams subclass knows its importer
    from core.ir.passes import optimize

    graph = optimize(graph)
    log.info("loaded %s: %d nodes", params.model_path, len(graph.nodes))
    return LoadedNet(graph, params)


class LoadedNet:
    """A float model in mixq's IR. ``execute`` runs it; later stages quantize it."""

    # calibration statistics kept for repeated quantize() calls on the same data (the
    # specification's "cycling through quantization options" loop): a few MB each
    _STATS_CACHE_SIZE = 2

    def __init__(self, graph: Graph, params: ImporterParams | None = None, *, equalized: bool = False):
        self.graph = graph
        self.params = params
        self._stats_cache: dict[tuple[str, int], Any] = {}
        self._rounding_cache: dict[str, Any] = {}       # AdaRound digest -> learned weights
        self._equalized = equalized          # this graph is already channel-equalized
        self._equalized_copy: LoadedNet | None = None

    def _equalized_net(self) -> LoadedNet:
        """This model with cross-layer channel equalization applied (float outputs unchanged;
        see core/ir/passes/equalize_channels.py), built once."""
        if self._equalized_copy is None:
            from core.ir.passes.equalize_channels import equalize_channels

            graph = self.graph.copy()
            pairs = equalize_channels(graph)
            log.info("channel equalization: %d conv/dense pairs", pairs)
            self._equalized_copy = LoadedNet(graph, self.params, equalized=True)
        return self._equalized_copy

    # ---- description -----------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.graph.tensors[n].shape for n in self.graph.inputs}

    def nodes(self) -> list[NodeInfo]:
        """Every node with its mixq name (``MLA_0/conv2d_add_relu_0``), op, segment and shapes."""
        t = self.graph.tensors
        return [
            NodeInfo(
                n.name,
                n.op,
                n.segment,
                tuple(t[i].shape for i in n.inputs if i and i in t and i not in self.graph.constants),
                tuple(t[o].shape for o in n.outputs if o in t),
                n.source_name,
            )
            for n in self.graph.nodes
        ]

    def node_table(self) -> str:
        """The node list as a fixed-width text table."""
        rows = [("name", "op", "segment", "input shapes", "output shapes", "source node")]
        fmt = lambda shapes: " ".join("x".join(map(str, s)) for s in shapes)  # noqa: E731
        for n in self.nodes():
            rows.append((n.name, n.op, n.segment, fmt(n.input_shapes), fmt(n.output_shapes), n.source_name))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def print_nodes(self) -> None:
        print(self.node_table())

    def segments(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n in self.graph.nodes:
            out.setdefault(n.segment, []).append(n.name)
        return out

    def __repr__(self) -> str:
        segs = self.segments()
        return f"LoadedNet({self.graph.name!r}, {len(self.graph.nodes)} nodes, segments={list(segs)})"

    # ---- execution -------------------------------------------------------
    def check_inputs(self, inputs: Any) -> dict[str, np.ndarray]:
        """Validate one set of inputs; returns them as arrays of the model's dtypes."""
        return InputSignature.of(self.graph).check(inputs)

    def calibrate(self, calibration_data, *, num_bins: int | None = None, progress: bool = False):
        """One float pass over ``calibration_data`` (an iterable of ``{input name: array}``) that
        records, for every float tensor (graph inputs and node outputs), what all five calibration
        methods need; returns ``CalibrationStatistics`` (save()/load() to reuse it)."""
        from core.quantization.calibration import DEFAULT_FINE_BINS, CalibrationStatistics
        from core.runtime.float_interpreter import run_graph

        stats = CalibrationStatistics(num_bins or DEFAULT_FINE_BINS,
                                      {"model": self.graph.name, "channel_equalized": self._equalized})
        fingerprint = hashlib.sha256()
        samples = _fingerprinted(self._calibration_samples(calibration_data), fingerprint)
        total = len(calibration_data) if hasattr(calibration_data, "__len__") else None

        def observe(name, value):
            if value.dtype.kind == "f":
                stats.observer(name).observe(value)

        bar = progress_bar(total, "calibrating", "sample") if progress else None
        for feeds in samples:
            if stats.example_inputs is None:
                stats.example_inputs = {k: np.array(v[:1]) for k, v in feeds.items()}
            for name, value in feeds.items():
                observe(name, value)
            run_graph(self.graph, feeds, on_tensor=observe)
            stats.num_samples += 1
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        # what identifies the data, so quantize() can reuse these statistics for the same samples
        stats.metadata["data_sha256"] = fingerprint.hexdigest()
        return stats

    def _calibration_samples(self, calibration_data):
        from core.quantization.calibration import iter_calibration_batches

        info = self.graph.tensors
        return iter_calibration_batches(calibration_data, self.graph.inputs, self.input_shapes(),
                                        {n: info[n].dtype for n in self.graph.inputs})

    def _cached_statistics(self, calibration_data):
        """Statistics for ``calibration_data``: from the cache when the same samples (same
        names, dtypes, shapes and bytes, in order) were calibrated before, else one float pass.
        A one-shot iterator cannot be fingerprinted without consuming it, so it is calibrated
        (and its statistics cached for a later re-iterable copy of the same data)."""
        from core.quantization.calibration import DEFAULT_FINE_BINS

        reiterable = isinstance(calibration_data, Iterable) and iter(calibration_data) is not calibration_data
        if reiterable:
            fingerprint = hashlib.sha256()
            for _ in _fingerprinted(self._calibration_samples(calibration_data), fingerprint):
                pass
            cached = self._stats_cache.get((fingerprint.hexdigest(), DEFAULT_FINE_BINS))
            if cached is not None:
                log.info("reusing calibration statistics of %d samples (sha256 %s)", cached.num_samples,
                         fingerprint.hexdigest()[:12])
                return cached
        stats = self.calibrate(calibration_data)
        self._stats_cache[(stats.metadata["data_sha256"], stats.num_bins)] = stats
        while len(self._stats_cache) > self._STATS_CACHE_SIZE:
            self._stats_cache.pop(next(iter(self._stats_cache)))
        return stats

    def quantize(self, calibration_data: Any = None, quantization_config: Any = default_quantization,
                 model_name: str | None = None, *, statistics: Any = None,
                 log_level: int | None = logging.NOTSET) -> Model:
        """Quantize the model: calibrate on ``calibration_data`` (an iterable of ``{input name:
        array}``, or a ``CalibrationStatistics`` from :meth:`calibrate`), or reuse ``statistics``;
        then build the integer program for ``quantization_config`` (``default_quantization`` if
        None). Returns a :class:`core.model.Model` whose ``execute`` runs it bit-accurately."""
        from core.model import Model
        from core.quantization.calibration import CalibrationStatistics
        from core.quantization.quantizer import quantize_graph

        if log_level:
            log.setLevel(log_level)
        params = default_quantization if quantization_config is None else quantization_config
        if not isinstance(params, QuantizationParams):
            raise QuantizationConfigError(
                "quantization_config must be QuantizationParams (e.g. default_quantization), "
                f"got {type(params).__name__}"
            )
        check_custom_config_nodes(params, [n.name for n in self.graph.nodes])   # before calibrating
        if params.channel_equalization and not self._equalized:
            # an equalized copy of the float graph, calibrated and quantized on its own
            return self._equalized_net().quantize(calibration_data, params, model_name, statistics=statistics)
        samples = None      # calibration samples, kept when bias correction needs them again
        if isinstance(calibration_data, CalibrationStatistics):
            if statistics is not None:
                raise CalibrationError(
                    "give calibration statistics either as calibration_data or as statistics=, not both"
                )
            statistics = calibration_data
        elif statistics is None:
            if calibration_data is None:
                raise CalibrationError("quantize needs calibration_data (or statistics=)")
            needs_samples = params.bias_correction or params.adaround or params.output_aware_ranges
            if needs_samples and isinstance(calibration_data, Iterable) and iter(calibration_data) is calibration_data:
                calibration_data = list(calibration_data)     # a one-shot iterator: read it twice
            samples = calibration_data
            statistics = self._cached_statistics(calibration_data)
        elif calibration_data is not None:
            raise CalibrationError("give either calibration_data or statistics=, not both")
        if not isinstance(statistics, CalibrationStatistics):
            raise CalibrationError(f"statistics must be CalibrationStatistics, got {type(statistics).__name__}")
        if bool(statistics.metadata.get("channel_equalized", False)) != bool(params.channel_equalization):
            raise CalibrationError(
                "these calibration statistics were recorded on the "
                f"{'channel-equalized' if statistics.metadata.get('channel_equalized') else 'original'} graph, "
                f"but channel_equalization={params.channel_equalization}: pass calibration data instead "
                "(equalization changes every range)")
        program = quantize_graph(self.graph, statistics, params)
        ranges = learned = None
        for needed in ("output_aware_ranges", "adaround"):
            if getattr(params, needed) is not None and samples is None:
                raise CalibrationError(f"{needed} needs calibration samples (calibration_data=...), "
                                       "not only calibration statistics")
        if params.adaround is not None and params.weight_quantization_scheme.bits <= 4:
            # 4-bit round-to-nearest weights break the network: ranges searched against its outputs
            # would fit that broken network (W4A8 MobileNetV2 70% -> 54.5% agreement), so the
            # rounding is learned first (its weights do not depend on the activation ranges)
            learned = self._learned_rounding(program, samples, params.adaround)
            program = quantize_graph(self.graph, statistics, params, learned_weights=learned)
        if params.output_aware_ranges is not None:
            ranges = self._searched_ranges(program, samples, params.output_aware_ranges)
            program = quantize_graph(self.graph, statistics, params, activation_ranges=ranges,
                                     learned_weights=learned)
        if params.adaround is not None and learned is None:
            learned = self._learned_rounding(program, samples, params.adaround)
            program = quantize_graph(self.graph, statistics, params, learned_weights=learned,
                                     activation_ranges=ranges)
        if params.bias_correction:
            if samples is None:
                raise CalibrationError("bias_correction needs calibration samples (calibration_data=...), "
                                       "not only calibration statistics")
            from core.quantization.bias_correction import correct_bias

            corrected = correct_bias(program, self.graph, self._calibration_samples(samples))
            log.info("bias correction adjusted %d node(s)", len(corrected))
        name = model_name or self.graph.name
        log.info("quantized %s: %r", name, program)
        model = Model(name, program, self.graph)
        _warn_collapses(model, statistics.example_inputs)
        return model

    def _searched_ranges(self, program, samples, method):
        """Output-aware activation ranges for ``program`` (core/quantization/range_search.py):
        cached in memory and on disk (``$MIXQ_CACHE_DIR/ranges``) like learned rounding."""
        from core.quantization import range_search

        fingerprint = hashlib.sha256()
        limited = list(_fingerprinted(self._calibration_samples(samples), fingerprint))
        digest = range_search.range_digest(program, fingerprint.hexdigest(), method)
        return self._cached("output-aware ranges", "ranges", digest, range_search.load_ranges,
                            range_search.save_ranges,
                            lambda: range_search.search_ranges(program, self.graph, limited, method))

    def _learned_rounding(self, program, samples, method):
        """AdaRound's integer weights for ``program`` (core/quantization/adaround.py): from the
        in-memory or on-disk cache (``$MIXQ_CACHE_DIR/adaround``) when the same data, method,
        scales and weights were learned before, else learned and cached."""
        from core.quantization import adaround

        fingerprint = hashlib.sha256()
        limited = []
        count = 0
        for feeds in _fingerprinted(self._calibration_samples(samples), fingerprint):
            if count >= method.max_samples:
                break
            limited.append(feeds)
            count += len(next(iter(feeds.values())))
        digest = adaround.rounding_digest(program, fingerprint.hexdigest(), method)
        return self._cached("learned rounding", "adaround", digest, adaround.load_rounding, adaround.save_rounding,
                            lambda: adaround.learn_rounding(program, self.graph, limited, method))

    def _cached(self, what: str, folder: str, digest: str, load, save, compute):
        """``compute()``'s result for ``digest``: from memory, else ``$MIXQ_CACHE_DIR/<folder>``
        (``load(path, digest)``), else computed and written there (``save(path, digest, value)``)."""
        import os

        from core.zoo import cache_dir

        if digest in self._rounding_cache:
            log.info("reusing %s (in memory, %s)", what, digest[:12])
            return self._rounding_cache[digest]
        path = os.path.join(cache_dir(), folder, f"{digest}.npz")
        value = load(path, digest)
        if value is not None:
            log.info("reusing %s from %s", what, path)
        else:
            value = compute()
            try:
                save(path, digest, value)
            except MixqError as e:   # the cache is an optimisation: a read-only cache dir is not an error
                log.warning("cannot cache %s: %s", what, e)
        self._rounding_cache[digest] = value
        while len(self._rounding_cache) > self._STATS_CACHE_SIZE:
            self._rounding_cache.pop(next(iter(self._rounding_cache)))
        return value

    def convert_to_sima_quantization(self, *, requantization_mode: Any = None, model_name: str | None = None,
                                     log_level: int | None = logging.NOTSET) -> Model:
        """Convert a pre-quantized TFLite model (int8 full-integer) into a :class:`core.model.Model`
        that keeps the model's own scales and zero points; no calibration. ``requantization_mode``:
        ``RequantizationMode.sima`` (default) or ``.tflite``, or ``QuantizationFlavor.sima / .tflite``;
        with ``tflite``, ``Model.execute(fast_mode=False)`` follows TensorFlow Lite's reference
        kernels bit for bit on the ops listed in docs/quantization.md. Float ops stay float.
        Raises :class:`~core.errors.UnsupportedOperatorError` naming an operator that cannot be
        converted, :class:`~core.errors.QuantizationConfigError` if the model is not pre-quantized."""
        from core.model import Model
        from core.quantization.params import RequantizationMode
        from core.quantization.tflite_convert import convert_tflite_program

        if log_level:
            log.setLevel(log_level)
        if requantization_mode is None:
            requantization_mode = RequantizationMode.sima
        program = convert_tflite_program(self.graph, requantization_mode, model_name)
        name = model_name or self.graph.name
        log.info("converted pre-quantized %s: %r", name, program)
        return Model(name, program, self.graph)

    def quantize_with_accuracy_feedback(
            self, calibration_data: Any, evaluation_dataset: Any, quantization_config: Any = default_quantization,
            accuracy_score: Any = None, target_accuracy: float | None = None, *, model_name: str | None = None,
            max_trials: int = 40, timeout: float | None = None, storage: Any = "mixq-search.journal",
            study_name: str | None = None, ranking: Any = None, ranking_samples: int = 16,
            multi_objective: bool = False, seed: int = 0, callbacks: Any = (), batch_size: int = 32,
            fast_mode: bool = False, confirm_exact: bool = True, max_confirmations: int = 4,
            executor: Any = None, log_level: int | None = logging.NOTSET) -> Model:
        """The model with the fewest INT16 nodes found that reaches ``target_accuracy``.

        ``evaluation_dataset``: ``(inputs dict, label)`` pairs; ``accuracy_score(outputs, labels)
        -> float`` where ``outputs[i]`` is the model's list of outputs for sample ``i`` (or an
        object with ``reset()/update(outputs, label)/compute()``). Calibration runs once. The
        search (:mod:`core.search.accuracy_feedback`) is seeded from a sensitivity ranking
        (``ranking``: node names most sensitive first, else computed on ``ranking_samples``
        evaluation samples), bounded by ``max_trials`` / ``timeout`` seconds, and persisted in
        ``storage`` (a journal file path, an Optuna RDB URL, or None for memory) so a killed run
        resumes. Raises :class:`~core.errors.AccuracyTargetError` (with ``best_accuracy``) when
        the target is out of reach. The returned model's ``accuracy_feedback`` attribute holds
        every candidate (:class:`~core.search.AccuracyFeedbackResult`). With ``fast_mode`` the
        candidates are scored in fast mode and the answer is confirmed under exact execution
        (``confirm_exact``, default on): a set that misses the target exactly is not returned --
        the search goes on to the next candidates and longer prefixes (``max_confirmations``
        feasible candidates first), or raises :class:`~core.errors.AccuracyTargetError` with the
        best exact accuracy; ``result.exact_accuracy`` and ``result.confirmations`` say what was
        confirmed. ``executor`` (:class:`core.search.parallel.TrialPool`): candidates are evaluated
        by workers sharing ``storage`` (an RDB URL), independent ones at the same time."""
        from core.quantization.calibration import CalibrationStatistics
        from core.search import Evaluator, SimulatedOutputError, rank_nodes_by_output_gain, search_int16_nodes

        if log_level:
            log.setLevel(log_level)
        if accuracy_score is None or target_accuracy is None:
            raise QuantizationConfigError("quantize_with_accuracy_feedback needs accuracy_score and target_accuracy")
        params = default_quantization if quantization_config is None else quantization_config
        if not isinstance(params, QuantizationParams):
            raise QuantizationConfigError(
                f"quantization_config must be QuantizationParams, got {type(params).__name__}")
        check_custom_config_nodes(params, [n.name for n in self.graph.nodes])
        evaluator = Evaluator(evaluation_dataset, self.input_names, self.input_shapes(), accuracy_score,
                              batch_size=batch_size, fast_mode=fast_mode)
        if isinstance(calibration_data, CalibrationStatistics):
            stats = calibration = calibration_data
        else:   # statistics of the graph the configuration quantizes (channel-equalized or not)
            if isinstance(calibration_data, Iterable) and iter(calibration_data) is calibration_data:
                calibration_data = list(calibration_data)      # read more than once
            owner = self._equalized_net() if params.channel_equalization and not self._equalized else self
            stats = owner._cached_statistics(calibration_data)
            # learned rounding and bias correction need the samples: each candidate learns its own
            # (an INT16 node changes its successors' inputs), cached by digest
            learns = params.adaround or params.bias_correction or params.output_aware_ranges
            calibration = calibration_data if learns else stats
        # the simulated output error of node sets, on a few evaluation samples: it ranks the nodes
        # and models accuracy along the ranking (no evaluation spent on either)
        from core.search.accuracy_feedback import quantize_with

        int8 = quantize_with(self, calibration, params, None)
        head = evaluator.samples[:max(1, int(ranking_samples))]
        error = SimulatedOutputError(self, int8, {n: np.concatenate([s[n] for s in head]) for n in self.input_names})
        key = f"{stats.metadata.get('data_sha256', '')}/{evaluator.fingerprint()}"
        if ranking is None:
            rank_study = None
            if executor is not None:         # the per-node passes as probe trials on the workers
                rank_study = "mixq-ranking-" + hashlib.sha256(repr(
                    (study_name, self.graph.name, key, repr(params), int(ranking_samples))).encode()).hexdigest()[:16]
            ranking = rank_nodes_by_output_gain(self, int8, error.feeds, error=error, executor=executor,
                                                storage=storage, study_name=rank_study)
        else:
            ranking = [(r, 0.0) if isinstance(r, str) else (str(r[0]), float(r[1])) for r in ranking]
            unknown = [n for n, _ in ranking if n not in {m.name for m in self.graph.nodes}]
            if unknown:
                raise QuantizationConfigError(f"ranking names node(s) not in the model: {unknown}")
        confirm = None
        if fast_mode and confirm_exact:          # the answer must hold under bit-accurate execution
            import copy

            confirm = copy.copy(evaluator)
            confirm.fast_mode = False
        result = search_int16_nodes(self, calibration, evaluator, params, target_accuracy, ranking,
                                    max_trials=max_trials, timeout=timeout, storage=storage, study_name=study_name,
                                    study_key=key, multi_objective=multi_objective, seed=seed, callbacks=callbacks,
                                    model_name=model_name or self.graph.name, surrogate=error, confirm=confirm,
                                    max_confirmations=max_confirmations, executor=executor)
        result.model.accuracy_feedback = result
        return result.model

    def search_quantization_options(
            self, calibration_data: Any, evaluation_dataset: Any, accuracy_score: Any, options: Any = None, *,
            base_config: Any = default_quantization, max_trials: int | None = None, timeout: float | None = None,
            storage: Any = None, study_name: str | None = None, seed: int = 0, callbacks: Any = (),
            batch_size: int = 32, fast_mode: bool = False, model_name: str | None = None, executor: Any = None):
        """The specification's "cycling through quantization options" template as one call:
        every combination of ``options`` (calibration method, weight scheme, activation scheme,
        channel equalization, bias correction, learned rounding ``adaround``;
        :data:`core.search.DEFAULT_OPTIONS` for the rest)
        quantized from one calibration pass and scored with ``accuracy_score`` on
        ``evaluation_dataset`` (as in :meth:`quantize_with_accuracy_feedback`). Exhaustive when
        the grid fits ``max_trials``, TPE otherwise. Returns a
        :class:`~core.search.OptionsSearchResult` (``best``, ``candidates``). ``executor``: as in
        :meth:`quantize_with_accuracy_feedback`."""
        from core.quantization.calibration import CalibrationStatistics
        from core.search import Evaluator
        from core.search.options import search_quantization_options

        evaluator = Evaluator(evaluation_dataset, self.input_names, self.input_shapes(), accuracy_score,
                              batch_size=batch_size, fast_mode=fast_mode)
        if isinstance(calibration_data, CalibrationStatistics):
            stats = calibration = calibration_data
        else:
            if isinstance(calibration_data, Iterable) and iter(calibration_data) is calibration_data:
                calibration_data = list(calibration_data)      # read once per graph variant
            stats = self._cached_statistics(calibration_data)
            calibration = calibration_data    # quantize() reuses its cache; equalized candidates calibrate theirs
        key = f"{stats.metadata.get('data_sha256', '')}/{evaluator.fingerprint()}"
        return search_quantization_options(self, calibration, evaluator, options, base_config=base_config,
                                           max_trials=max_trials, timeout=timeout, storage=storage,
                                           study_name=study_name, study_key=key, seed=seed, callbacks=callbacks,
                                           model_name=model_name or self.graph.name, executor=executor)

    def execute(self, inputs: Mapping[str, np.ndarray], *, log_level: int | None = logging.NOTSET) -> list[np.ndarray]:
        """Run the float model on one set of inputs (any batch size); outputs in graph-output order."""
        from core.runtime.float_interpreter import run_graph

        feeds = self.check_inputs(inputs)
        env = run_graph(self.graph, feeds)
        return [env[o] for o in self.graph.outputs]


def _warn_collapses(model, example) -> None:
    """A QuantizationCollapseWarning per collapsed node, checked on one calibration sample
    (local feed: :func:`core.analysis.layer_error.check_collapses`); nothing without a sample
    (statistics loaded from a file)."""
    if not example:
        return
    import warnings

    from core.analysis.layer_error import check_collapses
    from core.errors import QuantizationCollapseWarning

    for c in check_collapses(model, example):
        warnings.warn(f"{model.name}: quantized node collapsed: {c} -- see Model.analyze_quantization_error",
                      QuantizationCollapseWarning, stacklevel=3)


def _fingerprinted(samples, digest):
    """Yield validated samples unchanged while feeding their names, dtypes, shapes and bytes to
    ``digest``."""
    from core.data import update_digest

    for feeds in samples:
        update_digest(digest, feeds, sorted(feeds))
        digest.update(b"/")
        yield feeds
