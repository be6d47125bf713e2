"""Split the graph into MLA (accelerator) and APU (float) segments and name every node
``<segment>/<kind>_<index>``, e.g. ``MLA_0/conv2d_add_relu_0``.

Nodes are reordered topologically so that as few segment switches as possible happen:
while a node of the current segment's kind is ready it runs next (earliest in the
current order first); only when none is does the segment switch.
"""
from __future__ import annotations

import heapq

from core.errors import ModelLoadError
from core.ir.graph import Graph, Node
from core.ops.registry import get_op

MLA, APU = "MLA", "APU"


def partition(graph: Graph) -> bool:
    before = [(n.name, n.segment) for n in graph.nodes]
    on_mla = [get_op(n.op, n).on_mla(n, graph) for n in graph.nodes]
    order = _schedule(graph, [MLA if m else APU for m in on_mla])

    counts = {MLA: 0, APU: 0}
    segment, prev_kind = "", None
    nodes: list[Node] = []
    for i, (k, kind) in enumerate(order):
        n = graph.nodes[k]
        if kind != prev_kind:
            segment = f"{kind}_{counts[kind]}"
            counts[kind] += 1
            prev_kind = kind
        n.source_name = n.source_name or n.name
        n.segment = segment
        n.name = f"{segment}/{get_op(n.op, n).kind_of(n)}_{i}"
        nodes.append(n)
    graph.nodes = nodes
    return [(n.name, n.segment) for n in graph.nodes] != before


def _schedule(graph: Graph, kinds: list[str]) -> list[tuple[int, str]]:
    """(node index, kind) in a topological order with the fewest greedy kind switches."""
    producer = {o: k for k, n in enumerate(graph.nodes) for o in n.outputs if o}
    waits_on = [{producer[i] for i in n.inputs if i in producer} for n in graph.nodes]
    readers: list[list[int]] = [[] for _ in graph.nodes]
    for k, deps in enumerate(waits_on):
        for d in deps:
            readers[d].append(k)
    pending = [len(d) for d in waits_on]
    ready: dict[str, list[int]] = {MLA: [], APU: []}  # heaps of node indices
    for k, p in enumerate(pending):
        if not p:
            heapq.heappush(ready[kinds[k]], k)

    order: list[tuple[int, str]] = []
    current = None
    while ready[MLA] or ready[APU]:
        if not ready.get(current):
            # Switch to the kind whose earliest ready node comes first in the current order.
            current = min((h[0], kind) for kind, h in ready.items() if h)[1]
        k = heapq.heappop(ready[current])
        order.append((k, current))
        for r in readers[k]:
            pending[r] -= 1
            if not pending[r]:
                heapq.heappush(ready[kinds[r]], r)
    if len(order) != len(graph.nodes):
        graph.toposort()  # raises ModelLoadError naming a node on the cycle
        raise ModelLoadError(f"graph {graph.name!r} cannot be ordered for partitioning")
    return order
