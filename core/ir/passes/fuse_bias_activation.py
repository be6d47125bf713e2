"""Fuse into Conv/Gemm what the accelerator does in the same step: the bias add (MatMul + Add
becomes Gemm) and a following Relu or Clip, as attrs["activation"]."""
from __future__ import annotations

import numpy as np

from core.ir.graph import Graph, Node
from core.ir.passes.patterns import absorb, fold_affine, linear_channel_axis, per_channel, scalar, sole_consumer


def fuse_bias_activation(graph: Graph) -> bool:
    producers, consumers = graph.producers(), graph.consumers()
    kept: list[Node] = []
    for n in graph.nodes:
        x = _fusable_input(graph, n)
        p = producers.get(x) if x else None
        if p is not None and sole_consumer(graph, x, consumers) is n and _fuse(graph, p, n, x):
            absorb(graph, p, n)
            producers[n.outputs[0]] = p
        else:
            kept.append(n)
    changed = len(kept) != len(graph.nodes)
    graph.nodes = kept
    return changed


def _fusable_input(graph: Graph, n: Node) -> str | None:
    """The non-constant input of an Add (with a constant), Relu or Clip; else None."""
    if n.op == "Add" and len(n.inputs) == 2:
        a, b = n.inputs
        if (a in graph.constants) != (b in graph.constants):
            return b if a in graph.constants else a
    if n.op in ("Relu", "Clip") and n.inputs and n.inputs[0] not in graph.constants:
        return n.inputs[0]
    return None


def _fuse(graph: Graph, p: Node, n: Node, x: str) -> bool:
    """Rewrite ``p`` so that it also computes ``n`` on its output ``x``; False if it cannot."""
    if n.op == "Add":
        bias = next(graph.constants[i] for i in n.inputs if i in graph.constants)
        if p.op == "MatMul":
            return _matmul_to_gemm(graph, p, bias)
        axis = linear_channel_axis(graph, p)
        if axis is None:
            return False
        v = per_channel(bias, graph.info(x).shape, axis)
        return v is not None and fold_affine(graph, p, np.ones_like(v), v)
    if p.op not in ("Conv", "Gemm") or p.attrs.get("activation"):
        return False
    if n.op == "Relu":
        p.attrs["activation"] = {"kind": "relu"}
        return True
    lo, hi = _clip_bound(graph, n, 1, -np.inf), _clip_bound(graph, n, 2, np.inf)
    if lo is None or hi is None:
        return False  # a bound computed at run time
    p.attrs["activation"] = {"kind": "clip", "min": lo, "max": hi}
    return True


def _clip_bound(graph: Graph, n: Node, k: int, omitted: float) -> float | None:
    """Clip's min (k=1) or max (k=2): ``omitted`` if absent, None if not a constant scalar."""
    if len(n.inputs) <= k or not n.inputs[k]:
        return omitted
    return scalar(graph, n.inputs[k])


def _matmul_to_gemm(graph: Graph, p: Node, bias: np.ndarray) -> bool:
    """MatMul(x, W) + b -> Gemm(x, W, b) for a 2-D x and constant 2-D W."""
    if linear_channel_axis(graph, p) is None or len(graph.info(p.inputs[0]).shape) != 2:
        return False
    w = graph.constants[p.inputs[1]]
    v = per_channel(bias, (1, w.shape[1]), 1)
    if v is None:
        return False
    b = graph.add_constant(graph.unique_name(f"{p.name}.bias"), v.astype(w.dtype))
    p.op, p.inputs = "Gemm", [p.inputs[0], p.inputs[1], b]
    p.attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    return True
