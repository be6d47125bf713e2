"""Elementwise activations, Gelu and Softmax; integer Relu/Clip (relu_int, clip_int, activation_range_int)."""
from __future__ import annotations

import math

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import normalize_axis
from core.ops.quant_rules import QuantRule, ReuseRule, TableRule, activation_range_int, clip_bounds
from core.ops.registry import OpDef, register
from core.quantization.quant_data import NodeQuant, TensorQuant


def _same(node: Node, infos):
    return [TensorInfo(infos[0].shape, infos[0].dtype)]


def _unary(fn):
    def run(node: Node, inputs):
        x = inputs[0]
        return [np.asarray(fn(node, x)).astype(x.dtype, copy=False)]
    return run


def _sigmoid(node, x):
    # split by sign so exp never overflows
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _hard_sigmoid(node, x):
    a, b = node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)
    return np.clip(x * np.asarray(a, x.dtype) + np.asarray(b, x.dtype), 0, 1)


def _hard_swish(node, x):
    return x * np.clip(x * np.asarray(1 / 6, x.dtype) + np.asarray(0.5, x.dtype), 0, 1)


def _leaky(node, x):
    return np.where(x >= 0, x, x * np.asarray(node.attrs.get("alpha", 0.01), x.dtype))


class ClipRule(ReuseRule):
    """Standalone Clip: the output reuses the input's quantization, clamped to the bounds'
    integer codes (TFLite's ReluX with equal input and output quantization)."""

    def bounds(self, node: Node, consts) -> tuple[float, float]:
        return clip_bounds(node, consts)

    def constants(self, node, q, consts):
        lo, hi = self.bounds(node, consts)
        act_min, act_max = activation_range_int(q.zero_point, q.scale, lo, hi, q.qmin, q.qmax)
        return NodeQuant(act_min=act_min, act_max=act_max)

    def run_int(self, node, nq, ctx):
        ctx.set_int(node.outputs[0], np.clip(ctx.int(node.inputs[0]), nq.act_min, nq.act_max))

    def lower_integer_onnx(self, node, nq, L):
        L.store(node.outputs[0], L.int64_of(node.inputs[0]), nq)
        return True


class ReluRule(ClipRule):
    def bounds(self, node, consts):
        return 0.0, math.inf


class TfliteKernelRule(QuantRule):
    """Ops that run in integers only in converted TFLite models, with TFLite's reference kernel
    (mixq's own quantization keeps them float islands)."""

    kernel = ""

    def accepts(self, node: Node, ctx, q_in, q_out) -> NodeQuant | None:
        raise NotImplementedError

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        if len(acts) != 1 or q_ins[0].bits != 8 or q_out.bits != 8:
            return None
        return self.accepts(node, ctx, q_ins[0], q_out)

    def run_int(self, node, nq, ctx):
        if nq.tflite_kernel != self.kernel:
            raise ExecutionError(f"{node.describe()}: unknown TFLite kernel {nq.tflite_kernel!r}")
        x = node.inputs[0]
        q_out = ctx.tensors[node.outputs[0]]
        ctx.set_int(node.outputs[0], self.kernel_run(ctx.int(x), nq, ctx.tensors[x], q_out))


class LogisticRule(TfliteKernelRule):
    """mixq's quantization: a lookup table over every input code (:class:`TableRule`), so SiLU /
    Swish gates (EfficientNet, RegNet's squeeze-excite, YOLO heads) stay on the MLA; a converted
    TFLite model's int8 LOGISTIC runs TFLite's reference kernel (:func:`logistic_int8`)."""

    kernel = "logistic_int8"
    table = TableRule()

    def quantize(self, node, ctx):
        return self.table.quantize(node, ctx)

    def run_int(self, node, nq, ctx):
        if nq.table is not None:
            return self.table.run_int(node, nq, ctx)
        return super().run_int(node, nq, ctx)

    def lower_integer_onnx(self, node, nq, L):
        return self.table.lower_integer_onnx(node, nq, L) if nq.table is not None else False

    def accepts(self, node, ctx, q_in, q_out):
        return NodeQuant(tflite_kernel=self.kernel)

    def kernel_run(self, x, nq, q_in, q_out):
        return logistic_int8(x, q_in.scale, q_in.zero_point, q_out.scale, q_out.zero_point)


