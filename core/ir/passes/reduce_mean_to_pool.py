"""ReduceMean over H and W of an NCHW tensor (how Keras/TF exports global average pooling)
-> GlobalAveragePool (+ Flatten when keepdims=0), which the accelerator runs."""
from __future__ import annotations

from core.ir.graph import Graph, Node, TensorInfo


def reduce_mean_to_pool(graph: Graph) -> bool:
    changed = False
    kept: list[Node] = []
    for n in graph.nodes:
        x = n.inputs[0] if n.op == "ReduceMean" and n.inputs else ""
        info = graph.tensors.get(x)
        if info is None or len(info.shape) != 4 or info.dtype.kind != "f" or _axes(graph, n) != {2, 3}:
            kept.append(n)
            continue
        source = n.source_name or n.name
        if n.attrs.get("keepdims", 1):
            kept.append(Node("GlobalAveragePool", [x], list(n.outputs[:1]), name=n.name, source_name=source))
        else:
            pooled = graph.unique_name(f"{n.name}/pooled")
            graph.tensors[pooled] = TensorInfo(info.shape[:2] + (1, 1), info.dtype)
            kept.append(Node("GlobalAveragePool", [x], [pooled], name=n.name, source_name=source))
            kept.append(Node("Flatten", [pooled], list(n.outputs[:1]), {"axis": 1},
                             name=graph.unique_name(f"{n.name}/flatten"), source_name=source))
        changed = True
    graph.nodes = kept
    return changed


def _axes(graph: Graph, n: Node) -> set[int] | None:
    """The reduced axes, normalized to non-negative; None if unknown or "all axes"."""
    if len(n.inputs) > 1 and n.inputs[1]:
        value = graph.constants.get(n.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    else:
        axes = n.attrs.get("axes")  # opsets before 18 (if not yet upgraded to an input)
    if not axes:
        return None
    return {int(a) % 4 for a in axes}
