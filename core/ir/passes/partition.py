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
    on_mla = _float_tails_to_apu(graph, [get_op(n.op, n).on_mla(n, graph) for n in graph.nodes])
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


# ops that do the accelerator's real work: they stay on the MLA wherever they are
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _float_tails_to_apu(graph: Graph, on_mla: list[bool]) -> list[bool]:
    """A detection head's decode tail (YOLOv8: DFL Reshape/Transpose before the APU's Softmax, the
    anchor Sub/Add, Concat, stride Mul after its Div and Sigmoid) runs on the APU in float: an MLA
    node that is no Conv/Gemm/MatMul, whose every output feeds only APU nodes or leaves the graph,
    and that lies downstream of an APU node, moves to the APU (repeated until nothing moves); so does
    a Conv/Gemm/MatMul that reads only APU tensors and feeds only APU nodes (the DFL's 1x1 conv
    between Softmax and the decode). Such a node would only add an MLA -> APU round trip and an
    INT8 rounding to a float tail."""
    on_mla = list(on_mla)
    producer = {o: k for k, n in enumerate(graph.nodes) for o in n.outputs if o}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            if i:
                readers.setdefault(i, []).append(k)
    after_apu = [False] * len(graph.nodes)   # graph.nodes is topologically sorted
    for k, n in enumerate(graph.nodes):
        after_apu[k] = any(i in producer and (not on_mla[producer[i]] or after_apu[producer[i]]) for i in n.inputs)
    moved = True
    while moved:
        moved = False
        for k in range(len(graph.nodes) - 1, -1, -1):
            n = graph.nodes[k]
            if not on_mla[k] or not after_apu[k]:
                continue
            uses = [r for o in n.outputs if o for r in readers.get(o, [])]
            leaves = any(o in graph.outputs for o in n.outputs)
            if n.op in _COMPUTE_OPS and (leaves or not _fed_by_apu_only(graph, n, producer, on_mla)):
                continue
            if (uses or leaves) and not any(on_mla[r] for r in uses):
                on_mla[k] = False
                moved = True
    return on_mla


def _fed_by_apu_only(graph: Graph, n: Node, producer: dict, on_mla: list[bool]) -> bool:
    acts = [i for i in n.inputs if i and i not in graph.constants]
    return bool(acts) and all(i in producer and not on_mla[producer[i]] for i in acts)


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
