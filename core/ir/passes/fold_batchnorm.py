"""Fold batch-norm into the Conv/Gemm before it: BatchNormalization, and its decomposed form
(Mul/Div by, Add/Sub of, a per-channel constant). A BatchNormalization with nothing to fold
into becomes Mul + Add with constants, which the accelerator runs."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.ir.graph import Graph, Node, TensorInfo
from core.ir.passes.patterns import absorb, fold_affine, linear_channel_axis, per_channel, sole_consumer

# (shape of the linear node's output, its channel axis) -> (scale, shift) per channel, or None
AffineFn = Callable[[tuple[int, ...], int], tuple[np.ndarray, np.ndarray] | None]


def fold_batchnorm(graph: Graph) -> bool:
    producers, consumers = graph.producers(), graph.consumers()
    changed = False
    kept: list[Node] = []
    for n in graph.nodes:
        if n.op == "BatchNormalization":
            affine = _batchnorm_affine(graph, n, consumers)
        elif n.op in ("Mul", "Div", "Add", "Sub"):
            affine = _elementwise_affine(graph, n)
        else:
            affine = None
        if affine is not None and _fold_into_producer(graph, n, *affine, producers, consumers):
            changed = True
            continue
        parts = _decompose_batchnorm(graph, n, affine[1]) if affine and n.op == "BatchNormalization" else None
        kept.extend(parts or [n])
        changed |= parts is not None
    graph.nodes = kept
    return changed


def _fold_into_producer(graph: Graph, n: Node, x: str, affine: AffineFn, producers, consumers) -> bool:
    p = producers.get(x)
    if p is None or sole_consumer(graph, x, consumers) is not n:
        return False
    axis = linear_channel_axis(graph, p)
    if axis is None or x not in graph.tensors:
        return False
    got = affine(graph.tensors[x].shape, axis)
    if got is None or not fold_affine(graph, p, *got):
        return False
    absorb(graph, p, n)
    producers[n.outputs[0]] = p
    return True


def _batchnorm_affine(graph: Graph, n: Node, consumers) -> tuple[str, AffineFn] | None:
    """BN(x) = scale * (x - mean) / sqrt(var + eps) + B, when its parameters are constants,
    it is in inference mode and only its first output is used."""
    if len(n.inputs) != 5 or any(i not in graph.constants for i in n.inputs[1:]):
        return None
    if n.attrs.get("training_mode", 0) or any(o in consumers or o in graph.outputs for o in n.outputs[1:] if o):
        return None
    gamma, beta, mean, var = (graph.constants[i].astype(np.float64) for i in n.inputs[1:])
    eps = float(n.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale

    def affine(shape, axis):
        if axis != 1 or scale.shape != (shape[1],):
            return None
        return scale, shift

    return n.inputs[0], affine


def _elementwise_affine(graph: Graph, n: Node) -> tuple[str, AffineFn] | None:
    """x * c, c * x, x / c, x + c, c + x, x - c, c - x with a constant c."""
    if len(n.inputs) != 2:
        return None
    a, b = n.inputs
    const_first = a in graph.constants
    if const_first == (b in graph.constants):
        return None
    x, c = (b, graph.constants[a]) if const_first else (a, graph.constants[b])
    if n.op == "Div" and (const_first or np.any(c == 0)):
        return None

    def affine(shape, axis):
        v = per_channel(c, shape, axis)
        if v is None:
            return None
        one, zero = np.ones_like(v), np.zeros_like(v)
        if n.op == "Mul":
            return v, zero
        if n.op == "Div":
            return 1.0 / v, zero
        if n.op == "Add":
            return one, v
        return (-one, v) if const_first else (one, -v)  # Sub

    return x, affine


def _decompose_batchnorm(graph: Graph, n: Node, affine: AffineFn) -> list[Node] | None:
    x, y = n.inputs[0], n.outputs[0]
    info = graph.info(x)
    got = affine(info.shape, 1) if len(info.shape) >= 2 else None
    if got is None:
        return None  # parameters that do not fit the channels: shape inference reports it
    scale, shift = got
    bshape = (info.shape[1],) + (1,) * (len(info.shape) - 2)
    scale_c = graph.add_constant(graph.unique_name(f"{n.name}.scale"), scale.reshape(bshape).astype(info.dtype))
    shift_c = graph.add_constant(graph.unique_name(f"{n.name}.shift"), shift.reshape(bshape).astype(info.dtype))
    scaled = graph.unique_name(f"{n.name}/scaled")
    graph.tensors[scaled] = TensorInfo(info.shape, info.dtype)
    source = n.source_name or n.name
    return [
        Node("Mul", [x, scale_c], [scaled], name=graph.unique_name(f"{n.name}/mul"), source_name=source),
        Node("Add", [scaled, shift_c], [y], name=graph.unique_name(f"{n.name}/add"), source_name=source),
    ]
