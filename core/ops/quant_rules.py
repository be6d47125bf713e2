"""Quantization rules: how an op is quantized, run in integers, lowered to integer ONNX and
converted from a pre-quantized TFLite model — one rule object per op, named by its ``OpDef``
(``OpDef.quant``), as onnxruntime's quantization ``registry.py`` maps each op to one quantizer.

The quantizer (:mod:`core.quantization.quantizer`), the integer interpreter
(:mod:`core.runtime.integer_interpreter`), the integer ONNX exporter
(:mod:`core.formats.onnx_export`) and the TFLite converter (:mod:`core.quantization.tflite_convert`)
look the rule up and call it; none of them names an op. This module holds the base classes, the
rules shared by several op families (:class:`DenseRule`) and the arithmetic they share; an op's own
rule (a subclass) lives in the op's module, next to its float and integer kernels.

A rule's methods (each optional; the defaults make the op a float island on the MLA):

``quantize(node, ctx) -> NodeQuant | None``
    sets the TensorQuant of the node's outputs in ``ctx.tensors`` and returns its constants; None
    (nothing set) makes the node a float island.
``run_int(node, nq, ctx)``
    the integer kernel: reads ``ctx.int(t)``, stores ``ctx.set_int(t, y)`` (or ``ctx.set_float``).
``lower_integer_onnx(node, nq, L) -> bool``
    writes the kernel's arithmetic as ONNX ops through the exporter's lowering ``L``; False runs the
    node as float between exact quantize / dequantize steps.
``convert_tflite(node, ctx, acts, q_ins, q_out) -> NodeQuant | None``
    the constants of a pre-quantized TFLite model's node (scales from the file); None: float island.

Op groups are rule classes: :class:`ReuseRule` (the output keeps the input's scale and zero
point: widths propagate through them) and :class:`LayoutRule` (ops that move integers unchanged).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, UnsupportedOperatorError
from core.quantization.params import QuantizationPrecision, RequantizationMode
from core.quantization.quant_data import NodeQuant, TensorQuant
from core.quantization.requantize import quantize_multiplier_for

if TYPE_CHECKING:  # pragma: no cover
    from core.ir.graph import Node

__all__ = ["QuantRule", "ReuseRule", "LayoutRule", "RescaleRule", "TableRule", "DenseRule", "activation_range_int",
           "fused_bounds", "set_activation_range", "clip_bounds", "quantize_weights", "weights_on_grid",
           "bias_fitting_weight_scales", "checked_learned_weights", "BIAS_LIMIT", "rule_of",
           "reuses_input_quant", "is_layout_op"]


# --------------------------------------------------------------------------- lookup and op groups

def rule_of(node: Node) -> QuantRule | None:
    """The quantization rule of ``node``'s op (None: the op has none, a float island on the MLA)."""
    from core.ops.registry import get_op

    return get_op(node.op, node).quant


def reuses_input_quant(op: str) -> bool:
    """Does ``op``'s output keep its input's scale and zero point (the reuse ops)?"""
    from core.ops.registry import get_op

    rule = get_op(op).quant
    return rule is not None and rule.reuses_input_quant


def is_layout_op(op: str) -> bool:
    """Does ``op`` move integers unchanged (Reshape, Transpose, ...: the layout ops)?"""
    from core.ops.registry import get_op

    rule = get_op(op).quant
    return rule is not None and rule.layout


# --------------------------------------------------------------------------- shared arithmetic

def _round_half_away_f32(v: np.float32) -> int:
    # TfLiteRound / roundf on a float32, exactly: the fractional part of a float is exact
    a = abs(float(v))
    fl = np.floor(a)
    r = int(fl) + int(a - fl >= 0.5)
    return -r if v < 0 else r


def _bound(value: float, s: np.float32, zp: int, qmin: int, qmax: int) -> int:
    q = np.float32(value) / s
    if not np.isfinite(q):          # float32 overflow: saturate (C's int32 cast is undefined)
        return qmax if q > 0 else qmin
    return zp + _round_half_away_f32(q)


