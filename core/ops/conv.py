"""Conv and ConvTranspose: shape rules, float kernels (im2col + BLAS; depthwise has its own kernel)."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.errors import ExecutionError, QuantizationConfigError, ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import activation_suffix
from core.ops.quant_rules import DenseRule
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


def conv_out_shape(node: Node, x_shape, w_shape):
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
        raise ShapeInferenceError(
            f"{node.describe()}: input rank {len(x.shape)} and weight rank {len(w.shape)} do not fit"
        )
    group = node.attrs.get("group", 1)
    if x.shape[1] != w.shape[1] * group:
        raise ShapeInferenceError(
            f"{node.describe()}: input has {x.shape[1]} channels, weights expect {w.shape[1] * group} "
            f"({w.shape[1]} per group x {group} groups)")
    if w.shape[0] % group:
        raise ShapeInferenceError(f"{node.describe()}: {w.shape[0]} output channels not divisible by group {group}")
    if len(infos) > 2 and infos[2] is not None and tuple(infos[2].shape) != (w.shape[0],):
        raise ShapeInferenceError(f"{node.describe()}: bias shape {infos[2].shape} != ({w.shape[0]},)")
    _, _, _, _, out = conv_out_shape(node, x.shape, w.shape)
    return [TensorInfo((x.shape[0], w.shape[0], *out), x.dtype)]


def to_channels_last(x):
    """Logical NC(spatial) -> a channels-last view (free when memory is already channels-last)."""
    n = x.ndim - 2
    return x.transpose((0,) + tuple(range(2, 2 + n)) + (1,))


def _channels_first(y):
    n = y.ndim - 2
    return y.transpose((0, n + 1) + tuple(range(1, n + 1)))


# Blocks of GEMM rows sized so a block's output (and its im2col columns) stays in cache while
# the fused bias and activation run on it: a separate pass over a big output costs as much as
# a small GEMM.
_BLOCK_BYTES = 1 << 20
_MIN_BLOCK_ROWS = 256


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


_pool: ThreadPoolExecutor | None = None


def _parallel(fn, items, serial: bool = False) -> None:
    """Run fn over items on a small thread pool (numpy's einsum, ufuncs and BLAS release the GIL)."""
    global _pool
    items = list(items)
    if serial or len(items) <= 1 or _workers() == 1:
        for it in items:
            fn(it)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="mixq-conv")
    for f in [_pool.submit(fn, it) for it in items]:
        f.result()


# GEMM blocks run on the pool above, one BLAS thread each: BLAS's own threads on top of the
# pool's would oversubscribe the cores (and a busy machine stalls a multi-threaded BLAS call
# at every barrier). The limit holds while any conv runs, and the previous setting returns
# when the last one finishes. Without threadpoolctl, blocks run serially on BLAS's threads.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None
_blas_controller = None


class _SingleThreadedBlas:
    def __enter__(self) -> bool:
        global _blas_users, _blas_limiter, _blas_controller
        with _blas_lock:
            if _blas_controller is None:
                try:
                    from threadpoolctl import ThreadpoolController
                    _blas_controller = ThreadpoolController().select(user_api="blas")
                    _blas_controller = _blas_controller if _blas_controller.lib_controllers else False
                except ImportError:
                    _blas_controller = False
            if not _blas_controller:
                return False
            if _blas_users == 0:
                _blas_limiter = _blas_controller.limit(limits=1)
            _blas_users += 1
            return True

    def __exit__(self, *exc) -> None:
        global _blas_users, _blas_limiter
        with _blas_lock:
            if _blas_controller and _blas_users:
                _blas_users -= 1
                if _blas_users == 0:
                    _blas_limiter.restore_original_limits()
                    _blas_limiter = None


def _after_fork_in_child() -> None:
    # a forked child has none of the parent's pool threads (and maybe a held lock): start afresh
    global _pool, _blas_lock, _blas_users, _blas_limiter
    _pool, _blas_lock, _blas_users, _blas_limiter = None, threading.Lock(), 0, None


os.register_at_fork(after_in_child=_after_fork_in_child)


_local = threading.local()


def _thread_buffer(shape, dtype, tag: str = "padded") -> np.ndarray:
    """A scratch buffer per thread. The "padded" ones are zero-bordered (borders stay zero:
    only the interior is written); other tags are scratch overwritten whole, kept apart."""
    key = (shape, np.dtype(dtype).str, tag)
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = {}
    if key not in bufs:
        if len(bufs) > 8:
            bufs.clear()
        bufs[key] = np.zeros(shape, dtype)
    return bufs[key]


