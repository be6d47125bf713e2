"""Add, Sub, Mul, Div with numpy broadcasting; TFLite-exact integer Add/Sub/Mul (add_int, sub_int, mul_int)."""
from __future__ import annotations

import functools

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape, qrange, scale32
from core.ops.quant_rules import RescaleRule, TableRule
from core.ops.registry import OpDef, register
from core.quantization.quant_data import NodeQuant
from core.quantization.requantize import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier


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


# an elementwise op of one activation and a scalar constant (PP-OCR's learnable affine x * a + b,
# HardSwish written out as (x + 3) ... / 6) is a lookup table over the activation's codes
SCALAR_OPERAND = TableRule()


def _divides_by_constant(node: Node, graph) -> bool:
    """Div runs on the MLA when its divisor is a constant (a lookup table when that is a scalar, else
    a float island); a division by an activation stays on the APU."""
    return len(node.inputs) == 2 and node.inputs[1] in graph.constants and node.inputs[0] not in graph.constants


class ElementwiseRule(RescaleRule):
    """Add / Sub / Mul of two activations: the output's own range, TFLite's integer arithmetic
    (8-bit: a lookup table the kernel builds from that arithmetic). In converted TFLite models one
    operand may be an int8 constant (an unfolded BatchNormalization's scale / offset)."""

    def __init__(self, arith: str):
        self.arith = arith   # "add" | "sub" | "mul"

    def accepts(self, node, acts):
        return len(acts) == 2

    def quantize(self, node, ctx):
        acts = ctx.activations(node)
        if len(acts) == 1 and not node.attrs.get("activation") and TableRule.applies(node, acts, ctx.consts):
            return SCALAR_OPERAND.quantize(node, ctx)   # x + c, x * c ... with c a scalar constant
        return super().quantize(node, ctx)

    def run_int(self, node, nq, ctx):
        if nq.table is not None:
            return SCALAR_OPERAND.run_int(node, nq, ctx)
        acts = ctx.activations(node)
        tq, out = ctx.tensors, node.outputs[0]
        q_out = tq[out]
        if nq.const_q is not None:   # an integer constant operand (converted TFLite models)
            xa = (ctx.int(acts[0]), tq[acts[0]].scale, tq[acts[0]].zero_point)
            xc = (nq.const_q, nq.const_scale, nq.const_zp)
            first, second = (xc, xa) if nq.const_pos == 0 else (xa, xc)
            args = (*first, *second, q_out.scale, q_out.zero_point, nq.act_min, nq.act_max)
            bits = q_out.bits
        else:
            a, b = acts
            qa, qb = tq[a], tq[b]
            args = (ctx.int(a), qa.scale, qa.zero_point, ctx.int(b), qb.scale, qb.zero_point,
                    q_out.scale, q_out.zero_point, nq.act_min, nq.act_max)
            bits = 16 if max(qa.bits, qb.bits, q_out.bits) == 16 else 8
        dtype = ctx.dtype_of(q_out)
        if self.arith == "mul":
            y = mul_int(*args, dtype=dtype)
        else:
            y = (add_int if self.arith == "add" else sub_int)(*args, bits=bits, dtype=dtype)
        ctx.set_int(out, y)

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        n = node
        if len([i for i in n.inputs if i]) != 2:
            return None
        if len(acts) == 2:
            return self.tflite_range(n, q_out)
        if len(acts) != 1:
            return None
        # an int8 constant operand (e.g. an unfolded BatchNormalization's scale / offset)
        pos = 0 if n.inputs[0] in ctx.consts else 1
        cq = ctx.constant_operand(n, n.inputs[pos])
        if cq is None:
            return None
        nq = NodeQuant(const_pos=pos, const_q=cq[0], const_scale=cq[1].scale, const_zp=cq[1].zero_point)
        return self.tflite_range(n, q_out, nq)

    # ---- integer ONNX: the kernel's arithmetic in int64 ops, or float64 ops where bounds prove it exact
    def lower_integer_onnx(self, node, nq, L):
        if nq.table is not None:
            return SCALAR_OPERAND.lower_integer_onnx(node, nq, L)
        if nq.tflite_kernel:
            return False
        n, out = node, node.outputs[0]
        q_out, w, ops, base = L.tq[out], L.w, L.ops, node.name
        acts = [i for i in n.inputs if i and i not in L.g.constants]
        if nq.const_q is not None:
            a = (L.int64_of(acts[0]), L.tq[acts[0]].scale, L.tq[acts[0]].zero_point)
            k = (ops.i64(nq.const_q), nq.const_scale, nq.const_zp)
            (xa, sa, za), (xb, sb, zb) = (k, a) if nq.const_pos == 0 else (a, k)
            bits = q_out.bits
        elif len(acts) == 2:
            qa, qb = L.tq[acts[0]], L.tq[acts[1]]
            xa, sa, za, xb, sb, zb = (L.int64_of(acts[0]), qa.scale, qa.zero_point,
                                      L.int64_of(acts[1]), qb.scale, qb.zero_point)
            bits = 16 if max(qa.bits, qb.bits, q_out.bits) == 16 else 8
        else:
            return False
        if self.lower_f64(n, nq, L, xa, sa, za, xb, sb, zb, bits, q_out):
            return True
        ca = w.op("Sub", [xa, ops.i64(int(za))], base)
        cb = w.op("Sub", [xb, ops.i64(int(zb))], base)
        if self.arith == "mul":
            m, shift = mul_multiplier(sa, sb, q_out.scale)
            raw = ops.mbqm(w.op("Mul", [ca, cb], base), m, shift, base)
        else:
            left, (ma, sha), (mb, shb), (mo, sho) = add_multipliers(sa, sb, q_out.scale, bits)
            ra = ops.mbqm(w.op("Mul", [ca, ops.i64(1 << left)], base), ma, sha, base)
            if self.arith == "sub" and bits == 16:   # sub.cc: the Add kernel with the second multiplier negated
                total = w.op("Add", [ra, ops.mbqm(w.op("Mul", [cb, ops.i64(1 << left)], base), -mb, shb, base)],
                             base)
            else:
                rb = ops.mbqm(w.op("Mul", [cb, ops.i64(1 << left)], base), mb, shb, base)
                total = w.op("Add" if self.arith == "add" else "Sub", [ra, rb], base)
            raw = ops.mbqm(total, mo, sho, base)
        L.store(out, w.op("Add", [raw, ops.i64(q_out.zero_point)], base), nq)
        return True

    def lower_f64(self, n, nq, L, xa, sa, za, xb, sb, zb, bits: int, q_out) -> bool:
        """The lowering in float64 ops where the bounds prove them exact (every 8-bit case):
        (a - zp_a) * 2**20 * m_a has at most 8 + 31 significant bits, whatever the power of two."""
        w, ops, base = L.w, L.ops, n.name
        span = float(2 ** bits)
        # int64 inputs (already cast) become doubles; the centred values are exact
        ca = w.op("Sub", [ops.cast(xa, "DOUBLE", base), w.value(za, np.float64)], base)
        cb = w.op("Sub", [ops.cast(xb, "DOUBLE", base), w.value(zb, np.float64)], base)
        if self.arith == "mul":
            m, shift = mul_multiplier(sa, sb, q_out.scale)
            out = ops.requantize_f64(w.op("Mul", [ca, cb], base), m, shift, "double", span * span, q_out.zero_point,
                                     base)
        else:
            left, (ma, sha), (mb, shb), (mo, sho) = add_multipliers(sa, sb, q_out.scale, bits)
            if self.arith == "sub" and bits == 16:
                mb = -mb
            ra = ops.requantize_f64(ca, ma, sha, "double", span, 0, base, pre_shift=left)
            rb = ops.requantize_f64(cb, mb, shb, "double", span, 0, base, pre_shift=left)
            if ra is None or rb is None:
                return False
            both = "Add" if self.arith == "add" or bits == 16 else "Sub"
            bound = span * 2.0 ** left * (abs(ma) * 2.0 ** (sha - 31) + abs(mb) * 2.0 ** (shb - 31)) + 2
            out = ops.requantize_f64(w.op(both, [ra, rb], base), mo, sho, "double", bound, q_out.zero_point, base)
        if out is None:
            return False
        L.store(n.outputs[0], out, nq, np.float64)
        return True


