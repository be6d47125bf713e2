"""Export a quantized program as an ONNX model that onnxruntime and other ONNX runtimes run.

Two forms, ``Model.export_onnx(path, form=...)``:

``form="qdq"`` (default): the interchange format of onnxruntime's and TensorRT's quantizers.
Every integer tensor is ``QuantizeLinear`` -> ``DequantizeLinear`` with its scale and zero point
(8-bit as uint8 with zero point + 128, or int16 at opset 21); weights are stored quantized (int8
ones as uint8 with zero point 128, int16, per output channel on ``axis``) behind a
``DequantizeLinear``, int32 biases likewise; the float op runs on dequantized
inputs, a fused activation becomes an explicit Relu/Clip. A runtime fuses the patterns into its
own integer kernels (onnxruntime: QLinearConv, QLinearAdd, ...) with its own requantization
(a float multiplier, round half to even), so outputs differ from mixq's by an LSB where a
rounding tie flips, and such differences grow through a deep network (measured on MobileNetV2:
docs/saved_models.md). To keep the gap small, a weight's exported scale is its *effective* one,
``multiplier_actually_applied * s_out / s_in``: the fixed-point multiplier mixq's kernels use
(sima's 15-bit multiplier is off the real one by up to 2**-15) instead of the ideal real number.

``form="integer"``: bit-exact with ``Model.execute(fast_mode=False)``, in standard ONNX ops.
Integer tensors are int8/int16 tensors; Conv/Gemm/MatMul accumulate in ``ConvInteger`` /
``MatMulInteger`` on unsigned bytes (16-bit operands as two bytes: ``x = 256 * hi + lo``, four
exact int32 partial products; uint8 because onnxruntime's int8 kernels saturate on AVX2 CPUs
without VNNI), and requantization, Add/Sub/Mul, GlobalAveragePool, Concat rescaling, graph-input
quantization and output dequantization are written out in int64 / float64 element-wise ops that
compute mixq's arithmetic step by step (sima and TFLite fixed point, double/single/int64
rounding). Ops without an integer lowering here (TFLite MEAN/LOGISTIC/SOFTMAX kernels, pooling
with ``ceil_mode``/``count_include_pad``, ...) run as float between exact dequantize/quantize
steps and are listed in the model's ``doc_string``. Runtimes without ConvInteger (TensorRT) need
the QDQ form.

APU nodes stay float in both forms; ``output_int32`` outputs are exported dequantized (float).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from core.errors import ModelFileError, QuantizationConfigError, UnsupportedOperatorError
from core.ops.common import weight_output_axis
from core.ops.quant_rules import rule_of
from core.quantization.params import RequantizationMode
from core.quantization.quant_data import NodeQuant

__all__ = ["EXPORT_FORMS", "EXPORT_OPSET", "export_onnx"]

EXPORT_OPSET = 21   # QuantizeLinear/DequantizeLinear with int16 and per-axis parameters
EXPORT_FORMS = ("qdq", "integer")


def export_onnx(model, path: str | os.PathLike, form: str = "qdq") -> str:
    """Write ``model`` (a :class:`core.model.Model`) as an ONNX file at ``path`` (atomically), in
    ``form`` ``"qdq"`` or ``"integer"`` (see the module docstring); returns the path. The batch
    dimension is free."""
    import onnx
    from onnx import helper

    from core.formats.atomic import atomic_write

    if form not in EXPORT_FORMS:
        raise QuantizationConfigError(f"export_onnx form must be one of {', '.join(map(repr, EXPORT_FORMS))}, "
                                      f"got {form!r}")
    lowering = _Lowering(model.program, exact=form == "integer")
    lowering.run()
    g = model.program.graph

    def value_info(t: str):
        info = g.tensors[t]
        shape = list(info.shape)
        if shape:
            shape[0] = "batch"
        return helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype)), shape)

    doc = f"mixq {form} export of {model.name}"
    if lowering.float_lowered:
        doc += "; run as float between exact quantize/dequantize steps: " + ", ".join(lowering.float_lowered)
    graph = helper.make_graph(lowering.w.nodes, f"{g.name}_{form}", [value_info(t) for t in g.inputs],
                              [value_info(t) for t in g.outputs], lowering.w.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
                              producer_name="mixq", doc_string=doc)
    proto.ir_version = 10
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelFileError(f"ONNX export ({form}) of {model.name!r} produced an invalid ONNX model: {e}") from e
    data = proto.SerializeToString()
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(data), error=ModelFileError, what=f"{form} ONNX model")
    return path


class _Writer:
    """Nodes and initializers of the graph being written, with unique names."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._made: set[str] = set()
        self._count = 0

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}__{self._count}"

    def const(self, name: str, value) -> str:
        if name not in self._made:
            self._made.add(name)
            self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def value(self, value, dtype, base: str = "c") -> str:
        """An anonymous constant (same name for the same bytes, so repeats are stored once)."""
        arr = np.ascontiguousarray(np.asarray(value, dtype))
        key = hashlib.sha1(arr.tobytes() + str(arr.shape).encode() + arr.dtype.str.encode()).hexdigest()[:16]
        return self.const(f"{base}_{arr.dtype.name}_{key}", arr)

    def op(self, op_type: str, inputs: list[str], base: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(base)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=self.fresh(f"{base}/{op_type}"),
                                                **attrs))
        return out


