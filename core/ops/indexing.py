"""Expand, Tile (static shape / repeats) and ScatterND. Exporters use them on constants (a ViT's
class token expanded to the batch, a YOLOv8 head's anchor grid, a Swin window mask written by
slice assignment), where constant folding evaluates them at load time; on activations Expand and
Tile move values unchanged (the accelerator runs them with the input's quantization)."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape, const_input
from core.ops.registry import OpDef, register


def _int_vector(node: Node, value, what: str) -> tuple[int, ...]:
    v = np.asarray(value)
    if v.dtype.kind not in "iu" or v.ndim != 1:
        raise ShapeInferenceError(f"{node.describe()}: {what} must be a 1-D integer tensor, got {v.dtype} {v.shape}")
    return tuple(int(d) for d in v)


def _expand_shape(node: Node, in_shape, shape) -> tuple[int, ...]:
    target = _int_vector(node, shape, "shape")
    if any(d < 0 for d in target):
        raise ShapeInferenceError(f"{node.describe()}: Expand's shape {list(target)} has a negative dimension")
    return broadcast_shape(node, tuple(in_shape), target)


def _expand_infer(node: Node, infos):
    shape = const_input(node, infos, 1, "shape")
    return [TensorInfo(_expand_shape(node, infos[0].shape, shape), infos[0].dtype)]


def _expand_run(node: Node, inputs):
    x, shape = inputs[0], inputs[1]
    return [np.array(np.broadcast_to(x, _expand_shape(node, x.shape, shape)))]


register(OpDef("Expand", _expand_infer, _expand_run, mla=True, kind="broadcast_to", static_inputs=(1,),
               doc="static shape input (numpy broadcasting of input and shape)"))


def _repeats(node: Node, rank: int, value) -> tuple[int, ...]:
    reps = _int_vector(node, value, "repeats")
    if len(reps) != rank or any(r < 0 for r in reps):
        raise ShapeInferenceError(f"{node.describe()}: repeats {list(reps)} must be {rank} non-negative integers")
    return reps


def _tile_infer(node: Node, infos):
    x = infos[0]
    reps = _repeats(node, len(x.shape), const_input(node, infos, 1, "repeats"))
    return [TensorInfo(tuple(d * r for d, r in zip(x.shape, reps)), x.dtype)]


def _tile_run(node: Node, inputs):
    x = inputs[0]
    return [np.tile(x, _repeats(node, x.ndim, inputs[1]))]


register(OpDef("Tile", _tile_infer, _tile_run, mla=True, kind="tile", static_inputs=(1,), doc="static repeats input"))


_SCATTER = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_nd_infer(node: Node, infos):
    data, indices, updates = infos
    k = indices.shape[-1] if indices.shape else 0
    if not indices.shape or k > len(data.shape):
        raise ShapeInferenceError(f"{node.describe()}: indices shape {indices.shape} does not index data {data.shape}")
    expected = tuple(indices.shape[:-1]) + tuple(data.shape[k:])
    if tuple(updates.shape) != expected:
        raise ShapeInferenceError(f"{node.describe()}: updates shape {updates.shape}, expected {expected}")
    if updates.dtype != data.dtype:
        raise ShapeInferenceError(f"{node.describe()}: updates type {updates.dtype} != data type {data.dtype}")
    reduction = node.attrs.get("reduction", "none")
    if reduction not in ("none", *_SCATTER):
        raise ShapeInferenceError(f"{node.describe()}: unknown reduction {reduction!r}")
    return [TensorInfo(data.shape, data.dtype)]


def _scatter_nd_run(node: Node, inputs):
    data, indices, updates = inputs
    k = indices.shape[-1]
    idx = np.asarray(indices, np.int64).reshape(-1, k)
    dims = np.asarray(data.shape[:k], np.int64)
    if idx.size and (np.any(idx < -dims) or np.any(idx >= dims)):
        raise ExecutionError(f"{node.describe()}: ScatterND index out of range for data shape {data.shape}")
    idx = np.where(idx < 0, idx + dims, idx)
    upd = np.asarray(updates).reshape((idx.shape[0],) + data.shape[k:])
    out = np.array(data, copy=True)
    where = tuple(idx.T)
    reduction = node.attrs.get("reduction", "none")
    if reduction == "none":
        out[where] = upd          # duplicate indices: the last update wins (ONNX leaves it undefined)
    else:
        _SCATTER[reduction].at(out, where, upd)
    return [out]


register(OpDef("ScatterND", _scatter_nd_infer, _scatter_nd_run, kind="scatter_nd",
               doc="reduction none/add/mul/max/min; negative indices"))