def _finish(yb, tb, b, act) -> None:
    """Block tb (computed in the compute dtype) into yb (of the result dtype), + b, activation.
    A float b is added during the conversion (the caller proved the float sum exact)."""
    if tb is yb:
        _bias_act(yb, b, act)
    elif b is not None and b.dtype.kind == "f":
        np.add(tb, b, out=yb, casting="unsafe")
        _bias_act(yb, None, act)
    else:
        np.copyto(yb, tb, casting="unsafe")
        _bias_act(yb, b, act)


def _bias_act(block, b, act) -> None:
    """In place: block += b, then the fused activation (while the block is in cache)."""
    if b is not None:
        np.add(block, b, out=block)
    if act:
        if act["kind"] == "relu":
            np.maximum(block, 0, out=block)
        else:
            np.clip(block, act.get("min", -np.inf), act.get("max", np.inf), out=block)


def _row_blocks(N: int, out, target_rows: int):
    """(n0, n1, r0, r1): blocks of about target_rows output pixels, split along images and
    the first spatial axis, so that each block is a contiguous run of rows of the output."""
    rest = int(np.prod(out[1:]))
    per_image = out[0] * rest
    if per_image >= target_rows:
        step = max(1, target_rows // rest)
        for i in range(N):
            for r0 in range(0, out[0], step):
                yield i, i + 1, r0, min(r0 + step, out[0])
    else:
        step = max(1, target_rows // per_image)
        for i in range(0, N, step):
            yield i, min(i + step, N), 0, out[0]


def conv_windows(xl, kernel, strides, dilations, out):
    """View (N, *out, *kernel, C) over channels-last (padded) input: im2col without a copy."""
    n = len(kernel)
    st = xl.strides
    shape = (xl.shape[0], *out, *kernel, xl.shape[-1])
    view_strides = (st[0],) + tuple(st[1 + d] * strides[d] for d in range(n)) \
        + tuple(st[1 + d] * dilations[d] for d in range(n)) + (st[-1],)
    return np.lib.stride_tricks.as_strided(xl, shape, view_strides, writeable=False)


def _gemm_conv(xl, w, bias, act, group, kernel, strides, dilations, out, dtype, result_dtype=None, x_shift=None,
               finish=None):
    """Dense and grouped conv as GEMMs over row blocks of the channels-last output.

    The GEMMs run in ``dtype``; with a different ``result_dtype`` (the exact integer path),
    each block is computed into a per-thread buffer and converted while in cache, before the
    bias is added. With ``x_shift`` (1x1, stride 1, unpadded only), each block's input rows
    are converted to ``dtype`` minus x_shift while in cache, instead of in a pass before.
    ``finish(yb, tb)`` replaces the bias/activation step (e.g. a requantizer writing int8)."""
    n = len(kernel)
    N, C, O = xl.shape[0], xl.shape[-1], w.shape[0]
    cg, og = C // group, O // group
    staged = result_dtype is not None and np.dtype(result_dtype) != np.dtype(dtype)
    y = np.empty((N, *out, O), dtype=result_dtype if staged else dtype)
    windows = [conv_windows(xl[..., g * cg:(g + 1) * cg] if group > 1 else xl, kernel, strides, dilations, out)
               for g in range(group)]
    # weights O,C,k.. -> (k.., C) x O to match the column order
    wmats = [
        w[g * og : (g + 1) * og]
        .transpose((0,) + tuple(range(2, 2 + n)) + (1,))
        .reshape(og, -1)
        .T.astype(dtype, copy=False)
        for g in range(group)
    ]
    target = max(_MIN_BLOCK_ROWS, _BLOCK_BYTES // (np.dtype(dtype).itemsize * max(O, wmats[0].shape[0])))

    def one_block(block):
        n0, n1, r0, r1 = block
        yb = y[n0:n1, r0:r1].reshape(-1, O)
        tb = _thread_buffer(yb.shape, dtype, "scratch") if staged else yb
        if x_shift is not None:
            xb = _thread_buffer((yb.shape[0], C), dtype, "shifted")
            np.subtract(xl[n0:n1, r0:r1].reshape(-1, C), x_shift, out=xb, dtype=dtype, casting="unsafe")
        for g in range(group):
            if x_shift is not None:
                cols = xb[:, g * cg:(g + 1) * cg]
            else:
                cols = windows[g][n0:n1, r0:r1].reshape(yb.shape[0], -1)  # a view for 1x1 stride-1 conv
            np.matmul(cols, wmats[g], out=tb[:, g * og:(g + 1) * og] if group > 1 else tb)
        if finish is not None:
            finish(yb, tb)
        else:
            _finish(yb, tb, bias, act)

    with _SingleThreadedBlas() as single:
        _parallel(one_block, _row_blocks(N, out, target), serial=not single)
    return y


def _depthwise_conv(xl, w, bias, act, kernel, strides, dilations, pads, out, dtype, result_dtype=None, x_shift=None,
                    finish=None):
    """Depthwise conv: einsum over a windows view sums the taps in C, one pass per output,
    instead of a multiply-add pass per tap. Per image (in threads), padded into a per-thread
    buffer that stays in cache. With a ``result_dtype`` other than ``dtype``, each image is
    computed into a per-thread buffer and converted (then the bias added) while in cache.
    With ``x_shift``, the image is converted to ``dtype`` minus x_shift as it is padded."""
    n = len(kernel)
    N, C = xl.shape[0], xl.shape[-1]
    wk = np.ascontiguousarray(w.reshape(C, *kernel).transpose(tuple(range(1, n + 1)) + (0,)), dtype=dtype)
    taps = "abcdefgh"[:n]
    pixels = taps.upper()
    # With stride 1 along the last spatial axis, that axis merges with the channels: a tap
    # shifts a row by dilation*C elements, and einsum's inner loop runs over out[-1]*C
    # contiguous values instead of C.
    merge = strides[-1] == 1
    if merge:
        wk = np.tile(wk, (1,) * n + (out[-1],))
        spec = f"{pixels[:-1]}{taps}z,{taps}z->{pixels[:-1]}z"
    else:
        spec = f"{pixels}{taps}z,{taps}z->{pixels}z"
    in_shape = xl.shape[1:-1]
    padded_shape = tuple(in_shape[d] + pads[d] + pads[d + n] for d in range(n)) + (C,)
    interior = tuple(slice(pads[d], pads[d] + in_shape[d]) for d in range(n))
    staged = result_dtype is not None and np.dtype(result_dtype) != np.dtype(dtype)
    y = np.empty((N, *out, C), dtype=result_dtype if staged else dtype)

    # the zero border depends on where the interior sits, not just on the padded shape
    border_tag = f"padded{tuple(pads)}"

    def one_image(i):
        if x_shift is not None:
            img = _thread_buffer(padded_shape, dtype, border_tag)
            np.subtract(xl[i], x_shift, out=img[interior], dtype=dtype, casting="unsafe")
        elif any(pads):
            img = _thread_buffer(padded_shape, dtype, border_tag)
            img[interior] = xl[i]
        else:
            img = xl[i]
        yi = _thread_buffer(tuple(out) + (C,), dtype, "scratch") if staged else y[i]
        if merge:
            img = img.reshape(*img.shape[:-2], -1)  # copies only if the input is not channels-last
            yi = yi.reshape(*out[:-1], -1)
            st = img.strides
            shape = (*out[:-1], *kernel, out[-1] * C)
            view_strides = tuple(st[d] * strides[d] for d in range(n - 1)) \
                + tuple(st[d] * dilations[d] for d in range(n - 1)) + (st[-1] * C * dilations[-1], st[-1])
        else:
            st = img.strides
            shape = (*out, *kernel, C)
            view_strides = tuple(st[d] * strides[d] for d in range(n)) \
                + tuple(st[d] * dilations[d] for d in range(n)) + (st[-1],)
        windows = np.lib.stride_tricks.as_strided(img, shape, view_strides, writeable=False)
        np.einsum(spec, windows, wk, out=yi)
        if finish is not None:
            finish(y[i], yi.reshape(y[i].shape) if staged else y[i])
        else:
            _finish(y[i], yi.reshape(y[i].shape) if staged else y[i], bias, act)

    _parallel(one_image, range(N))
    return y


def conv_forward(x, w, b, node: Node):
    """Float convolution of logical NC(spatial) data with O(C/g)(kernel) weights, with the
    node's fused bias and activation.

    Computed channels-last: one GEMM per conv over N*P rows is far faster in BLAS than N
    small ones, and depthwise taps vectorize along the channel axis. The result is returned
    as a logical NCHW view of channels-last memory; numpy kernels downstream handle any
    strides, and the next conv reads it back without a copy.
    """
    dtype = np.result_type(x, w)
    bias = None if b is None else b.astype(dtype, copy=False)
    return _channels_first(_conv_channels_last(to_channels_last(x), w, bias, node.attrs.get("activation"), node, dtype))


def _conv_channels_last(xl, w, bias, act, node: Node, dtype, result_dtype=None, x_shift=None, finish=None):
    """The conv of channels-last ``xl`` (padding with zeros), computed in ``dtype``, fused
    bias and activation; a channels-last result of ``result_dtype`` (default ``dtype``).

    With ``x_shift`` (a scalar of ``dtype``), the conv of ``xl - x_shift`` (still padded with
    zeros), converted on the fly where the kernel can (the caller proved the conversion of
    xl to dtype and the subtraction exact)."""
    n = xl.ndim - 2
    x_shape = (xl.shape[0], xl.shape[-1], *xl.shape[1:-1])
    kernel, strides, dilations, pads, out = conv_out_shape(node, x_shape, w.shape)
    group = node.attrs.get("group", 1)
    if group == x_shape[1] == w.shape[0] and w.shape[1] == 1:
        return _depthwise_conv(xl, w, bias, act, kernel, strides, dilations, pads, out, dtype, result_dtype, x_shift,
                               finish)
    pointwise = not any(pads) and all(k == 1 for k in kernel) and all(s == 1 for s in strides)
    if x_shift is not None and not pointwise:
        xl, x_shift = np.subtract(xl, x_shift, dtype=dtype, casting="unsafe"), None
    if any(pads):
        xl = np.pad(xl, [(0, 0)] + [(pads[d], pads[d + n]) for d in range(n)] + [(0, 0)])
    return _gemm_conv(xl, w, bias, act, group, kernel, strides, dilations, out, dtype, result_dtype, x_shift, finish)


# ---- exact integer accumulation ---------------------------------------------------------------
#
# Integer products summed in floating point are exact while every partial sum is an integer
# the format represents exactly: below 2**24 in float32, 2**53 in float64. Whatever order a
# BLAS (or einsum) sums in, with or without FMA, each partial sum of output o is a sum over
# a subset of its products, so |partial| <= max|x - zp| * sum_k |w[o, k]| =: bound(o).
# With max_o bound(o) < 2**24 (and |x - zp|, |w| < 2**24) float32 is exact; < 2**53, float64.
# Otherwise the int64 kernels run (numpy's integer matmul/einsum), after checking that
# max_o bound(o) + max|bias| < 2**63, so no partial sum can overflow. The bias does not
# enter the float bound: it is added while a block is converted to int64, in float64 when
# max_o bound(o) + max|bias| < 2**53 (so that sum is exact too), else in int64 afterwards.
# The x - zp conversion is exact as well: 8/16-bit x and a zero point below the float's
# limit are exact in it, and so is their difference (|x - zp| is below the limit too);
# other x are shifted in int64 first. Every path gives the exact integers, so the result
# does not depend on the path taken, the batch size or the batch split.

_FLOAT_EXACT = ((np.dtype(np.float32), 1 << 24), (np.dtype(np.float64), 1 << 53))
_INT64_LIMIT = 1 << 63


def int_operand(a, name: str, node: Node) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu" or a.dtype == np.uint64:
        raise QuantizationConfigError(
            f"{node.describe()}: {name} must be a signed or up to 32-bit unsigned integer array, got dtype {a.dtype}")
    return a


def checked_zero_point(zp, node: Node) -> int:
    arr = np.asarray(zp)
    if (
        arr.size != 1
        or arr.dtype.kind not in "iu"
        and not (arr.dtype == object and isinstance(arr.reshape(-1)[0], int))
    ):
        raise QuantizationConfigError(
            f"{node.describe()}: x_zero_point must be one integer (per-tensor activations), got {zp!r}")
    value = int(arr.reshape(-1)[0])
    if abs(value) >= 1 << 62:
        raise QuantizationConfigError(f"{node.describe()}: x_zero_point {value} is out of range")
    return value


def _abs_range(a: np.ndarray, shift: int = 0) -> int:
    """max |a - shift| as a Python int (0 for an empty array)."""
    if a.size == 0:
        return 0
    return max(abs(int(a.min()) - shift), abs(int(a.max()) - shift))


def exact_accumulation_dtype(x_q: np.ndarray, x_zero_point: int, w_rows: np.ndarray, bias_q, node: Node):
    """The cheapest dtype in which ``sum_k w_rows[o, k] * (x[k] - x_zero_point)`` is exact for
    every output row o and every x in ``x_q``: float32, float64 or int64 (see the proof above).
    ``w_rows`` is (outputs, K). Raises ExecutionError when even int64 might overflow."""
    return exact_plan(x_q, x_zero_point, w_rows, bias_q, node)[0]


def exact_plan(x_q, x_zero_point, w_rows, bias_q, node: Node):
    """(dtype, bound): exact_accumulation_dtype's choice, and the bound it proved on
    max_o |sum_k w_rows[o, k] * (x[k] - x_zero_point)| (without the bias)."""
    w_max = _abs_range(w_rows)
    k = w_rows.shape[1] if w_rows.ndim == 2 else 0
    if w_rows.size == 0:
        row_sum = 0
    elif w_max * k < _INT64_LIMIT >> 1:
        row_sum = int(np.abs(w_rows.astype(np.int64, copy=False)).sum(axis=1).max())
    else:
        row_sum = w_max * k

    def choose(x_max):
        bound = x_max * row_sum
        for dtype, limit in _FLOAT_EXACT:
            if bound < limit and x_max < limit and w_max < limit:
                return dtype, bound
        return None, bound

    if x_q.dtype.itemsize <= 2:   # first try the dtype's range, which needs no pass over the data
        info = np.iinfo(x_q.dtype)
        dtype, bound = choose(max(abs(info.min - x_zero_point), abs(info.max - x_zero_point)))
        if dtype == np.float32:
            return dtype, bound
    x_max = _abs_range(x_q, x_zero_point)
    dtype, bound = choose(x_max)
    if dtype is not None:
        return dtype, bound
    b_max = 0 if bias_q is None else _abs_range(bias_q)
    if bound + b_max >= _INT64_LIMIT or x_max >= _INT64_LIMIT:
        raise ExecutionError(
            f"{node.describe()}: the integer accumulator may overflow int64 "
            f"(max|x - zp| = {x_max}, max_o sum|w[o]| = {row_sum}, max|bias| = {b_max})")
    return np.dtype(np.int64), bound


def shifted_operand(x, zero_point: int, dtype) -> np.ndarray:
    """(x - zero_point) in dtype, exactly (the caller proved |x - zero_point| fits), as a new
    C-contiguous array of x's (logical) shape."""
    dtype = np.dtype(dtype)
    out = np.empty(x.shape, dtype)
    if dtype.kind != "f" or not _direct_shift(x, zero_point, dtype):
        # via int64: x and zero_point need not be exact in dtype, only their difference
        np.subtract(x, np.int64(zero_point), out=out, dtype=np.int64, casting="unsafe")
    else:   # x (|x| < 2**16) and zero_point are exact in dtype, so is their difference
        np.subtract(x, dtype.type(zero_point), out=out, dtype=dtype, casting="unsafe")
    return out


def conv_accumulate(x_q, x_zero_point, w_q, bias_q, node: Node, requant=None) -> np.ndarray:
    """Exact integer accumulators of a quantized Conv:
    ``acc[n, o, ...] = bias_q[o] + sum_{c, k} w_q[o, c, k] * (x_q[n, c, k'] - x_zero_point)``
    as int64, logical NC(spatial) (a view of channels-last memory, like :func:`conv_forward`).

    Everything the float Conv supports (groups incl. depthwise, strides, dilations, pads,
    auto_pad); padded positions hold the zero point, so they contribute 0. ``x_zero_point``
    is one integer (per-tensor); weights are symmetric (no weight zero point), any per-channel
    scales live outside. The node's fused activation is not applied (the requantization's
    clamp does it). The result is exact, so identical for any batch size or batch split.

    The GEMMs/einsums run in float32 or float64 BLAS when the bound above proves them exact,
    else in int64.

    ``requant`` (a :class:`core.quantization.requantize.Requant`): return ``requant`` applied
    to the accumulators instead, as ``requant.dtype``, each block requantized while in cache
    (bit for bit; fast mode's approximate ``Requant`` accumulates in float32 with its
    ``weight_scale`` folded into the weights).
    """
    x_q = int_operand(x_q, "x_q", node)
    w_q = int_operand(w_q, "w_q", node)
    zp = checked_zero_point(x_zero_point, node)
    if bias_q is not None:
        bias_q = int_operand(bias_q, "bias_q", node)
    _conv_infer(node, [TensorInfo(x_q.shape, x_q.dtype), TensorInfo(w_q.shape, w_q.dtype),
                       None if bias_q is None else TensorInfo(bias_q.shape, bias_q.dtype)])
    kernel = list(node.attrs.get("kernel_shape", w_q.shape[2:]))
    if tuple(kernel) != tuple(w_q.shape[2:]):
        raise ShapeInferenceError(f"{node.describe()}: kernel_shape {kernel} != weight shape {tuple(w_q.shape[2:])}")
    dtype, bound = exact_plan(x_q, zp, w_q.reshape(w_q.shape[0], -1), bias_q, node)
    result, finish, bias = np.int64, None, _exact_bias(bias_q, dtype, bound)
    if requant is not None:
        dtype, finish = requant.bind(dtype, bias_q, bound)
        result, bias = requant.dtype, None
        if requant.weight_scale is not None:   # fast mode: the blocks come out rescaled
            w_q = w_q.astype(dtype) * requant.weight_scale.reshape((-1,) + (1,) * (w_q.ndim - 1))
    xl = to_channels_last(x_q)
    if _direct_shift(x_q, zp, dtype):   # the kernels subtract the zero point block by block
        y = _conv_channels_last(xl, w_q, bias, None, node, dtype, result, dtype.type(zp), finish)
    else:
        y = _conv_channels_last(shifted_operand(xl, zp, dtype), w_q, bias, None, node, dtype, result, finish=finish)
    return _channels_first(y)


def _exact_bias(bias_q, dtype, bound: int):
    """The bias to add to the accumulators: float64 (added while converting a float block to
    int64) where |acc| + max|bias| < 2**53 keeps that sum exact, else int64 (added after)."""
    if bias_q is None:
        return None
    if dtype.kind == "f" and bound + _abs_range(bias_q) < (1 << 53):
        return bias_q.astype(np.float64)
    return bias_q.astype(np.int64)


def _direct_shift(x_q, zero_point: int, dtype) -> bool:
    """Whether x_q converts to dtype exactly and (x - zero_point) is exact in dtype: in int64
    always (wrap-around; the bound proved the difference fits), in float for 8/16-bit x and a
    zero point the float holds (the difference is proven to be below the float's limit)."""
    limit = dict(_FLOAT_EXACT).get(np.dtype(dtype))
    return limit is None or (x_q.dtype.itemsize <= 2 and abs(zero_point) < limit)


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


class ConvRule(DenseRule):
    """Conv's quantization: :class:`DenseRule` with the conv accumulator (channels on axis 1)."""

    channel_axis = 1
    onnx_product = "ConvInteger"

    def accumulate(self, x, zero_point, w_q, bias_q, node, requant=None):
        return conv_accumulate(x, zero_point, w_q, bias_q, node, requant=requant)

    def onnx_operands(self, node, w_q, L):
        attrs = {k: v for k, v in L.onnx_attrs(node).items()
                 if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")}
        return w_q, attrs, (1, -1) + (1,) * (w_q.ndim - 2)

    def weight_row_sums(self, weights):
        return np.abs(weights.astype(np.int64)).reshape(weights.shape[0], -1).sum(1)

    def onnx_float_product(self, L, xf, w_int, bias, attrs, base):
        ins = [xf, w_int]
        if bias is not None:
            ins.append(L.w.const(f"{base}/bias_int", bias.reshape(-1).astype(np.float32)))
        return L.ops.cast(L.w.op("Conv", ins, base, **attrs), "DOUBLE", base)

    def tflite_weight_layout(self, node, raw, w):
        if raw.ndim == 4 and w.ndim == 4 and int(node.attrs.get("group", 1)) > 1 and raw.shape[0] == 1 and \
                raw.shape[3] == w.shape[0]:
            return raw.transpose(3, 0, 1, 2)   # depthwise 1HWO -> O1HW
        return super().tflite_weight_layout(node, raw, w)


register(
    OpDef(
        "Conv",
        _conv_infer,
        _conv_run,
        mla=True,
        kind=_conv_kind,
        upgrade=_conv_upgrade,
        quant=ConvRule(),
        doc="1-D/2-D/3-D; groups (depthwise, grouped), strides, dilations, pads, auto_pad; fused bias + Relu/Clip",
    )
)


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
            sl = tuple(
                slice(
                    offs[d] * dilations[d], offs[d] * dilations[d] + (x.shape[2 + d] - 1) * strides[d] + 1, strides[d]
                )
                for d in range(n)
            )
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
