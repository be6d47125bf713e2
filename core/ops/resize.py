"""Resize (nearest, linear) and the deprecated Upsample; integer nearest Resize (resize_nearest_int)."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import const_input
from core.ops.quant_rules import ReuseRule
from core.ops.registry import OpDef, register


def _target(node: Node, x_shape, scales, sizes):
    rank = len(x_shape)
    axes = node.attrs.get("axes")
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if sizes is not None and sizes.size:
        sizes = [int(v) for v in sizes]
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratios = [sizes[i] / x_shape[a] for i, a in enumerate(axes)]
            r = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(np.floor(r * x_shape[a] + 0.5)) for a in axes]
            sc = [r] * len(axes)
        else:
            sc = [sizes[i] / x_shape[a] for i, a in enumerate(axes)]
        out = list(x_shape)
        full_sc = [1.0] * rank
        for i, a in enumerate(axes):
            out[a] = sizes[i]
            full_sc[a] = sc[i]
        return out, full_sc
    if scales is None or not scales.size:
        raise ShapeInferenceError(f"{node.describe()}: Resize needs scales or sizes")
    full_sc = [1.0] * rank
    out = list(x_shape)
    for i, a in enumerate(axes):
        full_sc[a] = float(scales[i])
        out[a] = int(np.floor(x_shape[a] * float(scales[i])))
    return out, full_sc


def _inputs(node: Node, infos):
    scales = const_input(node, infos, 2, "scales") if len(infos) > 2 else None
    sizes = const_input(node, infos, 3, "sizes") if len(infos) > 3 else None
    roi = const_input(node, infos, 1, "roi") if len(infos) > 1 else None
    return roi, scales, sizes


def _check(node: Node, infos):
    mode = node.attrs.get("mode", "nearest")
    where = node.source_name or node.name
    if mode not in ("nearest", "linear"):
        raise UnsupportedOperatorError(node.op, where, f"mode {mode!r} (mixq implements nearest and linear)")
    if node.attrs.get("antialias", 0):
        raise UnsupportedOperatorError(node.op, where, "antialias=1")
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if ctm not in (
        "half_pixel",
        "half_pixel_symmetric",
        "pytorch_half_pixel",
        "align_corners",
        "asymmetric",
        "tf_crop_and_resize",
    ):
        raise UnsupportedOperatorError(node.op, where, f"coordinate_transformation_mode {ctm!r}")
    nearest_mode = node.attrs.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest_mode not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        raise UnsupportedOperatorError(node.op, where, f"nearest_mode {nearest_mode!r}")


def _infer(node: Node, infos):
    roi, scales, sizes = _inputs(node, infos)
    out, _ = _target(node, infos[0].shape, scales, sizes)
    return [TensorInfo(out, infos[0].dtype)]


def _source_coords(node, in_len, out_len, scale, roi_lo, roi_hi):
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    o = np.arange(out_len, dtype=np.float64)
    if ctm == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        adj = out_len / (scale * in_len)
        center = in_len / 2
        offset = center * (1 - adj)
        return offset + (o + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if ctm == "align_corners":
        # ONNX uses the unrounded resized length (in_len * scale) here
        length = in_len * scale
        return o * (in_len - 1) / (length - 1) if length > 1 else np.zeros(out_len)
    if ctm == "asymmetric":
        return o / scale
    # tf_crop_and_resize
    if out_len > 1:
        return roi_lo * (in_len - 1) + o * (roi_hi - roi_lo) * (in_len - 1) / (out_len - 1)
    return np.full(out_len, 0.5 * (roi_lo + roi_hi) * (in_len - 1))


def _nearest(node, coords):
    m = node.attrs.get("nearest_mode", "round_prefer_floor")
    if m == "round_prefer_floor":
        return np.where(coords == np.floor(coords) + 0.5, np.floor(coords), np.round(coords))
    if m == "round_prefer_ceil":
        return np.where(coords == np.floor(coords) + 0.5, np.ceil(coords), np.round(coords))
    if m == "floor":
        return np.floor(coords)
    if m == "ceil":
        return np.ceil(coords)
    raise UnsupportedOperatorError(node.op, node.source_name or node.name, f"nearest_mode {m!r}")


def _run(node: Node, inputs):
    x = inputs[0]
    roi = inputs[1] if len(inputs) > 1 else None
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    out, sc = _target(node, x.shape, scales, sizes)
    mode = node.attrs.get("mode", "nearest")
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    rank = x.ndim
    axes = node.attrs.get("axes")
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    roi_full = [(0.0, 1.0)] * rank
    if roi is not None and roi.size and ctm == "tf_crop_and_resize":
        k = len(roi) // 2
        for i, a in enumerate(axes if k == len(axes) else range(rank)):
            roi_full[a] = (float(roi[i]), float(roi[i + k]))
    extrap = node.attrs.get("extrapolation_value", 0.0)
    y = x.astype(np.float64) if mode == "linear" else x
    outside_masks = []
    for a in range(rank):
        if out[a] == x.shape[a] and sc[a] == 1.0 and ctm != "tf_crop_and_resize":
            continue
        coords = _source_coords(node, x.shape[a], out[a], sc[a], *roi_full[a])
        if ctm == "tf_crop_and_resize":
            outside_masks.append((a, (coords < 0) | (coords > x.shape[a] - 1)))
        if mode == "nearest":
            idx = np.clip(_nearest(node, coords), 0, x.shape[a] - 1).astype(np.int64)
            y = np.take(y, idx, axis=a)
        else:
            c = np.clip(coords, 0, x.shape[a] - 1)
            lo = np.floor(c).astype(np.int64)
            hi = np.minimum(lo + 1, x.shape[a] - 1)
            frac = (c - lo).reshape([-1 if d == a else 1 for d in range(rank)])
            y = np.take(y, lo, axis=a) * (1 - frac) + np.take(y, hi, axis=a) * frac
    for a, mask in outside_masks:
        if mask.any():
            sel = [slice(None)] * rank
            sel[a] = mask
            y = np.array(y, copy=True)
            y[tuple(sel)] = extrap
    return [np.ascontiguousarray(y.astype(x.dtype))]


def _resize_upgrade(node: Node, graph) -> None:
    # opset 10's Resize(X, scales) -> opset 11+ Resize(X, roi, scales)
    if graph.opset < 11 and len(node.inputs) == 2:
        node.inputs = [node.inputs[0], "", node.inputs[1]]


def _is_nearest(node, graph):
    return node.attrs.get("mode", "nearest") == "nearest"


class ResizeRule(ReuseRule):
    """Nearest Resize keeps its input's quantization and copies integers (linear: a float island)."""

    def supported(self, node):
        return node.attrs.get("mode", "nearest") == "nearest"

    def run_int(self, node, nq, ctx):
        x, consts = node.inputs[0], ctx.consts
        extra = [consts.get(i) if i else None for i in (list(node.inputs[1:4]) + [None] * 3)[:3]]
        extrapolation_q = ctx.tensors[x].quantize(np.float32(node.attrs.get("extrapolation_value", 0.0))).item()
        ctx.set_int(node.outputs[0], resize_nearest_int(ctx.int(x), node, *extra, extrapolation_q=extrapolation_q))

    def lower_integer_onnx(self, node, nq, L):
        if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            return False
        return L.lower_layout(node, nq, widen_int16=True)   # onnxruntime has no int16 Resize


