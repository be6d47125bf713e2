"""Gemm and MatMul."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import activation_suffix, apply_activation, broadcast_shape
from core.ops.registry import OpDef, register


def _gemm_infer(node: Node, infos):
    a, b = infos[0], infos[1]
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ShapeInferenceError(f"{node.describe()}: Gemm needs 2-D inputs, got {a.shape} and {b.shape}")
    m, ka = a.shape[::-1] if node.attrs.get("transA", 0) else a.shape
    kb, n = b.shape[::-1] if node.attrs.get("transB", 0) else b.shape
    if ka != kb:
        raise ShapeInferenceError(f"{node.describe()}: inner dimensions differ ({a.shape} x {b.shape})")
    if len(infos) > 2 and infos[2] is not None:
        broadcast_shape(node, (m, n), infos[2].shape)
    return [TensorInfo((m, n), a.dtype)]


def _gemm_run(node: Node, inputs):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if node.attrs.get("transA", 0):
        a = a.T
    if node.attrs.get("transB", 0):
        b = b.T
    y = a @ b
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None:
        y = y + (c * np.asarray(beta, c.dtype) if beta != 1.0 else c)
    return [apply_activation(np.ascontiguousarray(y.astype(np.result_type(a, b), copy=False)), node)]


def _gemm_kind(node: Node) -> str:
    return "dense" + ("_add" if len(node.inputs) > 2 and node.inputs[2] else "") + activation_suffix(node)


register(OpDef("Gemm", _gemm_infer, _gemm_run, mla=lambda n, g: g.is_constant(n.inputs[1]), kind=_gemm_kind,
               doc="alpha, beta, transA, transB; MLA when B is constant; fused bias + Relu/Clip"))


def _matmul_infer(node: Node, infos):
    a, b = tuple(infos[0].shape), tuple(infos[1].shape)
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeInferenceError(f"{node.describe()}: MatMul inner dimensions differ ({a} x {b})")
    shape = broadcast_shape(node, a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return [TensorInfo(shape, infos[0].dtype)]


def _matmul_run(node: Node, inputs):
    return [np.matmul(inputs[0], inputs[1])]


register(OpDef("MatMul", _matmul_infer, _matmul_run, mla=lambda n, g: g.is_constant(n.inputs[1]), kind="dense",
               doc="numpy matmul semantics (batched, broadcast); MLA when the second input is constant"))
