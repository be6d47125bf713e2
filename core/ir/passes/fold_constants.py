"""Constant folding: nodes whose inputs are all constants become constants, and so does
``Shape`` of a tensor whose shape is statically known — after which the Gather / Concat /
Reshape / ... chains that exported PyTorch and Keras models compute shapes with fold too."""
from __future__ import annotations

import numpy as np

from core.errors import ExecutionError, MixqError
from core.ir.graph import RANDOM_OPS, Graph, Node
from core.ops.registry import get_op

# Ops whose output depends only on their input's shape and dtype, never its values.
SHAPE_ONLY_OPS = ("Shape", "Size")


def fold_constants(graph: Graph) -> bool:
    kept: list[Node] = []
    for n in graph.nodes:
        args = _constant_args(graph, n)
        if args is None:
            kept.append(n)
            continue
        try:
            outs = get_op(n.op, n).run(n, args)
        except MixqError:
            raise
        except Exception as e:
            raise ExecutionError(f"constant folding of {n.describe()} failed: {type(e).__name__}: {e}") from e
        # The constant takes the tensor's own name, so consumers and graph outputs stay wired.
        for name, value in zip(n.outputs, outs):
            if name:
                graph.add_constant(name, value)
    changed = len(kept) != len(graph.nodes)
    graph.nodes = kept
    return changed


def _constant_args(graph: Graph, n: Node) -> list | None:
    """The node's input arrays if it can be evaluated now, else None."""
    if n.op in RANDOM_OPS:
        return None
    if all(i == "" or i in graph.constants for i in n.inputs):
        return [graph.constants[i] if i else None for i in n.inputs]
    if n.op in SHAPE_ONLY_OPS and n.inputs[0] in graph.tensors:
        info = graph.tensors[n.inputs[0]]
        # A zero-stride stand-in with the right shape and dtype: no memory, no values read.
        return [np.broadcast_to(np.zeros((), info.dtype), info.shape)]
    return None
