"""The operator registry: one ``OpDef`` per operator, one table for all of them.

Each operator module (conv.py, pool.py, ...) holds, for its ops, the shape rule,
the float kernel, whether the accelerator (MLA) runs it and how it is named in
partitioned graphs, its quantization rule (the integer kernel, the integer ONNX lowering and the
TFLite conversion: ``core/ops/quant_rules.py``), and registers an ``OpDef`` here. Adding an op
touches one file (docs/architecture.md, "Adding an operator").
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from core.errors import UnsupportedOperatorError

if TYPE_CHECKING:  # pragma: no cover
    from core.ir.graph import Graph, Node, TensorInfo
    from core.ops.quant_rules import QuantRule

InferFn = Callable[["Node", list[Optional["TensorInfo"]]], list["TensorInfo"]]
RunFn = Callable[["Node", list[np.ndarray | None]], list[np.ndarray]]


@dataclass(frozen=True)
class OpDef:
    """Everything mixq knows about one operator type.

    name     canonical op type (ONNX's name and semantics, at the newest opset mixq knows)
    infer    shape/dtype rule: (node, input infos) -> output infos. An input info has
             ``.value`` when that input is a constant (Reshape's shape, Slice's starts...).
             None stands for an omitted optional input.
    run      float kernel: (node, input arrays) -> output arrays (numpy only)
    mla      True / False, or (node, graph) -> bool: does the accelerator run this node?
    kind     snake-case name used in partitioned node names ("conv2d", "max_pool2d"),
             or a function of the node (fused conv -> "conv2d_add_relu")
    check    optional (node, input infos) -> None; raises UnsupportedOperatorError for
             variants mixq does not implement (e.g. Resize cubic), at load time
    upgrade  optional (node, graph) -> None; rewrites an older opset's form of the op
             (attributes that later became inputs) into the canonical form, using graph.opset
    static_inputs  input slots that must be constants at load time (Reshape's shape, Resize's
             scales...): mixq compiles static-shape programs
    quant    optional quantization rule (a ``core.ops.quant_rules.QuantRule``): how the op is
             quantized, run in integers, lowered to integer ONNX, converted from TFLite. None: an
             MLA node of this op runs as a float island (dequantize, float kernel, quantize)
    """

    name: str
    infer: InferFn
    run: RunFn
    mla: bool | Callable[[Node, Graph], bool] = False
    kind: str | Callable[[Node], str] | None = None
    check: Callable[[Node, list], None] | None = None
    upgrade: Callable[[Node, Graph], None] | None = None
    static_inputs: tuple[int, ...] = ()
    doc: str = ""
    quant: QuantRule | None = None

    def on_mla(self, node: Node, graph: Graph) -> bool:
        return self.mla(node, graph) if callable(self.mla) else bool(self.mla)

    def kind_of(self, node: Node) -> str:
        if callable(self.kind):
            return self.kind(node)
        return self.kind or _snake(self.name)


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def get_op(op_type: str, node: Any = None) -> OpDef:
    _load_all()
    try:
        return _REGISTRY[op_type]
    except KeyError:
        name = getattr(node, "source_name", "") or getattr(node, "name", "") or "?"
        raise UnsupportedOperatorError(op_type, name, f"mixq supports: {', '.join(sorted(_REGISTRY))}") from None


def supported_ops() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def supported_ops_markdown() -> str:
    """The supported-operator table, generated from the registry (docs/operators.md)."""
    _load_all()
    rows = ["| op | runs on | notes |", "|---|---|---|"]
    for name in sorted(_REGISTRY):
        d = _REGISTRY[name]
        where = "MLA" if d.mla is True else ("MLA or APU (see notes)" if callable(d.mla) else "APU")
        rows.append(f"| {name} | {where} | {d.doc} |")
    return "\n".join(rows) + "\n"


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


_loaded = False


def _load_all() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import core.ops  # noqa: F401  (imports every op module, which registers its ops)
