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
* weights: symmetric, per output channel or per tensor, ``bits`` = the weight scheme's width
  (16 on nodes whose precision is set to ``INT_16``), in [-qmax, qmax] (qmax = 127 or 32767),
  ``scale = max|w| / qmax`` (an all-zero channel gets scale 1).
  Bias: ``round(b / (s_in * s_w[c]))`` as int32 for 8-bit inputs (|bias_q| <= 2**30), int64 for
  16-bit inputs (<= 2**42); a channel whose bias would exceed that gets a coarser weight scale
  (``_bias_fitting_weight_scales``), never a clipped bias.
* Conv / Gemm / MatMul (constant weights): ``requantize(acc, m, shift, mode, zp_out, lo, hi)`` with
  ``(m, shift) = quantize_multiplier_for(s_in * s_w[c] / s_out, mode)`` and ``[lo, hi]`` the output
  type's range narrowed by the fused Relu/Clip (``activation_range_int``).
* MaxPool, AveragePool, Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity, nearest Resize,
  constant Pad (padding with the quantized constant_value, the zero point for 0) and standalone
  Relu/Clip: the output reuses the input's TensorQuant.
* Add/Sub/Mul (two activation inputs), GlobalAveragePool, Concat: the output's own calibrated
  range, with the TFLite-exact kernels of :mod:`core.ops`.
* MatMul of two activations (attention): both operands keep their quantization, the output its
  calibrated range (``core.ops.gemm.matmul_int``). Softmax on the MLA (attention's): 16-bit output
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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import CalibrationError, QuantizationConfigError
from core.ir.graph import Graph, Node
from core.ops.activation import SOFTMAX_OUT_BITS, SOFTMAX_OUT_SCALE, activation_range_int, softmax_int_constants
from core.ops.common import weight_output_axis
from core.ops.gemm import matmul_int_constants
from core.quantization.params import (
    QuantizationParams,
    QuantizationPrecision,
    RequantizationMode,
    check_custom_config_nodes,
    quantization_scheme,
)
from core.quantization.requantize import quantize_multiplier_for

__all__ = ["QuantizedProgram", "TensorQuant", "quantize_graph", "DENSE_OPS", "REUSE_OPS"]

DENSE_OPS = ("Conv", "Gemm", "MatMul")
# ops whose output keeps the input's scale and zero point
REUSE_OPS = ("MaxPool", "AveragePool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
             "Identity", "Resize", "Relu", "Clip", "Pad")
RESCALE_OPS = ("Add", "Sub", "Mul", "GlobalAveragePool", "Concat")


@dataclass(frozen=True)
class TensorQuant:
    """``real = (q - zero_point) * scale``; ``q`` a signed ``bits``-bit integer (32: accumulator)."""

    scale: float
    zero_point: int
    bits: int
    # how ``quantize`` rounds float inputs: "half_even" (np.round of x / scale in float64) or
    # "tflite" (TFLite's QUANTIZE: x / scale in float32, TfLiteRound = half away from zero)
    rounding: str = "half_even"

    def __post_init__(self):
        if self.rounding not in ("half_even", "tflite"):
            raise QuantizationConfigError(
                f"TensorQuant.rounding must be 'half_even' or 'tflite', got {self.rounding!r}"
            )

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """``clamp(np.round(x / scale) + zp)`` as int64; ``np.round`` rounds half to even, in
        float64 (exact for float32 inputs up to the final rounding, so batch-independent).
        ``rounding="tflite"``: TFLite's QUANTIZE, ``x / scale`` in float32 rounded half away from zero."""
        if self.rounding == "tflite":
            # reference_ops::AffineQuantize: static_cast<int32>(TfLiteRound(val / scale)) + zp,
            # the division in float32; the rounding of that float32 quotient is exact in float64
            with np.errstate(over="ignore", invalid="ignore"):
                d = (np.asarray(x, np.float32) / np.float32(self.scale)).astype(np.float64)
            q = np.sign(d) * np.floor(np.abs(d) + 0.5)
        else:
            q = np.round(np.asarray(x, np.float64) / self.scale)
        return np.clip(q, self.qmin - self.zero_point, self.qmax - self.zero_point).astype(np.int64) + self.zero_point

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q, np.int64) - self.zero_point) * np.float64(self.scale)).astype(np.float32)


