"""MaxPool, AveragePool, GlobalAveragePool; TFLite-exact integer kernels (max_pool_int,
avg_pool_int, global_avg_pool_int)."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import qrange, scale32
from core.ops.quant_rules import RescaleRule, ReuseRule
from core.ops.registry import OpDef, register
from core.quantization.quant_data import NodeQuant
from core.quantization.requantize import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier


def _geometry(node: Node, x_shape):
    n = len(x_shape) - 2
    kernel = list(node.attrs["kernel_shape"])
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    ceil_mode = node.attrs.get("ceil_mode", 0)
    out = []
    for d in range(n):
        eff = (kernel[d] - 1) * dilations[d] + 1
        size = x_shape[2 + d]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // strides[d])
            total = max(0, (o - 1) * strides[d] + eff - size)
            small, big = total // 2, total - total // 2
            pads[d], pads[d + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        elif auto_pad == "VALID":
            pads[d] = pads[d + n] = 0
            o = (size - eff) // strides[d] + 1
        else:
            num = size + pads[d] + pads[d + n] - eff
            o = (-(-num // strides[d]) if ceil_mode else num // strides[d]) + 1
            # ceil mode: the last window must start inside the input or the left padding
            if ceil_mode and (o - 1) * strides[d] >= size + pads[d]:
                o -= 1
        if o <= 0:
            raise ShapeInferenceError(f"{node.describe()}: kernel {kernel} does not fit input {tuple(x_shape)}")
        out.append(o)
    return kernel, strides, dilations, pads, out


def _pool_check(node: Node, infos):
    if "kernel_shape" not in node.attrs:
        raise UnsupportedOperatorError(node.op, node.source_name or node.name, "kernel_shape attribute is required")
    if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedOperatorError(node.op, node.source_name or node.name, "the Indices output is not supported")


def _pool_infer(node: Node, infos):
    x = infos[0]
    if len(x.shape) < 3:
        raise ShapeInferenceError(f"{node.describe()}: pooling needs an N,C,spatial input, got {x.shape}")
    *_, out = _geometry(node, x.shape)
    return [TensorInfo((*x.shape[:2], *out), x.dtype)]


def _windows(xp, kernel, strides, dilations, out):
    n = len(kernel)
    s = xp.strides
    shape = xp.shape[:2] + tuple(out) + tuple(kernel)
    st = s[:2] + tuple(s[2 + d] * strides[d] for d in range(n)) + tuple(s[2 + d] * dilations[d] for d in range(n))
    return np.lib.stride_tricks.as_strided(xp, shape, st, writeable=False)


def _padded(x, pads, out, kernel, strides, dilations, value):
    """Pad so that every window (incl. ceil-mode overhang) lies inside the array."""
    n = x.ndim - 2
    width = [(0, 0), (0, 0)]
    for d in range(n):
        need = (out[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1
        right = max(need - x.shape[2 + d] - pads[d], 0)
        width.append((pads[d], right))
    return np.pad(x, width, constant_values=value)


def _maxpool_run(node: Node, inputs):
    x = inputs[0]
    kernel, strides, dilations, pads, out = _geometry(node, x.shape)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    w = _windows(_padded(x, pads, out, kernel, strides, dilations, low), kernel, strides, dilations, out)
    y = w
    for _ in kernel:
        y = y.max(axis=-1)
    return [np.ascontiguousarray(y)]


def _avgpool_run(node: Node, inputs):
    x = inputs[0]
    kernel, strides, dilations, pads, out = _geometry(node, x.shape)
    n = len(kernel)
    axes = tuple(range(-n, 0))
    xp = _padded(x, pads, out, kernel, strides, dilations, 0)
    total = _windows(xp, kernel, strides, dilations, out).sum(
        axis=axes, dtype=np.float64 if x.dtype == np.float64 else np.float32
    )
    # count: explicit pads count when count_include_pad=1; ceil-mode overhang never counts
    ones = np.zeros((1, 1) + xp.shape[2:], np.float32)
    inner = tuple(slice(pads[d], pads[d] + x.shape[2 + d]) for d in range(n))
    if node.attrs.get("count_include_pad", 0):
        inner = tuple(slice(0, pads[d] + x.shape[2 + d] + pads[d + n]) for d in range(n))
    ones[(slice(None), slice(None)) + inner] = 1
    count = _windows(ones, kernel, strides, dilations, out).sum(axis=axes)
    return [(total / np.maximum(count, 1)).astype(x.dtype)]


class MaxPoolRule(ReuseRule):
    """MaxPool keeps its input's quantization: the maximum of the integers (one output)."""

    def supported(self, node):
        return len(node.outputs) == 1 or not any(node.outputs[1:])

    def tflite_supported(self, node):
        return self.supported(node) and not node.attrs.get("activation")

    def run_int(self, node, nq, ctx):
        ctx.set_int(node.outputs[0], max_pool_int(ctx.int(node.inputs[0]), node))

    def lower_integer_onnx(self, node, nq, L):
        # the maximum of integers is exact in float32 (|q| < 2**24)
        w, ops, out = L.w, L.ops, node.outputs[0]
        y = w.op("MaxPool", [ops.cast(L.int_of(node.inputs[0]), "FLOAT", node.name)], node.name, **L.onnx_attrs(node))
        L.q[out] = ops.cast(y, L.storage_type(out), node.name)
        return True