class SoftmaxRule(TfliteKernelRule):
    """mixq's quantization: attention's Softmax on the MLA with :func:`softmax_int` (16-bit output,
    scale 2**-(15 + shift), zero point 0, whatever the precision; ``shift`` from the calibrated
    largest probability, :func:`softmax_out_shift`); a converted TFLite model's int8 SOFTMAX runs
    TFLite's reference kernel (:func:`softmax_int8`)."""

    kernel = "softmax_int8"

    def quantize(self, node, ctx):
        ins = ctx.activations(node)
        if len(ins) != 1:
            return None
        nq = softmax_int_constants(node, ctx.tensors[ins[0]])
        if nq is not None:
            out = node.outputs[0]
            peak = float(ctx.stats[out].max) if out in ctx.stats else 1.0
            nq.shift = softmax_out_shift(peak)
            ctx.tensors[out] = TensorQuant(SOFTMAX_OUT_SCALE / (1 << nq.shift), 0, SOFTMAX_OUT_BITS)
        return nq

    def run_int(self, node, nq, ctx):
        if nq.kernel != "softmax_int":
            return super().run_int(node, nq, ctx)
        ctx.set_int(node.outputs[0], softmax_int(ctx.int(node.inputs[0]), nq, node))

    def accepts(self, node, ctx, q_in, q_out):
        if q_out.zero_point != -128 or abs(q_out.scale - 1 / 256) >= 1e-12:
            return None
        x_rank = len(ctx.graph.tensors[node.inputs[0]].shape)
        axis = int(node.attrs.get("axis", -1)) % x_rank
        if node.attrs.get("_coerce_2d") and axis != x_rank - 1:
            return None
        return NodeQuant(tflite_kernel=self.kernel, beta=1.0, axis=axis)

    def kernel_run(self, x, nq, q_in, q_out):
        return softmax_int8(x, q_in.scale, float(1.0 if nq.beta is None else nq.beta),
                            int(-1 if nq.axis is None else nq.axis))


register(
    OpDef(
        "Relu",
        _same,
        _unary(lambda n, x: np.maximum(x, 0)),
        mla=True,
        kind="relu",
        quant=ReluRule(),
        doc="fused into a preceding conv/dense",
    )
)
register(OpDef("LeakyRelu", _same, _unary(_leaky), doc="alpha"))
register(OpDef("Sigmoid", _same, _unary(_sigmoid), mla=True, quant=LogisticRule(),
               doc="1 / (1 + exp(-x)), overflow-free; MLA: a lookup table over every input code"))
register(OpDef("Tanh", _same, _unary(lambda n, x: np.tanh(x)), doc="tanh(x)"))
register(OpDef("HardSigmoid", _same, _unary(_hard_sigmoid), mla=True, kind="hard_sigmoid", quant=TableRule(),
               doc="alpha, beta; MLA: a lookup table over every input code"))
register(OpDef("HardSwish", _same, _unary(_hard_swish), mla=True, kind="hard_swish", quant=TableRule(),
               doc="x * HardSigmoid(x) with alpha 1/6, beta 0.5; MLA: a lookup table over every input code"))


# ---- Elu: the worked example of docs/architecture.md ("Adding an operator"): this block is all of it

def _elu(node, x):
    # ONNX: x for x >= 0, alpha * (exp(x) - 1) below; exp of the non-positive part only (no overflow)
    alpha = np.asarray(node.attrs.get("alpha", 1.0), x.dtype)
    return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0)) - np.asarray(1, x.dtype)))


register(OpDef("Elu", _same, _unary(_elu), mla=True, kind="elu", quant=TableRule(),
               doc="alpha; MLA: a lookup table over every input code (INT8 / INT16)"))