def activation_range_int(zp, scale, lo, hi, qmin, qmax) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized / QuantizedReluX bounds:
    ``act_min = max(qmin, zp + round(lo / scale))``, ``act_max = min(qmax, zp + round(hi / scale))``
    with the division in float32 (``f / scale``, both float) and ``round`` half away from zero
    (TfLiteRound). ``lo = -inf`` / ``hi = +inf`` leave ``qmin`` / ``qmax``. Where the C cast to
    int32 would overflow (huge ``lo/scale``), the exact integer is used instead.
    """
    qmin, qmax = int(qmin), int(qmax)
    if qmin > qmax:
        raise QuantizationConfigError(f"qmin ({qmin}) must be <= qmax ({qmax})")
    try:
        s = np.float32(scale)
        zp_i = int(zp)
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError, OverflowError):
        raise QuantizationConfigError(
            f"zp, scale, lo, hi must be numbers, got {zp!r}, {scale!r}, {lo!r}, {hi!r}"
        ) from None
    if not np.isfinite(s) or s <= 0:
        raise QuantizationConfigError(f"scale must be a positive finite number, got {scale!r}")
    if np.isnan(lo_f) or np.isnan(hi_f) or lo_f > hi_f:
        raise QuantizationConfigError(f"clip bounds lo={lo!r}, hi={hi!r} must satisfy lo <= hi")
    with np.errstate(over="ignore"):
        act_min = qmin if lo_f == -np.inf else max(qmin, _bound(lo_f, s, zp_i, qmin, qmax))
        act_max = qmax if hi_f == np.inf else min(qmax, _bound(hi_f, s, zp_i, qmin, qmax))
    return int(act_min), int(act_max)


def fused_bounds(node: Node) -> tuple[Any, Any]:
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


def set_activation_range(nq: NodeQuant, q: TensorQuant, lo, hi) -> NodeQuant:
    """``nq.act_min, nq.act_max``: the integer clamp of a fused activation; with per-channel
    bounds, the loosest ones (for requantize) and ``nq.act_channel_bounds``: the per-channel
    (min array, max array) that the kernel applies after requantization."""
    if np.ndim(lo) == 0 and np.ndim(hi) == 0:
        nq.act_min, nq.act_max = activation_range_int(q.zero_point, q.scale, lo, hi, q.qmin, q.qmax)
        return nq
    n = max(np.size(lo), np.size(hi))
    los, his = np.broadcast_to(lo, (n,)), np.broadcast_to(hi, (n,))
    pairs = [activation_range_int(q.zero_point, q.scale, float(a), float(b), q.qmin, q.qmax) for a, b in zip(los, his)]
    mins = np.array([p[0] for p in pairs], np.int64)
    maxs = np.array([p[1] for p in pairs], np.int64)
    nq.act_min, nq.act_max = int(mins.min()), int(maxs.max())
    if mins.min() != mins.max() or maxs.min() != maxs.max():
        nq.act_channel_bounds = (mins, maxs)
    return nq


def clip_bounds(node: Node, consts) -> tuple[float, float]:
    """A standalone Clip's (lo, hi) from its constant inputs."""
    n = node
    lo = float(np.asarray(consts[n.inputs[1]]).reshape(())) if len(n.inputs) > 1 and n.inputs[1] else -math.inf
    hi = float(np.asarray(consts[n.inputs[2]]).reshape(())) if len(n.inputs) > 2 and n.inputs[2] else math.inf
    return lo, hi


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
    if bits == 4 and w.size:
        scales = _mse_weight_scales(w, axis, amax, qmax, scales)
    return weights_on_grid(w, scales, axis, bits), scales


