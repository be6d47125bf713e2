"""Comparisons, boolean logic and Where: Equal, Less, LessOrEqual, Greater, GreaterOrEqual, Not,
And, Or, Where (numpy broadcasting). In exported transformers they build masks (a Swin window's
attention mask, ``masked_fill``) from constants, so constant folding usually evaluates them at
load time; when they do run, they run on the APU (float/bool tensors, no quantization)."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape
from core.ops.registry import OpDef, register

_BOOL = np.dtype(np.bool_)


def _compare_infer(node: Node, infos):
    a, b = infos[0], infos[1]
    if a.dtype != b.dtype:
        raise ShapeInferenceError(f"{node.describe()}: inputs have different types {a.dtype} and {b.dtype}")
    return [TensorInfo(broadcast_shape(node, a.shape, b.shape), _BOOL)]


def _binary_bool(fn):
    def run(node: Node, inputs):
        return [np.asarray(fn(inputs[0], inputs[1]), dtype=np.bool_)]
    return run


for _name, _fn, _kind in [
    ("Equal", np.equal, "equal"),
    ("Less", np.less, "less"),
    ("LessOrEqual", np.less_equal, "less_equal"),
    ("Greater", np.greater, "greater"),
    ("GreaterOrEqual", np.greater_equal, "greater_equal"),
]:
    register(OpDef(_name, _compare_infer, _binary_bool(_fn), kind=_kind, doc="numpy broadcasting; bool output"))


def _logic_infer(node: Node, infos):
    for k, t in enumerate(infos):
        if t.dtype != _BOOL:
            raise ShapeInferenceError(f"{node.describe()}: input {k} must be bool, got {t.dtype}")
    return [TensorInfo(broadcast_shape(node, *(t.shape for t in infos)), _BOOL)]


register(OpDef("Not", _logic_infer, lambda n, x: [np.logical_not(x[0])], kind="logical_not", doc="bool input"))
register(OpDef("And", _logic_infer, _binary_bool(np.logical_and), kind="logical_and",
               doc="bool inputs, numpy broadcasting"))
register(OpDef("Or", _logic_infer, _binary_bool(np.logical_or), kind="logical_or",
               doc="bool inputs, numpy broadcasting"))


def _where_infer(node: Node, infos):
    cond, x, y = infos
    if cond.dtype != _BOOL:
        raise ShapeInferenceError(f"{node.describe()}: condition must be bool, got {cond.dtype}")
    if x.dtype != y.dtype:
        raise ShapeInferenceError(f"{node.describe()}: X and Y have different types {x.dtype} and {y.dtype}")
    return [TensorInfo(broadcast_shape(node, cond.shape, x.shape, y.shape), x.dtype)]


def _where_run(node: Node, inputs):
    cond, x, y = inputs
    return [np.where(cond, x, y).astype(x.dtype, copy=False)]


register(OpDef("Where", _where_infer, _where_run, kind="where", doc="condition, X, Y with numpy broadcasting"))
