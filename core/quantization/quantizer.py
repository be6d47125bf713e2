"""``quantize_graph``: a partitioned float graph + calibration statistics -> a QuantizedProgram.

The program is plain data (no closures): the float graph (node order, names, segments), one
:class:`TensorQuant` per tensor that lives on the MLA (inputs and outputs of MLA nodes), and per
node the integer constants its kernel needs. :mod:`core.runtime.integer_interpreter` runs it.

Rules (see docs/quantization.md, "Quantized programs"):

* activations: per tensor, the configuration's activation scheme and calibration method
  (``stats.compute_range``). Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``,
  ``zp = clamp(round(qmin - lo / scale))``. Symmetric: ``scale = max(|lo|, |hi|) / qmax``,
  ``zp = 0`` (so +/-a are both representable). An all-zero tensor gets scale 1. A 16-bit tensor's
  calibrated range is widened by ``SIXTEEN_BIT_RANGE_MARGIN`` (2x) first: activations on data
  beyond the calibration set exceed its ranges (measured on the coverage suite, 8 calibration
  crops: up to 1.3x on ResNet-18's logits, and clipping capped its INT16 output SQNR at 22 dB;
  77.7 dB with the margin), and at 16 bits the margin costs 6 dB of a ~90 dB rounding floor.
  A LayerNormalization's input gets ``LAYER_NORM_INPUT_MARGIN`` (1.25x) instead: LayerNorm divides
  each token by its own spread, so a token spreading less than the tensor's range (a ViT's class
  token) has its rounding error amplified; the residual stream's range is set by channels every
  input shows (ViT-Tiny INT16, 16 held-out crops: 53.2 -> 56.7 dB at 8 calibration crops,
  48.0 -> 57.2 at 32; Swin-T 75.5 -> 76.0; 1.0x clips on held-out data: Swin-T 72.7).
* weights: symmetric, per output channel or per tensor, ``bits`` = the weight scheme's width
  (16 on nodes whose precision is set to ``INT_16``), in [-qmax, qmax] (qmax = 127 or 32767),
  ``scale = max|w| / qmax`` (an all-zero channel gets scale 1).
  Bias: ``round(b / (s_in * s_w[c]))`` as int32 for 8-bit inputs (|bias_q| <= 2**30), int64 for
  16-bit inputs (<= 2**42); a channel whose bias would exceed that gets a coarser weight scale
  (``core.ops.quant_rules.bias_fitting_weight_scales``), never a clipped bias.
* Conv / Gemm / MatMul (constant weights): ``requantize(acc, m, shift, mode, zp_out, lo, hi)`` with
  ``(m, shift) = quantize_multiplier_for(s_in * s_w[c] / s_out, mode)`` and ``[lo, hi]`` the output
  type's range narrowed by the fused Relu/Clip (``activation_range_int``).
* MaxPool, AveragePool, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity, nearest Resize,
  constant Pad (padding with the quantized constant_value, the zero point for 0) and standalone
  Relu/Clip: the output reuses the input's TensorQuant.
* Add/Sub/Mul (two activation inputs), GlobalAveragePool, Concat: the output's own calibrated
  range, with the TFLite-exact kernels of :mod:`core.ops`.
* MatMul of two activations (attention): both operands keep their quantization, the output its
  calibrated range (``core.ops.gemm.MatMulRule``, ``matmul_int``). Softmax on the MLA (attention's): 16-bit output
  with scale 2**-15, zero point 0 (``core.ops.activation.softmax_int``), whatever the precision.
* Any other MLA node (and Add/Sub/Mul with a constant operand) runs as a *float island*: its
  inputs are dequantized, the float kernel runs, the output is quantized with its calibrated
  range. ``QuantizedProgram.kinds`` says ``"float"`` for them (listed in ``float_islands``).
* APU nodes (segment ``APU*``) stay float; tensors crossing APU -> MLA are quantized with their
  calibrated range, MLA -> APU / graph outputs are dequantized.
* precision: a tensor is 16-bit (symmetric) when the activation scheme is 16-bit or a node
  touching it (its MLA producer or an MLA consumer) has ``quantization_precision: INT_16``;
  ops whose output reuses the input's quantization get equal widths on both sides.
* ``output_int32: True`` on a Conv/Gemm/MatMul whose output is a graph output and has no MLA
  consumer: the int32/int64 accumulator is returned, dequantized with ``s_in * s_w[c]``; a fused
  activation is then applied in float after dequantization.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import CalibrationError, QuantizationConfigError
from core.ir.graph import Graph, Node
from core.ops.quant_rules import (
    fused_bounds,
    is_layout_op,
    quantize_weights,
    reuses_input_quant,
    rule_of,
    weights_on_grid,
)
from core.quantization.params import (
    QuantizationParams,
    QuantizationPrecision,
    RequantizationMode,
    check_custom_config_nodes,
    quantization_scheme,
)
from core.quantization.quant_data import NodeQuant, TensorQuant

__all__ = ["NodeQuant", "QuantizedProgram", "TensorQuant", "quantize_graph", "quantize_weights",
           "weights_on_grid"]


@dataclass
class QuantizedProgram:
    """Plain data: what :func:`core.runtime.integer_interpreter.run_program` executes."""

    graph: Graph
    tensors: dict[str, TensorQuant]
    constants: dict[str, NodeQuant]     # node name -> its integer constants
    kinds: dict[str, str]               # node name -> "int" | "float" (float island) | "apu"
    requantization_mode: RequantizationMode
    params: QuantizationParams
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def float_islands(self) -> list[str]:
        return [n for n, k in self.kinds.items() if k == "float"]

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for k in self.kinds.values():
            counts[k] = counts.get(k, 0) + 1
        return f"QuantizedProgram({self.graph.name!r}, {len(self.tensors)} quantized tensors, {counts})"


# --------------------------------------------------------------------------- helpers

# 16-bit activation ranges are the calibrated ones times this (see the module docstring)
SIXTEEN_BIT_RANGE_MARGIN = 2.0
# ... and those of a LayerNormalization's input times this (it amplifies a narrow token's rounding)
LAYER_NORM_INPUT_MARGIN = 1.25
# a tensor read only by Softmax keeps at most this much of its range below its maximum
# (exp(-16) = 1e-7, below the 16-bit probability step 2**-15)
SOFTMAX_INPUT_SPAN = 16.0


def is_mla(node: Node) -> bool:
    return not node.segment.startswith("APU")


def activation_quant(lo: float, hi: float, bits: int, asymmetric: bool) -> TensorQuant:
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not asymmetric:
        a = max(abs(lo), abs(hi))
        return TensorQuant(a / qmax if a > 0 else 1.0, 0, bits)
    if hi - lo <= 0:
        return TensorQuant(1.0, 0, bits)
    scale = (hi - lo) / (qmax - qmin)
    zp = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return TensorQuant(scale, zp, bits)


class QuantizeContext:
    """What an op's quantization rule (``QuantRule.quantize``) reads and writes: the graph, the
    configuration, ``tensors`` (tensor -> TensorQuant, filled in node order) and each tensor's own
    calibrated quantization (``own_quant``)."""

    def __init__(self, graph: Graph, stats, params: QuantizationParams, bits: dict[str, int],
                 learned_weights: Mapping[str, np.ndarray] | None = None,
                 activation_ranges: Mapping[str, tuple[float, float]] | None = None):
        self.graph = graph
        self.learned_weights = dict(learned_weights or {})   # node -> integer weights (AdaRound's)
        # tensor -> (lo, hi) replacing its calibrated range (output-aware ranges, core/quantization/range_search.py)
        self.activation_ranges = dict(activation_ranges or {})
        self.consts = graph.constants
        self.params = params
        self.mode = params.requantization_mode
        self.stats = stats
        self.bits = bits
        self.tensors: dict[str, TensorQuant] = {}
        self.consumers = graph.consumers()
        self.producers = graph.producers()
        self.softmax_clipped: set[str] = set()

    def activations(self, node: Node) -> list[str]:
        return [i for i in node.inputs if i and i not in self.consts]

    def own_quant(self, t: str) -> TensorQuant:
        """``t``'s quantization from its calibrated range, at its width."""
        if t not in self.stats:
            raise CalibrationError(f"no calibration statistics for tensor {t!r}: calibrate this model first")
        act_scheme = self.params.activation_quantization_scheme
        b = self.bits[t]
        # the scheme's own width keeps its symmetry; a per-node INT16 override is symmetric
        asym = act_scheme.asymmetric if b == act_scheme.bits else False
        scheme = quantization_scheme(asymmetric=asym, per_channel=False, bits=b)
        if t in self.activation_ranges:
            lo, hi = (float(v) for v in self.activation_ranges[t])
        else:
            lo, hi = self.stats.compute_range(t, self.params.calibration_method, scheme)
        if lo < hi - SOFTMAX_INPUT_SPAN and self.feeds_only_softmax(t):
            # logits more than SOFTMAX_INPUT_SPAN below the maximum are 0 after Softmax: an attention
            # mask's -100 would otherwise set the step (Swin: local SQNR 20 -> 33 dB at INT8)
            lo = hi - SOFTMAX_INPUT_SPAN
            pending = [t]
            while pending:   # t and the layout ops' outputs on the way to the Softmax
                u = pending.pop()
                self.softmax_clipped.add(u)
                pending += [n.outputs[0] for n in self.consumers.get(u, []) if n.op != "Softmax" and n.outputs]
        if b >= 16:   # held-out data exceeds the calibrated range; 16 bits can afford the margin
            lo, hi = self.margin_within_bounds(t, lo, hi)
        return activation_quant(lo, hi, b, asym)

    def margin_within_bounds(self, t: str, lo: float, hi: float) -> tuple[float, float]:
        """``(lo, hi)`` widened by SIXTEEN_BIT_RANGE_MARGIN (LAYER_NORM_INPUT_MARGIN for a tensor a
        LayerNormalization reads), but not past what the producer's fused activation can output
        (a ReLU6 conv's output never exceeds 6, so a margin beyond it is only a coarser step:
        MobileNetV2's calibrated 4.4 would become 8.8)."""
        feeds_layer_norm = any(n.op == "LayerNormalization" for n in self.consumers.get(t, []))
        margin = LAYER_NORM_INPUT_MARGIN if feeds_layer_norm else SIXTEEN_BIT_RANGE_MARGIN
        lo_m, hi_m = lo * margin, hi * margin
        producer = self.producers.get(t)
        if producer is not None and producer.attrs.get("activation"):
            act_lo, act_hi = fused_bounds(producer)
            if np.ndim(act_lo) == 0 and np.ndim(act_hi) == 0:   # per-channel bounds (equalized): no cap
                lo_m, hi_m = max(lo_m, min(float(act_lo), lo)), min(hi_m, max(float(act_hi), hi))
        return lo_m, hi_m

    def feeds_only_softmax(self, t: str) -> bool:
        """Is every use of ``t`` a Softmax (directly or through layout ops that keep its quantization)?"""
        uses = self.consumers.get(t, [])
        if not uses or t in self.graph.outputs:
            return False
        return all(n.op == "Softmax" or (is_layout_op(n.op) and reuses_input_quant(n.op) and n.outputs and
                                         self.feeds_only_softmax(n.outputs[0])) for n in uses)

    def input_quant(self, t: str) -> TensorQuant:
        if t not in self.tensors:  # a graph input or an APU output read by the MLA
            self.tensors[t] = self.own_quant(t)
        return self.tensors[t]

    def is_final_output(self, t: str) -> bool:
        """Is ``t`` a graph output that no MLA node reads (so it may leave as an accumulator)?"""
        return t in self.graph.outputs and not any(is_mla(m) for m in self.consumers.get(t, []))