def _mse_weight_scales(w: np.ndarray, axis: int | None, amax: np.ndarray, qmax: float,
                       scales: np.ndarray) -> np.ndarray:
    """4-bit weights: per channel, the clipping ratio in [0.3, 1] (36 steps) of ``amax`` whose
    grid has the least squared rounding + clipping error (with 15 levels the largest weight's
    scale wastes most of them; on MobileNetV2 W4A8 with AdaRound: 68.5% -> 72.0% agreement)."""
    wc = w.reshape(1, -1) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.asarray(amax, np.float64).reshape(-1)
    best = np.full(amax.shape, np.inf)
    out = np.array(scales, np.float64).reshape(-1)
    for r in np.linspace(0.3, 1.0, 36):
        s = np.where(amax > 0, amax * r / qmax, 1.0)
        e = ((wc - s[:, None] * np.clip(np.round(wc / s[:, None]), -qmax, qmax)) ** 2).sum(1)
        better = e < best
        best = np.where(better, e, best)
        out = np.where(better, s, out)
    return out.reshape(np.shape(scales))


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


# |bias_q| limits: int32 biases of 8-bit inputs keep half the int32 range for the accumulator
# (TFLite's int32 arithmetic); int64 biases of 16-bit inputs stay below 2**42, well inside the
# 2**47 range of the int64-accumulator requantization (wider values still requantize exactly),
# and so that the requantization multiplier (~ output code / bias_q >= 2**-27) stays above
# TFLite's 2**-31 floor, below which QuantizeMultiplier flushes it to 0.
BIAS_LIMIT = {8: 1 << 30, 16: 1 << 42}


def bias_fitting_weight_scales(b: np.ndarray, s_in: float, s_w: np.ndarray, in_bits: int, per_channel: bool):
    """Weight scales such that every ``round(b / (s_in * s_w[c]))`` fits the bias limit: a channel
    whose bias is huge relative to its accumulator scale (tiny weights and/or a tiny input scale,
    e.g. a classifier fed by vanishing activations, or a BatchNorm-folded channel with gamma ~ 0)
    gets the coarser ``s_w[c] = |b[c]| / (s_in * limit)`` instead of a clipped bias -- clipping
    silently replaced such outputs by wrong constants. Per-tensor weights widen all channels.
    Returns (scales, whether any changed)."""
    limit = float(BIAS_LIMIT[8 if in_bits <= 8 else 16])
    need = np.abs(b) / (s_in * limit)
    if not np.any(need > s_w):
        return s_w, False
    widened = np.maximum(s_w, need * (1 + 2.0 ** -20))   # the margin absorbs rounding of b / acc_scale
    if not per_channel:
        widened = np.full_like(s_w, widened.max())
    return widened, True


def checked_learned_weights(n: Node, learned, w_q: np.ndarray, bits: int) -> np.ndarray:
    """Learned integer weights: same shape and container as round-to-nearest, within [-qmax, qmax]."""
    learned = np.asarray(learned)
    qmax = (1 << (bits - 1)) - 1
    if learned.shape != w_q.shape or learned.dtype.kind not in "iu" or \
            (learned.size and (learned.min() < -qmax or learned.max() > qmax)):
        raise QuantizationConfigError(
            f"learned_weights[{n.name!r}]: need integers of shape {w_q.shape} in [-{qmax}, {qmax}], got "
            f"{learned.dtype} {learned.shape}")
    return learned.astype(w_q.dtype)


def per_channel(v, rank: int, axis: int) -> np.ndarray:
    """``v`` shaped to broadcast along ``axis`` of a rank-``rank`` tensor (a scalar when one value)."""
    v = np.asarray(v)
    if v.size <= 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return v.reshape(shape)


# --------------------------------------------------------------------------- base rules

class QuantRule:
    """The default: no integer form (a float island on the MLA). Subclasses override."""

    reuses_input_quant = False   # the output keeps the input's TensorQuant (reuse ops)
    layout = False               # moves integers unchanged (layout ops)
    weighted = False             # holds quantized constant weights (dense ops)

    def quantize(self, node: Node, ctx) -> NodeQuant | None:
        return None

    def run_int(self, node: Node, nq: NodeQuant, ctx) -> None:
        raise ExecutionError(f"{node.describe()}: {type(self).__name__} has no integer kernel")

    def lower_integer_onnx(self, node: Node, nq: NodeQuant, L) -> bool:
        return False

    def convert_tflite(self, node: Node, ctx, acts: list[str], q_ins: list[TensorQuant],
                       q_out: TensorQuant) -> NodeQuant | None:
        return None