class _ExactOps:
    """mixq's integer arithmetic in ONNX ops, each step equal to its numpy counterpart in
    core.quantization.requantize: in int64 (floor/round divisions by powers of two through
    nonnegative integer Div, which every runtime computes the same way), or in float64 where a
    bound proves every intermediate an exact integer multiple of a power of two."""

    def __init__(self, w: _Writer):
        self.w = w

    def i64(self, v) -> str:
        return self.w.value(v, np.int64)

    def cast(self, x: str, to: str, base: str) -> str:
        from onnx import TensorProto

        return self.w.op("Cast", [x], base, to=getattr(TensorProto, to))

    def floor_shift(self, v: str, t, base: str) -> str:
        """floor(v / 2**t); ``t`` an int or an int array shaped to broadcast, in [0, 62]."""
        t = np.asarray(t, np.int64)
        if not t.any():
            return v
        p = np.left_shift(np.int64(1), t)
        w = self.w
        a = w.op("Abs", [v], base)
        pos = w.op("Div", [a, self.i64(p)], base)
        neg = w.op("Neg", [w.op("Div", [w.op("Add", [a, self.i64(p - 1)], base), self.i64(p)], base)], base)
        return w.op("Where", [w.op("Less", [v, self.i64(0)], base), neg, pos], base)

    def round_half_up_shift(self, v: str, t, base: str) -> str:
        """floor((v + 2**(t-1)) / 2**t), ``v`` unchanged where t == 0."""
        t = np.asarray(t, np.int64)
        half = np.where(t > 0, np.left_shift(np.int64(1), np.maximum(t - 1, 0)), 0)
        if half.any():
            v = self.w.op("Add", [v, self.i64(half)], base)
        return self.floor_shift(v, t, base)

    def rounding_divide_by_pot(self, h: str, e, base: str) -> str:
        """gemmlowp's RoundingDivideByPOT: h / 2**e rounded half away from zero."""
        e = np.asarray(e, np.int64)
        if not e.any():
            return h
        w = self.w
        half = np.where(e > 0, np.left_shift(np.int64(1), np.maximum(e - 1, 0)), 0)
        q = w.op("Div", [w.op("Add", [w.op("Abs", [h], base), self.i64(half)], base),
                         self.i64(np.left_shift(np.int64(1), e))], base)
        return w.op("Mul", [q, w.op("Sign", [h], base)], base)

    def mbqm(self, x: str, multiplier, shift, base: str, rounding: str = "double") -> str:
        """TFLite's MultiplyByQuantizedMultiplier (requantize.py's variants) on int64 ``x``."""
        m, s = np.asarray(multiplier, np.int64), np.asarray(shift, np.int64)
        w = self.w
        if rounding == "double":
            left, right = np.maximum(s, 0), np.maximum(-s, 0)
            if left.any():
                x = w.op("Mul", [x, self.i64(np.left_shift(np.int64(1), left))], base)
            # SRDHM: (x * m + nudge) / 2**31 truncated == floor((x * m + 2**30) / 2**31)
            h = self.floor_shift(w.op("Add", [w.op("Mul", [x, self.i64(m)], base), self.i64(1 << 30)], base), 31, base)
            return self.rounding_divide_by_pot(h, right, base)
        if rounding == "single":
            return self.round_half_up_shift(w.op("Mul", [x, self.i64(m)], base), 31 - s, base)
        reduced = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)          # "int64"
        return self.round_half_up_shift(w.op("Mul", [x, self.i64(reduced)], base), 15 - s, base)

    def round_div(self, acc: str, count, base: str) -> str:
        """pool.py's _round_div: acc / count rounded half away from zero."""
        count = np.asarray(count, np.int64)
        w = self.w
        q = w.op("Div", [w.op("Add", [w.op("Abs", [acc], base), self.i64(count // 2)], base), self.i64(count)], base)
        return w.op("Mul", [q, w.op("Sign", [acc], base)], base)

    def clamp(self, v: str, lo, hi, base: str, dtype=np.int64) -> str:
        if np.ndim(lo) == 0 and np.ndim(hi) == 0:
            return self.w.op("Clip", [v, self.w.value(lo, dtype), self.w.value(hi, dtype)], base)
        return self.w.op("Min", [self.w.op("Max", [v, self.w.value(lo, dtype)], base), self.w.value(hi, dtype)], base)

    def round_half_away(self, v: str, base: str) -> str:
        """float64 ``v`` rounded half away from zero: sign(v) * floor(|v| + 1/2)."""
        w = self.w
        return w.op(
            "Mul",
            [
                w.op("Floor", [w.op("Add", [w.op("Abs", [v], base), w.value(0.5, np.float64)], base)], base),
                w.op("Sign", [v], base),
            ],
            base,
        )

    def requantize_f64(self, acc: str, m, shift, rounding: str, bound: float, zero_point: int, base: str,
                       pre_shift: int = 0):
        """requantize.py's scaling of ``acc * 2**pre_shift`` (``acc`` float64 integer-valued,
        |acc| <= ``bound``) plus ``zero_point``, in float64 ops, or None where a bound does not
        prove float64 exact. As in its BlockRequantizer: each variant is floor(acc * r + 1/2)
        with r = m / 2**t (an exact integer divided by a power of two while acc * m + 2**(t-1)
        < 2**53); TFLite's double rounding then divides by 2**right rounding half away from
        zero (|h| < 2**31: exact). ``pre_shift`` (TFLite Add's left shift) only moves the point."""
        w = self.w
        m = np.asarray(m, np.int64)
        s = np.asarray(shift, np.int64)
        if rounding == "double":
            left, right = np.maximum(s, 0), np.maximum(-s, 0)
            e = 31 - pre_shift - left        # acc * m * 2**-e + 1/2, floored
            if np.abs(m).max(initial=0) * bound + 2.0 ** float(np.maximum(e - 1, 0).max(initial=0)) >= 2 ** 53:
                return None
            r = m.astype(np.float64) * np.exp2(-e.astype(np.float64))
            h = w.op("Floor", [w.op("Add", [w.op("Mul", [acc, w.value(r, np.float64)], base), w.value(0.5, np.float64)],
                                    base)], base)
            if right.any():
                h = self.round_half_away(w.op("Mul", [h, w.value(np.exp2(-right.astype(np.float64)), np.float64)],
                                              base), base)
            return w.op("Add", [h, w.value(zero_point, np.float64)], base)
        if rounding == "sima":
            t = s
        elif rounding == "single":
            t = 31 - s
        else:   # "int64": the multiplier first rounded to 16 bits
            m = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)
            t = 15 - s
        if (
            pre_shift
            or bound * float(m.max(initial=0)) + 2.0 ** float(t.max(initial=0)) * (1 + abs(zero_point)) >= 2**53
        ):
            return None
        r = m.astype(np.float64) * np.exp2(-t.astype(np.float64))
        half = np.where(t > 0, 0.5, 0.0) + zero_point   # the zero point joins the rounding constant: still exact
        return w.op("Floor", [w.op("Add", [w.op("Mul", [acc, w.value(r, np.float64)], base), w.value(half, np.float64)],
                                   base)], base)


class _Lowering:
    """Writes the program's nodes in order, tracking, as the interpreter does, each tensor's
    integer form (``q``) and float form (``f``) and converting between them on demand."""

    def __init__(self, program, exact: bool):
        self.p = program
        self.g = program.graph
        self.tq = program.tensors
        self.exact = exact
        self.w = _Writer()
        self.ops = _ExactOps(self.w)
        self.q: dict[str, str] = {}
        self.f: dict[str, str] = {}
        self.dq: dict[str, str] = {}
        self.float_lowered: list[str] = []

    # ---- conversions between the integer and float forms of a tensor

    def storage_type(self, t: str) -> str:
        return {8: "INT8", 16: "INT16"}[self.tq[t].bits]

    def int_of(self, t: str) -> str:
        if t in self.q:
            return self.q[t]
        if t not in self.f:
            raise UnsupportedOperatorError("?", t, "ONNX export: tensor read before it is computed")
        tq, w, base = self.tq[t], self.w, f"{t}/quantize"
        if not self.exact:
            self.q[t] = w.op("QuantizeLinear", [self.f[t], *self.qdq_params(t)], base, out=f"{t}__q")
            return self.q[t]
        ops = self.ops
        if tq.rounding == "tflite":   # TFLite QUANTIZE: float32 quotient, half away from zero
            d = ops.cast(w.op("Div", [self.f[t], w.value(tq.scale, np.float32)], base), "DOUBLE", base)
            r = w.op("Mul", [w.op("Floor", [w.op("Add", [w.op("Abs", [d], base), w.value(0.5, np.float64)], base)],
                                  base), w.op("Sign", [d], base)], base)
        else:                         # np.round(float64(x) / scale): half to even, as ONNX Round
            r = w.op("Round", [w.op("Div", [ops.cast(self.f[t], "DOUBLE", base), w.value(tq.scale, np.float64)],
                                    base)], base)
        r = w.op(
            "Clip",
            [r, w.value(tq.qmin - tq.zero_point, np.float64), w.value(tq.qmax - tq.zero_point, np.float64)],
            base,
        )
        r = w.op("Add", [ops.cast(r, "INT64", base), ops.i64(tq.zero_point)], base)
        self.q[t] = ops.cast(r, self.storage_type(t), base)
        return self.q[t]

    def float_of(self, t: str) -> str:
        """The float value of ``t``: itself where it was computed as float, else dequantized."""
        if t in self.f:
            return self.f[t]
        if t in self.g.constants:
            return self.w.const(t, self.g.constants[t])
        self.f[t] = self.dequantized(t)
        return self.f[t]

    def dequantized(self, t: str) -> str:
        """``t`` through the integer grid: dequantize(int_of(t))."""
        if t in self.dq:
            return self.dq[t]
        q, tq, w, base = self.int_of(t), self.tq[t], self.w, f"{t}/dequantize"
        if not self.exact:
            self.dq[t] = w.op("DequantizeLinear", [q, *self.qdq_params(t)], base, out=f"{t}__dq")
            return self.dq[t]
        # ((q - zp) * float64(scale)).astype(float32), as TensorQuant.dequantize
        d = w.op("Mul", [w.op("Sub", [self.ops.cast(q, "DOUBLE", base), w.value(tq.zero_point, np.float64)], base),
                         w.value(tq.scale, np.float64)], base)
        self.dq[t] = self.ops.cast(d, "FLOAT", base)
        return self.dq[t]

    def qdq_params(self, t: str) -> tuple[str, str]:
        """Scale and zero point of ``t``'s QuantizeLinear/DequantizeLinear pair; 8-bit tensors as
        uint8 (the same grid, zero point + 128) so that onnxruntime fuses them into its exact
        uint8 x uint8 kernels (see :meth:`dequantized_weights`)."""
        tq = self.tq[t]
        zp = np.array(tq.zero_point + 128, np.uint8) if tq.bits == 8 else np.array(tq.zero_point, np.int16)
        return self.w.const(f"{t}__scale", np.array(tq.scale, np.float32)), self.w.const(f"{t}__zp", zp)

    def int64_of(self, t: str) -> str:
        return self.ops.cast(self.int_of(t), "INT64", f"{t}/int64")

    def store(self, t: str, v: str, c: NodeQuant, dtype=np.int64) -> None:
        """``v`` (integers with the zero point added, as int64 or, when ``dtype`` is float64,
        integer-valued doubles) clamped to the node's range (``c.act_min``, ``c.act_max``,
        ``c.act_channel_bounds``) and stored as ``t``'s type."""
        base = f"{t}/store"
        v = self.ops.clamp(v, c.act_min, c.act_max, base, dtype)
        bounds = c.act_channel_bounds
        if bounds is not None:
            shape = self.channel_shape(t)
            v = self.ops.clamp(v, bounds[0].reshape(shape), bounds[1].reshape(shape), base, dtype)
        self.q[t] = self.ops.cast(v, self.storage_type(t), base)

    def channel_shape(self, t: str) -> tuple[int, ...]:
        rank = len(self.g.tensors[t].shape)
        return (1, -1) + (1,) * (rank - 2) if rank >= 2 else (-1,)

    def onnx_attrs(self, n) -> dict:
        """The node's attributes as ONNX attributes (the fused activation is mixq's own)."""
        return {k: _attr(v, n) for k, v in n.attrs.items() if k not in ("activation", "broadcast_batch")}

    def byte_parts(self, x: str, bits: int, zero_point: int, base: str) -> list[tuple[str, int, int]]:
        """(uint8 tensor, its zero point, its weight) parts of an integer input: ``x - zero_point``
        as ``sum(weight * (part - part_zero_point))``. Unsigned bytes only: onnxruntime's x86 kernels
        for int8 operands saturate pairwise products to int16 on AVX2 CPUs without VNNI, uint8 x
        uint8 is exact on every CPU. 8-bit inputs shift by 128; 16-bit ones split into two bytes of
        ``x + 2**15``."""
        ops, w = self.ops, self.w
        if bits == 8:
            u = ops.cast(w.op("Add", [ops.cast(x, "INT32", base), w.value(128, np.int32)], base), "UINT8", base)
            return [(u, zero_point + 128, 1)]
        off = w.op("Add", [ops.cast(x, "INT32", base), w.value(1 << 15, np.int32)], base)      # in [0, 2**16)
        hi = w.op("Div", [off, w.value(256, np.int32)], base)
        lo = ops.cast(w.op("Sub", [off, w.op("Mul", [hi, w.value(256, np.int32)], base)], base), "UINT8", base)
        zp_hi, zp_lo = divmod(zero_point + (1 << 15), 256)
        return [(ops.cast(hi, "UINT8", base), zp_hi, 256), (lo, zp_lo, 1)]

    def integer_product(self, op: str, x: str, bits: int, zero_point: int, weights: np.ndarray, attrs: dict,
                        base: str) -> str:
        """int64 sum over k of w[k] * (x[k] - zero_point): ``op`` (ConvInteger or MatMulInteger) per
        byte pair, every operand uint8 (see :meth:`byte_parts`)."""
        w, ops = self.w, self.ops
        wi = weights.astype(np.int32)
        if weights.dtype == np.int8:
            w_parts = [((wi + 128).astype(np.uint8), 128, 1)]
        else:   # w = 256 * (hi - 128) + lo
            hi = wi >> 8
            w_parts = [((hi + 128).astype(np.uint8), 128, 256), ((wi - 256 * hi).astype(np.uint8), 0, 1)]
        terms = []
        for xp, zp, fx in self.byte_parts(x, bits, zero_point, f"{base}/bytes"):
            zp_name = w.value(zp, np.uint8)
            for k, (wp, wzp, fw) in enumerate(w_parts):
                wn = w.const(f"{base}/w_q" + ("" if len(w_parts) == 1 else f"_{'hi' if k == 0 else 'lo'}"), wp)
                part = ops.cast(w.op(op, [xp, wn, zp_name, w.value(wzp, np.uint8)], base, **attrs), "INT64", base)
                if fx * fw != 1:
                    part = w.op("Mul", [part, ops.i64(fx * fw)], base)
                terms.append(part)
        acc = terms[0]
        for t in terms[1:]:
            acc = w.op("Add", [acc, t], base)
        return acc

    def lower_layout(self, n, c: NodeQuant, widen_int16: bool = False, constant_value: int | None = None) -> bool:
        """An op that moves integers unchanged, run on the integer tensor itself. ``widen_int16``:
        16-bit tensors go through int32 copies (onnxruntime lacks int16 forms of the op);
        ``constant_value``: the integer written into input slot 2 (Pad's constant_value)."""
        if c.tflite_kernel:
            return False
        w, out = self.w, n.outputs[0]
        ins = []
        for i in n.inputs:
            if not i:
                ins.append("")
            elif i in self.g.constants:
                ins.append(w.const(i, self.g.constants[i]))
            else:
                ins.append(self.int_of(i))
        widen = widen_int16 and self.tq[out].bits == 16
        if widen:
            ins[0] = self.ops.cast(ins[0], "INT32", n.name)
        if constant_value is not None:
            while len(ins) < 3:
                ins.append("")
            ins[2] = w.value(constant_value, np.int32 if widen else {8: np.int8, 16: np.int16}[self.tq[out].bits])
        y = w.op(n.op, ins, n.name, **self.onnx_attrs(n))
        self.q[out] = self.ops.cast(y, "INT16", n.name) if widen else y
        return True

    # ---- the walk

    def run(self) -> None:
        for t in self.g.inputs:
            self.f[t] = t
        for n in self.g.nodes:
            kind = self.p.kinds[n.name]
            c = self.p.constants.get(n.name) or NodeQuant()
            if kind == "int":
                rule = rule_of(n) if self.exact else None
                if rule is None or not rule.lower_integer_onnx(n, c, self):
                    if self.exact:
                        self.float_lowered.append(n.name)
                    self.float_node(n, c, quantize_outputs=True)
            else:
                self.float_node(n, c, quantize_outputs=False, island=kind == "float")
        islands = {o for n in self.g.nodes if self.p.kinds[n.name] == "float" for o in n.outputs
                   if o in self.tq and self.tq[o].bits in (8, 16)}
        for o in self.g.outputs:   # a float island's output leaves through its integer grid, as in execute
            self.w.op("Identity", [self.dequantized(o) if o in islands else self.float_of(o)], f"{o}/output", out=o)

    def float_node(self, n, c: dict, quantize_outputs: bool, island: bool = False) -> None:
        """The float op on float inputs (dequantized integers; float islands read their inputs
        through the integer grid, as the interpreter does); integer outputs are quantized."""
        w = self.w
        dense = quantize_outputs and c.w_q is not None
        ins = []
        for k, i in enumerate(n.inputs):
            if not i or (dense and k > 0):
                ins.append("")
            elif (island or quantize_outputs) and i in self.tq and i not in self.g.constants:
                ins.append(self.dequantized(i))   # MLA nodes read what the MLA holds: integers
            else:
                ins.append(self.float_of(i))
        if dense:
            self.dequantized_weights(n, c, ins)
        if n.attrs.get("broadcast_batch"):   # batch_agnostic_concat's Concat
            _broadcast_batch_inputs(w, n, self.g, ins)
        attrs = self.onnx_attrs(n)
        outs = [self.w.fresh(f"{o}__f") if o else "" for o in n.outputs]
        w.nodes.append(w.helper.make_node(n.op, ins, outs, name=w.fresh(n.name), **attrs))
        if n.attrs.get("activation") and outs and outs[0]:
            outs[0] = self.float_activation(n, outs[0])
        for o, fo in zip(n.outputs, outs):
            if not o:
                continue
            if quantize_outputs and o in self.tq and self.tq[o].bits in (8, 16):
                self.f[o] = fo
                self.int_of(o)
                del self.f[o]   # an MLA node's output exists as integers only, as in the interpreter
            else:
                self.f[o] = fo

    def dequantized_weights(self, n, c: dict, ins: list[str]) -> None:
        """Weights (and bias) as DequantizeLinear of the stored integers, with effective scales."""
        w = self.w
        axis = weight_output_axis(n, np.ndim(c.w_q))
        w_scale = _effective_weight_scale(c, self.tq[n.inputs[0]], self.tq.get(n.outputs[0]),
                                          self.p.requantization_mode)
        ws = w.const(f"{n.name}/w_scale", w_scale.astype(np.float32))
        if c.w_q.dtype == np.int8:
            # int8 weights as uint8 with zero point 128 (the same values): onnxruntime's x86 U8S8 /
            # S8S8 kernels add pairs of products in saturating int16 on AVX2 CPUs without VNNI
            # (its quantization docs), silently changing outputs; its U8U8 kernels are exact.
            w_q = (c.w_q.astype(np.int16) + 128).astype(np.uint8)
            wz = w.const(f"{n.name}/w_zp", np.full(w_scale.shape, 128, np.uint8))
        else:
            w_q = c.w_q
            wz = w.const(f"{n.name}/w_zp", np.zeros(w_scale.shape, c.w_q.dtype))
        ins[1] = w.op("DequantizeLinear", [w.const(f"{n.name}/w_q", w_q), ws, wz], f"{n.name}/dequantize_w",
                      out=f"{n.name}/w", axis=int(axis))
        if c.bias_q is not None:
            if not rule_of(n).onnx_bias_input:
                raise UnsupportedOperatorError(n.op, n.name, f"ONNX export of a {n.op} with a fused bias")
            bq = np.asarray(c.bias_q).reshape(-1)
            b_scale = float(self.tq[n.inputs[0]].scale) * w_scale
            if bq.dtype == np.int32:
                ins_b = [w.const(f"{n.name}/bias_q", bq), w.const(f"{n.name}/bias_scale", b_scale.astype(np.float32)),
                         w.const(f"{n.name}/bias_zp", np.zeros(bq.shape, np.int32))]
                b_f = w.op("DequantizeLinear", ins_b, f"{n.name}/dequantize_bias", out=f"{n.name}/bias", axis=0)
            else:   # int64 accumulator biases of 16-bit inputs: ONNX has no int64 DequantizeLinear
                b_f = w.const(f"{n.name}/bias", (bq * b_scale).astype(np.float32))
            while len(ins) < 3:
                ins.append("")
            ins[2] = b_f
        while ins and not ins[-1]:
            ins.pop()

    def float_activation(self, n, x: str) -> str:
        act, w = n.attrs["activation"], self.w
        if act["kind"] == "relu":
            return w.op("Relu", [x], f"{n.name}/relu")
        if act["kind"] == "clip":
            lo, hi = np.asarray(act.get("min", -np.inf)), np.asarray(act.get("max", np.inf))
            if lo.ndim == 0 and hi.ndim == 0:
                return w.op("Clip", [x, w.value(lo, np.float32), w.value(hi, np.float32)], f"{n.name}/clip")
            # per-channel bounds (channel equalization): Max then Min, broadcast over the channel axis
            channels = self.g.tensors[n.outputs[0]].shape[1]
            shape = self.channel_shape(n.outputs[0])
            lo = np.broadcast_to(lo.astype(np.float32), (channels,)).reshape(shape)
            hi = np.broadcast_to(hi.astype(np.float32), (channels,)).reshape(shape)
            return w.op("Min", [w.op("Max", [x, w.value(lo, np.float32)], f"{n.name}/clip"), w.value(hi, np.float32)],
                        f"{n.name}/clip")
        raise UnsupportedOperatorError(n.op, n.name, f"ONNX export of fused activation {act['kind']!r}")


def _effective_weight_scale(c: NodeQuant, q_in, q_out, mode) -> np.ndarray:
    """Weight scales that make ``s_in * s_w / s_out`` the multiplier mixq's kernel applies
    (not the ideal real one), so that a runtime's float requantization lands on the same codes."""
    w_scale = np.asarray(c.w_scale, np.float64)
    if q_out is None or c.output_int32 or c.multiplier is None or c.tflite_kernel:
        return w_scale
    if c.tflite_requant == "float":
        applied = np.asarray(c.real_multiplier, np.float64)
    else:
        m = np.asarray(c.multiplier, np.float64)
        s = np.asarray(c.shift, np.float64)
        if mode is RequantizationMode.sima:
            applied = m * np.exp2(-s)
        elif c.tflite_rounding == "int64":
            mi = np.asarray(c.multiplier, np.int64)
            applied = np.where(mi < 0x7FFF0000, (mi + (1 << 15)) >> 16, 0x7FFF) * np.exp2(s - 15)
        else:
            applied = m * np.exp2(s - 31)
    effective = np.broadcast_to(applied * float(q_out.scale) / float(q_in.scale), w_scale.shape)
    return np.where(effective > 0, effective, w_scale)


def _broadcast_batch_inputs(w: _Writer, n, g, ins: list[str]) -> None:
    """A batch_agnostic_concat Concat: its batch-1 constant inputs Expand to the batch of its first
    activation input (``Shape(x)[0:1]``), so the exported model runs at any batch like execute()."""
    ref = next(ins[k] for k, i in enumerate(n.inputs) if i and i not in g.constants)
    batch = w.op("Shape", [ref], f"{n.name}/batch", start=0, end=1)
    for k, i in enumerate(n.inputs):
        if i in g.constants and g.constants[i].ndim and g.constants[i].shape[0] == 1:
            rest = w.value(np.array(g.constants[i].shape[1:], np.int64), np.int64)
            shape = w.op("Concat", [batch, rest], f"{n.name}/shape", axis=0)
            ins[k] = w.op("Expand", [ins[k], shape], f"{n.name}/expand")


def _attr(value: Any, node) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        raise UnsupportedOperatorError(node.op, node.name, f"ONNX export of a structured attribute {value!r}")
    return value