# --------------------------------------------------------------------------- main entry

def quantize_graph(graph: Graph, stats, params: QuantizationParams,
                   learned_weights: Mapping[str, np.ndarray] | None = None,
                   activation_ranges: Mapping[str, tuple[float, float]] | None = None) -> QuantizedProgram:
    """Quantize ``graph`` with ``stats`` (CalibrationStatistics) under ``params``: tensor widths,
    then each MLA node through its op's quantization rule (``OpDef.quant``), in order.
    ``learned_weights``: node name -> integer weights (e.g. AdaRound's, on the scales
    ``quantize_weights`` computes) used instead of round-to-nearest on those dense nodes;
    ``activation_ranges``: tensor -> (lo, hi) used instead of its calibrated range (e.g. the
    output-aware ranges of :mod:`core.quantization.range_search`; still one per-tensor scale)."""
    if not isinstance(params, QuantizationParams):
        raise QuantizationConfigError(f"quantization_config must be QuantizationParams, got {type(params).__name__}")
    check_custom_config_nodes(params, [n.name for n in graph.nodes])
    graph = graph.copy()   # the program owns its node list (constant arrays are shared, immutable)
    ctx = QuantizeContext(graph, stats, params, tensor_widths(graph, params), learned_weights,
                          activation_ranges)
    node_quant: dict[str, NodeQuant] = {}
    kinds: dict[str, str] = {}
    for n in graph.nodes:
        if not is_mla(n):
            kinds[n.name] = "apu"
            continue
        kinds[n.name], node_quant[n.name] = quantize_node(n, ctx)
    meta = {"activation_bits": params.activation_quantization_scheme.bits}
    if ctx.softmax_clipped:   # ranges cut to SOFTMAX_INPUT_SPAN on purpose (analysis does not call them collapsed)
        meta["softmax_clipped_tensors"] = sorted(ctx.softmax_clipped)
    return QuantizedProgram(graph, ctx.tensors, node_quant, kinds, params.requantization_mode, params, meta)


