"""MaxPool, AveragePool, GlobalAveragePool."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.registry import OpDef, register


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
    total = _windows(xp, kernel, strides, dilations, out).sum(axis=axes, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    # count: explicit pads count when count_include_pad=1; ceil-mode overhang never counts
    ones = np.zeros((1, 1) + xp.shape[2:], np.float32)
    inner = tuple(slice(pads[d], pads[d] + x.shape[2 + d]) for d in range(n))
    if node.attrs.get("count_include_pad", 0):
        inner = tuple(slice(0, pads[d] + x.shape[2 + d] + pads[d + n]) for d in range(n))
    ones[(slice(None), slice(None)) + inner] = 1
    count = _windows(ones, kernel, strides, dilations, out).sum(axis=axes)
    return [(total / np.maximum(count, 1)).astype(x.dtype)]


register(OpDef("MaxPool", _pool_infer, _maxpool_run, mla=True, kind="max_pool2d", check=_pool_check,
               doc="kernel_shape, strides, pads, auto_pad, dilations, ceil_mode (no Indices output)"))
register(OpDef("AveragePool", _pool_infer, _avgpool_run, mla=True, kind="avg_pool2d", check=_pool_check,
               doc="kernel_shape, strides, pads, auto_pad, dilations, ceil_mode, count_include_pad"))


def _gap_infer(node: Node, infos):
    x = infos[0]
    if len(x.shape) < 3:
        raise ShapeInferenceError(f"{node.describe()}: GlobalAveragePool needs an N,C,spatial input, got {x.shape}")
    return [TensorInfo(x.shape[:2] + (1,) * (len(x.shape) - 2), x.dtype)]


def _gap_run(node: Node, inputs):
    x = inputs[0]
    return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64 if x.dtype == np.float64 else np.float32).astype(x.dtype)]


register(OpDef("GlobalAveragePool", _gap_infer, _gap_run, mla=True, kind="global_avg_pool2d", doc="any spatial rank"))
