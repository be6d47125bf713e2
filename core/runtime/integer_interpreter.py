"""Bit-accurate execution of a :class:`~core.quantization.quantizer.QuantizedProgram`.

* Graph inputs (and APU outputs) read by MLA nodes are quantized with
  ``clamp(np.round(x / scale) + zp)`` (float64 division, ``np.round`` = round half to even).
* MLA nodes run their integer kernel (exact integer accumulation, the requantization arithmetic
  of the configured mode); activations are stored as int8 / int16, in whatever memory layout
  the kernel produced (convs: channels-last behind an NCHW view; kernels take any strides).
  Conv/Gemm/MatMul requantize block by block inside the kernel (``requant=``, bit-identical
  to ``requantize`` of the accumulators); 8-bit Add/Sub/Mul look their results up in a table
  the kernel computes from its own arithmetic.
* Float islands and APU nodes run the float kernel on dequantized inputs (a float island's graph
  output then leaves through its tensor's integer grid, as the MLA holds it); graph outputs are
  dequantized to float32 (``(q - zp) * scale``).

Every integer step is exact and elementwise or per-sample, so results are bit-identical for any
batch size or batch split.

``fast_mode=True``: Conv/Gemm/MatMul compute ``(x - zp) * w_q`` in float32 BLAS (exact while
the accumulators stay below 2**24, approximate beyond) and requantize with the *real*
multiplier in float32, ``clamp(np.rint(acc * real + (bias_q * real + zp)))``, instead of the
fixed-point one. It differs from the exact path by off-by-one output codes where the
fixed-point multiplier's rounding (sima: relative error <= 2**-15) or float32 rounding flips a
tie; those differences propagate. The tests bound it (MNIST: dequantized logits within 4
output steps, >= 99% argmax agreement with the exact path). All other ops use the exact
kernels in both modes.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.errors import ExecutionError, MixqError
from core.ir.graph import Node
from core.ops.activation import softmax_int
from core.ops.common import apply_activation, without_activation
from core.ops.conv import conv_accumulate
from core.ops.elementwise import add_int, mul_int, sub_int
from core.ops.gemm import dense_accumulate, matmul_int
from core.ops.pool import avg_pool_int, global_avg_pool_int, max_pool_int
from core.ops.registry import get_op
from core.ops.resize import resize_nearest_int
from core.ops.shape import concat_int
from core.quantization.quantizer import QuantizedProgram, TensorQuant
from core.quantization.requantize import Requant

__all__ = ["run_program"]


def _dtype(tq: TensorQuant):
    return np.dtype(np.int8 if tq.bits == 8 else np.int16 if tq.bits == 16 else np.int64)


def _storage(q: np.ndarray, tq: TensorQuant) -> np.ndarray:
    # kernels take any strides: a conv's channels-last result stays as it is (no transposing copy)
    q = np.asarray(q)
    dtype = _dtype(tq)
    return q if q.dtype == dtype else q.astype(dtype)


def run_program(
    program: QuantizedProgram, feeds: Mapping[str, np.ndarray], fast_mode: bool = False
) -> dict[str, np.ndarray]:
    """Run ``program`` on ``feeds`` (graph input name -> float array, already validated);
    returns every graph output as float32, by name."""
    g = program.graph
    tq = program.tensors
    consts = g.constants
    qenv: dict[str, np.ndarray] = {}
    fenv: dict[str, np.ndarray] = dict(feeds)

    def get_int(t: str) -> np.ndarray:
        if t not in qenv:
            if t not in fenv:
                raise ExecutionError(f"tensor {t!r} was not computed")
            qenv[t] = _storage(tq[t].quantize(fenv[t]), tq[t])
        return qenv[t]

    def get_float(t: str) -> np.ndarray:
        if t in consts:
            return consts[t]
        if t not in fenv:
            if t not in qenv:
                raise ExecutionError(f"tensor {t!r} was not computed")
            fenv[t] = tq[t].dequantize(qenv[t])
        return fenv[t]

    for n in g.nodes:
        kind = program.kinds[n.name]
        try:
            if kind == "int":
                _run_int(n, program, get_int, qenv, fenv, fast_mode)
            else:
                # a float island on the MLA reads its inputs as the MLA holds them (quantized);
                # an APU node reads float tensors (graph inputs unquantized)
                if kind == "float":
                    args = [None if not i else tq[i].dequantize(get_int(i)) if i in tq else get_float(i)
                            for i in n.inputs]
                else:
                    args = [get_float(i) if i else None for i in n.inputs]
                outs = get_op(n.op, n).run(n, args)
                for name, value in zip(n.outputs, outs):
                    if name:
                        fenv[name] = value
        except MixqError:
            raise
        except Exception as e:
            raise ExecutionError(f"{n.describe()} failed in the integer program: {type(e).__name__}: {e}") from e
    # a float island's output is an MLA tensor too: a graph output leaves through its integer grid
    island_outputs = {o for n in g.nodes if program.kinds[n.name] == "float" for o in n.outputs
                      if o in tq and tq[o].bits in (8, 16)}
    return {o: np.asarray(tq[o].dequantize(get_int(o)) if o in island_outputs else get_float(o), np.float32)
            for o in g.outputs}


def _run_int(n: Node, program: QuantizedProgram, get_int, qenv, fenv, fast_mode: bool) -> None:
    tq = program.tensors
    consts = program.graph.constants
    c = program.constants[n.name]
    out = n.outputs[0]
    acts = [i for i in n.inputs if i and i not in consts]
    op = n.op

    if c.get("kernel") == "matmul_int":     # two activations (attention)
        a, b = acts
        qenv[out] = _storage(matmul_int(n, get_int(a), tq[a], get_int(b), tq[b], tq[out], c,
                                        program.requantization_mode), tq[out])
        return
    if c.get("kernel") == "softmax_int":
        qenv[out] = _storage(softmax_int(get_int(acts[0]), c, n), tq[out])
        return
    if op in ("Conv", "Gemm", "MatMul"):
        x_name = n.inputs[0]
        x, q_in = get_int(x_name), tq[x_name]
        axis = 1 if op == "Conv" else -1
        fn = conv_accumulate if op == "Conv" else dense_accumulate
        if c.get("tflite_requant") == "float" and not c["output_int32"]:
            # TFLite's reference FULLY_CONNECTED (TF >= 2.18): round(double(acc) * double(real)),
            # half away from zero, as in reference_integer_ops::FullyConnected(PerChannel)
            acc = np.asarray(fn(x, q_in.zero_point, c["w_q"], c["bias_q"], n), np.int64)
            real = np.asarray(c["real_multiplier"], np.float64)
            shape = [1] * acc.ndim
            shape[axis] = -1
            v = acc.astype(np.float64) * (real.reshape(shape) if real.size > 1 else real.reshape(()))
            r = np.sign(v) * np.floor(np.abs(v) + 0.5)
            q_out = tq[out]
            y = np.clip(r + q_out.zero_point, c["act_min"], c["act_max"])
            qenv[out] = _storage(y, q_out)
            return
        if not c["output_int32"]:
            # the kernel requantizes block by block, while each block is in cache
            q_out = tq[out]
            requant = Requant(c["multiplier"], c["shift"], program.requantization_mode, q_out.zero_point,
                              c["act_min"], c["act_max"], tflite_rounding=c["tflite_rounding"], dtype=_dtype(q_out),
                              real=c["real_multiplier"] if fast_mode else None)
            y = fn(x, q_in.zero_point, c["w_q"], c["bias_q"], n, requant=requant)
            if c.get("act_channel_bounds") is not None:   # per-channel Clip bounds (channel equalization)
                lo, hi = c["act_channel_bounds"]
                shape = [1] * y.ndim
                shape[axis] = -1
                np.clip(y, lo.reshape(shape).astype(y.dtype), hi.reshape(shape).astype(y.dtype), out=y)
            qenv[out] = y
            return
        if fast_mode:
            xf = (x.astype(np.float32) - np.float32(q_in.zero_point))
            args = [xf, c["w_q"].astype(np.float32)]
            if c["bias_q"] is not None:
                args.append(c["bias_q"].astype(np.float32))
            acc = get_op(op, n).run(without_activation(n), args)[0]
        else:
            acc = fn(x, q_in.zero_point, c["w_q"], c["bias_q"], n)
        # output_int32: the accumulators leave the MLA as float (acc * acc_scale)
        shape = [1] * acc.ndim
        shape[axis] = -1
        scale = c["acc_scale"].reshape(shape) if c["acc_scale"].size > 1 else c["acc_scale"].reshape(())
        y = (np.asarray(acc, np.float64) * scale).astype(np.float32)
        fenv[out] = apply_activation(np.ascontiguousarray(y), n)
        return

    q_out = tq[out]
    kernel = c.get("tflite_kernel")
    if kernel is not None:   # TFLite reference kernels of converted pre-quantized models
        qenv[out] = _storage(_run_tflite_kernel(kernel, n, c, get_int(acts[0]), tq[acts[0]], q_out), q_out)
        return
    if op == "MaxPool":
        y = max_pool_int(get_int(acts[0]), n)
    elif op == "AveragePool":
        x = acts[0]
        y = avg_pool_int(get_int(x), n, c["qmin"], c["qmax"], zero_point=tq[x].zero_point)
    elif op in ("Relu", "Clip"):
        y = np.clip(get_int(acts[0]), c["act_min"], c["act_max"])
    elif op == "Resize":
        x = acts[0]
        extra = [consts.get(i) if i else None for i in (list(n.inputs[1:4]) + [None] * 3)[:3]]
        y = resize_nearest_int(get_int(x), n, *extra, extrapolation_q=tq[x].quantize(
            np.float32(n.attrs.get("extrapolation_value", 0.0))).item())
    elif op in ("Add", "Sub", "Mul"):
        if c.get("const_q") is not None:   # an integer constant operand (converted TFLite models)
            xa = (get_int(acts[0]), tq[acts[0]].scale, tq[acts[0]].zero_point)
            xc = (c["const_q"], c["const_scale"], c["const_zp"])
            first, second = (xc, xa) if c["const_pos"] == 0 else (xa, xc)
            args = (*first, *second, q_out.scale, q_out.zero_point, c["act_min"], c["act_max"])
            bits = q_out.bits
        else:
            a, b = acts
            qa, qb = tq[a], tq[b]
            args = (get_int(a), qa.scale, qa.zero_point, get_int(b), qb.scale, qb.zero_point,
                    q_out.scale, q_out.zero_point, c["act_min"], c["act_max"])
            bits = 16 if max(qa.bits, qb.bits, q_out.bits) == 16 else 8
        if op == "Mul":
            y = mul_int(*args, dtype=_dtype(q_out))
        else:
            y = (add_int if op == "Add" else sub_int)(*args, bits=bits, dtype=_dtype(q_out))
    elif op == "GlobalAveragePool":
        x = acts[0]
        y = global_avg_pool_int(get_int(x), tq[x].scale, tq[x].zero_point, q_out.scale, q_out.zero_point,
                                c["act_min"], c["act_max"])
    elif op == "Concat" and c.get("requant_inputs") is not None:   # converted TFLite: Requantize, then copy
        from core.quantization.tflite_convert import requantize_int_tflite

        y = np.concatenate([get_int(a).astype(np.int64) if r is None else
                            requantize_int_tflite(get_int(a), tq[a].zero_point, r[0], r[1], q_out.zero_point,
                                                  q_out.qmin, q_out.qmax)
                            for a, r in zip(acts, c["requant_inputs"])], axis=n.attrs.get("axis", 0))
    elif op == "Concat":
        y = concat_int([get_int(a) for a in acts], [tq[a].scale for a in acts], [tq[a].zero_point for a in acts],
                       q_out.scale, q_out.zero_point, n.attrs.get("axis", 0), c["act_min"], c["act_max"])
    elif op == "Pad":
        x = get_int(acts[0])
        args = [x] + [None if not i else consts[i] for i in n.inputs[1:]]
        while len(args) < 3:
            args.append(None)
        args[2] = np.asarray(c["pad_value_q"], x.dtype)
        y = get_op(op, n).run(n, args)[0]
    else:  # layout ops: the float kernel moves integers unchanged
        y = get_op(op, n).run(n, [None if not i else consts[i] if i in consts else get_int(i) for i in n.inputs])[0]
    qenv[out] = _storage(y, q_out)


def _run_tflite_kernel(kernel: str, n: Node, c: dict, x: np.ndarray, q_in: TensorQuant, q_out: TensorQuant):
    """The TFLite reference kernels that pre-quantized TFLite models need beyond mixq's own
    (see core/quantization/tflite_convert.py)."""
    if kernel == "mean_quantized":
        from core.quantization.tflite_convert import mean_int_tflite

        return mean_int_tflite(x, kernel, q_in.scale, q_in.zero_point, q_out.scale, q_out.zero_point,
                               c["qmin"], c["qmax"])
    if kernel == "requantize":
        from core.quantization.tflite_convert import requantize_int_tflite

        return requantize_int_tflite(x, q_in.zero_point, c["multiplier"], c["shift"], q_out.zero_point,
                                     c["qmin"], c["qmax"])
    if kernel == "logistic_int8":
        from core.ops.activation import logistic_int8

        return logistic_int8(x, q_in.scale, q_in.zero_point, q_out.scale, q_out.zero_point)
    if kernel == "softmax_int8":
        from core.ops.activation import softmax_int8

        return softmax_int8(x, q_in.scale, float(c.get("beta", 1.0)), int(c.get("axis", -1)))
    raise ExecutionError(f"{n.describe()}: unknown TFLite kernel {kernel!r}")
