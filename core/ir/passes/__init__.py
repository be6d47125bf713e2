"""Graph passes over the IR: each a function ``pass_name(graph) -> bool`` (True if it changed
the graph), run to a fixpoint by ``run_passes``; ``optimize`` is what ``load_model`` runs."""
from core.ir.graph import Graph
from core.ir.passes.batch_agnostic_concat import batch_agnostic_concat
from core.ir.passes.batch_agnostic_reshape import batch_agnostic_reshape
from core.ir.passes.fold_batchnorm import fold_batchnorm
from core.ir.passes.fold_constants import fold_constants
from core.ir.passes.fuse_bias_activation import fuse_bias_activation
from core.ir.passes.fuse_gelu import fuse_gelu
from core.ir.passes.fuse_layer_norm import fuse_layer_norm
from core.ir.passes.manager import DEFAULT_PIPELINE, run_passes
from core.ir.passes.partition import partition
from core.ir.passes.reduce_mean_to_pool import reduce_mean_to_pool
from core.ir.passes.remove_identity import remove_identity

__all__ = [
    "DEFAULT_PIPELINE",
    "batch_agnostic_concat",
    "batch_agnostic_reshape",
    "fold_batchnorm",
    "fold_constants",
    "fuse_bias_activation",
    "fuse_gelu",
    "fuse_layer_norm",
    "optimize",
    "partition",
    "reduce_mean_to_pool",
    "remove_identity",
    "run_passes",
]


def optimize(graph: Graph) -> Graph:
    """Simplify ``graph`` in place with the default pipeline, then partition it; returns it."""
    run_passes(graph, DEFAULT_PIPELINE)
    partition(graph)
    return graph
