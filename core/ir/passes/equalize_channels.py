"""Cross-layer channel equalization (Nagel et al. 2019, "Data-Free Quantization", section 4.1).

For a pair A -> B of Conv/Gemm nodes where A's output feeds only B (through A's fused
activation), output channel ``c`` of A and input channel ``c`` of B can trade a positive factor
``s_c``: ``W_A[c] /= s_c``, ``b_A[c] /= s_c``, ``W_B[:, c] *= s_c`` leaves B's output unchanged
because ``act(y / s) = act(y) / s`` for ReLU and for Clip *with its bounds divided by s_c too*.
With ``s_c = sqrt(r_A[c] / r_B[c])`` (``r`` the channel's largest |weight|) both channels end with
range ``sqrt(r_A[c] r_B[c])``: per-tensor weight quantization no longer starves small channels,
and the activation between them evens out too.

A fused Clip gets per-channel bounds (``attrs["activation"]["max"]`` becomes an array over A's
output channels), which the float kernels broadcast and the quantizer turns into per-channel
integer clamps -- so ReLU6 pairs (MobileNetV2) equalize with float outputs unchanged. Pairs are
swept repeatedly (B of one pair is A of the next) until the scales settle.

Supported A: Conv (any group; depthwise included) and Gemm; B: Conv with group 1 or depthwise
(group == channels), Gemm. Other pairs, and A outputs read by anything else (a residual Add,
a graph output), are left alone.
"""
from __future__ import annotations

import numpy as np

from core.ir.graph import Graph, Node
from core.ops.common import weight_output_axis

__all__ = ["equalize_channels", "equalizable_pairs"]

_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


def _in_view(node: Node, w: np.ndarray, channels: int):
    """(per input channel |w| max, function scaling input channel c of w by s) for node B."""
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        if group == 1 and w.shape[1] == channels:
            r = np.abs(w).max(axis=(0,) + tuple(range(2, w.ndim)))
            return r, lambda s: w * s.reshape((1, -1) + (1,) * (w.ndim - 2))
        if group == channels and w.shape[0] == channels and w.shape[1] == 1:   # depthwise, multiplier 1
            r = np.abs(w).reshape(channels, -1).max(axis=1)
            return r, lambda s: w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        return None
    if node.op == "Gemm" and w.ndim == 2:
        if node.attrs.get("transB", 0) and w.shape[1] == channels:       # (O, K)
            return np.abs(w).max(axis=0), lambda s: w * s.reshape(1, -1)
        if not node.attrs.get("transB", 0) and w.shape[0] == channels:   # (K, O)
            return np.abs(w).max(axis=1), lambda s: w * s.reshape(-1, 1)
    return None


def equalizable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    consumers = graph.consumers()
    pairs = []
    for a in graph.nodes:
        if a.op not in ("Conv", "Gemm") or len(a.inputs) < 2 or a.inputs[1] not in graph.constants:
            continue
        if a.op == "Gemm" and (a.attrs.get("transA", 0) or a.attrs.get("alpha", 1.0) != 1.0):
            continue
        act = a.attrs.get("activation")
        if act and act.get("kind") not in ("relu", "clip"):
            continue
        out = a.outputs[0]
        users = consumers.get(out, [])
        if out in graph.outputs or len(users) != 1:
            continue
        b = users[0]
        if (
            b.op not in ("Conv", "Gemm")
            or b.inputs[0] != out
            or len(b.inputs) < 2
            or b.inputs[1] not in graph.constants
        ):
            continue
        if a.segment != b.segment:
            continue
        pairs.append((a, b))
    return pairs


def _equalize_pair(graph: Graph, a: Node, b: Node) -> float:
    """Rescale one pair in place (new arrays); returns max |log s| (0 when nothing moved)."""
    wa = np.asarray(graph.constants[a.inputs[1]], np.float64)
    wb = np.asarray(graph.constants[b.inputs[1]], np.float64)
    axis = weight_output_axis(a, wa.ndim)
    channels = wa.shape[axis]
    view = _in_view(b, wb, channels)
    if view is None:
        return 0.0
    r_b, scale_b = view
    r_a = np.abs(np.moveaxis(wa, axis, 0)).reshape(channels, -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r_a / r_b)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    s = np.clip(s, _MIN_SCALE, _MAX_SCALE)
    if np.allclose(s, 1.0, rtol=1e-6, atol=0):
        return 0.0
    shape = [1] * wa.ndim
    shape[axis] = -1
    dtype_a = graph.constants[a.inputs[1]].dtype
    graph.constants[a.inputs[1]] = (wa / s.reshape(shape)).astype(dtype_a)
    if len(a.inputs) > 2 and a.inputs[2]:
        ba = np.asarray(graph.constants[a.inputs[2]], np.float64)
        if ba.size == 1:
            ba = np.broadcast_to(ba.reshape(-1), (channels,))
        graph.constants[a.inputs[2]] = (ba.reshape(-1) / s).astype(graph.constants[a.inputs[2]].dtype)
    graph.constants[b.inputs[1]] = scale_b(s).astype(graph.constants[b.inputs[1]].dtype)
    act = a.attrs.get("activation")
    if act and act["kind"] == "clip":
        new = dict(act)
        for key in ("min", "max"):
            bound = np.asarray(act.get(key, np.inf if key == "max" else -np.inf), np.float64)
            if np.all(np.isfinite(bound)) and np.any(bound != 0):
                new[key] = (np.broadcast_to(bound, (channels,)) / s).astype(np.float32)
        a.attrs["activation"] = new
    return float(np.abs(np.log(s)).max())


def equalize_channels(graph: Graph, max_sweeps: int = 20, tolerance: float = 1e-3) -> int:
    """Equalize every supported pair, sweeping until no scale moves more than ``tolerance``
    (in log) or ``max_sweeps``; returns the number of pairs. Shares no arrays it changes:
    rewritten constants are new arrays (safe on a ``graph.copy()``)."""
    pairs = equalizable_pairs(graph)
    if not pairs:
        return 0
    for a, _ in pairs:   # activation dicts are rewritten, not mutated: copies of the parent's stay intact
        if a.attrs.get("activation") is not None:
            a.attrs["activation"] = dict(a.attrs["activation"])
    for _ in range(max_sweeps):
        moved = max(_equalize_pair(graph, a, b) for a, b in pairs)
        if moved < tolerance:
            break
    for name in {n.inputs[1] for pair in pairs for n in pair} | {
        a.inputs[2] for a, _ in pairs if len(a.inputs) > 2 and a.inputs[2]
    }:
        if name in graph.tensors:
            graph.tensors[name].value = graph.constants[name] if graph.tensors[name].value is not None else None
    return len(pairs)
