"""Float execution of a Graph with the registry's numpy kernels."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from core.errors import ExecutionError, MixqError
from core.ir.graph import Graph
from core.ops.registry import get_op


def run_graph(
    graph: Graph,
    feeds: Mapping[str, np.ndarray],
    keep: tuple[str, ...] = (),
    on_tensor: Callable[[str, np.ndarray], None] | None = None,
) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``feeds`` (graph input name -> array); returns graph outputs
    (and any tensor named in ``keep``) by name. Intermediates are freed after their last use.
    ``on_tensor(name, value)`` sees every node output as it is produced (calibration observes
    tensors this way without keeping them); if it returns an array, that array replaces the
    value downstream (sensitivity analysis simulates one tensor's quantization this way)."""
    env: dict[str, np.ndarray] = dict(graph.constants)
    env.update(feeds)
    wanted = set(graph.outputs) | set(keep)
    last_use: dict[str, int] = {}
    for k, n in enumerate(graph.nodes):
        for i in n.inputs:
            last_use[i] = k
    for k, n in enumerate(graph.nodes):
        args = [env[i] if i else None for i in n.inputs]
        try:
            outs = get_op(n.op, n).run(n, args)
        except MixqError:
            raise
        except Exception as e:
            shapes = [None if a is None else tuple(np.shape(a)) for a in args]
            raise ExecutionError(f"{n.describe()} failed on inputs of shapes {shapes}: {type(e).__name__}: {e}") from e
        for name, value in zip(n.outputs, outs):
            if name:
                env[name] = value
                if on_tensor is not None:
                    replacement = on_tensor(name, value)
                    if replacement is not None:
                        env[name] = replacement
        for i in n.inputs:
            if i and last_use.get(i) == k and i not in wanted and i not in graph.constants:
                env.pop(i, None)
    return {name: env[name] for name in wanted}
