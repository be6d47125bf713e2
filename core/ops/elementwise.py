"""Add, Sub, Mul, Div with numpy broadcasting."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape
from core.ops.registry import OpDef, register


def _infer(node: Node, infos):
    a, b = infos
    if a.dtype != b.dtype:
        raise ShapeInferenceError(f"{node.describe()}: inputs have different types {a.dtype} and {b.dtype}")
    return [TensorInfo(broadcast_shape(node, a.shape, b.shape), a.dtype)]


def _binary(fn):
    def run(node: Node, inputs):
        a, b = inputs
        # fixed-width integer arithmetic wraps around (uint8 3 - 5 = 254), as in ONNX
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return [np.asarray(fn(a, b)).astype(a.dtype, copy=False)]
    return run


def _div(a, b):
    if a.dtype.kind in "iub":
        if not np.all(b):
            raise ZeroDivisionError("integer division by zero")
        # ONNX integer Div truncates toward zero, like C (numpy's // floors)
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) ^ (b < 0), -q, q)
    return a / b


for _name, _fn, _mla, _kind, _doc in [
    ("Add", np.add, True, "add", "numpy broadcasting"),
    ("Sub", np.subtract, True, "subtract", "numpy broadcasting"),
    ("Mul", np.multiply, True, "multiply", "numpy broadcasting"),
    ("Div", _div, False, "divide", "numpy broadcasting; integer division truncates toward zero"),
]:
    register(OpDef(_name, _infer, _binary(_fn), mla=_mla, kind=_kind, doc=_doc))
