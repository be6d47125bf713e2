"""Let a model imported at one batch size run at any: a Reshape whose constant target
spells out the batch (often a folded ``x.size(0)``) copies dim 0 instead (ONNX's 0)."""
from __future__ import annotations

import math

from core.ir.graph import Graph


def batch_agnostic_reshape(graph: Graph) -> bool:
    batch = _input_batch(graph)
    if batch is None:
        return False
    from_inputs = set(graph.inputs)  # tensors computed from the graph inputs
    changed = False
    for n in graph.nodes:
        if any(i in from_inputs for i in n.inputs):
            from_inputs.update(o for o in n.outputs if o)
        if n.op != "Reshape" or n.attrs.get("allowzero", 0) or len(n.inputs) < 2:
            continue
        x, target_name = n.inputs[:2]
        target = graph.constants.get(target_name)
        info = graph.tensors.get(x)
        if target is None or info is None or x not in from_inputs or target.ndim != 1 or not target.size:
            continue
        shape = info.shape
        if not shape or shape[0] != batch or int(target[0]) != batch:
            continue
        rest = [shape[k] if d == 0 and k < len(shape) else int(d) for k, d in enumerate(target[1:], start=1)]
        # The remaining dims must hold exactly the remaining input volume: dim 0 maps to dim 0.
        if -1 not in rest and math.prod(rest) != math.prod(shape[1:]):
            continue
        new_target = target.copy()
        new_target[0] = 0
        n.inputs[1] = graph.add_constant(graph.unique_name(f"{target_name}_any_batch"), new_target)
        changed = True
    return changed


def _input_batch(graph: Graph) -> int | None:
    """Dim 0 shared by all graph inputs, or None if they disagree or there are none."""
    dims = {graph.tensors[i].shape[0] for i in graph.inputs if i in graph.tensors and graph.tensors[i].shape}
    return dims.pop() if len(dims) == 1 else None