for _name, _fn, _mla, _kind, _rule, _doc in [
    ("Add", np.add, True, "add", ElementwiseRule("add"), "numpy broadcasting"),
    ("Sub", np.subtract, True, "subtract", ElementwiseRule("sub"), "numpy broadcasting"),
    ("Mul", np.multiply, True, "multiply", ElementwiseRule("mul"), "numpy broadcasting"),
    ("Div", _div, _divides_by_constant, "divide", SCALAR_OPERAND,
     "numpy broadcasting; integer division truncates toward zero; MLA when the divisor is a constant"),
]:
    register(OpDef(_name, _infer, _binary(_fn), mla=_mla, kind=_kind, quant=_rule, doc=_doc))


# --------------------------------------------------------------------------- integer kernels
# Bit-exact with TensorFlow Lite's reference integer kernels (reference/integer_ops/add.h,
# mul.h, reference_ops sub.h; multipliers as in kernels/add.cc, sub.cc, mul.cc). Inputs are
# integer arrays (any integer dtype); outputs are int64 arrays clamped to [qmin, qmax] (or
# ``dtype``, which must hold [qmin, qmax]).

_ADD_LEFT_SHIFT = {8: 20, 16: 15}

# 8-bit inputs take 256 x 256 values: the kernel is then a lookup in a table computed by the
# kernel itself on every (a, b) pair, bit-identical by construction (elementwise, and the
# only data-dependent checks, overflows, cannot fail for 8-bit values). Cached per parameters,
# as int32 (results lie in [qmin, qmax], within int32): 256 KiB a table.
_TABLE_MIN_SIZE = 1 << 16
_BYTES = (np.dtype(np.int8), np.dtype(np.uint8))


