"""Export a quantized program as a QDQ ONNX model that any ONNX runtime runs.

QDQ ("quantize-dequantize") form, the interchange format of onnxruntime's and TensorRT's
quantizers: every integer tensor of the program appears as ``QuantizeLinear`` ->
``DequantizeLinear`` with its scale and zero point (int8, or int16 at opset 21); weights are
stored quantized (int8/int16, per output channel on ``axis``) behind a ``DequantizeLinear``;
int32 biases likewise (scale ``s_in * s_w[c]``). ONNX has no int64 ``DequantizeLinear``, so the
int64 biases of 16-bit-input nodes are stored as the equal float values. A runtime fuses the
patterns into integer kernels (onnxruntime: QLinearConv, QLinearAdd, ...); its requantization
is its own (float multiplier), so outputs can differ from mixq's bit-accurate ones by an LSB.

Node by node: the float op runs on dequantized inputs, a fused activation becomes an explicit
Relu/Clip, and the output is re-quantized with the program's parameters. APU nodes stay float.
``output_int32`` outputs are exported dequantized (float).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from core.errors import ModelFileError, UnsupportedOperatorError
from core.ops.common import weight_output_axis

__all__ = ["export_qdq_onnx", "EXPORT_OPSET"]

EXPORT_OPSET = 21   # QuantizeLinear/DequantizeLinear with int16 and per-axis parameters


def export_qdq_onnx(model, path: str | os.PathLike) -> str:
    """Write ``model`` (a :class:`core.model.Model`) as a QDQ ONNX file at ``path`` (atomically);
    returns the path. The batch dimension is free."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from core.formats.atomic import atomic_write

    program = model.program
    g = program.graph
    tq = program.tensors
    consts = g.constants
    nodes: list = []
    inits: list = []
    made: set[str] = set()
    counter = [0]

    def uniq(base: str) -> str:
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def init(name: str, value: np.ndarray) -> str:
        if name not in made:
            made.add(name)
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdtype(bits: int):
        return {8: np.int8, 16: np.int16}[bits]

    def q_params(t: str) -> tuple[str, str]:
        q = tq[t]
        s = init(f"{t}__scale", np.array(q.scale, np.float32))
        z = init(f"{t}__zp", np.array(q.zero_point, qdtype(q.bits)))
        return s, z

    dq_name: dict[str, str] = {}      # tensor -> the float name consumers read

    def requantized(float_name: str, t: str) -> str:
        """Q then DQ of ``float_name`` with tensor ``t``'s parameters; returns the DQ output."""
        s, z = q_params(t)
        q_out = f"{t}__q"
        nodes.append(helper.make_node("QuantizeLinear", [float_name, s, z], [q_out], name=uniq(f"{t}/quantize")))
        out = t if t in g.outputs else f"{t}__dq"
        nodes.append(helper.make_node("DequantizeLinear", [q_out, s, z], [out], name=uniq(f"{t}/dequantize")))
        return out

    def reads(t: str) -> str:
        if not t:
            return ""
        if t in consts:
            v = consts[t]
            return init(t, v)
        return dq_name.get(t, t)

    # graph inputs read by the MLA are quantized at the edge
    for t in g.inputs:
        if t in tq and tq[t].bits in (8, 16):
            dq_name[t] = requantized(t, t) if t not in g.outputs else t

    for n in g.nodes:
        kind = program.kinds[n.name]
        c = program.constants.get(n.name) or {}
        attrs = {k: v for k, v in n.attrs.items() if k != "activation"}
        quantized_weights = kind == "int" and "w_q" in c and n.op in ("Conv", "Gemm", "MatMul")
        # quantized weights and biases replace the float constants below
        ins = [reads(i) if not (quantized_weights and k > 0) else "" for k, i in enumerate(n.inputs)]
        if quantized_weights:
            axis = weight_output_axis(n, np.ndim(c["w_q"]))
            w = init(f"{n.name}/w_q", c["w_q"])
            ws = init(f"{n.name}/w_scale", c["w_scale"].astype(np.float32))
            wz = init(f"{n.name}/w_zp", np.zeros(c["w_scale"].shape, c["w_q"].dtype))
            w_f = f"{n.name}/w"
            nodes.append(helper.make_node("DequantizeLinear", [w, ws, wz], [w_f], axis=int(axis),
                                          name=uniq(f"{n.name}/dequantize_w")))
            ins[1] = w_f
            if c.get("bias_q") is not None:
                bq = np.asarray(c["bias_q"]).reshape(-1)
                if bq.dtype == np.int32:
                    b = init(f"{n.name}/bias_q", bq)
                    bs = init(f"{n.name}/bias_scale", c["acc_scale"].astype(np.float32))
                    bz = init(f"{n.name}/bias_zp", np.zeros(bq.shape, np.int32))
                    b_f = f"{n.name}/bias"
                    nodes.append(helper.make_node("DequantizeLinear", [b, bs, bz], [b_f], axis=0,
                                                  name=uniq(f"{n.name}/dequantize_bias")))
                else:   # int64 accumulator biases of 16-bit inputs: ONNX has no int64 DequantizeLinear
                    b_f = init(f"{n.name}/bias", (bq * c["acc_scale"]).astype(np.float32))
                if n.op == "MatMul":
                    raise UnsupportedOperatorError(n.op, n.name, "QDQ export of a MatMul with a fused bias")
                while len(ins) < 3:
                    ins.append("")
                ins[2] = b_f
            while ins and not ins[-1]:
                ins.pop()
        outs = [o for o in n.outputs]
        float_outs = [f"{o}__f" if o else "" for o in outs]
        act = n.attrs.get("activation")
        pre = [f"{o}__pre" if o else "" for o in float_outs] if act else float_outs
        op_attrs = {k: _attr(v, n) for k, v in attrs.items()}
        nodes.append(helper.make_node(n.op, ins, pre, name=n.name, **op_attrs))
        if act:
            if act["kind"] == "relu":
                nodes.append(helper.make_node("Relu", [pre[0]], [float_outs[0]], name=uniq(f"{n.name}/relu")))
            elif act["kind"] == "clip" and np.ndim(act.get("min", 0.0)) == 0 and np.ndim(act.get("max", 0.0)) == 0:
                lo = init(f"{n.name}/clip_min", np.array(act.get("min", -np.inf), np.float32))
                hi = init(f"{n.name}/clip_max", np.array(act.get("max", np.inf), np.float32))
                nodes.append(helper.make_node("Clip", [pre[0], lo, hi], [float_outs[0]], name=uniq(f"{n.name}/clip")))
            elif act["kind"] == "clip":   # per-channel bounds (channel equalization): Max then Min, broadcast
                rank = len(g.tensors[n.outputs[0]].shape)
                shape = (1, -1) + (1,) * (rank - 2)
                lo = init(f"{n.name}/clip_min", np.broadcast_to(np.asarray(act.get("min", -np.inf), np.float32),
                                                                 (g.tensors[n.outputs[0]].shape[1],)).reshape(shape))
                hi = init(f"{n.name}/clip_max", np.broadcast_to(np.asarray(act.get("max", np.inf), np.float32),
                                                                 (g.tensors[n.outputs[0]].shape[1],)).reshape(shape))
                mid = f"{float_outs[0]}__lo"
                nodes.append(helper.make_node("Max", [pre[0], lo], [mid], name=uniq(f"{n.name}/clip_lo")))
                nodes.append(helper.make_node("Min", [mid, hi], [float_outs[0]], name=uniq(f"{n.name}/clip_hi")))
            else:
                raise UnsupportedOperatorError(n.op, n.name, f"QDQ export of fused activation {act['kind']!r}")
        for o, fo in zip(outs, float_outs):
            if not o:
                continue
            if kind != "apu" and o in tq and tq[o].bits in (8, 16):
                dq_name[o] = requantized(fo, o)
            else:   # float (APU, or an int32 accumulator output): pass the float value on
                if o in g.outputs:
                    nodes.append(helper.make_node("Identity", [fo], [o], name=uniq(f"{o}/output")))
                    dq_name[o] = o
                else:
                    dq_name[o] = fo

    def value_info(t: str, batch_free: bool):
        info = g.tensors[t]
        shape = list(info.shape)
        if batch_free and shape:
            shape[0] = "batch"
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype))
        return helper.make_tensor_value_info(t, elem, shape)

    graph = helper.make_graph(nodes, f"{g.name}_qdq", [value_info(t, True) for t in g.inputs],
                              [value_info(t, True) for t in g.outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
                              producer_name="mixq", doc_string=f"mixq QDQ export of {model.name}")
    proto.ir_version = 10
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelFileError(f"QDQ export of {model.name!r} produced an invalid ONNX model: {e}") from e
    data = proto.SerializeToString()
    path = os.fspath(path)
    atomic_write(path, lambda f: f.write(data), error=ModelFileError, what="QDQ ONNX model")
    return path


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
        raise UnsupportedOperatorError(node.op, node.name, f"QDQ export of a structured attribute {value!r}")
    return value
