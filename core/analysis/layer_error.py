"""Per-layer quantization error: how much each node of a quantized model departs from FP32.

``local_feed=True``: every node of the quantized program is fed the *float* model's values of
its inputs (quantized as the program quantizes them), and its dequantized output is compared
with the float node's output -- the error that node adds on its own.
``local_feed=False``: the quantized and the float model each run the data end to end, and every
node's dequantized output is compared with the float one -- the error accumulated up to it.

Metrics, over all elements of the node's first output and all samples:

* ``mae``  mean |q - f|            * ``mse``  mean (q - f)**2
* ``psnr`` 10 log10(peak**2 / mse), peak = max |f|  (dB; higher is better)
* ``sqnr`` 10 log10(sum f**2 / sum (q - f)**2)      (dB; higher is better)
* ``cosine`` sum(q f) / sqrt(sum q**2 sum f**2)      (1 is perfect)

Only :func:`core.runtime.integer_interpreter.run_program` runs the integer arithmetic: a node
alone runs as a one-node program over the parent's quantization, so local results are exactly
what the node computes inside the model.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError, QuantizationConfigError
from core.inputs import InputSignature, check_samples
from core.ir.graph import Graph

__all__ = ["METRICS", "LayerError", "LayerErrorReport", "analyze_quantization_error", "check_collapses"]

METRICS = ("mae", "mse", "psnr", "sqnr", "cosine")
_HIGHER_IS_BETTER = {"psnr", "sqnr", "cosine"}


@dataclass(frozen=True)
class LayerError:
    node: str
    op: str
    precision: str          # "int8", "int16", "int32 out", "float island", "float (APU)"
    error: float


class _Sums:
    __slots__ = ("abs", "sq", "n", "peak", "ff", "qq", "qf", "qlo", "qhi", "flo", "fhi")

    def __init__(self):
        self.abs = self.sq = self.ff = self.qq = self.qf = 0.0
        self.n = 0
        self.peak = 0.0
        self.qlo = self.flo = math.inf
        self.qhi = self.fhi = -math.inf

    def add(self, q: np.ndarray, f: np.ndarray, max_elements: int | None = None) -> None:
        q, f = np.asarray(q), np.asarray(f)
        if max_elements is not None and q.size > max_elements and q.shape == f.shape:
            # an evenly spaced subset (the quantize-time collapse check)
            idx = np.unravel_index(np.linspace(0, q.size - 1, max_elements).astype(np.int64), q.shape)
            q, f = q[idx], f[idx]
        # float64 copies in the arrays' own memory order (no strided ravel of channels-last views)
        q, f = q.astype(np.float64), f.astype(np.float64)
        d = q - f
        self.abs += float(np.abs(d).sum())
        self.sq += float((d * d).sum())
        self.n += d.size
        if f.size:
            self.peak = max(self.peak, float(np.abs(f).max()))
            self.qlo, self.qhi = min(self.qlo, float(q.min())), max(self.qhi, float(q.max()))
            self.flo, self.fhi = min(self.flo, float(f.min())), max(self.fhi, float(f.max()))
        self.ff += float((f * f).sum())
        self.qq += float((q * q).sum())
        self.qf += float((q * f).sum())

    def value(self, metric: str) -> float:
        if self.n == 0:
            return float("nan")
        mse = self.sq / self.n
        if metric == "mae":
            return self.abs / self.n
        if metric == "mse":
            return mse
        if metric == "psnr":
            return math.inf if mse == 0 else 10 * math.log10(max(self.peak, 1e-30) ** 2 / mse)
        if metric == "sqnr":
            return math.inf if self.sq == 0 else 10 * math.log10(max(self.ff, 1e-300) / self.sq)
        denominator = math.sqrt(self.qq * self.ff)
        return 1.0 if denominator == 0 and self.sq == 0 else (self.qf / denominator if denominator else 0.0)


@dataclass
class LayerErrorReport:
    """Per-node errors in graph order; ``table()``, ``ranking()``, ``plot(path)``. ``collapses``:
    the quantized nodes whose output collapsed (:mod:`core.analysis.collapse`; local feed only,
    empty for a cumulative one); ``collapsed`` their names."""

    metric: str
    local_feed: bool
    rows: list[LayerError]
    num_samples: int
    collapses: list = field(default_factory=list)

    @property
    def collapsed(self) -> list[str]:
        return [c.node for c in self.collapses]

    def badness(self, row: LayerError) -> float:
        """Larger = worse, whatever the metric's direction."""
        if math.isnan(row.error):
            return -math.inf
        return -row.error if self.metric in _HIGHER_IS_BETTER else row.error

    def ranking(self) -> list[tuple[str, float]]:
        """``[(node, error)]``, worst first (with ``local_feed=True``: the error each node adds)."""
        return [(r.node, r.error) for r in sorted(self.rows, key=self.badness, reverse=True)]

    def table(self, worst_first: bool = False) -> str:
        rows = sorted(self.rows, key=self.badness, reverse=True) if worst_first else self.rows
        head = ("node", "op", "precision", self.metric)
        body = [(r.node, r.op, r.precision, f"{r.error:.6g}") for r in rows]
        if self.collapses:
            why = {c.node: c.reason for c in self.collapses}
            head += ("collapse",)
            body = [x + ("COLLAPSED: " + why[x[0]] if x[0] in why else "",) for x in body]
        widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [head] + body]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | os.PathLike, top: int = 30) -> str:
        """A horizontal bar chart of the ``top`` worst nodes (PNG), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from core.formats.atomic import atomic_write

        rows = sorted([r for r in self.rows if math.isfinite(r.error)], key=self.badness, reverse=True)[:top]
        # cosine similarity sits near 1: plot the distance 1 - cosine instead, on a log axis
        values = [1.0 - r.error if self.metric == "cosine" else r.error for r in rows]
        fig, ax = plt.subplots(figsize=(9, 0.3 * max(len(rows), 4) + 1.2))
        colors = {"int8": "tab:blue", "int16": "tab:green", "int32 out": "tab:purple"}
        collapsed = set(self.collapsed)
        ax.barh([r.node + (" (COLLAPSED)" if r.node in collapsed else "") for r in rows][::-1], values[::-1],
                color=["tab:red" if r.node in collapsed else colors.get(r.precision, "tab:gray")
                       for r in rows][::-1])
        if self.metric == "cosine" and all(v > 0 for v in values):
            ax.set_xscale("log")
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()] +
                  [Patch(color="tab:gray", label="float")] +
                  ([Patch(color="tab:red", label="collapsed")] if collapsed else []), fontsize=7, loc="lower right")
        feed = "local feed (error each node adds)" if self.local_feed else "cumulative (error up to each node)"
        label = {"cosine": "1 - cosine similarity"}.get(self.metric, self.metric)
        ax.set_xlabel(label + (" (higher is better)" if self.metric in ("psnr", "sqnr") else " (lower is better)"))
        ax.set_title(f"per-layer quantization error, {feed}, {self.num_samples} samples; worst first", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        path = os.fspath(path)
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        return path


def _precision(program, node) -> str:
    kind = program.kinds[node.name]
    if kind == "apu":
        return "float (APU)"
    if kind == "float":
        return "float island"
    outs = [program.tensors[o] for o in node.outputs if o and o in program.tensors]
    if outs and outs[0].bits == 32:
        return "int32 out"
    bits = [program.tensors[t].bits for t in list(node.inputs) + list(node.outputs)
            if t and t in program.tensors and program.tensors[t].bits in (8, 16)]
    return f"int{max(bits)}" if bits else "int8"


def _node_program(program, node):
    """``node`` alone as a program over the parent's quantization (inputs: its activations)."""
    from core.quantization.quantizer import QuantizedProgram

    parent = program.graph
    g = Graph(parent.name)
    g.inputs = list(dict.fromkeys(i for i in node.inputs if i and i not in parent.constants))
    g.outputs = [o for o in node.outputs if o][:1]
    g.nodes = [node]
    g.constants = parent.constants
    g.tensors = parent.tensors
    return QuantizedProgram(g, program.tensors, program.constants, program.kinds, program.requantization_mode,
                            program.params, program.meta)