class AvgPoolRule(ReuseRule):
    """AveragePool keeps its input's quantization: TFLite's rounded integer mean of each window."""

    def constants(self, node, q, consts):
        return NodeQuant(qmin=q.qmin, qmax=q.qmax)

    def tflite_supported(self, node):
        a = node.attrs
        return not (a.get("activation") or a.get("count_include_pad", 0) or a.get("ceil_mode", 0))

    def run_int(self, node, nq, ctx):
        x = node.inputs[0]
        ctx.set_int(node.outputs[0], avg_pool_int(ctx.int(x), node, nq.qmin, nq.qmax,
                                                  zero_point=ctx.tensors[x].zero_point))

    def lower_integer_onnx(self, node, nq, L):
        """Window sums as a depthwise ConvInteger with a kernel of ones (pads contribute 0; the end
        pads stretched over any ceil-mode overhang), then the rounded division by the count."""
        n, x, out = node, node.inputs[0], node.outputs[0]
        q_in, w, ops, base = L.tq[x], L.w, L.ops, n.name
        shape = tuple(L.g.tensors[x].shape)
        if any(not isinstance(d, (int, np.integer)) for d in shape[1:]):
            return False
        kernel, strides, dilations, pads, size = _geometry(n, shape)
        rank = len(kernel)
        ends = [(size[d] - 1) * strides[d] + (kernel[d] - 1) * dilations[d] + 1 - shape[2 + d] - pads[d]
                for d in range(rank)]
        attrs = {"group": int(shape[1]), "strides": strides, "dilations": dilations, "kernel_shape": kernel,
                 "pads": list(pads[:rank]) + [max(e, pads[rank + d]) for d, e in enumerate(ends)]}
        ones = np.ones((shape[1], 1) + tuple(kernel), np.int8)
        acc = L.integer_product("ConvInteger", L.int_of(x), q_in.bits, 0, ones, attrs, base)
        count, total = avg_pool_counts(n, shape)
        if n.attrs.get("count_include_pad", 0) and any(pads):
            acc = w.op("Add", [acc, ops.i64((total - count) * int(q_in.zero_point))], base)
            count = total
        L.store(out, ops.round_div(acc, count, base), NodeQuant(act_min=nq.qmin, act_max=nq.qmax))
        return True


register(OpDef("MaxPool", _pool_infer, _maxpool_run, mla=True, kind="max_pool2d", check=_pool_check,
               quant=MaxPoolRule(),
               doc="kernel_shape, strides, pads, auto_pad, dilations, ceil_mode (no Indices output)"))
register(OpDef("AveragePool", _pool_infer, _avgpool_run, mla=True, kind="avg_pool2d", check=_pool_check,
               quant=AvgPoolRule(),
               doc="kernel_shape, strides, pads, auto_pad, dilations, ceil_mode, count_include_pad"))


def _gap_infer(node: Node, infos):
    x = infos[0]
    if len(x.shape) < 3:
        raise ShapeInferenceError(f"{node.describe()}: GlobalAveragePool needs an N,C,spatial input, got {x.shape}")
    return [TensorInfo(x.shape[:2] + (1,) * (len(x.shape) - 2), x.dtype)]


def _gap_run(node: Node, inputs):
    x = inputs[0]
    return [
        x.mean(
            axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64 if x.dtype == np.float64 else np.float32
        ).astype(x.dtype)
    ]


