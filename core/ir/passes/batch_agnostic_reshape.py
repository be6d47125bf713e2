"""Let a model imported at one batch size run at any: a Reshape whose constant target
spells out the batch (often a folded ``x.size(0)``) copies dim 0 instead (ONNX's 0); at import
batch 1, a window-style Reshape that merges the batch into dim 0 or splits it out again gets -1 there;
a Resize whose constant ``sizes`` spell out the batch (``F.interpolate(x, size=y.shape[-2:])`` exports
``Concat(Shape(x)[:2], size)``) resizes only the other axes (``axes`` = 1..rank-1)."""
from __future__ import annotations

import math

import numpy as np

from core.ir.graph import Graph


def batch_agnostic_reshape(graph: Graph) -> bool:
    batch = input_batch(graph)
    if batch is None:
        return False
    from_inputs = set(graph.inputs)  # tensors computed from the graph inputs
    known = graph.metadata.get("reshape_batch_axis") or {} if batch == 1 else {}
    changed = False
    for n in graph.nodes:
        if any(i in from_inputs for i in n.inputs):
            from_inputs.update(o for o in n.outputs if o)
        if n.op == "Reshape" and n.source_name in known:
            changed |= _reshape_at_known_axis(graph, n, known[n.source_name])
            continue
        if n.op == "Resize":
            changed |= _batch_agnostic_resize(graph, n, batch, from_inputs)
            continue
        if n.op != "Reshape" or n.attrs.get("allowzero", 0) or len(n.inputs) < 2:
            continue
        x, target_name = n.inputs[:2]
        target = graph.constants.get(target_name)
        info = graph.tensors.get(x)
        if target is None or info is None or x not in from_inputs or target.ndim != 1 or not target.size:
            continue
        shape = info.shape
        if batch == 1 and _merges_or_splits_batch(shape, [int(d) for d in target]):
            new_target = target.copy()
            new_target[0] = -1
            n.inputs[1] = graph.add_constant(graph.unique_name(f"{target_name}_any_batch"), new_target)
            changed = True
            continue
        if not shape or int(target[0]) != shape[0] or (shape[0] != batch and batch != 1):
            continue   # (at import batch 1, a dim 0 that is a merged batch is copied likewise)
        rest = [shape[k] if d == 0 and k < len(shape) else int(d) for k, d in enumerate(target[1:], start=1)]
        # The remaining dims must hold exactly the remaining input volume: dim 0 maps to dim 0.
        if -1 not in rest and math.prod(rest) != math.prod(shape[1:]):
            continue
        new_target = target.copy()
        new_target[0] = 0
        n.inputs[1] = graph.add_constant(graph.unique_name(f"{target_name}_any_batch"), new_target)
        changed = True
    return changed


def _reshape_at_known_axis(graph: Graph, n, axis: int) -> bool:
    """The importer found the batch at ``axis`` of this Reshape's target (it doubled at batch 2):
    the target becomes the batch-1 output shape spelled out, with -1 at that axis."""
    out = graph.tensors.get(n.outputs[0])
    target = graph.constants.get(n.inputs[1]) if len(n.inputs) > 1 else None
    if out is None or target is None or n.attrs.get("allowzero", 0) or axis >= len(out.shape):
        return False
    new = np.array(out.shape, target.dtype)
    new[axis] = -1
    if np.array_equal(new, target):
        return False
    n.inputs[1] = graph.add_constant(graph.unique_name(f"{n.inputs[1]}_any_batch"), new)
    return True


def _batch_agnostic_resize(graph: Graph, n, batch: int, from_inputs: set[str]) -> bool:
    """Resize(x, roi, scales, sizes) with constant full-rank ``sizes`` whose dim 0 is the batch:
    the same node with ``axes`` = 1..rank-1 and ``sizes[1:]`` (identical output at that batch,
    and dim 0 follows the input at any other)."""
    if len(n.inputs) < 4 or not n.inputs[3] or n.attrs.get("axes") is not None or \
            n.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return False
    x, sizes_name = n.inputs[0], n.inputs[3]
    sizes = graph.constants.get(sizes_name)
    info = graph.tensors.get(x)
    if sizes is None or info is None or x not in from_inputs or sizes.ndim != 1 or len(info.shape) < 2:
        return False
    if sizes.size != len(info.shape) or info.shape[0] != batch or int(sizes[0]) != batch:
        return False
    n.attrs["axes"] = list(range(1, len(info.shape)))
    n.inputs[3] = graph.add_constant(graph.unique_name(f"{sizes_name}_any_batch"), sizes[1:].copy())
    if n.inputs[1] and n.inputs[1] in graph.constants:   # a full-rank roi no longer matches the axes
        roi = np.asarray(graph.constants[n.inputs[1]]).reshape(-1)
        if roi.size == 2 * sizes.size:
            r = roi.reshape(2, -1)[:, 1:].reshape(-1)
            n.inputs[1] = graph.add_constant(graph.unique_name(f"{n.inputs[1]}_any_batch"), r.astype(roi.dtype))
    return True


def _merges_or_splits_batch(shape: tuple[int, ...], target: list[int]) -> bool:
    """Window-style reshapes at import batch 1 (Swin's window partition ``(B, h, H/h, w, W/w, C)
    -> (B * n_windows, h * w, C)`` and back): dim 0 of the target is the product of the input's
    leading dims (the batch merged into it), or the input's dim 0 is the product of the target's
    leading dims (split out again). Dim 0 then becomes -1, so the batch stays merged in front;
    this changes nothing at batch 1 and only batches where the constant target could not work.
    Rank >= 3 on both sides, no 0 or -1 in the target."""
    if len(shape) < 3 or len(target) < 3 or any(d <= 0 for d in target):
        return False
    if math.prod(target) != math.prod(shape) or target[0] == shape[0]:
        return False
    merged = any(target[0] == math.prod(shape[:k]) for k in range(2, len(shape)))
    split = shape[0] > 1 and any(shape[0] == math.prod(target[:k]) for k in range(2, len(target)))
    return merged or split


def input_batch(graph: Graph) -> int | None:
    """Dim 0 shared by all graph inputs, or None if they disagree or there are none."""
    dims = {graph.tensors[i].shape[0] for i in graph.inputs if i in graph.tensors and graph.tensors[i].shape}
    return dims.pop() if len(dims) == 1 else None
