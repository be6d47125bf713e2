"""Let a model imported at batch 1 run at any batch when it concatenates a constant with an
activation along a non-batch axis (a ViT's class token: ``class_token.expand(n, -1, -1)`` folds
to a batch-1 constant at import): the Concat broadcasts its batch-1 inputs to the batch
(``attrs["broadcast_batch"]``), as the exporter's Expand did."""
from __future__ import annotations

from core.ir.graph import Graph
from core.ir.passes.batch_agnostic_reshape import input_batch


def batch_agnostic_concat(graph: Graph) -> bool:
    if input_batch(graph) != 1:
        return False
    from_inputs = set(graph.inputs)
    changed = False
    for n in graph.nodes:
        if any(i in from_inputs for i in n.inputs):
            from_inputs.update(o for o in n.outputs if o)
        if n.op != "Concat" or n.attrs.get("broadcast_batch"):
            continue
        ins = [i for i in n.inputs if i]
        infos = [graph.tensors.get(i) for i in ins]
        if any(t is None or not t.shape for t in infos) or int(n.attrs.get("axis", 0)) % len(infos[0].shape) == 0:
            continue
        consts = [i for i in ins if i in graph.constants]
        if consts and any(i in from_inputs for i in ins) and all(graph.tensors[i].shape[0] == 1 for i in consts):
            n.attrs["broadcast_batch"] = 1
            changed = True
    return changed