class GlobalAvgPoolRule(RescaleRule):
    """GlobalAveragePool: the output's own range, TFLite's integer mean (a converted TFLite MEAN:
    its reference QuantizedMeanOrSum kernel)."""

    def run_int(self, node, nq, ctx):
        x, out = node.inputs[0], node.outputs[0]
        q_in, q_out = ctx.tensors[x], ctx.tensors[out]
        if nq.tflite_kernel is not None:
            y = mean_int_tflite(ctx.int(x), nq.tflite_kernel, q_in.scale, q_in.zero_point, q_out.scale,
                                q_out.zero_point, nq.qmin, nq.qmax)
        else:
            y = global_avg_pool_int(ctx.int(x), q_in.scale, q_in.zero_point, q_out.scale, q_out.zero_point,
                                    nq.act_min, nq.act_max)
        ctx.set_int(out, y)

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        if len(acts) == 1 and ctx.mean_keepdims(node) is not None:
            # a TFLite MEAN: TF 2.21's reference kernel is QuantizedMeanOrSum (integer)
            return NodeQuant(tflite_kernel="mean_quantized", qmin=q_out.qmin, qmax=q_out.qmax)
        if len(acts) != len([i for i in node.inputs if i]):
            return None
        return self.tflite_range(node, q_out)

    def lower_integer_onnx(self, node, nq, L):
        x, out = node.inputs[0], node.outputs[0]
        q_in, q_out, w, ops, base = L.tq[x], L.tq[out], L.w, L.ops, node.name
        shape = L.g.tensors[x].shape
        if any(not isinstance(d, (int, np.integer)) for d in shape[2:]):
            return False
        count = int(np.prod(shape[2:]))
        centred = w.op("Sub", [L.int64_of(x), ops.i64(q_in.zero_point)], base)
        acc = w.op("ReduceSum", [centred, ops.i64(list(range(2, len(shape))))], base, keepdims=1)
        if nq.tflite_kernel == "mean_quantized":   # TFLite's MEAN: 1/count folded into the multiplier
            scaled = ops.mbqm(acc, *mean_multiplier_tflite(q_in.scale, q_out.scale, count), base)
            nq = NodeQuant(act_min=nq.qmin, act_max=nq.qmax)
        elif nq.tflite_kernel:
            return False
        else:
            m, shift = mean_multiplier(q_in.scale, q_out.scale)
            scaled = ops.round_div(ops.mbqm(acc, m, shift, base), count, base)
        L.store(out, w.op("Add", [scaled, ops.i64(q_out.zero_point)], base), nq)
        return True


register(OpDef("GlobalAveragePool", _gap_infer, _gap_run, mla=True, kind="global_avg_pool2d",
               quant=GlobalAvgPoolRule(), doc="any spatial rank"))


# --------------------------------------------------------------------------- integer kernels
# TFLite's reference integer pooling (reference/integer_ops/pooling.h, mean.h). mixq's layout is
# N, C, spatial...; the arithmetic is per element and identical to TFLite's NHWC loops.

def _int_input(x_q, node: Node) -> np.ndarray:
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"{node.describe()}: x_q must be an integer array, got dtype {x.dtype}")
    if x.ndim < 3:
        raise ExecutionError(f"{node.describe()}: pooling needs an N,C,spatial input, got shape {x.shape}")
    return x


def _act_range(node_desc: str, qmin, qmax):
    if (qmin is None) != (qmax is None):
        raise QuantizationConfigError(f"{node_desc}: give both qmin and qmax or neither")
    if qmin is not None and int(qmin) > int(qmax):
        raise QuantizationConfigError(f"{node_desc}: qmin ({qmin}) must be <= qmax ({qmax})")
    return qmin, qmax