@functools.lru_cache(maxsize=64)
def _table(fn, a_dtype: str, b_dtype: str, params: tuple, kw: tuple) -> np.ndarray:
    grid = np.arange(256, dtype=np.uint8)   # indexed by the bytes of a and b
    a, b = grid.view(a_dtype)[:, None], grid.view(b_dtype)[None, :]
    a_scale, a_zp, b_scale, b_zp, *rest = params
    return fn(a, a_scale, a_zp, b, b_scale, b_zp, *rest, **dict(kw)).reshape(-1).astype(np.int32)


def _by_table(fn, a_q, b_q, params: tuple, kw: dict, dtype):
    """fn's result by table lookup as ``dtype`` (int64 if None), or None where the table does not apply."""
    a, b = np.asarray(a_q), np.asarray(b_q)
    if a.dtype not in _BYTES or b.dtype not in _BYTES or max(a.size, b.size) < _TABLE_MIN_SIZE:
        return None
    if a.shape != b.shape or a.strides != b.strides:
        return None
    try:
        table = _table(fn, a.dtype.str, b.dtype.str, params, tuple(sorted(kw.items())))
    except (TypeError, ExecutionError):   # unhashable parameters; a value-dependent check failed
        return None
    dtype = np.dtype(np.int64 if dtype is None else dtype)
    if not (np.iinfo(dtype).min <= table.min() and table.max() <= np.iinfo(dtype).max):
        return None
    table = table.astype(dtype)
    # work in memory order, so a channels-last operand gives a channels-last result
    order = tuple(int(i) for i in np.argsort([-abs(st) for st in a.strides], kind="stable"))
    am, bm = a.transpose(order), b.transpose(order)
    idx = am.view(np.uint8).astype(np.uint16)
    idx <<= 8
    idx |= bm.view(np.uint8)
    return table[idx].transpose(np.argsort(order))


