"""LayerNorm written out in elementary ops (PyTorch before opset 17, Keras, hand-written text
recognizers) -> one LayerNormalization node:

    m = ReduceMean(x, axes)          axes: the trailing axes, keepdims=1
    d = Sub(x, m)
    p = Pow(d, 2)  or  Mul(d, d)
    v = ReduceMean(p, axes)
    s = Sqrt(Add(v, eps))  or  Pow(Add(v, eps), 0.5)
    n = Div(d, s)
    y = Add(Mul(n, gamma), beta)     gamma, beta optional constants (either operand order)

The fused node computes the same function (in float64 inside its kernel); matched nodes whose
values nobody else reads are then pruned.
"""
from __future__ import annotations

import numpy as np

from core.ir.graph import Graph, Node
from core.ir.passes.patterns import scalar, sole_consumer


def fuse_layer_norm(graph: Graph) -> bool:
    producers, consumers = graph.producers(), graph.consumers()
    changed = False
    kept: list[Node] = []
    replaced: dict[int, Node] = {}
    for n in graph.nodes:
        if n.op == "Div":
            match = _match(graph, n, producers, consumers)
            if match is not None:
                tail, fused = match
                replaced[id(tail)] = fused
        kept.append(n)
    if replaced:
        graph.nodes = [replaced.get(id(n), n) for n in kept]
        changed = True
    return changed


def _other(n: Node, x: str) -> str:
    return n.inputs[1] if n.inputs[0] == x else n.inputs[0]


def _trailing_axes(graph: Graph, n: Node, rank: int) -> int | None:
    """The first reduced axis if ``n`` is a keepdims ReduceMean over axes first..rank-1, else None."""
    if n.op != "ReduceMean" or not n.attrs.get("keepdims", 1) or len(n.inputs) < 2:
        return None
    axes = graph.constants.get(n.inputs[1])
    if axes is None or axes.size == 0:
        return None
    got = sorted(int(a) % rank for a in axes.reshape(-1))
    return got[0] if got == list(range(got[0], rank)) else None


def _is_const(graph: Graph, name: str, value: float, rtol: float = 1e-6) -> bool:
    v = scalar(graph, name)
    return v is not None and abs(v - value) <= rtol * abs(value)


def _match(graph: Graph, div: Node, producers, consumers):
    d, s = div.inputs[:2]
    sub, sq = producers.get(d), producers.get(s)
    if sub is None or sq is None or sub.op != "Sub" or len(sub.inputs) != 2:
        return None
    x, m = sub.inputs
    mean = producers.get(m)
    info = graph.tensors.get(x)
    if mean is None or mean.inputs[0] != x or info is None or info.dtype.kind != "f" or not info.shape:
        return None
    rank = len(info.shape)
    axis = _trailing_axes(graph, mean, rank)
    if axis is None or sole_consumer(graph, m, consumers) is not sub:
        return None
    # s = Sqrt(e) or Pow(e, 0.5); e = Add(v, eps)
    if sq.op == "Sqrt":
        e = sq.inputs[0]
    elif sq.op == "Pow" and _is_const(graph, sq.inputs[1], 0.5):
        e = sq.inputs[0]
    else:
        return None
    add = producers.get(e)
    if add is None or add.op != "Add" or sole_consumer(graph, s, consumers) is not div:
        return None
    v = next((i for i in add.inputs if i not in graph.constants), None)
    eps = scalar(graph, _other(add, v)) if v is not None else None
    var = producers.get(v) if v is not None else None
    if eps is None or var is None or _trailing_axes(graph, var, rank) != axis:
        return None
    sqr = producers.get(var.inputs[0])
    if sqr is None or not ((sqr.op == "Pow" and sqr.inputs[0] == d and _is_const(graph, sqr.inputs[1], 2.0))
                           or (sqr.op == "Mul" and sqr.inputs == [d, d])):
        return None
    # d feeds only the square and the division
    if {id(u) for u in consumers.get(d, [])} != {id(sqr), id(div)} or d in graph.outputs:
        return None
    norm_shape = tuple(info.shape[axis:])
    out, tail = div.outputs[0], div
    scale = np.ones(norm_shape, info.dtype)
    bias = None
    mul = sole_consumer(graph, out, consumers)
    if mul is not None and mul.op == "Mul":
        gamma = _trailing_constant(graph, _other(mul, out), norm_shape)
        if gamma is not None:
            scale, out, tail = gamma.astype(info.dtype), mul.outputs[0], mul
    add_b = sole_consumer(graph, out, consumers)
    if add_b is not None and add_b.op == "Add":
        beta = _trailing_constant(graph, _other(add_b, out), norm_shape)
        if beta is not None:
            bias, out, tail = beta.astype(info.dtype), add_b.outputs[0], add_b
    source = div.source_name or div.name
    inputs = [x, graph.add_constant(graph.unique_name(f"{source}.ln_scale"), scale)]
    if bias is not None:
        inputs.append(graph.add_constant(graph.unique_name(f"{source}.ln_bias"), bias))
    fused = Node("LayerNormalization", inputs, [out], {"axis": axis, "epsilon": float(eps)},
                 name=graph.unique_name(f"{div.name}/layer_norm"), source_name=source)
    return tail, fused


def _trailing_constant(graph: Graph, name: str, norm_shape: tuple[int, ...]) -> np.ndarray | None:
    """A float constant that, broadcast against the normalized (trailing) dims, varies only over
    them and does not enlarge the tensor: returned with the normalized shape; else None."""
    c = graph.constants.get(name)
    if c is None or c.dtype.kind != "f":
        return None
    shape = c.shape
    while len(shape) > len(norm_shape) and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > len(norm_shape):
        return None
    full = (1,) * (len(norm_shape) - len(shape)) + tuple(shape)
    if any(a not in (1, b) for a, b in zip(full, norm_shape)):
        return None
    return np.broadcast_to(c.reshape(full), norm_shape).copy()
