"""Conv and ConvTranspose: shape rules, float kernels (im2col + BLAS; depthwise has its own kernel)."""
from __future__ import annotations

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import activation_suffix, apply_activation
from core.ops.registry import OpDef, register


def _spatial_attrs(node: Node, in_spatial, kernel):
    n = len(in_spatial)
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for d in range(n):
            out = -(-in_spatial[d] // strides[d])
            eff = (kernel[d] - 1) * dilations[d] + 1
            total = max(0, (out - 1) * strides[d] + eff - in_spatial[d])
            small, big = total // 2, total - total // 2
            pads[d], pads[d + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    return strides, dilations, pads


def _conv_out_shape(node: Node, x_shape, w_shape):
    n = len(x_shape) - 2
    kernel = list(node.attrs.get("kernel_shape", w_shape[2:]))
    strides, dilations, pads = _spatial_attrs(node, x_shape[2:], kernel)
    out = []
    for d in range(n):
        eff = (kernel[d] - 1) * dilations[d] + 1
        size = (x_shape[2 + d] + pads[d] + pads[d + n] - eff) // strides[d] + 1
        if size <= 0:
            raise ShapeInferenceError(f"{node.describe()}: kernel {kernel} does not fit input {tuple(x_shape)}")
        out.append(size)
    return kernel, strides, dilations, pads, out


def _conv_infer(node: Node, infos):
    x, w = infos[0], infos[1]
    if len(x.shape) < 3 or len(w.shape) != len(x.shape):
        raise ShapeInferenceError(f"{node.describe()}: input rank {len(x.shape)} and weight rank {len(w.shape)} do not fit")
    group = node.attrs.get("group", 1)
    if x.shape[1] != w.shape[1] * group:
        raise ShapeInferenceError(
            f"{node.describe()}: input has {x.shape[1]} channels, weights expect {w.shape[1] * group} "
            f"({w.shape[1]} per group x {group} groups)")
    if w.shape[0] % group:
        raise ShapeInferenceError(f"{node.describe()}: {w.shape[0]} output channels not divisible by group {group}")
    if len(infos) > 2 and infos[2] is not None and tuple(infos[2].shape) != (w.shape[0],):
        raise ShapeInferenceError(f"{node.describe()}: bias shape {infos[2].shape} != ({w.shape[0]},)")
    _, _, _, _, out = _conv_out_shape(node, x.shape, w.shape)
    return [TensorInfo((x.shape[0], w.shape[0], *out), x.dtype)]


def _pad_input(x, pads, n, value=0.0):
    if not any(pads):
        return x
    width = [(0, 0), (0, 0)] + [(pads[d], pads[d + n]) for d in range(n)]
    return np.pad(x, width, constant_values=value)


def _windows(xp, kernel, strides, dilations, out):
    """View of shape (N, C, *out, *kernel) over the padded input (no copy)."""
    n = len(kernel)
    s = xp.strides
    shape = xp.shape[:2] + tuple(out) + tuple(kernel)
    strides_ = s[:2] + tuple(s[2 + d] * strides[d] for d in range(n)) + tuple(s[2 + d] * dilations[d] for d in range(n))
    return np.lib.stride_tricks.as_strided(xp, shape, strides_, writeable=False)


def conv_forward(x, w, b, attrs_node: Node):
    """Float convolution, NC(spatial) x O(C/g)(kernel). Shared with quantized kernels later."""
    n = x.ndim - 2
    kernel, strides, dilations, pads, out = _conv_out_shape(attrs_node, x.shape, w.shape)
    group = attrs_node.attrs.get("group", 1)
    xp = _pad_input(x, pads, n)
    N, C = x.shape[:2]
    O = w.shape[0]
    if group == 1:
        if all(k == 1 for k in kernel):
            xs = xp[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)]
            xs = xs[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
            y = np.matmul(w.reshape(O, C), xs.reshape(N, C, -1))
        else:
            cols = _windows(xp, kernel, strides, dilations, out)  # N C *out *k
            perm = (0,) + tuple(range(2, 2 + n)) + (1,) + tuple(range(2 + n, 2 + 2 * n))
            cols = cols.transpose(perm).reshape(N * int(np.prod(out)), -1)  # copy: (N*P, C*K)
            y = (cols @ w.reshape(O, -1).T).reshape(N, -1, O).transpose(0, 2, 1)
        y = y.reshape(N, O, *out)
    elif group == C and O == C and w.shape[1] == 1:
        y = np.zeros((N, C) + tuple(out), dtype=np.result_type(x, w))
        wk = w.reshape(C, -1)
        for t, offs in enumerate(np.ndindex(*kernel)):
            sl = tuple(slice(offs[d] * dilations[d], offs[d] * dilations[d] + (out[d] - 1) * strides[d] + 1, strides[d]) for d in range(n))
            y += xp[(slice(None), slice(None)) + sl] * wk[:, t].reshape((1, C) + (1,) * n)
    else:
        cg, og = C // group, O // group
        parts = []
        for g in range(group):
            sub = Node("Conv", [], [], {k: v for k, v in attrs_node.attrs.items() if k not in ("group", "pads", "auto_pad")})
            sub.attrs["pads"] = [0] * (2 * n)
            parts.append(conv_forward(xp[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], None, sub))
        y = np.concatenate(parts, axis=1)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return y.astype(np.result_type(x, w), copy=False)


def _conv_run(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    y = np.ascontiguousarray(conv_forward(x, w, b, node))
    return [apply_activation(y, node)]


def _conv_kind(node: Node) -> str:
    rank = len(node.attrs.get("kernel_shape", [])) or node.attrs.get("_rank", 2)
    base = {1: "conv1d", 2: "conv2d", 3: "conv3d"}.get(rank, "conv")
    if len(node.inputs) > 2 and node.inputs[2]:
        base += "_add"
    return base + activation_suffix(node)


def _conv_upgrade(node: Node, graph) -> None:
    # Remember the spatial rank for naming (kernel_shape is optional in ONNX).
    w = graph.tensors.get(node.inputs[1])
    if w is not None and "kernel_shape" not in node.attrs:
        node.attrs["kernel_shape"] = list(w.shape[2:])


register(OpDef("Conv", _conv_infer, _conv_run, mla=True, kind=_conv_kind, upgrade=_conv_upgrade,
               doc="1-D/2-D/3-D; groups (depthwise, grouped), strides, dilations, pads, auto_pad; fused bias + Relu/Clip"))


# ---- ConvTranspose --------------------------------------------------------------------------

def _convt_geometry(node: Node, x_shape, w_shape):
    n = len(x_shape) - 2
    group = node.attrs.get("group", 1)
    kernel = list(node.attrs.get("kernel_shape", w_shape[2:]))
    strides = list(node.attrs.get("strides", [1] * n))
    dilations = list(node.attrs.get("dilations", [1] * n))
    out_pad = list(node.attrs.get("output_padding", [0] * n))
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    output_shape = node.attrs.get("output_shape")
    if output_shape is not None:
        output_shape = list(output_shape)[-n:]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = output_shape or [x_shape[2 + d] * strides[d] for d in range(n)]
        pads = [0] * (2 * n)
        for d in range(n):
            # ONNX's rule (floor division); a negative total pads the output with zeros
            total = strides[d] * (x_shape[2 + d] - 1) + out_pad[d] + ((kernel[d] - 1) * dilations[d] + 1) - target[d]
            if auto_pad == "SAME_UPPER":
                pads[d], pads[d + n] = total // 2, total - total // 2
            else:
                pads[d], pads[d + n] = total - total // 2, total // 2
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    out = [strides[d] * (x_shape[2 + d] - 1) + out_pad[d] + ((kernel[d] - 1) * dilations[d] + 1) - pads[d] - pads[d + n]
           for d in range(n)]
    return group, kernel, strides, dilations, pads, out


def _convt_infer(node: Node, infos):
    x, w = infos[0], infos[1]
    group, *_, out = _convt_geometry(node, x.shape, w.shape)
    if x.shape[1] != w.shape[0]:
        raise ShapeInferenceError(f"{node.describe()}: input has {x.shape[1]} channels, weights expect {w.shape[0]}")
    return [TensorInfo((x.shape[0], w.shape[1] * group, *out), x.dtype)]


def _convt_run(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    n = x.ndim - 2
    group, kernel, strides, dilations, pads, out = _convt_geometry(node, x.shape, w.shape)
    N, C = x.shape[:2]
    og = w.shape[1]
    cg = C // group
    full = [strides[d] * (x.shape[2 + d] - 1) + (kernel[d] - 1) * dilations[d] + 1 for d in range(n)]
    y = np.zeros((N, og * group, *full), dtype=np.result_type(x, w))
    for g in range(group):
        xg = x[:, g * cg:(g + 1) * cg].reshape(N, cg, -1)
        wg = w[g * cg:(g + 1) * cg].reshape(cg, og, -1)
        # cols[n, o, k, p] = sum_c w[c, o, k] * x[n, c, p]
        cols = np.einsum("cok,ncp->nokp", wg, xg, optimize=True).reshape(N, og, *kernel, *x.shape[2:])
        for offs in np.ndindex(*kernel):
            sl = tuple(slice(offs[d] * dilations[d], offs[d] * dilations[d] + (x.shape[2 + d] - 1) * strides[d] + 1, strides[d])
                       for d in range(n))
            y[(slice(None), slice(g * og, (g + 1) * og)) + sl] += cols[(slice(None), slice(None)) + offs]
    # output index o reads full index o + pads[d]; outside [0, full) it is zero (output_padding,
    # or a negative total padding from output_shape)
    res = np.zeros((N, og * group, *out), dtype=y.dtype)
    src, dst = [], []
    for d in range(n):
        lo, hi = max(pads[d], 0), min(pads[d] + out[d], full[d])
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - pads[d], lo - pads[d] + max(hi - lo, 0)))
    res[(slice(None), slice(None)) + tuple(dst)] = y[(slice(None), slice(None)) + tuple(src)]
    y = res
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * n)
    return [np.ascontiguousarray(y)]


register(OpDef("ConvTranspose", _convt_infer, _convt_run, mla=False, kind="conv2d_transpose",
               doc="groups, strides, dilations, pads, output_padding, output_shape, auto_pad"))
