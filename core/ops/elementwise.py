"""Add, Sub, Mul, Div with numpy broadcasting."""
from __future__ import annotations

import numpy as np

from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape
from core.ops.registry import OpDef, register


def _infer(node: Node, infos):
    return [TensorInfo(broadcast_shape(node, infos[0].shape, infos[1].shape), infos[0].dtype)]


def _binary(fn):
    def run(node: Node, inputs):
        a, b = inputs
        return [np.asarray(fn(a, b)).astype(a.dtype, copy=False)]
    return run


def _div(a, b):
    if a.dtype.kind in "iu":
        # ONNX integer Div truncates toward zero, like C
        q = np.abs(a) // np.abs(b)
        return np.where((a < 0) ^ (b < 0), -q, q)
    return a / b


for _name, _fn, _mla, _kind in [
    ("Add", np.add, True, "add"),
    ("Sub", np.subtract, True, "subtract"),
    ("Mul", np.multiply, True, "multiply"),
    ("Div", _div, False, "divide"),
]:
    register(OpDef(_name, _infer, _binary(_fn), mla=_mla, kind=_kind, doc="numpy broadcasting"))
