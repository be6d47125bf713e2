"""Helpers shared by the rewrite passes: matching a node's sole consumer, per-channel
constants, and folding a per-channel affine map y = scale * x + shift into a linear node."""
from __future__ import annotations

import numpy as np

from core.ir.graph import Graph, Node

LINEAR_OPS = ("Conv", "Gemm", "MatMul")


def sole_consumer(graph: Graph, tensor: str, consumers: dict[str, list[Node]]) -> Node | None:
    """The one node reading ``tensor`` (once), or None if it has several uses or is a graph output."""
    uses = consumers.get(tensor, [])
    if len(uses) != 1 or tensor in graph.outputs:
        return None
    return uses[0]


def scalar(graph: Graph, name: str) -> float | None:
    """The value of a one-element constant tensor, else None."""
    v = graph.constants.get(name)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()))


def near_scalar(graph: Graph, name: str, value: float) -> bool:
    """``name`` is a one-element constant within 1e-6 (relative) of ``value``."""
    v = scalar(graph, name)
    return v is not None and abs(v - value) <= 1e-6 * abs(value)


def other_input(node: Node, x: str) -> str:
    """The input of a two-input ``node`` that is not ``x``."""
    return node.inputs[1] if node.inputs[0] == x else node.inputs[0]


def replace_matches(graph: Graph, anchor_ops: tuple[str, ...], match) -> bool:
    """For every node of an ``anchor_ops`` op, ``match(graph, node, producers, consumers)`` gives
    ``(tail, fused)`` or None; each matched tail node is replaced by its fused node (the matched
    nodes nobody else reads are pruned by the pass manager). Returns whether anything matched."""
    producers, consumers = graph.producers(), graph.consumers()
    replaced: dict[int, Node] = {}
    for n in graph.nodes:
        if n.op in anchor_ops:
            found = match(graph, n, producers, consumers)
            if found is not None:
                tail, fused = found
                replaced.setdefault(id(tail), fused)
    if not replaced:
        return False
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes]
    return True


def per_channel(value: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``value`` as a float64 vector of length shape[axis] if, broadcast against a tensor of
    ``shape``, it varies only along ``axis`` and does not enlarge the tensor; else None."""
    value = np.asarray(value)
    if value.dtype.kind != "f" or value.ndim > len(shape):
        return None
    full = (1,) * (len(shape) - value.ndim) + value.shape
    if any(d != 1 for k, d in enumerate(full) if k != axis) or full[axis] not in (1, shape[axis]):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (shape[axis],))


def linear_channel_axis(graph: Graph, node: Node) -> int | None:
    """Output-channel axis of a Conv/Gemm/MatMul whose weights (and bias) are float constants
    and that has no fused activation yet; None if an affine map cannot fold into it."""
    if node.op not in LINEAR_OPS or node.attrs.get("activation") or len(node.inputs) < 2:
        return None
    w = graph.constants.get(node.inputs[1])
    if w is None or w.dtype.kind != "f":
        return None
    if node.op == "MatMul":
        out = graph.tensors.get(node.outputs[0])
        return len(out.shape) - 1 if w.ndim == 2 and out is not None else None
    if len(node.inputs) > 2 and node.inputs[2] and node.inputs[2] not in graph.constants:
        return None
    if node.op == "Gemm" and w.ndim != 2:
        return None
    return 1


def fold_affine(graph: Graph, node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Make ``node`` (see linear_channel_axis) compute scale * node(x) + shift, per output
    channel. New constants replace the old ones (a weight may be shared by other nodes).
    Returns False if it cannot: a MatMul has no bias to take a shift."""
    scale, shift = np.asarray(scale, np.float64), np.asarray(shift, np.float64)
    rescale = not np.all(scale == 1.0)
    w = graph.constants[node.inputs[1]]
    if node.op == "MatMul":
        if np.any(shift != 0):
            return False
        if rescale:
            _set_input(graph, node, 1, "weight", (w * scale[None, :]).astype(w.dtype))
        return True

    bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
    bias = graph.constants[bias_name].astype(np.float64) if bias_name else None
    if node.op == "Conv":
        if rescale:
            _set_input(graph, node, 1, "weight", (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype))
        new_bias = (np.zeros(w.shape[0]) if bias is None else bias) * scale + shift
    else:  # Gemm: y = alpha * A'B' + beta * C; the output channel is B' 's column
        if rescale:
            s = scale[:, None] if node.attrs.get("transB", 0) else scale[None, :]
            _set_input(graph, node, 1, "weight", (w * s).astype(w.dtype))
        beta = float(node.attrs.get("beta", 1.0))
        new_bias = shift if bias is None else beta * bias * scale + shift
        node.attrs["beta"] = 1.0
    _set_input(graph, node, 2, "bias", new_bias.astype(w.dtype))
    return True


def _set_input(graph: Graph, node: Node, idx: int, what: str, value: np.ndarray) -> None:
    name = graph.add_constant(graph.unique_name(f"{node.name}.{what}"), value)
    while len(node.inputs) <= idx:
        node.inputs.append("")
    node.inputs[idx] = name


def absorb(graph: Graph, producer: Node, tail: Node) -> None:
    """``producer`` now computes ``tail``'s output itself: it takes over that output's name
    (so graph outputs keep their names); the caller drops ``tail``."""
    producer.outputs[0] = tail.outputs[0]
