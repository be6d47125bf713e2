"""Conv and ConvTranspose: shape rules, float kernels (im2col + BLAS; depthwise has its own kernel)."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.errors import ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.ops.common import activation_suffix
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


def _channels_last(x):
    """Logical NC(spatial) -> a channels-last view (free when memory is already channels-last)."""
    n = x.ndim - 2
    return x.transpose((0,) + tuple(range(2, 2 + n)) + (1,))


def _channels_first(y):
    n = y.ndim - 2
    return y.transpose((0, n + 1) + tuple(range(1, n + 1)))


_ROWS_PER_BLOCK = 2048  # post-ops run on blocks that stay in cache


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


_pool: ThreadPoolExecutor | None = None


def _parallel(fn, items) -> None:
    """Run fn over items on a small thread pool (numpy and BLAS release the GIL)."""
    global _pool
    items = list(items)
    if len(items) <= 1 or _workers() == 1:
        for it in items:
            fn(it)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="mixq-conv")
    for f in [_pool.submit(fn, it) for it in items]:
        f.result()


_local = threading.local()


def _thread_buffer(shape, dtype) -> np.ndarray:
    """A zero-bordered scratch buffer per thread (borders stay zero: only the interior is written)."""
    key = (shape, np.dtype(dtype).str)
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = {}
    if key not in bufs:
        if len(bufs) > 8:
            bufs.clear()
        bufs[key] = np.zeros(shape, dtype)
    return bufs[key]


def _bias_act(block, b, act) -> None:
    """In place: block += b, then the fused activation (one pass while the block is in cache)."""
    if b is not None:
        block += b
    if act:
        if act["kind"] == "relu":
            np.maximum(block, 0, out=block)
        else:
            np.clip(block, act.get("min", -np.inf), act.get("max", np.inf), out=block)


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    step = -(-total // parts)
    return [(i, min(i + step, total)) for i in range(0, total, step)]


def conv_forward(x, w, b, node: Node):
    """Float convolution of logical NC(spatial) data with O(C/g)(kernel) weights, with the
    node's fused bias and activation.

    Computed channels-last: one large GEMM per conv (N*P rows) is far faster in BLAS than N
    small ones, and depthwise taps vectorize along the channel axis. The result is returned
    as a logical NCHW view of channels-last memory; numpy kernels downstream handle any
    strides, and the next conv reads it back without a copy.
    """
    n = x.ndim - 2
    kernel, strides, dilations, pads, out = _conv_out_shape(node, x.shape, w.shape)
    group = node.attrs.get("group", 1)
    act = node.attrs.get("activation")
    dtype = np.result_type(x, w)
    xl = _channels_last(x)
    depthwise = group == x.shape[1] == w.shape[0] and w.shape[1] == 1
    if any(pads) and not depthwise:  # depthwise pads per image, in cache (below)
        xl = np.pad(xl, [(0, 0)] + [(pads[d], pads[d + n]) for d in range(n)] + [(0, 0)])
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    P = int(np.prod(out))
    bias = None if b is None else b.astype(dtype, copy=False)
    if depthwise:
        # einsum over a windows view: one pass per output with the taps summed in C,
        # instead of a multiply-add pass per tap. Images run in parallel threads, each
        # padded into a per-thread buffer that stays in cache.
        wk = np.ascontiguousarray(w.reshape(C, *kernel).transpose(tuple(range(1, n + 1)) + (0,)), dtype=dtype)
        letters = "abcdefgh"[:n]
        spec = f"{letters.upper()}{letters}z,{letters}z->{letters.upper()}z"
        padded_shape = tuple(x.shape[2 + d] + pads[d] + pads[d + n] for d in range(n)) + (C,)
        interior = tuple(slice(pads[d], pads[d] + x.shape[2 + d]) for d in range(n))
        y = np.empty((N, *out, C), dtype=dtype)

        def one_image(i):
            if any(pads):
                buf = _thread_buffer(padded_shape, dtype)
                buf[interior] = xl[i]
            else:
                buf = xl[i]
            st = buf.strides
            windows = np.lib.stride_tricks.as_strided(
                buf, (*out, *kernel, C),
                tuple(st[d] * strides[d] for d in range(n)) + tuple(st[d] * dilations[d] for d in range(n)) + (st[-1],),
                writeable=False)
            np.einsum(spec, windows, wk, out=y[i])
            _bias_act(y[i], bias, act)

        _parallel(one_image, range(N))
    else:
        cg, og = C // group, O // group
        y = np.empty((N * P, O), dtype=dtype)
        for g in range(group):
            xg = xl[..., g * cg:(g + 1) * cg] if group > 1 else xl
            wg = w[g * og:(g + 1) * og]
            if all(k == 1 for k in kernel):
                xs = xg[(slice(None),) + tuple(slice(0, (out[d] - 1) * strides[d] + 1, strides[d]) for d in range(n))]
                cols = xs.reshape(N * P, cg)
            else:
                st = xg.strides
                shape = (N, *out, *kernel, cg)
                view_strides = (st[0],) + tuple(st[1 + d] * strides[d] for d in range(n)) \
                    + tuple(st[1 + d] * dilations[d] for d in range(n)) + (st[-1],)
                cols = np.lib.stride_tricks.as_strided(xg, shape, view_strides, writeable=False).reshape(N * P, -1)
            # weights O,C,k.. -> (k.., C) x O to match the column order
            wmat = wg.transpose((0,) + tuple(range(2, 2 + n)) + (1,)).reshape(og, -1).astype(dtype, copy=False)
            if group == 1:
                np.matmul(cols, wmat.T, out=y)
            else:
                y[:, g * og:(g + 1) * og] = cols @ wmat.T
        if bias is not None or act:
            blocks = _split(N * P, max(1, (N * P) // _ROWS_PER_BLOCK))
            _parallel(lambda r: _bias_act(y[r[0]:r[1]], bias, act), blocks)
        y = y.reshape(N, *out, O)
    return _channels_first(y)


def _conv_run(node: Node, inputs):
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    return [conv_forward(x, w, b, node)]  # bias and activation fused inside


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