def _clip_check(node: Node, infos):
    for k, what in ((1, "min"), (2, "max")):
        if k < len(infos) and infos[k] is not None and int(np.prod(infos[k].shape)) != 1:
            raise ShapeInferenceError(f"{node.describe()}: Clip's {what} must be a scalar, got shape {infos[k].shape}")


def _clip_run(node: Node, inputs):
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo.astype(x.dtype).reshape(()))
    if hi is not None:
        y = np.minimum(y, hi.astype(x.dtype).reshape(()))
    return [np.asarray(y, dtype=x.dtype)]


def _clip_upgrade(node: Node, graph) -> None:
    # opset < 11: min/max were float attributes. float32 holds them exactly (the model stored
    # them as float32); the kernel casts to the input's type, which is not known yet here.
    if graph.opset < 11 and ("min" in node.attrs or "max" in node.attrs):
        dtype = np.float32
        names = []
        for key in ("min", "max"):
            if key in node.attrs:
                names.append(
                    graph.add_constant(graph.unique_name(f"{node.name}_{key}"), np.asarray(node.attrs.pop(key), dtype))
                )
            else:
                names.append("")
        node.inputs = [node.inputs[0], *names]


register(OpDef("Clip", _same, _clip_run, mla=True, kind="clip", check=_clip_check, upgrade=_clip_upgrade,
               quant=ClipRule(),
               doc="min/max inputs (attributes before opset 11); fused into a preceding conv/dense"))


def _softmax_infer(node: Node, infos):
    x = infos[0]
    normalize_axis(node, node.attrs.get("axis", -1), max(len(x.shape), 1))
    return [TensorInfo(x.shape, x.dtype)]


def _softmax_run(node: Node, inputs):
    x = inputs[0]
    axis = normalize_axis(node, node.attrs.get("axis", -1), max(x.ndim, 1))
    if node.attrs.get("_coerce_2d") and axis != x.ndim - 1:
        # opset < 13: flatten to 2-D at axis, softmax over the second dimension
        # (the same as opset 13's softmax when axis is the last one)
        shape = x.shape
        x2 = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
        return [_softmax(x2, 1).reshape(shape)]
    return [_softmax(x, axis)]


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def _softmax_upgrade(node: Node, graph) -> None:
    if graph.opset < 13:
        node.attrs.setdefault("axis", 1)
        node.attrs["_coerce_2d"] = 1


def _softmax_on_mla(node: Node, graph) -> bool:
    """Attention's Softmax (read by a MatMul of two activations) runs on the MLA with the integer
    kernel; any other Softmax (a classifier's last op, a DFL) stays on the APU in float."""
    out = node.outputs[0]
    return any(m.op == "MatMul" and m.inputs[0] == out and not graph.is_constant(m.inputs[1])
               for m in graph.nodes)


