"""Shape and data-movement ops: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split,
Slice, Pad, Gather, Shape, ConstantOfShape, Constant, Range, Cast, Identity, Dropout; integer
Concat with TFLite rescaling (concat_int)."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import const_input, normalize_axes, normalize_axis
from core.ops.quant_rules import LayoutRule, RescaleRule, ReuseRule
from core.ops.registry import OpDef, register
from core.quantization.quant_data import NodeQuant
from core.quantization.requantize import INT32_MAX, INT32_MIN


def _where(node: Node) -> str:
    return node.source_name or node.name


def _attr_to_input(node: Node, graph, key: str, index: int, dtype=np.int64) -> None:
    """Older opsets carried some inputs as attributes; move them to a constant input."""
    if key in node.attrs:
        name = graph.add_constant(graph.unique_name(f"{node.name}_{key}"), np.asarray(node.attrs.pop(key), dtype))
        inputs = list(node.inputs) + [""] * max(0, index + 1 - len(node.inputs))
        inputs[index] = name
        node.inputs = inputs


# ---- Reshape ----
def _reshape_target(node: Node, in_shape, shape):
    shape = [int(s) for s in np.asarray(shape).reshape(-1)]
    allowzero = node.attrs.get("allowzero", 0)
    if any(s < -1 for s in shape):
        raise ShapeInferenceError(f"{node.describe()}: target shape {shape} has a negative dimension other than -1")
    if allowzero and 0 in shape and -1 in shape:
        raise ShapeInferenceError(f"{node.describe()}: target shape {shape} has both 0 and -1 with allowzero=1")
    if not allowzero and any(s == 0 and i >= len(in_shape) for i, s in enumerate(shape)):
        raise ShapeInferenceError(f"{node.describe()}: target shape {shape} copies (0) a dimension the input "
                                  f"{tuple(in_shape)} does not have")
    # 0 copies the input's dimension at that index (unless allowzero); -1 is inferred
    out = [in_shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    total = int(np.prod(in_shape, dtype=np.int64))
    if out.count(-1) > 1:
        raise ShapeInferenceError(f"{node.describe()}: more than one -1 in target shape {shape}")
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ShapeInferenceError(f"{node.describe()}: cannot reshape {tuple(in_shape)} to {shape}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != total:
        raise ShapeInferenceError(f"{node.describe()}: cannot reshape {tuple(in_shape)} to {shape}")
    return out


def _reshape_infer(node: Node, infos):
    shape = const_input(node, infos, 1, "shape")
    return [TensorInfo(_reshape_target(node, infos[0].shape, shape), infos[0].dtype)]


def _reshape_run(node: Node, inputs):
    return [inputs[0].reshape(_reshape_target(node, inputs[0].shape, inputs[1]))]


register(
    OpDef(
        "Reshape",
        _reshape_infer,
        _reshape_run,
        mla=True,
        kind="reshape",
        static_inputs=(1,),
        quant=LayoutRule(),
        doc="0 and -1, allowzero; static shape input",
    )
)


# ---- Flatten ----
def _flatten_shape(node, shape):
    axis, rank = int(node.attrs.get("axis", 1)), len(shape)
    if not -rank <= axis <= rank:  # axis == rank is allowed: (prod(shape), 1)
        raise ShapeInferenceError(f"{node.describe()}: axis {axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))


register(OpDef("Flatten", lambda n, i: [TensorInfo(_flatten_shape(n, i[0].shape), i[0].dtype)],
               lambda n, x: [x[0].reshape(_flatten_shape(n, x[0].shape))], mla=True, kind="flatten",
               quant=LayoutRule(), doc="axis"))


# ---- Transpose ----
def _perm(node, rank):
    perm = node.attrs.get("perm")
    if perm is None:
        return list(range(rank))[::-1]
    if sorted(int(p) for p in perm) != list(range(rank)):
        raise ShapeInferenceError(f"{node.describe()}: perm {list(perm)} is not a permutation of the {rank} axes")
    return [int(p) for p in perm]


register(
    OpDef(
        "Transpose",
        lambda n, i: [TensorInfo(tuple(i[0].shape[p] for p in _perm(n, len(i[0].shape))), i[0].dtype)],
        lambda n, x: [np.ascontiguousarray(np.transpose(x[0], _perm(n, x[0].ndim)))],
        mla=True,
        kind="transpose",
        quant=LayoutRule(),
        doc="perm",
    )
)


# ---- Squeeze / Unsqueeze ----
def _squeeze_axes(node, infos, shape):
    axes = const_input(node, infos, 1, "axes") if len(infos) > 1 else None
    if axes is None:
        return [d for d, s in enumerate(shape) if s == 1]
    axes = normalize_axes(node, axes, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ShapeInferenceError(f"{node.describe()}: cannot squeeze axis {a} of shape {tuple(shape)}")
    return axes


def _squeeze_infer(node, infos):
    axes = _squeeze_axes(node, infos, infos[0].shape)
    return [TensorInfo(tuple(s for d, s in enumerate(infos[0].shape) if d not in axes), infos[0].dtype)]


def _squeeze_run(node, inputs):
    infos = [TensorInfo.of(v) if v is not None else None for v in inputs]
    return [np.squeeze(inputs[0], axis=tuple(_squeeze_axes(node, infos, inputs[0].shape)))]


def _unsqueeze_shape(node, infos, shape):
    axes = const_input(node, infos, 1, "axes")
    if axes is None:
        raise ShapeInferenceError(f"{node.describe()}: Unsqueeze needs axes")
    axes = sorted(normalize_axes(node, axes, len(shape) + len(axes)))
    out = list(shape)
    for a in axes:
        out.insert(a, 1)
    return out


def _unsqueeze_run(node, inputs):
    infos = [TensorInfo.of(v) if v is not None else None for v in inputs]
    return [inputs[0].reshape(_unsqueeze_shape(node, infos, inputs[0].shape))]


def _axes_upgrade(node, graph):
    if graph.opset < 13:
        _attr_to_input(node, graph, "axes", 1)


register(OpDef("Squeeze", _squeeze_infer, _squeeze_run, mla=True, kind="squeeze", upgrade=_axes_upgrade,
               static_inputs=(1,), quant=LayoutRule(), doc="axes (attribute before opset 13)"))
register(
    OpDef(
        "Unsqueeze",
        lambda n, i: [TensorInfo(_unsqueeze_shape(n, i, i[0].shape), i[0].dtype)],
        _unsqueeze_run,
        mla=True,
        kind="expand_dims",
        upgrade=_axes_upgrade,
        static_inputs=(1,),
        quant=LayoutRule(),
        doc="axes (attribute before opset 13)",
    )
)


# ---- Concat / Split ----
def _concat_infer(node, infos):
    ins = [i for i in infos if i is not None]
    if not ins:
        raise ShapeInferenceError(f"{node.describe()}: Concat has no inputs")
    rank = len(ins[0].shape)
    axis = normalize_axis(node, node.attrs.get("axis", 0), rank)
    for i in ins[1:]:
        if len(i.shape) != rank or any(a != b for d, (a, b) in enumerate(zip(i.shape, ins[0].shape)) if d != axis):
            raise ShapeInferenceError(
                f"{node.describe()}: inputs {[x.shape for x in ins]} do not concatenate on axis {axis}"
            )
        if i.dtype != ins[0].dtype:
            raise ShapeInferenceError(f"{node.describe()}: inputs have different types {[str(x.dtype) for x in ins]}")
    shape = list(ins[0].shape)
    shape[axis] = sum(i.shape[axis] for i in ins)
    return [TensorInfo(shape, ins[0].dtype)]


class ConcatRule(RescaleRule):
    """Concat: the output's own range, each input rescaled to it (copied where equal); converted
    TFLite models: TFLite's Requantize of each input with other parameters, then a copy."""

    def run_int(self, node, nq, ctx):
        acts = ctx.activations(node)
        tq, q_out = ctx.tensors, ctx.tensors[node.outputs[0]]
        axis = node.attrs.get("axis", 0)
        if nq.requant_inputs is not None:
            y = np.concatenate([ctx.int(a).astype(np.int64) if r is None else
                                requantize_int_tflite(ctx.int(a), tq[a].zero_point, r[0], r[1], q_out.zero_point,
                                                      q_out.qmin, q_out.qmax)
                                for a, r in zip(acts, nq.requant_inputs)], axis=axis)
        else:
            y = concat_int([ctx.int(a) for a in acts], [tq[a].scale for a in acts], [tq[a].zero_point for a in acts],
                           q_out.scale, q_out.zero_point, axis, nq.act_min, nq.act_max)
        ctx.set_int(node.outputs[0], y)

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        if len(acts) != len([i for i in node.inputs if i]) or any(q.bits != q_out.bits for q in q_ins):
            return None
        nq = NodeQuant()
        if any(q != q_out for q in q_ins):
            # TFLite's int8/int16 CONCATENATION needs equal parameters: the converter put an
            # int -> int QUANTIZE (Requantize) before each other input, which the graph passes
            # folded into this node
            nq.requant_inputs = [None if q == q_out else requantize_multiplier_tflite(q.scale, q_out.scale)
                                 for q in q_ins]
        return self.tflite_range(node, q_out, nq)

    def lower_integer_onnx(self, node, nq, L):
        out = node.outputs[0]
        q_out, w, ops, base = L.tq[out], L.w, L.ops, node.name
        so = np.float32(q_out.scale)
        inv = np.float32(1.0) / so
        parts = []
        requant = nq.requant_inputs or [None] * len(node.inputs)
        for i, r in zip(node.inputs, requant):
            qi = L.tq[i]
            if r is not None:   # converted TFLite: Requantize (requantize_int_tflite)
                centred = w.op("Sub", [L.int64_of(i), ops.i64(qi.zero_point)], base)
                y = w.op("Add", [ops.mbqm(centred, r[0], r[1], base), ops.i64(q_out.zero_point)], base)
                parts.append(ops.clamp(y, q_out.qmin, q_out.qmax, base))
                continue
            if qi.zero_point == q_out.zero_point and np.float32(qi.scale) == so:
                parts.append(L.int64_of(i))    # copied unchanged (and not clamped), as concat_int does
                continue
            scale = np.float32(np.float32(qi.scale) * inv)
            bias = np.float32(np.float32(-qi.zero_point) * scale)
            v = w.op("Add", [w.op("Mul", [ops.cast(L.int_of(i), "FLOAT", base), w.value(scale, np.float32)], base),
                             w.value(bias, np.float32)], base)
            a = w.op("Abs", [ops.cast(v, "DOUBLE", base)], base)          # std::round in float32, exactly
            fl = w.op("Floor", [a], base)
            r = w.op("Add", [fl, ops.cast(w.op("GreaterOrEqual", [w.op("Sub", [a, fl], base),
                                                                  w.value(0.5, np.float64)], base), "DOUBLE", base)],
                     base)
            r = w.op("Mul", [r, w.op("Sign", [ops.cast(v, "DOUBLE", base)], base)], base)
            r = ops.clamp(ops.cast(r, "INT64", base), -(1 << 31), (1 << 31) - 1, base)
            r = ops.clamp(w.op("Add", [r, ops.i64(q_out.zero_point)], base), nq.act_min, nq.act_max, base)
            parts.append(r)
        y = w.op("Concat", parts, base, axis=int(node.attrs.get("axis", 0)))
        L.q[out] = ops.cast(y, L.storage_type(out), base)
        return True