def _q_array(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise ExecutionError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _smaller_than_one(real: float, name: str) -> tuple[int, int]:
    # TFLite's QuantizeMultiplierSmallerThanOneExp: CHECKs 0 < real < 1
    if not 0.0 < real < 1.0:
        raise QuantizationConfigError(f"{name} = {real!r} must be in (0, 1) (TFLite's "
                                      f"QuantizeMultiplierSmallerThanOneExp); check the scales")
    return quantize_multiplier(real)


def add_multipliers(a_scale, b_scale, out_scale, bits: int):
    """The constants of TFLite's quantized Add/Sub (add.cc Prepare): ``(left_shift, (m_a, shift_a),
    (m_b, shift_b), (m_out, shift_out))`` for ``bits`` 8 or 16; see :func:`add_int`."""
    if bits not in _ADD_LEFT_SHIFT:
        raise QuantizationConfigError(f"bits must be 8 or 16, got {bits!r}")
    sa, sb, so = scale32(a_scale, "a_scale"), scale32(b_scale, "b_scale"), scale32(out_scale, "out_scale")
    left = _ADD_LEFT_SHIFT[bits]
    twice_max = 2.0 * max(sa, sb)                      # exact, as float32 2*max in C
    ma, sha = _smaller_than_one(sa / twice_max, "a_scale / (2 * max input scale)")
    mb, shb = _smaller_than_one(sb / twice_max, "b_scale / (2 * max input scale)")
    mo, sho = _smaller_than_one(twice_max / ((1 << left) * so),
                                f"2 * max input scale / (2**{left} * out_scale)")
    return left, (ma, sha), (mb, shb), (mo, sho)


def mul_multiplier(a_scale, b_scale, out_scale) -> tuple[int, int]:
    """TFLite's quantized Mul multiplier: ``quantize_multiplier(s_a * s_b / s_out)`` (float32 scales)."""
    sa, sb, so = scale32(a_scale, "a_scale"), scale32(b_scale, "b_scale"), scale32(out_scale, "out_scale")
    m, shift = quantize_multiplier(sa * sb / so)
    if not -31 <= shift <= 30:
        raise QuantizationConfigError(f"a_scale * b_scale / out_scale = {sa * sb / so!r} is out of the "
                                      f"Q31 multiplier range")
    return m, shift


def _add_sub(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, bits, sign):
    qmin, qmax, (a_zp, b_zp, out_zp) = qrange(qmin, qmax, ("a_zp", a_zp), ("b_zp", b_zp), ("out_zp", out_zp))
    if not qmin <= out_zp <= qmax:
        raise QuantizationConfigError(f"out_zp ({out_zp}) must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    left, (ma, sha), (mb, shb), (mo, sho) = add_multipliers(a_scale, b_scale, out_scale, bits)
    a = _q_array(a_q, "a_q")
    b = _q_array(b_q, "b_q")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ExecutionError(f"a_q {a.shape} and b_q {b.shape} do not broadcast") from None
    xa = (a - a_zp) << left
    xb = (b - b_zp) << left
    for name, v in (("(a_q - a_zp) * 2**left_shift", xa), ("(b_q - b_zp) * 2**left_shift", xb)):
        if v.size and (v.min() < INT32_MIN or v.max() > INT32_MAX):
            raise ExecutionError(f"{name} overflows int32 (a_q and b_q must hold {bits}-bit values)")
    if sign < 0 and bits == 16:
        # sub.cc: int16 SUB runs the ADD kernel with the second multiplier negated
        raw = (multiply_by_quantized_multiplier(xa, ma, sha)
               + multiply_by_quantized_multiplier(xb, -mb, shb))
    else:
        raw = (multiply_by_quantized_multiplier(xa, ma, sha)
               + sign * multiply_by_quantized_multiplier(xb, mb, shb))
    out = multiply_by_quantized_multiplier(np.broadcast_to(raw, shape), mo, sho) + out_zp
    return np.clip(out, qmin, qmax).astype(np.int64)


def add_int(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, bits=8, dtype=None):
    """Quantized Add, bit-exact with TFLite's reference ``integer_ops::Add`` (add.h, add.cc).

    ``L = 20`` (bits 8) or ``15`` (bits 16); ``m_a = s_a / (2 max(s_a, s_b))``,
    ``m_b = s_b / (2 max(s_a, s_b))``, ``m_out = 2 max(s_a, s_b) / (2^L s_out)``, each a Q31
    multiplier from ``quantize_multiplier`` (all must be in (0, 1));
    ``out = clamp(MBQM(MBQM((a - zp_a) << L, m_a) + MBQM((b - zp_b) << L, m_b), m_out) + zp_out,
    qmin, qmax)`` with MBQM the double-rounding ``multiply_by_quantized_multiplier``.
    Scales are rounded to float32 first (TFLite stores them so). Broadcasts ``a_q``/``b_q``;
    returns int64. ``[qmin, qmax]`` is the output type's range or the fused activation range.
    """
    params = (a_scale, a_zp, b_scale, b_zp, out_scale, out_zp, qmin, qmax)
    y = _by_table(add_int, a_q, b_q, params, {"bits": bits}, dtype)
    if y is not None:
        return y
    y = _add_sub(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, bits, 1)
    return y if dtype is None else y.astype(dtype)


def sub_int(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, bits=8, dtype=None):
    """Quantized Sub ``a - b``, bit-exact with TFLite (sub.cc, reference_ops SubElementwise).

    The same multipliers as :func:`add_int`. int8: ``raw = MBQM(xa, m_a) - MBQM(xb, m_b)``;
    int16: TFLite runs the Add kernel with ``m_b`` negated, ``raw = MBQM(xa, m_a) + MBQM(xb, -m_b)``
    (SRDHM rounds ties towards +inf, so the two differ by 1 at exact ties).
    """
    params = (a_scale, a_zp, b_scale, b_zp, out_scale, out_zp, qmin, qmax)
    y = _by_table(sub_int, a_q, b_q, params, {"bits": bits}, dtype)
    if y is not None:
        return y
    y = _add_sub(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, bits, -1)
    return y if dtype is None else y.astype(dtype)


def mul_int(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax, dtype=None):
    """Quantized Mul, bit-exact with TFLite's reference ``integer_ops::Mul`` (mul.h, mul.cc).

    ``M = s_a * s_b / s_out`` (float64 from the float32 scales) -> ``quantize_multiplier``;
    ``out = clamp(MBQM((a - zp_a) * (b - zp_b), M) + zp_out, qmin, qmax)``. int8 and int16 alike.
    """
    y = _by_table(mul_int, a_q, b_q, (a_scale, a_zp, b_scale, b_zp, out_scale, out_zp, qmin, qmax), {}, dtype)
    if y is not None:
        return y
    if dtype is not None:
        return mul_int(a_q, a_scale, a_zp, b_q, b_scale, b_zp, out_scale, out_zp, qmin, qmax).astype(dtype)
    qmin, qmax, (a_zp, b_zp, out_zp) = qrange(qmin, qmax, ("a_zp", a_zp), ("b_zp", b_zp), ("out_zp", out_zp))
    if not qmin <= out_zp <= qmax:
        raise QuantizationConfigError(f"out_zp ({out_zp}) must lie in [qmin, qmax] = [{qmin}, {qmax}]")
    m, shift = mul_multiplier(a_scale, b_scale, out_scale)
    a = _q_array(a_q, "a_q")
    b = _q_array(b_q, "b_q")
    try:
        prod = (a - a_zp) * (b - b_zp)
    except ValueError:
        raise ExecutionError(f"a_q {a.shape} and b_q {b.shape} do not broadcast") from None
    if prod.size and (prod.min() < INT32_MIN or prod.max() > INT32_MAX):
        raise ExecutionError("(a_q - a_zp) * (b_q - b_zp) overflows int32")
    return np.clip(multiply_by_quantized_multiplier(prod, m, shift) + out_zp, qmin, qmax).astype(np.int64)