register(
    OpDef("Softmax", _softmax_infer, _softmax_run, mla=_softmax_on_mla, upgrade=_softmax_upgrade, quant=SoftmaxRule(),
          doc="axis (opset < 13 semantics kept); MLA (integer kernel, INT16 output) when it feeds a MatMul of two "
              "activations (attention), else APU")
)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU in float64: ``0.5 x (1 + erf(x / sqrt 2))``, or with ``approximate="tanh"``
    ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x**3)))``."""
    from core.ops.arith import erf

    xd = np.asarray(x, np.float64)
    if approximate == "tanh":
        return 0.5 * xd * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (xd + 0.044715 * xd ** 3)))
    return 0.5 * xd * (1.0 + erf(xd / np.sqrt(2.0)))


def _gelu_check(node: Node, infos):
    if node.attrs.get("approximate", "none") not in ("none", "tanh"):
        raise UnsupportedOperatorError(node.op, node.source_name or node.name,
                                       f"approximate={node.attrs.get('approximate')!r} (none or tanh)")


register(OpDef("Gelu", _same, lambda n, x: [gelu(x[0], n.attrs.get("approximate", "none")).astype(x[0].dtype)],
               mla=True, kind="gelu", check=_gelu_check,
               doc="approximate none/tanh (opset 20); also fused from x * 0.5 * (1 + Erf(x / sqrt 2)) patterns"))


# --------------------------------------------------------------------------- integer kernels

def clip_int(x_q, zp, scale, lo, hi, qmin, qmax) -> np.ndarray:
    """Clip (and ReLU/ReLU6) on quantized integers, TFLite's ReluX with equal input and output
    quantization (its requantization is then the identity):
    ``clamp(x, *activation_range_int(zp, scale, lo, hi, qmin, qmax))``. Returns int64.
    """
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"x_q must be an integer array, got dtype {x.dtype}")
    act_min, act_max = activation_range_int(zp, scale, lo, hi, qmin, qmax)
    return np.clip(x.astype(np.int64), act_min, act_max)


def relu_int(x_q, zp, scale, qmin, qmax) -> np.ndarray:
    """ReLU on quantized integers: :func:`clip_int` with ``lo = 0``, ``hi = +inf``, i.e.
    ``clamp(x, max(qmin, zp), qmax)``."""
    return clip_int(x_q, zp, scale, 0.0, np.inf, qmin, qmax)


# --------------------------------------------------------------------------- TFLite int8 Logistic / Softmax
# The reference kernels of TensorFlow Lite (2.21) for int8 LOGISTIC and SOFTMAX, for pre-quantized
# TFLite models (core/quantization/tflite_convert.py). Integer arithmetic emulates int32 C code
# on int64 numpy arrays.

_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _roundf(v: np.ndarray) -> np.ndarray:
    """TfLiteRound (roundf) of float32 values: half away from zero, exact in float64."""
    d = np.asarray(v, np.float32).astype(np.float64)
    return np.sign(d) * np.floor(np.abs(d) + 0.5)


def logistic_int8(x_q, in_scale, in_zp, out_scale=1.0 / 256, out_zp=-128) -> np.ndarray:
    """TFLite's int8 LOGISTIC (reference and built-in kernels alike): a 256-entry table filled by
    ``LUTPopulate`` in float32, ``q = clamp(roundf((1 / (1 + expf(-s_in * (v - zp_in)))) *
    (1 / s_out)) + zp_out)``, then looked up. Returns int64 in ``x_q``'s shape."""
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"x_q must be an integer array, got dtype {x.dtype}")
    vals = np.arange(-128, 128, dtype=np.int64)
    deq = np.float32(in_scale) * (vals - int(in_zp)).astype(np.float32)
    with np.errstate(over="ignore"):
        e = np.exp(-deq.astype(np.float64)).astype(np.float32)   # expf, correctly rounded
        t = np.float32(1.0) / (np.float32(1.0) + e)
    inv = np.float32(1.0) / np.float32(out_scale)
    q = np.clip(_roundf(t * inv) + int(out_zp), -128, 127).astype(np.int64)
    return q[x.astype(np.int64) + 128]


def _srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held as int64."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    s = ab + nudge
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))   # C truncating division by 2**31
    return np.where((a == _I32_MIN) & (b == _I32_MIN), _I32_MAX, high)


def _rdbpot(x, e: int):
    x = np.asarray(x, np.int64)
    if e == 0:
        return x
    mask = (1 << e) - 1
    return (x >> e) + ((x & mask) > ((mask >> 1) + (x < 0))).astype(np.int64)