def _concat_run(node, inputs):
    vs = [v for v in inputs if v is not None]
    if node.attrs.get("broadcast_batch") and vs:
        # set by the batch_agnostic_concat pass: constants imported at batch 1 (a ViT's class
        # token) follow the batch of the activations they are concatenated with
        n = max(v.shape[0] for v in vs)
        vs = [np.broadcast_to(v, (n,) + v.shape[1:]) if v.shape[0] == 1 else v for v in vs]
    return [np.concatenate(vs, axis=node.attrs.get("axis", 0))]


register(
    OpDef(
        "Concat",
        _concat_infer,
        _concat_run,
        mla=True,
        kind="concatenate",
        quant=ConcatRule(),
        doc="axis",
    )
)


def _split_sizes(node, infos, shape):
    axis = normalize_axis(node, node.attrs.get("axis", 0), len(shape))
    split = const_input(node, infos, 1, "split") if len(infos) > 1 else None
    n_out = len(node.outputs)
    dim = shape[axis]
    if split is None:
        n = node.attrs.get("num_outputs", n_out)
        if n != n_out:
            raise ShapeInferenceError(f"{node.describe()}: num_outputs={n} but the node has {n_out} outputs")
        # equal parts; with num_outputs (opset 18) the last part may be smaller
        chunk = -(-dim // n)
        split = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    split = [int(s) for s in np.asarray(split).reshape(-1)]
    if len(split) != n_out or sum(split) != dim or min(split) < 0:
        raise ShapeInferenceError(
            f"{node.describe()}: cannot split dimension {axis} of size {dim} into {split} for {n_out} outputs")
    return axis, split


def _split_infer(node, infos):
    axis, split = _split_sizes(node, infos, infos[0].shape)
    outs = []
    for s in split:
        shape = list(infos[0].shape)
        shape[axis] = s
        outs.append(TensorInfo(shape, infos[0].dtype))
    return outs


def _split_run(node, inputs):
    infos = [TensorInfo.of(v) if v is not None else None for v in inputs]
    axis, split = _split_sizes(node, infos, inputs[0].shape)
    return np.split(inputs[0], np.cumsum(split)[:-1], axis=axis)


def _split_upgrade(node, graph):
    if graph.opset < 13:
        _attr_to_input(node, graph, "split", 1)


register(OpDef("Split", _split_infer, _split_run, kind="split", upgrade=_split_upgrade,
               static_inputs=(1,), doc="split (attribute before opset 13), num_outputs"))


# ---- Slice ----
def _slices(node, shape, starts, ends, axes, steps):
    """Python slices for ONNX Slice: out-of-range starts/ends clamp, as ONNX specifies."""
    rank = len(shape)
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    axes = list(range(len(starts))) if axes is None else normalize_axes(node, axes, rank)
    steps = [1] * len(starts) if steps is None else [int(s) for s in np.asarray(steps).reshape(-1)]
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeInferenceError(f"{node.describe()}: starts, ends, axes and steps have different lengths "
                                  f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})")
    sl = [slice(None)] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ShapeInferenceError(f"{node.describe()}: slice step 0")
        dim = shape[a]
        s, e = int(s), int(e)
        if st > 0:
            s = min(max(s + dim if s < 0 else s, 0), dim)
            e = min(max(e + dim if e < 0 else e, 0), dim)
        else:  # start clamps to [0, dim-1], end to [-1, dim-1]; -1 means "through index 0"
            s = min(max(s + dim if s < 0 else s, 0), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            e = None if e < 0 else e
        sl[a] = slice(s, e, st)
    return tuple(sl)


def _slice_args(node, infos):
    return [const_input(node, infos, k, w) if len(infos) > k else None
            for k, w in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]


def _slice_infer(node, infos):
    sl = _slices(node, infos[0].shape, *_slice_args(node, infos))
    shape = tuple(len(range(*s.indices(d))) for s, d in zip(sl, infos[0].shape))
    return [TensorInfo(shape, infos[0].dtype)]


def _slice_run(node, inputs):
    args = [inputs[k] if len(inputs) > k else None for k in (1, 2, 3, 4)]
    return [np.ascontiguousarray(inputs[0][_slices(node, inputs[0].shape, *args)])]


def _slice_upgrade(node, graph):
    if graph.opset < 10:  # starts/ends/axes were attributes
        for k, key in ((1, "starts"), (2, "ends"), (3, "axes")):
            _attr_to_input(node, graph, key, k)


register(
    OpDef(
        "Slice",
        _slice_infer,
        _slice_run,
        kind="strided_slice",
        upgrade=_slice_upgrade,
        static_inputs=(1, 2, 3, 4),
        doc="starts/ends/axes/steps inputs, negative steps",
    )
)


# ---- Pad ----
def _pad_widths(node, pads, axes, rank):
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank)) if axes is None else normalize_axes(node, axes, rank)
    k = len(axes)
    if len(pads) != 2 * k:
        raise ShapeInferenceError(f"{node.describe()}: pads {pads} should hold 2 x {k} values (begins, then ends)")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + k])
    return widths


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_check(node, infos):
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedOperatorError(
            node.op, _where(node), f"mode {mode!r} (mixq pads in modes {', '.join(_PAD_MODES)})"
        )