def _batches(evaluation_data: Iterable, graph: Graph, batch_size: int):
    if evaluation_data is None or isinstance(evaluation_data, (str, bytes, Mapping)) or \
            not isinstance(evaluation_data, Iterable):
        raise InputError("evaluation_data must be an iterable of {input name: array} samples, got "
                         f"{type(evaluation_data).__name__}")
    pending: list[dict] = []
    for sample in check_samples(evaluation_data, InputSignature.of(graph), what="evaluation sample"):
        pending.append(sample)
        if len(pending) == batch_size:
            yield _stack(pending)
            pending = []
    if pending:
        yield _stack(pending)


def _stack(samples: list[dict]) -> dict:
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def analyze_quantization_error(model, evaluation_data: Iterable, error_metric: str = "mae", *,
                               local_feed: bool = True, batch_size: int = 8,
                               progress: bool = False, record: bool = True,
                               max_elements: int | None = None) -> LayerErrorReport:
    """Per-node error of ``model`` (a :class:`core.model.Model`) against its float graph, and
    (local feed) the nodes that collapsed. ``record=False`` leaves the program's layer statistics
    (what ``save`` writes) alone; ``max_elements``: judge each node on an evenly spaced subset of
    that many elements per batch (the quantize-time check), None = all."""
    from core.analysis.collapse import find_collapses
    from core.runtime.float_interpreter import run_graph
    from core.runtime.integer_interpreter import run_program

    metric = str(error_metric).lower() if isinstance(error_metric, str) else error_metric
    if metric not in METRICS:
        raise QuantizationConfigError(f"error_metric must be one of {list(METRICS)}, got {error_metric!r}")
    program = model.program
    float_graph = model.float_graph
    nodes = [n for n in program.graph.nodes if n.outputs and n.outputs[0]]
    sums = {n.name: _Sums() for n in nodes}
    subprograms = {n.name: _node_program(program, n) for n in nodes} if local_feed else None
    if not local_feed:
        full = _node_program(program, nodes[0])
        full.graph = program.graph.copy()
        full.graph.outputs = list(dict.fromkeys([n.outputs[0] for n in nodes] + list(program.graph.outputs)))
    count = 0
    for feeds in _batches(evaluation_data, program.graph, max(1, int(batch_size))):
        wanted = {n.outputs[0] for n in nodes} | {i for n in nodes for i in n.inputs if i}
        env = run_graph(float_graph, feeds, keep=tuple(t for t in wanted if t not in float_graph.constants))
        env.update(feeds)
        if local_feed:
            for n in nodes:
                sub = subprograms[n.name]
                out = run_program(sub, {i: env[i] for i in sub.graph.inputs})[n.outputs[0]]
                sums[n.name].add(out, env[n.outputs[0]], max_elements)
        else:
            outs = run_program(full, feeds)
            for n in nodes:
                sums[n.name].add(outs[n.outputs[0]], env[n.outputs[0]], max_elements)
        count += len(next(iter(feeds.values())))
        if progress:
            print(f"\ranalyzing: {count} samples", end="", flush=True)
    if progress:
        print()
    if count == 0:
        raise InputError("evaluation_data is empty")
    rows = [LayerError(n.name, n.op, _precision(program, n), sums[n.name].value(metric)) for n in nodes]
    collapses = []
    if local_feed:
        # a tensor only Softmax reads is cut SOFTMAX_INPUT_SPAN below its maximum on purpose
        # (an attention mask's -100 becomes -16): its producers are not judged
        cut = set(program.meta.get("softmax_clipped_tensors") or ())
        outputs = {n.name: n.outputs for n in nodes}
        judged = [r for r in rows if not cut.intersection(outputs[r.node])]
        collapses = find_collapses([
            (r.node, r.op, r.precision, sums[r.node].value("sqnr"), sums[r.node].fhi > sums[r.node].flo,
             sums[r.node].ff > 0, sums[r.node].qhi == sums[r.node].qlo) for r in judged])
        # a node fed a collapsed tensor (through its input grid) collapses with it: name the first
        by_name = {n.name: n for n in nodes}
        broken: set[str] = set()
        first = []
        for c in collapses:                      # graph order
            if not broken.intersection(by_name[c.node].inputs):
                first.append(c)
            broken.update(by_name[c.node].outputs)
        collapses = first
    report = LayerErrorReport(metric, bool(local_feed), rows, count, collapses)
    if record:
        program.meta["layer_statistics"] = {r.node: {"metric": metric, "error_value": r.error} for r in rows}
        program.meta["layer_statistics_feed"] = "local" if local_feed else "cumulative"
    return report


COLLAPSE_CHECK_ELEMENTS = 16384   # per node, at quantize time


def check_collapses(model, sample) -> list:
    """Collapses (:class:`core.analysis.collapse.Collapse`) of ``model`` on one input sample
    (local feed; the program's recorded layer statistics are left alone)."""
    return analyze_quantization_error(model, [sample], "sqnr", local_feed=True, batch_size=1, record=False,
                                      max_elements=COLLAPSE_CHECK_ELEMENTS).collapses
