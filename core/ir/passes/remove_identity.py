"""Drop Identity and (inference-time) Dropout nodes, rewiring their consumers."""
from __future__ import annotations

from core.ir.graph import Graph

PASSTHROUGH_OPS = ("Identity", "Dropout")


def remove_identity(graph: Graph) -> bool:
    changed = False
    for n in list(graph.nodes):
        if n.op not in PASSTHROUGH_OPS or not n.inputs or not n.inputs[0]:
            continue
        if n.op == "Dropout" and any(o and _used(graph, o) for o in n.outputs[1:]):
            continue  # its mask is read: keep it
        x, y = n.inputs[0], n.outputs[0]
        if y not in graph.outputs:
            graph.replace_uses(y, x)
        elif x in graph.constants:
            graph.add_constant(y, graph.constants[x])
        else:
            # y names a graph output: the producer of x takes the name y instead, unless x
            # must keep its own name (a graph input, or itself a graph output).
            producer = next((p for p in graph.nodes if x in p.outputs), None)
            if producer is None or x in graph.inputs or x in graph.outputs:
                continue
            producer.outputs = [y if o == x else o for o in producer.outputs]
            graph.replace_uses(x, y)
        graph.nodes = [m for m in graph.nodes if m is not n]
        changed = True
    return changed


def _used(graph: Graph, tensor: str) -> bool:
    return tensor in graph.outputs or any(tensor in n.inputs for n in graph.nodes)
