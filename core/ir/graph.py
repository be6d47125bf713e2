"""The graph IR: tensors, nodes, constants, a graph kept in topological order.

Canonical layout: mixq keeps ONNX's conventions internally — activations NCHW,
conv weights OIHW, dense weights as Gemm's B. Importers of other formats convert
at the graph's edges, so users pass inputs and get outputs in their source
model's own layout.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ModelLoadError


@dataclass
class TensorInfo:
    """Static facts about one tensor. ``value`` is set when the tensor is a constant."""

    shape: tuple[int, ...]
    dtype: np.dtype
    value: np.ndarray | None = None

    def __post_init__(self):
        self.shape = tuple(int(d) for d in self.shape)
        self.dtype = np.dtype(self.dtype)

    @classmethod
    def of(cls, array: np.ndarray, constant: bool = True) -> TensorInfo:
        array = np.asarray(array)
        return cls(array.shape, array.dtype, array if constant else None)


@dataclass
class Node:
    """One operator application. ``inputs`` may hold "" for an omitted optional input."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source_name: str = ""  # the node's name in the source model, for messages
    segment: str = ""  # "MLA_0", "APU_1", ... once the graph is partitioned

    def describe(self) -> str:
        src = f" (source node {self.source_name!r})" if self.source_name and self.source_name != self.name else ""
        return f"node {self.name!r} [{self.op}]{src}"


class Graph:
    """A dataflow graph. ``nodes`` is kept topologically sorted by the passes."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.opset: int = 0
        self.metadata: dict[str, Any] = {}

    # ---- queries -------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    uses.setdefault(i, []).append(n)
        return uses

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelLoadError(f"graph {self.name!r}: tensor {name!r} has no shape information") from None

    def node_by_name(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    # ---- edits ---------------------------------------------------------
    def unique_name(self, base: str) -> str:
        taken = set(self.tensors) | set(self.constants) | {n.name for n in self.nodes}
        if base not in taken:
            return base
        k = 1
        while f"{base}_{k}" in taken:
            k += 1
        return f"{base}_{k}"

    def add_constant(self, name: str, value: np.ndarray) -> str:
        value = np.asarray(value)
        self.constants[name] = value
        self.tensors[name] = TensorInfo.of(value)
        return name

    def replace_uses(self, old: str, new: str) -> None:
        """Point every consumer (and graph output) of tensor ``old`` at ``new``."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]

    def remove_unused(self) -> bool:
        """Drop nodes whose outputs nobody uses, and unreferenced constants."""
        changed = False
        while True:
            used = set(self.outputs)
            for n in self.nodes:
                used.update(i for i in n.inputs if i)
            keep = [n for n in self.nodes if any(o in used for o in n.outputs)]
            if len(keep) == len(self.nodes):
                break
            self.nodes = keep
            changed = True
        for c in [c for c in self.constants if c not in used]:
            del self.constants[c]
            self.tensors.pop(c, None)
            changed = True
        live = used | set(self.inputs) | {o for n in self.nodes for o in n.outputs}
        for t in [t for t in self.tensors if t not in live]:
            del self.tensors[t]
        return changed

    def toposort(self) -> None:
        """Stable topological sort: among ready nodes, the earliest in current order runs first."""
        available = set(self.inputs) | set(self.constants) | {""}
        remaining = list(self.nodes)
        ordered: list[Node] = []
        while remaining:
            progressed = False
            rest = []
            for n in remaining:
                if all(i in available for i in n.inputs):
                    ordered.append(n)
                    available.update(n.outputs)
                    progressed = True
                else:
                    rest.append(n)
            if not progressed:
                missing = sorted({i for n in rest for i in n.inputs if i not in available})
                raise ModelLoadError(
                    f"graph {self.name!r} has a cycle or dangling inputs: {rest[0].describe()} "
                    f"waits on {missing[:5]}"
                )
            remaining = rest
        self.nodes = ordered

    def copy(self) -> Graph:
        g = Graph(self.name)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.nodes = [copy.deepcopy(n) for n in self.nodes]
        g.constants = dict(self.constants)  # arrays are treated as immutable
        g.tensors = {k: TensorInfo(v.shape, v.dtype, v.value) for k, v in self.tensors.items()}
        g.opset = self.opset
        g.metadata = copy.deepcopy(self.metadata)
        return g

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes, inputs={self.inputs}, outputs={self.outputs})"

    def iter_ops(self) -> Iterable[str]:
        return (n.op for n in self.nodes)


RANDOM_OPS = (  # never evaluated at load time: that would freeze one draw
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli")
