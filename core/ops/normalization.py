"""BatchNormalization (inference) and ReduceMean."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import const_input, normalize_axes
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