register(
    OpDef(
        "Resize",
        _infer,
        _run,
        mla=_is_nearest,
        kind="resize",
        check=_check,
        upgrade=_resize_upgrade,
        static_inputs=(1, 2, 3),
        quant=ResizeRule(),
        doc="nearest (all nearest_mode), linear; scales or sizes, axes, keep_aspect_ratio_policy; MLA when nearest",
    )
)


def _upsample_upgrade(node: Node, graph) -> None:
    # Upsample(X, scales) with mode nearest/linear behaves like Resize with asymmetric coordinates.
    if "scales" in node.attrs and len(node.inputs) == 1:
        name = graph.unique_name(f"{node.name}_scales")
        graph.add_constant(name, np.asarray(node.attrs.pop("scales"), np.float32))
        node.inputs = [node.inputs[0], name]


def _upsample_attrs(node: Node) -> Node:
    mode = node.attrs.get("mode", "nearest")
    return Node("Resize", node.inputs, node.outputs,
                {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                name=node.name, source_name=node.source_name)


def _upsample_infer(node: Node, infos):
    return _infer(_upsample_attrs(node), [infos[0], None, infos[1]])


def _upsample_run(node: Node, inputs):
    return _run(_upsample_attrs(node), [inputs[0], None, inputs[1]])


def _upsample_check(node: Node, infos):
    if node.attrs.get("mode", "nearest") not in ("nearest", "linear"):
        raise UnsupportedOperatorError(node.op, node.source_name or node.name, f"mode {node.attrs.get('mode')!r}")


register(
    OpDef(
        "Upsample",
        _upsample_infer,
        _upsample_run,
        mla=_is_nearest,
        kind="resize",
        check=_upsample_check,
        upgrade=_upsample_upgrade,
        static_inputs=(1,),
        doc="deprecated; nearest and linear (as Resize with asymmetric coordinates)",
    )
)


# --------------------------------------------------------------------------- integer kernels

def resize_nearest_int(x_q, node: Node, roi=None, scales=None, sizes=None, extrapolation_q=None) -> np.ndarray:
    """Nearest Resize on quantized integers: the same index gather as the float kernel (same
    coordinate transformation and nearest_mode), so values, scale and zero point pass through
    unchanged; the result has ``x_q``'s dtype. ``roi``/``scales``/``sizes`` are the node's
    constant inputs. With ``tf_crop_and_resize``, ``extrapolation_q`` (the quantized
    extrapolation_value) fills the samples outside the input.
    """
    x = np.asarray(x_q)
    if x.dtype.kind not in "iu":
        raise ExecutionError(f"{node.describe()}: x_q must be an integer array, got dtype {x.dtype}")
    if node.attrs.get("mode", "nearest") != "nearest":
        raise UnsupportedOperatorError(node.op, node.source_name or node.name,
                                       "resize_nearest_int needs mode 'nearest'")
    attrs = dict(node.attrs)
    if node.attrs.get("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        if extrapolation_q is None:
            raise QuantizationConfigError(f"{node.describe()}: tf_crop_and_resize needs extrapolation_q, "
                                          f"the quantized extrapolation_value")
        info = np.iinfo(x.dtype)
        if not info.min <= int(extrapolation_q) <= info.max:
            raise QuantizationConfigError(
                f"{node.describe()}: extrapolation_q {extrapolation_q} does not fit {x.dtype}"
            )
        attrs["extrapolation_value"] = int(extrapolation_q)
    inner = Node(node.op, node.inputs, node.outputs, attrs, name=node.name, source_name=node.source_name)
    as_array = [None if v is None else np.asarray(v) for v in (roi, scales, sizes)]
    return _run(inner, [x, *as_array])[0]
