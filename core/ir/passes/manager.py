"""Run graph passes to a fixpoint, keeping the graph sorted, pruned and shape-inferred."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from core.ir.graph import Graph
from core.ir.passes.batch_agnostic_concat import batch_agnostic_concat
from core.ir.passes.batch_agnostic_reshape import batch_agnostic_reshape
from core.ir.passes.fold_batchnorm import fold_batchnorm
from core.ir.passes.fold_constants import fold_constants
from core.ir.passes.fuse_bias_activation import fuse_bias_activation
from core.ir.passes.fuse_gelu import fuse_gelu
from core.ir.passes.fuse_hard_swish import fuse_hard_swish
from core.ir.passes.fuse_layer_norm import fuse_layer_norm
from core.ir.passes.reduce_mean_to_pool import reduce_mean_to_pool
from core.ir.passes.remove_identity import remove_identity
from core.ir.shape_inference import infer_shapes

log = logging.getLogger("mixq")

Pass = Callable[[Graph], bool]

# The order load_model uses. Constants fold first so shape sub-graphs are gone before
# pattern matching; written-out LayerNorm fuses before its ReduceMeans could become pools;
# batch-norm folds before fusion so Relu/Clip fuse onto the folded conv.
DEFAULT_PIPELINE: tuple[Pass, ...] = (
    remove_identity,
    fold_constants,
    fuse_layer_norm,
    fuse_gelu,
    fuse_hard_swish,
    reduce_mean_to_pool,
    fold_batchnorm,
    fuse_bias_activation,
    batch_agnostic_reshape,
    batch_agnostic_concat,
)


def run_passes(graph: Graph, passes: Sequence[Pass] = DEFAULT_PIPELINE, max_iterations: int = 10) -> bool:
    """Repeat ``passes`` in order until none changes the graph (at most ``max_iterations``
    rounds); after each change the graph is re-sorted, pruned and shape-inferred.
    Returns True if anything changed."""
    changed_any = False
    for _ in range(max_iterations):
        changed = False
        for p in passes:
            if p(graph):
                changed = True
                graph.toposort()
                graph.remove_unused()
                infer_shapes(graph)
        if not changed:
            return changed_any
        changed_any = True
    log.warning("graph passes did not reach a fixpoint after %d rounds on %r", max_iterations, graph.name)
    return changed_any