@dataclass
class QuantizedProgram:
    """Plain data: what :func:`core.runtime.integer_interpreter.run_program` executes."""

    graph: Graph
    tensors: dict[str, TensorQuant]
    constants: dict[str, dict[str, Any]]
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


def quantize_weights(w: np.ndarray, axis: int | None, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric ``bits``-bit in [-qmax, qmax] (qmax = 2**(bits-1) - 1, so +/-w are both
    representable; 4-bit weights live in int8 containers): (w_q int8/int16, scales float64 per
    channel along ``axis``, or one scale when ``axis`` is None)."""
    qmax = float((1 << (bits - 1)) - 1)
    w = np.asarray(w, np.float64)
    if axis is None:
        amax = np.array([np.max(np.abs(w))]) if w.size else np.array([0.0])
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float64)
    return weights_on_grid(w, scales, axis, bits), scales


def weights_on_grid(w: np.ndarray, scales: np.ndarray, axis: int | None, bits: int) -> np.ndarray:
    """``clip(round(w / scale))`` in [-qmax, qmax]: one scale when ``axis`` is None, else one per
    channel along ``axis``; int8 containers for up to 8 bits, int16 above."""
    qmax = float((1 << (bits - 1)) - 1)
    w = np.asarray(w, np.float64)
    if axis is None:
        q = np.round(w / scales[0])
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.round(w / scales.reshape(shape))
    return np.clip(q, -qmax, qmax).astype(np.int8 if bits <= 8 else np.int16)


def _fused_bounds(node: Node) -> tuple[Any, Any]:
    """The fused activation's (lo, hi): floats, or per-channel arrays (channel equalization)."""
    act = node.attrs.get("activation")
    if not act:
        return -math.inf, math.inf
    if act["kind"] == "relu":
        return 0.0, math.inf
    bounds = []
    for key, default in (("min", -math.inf), ("max", math.inf)):
        b = np.asarray(act.get(key, default), np.float64)
        bounds.append(float(b) if b.ndim == 0 else b.reshape(-1))
    return bounds[0], bounds[1]


def _activation_range(q: TensorQuant, lo, hi, c: dict) -> None:
    """``c["act_min"], c["act_max"]``: the integer clamp of a fused activation; with per-channel
    bounds, the loosest ones (for requantize) and ``c["act_channel_bounds"]``: the per-channel
    (min array, max array) that the interpreter applies after requantization."""
    if np.ndim(lo) == 0 and np.ndim(hi) == 0:
        c["act_min"], c["act_max"] = activation_range_int(q.zero_point, q.scale, lo, hi, q.qmin, q.qmax)
        return
    n = max(np.size(lo), np.size(hi))
    los, his = np.broadcast_to(lo, (n,)), np.broadcast_to(hi, (n,))
    pairs = [activation_range_int(q.zero_point, q.scale, float(a), float(b), q.qmin, q.qmax) for a, b in zip(los, his)]
    mins = np.array([p[0] for p in pairs], np.int64)
    maxs = np.array([p[1] for p in pairs], np.int64)
    c["act_min"], c["act_max"] = int(mins.min()), int(maxs.max())
    if mins.min() != mins.max() or maxs.min() != maxs.max():
        c["act_channel_bounds"] = (mins, maxs)


# --------------------------------------------------------------------------- main entry

def quantize_graph(graph: Graph, stats, params: QuantizationParams,
                   learned_weights: Mapping[str, np.ndarray] | None = None) -> QuantizedProgram:
    """Quantize ``graph`` with ``stats`` (CalibrationStatistics) under ``params``.
    ``learned_weights``: node name -> integer weights (e.g. AdaRound's, on the scales
    ``quantize_weights`` computes) used instead of round-to-nearest on those dense nodes."""
    if not isinstance(params, QuantizationParams):
        raise QuantizationConfigError(f"quantization_config must be QuantizationParams, got {type(params).__name__}")
    check_custom_config_nodes(params, [n.name for n in graph.nodes])
    graph = graph.copy()   # the program owns its node list (constant arrays are shared, immutable)
    consts = graph.constants
    act_scheme = params.activation_quantization_scheme
    mode = params.requantization_mode
    mla_nodes = [n for n in graph.nodes if is_mla(n)]

    def activations(node: Node) -> list[str]:
        return [i for i in node.inputs if i and i not in consts]

    # ---- 1. which tensors live on the MLA, and their widths
    bits: dict[str, int] = {}
    for n in mla_nodes:
        node_bits = 16 if (act_scheme.bits == 16 or params.precision_for(n.name) is QuantizationPrecision.INT_16) else 8
        for t in activations(n) + [o for o in n.outputs if o]:
            bits[t] = max(bits.get(t, 8), node_bits)
    changed = True
    while changed:   # reuse ops: equal widths on both sides
        changed = False
        for n in mla_nodes:
            if n.op in REUSE_OPS and activations(n) and n.outputs[0]:
                t_in, t_out = activations(n)[0], n.outputs[0]
                b = max(bits[t_in], bits[t_out])
                if bits[t_in] != b or bits[t_out] != b:
                    bits[t_in] = bits[t_out] = b
                    changed = True

    def own_quant(t: str) -> TensorQuant:
        if t not in stats:
            raise CalibrationError(f"no calibration statistics for tensor {t!r}: calibrate this model first")
        b = bits[t]
        # the scheme's own width keeps its symmetry; a per-node INT16 override is symmetric
        asym = act_scheme.asymmetric if b == act_scheme.bits else False
        scheme = quantization_scheme(asymmetric=asym, per_channel=False, bits=b)
        lo, hi = stats.compute_range(t, params.calibration_method, scheme)
        if b >= 16:   # held-out data exceeds the calibrated range; 16 bits can afford the margin
            lo, hi = lo * SIXTEEN_BIT_RANGE_MARGIN, hi * SIXTEEN_BIT_RANGE_MARGIN
        return activation_quant(lo, hi, b, asym)

    tq: dict[str, TensorQuant] = {}
    node_consts: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    consumers = graph.consumers()

    def input_quant(t: str) -> TensorQuant:
        if t not in tq:  # a graph input or an APU output read by the MLA
            tq[t] = own_quant(t)
        return tq[t]

    for n in graph.nodes:
        if not is_mla(n):
            kinds[n.name] = "apu"
            continue
        ins = activations(n)
        out = n.outputs[0] if n.outputs else ""
        for t in ins:
            input_quant(t)
        c: dict[str, Any] = {}
        kind = "int"
        if n.op in DENSE_OPS and len(n.inputs) >= 2 and n.inputs[1] in consts and n.inputs[0] not in consts:
            c = _dense_constants(n, graph, tq[n.inputs[0]], params, mode, (learned_weights or {}).get(n.name))
            if c.get("output_int32"):
                if out not in graph.outputs or any(is_mla(m) for m in consumers.get(out, [])):
                    raise QuantizationConfigError(
                        f"output_int32 on {n.name!r}: only a final Conv/Gemm/MatMul whose output is a graph "
                        f"output (and feeds no other MLA node) can return its int32 accumulator")
                tq[out] = TensorQuant(float(tq[n.inputs[0]].scale), 0, 32)
            else:
                tq[out] = own_quant(out)
                _finish_dense(c, n, tq[n.inputs[0]], tq[out], mode)
        elif n.op == "MatMul" and len(ins) == 2 and not any(i in consts for i in n.inputs[:2]):
            # attention's Q K^T / P V: both operands quantized (core.ops.gemm.matmul_int)
            tq[out] = own_quant(out)
            c = matmul_int_constants(n, tq[ins[0]], tq[ins[1]], tq[out], mode)
        elif n.op == "Softmax" and len(ins) == 1 and (sm := softmax_int_constants(n, tq[ins[0]])) is not None:
            # fixed 16-bit probabilities (core.ops.activation.softmax_int)
            tq[out] = TensorQuant(SOFTMAX_OUT_SCALE, 0, SOFTMAX_OUT_BITS)
            c = sm
        elif n.op in REUSE_OPS and len(ins) == 1 and _reuse_supported(n):
            tq[out] = tq[ins[0]]
            if n.op in ("Relu", "Clip"):
                lo, hi = (0.0, math.inf) if n.op == "Relu" else _clip_bounds(n, consts)
                q = tq[out]
                c["act_min"], c["act_max"] = activation_range_int(q.zero_point, q.scale, lo, hi, q.qmin, q.qmax)
            elif n.op == "AveragePool":
                c["qmin"], c["qmax"] = tq[out].qmin, tq[out].qmax
            elif n.op == "Pad":   # constant padding with the quantized constant_value (zp for 0)
                value = consts[n.inputs[2]] if len(n.inputs) > 2 and n.inputs[2] else np.zeros(())
                value = np.asarray(value, np.float64).reshape(-1)
                c["pad_value_q"] = int(tq[out].quantize(value[0] if value.size else 0.0))
        elif n.op in RESCALE_OPS and len(ins) == len([i for i in n.inputs if i]) and \
                (n.op in ("GlobalAveragePool", "Concat") or len(ins) == 2):
            tq[out] = own_quant(out)
            lo, hi = _fused_bounds(n)
            _activation_range(tq[out], lo, hi, c)
        else:
            kind = "float"
            for o in n.outputs:
                if o:
                    tq[o] = own_quant(o)
        kinds[n.name] = kind
        node_consts[n.name] = c

    return QuantizedProgram(graph, tq, node_consts, kinds, mode, params,
                            {"activation_bits": act_scheme.bits})


def _reuse_supported(n: Node) -> bool:
    if n.op == "Resize":
        return n.attrs.get("mode", "nearest") == "nearest"
    if n.op == "MaxPool":
        return len(n.outputs) == 1 or not any(n.outputs[1:])
    if n.op == "Pad":
        return n.attrs.get("mode", "constant") == "constant"
    return True


def _clip_bounds(n: Node, consts) -> tuple[float, float]:
    lo = float(np.asarray(consts[n.inputs[1]]).reshape(())) if len(n.inputs) > 1 and n.inputs[1] else -math.inf
    hi = float(np.asarray(consts[n.inputs[2]]).reshape(())) if len(n.inputs) > 2 and n.inputs[2] else math.inf
    return lo, hi


def _dense_constants(n: Node, graph: Graph, q_in: TensorQuant, params: QuantizationParams, mode,
                     learned=None) -> dict[str, Any]:
    w = np.asarray(graph.constants[n.inputs[1]])
    per_channel = params.weight_quantization_scheme.per_channel
    axis = weight_output_axis(n, w.ndim)
    bits_w = _weight_bits(n, params)
    w_q, s_w = quantize_weights(w, axis if per_channel else None, bits_w)
    if learned is not None:
        w_q = _checked_learned(n, learned, w_q, bits_w)
    n_out = w.shape[axis] if w.ndim else 1
    s_w = np.broadcast_to(s_w, (n_out,)).astype(np.float64)
    b = None
    if len(n.inputs) > 2 and n.inputs[2]:
        b = np.asarray(graph.constants[n.inputs[2]], np.float64).reshape(-1)
        b = np.broadcast_to(b, (n_out,)) if b.size == 1 else b
        s_w, widened = _bias_fitting_weight_scales(b, float(q_in.scale), s_w, q_in.bits, per_channel)
        if widened:   # requantize the weights on the wider scales (those channels' weights are tiny;
            # learned rounding was learned on the narrower scales, so it gives way to round-to-nearest)
            w_q = weights_on_grid(w, s_w, axis if per_channel else None, bits_w)
    acc_scale = float(q_in.scale) * s_w
    c: dict[str, Any] = {"w_q": w_q, "w_scale": s_w, "acc_scale": acc_scale}
    if b is not None:
        bq = np.round(b / acc_scale)   # |bq| <= the bias limit: no clipping
        c["bias_q"] = bq.astype(np.int32 if q_in.bits <= 8 else np.int64)
    else:
        c["bias_q"] = None
    c["output_int32"] = params.output_int32_for(n.name)
    return c


# |bias_q| limits: int32 biases of 8-bit inputs keep half the int32 range for the accumulator
# (TFLite's int32 arithmetic); int64 biases of 16-bit inputs stay below 2**42, well inside the
# 2**47 range of the int64-accumulator requantization (wider values still requantize exactly),
# and so that the requantization multiplier (~ output code / bias_q >= 2**-27) stays above
# TFLite's 2**-31 floor, below which QuantizeMultiplier flushes it to 0.
_BIAS_LIMIT = {8: 1 << 30, 16: 1 << 42}


def _bias_fitting_weight_scales(b: np.ndarray, s_in: float, s_w: np.ndarray, in_bits: int, per_channel: bool):
    """Weight scales such that every ``round(b / (s_in * s_w[c]))`` fits the bias limit: a channel
    whose bias is huge relative to its accumulator scale (tiny weights and/or a tiny input scale,
    e.g. a classifier fed by vanishing activations, or a BatchNorm-folded channel with gamma ~ 0)
    gets the coarser ``s_w[c] = |b[c]| / (s_in * limit)`` instead of a clipped bias -- clipping
    silently replaced such outputs by wrong constants. Per-tensor weights widen all channels.
    Returns (scales, whether any changed)."""
    limit = float(_BIAS_LIMIT[8 if in_bits <= 8 else 16])
    need = np.abs(b) / (s_in * limit)
    if not np.any(need > s_w):
        return s_w, False
    widened = np.maximum(s_w, need * (1 + 2.0 ** -20))   # the margin absorbs rounding of b / acc_scale
    if not per_channel:
        widened = np.full_like(s_w, widened.max())
    return widened, True


def _checked_learned(n: Node, learned, w_q: np.ndarray, bits: int) -> np.ndarray:
    """Learned integer weights: same shape and container as round-to-nearest, within [-qmax, qmax]."""
    learned = np.asarray(learned)
    qmax = (1 << (bits - 1)) - 1
    if learned.shape != w_q.shape or learned.dtype.kind not in "iu" or \
            (learned.size and (learned.min() < -qmax or learned.max() > qmax)):
        raise QuantizationConfigError(
            f"learned_weights[{n.name!r}]: need integers of shape {w_q.shape} in [-{qmax}, {qmax}], got "
            f"{learned.dtype} {learned.shape}")
    return learned.astype(w_q.dtype)


def _weight_bits(n: Node, params: QuantizationParams) -> int:
    """The weight scheme's width, unless the node's custom ``quantization_precision`` says
    otherwise: an ``INT_16`` node gets 16-bit weights too (on MobileNetV2, 16-bit activations
    with 8-bit weights agree with FP32 on 90% of natural images, with 16-bit weights on 100%:
    the weights' rounding is what remains), an ``INT_8`` node 8-bit ones."""
    override = params.custom_config_for(n.name).get("quantization_precision")
    if override is not None:
        return 16 if override is QuantizationPrecision.INT_16 else 8
    return params.weight_quantization_scheme.bits


def _finish_dense(c: dict[str, Any], n: Node, q_in: TensorQuant, q_out: TensorQuant, mode) -> None:
    real = c["acc_scale"] / float(q_out.scale)
    m, s = quantize_multiplier_for(real, mode)
    c["multiplier"], c["shift"] = np.asarray(m, np.int64), np.asarray(s, np.int64)
    c["real_multiplier"] = real
    lo, hi = _fused_bounds(n)
    _activation_range(q_out, lo, hi, c)
    # TFLite: 16-bit inputs accumulate in int64 and use the int64 multiplier variant
    c["tflite_rounding"] = "int64" if q_in.bits == 16 else "double"
