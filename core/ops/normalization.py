"""BatchNormalization (inference), ReduceMean and LayerNormalization."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape, const_input, normalize_axes, normalize_axis
from core.ops.registry import OpDef, register


def _bn_check(node: Node, infos):
    if node.attrs.get("training_mode", 0) or len([o for o in node.outputs if o]) > 1:
        raise UnsupportedOperatorError(
            node.op, node.source_name or node.name, "training mode (mixq runs inference only)"
        )


def _bn_infer(node: Node, infos):
    if len(infos) != 5 or any(i is None for i in infos):
        raise ShapeInferenceError(
            f"{node.describe()}: BatchNormalization needs 5 inputs (X, scale, B, mean, var), got {len(infos)}"
        )
    x = infos[0]
    c = x.shape[1] if len(x.shape) > 1 else 1  # a 1-D input is (N,) with C = 1
    for k, what in enumerate(("scale", "B", "mean", "var"), start=1):
        if tuple(infos[k].shape) != (c,):
            raise ShapeInferenceError(f"{node.describe()}: {what} has shape {infos[k].shape}, expected ({c},)")
    return [TensorInfo(x.shape, x.dtype)]


def bn_scale_shift(node: Node, scale, bias, mean, var):
    """BatchNormalization as y = x * a + b per channel (float64 for folding accuracy)."""
    eps = node.attrs.get("epsilon", 1e-5)
    a = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return a, bias.astype(np.float64) - mean.astype(np.float64) * a


def _bn_run(node: Node, inputs):
    x = inputs[0]
    eps = np.asarray(node.attrs.get("epsilon", 1e-5), x.dtype)
    shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else (-1,)
    scale, bias, mean, var = (v.astype(x.dtype).reshape(shape) for v in inputs[1:5])
    return [((x - mean) / np.sqrt(var + eps) * scale + bias).astype(x.dtype, copy=False)]


register(OpDef("BatchNormalization", _bn_infer, _bn_run, check=_bn_check, kind="batch_norm",
               doc="inference mode; folded into a preceding conv/dense, else decomposed to Mul+Add"))


def _axes(node: Node, infos, rank):
    axes = node.attrs.get("axes")  # opset < 18, if not upgraded to an input
    if axes is None and len(infos) > 1 and infos[1] is not None:
        axes = const_input(node, infos, 1, "axes")
    if axes is None or len(axes) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            return ()
        return tuple(range(rank))
    return tuple(sorted(normalize_axes(node, axes, rank)))


def _reduce_upgrade(node: Node, graph) -> None:
    # opset 18 moved axes from an attribute to an input
    if graph.opset < 18 and "axes" in node.attrs:
        axes = np.asarray(node.attrs.pop("axes"), np.int64)
        name = graph.add_constant(graph.unique_name(f"{node.name}_axes"), axes)
        node.inputs = [node.inputs[0], name]


def _reduce_infer(node: Node, infos):
    x = infos[0]
    axes = _axes(node, infos, len(x.shape))
    keep = node.attrs.get("keepdims", 1)
    shape = tuple((1 if keep else None) if d in axes else s for d, s in enumerate(x.shape))
    return [TensorInfo(tuple(s for s in shape if s is not None), x.dtype)]


def _reduce_run(node: Node, inputs):
    x = inputs[0]
    infos = [TensorInfo.of(v) if v is not None else None for v in inputs]
    axes = _axes(node, infos, x.ndim)
    if not axes:
        return [x]
    return [np.mean(x, axis=axes, keepdims=bool(node.attrs.get("keepdims", 1))).astype(x.dtype, copy=False)]


register(OpDef("ReduceMean", _reduce_infer, _reduce_run, kind="mean", upgrade=_reduce_upgrade,
               static_inputs=(1,), doc="axes (attribute before opset 18, input after), keepdims, noop_with_empty_axes"))


# ---- LayerNormalization ------------------------------------------------------------------------

def _ln_axis(node: Node, rank: int) -> int:
    return normalize_axis(node, node.attrs.get("axis", -1), rank)


def _ln_infer(node: Node, infos):
    x = infos[0]
    if len(infos) < 2 or infos[1] is None:
        raise ShapeInferenceError(f"{node.describe()}: LayerNormalization needs a Scale input")
    axis = _ln_axis(node, len(x.shape))
    normalized = tuple(x.shape[axis:])
    for k, what in ((1, "Scale"), (2, "B")):
        if k < len(infos) and infos[k] is not None:
            if broadcast_shape(node, normalized, infos[k].shape) != normalized:
                raise ShapeInferenceError(f"{node.describe()}: {what} shape {infos[k].shape} does not broadcast "
                                          f"to the normalized shape {normalized}")
    stats = tuple(x.shape[:axis]) + (1,) * (len(x.shape) - axis)
    stash = np.dtype(np.float32) if node.attrs.get("stash_type", 1) == 1 else x.dtype
    outs = [TensorInfo(x.shape, x.dtype), TensorInfo(stats, stash), TensorInfo(stats, stash)]
    return outs[:max(len(node.outputs), 1)]


def layer_norm(x: np.ndarray, axis: int, epsilon: float, scale=None, bias=None):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over axes ``axis..rank-1``, in float64;
    returns (y float64, mean, 1 / sqrt(var + eps)) with keepdims."""
    xd = np.asarray(x, np.float64)
    axes = tuple(range(axis, xd.ndim))
    mean = xd.mean(axis=axes, keepdims=True)
    centered = xd - mean
    inv_std = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + float(epsilon))
    y = centered * inv_std
    if scale is not None:
        y = y * np.asarray(scale, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, inv_std


def _ln_run(node: Node, inputs):
    x = inputs[0]
    scale = inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    y, mean, inv_std = layer_norm(x, _ln_axis(node, x.ndim), node.attrs.get("epsilon", 1e-5), scale, bias)
    stash = np.float32 if node.attrs.get("stash_type", 1) == 1 else x.dtype
    return [y.astype(x.dtype), mean.astype(stash), inv_std.astype(stash)][:max(len(node.outputs), 1)]


def _ln_mla(node: Node, graph) -> bool:
    # the accelerator takes the normalized output only (Mean / InvStdDev outputs unused)
    return not any(o for o in node.outputs[1:])


register(OpDef("LayerNormalization", _ln_infer, _ln_run, mla=_ln_mla, kind="layer_norm",
               doc="axis, epsilon, optional B, Mean/InvStdDev outputs (float64 inside); also fused from its "
                   "written-out ReduceMean/Sub/Pow/Sqrt/Div form; MLA when only Y is used"))