def _wrap(x):
    return ((np.asarray(x, np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _sat_shl(x, e: int):
    """SaturatingRoundingMultiplyByPOT<e> for e > 0 (saturating left shift)."""
    x = np.asarray(x, np.int64)
    thr = (1 << (31 - e)) - 1
    return np.where(x > thr, _I32_MAX, np.where(x < -thr, _I32_MIN, x << e))


def _exp_on_interval(a):
    """exp_on_interval_between_negative_one_quarter_and_0_excl, Q0.31 in and out."""
    constant_term, one_third = 1895147668, 715827883
    x = _wrap(a + (1 << 28))
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rdbpot(x4, 2)
    poly = _rdbpot(_wrap(_srdhm(_wrap(x4_over_4 + x3), one_third) + x2), 1)
    return _wrap(constant_term + _srdhm(constant_term, _wrap(x + poly)))


def _exp_on_negative_values(a, integer_bits: int = 5):
    """gemmlowp exp_on_negative_values for a Q(integer_bits).(31 - integer_bits) input; Q0.31 out."""
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    mask = quarter - 1
    a_mod = (a & mask) - quarter
    result = _exp_on_interval(_sat_shl(a_mod, integer_bits))
    remainder = _wrap(a_mod - a)
    for exponent, mult in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                           (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = 1 << (frac + exponent)
            result = np.where((remainder & bit) != 0, _srdhm(result, mult), result)
    return np.where(a == 0, _I32_MAX, result)


def _one_over_one_plus_x(a):
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: Q0.31 in, Q0.31 out (Newton-Raphson in Q2.29)."""
    s = np.asarray(a, np.int64) + _I32_MAX
    half_den = (s + np.where(s >= 0, 1, -1))
    half_den = np.where(half_den >= 0, half_den // 2, -((-half_den) // 2))   # C division
    x = _wrap(1515870810 + _srdhm(half_den, -1010580540))
    for _ in range(3):
        hdx = _srdhm(half_den, x)
        one_minus = _wrap((1 << 29) - hdx)
        x = _wrap(x + _sat_shl(_srdhm(x, one_minus), 2))
    return _sat_shl(x, 1)


def softmax_int8(x_q, in_scale, beta: float = 1.0, axis: int = -1) -> np.ndarray:
    """TFLite's reference int8 SOFTMAX (``reference_ops::Softmax``, output scale 1/256, zero point
    -128): ``(M, left_shift) = QuantizeMultiplierGreaterThanOne(min(beta * s_in * 2**26,
    2**31 - 1))``, ``diff_min = -floor(31 * 2**26 / 2**left_shift)``; per row: differences to the
    row max, scaled to Q5.26, gemmlowp's fixed-point exp, sum in Q12.19, reciprocal by
    Newton-Raphson, ``RoundingDivideByPOT(scale * exp, bits_over_unit + 23) - 128``. Returns int64."""
    from core.quantization.requantize import quantize_multiplier

    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"x_q must be an integer array, got dtype {x.dtype}")
    axis = axis % x.ndim
    xm = np.moveaxis(x.astype(np.int64), axis, -1)
    real = min(float(beta) * float(np.float32(in_scale)) * float(1 << 26), float((1 << 31) - 1))
    mult, shift = quantize_multiplier(real)
    mult, shift = int(mult), int(shift)
    if shift < 0:
        raise QuantizationConfigError(f"softmax input scale {in_scale!r} gives a negative left shift")
    diff_min = -int(np.floor(1.0 * ((1 << 5) - 1) * (1 << 26) / (1 << shift)))
    diff = xm - xm.max(axis=-1, keepdims=True)
    valid = diff >= diff_min
    scaled = _srdhm(_wrap(np.where(valid, diff, 0) * (1 << shift)), mult)
    exps = _exp_on_negative_values(scaled, 5)
    acc = np.where(valid, _rdbpot(exps, 12), 0)
    total = _wrap(acc.sum(axis=-1, keepdims=True))
    # GetReciprocal(total, 12)
    headroom = _clz32(total)
    bits_over_unit = 12 - headroom
    shifted = _wrap(((total << headroom) & 0xFFFFFFFF) - (1 << 31))
    scale = _one_over_one_plus_x(shifted)
    prod = _srdhm(scale, exps)
    out = np.empty_like(prod)
    e = bits_over_unit + 31 - 8
    for v in np.unique(e):
        sel = np.broadcast_to(e == v, prod.shape)
        out[sel] = _rdbpot(prod[sel], int(v))
    out = np.clip(out - 128, -128, 127)
    out = np.where(valid, out, -128)
    return np.moveaxis(out, -1, axis).astype(np.int64)


def _clz32(v):
    v = np.asarray(v, np.int64) & 0xFFFFFFFF
    n = np.zeros(v.shape, np.int64)
    for k in (16, 8, 4, 2, 1):
        small = v < (1 << (32 - k))
        n = np.where(small, n + k, n)
        v = np.where(small, v << k, v)
    return np.where(np.asarray(v) == 0, 32, n)


# --------------------------------------------------------------------------- mixq's integer Softmax
# Attention probabilities lose too much in INT8 (most are far below 1/256), so the output is always
# 16-bit: scale 2**-15, zero point 0 (p = 1 saturates to 32767).

SOFTMAX_OUT_BITS = 16
SOFTMAX_OUT_SCALE = 1.0 / (1 << 15)
_SOFTMAX_EXP_BITS = 20
# the output grid covers twice the calibrated largest probability (held-out rows peak higher)
_SOFTMAX_PEAK_MARGIN = 2.0


def softmax_out_shift(peak: float) -> int:
    """Extra output bits of :func:`softmax_int` (scale ``2**-(15 + shift)``) for probabilities that
    peaked at ``peak`` in calibration: ViT's attention over 197 tokens peaks near 0.01, where the
    fixed 2**-15 step kept its INT16 output SQNR at 55 dB. 0 .. 15; 0 when ``peak`` is unknown."""
    if not np.isfinite(peak) or peak <= 0:
        return 0
    return int(min(max(np.floor(np.log2(1.0 / min(1.0, _SOFTMAX_PEAK_MARGIN * peak))), 0), 15))


def softmax_int_constants(node: Node, q_in) -> NodeQuant | None:
    """The quantization rule of an integer Softmax over the last axis (None where the op's opset<13
    flattening applies): a table ``T[j] = round(exp(-s_in * j) * 2**20)`` for ``j = 0 ..`` until it
    rounds to 0 (at most ``2**bits`` entries), int32, computed once in float64."""
    axis = node.attrs.get("axis", -1)
    if node.attrs.get("_coerce_2d") and axis not in (-1,):
        return None
    n = 1 << int(q_in.bits)
    limit = (_SOFTMAX_EXP_BITS + 1) * np.log(2.0) / float(q_in.scale)   # beyond: below half a table unit
    size = int(min(n, np.ceil(limit) + 2))
    table = np.round(np.exp(-float(q_in.scale) * np.arange(size, dtype=np.float64)) * (1 << _SOFTMAX_EXP_BITS))
    if size < n:
        table[-1] = 0
    return NodeQuant(kernel="softmax_int", exp_table=table.astype(np.int32), axis=int(axis))


def softmax_int(x_q, c: NodeQuant, node: Node | None = None) -> np.ndarray:
    """mixq's integer Softmax: ``d = max(x) - x`` (exact, per row), ``e = T[min(d, len(T) - 1)]``,
    ``sum = sum(e)`` (int64), ``out = min((e * 2**(15 + shift) + sum // 2) // sum, 32767)``:
    probabilities with scale 2**-(15 + shift) (``c.shift``, default 0) and zero point 0. The row
    max has ``e = 2**20``, so ``sum > 0``. Returns int64."""
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"x_q must be an integer array, got dtype {x.dtype}")
    x = x.astype(np.int64)
    axis = normalize_axis(node, c.axis, x.ndim) if node is not None else c.axis % x.ndim
    table = np.asarray(c.exp_table, np.int64)
    d = np.minimum(x.max(axis=axis, keepdims=True) - x, table.size - 1)
    e = table[d]
    total = e.sum(axis=axis, keepdims=True)
    bits = 15 + int(c.shift or 0)     # e <= 2**20, bits <= 30: e << bits fits int64
    return np.minimum((e * (1 << bits) + total // 2) // total, (1 << 15) - 1)