class ReuseRule(QuantRule):
    """One activation input; the output reuses its TensorQuant (no requantization)."""

    reuses_input_quant = True

    def supported(self, node: Node) -> bool:
        """The variants that run in integers (others are float islands)."""
        return True

    def constants(self, node: Node, q: TensorQuant, consts) -> NodeQuant:
        return NodeQuant()

    def quantize(self, node, ctx):
        ins = ctx.activations(node)
        if len(ins) != 1 or not self.supported(node):
            return None
        out = node.outputs[0]
        ctx.tensors[out] = ctx.tensors[ins[0]]
        return self.constants(node, ctx.tensors[out], ctx.consts)

    def tflite_supported(self, node: Node) -> bool:
        return self.supported(node)

    def tflite_constants(self, node: Node, q: TensorQuant, consts) -> NodeQuant | None:
        return self.constants(node, q, consts)

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        if len(acts) != 1:
            return None
        if q_ins[0] != q_out:
            return None   # a reuse op must keep the scale and zero point (TFLite requires it)
        if not self.tflite_supported(node):
            return None
        return self.tflite_constants(node, q_out, ctx.consts)


class LayoutRule(ReuseRule):
    """Reshape, Transpose, ...: the float kernel moves the integers unchanged."""

    layout = True

    def kernel_inputs(self, node: Node, ctx) -> list:
        consts = ctx.consts
        return [None if not i else consts[i] if i in consts else ctx.int(i) for i in node.inputs]

    def run_int(self, node, nq, ctx):
        from core.ops.registry import get_op

        ctx.set_int(node.outputs[0], get_op(node.op, node).run(node, self.kernel_inputs(node, ctx))[0])

    def lower_integer_onnx(self, node, nq, L):
        return L.lower_layout(node, nq)


class RescaleRule(QuantRule):
    """Every input an activation, the output its own calibrated range, the fused activation's
    clamp (Add/Sub/Mul, GlobalAveragePool, Concat)."""

    def accepts(self, node: Node, acts: list[str]) -> bool:
        return True

    def quantize(self, node, ctx):
        ins = ctx.activations(node)
        if len(ins) != len([i for i in node.inputs if i]) or not self.accepts(node, ins):
            return None
        out = node.outputs[0]
        ctx.tensors[out] = ctx.own_quant(out)
        lo, hi = fused_bounds(node)
        return set_activation_range(NodeQuant(), ctx.tensors[out], lo, hi)

    def tflite_range(self, node: Node, q_out: TensorQuant, nq: NodeQuant | None = None) -> NodeQuant | None:
        """The fused activation's clamp; None where TFLite would need per-channel bounds."""
        lo, hi = fused_bounds(node)
        nq = set_activation_range(nq or NodeQuant(), q_out, lo, hi)
        return None if nq.act_channel_bounds is not None else nq