def _round_div(acc: np.ndarray, count) -> np.ndarray:
    """TFLite: ``acc > 0 ? (acc + count/2) / count : (acc - count/2) / count`` (C division
    truncates, so this rounds half away from zero)."""
    count = np.asarray(count, dtype=np.int64)
    half = count // 2
    pos = (acc + half) // count                 # acc > 0: floor == truncation
    neg = -((-acc + half) // count)             # acc <= 0: -(|acc| + half) / count truncated
    return np.where(acc > 0, pos, neg)


def max_pool_int(x_q, node: Node, qmin=None, qmax=None) -> np.ndarray:
    """MaxPool on quantized integers (TFLite ``integer_ops::MaxPool``): the maximum over each
    window; padding is the dtype's minimum so it never wins (TFLite skips padded taps).
    ``qmin``/``qmax`` (optional, together): the fused activation clamp. Input and output share
    scale and zero point; the result has ``x_q``'s dtype. Geometry attributes as :data:`MaxPool`.
    """
    x = _int_input(x_q, node)
    qmin, qmax = _act_range(node.describe(), qmin, qmax)
    kernel, strides, dilations, pads, out = _geometry(node, x.shape)
    low = np.iinfo(x.dtype).min
    y = _windows(_padded(x, pads, out, kernel, strides, dilations, low), kernel, strides, dilations, out)
    for _ in kernel:
        y = y.max(axis=-1)
    if qmin is not None:
        y = np.clip(y, max(int(qmin), int(low)), min(int(qmax), int(np.iinfo(x.dtype).max)))
    return np.ascontiguousarray(y, dtype=x.dtype)


def avg_pool_counts(node: Node, x_shape) -> tuple[np.ndarray, np.ndarray]:
    """Per output position (shape 1, 1, *out): the number of window taps inside the input, and
    inside the input or its explicit pads (ceil-mode overhang excluded from both)."""
    kernel, strides, dilations, pads, out = _geometry(node, x_shape)
    n = len(kernel)
    axes = tuple(range(-n, 0))
    shape = _padded(np.zeros((1, 1) + tuple(x_shape[2:]), np.int8), pads, out, kernel, strides, dilations, 0).shape
    valid = np.zeros(shape, np.int64)
    valid[(slice(None), slice(None)) + tuple(slice(pads[d], pads[d] + x_shape[2 + d]) for d in range(n))] = 1
    padded = np.zeros(shape, np.int64)
    padded[(slice(None), slice(None)) + tuple(slice(0, pads[d] + x_shape[2 + d] + pads[d + n]) for d in range(n))] = 1
    return (_windows(valid, kernel, strides, dilations, out).sum(axis=axes, dtype=np.int64),
            _windows(padded, kernel, strides, dilations, out).sum(axis=axes, dtype=np.int64))


def avg_pool_int(x_q, node: Node, qmin, qmax, zero_point=None) -> np.ndarray:
    """AveragePool on quantized integers, bit-exact with TFLite ``integer_ops::AveragePool``
    (int8 and int16): ``acc = Σ x`` over the window's valid taps, ``count`` = their number
    (padding and ceil-mode overhang excluded), ``out = clamp(acc > 0 ? (acc + count/2) / count :
    (acc - count/2) / count, qmin, qmax)`` with C truncating division (ties away from zero).
    Input and output share scale and zero point. ``count_include_pad=1`` (not in TFLite) counts
    explicit pads as the real value 0, i.e. the quantized ``zero_point``, which must then be
    given. Returns int64.
    """
    x = _int_input(x_q, node)
    qmin, qmax = _act_range(node.describe(), qmin, qmax)
    if qmin is None:
        raise QuantizationConfigError(f"{node.describe()}: avg_pool_int needs qmin and qmax")
    kernel, strides, dilations, pads, out = _geometry(node, x.shape)
    n = len(kernel)
    axes = tuple(range(-n, 0))
    xp = _padded(x.astype(np.int64), pads, out, kernel, strides, dilations, 0)
    acc = _windows(xp, kernel, strides, dilations, out).sum(axis=axes, dtype=np.int64)
    count, total = avg_pool_counts(node, x.shape)
    if node.attrs.get("count_include_pad", 0) and any(pads):
        if zero_point is None:
            raise QuantizationConfigError(f"{node.describe()}: count_include_pad=1 needs the input's zero_point")
        acc = acc + (total - count) * int(zero_point)
        count = total
    if np.any(count == 0):   # TFLite returns an error when a window has no valid tap
        raise ExecutionError(f"{node.describe()}: a pooling window covers only padding")
    return np.clip(_round_div(acc, count), int(qmin), int(qmax)).astype(np.int64)


def mean_multiplier(in_scale, out_scale) -> tuple[int, int]:
    """The Q31 multiplier of :func:`global_avg_pool_int`: ``quantize_multiplier(s_in / s_out)`` (float32 scales)."""
    real = scale32(in_scale, "in_scale") / scale32(out_scale, "out_scale")
    m, shift = quantize_multiplier(real)
    if not -31 <= shift <= 30:
        raise QuantizationConfigError(f"in_scale / out_scale = {real!r} is out of the Q31 multiplier range")
    return m, shift


def global_avg_pool_int(x_q, in_scale, in_zp, out_scale, out_zp, qmin, qmax) -> np.ndarray:
    """GlobalAveragePool on quantized integers as TFLite's MEAN over the spatial axes (the
    converter lowers GAP to MEAN; reduce.cc uses ``reference_integer_ops::Mean`` for this case):
    ``acc = Σ (x - in_zp)`` (int32), ``acc = MBQM(acc, quantize_multiplier(s_in / s_out))``,
    ``acc = acc > 0 ? (acc + N/2) / N : (acc - N/2) / N`` (C division; N = spatial size),
    ``out = clamp(acc + out_zp, qmin, qmax)``. Equal scales give the exact identity multiplier
    (2^30, shift 1), so only the rounded mean remains. Input N, C, spatial...; output keeps the
    spatial axes as 1. Returns int64.
    """
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"x_q must be an integer array, got dtype {x.dtype}")
    if x.ndim < 3:
        raise ExecutionError(f"global_avg_pool_int needs an N,C,spatial input, got shape {x.shape}")
    qmin, qmax, (in_zp, out_zp) = qrange(qmin, qmax, ("in_zp", in_zp), ("out_zp", out_zp))
    if not qmin <= out_zp <= qmax:
        raise QuantizationConfigError(f"out_zp ({out_zp}) must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    m, shift = mean_multiplier(in_scale, out_scale)
    axes = tuple(range(2, x.ndim))
    count = int(np.prod(x.shape[2:], dtype=np.int64))
    if count == 0:
        raise ExecutionError(f"global_avg_pool_int: empty spatial extent in shape {x.shape}")
    acc = (x.astype(np.int64) - in_zp).sum(axis=axes, keepdims=True)
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        raise ExecutionError("global_avg_pool_int: the int32 sum over the spatial axes overflows")
    acc = np.asarray(multiply_by_quantized_multiplier(acc, m, shift), dtype=np.int64)
    return np.clip(_round_div(acc, count) + out_zp, qmin, qmax).astype(np.int64)


def mean_multiplier_tflite(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """The multiplier of :func:`mean_int_tflite`, with the 1/``count`` folded in."""
    from core.quantization.requantize import quantize_multiplier

    m, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    m, shift = int(m), int(shift)
    k = min(count.bit_length() - 1, 32, 31 + shift)
    return (m << k) // count, shift - k


def mean_int_tflite(x_q: np.ndarray, kernel: str, in_scale: float, in_zp: int, out_scale: float, out_zp: int,
                    qmin: int, qmax: int) -> np.ndarray:
    """TFLite 2.21's reference int8 MEAN over the spatial axes of an N,C,spatial tensor
    (``reference_ops::QuantizedMeanOrSum``, used for keep_dims true and false alike; measured
    bit-exact, while ``integer_ops::Mean``, mixq's ``global_avg_pool_int``, is not what the
    reference resolver runs): ``(M, shift) = QuantizeMultiplier(s_in / s_out)`` (double of the
    float32 scales), the 1/N folded in: ``k = min(floor(log2 N), 32, 31 + shift)``,
    ``M = (M << k) / N`` (int64, truncating), ``shift -= k``;
    ``out = clamp(MBQM(sum(q) - zp_in * N, M, shift) + zp_out)``. ``kernel`` must be
    ``"mean_quantized"``. Returns int64 shaped N, C, 1, ... (the spatial axes kept as 1)."""
    from core.errors import ExecutionError
    from core.quantization.requantize import multiply_by_quantized_multiplier

    if kernel != "mean_quantized":
        raise ExecutionError(f"unknown TFLite MEAN kernel {kernel!r}")
    x = np.asarray(x_q)
    axes = tuple(range(2, x.ndim))
    count = int(np.prod(x.shape[2:], dtype=np.int64))
    acc = x.astype(np.int64).sum(axis=axes, keepdims=True)
    m, shift = mean_multiplier_tflite(in_scale, out_scale, count)
    shifted = acc - int(in_zp) * count
    y = np.asarray(multiply_by_quantized_multiplier(shifted, m, shift), np.int64) + int(out_zp)
    return np.clip(y, qmin, qmax).astype(np.int64)
