"""Elementwise activations and Softmax; integer Relu/Clip (relu_int, clip_int, activation_range_int)."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import normalize_axis
from core.ops.registry import OpDef, register


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


register(OpDef("Relu", _same, _unary(lambda n, x: np.maximum(x, 0)), mla=True, kind="relu", doc="fused into a preceding conv/dense"))
register(OpDef("LeakyRelu", _same, _unary(_leaky), doc="alpha"))
register(OpDef("Sigmoid", _same, _unary(_sigmoid), doc="1 / (1 + exp(-x)), overflow-free"))
register(OpDef("Tanh", _same, _unary(lambda n, x: np.tanh(x)), doc="tanh(x)"))
register(OpDef("HardSigmoid", _same, _unary(_hard_sigmoid), kind="hard_sigmoid", doc="alpha, beta"))
register(OpDef("HardSwish", _same, _unary(_hard_swish), kind="hard_swish", doc="x * HardSigmoid(x) with alpha 1/6, beta 0.5"))


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
                names.append(graph.add_constant(graph.unique_name(f"{node.name}_{key}"), np.asarray(node.attrs.pop(key), dtype)))
            else:
                names.append("")
        node.inputs = [node.inputs[0], *names]


register(OpDef("Clip", _same, _clip_run, mla=True, kind="clip", check=_clip_check, upgrade=_clip_upgrade,
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


register(OpDef("Softmax", _softmax_infer, _softmax_run, upgrade=_softmax_upgrade, doc="axis (opset < 13 semantics kept)"))


# --------------------------------------------------------------------------- integer kernels

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
        raise QuantizationConfigError(f"zp, scale, lo, hi must be numbers, got {zp!r}, {scale!r}, {lo!r}, {hi!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise QuantizationConfigError(f"scale must be a positive finite number, got {scale!r}")
    if np.isnan(lo_f) or np.isnan(hi_f) or lo_f > hi_f:
        raise QuantizationConfigError(f"clip bounds lo={lo!r}, hi={hi!r} must satisfy lo <= hi")
    with np.errstate(over="ignore"):
        act_min = qmin if lo_f == -np.inf else max(qmin, _bound(lo_f, s, zp_i, qmin, qmax))
        act_max = qmax if hi_f == np.inf else min(qmax, _bound(hi_f, s, zp_i, qmin, qmax))
    return int(act_min), int(act_max)


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