def _pad_infer(node, infos):
    pads = const_input(node, infos, 1, "pads")
    axes = const_input(node, infos, 3, "axes") if len(infos) > 3 else None
    widths = _pad_widths(node, pads, axes, len(infos[0].shape))
    out = tuple(s + a + b for s, (a, b) in zip(infos[0].shape, widths))
    if min(out, default=1) < 1:
        raise ShapeInferenceError(f"{node.describe()}: pads {widths} crop shape {infos[0].shape} to {out}")
    if node.attrs.get("mode") == "reflect":
        # a reflection reaches at most dim-1 elements back (numpy would reflect again; ONNX runtimes refuse)
        for d, (s, (a, b)) in enumerate(zip(infos[0].shape, widths)):
            kept = s - max(-a, 0) - max(-b, 0)
            if max(a, b) > kept - 1:
                raise ShapeInferenceError(f"{node.describe()}: reflect pads {(a, b)} on axis {d} need more than "
                                          f"its {kept} elements")
    return [TensorInfo(out, infos[0].dtype)]


def _pad_run(node, inputs):
    x = inputs[0]
    axes = inputs[3] if len(inputs) > 3 else None
    widths = _pad_widths(node, inputs[1], axes, x.ndim)
    mode = node.attrs.get("mode", "constant")
    # negative pads crop
    crop = tuple(slice(-a if a < 0 else 0, d + b if b < 0 else None) for d, (a, b) in zip(x.shape, widths))
    x = x[crop]
    widths = [(max(a, 0), max(b, 0)) for a, b in widths]
    if mode == "constant":
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None and np.size(inputs[2]) else 0
        return [np.pad(x, widths, mode="constant", constant_values=np.asarray(value).item() if np.size(value) else 0)]
    _pad_check(node, [])
    return [np.pad(x, widths, mode=mode)]