class TableRule(QuantRule):
    """An elementwise op of one activation (Elu, HardSwish, ..., or Add / Sub / Mul / Div with a scalar
    constant operand) as a lookup table over every input code:
    ``T[q - qmin] = quantize_out(f(dequantize_in(q)))`` with the op's own float kernel ``f`` (the
    constant operand bound) and the output's own calibrated range. So the integer kernel is, code for
    code, the op run as a float island (dequantize, float kernel, quantize), at 8 and 16 bits (2**16
    entries); the integer ONNX form is one Gather. No TFLite conversion (a converted model keeps the
    op a float island)."""

    def quantize(self, node, ctx):
        acts = ctx.activations(node)
        if not self.applies(node, acts, ctx.consts):
            return None
        out = node.outputs[0]
        ctx.tensors[out] = ctx.own_quant(out)
        return NodeQuant(table=self.table(node, ctx.tensors[acts[0]], ctx.tensors[out], ctx.consts))

    @staticmethod
    def applies(node: Node, acts: list[str], consts) -> bool:
        """One activation input, every other input a one-element constant, one output."""
        others = [i for i in node.inputs if i and i not in acts]
        return (len(acts) == 1 and node.inputs.count(acts[0]) == 1 and len([o for o in node.outputs if o]) == 1
                and all(np.size(consts[i]) == 1 for i in others))

    @staticmethod
    def table(node: Node, q_in: TensorQuant, q_out: TensorQuant, consts=None) -> np.ndarray:
        from core.ops.registry import get_op

        x = q_in.dequantize(np.arange(q_in.qmin, q_in.qmax + 1, dtype=np.int64))
        consts = consts or {}
        args = [None if not i else np.asarray(consts[i]).reshape(()).astype(x.dtype) if i in consts else x
                for i in node.inputs]
        y = get_op(node.op, node).run(node, args)[0]
        return q_out.quantize(y).astype(np.int8 if q_out.bits == 8 else np.int16)

    def run_int(self, node, nq, ctx):
        x = ctx.activations(node)[0]
        ctx.set_int(node.outputs[0], nq.table[ctx.int(x).astype(np.intp) - ctx.tensors[x].qmin])

    def lower_integer_onnx(self, node, nq, L):
        x, w = next(i for i in node.inputs if i and i not in L.g.constants), L.w
        index = w.op("Sub", [L.int64_of(x), L.ops.i64(L.tq[x].qmin)], node.name)
        L.q[node.outputs[0]] = w.op("Gather", [w.const(f"{node.name}/table", nq.table), index], node.name, axis=0)
        return True


