"""Gemm and MatMul."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import activation_suffix, apply_activation, broadcast_shape
from core.ops.conv import checked_zero_point, exact_plan, int_operand, shifted_operand
from core.ops.quant_rules import DenseRule
from core.ops.registry import OpDef, register
from core.quantization.quant_data import NodeQuant


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


class GemmRule(DenseRule):
    """Gemm's quantization: :class:`DenseRule` with the dense accumulator; TFLite's
    FULLY_CONNECTED requantizes in double."""

    tflite_float_requant = True

    def accumulate(self, x, zero_point, w_q, bias_q, node, requant=None):
        return dense_accumulate(x, zero_point, w_q, bias_q, node, requant=requant)

    def onnx_operands(self, node, w_q, L):
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            return None
        return (w_q.T if a.get("transB", 0) else w_q), {}, (-1,)


class MatMulRule(GemmRule):
    """MatMul with constant 2-D weights (:class:`DenseRule`; its float ONNX op has no bias input;
    not a TFLite op), or of two activations (attention's Q K^T and P V): both operands keep their
    quantization, the output its calibrated one, :func:`matmul_int` (``NodeQuant.kernel ==
    "matmul_int"``; exported as float between exact steps)."""

    tflite = False
    tflite_float_requant = False
    onnx_bias_input = False

    def onnx_operands(self, node, w_q, L):
        return None if w_q.ndim != 2 else (w_q, {}, (-1,))

    def quantize(self, node, ctx):
        ins = ctx.activations(node)
        if len(ins) == 2 and not any(i in ctx.consts for i in node.inputs[:2]):
            out = node.outputs[0]
            ctx.tensors[out] = ctx.own_quant(out)
            return matmul_int_constants(node, ctx.tensors[ins[0]], ctx.tensors[ins[1]], ctx.tensors[out], ctx.mode)
        return super().quantize(node, ctx)

    def run_int(self, node, nq, ctx):
        if nq.kernel != "matmul_int":
            return super().run_int(node, nq, ctx)
        a, b = ctx.activations(node)
        out = node.outputs[0]
        tq = ctx.tensors
        ctx.set_int(out, matmul_int(node, ctx.int(a), tq[a], ctx.int(b), tq[b], tq[out], nq, ctx.mode))

    def lower_integer_onnx(self, node, nq, L):
        return nq.kernel != "matmul_int" and super().lower_integer_onnx(node, nq, L)


register(OpDef("Gemm", _gemm_infer, _gemm_run, mla=lambda n, g: g.is_constant(n.inputs[1]), kind=_gemm_kind,
               quant=GemmRule(), doc="alpha, beta, transA, transB; MLA when B is constant; fused bias + Relu/Clip"))


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


def _matmul_on_mla(node: Node, graph) -> bool:
    a, b = node.inputs[:2]
    return graph.is_constant(b) or not graph.is_constant(a)   # constant weights, or two activations


register(OpDef("MatMul", _matmul_infer, _matmul_run, mla=_matmul_on_mla, kind="dense",
               quant=MatMulRule(),
               doc="numpy matmul semantics (batched, broadcast); MLA with a constant second input or two "
                   "activations (attention: integer kernel, both operands quantized)"))


# ---- exact integer accumulation ---------------------------------------------------------------

def dense_accumulate(x_q, x_zero_point, w_q, bias_q, node: Node, requant=None) -> np.ndarray:
    """Exact integer accumulators of a quantized Gemm or MatMul with constant weights:
    ``acc[..., o] = bias_q[o] + sum_k (x_q[..., k] - x_zero_point) * w[k, o]`` as int64, where
    ``w`` is ``w_q`` (``w_q.T`` for Gemm with transB; x is ``x_q.T`` with transA).

    Gemm needs alpha == 1 (and beta == 1 with a bias): fold other values into the scales.
    MatMul takes x of any rank (``(..., K)``) and 1-D or 2-D weights, numpy's rules.
    ``bias_q`` is None or has shape (O,) (or (1, O), Gemm's C). Computed in float32/float64
    BLAS when :func:`core.ops.conv.exact_accumulation_dtype` proves it exact, else int64.
    ``requant``: as in :func:`core.ops.conv.conv_accumulate` (the requantized output instead).
    """
    x_q = int_operand(x_q, "x_q", node)
    w_q = int_operand(w_q, "w_q", node)
    zp = checked_zero_point(x_zero_point, node)
    if bias_q is not None:
        bias_q = int_operand(bias_q, "bias_q", node)
    if node.op == "Gemm":
        alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
        if alpha != 1.0 or (bias_q is not None and beta != 1.0):
            raise UnsupportedOperatorError(
                node.op, node.name, f"integer accumulation needs alpha == 1 and beta == 1 (got alpha={alpha}, "
                f"beta={beta}); fold them into the scales")
        if x_q.ndim != 2 or w_q.ndim != 2:
            raise ShapeInferenceError(f"{node.describe()}: Gemm needs 2-D x_q and w_q, got {x_q.shape} and {w_q.shape}")
        if node.attrs.get("transA", 0):
            x_q = x_q.T
        w = w_q.T if node.attrs.get("transB", 0) else w_q
    elif node.op == "MatMul":
        if w_q.ndim not in (1, 2):
            raise UnsupportedOperatorError(node.op, node.name, f"integer accumulation needs 1-D or 2-D constant "
                                           f"weights, got shape {w_q.shape}")
        if x_q.ndim == 0:
            raise ShapeInferenceError(f"{node.describe()}: x_q must have rank >= 1")
        w = w_q
    else:
        raise UnsupportedOperatorError(node.op, node.name, "dense_accumulate takes Gemm or MatMul")
    vector_w = w.ndim == 1
    w2 = w[:, None] if vector_w else w
    if x_q.shape[-1] != w2.shape[0]:
        raise ShapeInferenceError(f"{node.describe()}: inner dimensions differ ({x_q.shape} x {w.shape})")
    out_features = w2.shape[1]
    if bias_q is not None:
        if bias_q.shape not in ((out_features,), (1, out_features)) or vector_w and bias_q.size != 1:
            raise ShapeInferenceError(
                f"{node.describe()}: bias_q shape {bias_q.shape} != ({out_features},)")
        bias_q = bias_q.reshape(out_features)
    dtype, bound = exact_plan(x_q, zp, w2.T, bias_q, node)
    if requant is not None:
        dtype, finish = requant.bind(dtype, bias_q, bound)
        w2 = w2.astype(dtype) if requant.weight_scale is None else w2.astype(dtype) * requant.weight_scale
        y = np.matmul(shifted_operand(x_q, zp, dtype), w2)
        out = np.empty(y.shape, requant.dtype)
        finish(out, y)
        return out[..., 0] if vector_w else out
    xs = shifted_operand(x_q, zp, dtype)
    y = np.matmul(xs, w2.astype(dtype))
    acc = y.astype(np.int64) if y.dtype != np.int64 else y
    if bias_q is not None:
        np.add(acc, bias_q.astype(np.int64), out=acc)
    if vector_w:
        acc = acc[..., 0]
    return acc


# ---- MatMul of two activations (attention's Q K^T and P V) ----------------------------------------

def matmul_int_constants(node: Node, qa, qb, q_out, mode) -> NodeQuant:
    """The quantization rule of a MatMul whose operands are both activations: each operand keeps its
    own quantization (``qa``, ``qb``), the output its calibrated one (``q_out``);
    ``(multiplier, shift) = quantize_multiplier_for(s_a * s_b / s_out, mode)``, TFLite's int64
    variant when an operand is 16-bit."""
    from core.quantization.requantize import quantize_multiplier_for

    rounding = "int64" if max(qa.bits, qb.bits) > 8 else "double"
    real = float(qa.scale) * float(qb.scale) / float(q_out.scale)
    m, shift = quantize_multiplier_for(real, mode, tflite_rounding=rounding)
    return NodeQuant(kernel="matmul_int", multiplier=np.asarray(m, np.int64), shift=np.asarray(shift, np.int64),
                     real_multiplier=real, tflite_rounding=rounding, act_min=q_out.qmin, act_max=q_out.qmax)


def matmul_accumulate(a_q, a_zero_point, b_q, b_zero_point, node: Node) -> np.ndarray:
    """``(a - zp_a) @ (b - zp_b)`` exactly, as int64 (numpy matmul semantics): in float64 BLAS while
    ``K * max|a - zp_a| * max|b - zp_b| < 2**53`` (every partial sum an exact integer), else int64."""
    a = int_operand(a_q, "a_q", node).astype(np.int64) - checked_zero_point(a_zero_point, node)
    b = int_operand(b_q, "b_q", node).astype(np.int64) - checked_zero_point(b_zero_point, node)
    k = a.shape[-1] if a.ndim else 1
    bound = k * (int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0)))
    if bound < (1 << 53):
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def matmul_int(node: Node, a_q, qa, b_q, qb, q_out, c: NodeQuant, mode) -> np.ndarray:
    """The integer kernel of :func:`matmul_int_constants`: exact accumulators, then
    ``requantize(acc, multiplier, shift, mode, zp_out, qmin, qmax)``. Returns int64."""
    from core.quantization.requantize import requantize

    acc = matmul_accumulate(a_q, qa.zero_point, b_q, qb.zero_point, node)
    return requantize(acc, c.multiplier, c.shift, mode, q_out.zero_point, c.act_min, c.act_max,
                      tflite_rounding=c.tflite_rounding)
