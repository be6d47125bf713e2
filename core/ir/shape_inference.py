"""Shape inference: every node output's ``TensorInfo`` from the op registry's shape rules.

A function over the graph rather than a ``Graph`` method, so that ``core.ir.graph`` does not
depend on the op registry (whose op modules build on ``core.ir.graph``): the graph IR stays a
leaf, the registry and the op modules sit above it, and this module above both.
"""
from __future__ import annotations

import numpy as np

from core.errors import MixqError, ShapeInferenceError
from core.ir.graph import RANDOM_OPS, Graph, Node, TensorInfo
from core.ops.registry import get_op

__all__ = ["infer_shapes", "MAX_PROPAGATED_ELEMENTS"]

# Small values (a static Shape, then the Gather/Concat/... computing a Reshape target from it)
# flow through shape inference, so exported shape sub-graphs infer before they are folded.
MAX_PROPAGATED_ELEMENTS = 4096


def infer_shapes(graph: Graph) -> None:
    """Recompute the TensorInfo of every node output of ``graph`` (in place, in node order)."""
    for n in graph.nodes:
        opdef = get_op(n.op, n)
        ins = [graph.tensors.get(i) if i else None for i in n.inputs]
        for i, t in zip(n.inputs, ins):
            if i and t is None:
                raise ShapeInferenceError(f"{n.describe()}: input tensor {i!r} is unknown")
        try:
            if opdef.check is not None:
                opdef.check(n, ins)
            outs = opdef.infer(n, ins)
            if _propagates_value(n, ins, outs):
                outs = [TensorInfo.of(v) for v in opdef.run(n, [None if t is None else t.value for t in ins])]
        except MixqError:
            raise
        except Exception as e:  # a shape rule tripping over bad attributes/shapes
            raise ShapeInferenceError(f"{n.describe()}: shape inference failed: {e}") from e
        for name, info in zip(n.outputs, outs):
            if name:
                graph.tensors[name] = info


def _propagates_value(node: Node, ins: list, outs: list) -> bool:
    if node.op in RANDOM_OPS or any(t is not None and t.value is None for t in ins):
        return False
    sizes = [t.value.size for t in ins if t is not None] + [int(np.prod(o.shape)) for o in outs]
    return all(o.value is None for o in outs) and max(sizes, default=0) <= MAX_PROPAGATED_ELEMENTS