class DenseRule(QuantRule):
    """Conv / Gemm / MatMul with constant weights: symmetric per-channel weights, the bias on the
    accumulator's grid, requantization ``(m, shift) = quantize_multiplier_for(s_in * s_w[c] / s_out)``
    applied block by block inside the accumulating kernel; ``output_int32`` returns the
    accumulator dequantized. Subclasses (conv.py, gemm.py) give the kernel and the ONNX form."""

    weighted = True
    channel_axis = -1          # the output-channel axis of the accumulator
    onnx_product = "MatMulInteger"
    onnx_bias_input = True     # the float op takes the bias as its third input
    tflite = True              # a TFLite file's op of this kind is converted
    tflite_float_requant = False   # TFLite requantizes it in double (FULLY_CONNECTED)

    def accumulate(self, x, zero_point, w_q, bias_q, node, requant=None):
        raise NotImplementedError

    # ---- quantization
    def quantize(self, node, ctx):
        n, consts = node, ctx.consts
        if not (len(n.inputs) >= 2 and n.inputs[1] in consts and n.inputs[0] not in consts):
            return None
        q_in, out = ctx.tensors[n.inputs[0]], n.outputs[0]
        nq = self.weight_constants(n, ctx.graph, q_in, ctx.params, ctx.learned_weights.get(n.name))
        if nq.output_int32:
            if not ctx.is_final_output(out):
                raise QuantizationConfigError(
                    f"output_int32 on {n.name!r}: only a final Conv/Gemm/MatMul whose output is a graph "
                    f"output (and feeds no other MLA node) can return its int32 accumulator")
            ctx.tensors[out] = TensorQuant(float(q_in.scale), 0, 32)
        else:
            ctx.tensors[out] = ctx.own_quant(out)
            self.set_requantization(nq, n, q_in, ctx.tensors[out], ctx.mode)
        return nq

    def weight_constants(self, n: Node, graph, q_in: TensorQuant, params, learned=None) -> NodeQuant:
        """Weights on their per-channel grid (or ``learned`` integer weights on it), widened where the
        bias would not fit its limit, and the bias on the accumulator's grid."""
        from core.ops.common import weight_output_axis

        w = np.asarray(graph.constants[n.inputs[1]])
        per_channel_weights = params.weight_quantization_scheme.per_channel
        axis = weight_output_axis(n, w.ndim)
        bits_w = self.weight_bits(n, params)
        w_q, s_w = quantize_weights(w, axis if per_channel_weights else None, bits_w)
        if learned is not None:
            w_q = checked_learned_weights(n, learned, w_q, bits_w)
        n_out = w.shape[axis] if w.ndim else 1
        s_w = np.broadcast_to(s_w, (n_out,)).astype(np.float64)
        b = None
        if len(n.inputs) > 2 and n.inputs[2]:
            b = np.asarray(graph.constants[n.inputs[2]], np.float64).reshape(-1)
            b = np.broadcast_to(b, (n_out,)) if b.size == 1 else b
            s_w, widened = bias_fitting_weight_scales(b, float(q_in.scale), s_w, q_in.bits, per_channel_weights)
            if widened:   # requantize the weights on the wider scales (those channels' weights are tiny;
                # learned rounding was learned on the narrower scales, so it gives way to round-to-nearest)
                w_q = weights_on_grid(w, s_w, axis if per_channel_weights else None, bits_w)
        acc_scale = float(q_in.scale) * s_w
        nq = NodeQuant(w_q=w_q, w_scale=s_w, acc_scale=acc_scale)
        if b is not None:
            bq = np.round(b / acc_scale)   # |bq| <= the bias limit: no clipping
            nq.bias_q = bq.astype(np.int32 if q_in.bits <= 8 else np.int64)
        nq.output_int32 = params.output_int32_for(n.name)
        return nq

    @staticmethod
    def weight_bits(n: Node, params) -> int:
        """The weight scheme's width, unless the node's custom ``quantization_precision`` says
        otherwise: an ``INT_16`` node gets 16-bit weights too (on MobileNetV2, 16-bit activations
        with 8-bit weights agree with FP32 on 90% of natural images, with 16-bit weights on 100%:
        the weights' rounding is what remains), an ``INT_8`` node 8-bit ones."""
        override = params.custom_config_for(n.name).get("quantization_precision")
        if override is not None:
            return 16 if override is QuantizationPrecision.INT_16 else 8
        return params.weight_quantization_scheme.bits

    @staticmethod
    def set_requantization(nq: NodeQuant, n: Node, q_in: TensorQuant, q_out: TensorQuant, mode) -> None:
        real = nq.acc_scale / float(q_out.scale)
        m, s = quantize_multiplier_for(real, mode)
        nq.multiplier, nq.shift = np.asarray(m, np.int64), np.asarray(s, np.int64)
        nq.real_multiplier = real
        lo, hi = fused_bounds(n)
        set_activation_range(nq, q_out, lo, hi)
        # TFLite: 16-bit inputs accumulate in int64 and use the int64 multiplier variant
        nq.tflite_rounding = "int64" if q_in.bits == 16 else "double"

    # ---- integer kernel
    def run_int(self, node, nq, ctx):
        from core.ops.common import apply_activation, without_activation
        from core.quantization.requantize import Requant

        n, axis = node, self.channel_axis
        x_name, out = n.inputs[0], n.outputs[0]
        x, q_in = ctx.int(x_name), ctx.tensors[x_name]
        if nq.tflite_requant == "float" and not nq.output_int32:
            # TFLite's reference FULLY_CONNECTED (TF >= 2.18): round(double(acc) * double(real)),
            # half away from zero, as in reference_integer_ops::FullyConnected(PerChannel)
            acc = np.asarray(self.accumulate(x, q_in.zero_point, nq.w_q, nq.bias_q, n), np.int64)
            v = acc.astype(np.float64) * per_channel(np.asarray(nq.real_multiplier, np.float64), acc.ndim, axis)
            r = np.sign(v) * np.floor(np.abs(v) + 0.5)
            q_out = ctx.tensors[out]
            ctx.set_int(out, np.clip(r + q_out.zero_point, nq.act_min, nq.act_max))
            return
        if not nq.output_int32:
            # the kernel requantizes block by block, while each block is in cache
            q_out = ctx.tensors[out]
            requant = Requant(nq.multiplier, nq.shift, ctx.mode, q_out.zero_point, nq.act_min, nq.act_max,
                              tflite_rounding=nq.tflite_rounding, dtype=ctx.dtype_of(q_out),
                              real=nq.real_multiplier if ctx.fast_mode else None)
            y = self.accumulate(x, q_in.zero_point, nq.w_q, nq.bias_q, n, requant=requant)
            if nq.act_channel_bounds is not None:   # per-channel Clip bounds (channel equalization)
                lo, hi = nq.act_channel_bounds
                shape = [1] * y.ndim
                shape[axis] = -1
                np.clip(y, lo.reshape(shape).astype(y.dtype), hi.reshape(shape).astype(y.dtype), out=y)
            ctx.qenv[out] = y
            return
        if ctx.fast_mode:
            from core.ops.registry import get_op

            xf = (x.astype(np.float32) - np.float32(q_in.zero_point))
            args = [xf, nq.w_q.astype(np.float32)]
            if nq.bias_q is not None:
                args.append(nq.bias_q.astype(np.float32))
            acc = get_op(n.op, n).run(without_activation(n), args)[0]
        else:
            acc = self.accumulate(x, q_in.zero_point, nq.w_q, nq.bias_q, n)
        # output_int32: the accumulators leave the MLA as float (acc * acc_scale)
        scale = per_channel(nq.acc_scale, acc.ndim, axis)
        y = (np.asarray(acc, np.float64) * scale).astype(np.float32)
        ctx.set_float(out, apply_activation(np.ascontiguousarray(y), n))

    # ---- integer ONNX
    def onnx_operands(self, node: Node, w_q: np.ndarray, L) -> tuple[np.ndarray, dict, tuple] | None:
        """(weights as the ONNX product takes them, its attributes, the accumulator's per-channel
        shape), or None where the lowering does not apply."""
        raise NotImplementedError

    def onnx_float_product(self, L, xf: str, w_int: str, bias, attrs: dict, base: str) -> str:
        """The float32 product of exact small integers (``bias`` an int array or None), as float64."""
        w, ops = L.w, L.ops
        acc = ops.cast(w.op("MatMul", [xf, w_int], base), "DOUBLE", base)
        if bias is not None:
            acc = w.op("Add", [acc, w.value(bias, np.float64)], base)
        return acc

    def weight_row_sums(self, weights: np.ndarray) -> np.ndarray:
        """sum |w| per output channel, for the accumulator bound."""
        return np.abs(weights.astype(np.int64)).sum(0)

    def lower_integer_onnx(self, node, nq, L):
        n, x = node, node.inputs[0]
        q_in = L.tq[x]
        w_q = np.asarray(nq.w_q)
        if nq.tflite_kernel or q_in.bits not in (8, 16) or w_q.dtype not in (np.int8, np.int16):
            return False
        operands = self.onnx_operands(n, w_q, L)
        if operands is None:
            return False
        weights, attrs, shape = operands
        out = n.outputs[0]
        base, ops, w = n.name, L.ops, L.w
        weights = np.ascontiguousarray(weights)
        bias = None if nq.bias_q is None else np.asarray(nq.bias_q, np.int64).reshape(shape)
        # |acc| <= max over output channels of sum |w| * max |x - zp| (+ |bias|)
        rows = self.weight_row_sums(weights)
        x_span = max(q_in.zero_point - q_in.qmin, q_in.qmax - q_in.zero_point)
        bound = float(rows.max(initial=0)) * x_span + (float(np.abs(bias).max()) if bias is not None else 0.0)
        if q_in.bits == 8 and weights.dtype == np.int8 and bound < 2 ** 24:
            # every partial sum is an integer below 2**24: float32 Conv/MatMul is exact, and fast.
            # x - zp as floats in one op: DequantizeLinear with scale 1
            xf = w.op("DequantizeLinear", [L.int_of(x), w.value(1.0, np.float32), w.value(q_in.zero_point, np.int8)],
                      base)
            w_int = w.const(f"{n.name}/w_int", weights.astype(np.float32))
            acc = self.onnx_float_product(L, xf, w_int, bias, attrs, base)
            acc_type = "DOUBLE"
        else:
            acc = L.integer_product(self.onnx_product, L.int_of(x), q_in.bits, q_in.zero_point, weights, attrs,
                                    n.name)
            if bias is not None:
                acc = w.op("Add", [acc, ops.i64(bias)], base)
            acc_type = "INT64"
        if nq.output_int32:
            y = w.op("Mul", [ops.cast(acc, "DOUBLE", base) if acc_type == "INT64" else acc,
                             w.value(np.asarray(nq.acc_scale, np.float64).reshape(shape), np.float64)], base)
            y = ops.cast(y, "FLOAT", base)
            L.f[out] = L.float_activation(n, y) if n.attrs.get("activation") else y
            return True
        q_out = L.tq[out]

        def channels(v):
            v = np.asarray(v)
            return v.reshape(shape) if v.size > 1 else v.reshape(())

        if nq.tflite_requant == "float":   # round(double(acc) * real), half away from zero
            acc = ops.cast(acc, "DOUBLE", base) if acc_type == "INT64" else acc
            v = w.op("Mul", [acc, w.value(channels(np.asarray(nq.real_multiplier, np.float64)), np.float64)], base)
            L.store(out, w.op("Add", [ops.round_half_away(v, base), w.value(q_out.zero_point, np.float64)], base),
                    nq, np.float64)
            return True
        m, sh = channels(np.asarray(nq.multiplier, np.int64)), channels(np.asarray(nq.shift, np.int64))
        sima = L.p.requantization_mode is RequantizationMode.sima
        rounding = "sima" if sima else (nq.tflite_rounding or "double")
        scaled = ops.requantize_f64(acc if acc_type == "DOUBLE" else ops.cast(acc, "DOUBLE", base), m, sh, rounding,
                                    bound, q_out.zero_point, base)
        if scaled is not None:   # float64 is exact for these bounds
            L.store(out, scaled, nq, np.float64)
            return True
        acc = ops.cast(acc, "INT64", base) if acc_type == "DOUBLE" else acc
        if sima:
            scaled = ops.round_half_up_shift(w.op("Mul", [acc, ops.i64(m)], base), sh, base)
        else:
            scaled = ops.mbqm(acc, m, sh, base, rounding)
        L.store(out, w.op("Add", [scaled, ops.i64(q_out.zero_point)], base), nq)
        return True

    # ---- TFLite
    def tflite_weight_layout(self, node: Node, raw: np.ndarray, w: np.ndarray) -> np.ndarray | None:
        """A TFLite file's weights ``raw`` in the layout of the imported float weights ``w``
        (OHWI -> OIHW, or transposed 2-D), or None where they do not map."""
        if raw.ndim == 4 and w.ndim == 4:
            return raw.transpose(0, 3, 1, 2)   # OHWI -> OIHW
        if raw.shape == w.shape:
            return raw
        if raw.ndim == 2 and raw.T.shape == w.shape:
            return raw.T
        return None

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        n = node
        if not (self.tflite and len(n.inputs) >= 2 and n.inputs[1] in ctx.consts and len(acts) == 1
                and n.inputs[0] == acts[0]):
            return None
        q_in = q_ins[0]
        wq, s_w = ctx.weights(n)
        acc_scale = float(q_in.scale) * s_w          # double(s_in) * double(s_w[c])
        real = acc_scale / float(q_out.scale)        # ... / double(s_out), as TFLite
        nq = NodeQuant(w_q=wq, w_scale=s_w, acc_scale=acc_scale, bias_q=ctx.bias(n, s_w.size, acc_scale),
                       output_int32=False)
        if q_in.bits == 16 and nq.bias_q is not None:
            nq.bias_q = nq.bias_q.astype(np.int64)
        m, s = quantize_multiplier_for(real, ctx.mode)
        nq.multiplier, nq.shift = np.asarray(m, np.int64), np.asarray(s, np.int64)
        nq.real_multiplier = real
        lo, hi = fused_bounds(n)
        set_activation_range(nq, q_out, lo, hi)
        nq.tflite_rounding = "int64" if q_in.bits == 16 else "double"
        if self.tflite_float_requant and ctx.mode is RequantizationMode.tflite:
            # TF 2.21's reference FULLY_CONNECTED requantizes in double: round(acc * real), for
            # int8 and int16 (16x8) inputs alike (measured bit-exact on both)
            nq.tflite_requant = "float"
        return nq


def unsupported(node: Node, what: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(node.op, node.source_name or node.name, what)