def tensor_widths(graph: Graph, params: QuantizationParams) -> dict[str, int]:
    """Which tensors live on the MLA, and their widths: 16 where the activation scheme is 16-bit or a
    node touching the tensor is ``INT_16``; ops reusing their input's quantization get equal widths."""
    act_bits = params.activation_quantization_scheme.bits
    consts = graph.constants
    mla_nodes = [n for n in graph.nodes if is_mla(n)]

    def activations(node: Node) -> list[str]:
        return [i for i in node.inputs if i and i not in consts]

    bits: dict[str, int] = {}
    for n in mla_nodes:
        node_bits = 16 if (act_bits == 16 or params.precision_for(n.name) is QuantizationPrecision.INT_16) else 8
        for t in activations(n) + [o for o in n.outputs if o]:
            bits[t] = max(bits.get(t, 8), node_bits)
    reuse_nodes = [n for n in mla_nodes if reuses_input_quant(n.op) and activations(n) and n.outputs[0]]
    changed = True
    while changed:   # reuse ops: equal widths on both sides
        changed = False
        for n in reuse_nodes:
            t_in, t_out = activations(n)[0], n.outputs[0]
            b = max(bits[t_in], bits[t_out])
            if bits[t_in] != b or bits[t_out] != b:
                bits[t_in] = bits[t_out] = b
                changed = True
    return bits


def quantize_node(n: Node, ctx: QuantizeContext) -> tuple[str, NodeQuant]:
    """One MLA node: its kind ("int" or "float") and constants; the op's rule sets its outputs'
    quantization, or (no rule, or a variant the rule does not take) it is a float island whose
    outputs get their own calibrated quantization."""
    for t in ctx.activations(n):
        ctx.input_quant(t)
    rule = rule_of(n)
    nq = rule.quantize(n, ctx) if rule is not None else None
    if nq is not None:
        return "int", nq
    for o in n.outputs:
        if o:
            ctx.tensors[o] = ctx.own_quant(o)
    return "float", NodeQuant()
