"""Building small graphs by hand and checking that a rewrite leaves float outputs unchanged."""
from __future__ import annotations

import numpy as np

from core.ir.graph import Graph, Node, TensorInfo
from core.ir.shape_inference import infer_shapes
from core.runtime.float_interpreter import run_graph


def node(op: str, inputs: list[str], outputs: list[str] | str, name: str = "", **attrs) -> Node:
    outputs = [outputs] if isinstance(outputs, str) else outputs
    return Node(op, list(inputs), outputs, attrs, name=name or outputs[0], source_name=name or outputs[0])


def make_graph(inputs: dict, nodes: list[Node], outputs: list[str], constants: dict | None = None) -> Graph:
    """A sorted, shape-inferred float32 graph; ``inputs`` maps name -> shape."""
    g = Graph("test")
    g.opset = 18
    for name, shape in inputs.items():
        g.inputs.append(name)
        g.tensors[name] = TensorInfo(shape, np.float32)
    for name, value in (constants or {}).items():
        g.add_constant(name, np.asarray(value))
    g.nodes = list(nodes)
    g.outputs = list(outputs)
    g.toposort()
    infer_shapes(g)
    return g


def rand(*shape, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed + 7 * len(shape)).uniform(low, high, shape).astype(np.float32)


def feeds_for(graph: Graph, batch: int | None = None, seed: int = 1) -> dict[str, np.ndarray]:
    out = {}
    for k, name in enumerate(graph.inputs):
        shape = graph.tensors[name].shape
        if batch is not None:
            shape = (batch,) + shape[1:]
        out[name] = rand(*shape, seed=seed + k)
    return out


def assert_same_outputs(before: Graph, after: Graph, feeds: dict | None = None, rtol=1e-5, atol=1e-5) -> None:
    feeds = feeds if feeds is not None else feeds_for(before)
    want, got = run_graph(before, feeds), run_graph(after, feeds)
    assert sorted(got) == sorted(want) == sorted(after.outputs)
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]
