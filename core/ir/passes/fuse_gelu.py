"""GELU written out with Erf (PyTorch's F.gelu before opset 20, Keras, BERT-style code) -> one
Gelu node:

    c = Add(Erf(x / sqrt 2), 1)          x / 1.41421 as Div, or Mul by 0.70711
    y = (x * c) * 0.5  |  (x * 0.5) * c  |  x * (c * 0.5)  |  (c * 0.5) * x ...

any operand order. The matched nodes whose values nobody else reads are then pruned.
"""
from __future__ import annotations

import math

from core.ir.graph import Graph, Node
from core.ir.passes.patterns import near_scalar as _near
from core.ir.passes.patterns import other_input as _other
from core.ir.passes.patterns import replace_matches, sole_consumer

_SQRT2 = math.sqrt(2.0)


def fuse_gelu(graph: Graph) -> bool:
    return replace_matches(graph, ("Erf",), _match)


def _scaled_input(graph: Graph, node: Node | None) -> str | None:
    """x if ``node`` computes x / sqrt(2) (Div) or x * (1 / sqrt 2) (Mul), else None."""
    if node is None or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if node.op == "Div" and a not in graph.constants and _near(graph, b, _SQRT2):
        return a
    if node.op == "Mul":
        for x, c in ((a, b), (b, a)):
            if x not in graph.constants and _near(graph, c, 1.0 / _SQRT2):
                return x
    return None


def _is_half_of(graph: Graph, name: str, x: str, producers) -> bool:
    """``name`` is Mul(x, 0.5) (either order)."""
    p = producers.get(name)
    return p is not None and p.op == "Mul" and x in p.inputs and _near(graph, _other(p, x), 0.5)


def _match(graph: Graph, erf: Node, producers, consumers):
    x = _scaled_input(graph, producers.get(erf.inputs[0]))
    if x is None:
        return None
    add = sole_consumer(graph, erf.outputs[0], consumers)
    if add is None or add.op != "Add" or not _near(graph, _other(add, erf.outputs[0]), 1.0):
        return None
    c = add.outputs[0]
    m1 = sole_consumer(graph, c, consumers)
    if m1 is None or m1.op != "Mul" or len(m1.inputs) != 2:
        return None
    other = _other(m1, c)
    tail = None
    if _is_half_of(graph, other, x, producers):          # (x * 0.5) * c
        tail = m1
    else:
        m2 = sole_consumer(graph, m1.outputs[0], consumers)
        if m2 is not None and m2.op == "Mul" and len(m2.inputs) == 2:
            rest = _other(m2, m1.outputs[0])
            if (other == x and _near(graph, rest, 0.5)) or (_near(graph, other, 0.5) and rest == x):
                tail = m2                                 # (x * c) * 0.5, (c * 0.5) * x
    if tail is None:
        return None
    source = erf.source_name or erf.name
    fused = Node("Gelu", [x], [tail.outputs[0]], {"approximate": "none"},
                 name=graph.unique_name(f"{erf.name}/gelu"), source_name=source)
    return tail, fused