def _pad_upgrade(node, graph):
    if graph.opset < 11:
        _attr_to_input(node, graph, "pads", 1)
        if "value" in node.attrs:  # a float attribute; the kernel casts it to the data's type
            _attr_to_input(node, graph, "value", 2, np.float32)


class PadRule(ReuseRule):
    """Constant Pad keeps its input's quantization, padding with the quantized constant_value
    (the zero point for 0); other modes are float islands."""

    def supported(self, node):
        return node.attrs.get("mode", "constant") == "constant"

    @staticmethod
    def constant_value(node, consts) -> float:
        value = consts[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else np.zeros(())
        value = np.asarray(value, np.float64).reshape(-1)
        return float(value[0]) if value.size else 0.0

    def constants(self, node, q, consts):
        return NodeQuant(pad_value_q=int(q.quantize(self.constant_value(node, consts))))

    def tflite_constants(self, node, q, consts):
        v = self.constant_value(node, consts)
        # TFLite pads int8 with the output zero point (PAD) or the quantized constant (PADV2)
        return NodeQuant(pad_value_q=q.zero_point if v == 0.0 else int(q.quantize(np.float32(v))))

    def run_int(self, node, nq, ctx):
        x = ctx.int(node.inputs[0])
        args = [x] + [None if not i else ctx.consts[i] for i in node.inputs[1:]]
        while len(args) < 3:
            args.append(None)
        args[2] = np.asarray(nq.pad_value_q, x.dtype)
        ctx.set_int(node.outputs[0], _pad_run(node, args)[0])

    def lower_integer_onnx(self, node, nq, L):
        # onnxruntime has no int16 Pad
        return L.lower_layout(node, nq, widen_int16=True, constant_value=nq.pad_value_q)


register(
    OpDef(
        "Pad",
        _pad_infer,
        _pad_run,
        mla=lambda n, g: n.attrs.get("mode", "constant") == "constant",
        kind="pad",
        check=_pad_check,
        upgrade=_pad_upgrade,
        static_inputs=(1, 2, 3),
        quant=PadRule(),
        doc="constant/reflect/edge/wrap, pads/constant_value/axes inputs; MLA for constant mode",
    )
)


# ---- Gather ----
def _gather_run(node, inputs):
    data, idx = inputs
    axis = normalize_axis(node, node.attrs.get("axis", 0), data.ndim)
    dim = data.shape[axis]
    idx = np.asarray(idx, np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        bad = idx[(idx < -dim) | (idx >= dim)].reshape(-1)[0]
        raise IndexError(f"index {bad} is out of range for axis {axis} of size {dim}")
    idx = np.where(idx < 0, idx + dim, idx)
    return [np.take(data, idx, axis=axis)]


def _gather_infer(node, infos):
    data, idx = infos
    if idx.dtype.kind not in "iu":
        raise ShapeInferenceError(f"{node.describe()}: indices must be integers, got {idx.dtype}")
    axis = normalize_axis(node, node.attrs.get("axis", 0), len(data.shape))
    if idx.value is not None and data.value is not None:
        v = _gather_run(node, [data.value, idx.value])[0]
        return [TensorInfo(v.shape, v.dtype)]
    return [TensorInfo(tuple(data.shape[:axis]) + tuple(idx.shape) + tuple(data.shape[axis + 1:]), data.dtype)]


register(OpDef("Gather", _gather_infer, _gather_run, kind="take", doc="axis, negative indices"))


# ---- Shape / ConstantOfShape / Constant / Range ----
def _shape_slice(node, rank):
    start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
    return slice(
        max(0, min(rank, start + rank if start < 0 else start)), max(0, min(rank, end + rank if end < 0 else end))
    )


def _shape_infer(node, infos):
    s = infos[0].shape[_shape_slice(node, len(infos[0].shape))]
    return [TensorInfo((len(s),), np.int64, np.asarray(s, np.int64))]


register(OpDef("Shape", _shape_infer, lambda n, x: [np.asarray(x[0].shape[_shape_slice(n, x[0].ndim)], np.int64)],
               kind="shape_of", doc="start, end; folded to a constant for static shapes"))


def _cos_run(node, inputs):
    value = node.attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return [np.full([int(d) for d in inputs[0]], value.reshape(-1)[0], dtype=value.dtype)]


def _cos_infer(node, infos):
    shape = const_input(node, infos, 0, "shape")
    if np.any(np.asarray(shape) < 0):
        raise ShapeInferenceError(f"{node.describe()}: shape {np.asarray(shape).tolist()} has a negative dimension")
    value = node.attrs.get("value")
    dtype = np.float32 if value is None else np.asarray(value).dtype
    return [TensorInfo([int(d) for d in shape], dtype)]


register(OpDef("ConstantOfShape", _cos_infer, _cos_run, kind="full", static_inputs=(0,), doc="value"))


def _constant_value(node):
    a = node.attrs
    for key, conv in (
        ("value", lambda v: np.asarray(v)),
        ("value_float", lambda v: np.asarray(v, np.float32)),
        ("value_floats", lambda v: np.asarray(v, np.float32)),
        ("value_int", lambda v: np.asarray(v, np.int64)),
        ("value_ints", lambda v: np.asarray(v, np.int64)),
    ):
        if key in a:
            return conv(a[key])
    raise UnsupportedOperatorError(node.op, _where(node), "needs value, value_float(s) or value_int(s)")


register(OpDef("Constant", lambda n, i: [TensorInfo.of(_constant_value(n))], lambda n, x: [_constant_value(n)],
               kind="constant", doc="value, value_float(s), value_int(s)"))


def _range_run(node, inputs):
    start, limit, delta = (np.asarray(v).reshape(()) for v in inputs)
    if delta == 0:
        raise ShapeInferenceError(f"{node.describe()}: delta is 0")
    dtype = start.dtype
    # stash_type=1 (the default): float16/bfloat16 ranges are computed in float32
    wide = (
        np.float32 if dtype.itemsize == 2 and dtype.kind not in "iu" and node.attrs.get("stash_type", 1) == 1 else dtype
    )
    if dtype.kind in "iu":  # exact integer ceil((limit - start) / delta)
        n = max(-((int(start) - int(limit)) // int(delta)), 0)
    else:
        n = max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)
    return [(start.astype(wide) + np.arange(n, dtype=wide) * delta.astype(wide)).astype(dtype)]


def _range_infer(node, infos):
    vals = [const_input(node, infos, k, w) for k, w in ((0, "start"), (1, "limit"), (2, "delta"))]
    v = _range_run(node, vals)[0]
    return [TensorInfo(v.shape, v.dtype)]


register(
    OpDef("Range", _range_infer, _range_run, kind="arange", static_inputs=(0, 1, 2), doc="static start/limit/delta")
)


# ---- Cast / Identity / Dropout ----
_ONNX_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
               9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _cast_dtype(node):
    to = node.attrs.get("to")
    if to is None:
        raise UnsupportedOperatorError(node.op, _where(node), "attribute 'to' is missing")
    if to not in _ONNX_TYPES:
        raise UnsupportedOperatorError(node.op, _where(node), f"cast to ONNX type {to} (mixq casts to float16/32/64, "
                                       "8-64 bit integers and bool)")
    return np.dtype(_ONNX_TYPES[to])


def _cast_run(node, inputs):
    # float -> int truncates toward zero; NaN/out-of-range values are undefined in ONNX too
    with np.errstate(invalid="ignore", over="ignore"):
        return [inputs[0].astype(_cast_dtype(node))]


register(OpDef("Cast", lambda n, i: [TensorInfo(i[0].shape, _cast_dtype(n))], _cast_run, kind="cast",
               doc="to float16/32/64, integer and bool types (saturate ignored)"))

class IdentityRule(LayoutRule):
    """Identity copies integers; in a converted TFLite model an int -> int QUANTIZE became an
    Identity between different quantizations: TFLite's Requantize (``requantize_int_tflite``)."""

    def convert_tflite(self, node, ctx, acts, q_ins, q_out):
        if len(acts) == 1 and q_ins[0] != q_out:
            # an int -> int QUANTIZE (the converter rescales int16 inputs of CONCATENATION so)
            m, shift = requantize_multiplier_tflite(q_ins[0].scale, q_out.scale)
            return NodeQuant(tflite_kernel="requantize", multiplier=m, shift=shift, qmin=q_out.qmin, qmax=q_out.qmax)
        return super().convert_tflite(node, ctx, acts, q_ins, q_out)

    def run_int(self, node, nq, ctx):
        if nq.tflite_kernel is None:
            return super().run_int(node, nq, ctx)
        if nq.tflite_kernel != "requantize":
            raise ExecutionError(f"{node.describe()}: unknown TFLite kernel {nq.tflite_kernel!r}")
        x, out = node.inputs[0], node.outputs[0]
        q_out = ctx.tensors[out]
        ctx.set_int(out, requantize_int_tflite(ctx.int(x), ctx.tensors[x].zero_point, nq.multiplier, nq.shift,
                                               q_out.zero_point, nq.qmin, nq.qmax))

    def lower_integer_onnx(self, node, nq, L):
        if nq.tflite_kernel != "requantize":
            return super().lower_integer_onnx(node, nq, L)
        w, x, out = L.w, node.inputs[0], node.outputs[0]
        centred = w.op("Sub", [L.int64_of(x), L.ops.i64(L.tq[x].zero_point)], node.name)
        y = L.ops.mbqm(centred, nq.multiplier, nq.shift, node.name)
        L.store(out, w.op("Add", [y, L.ops.i64(L.tq[out].zero_point)], node.name),
                NodeQuant(act_min=nq.qmin, act_max=nq.qmax))
        return True


register(OpDef("Size", lambda n, i: [TensorInfo((), np.int64)], lambda n, x: [np.asarray(x[0].size, np.int64)],
               kind="size", doc="folded to a constant for static shapes"))

register(OpDef("Identity", lambda n, i: [TensorInfo(i[0].shape, i[0].dtype)], lambda n, x: [x[0]], kind="identity",
               quant=IdentityRule(), doc="removed by a pass"))


def _dropout_infer(node, infos):
    outs = [TensorInfo(infos[0].shape, infos[0].dtype)]
    if len(node.outputs) > 1:
        outs.append(TensorInfo(infos[0].shape, np.bool_))
    return outs


def _dropout_run(node, inputs):
    outs = [inputs[0]]
    if len(node.outputs) > 1:
        outs.append(np.ones(inputs[0].shape, np.bool_))
    return outs


def _dropout_check(node, infos):
    training = const_input(node, infos, 2, "training_mode")
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        ratio = const_input(node, infos, 1, "ratio")
        ratio = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
        if ratio != 0:  # training with ratio 0 keeps everything: the identity
            raise UnsupportedOperatorError(
                node.op,
                _where(node),
                f"training_mode=True with ratio {ratio} drops at random (mixq runs inference only)",
            )


register(OpDef("Dropout", _dropout_infer, _dropout_run, kind="dropout", check=_dropout_check, static_inputs=(1, 2),
               doc="inference: identity (mask output all true); removed by a pass"))


# --------------------------------------------------------------------------- integer kernels
# Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Split, Gather and Pad move quantized
# integers unchanged (output scale and zero point = the input's); constant Pad pads with the
# zero point (the quantized real 0). Only Concat may have to rescale.

def _round_half_away_f32(v: np.ndarray) -> np.ndarray:
    # std::round on float32 values, exactly (the fractional part of a float is exact)
    a = np.abs(v.astype(np.float64))
    fl = np.floor(a)
    r = fl + (a - fl >= 0.5)
    return np.where(v < 0, -r, r)


def _scale_f32(value, name: str) -> np.float32:
    try:
        with np.errstate(over="ignore"):
            s = np.float32(value)
    except (TypeError, ValueError):
        raise QuantizationConfigError(f"{name} must be a positive real number, got {value!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise QuantizationConfigError(f"{name} must be a positive finite number, got {value!r}")
    return s


def concat_int(inputs_q, in_scales, in_zps, out_scale, out_zp, axis, qmin, qmax) -> np.ndarray:
    """Concat on quantized integers, as TFLite's ``reference_ops::ConcatenationWithScaling``:
    an input whose scale and zero point equal the output's is copied unchanged (not clamped, a
    memcpy in TFLite); any other is requantized in float32 exactly as the C code does: ``inv = 1.f / s_out``,
    ``scale = s_in * inv``, ``bias = -zp_in * scale``,
    ``clamp((int32) std::round(x * scale + bias) + zp_out, qmin, qmax)`` (float32 products and sums,
    not fused; ``round`` half away from zero). TFLite applies it to uint8 only and requires equal
    parameters for int8/int16; mixq uses the same formula for every integer type. Returns int64.
    """
    arrays = [np.asarray(v) for v in inputs_q]
    if not arrays:
        raise ExecutionError("concat_int: inputs_q is empty")
    n = len(arrays)
    if len(in_scales) != n or len(in_zps) != n:
        raise QuantizationConfigError(f"concat_int: {n} inputs but {len(in_scales)} in_scales and "
                                      f"{len(in_zps)} in_zps")
    for k, a in enumerate(arrays):
        if a.dtype.kind not in "iu":
            raise ExecutionError(f"concat_int: inputs_q[{k}] must be an integer array, got dtype {a.dtype}")
    qmin, qmax = int(qmin), int(qmax)
    if qmin > qmax:
        raise QuantizationConfigError(f"qmin ({qmin}) must be <= qmax ({qmax})")
    so = _scale_f32(out_scale, "out_scale")
    out_zp = int(out_zp)
    inv = np.float32(1.0) / so
    parts = []
    for k, (a, s_in, zp_in) in enumerate(zip(arrays, in_scales, in_zps)):
        si = _scale_f32(s_in, f"in_scales[{k}]")
        zp_in = int(zp_in)
        a = a.astype(np.int64)
        if zp_in == out_zp and si == so:
            parts.append(a)
            continue
        scale = np.float32(si * inv)
        bias = np.float32(np.float32(-zp_in) * scale)
        with np.errstate(over="ignore", invalid="ignore"):
            v = a.astype(np.float32) * scale + bias            # float32 throughout
        if v.size and not np.all(np.isfinite(v)):
            raise ExecutionError(f"concat_int: rescaling inputs_q[{k}] overflows float32")
        value = np.clip(_round_half_away_f32(v), INT32_MIN, INT32_MAX).astype(np.int64) + out_zp
        parts.append(np.clip(value, qmin, qmax))
    try:
        y = np.concatenate(parts, axis=axis)
    except (ValueError, IndexError) as exc:
        raise ExecutionError(f"concat_int: inputs {[a.shape for a in arrays]} do not concatenate on "
                             f"axis {axis}: {exc}") from None
    return y.astype(np.int64, copy=False)


def requantize_multiplier_tflite(in_scale: float, out_scale: float) -> tuple[int, int]:
    """QUANTIZE int -> int (quantize.cc Prepare): ``QuantizeMultiplier(double(s_in) / double(s_out))``."""
    from core.quantization.requantize import quantize_multiplier

    m, shift = quantize_multiplier(float(np.float32(in_scale)) / float(np.float32(out_scale)))
    return int(m), int(shift)


def requantize_int_tflite(x_q: np.ndarray, in_zp: int, multiplier: int, shift: int, out_zp: int,
                          qmin: int, qmax: int) -> np.ndarray:
    """TFLite's reference ``Requantize`` (QUANTIZE between integer tensors):
    ``clamp(MBQM(x - in_zp, multiplier, shift) + out_zp, qmin, qmax)``. Returns int64."""
    from core.quantization.requantize import multiply_by_quantized_multiplier

    y = np.asarray(multiply_by_quantized_multiplier(np.asarray(x_q, np.int64) - int(in_zp), multiplier, shift),
                   np.int64) + int(out_zp)
    return np.clip(y, qmin, qmax)
