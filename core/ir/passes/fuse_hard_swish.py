"""HardSwish written out (Paddle2ONNX's PP-LCNet / PP-OCR, Keras MobileNetV3, hand-written code) ->
one HardSwish node:

    h = Clip(Add(x, 3), 0, 6)                            (Relu6 of x + 3)
    y = Div(Mul(x, h), 6) | Mul(Mul(x, h), 1/6) | Mul(x, Div(h, 6)) | Mul(x, Mul(h, 1/6))
    y = Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))

any operand order. Written out, its four nodes cost three quantization points and a division
the accelerator does not run (PP-OCRv4's recognizer: 28 of them, each a trip to the APU); fused,
it is one lookup table. The matched nodes whose values nobody else reads are then pruned.
"""
from __future__ import annotations

from core.ir.graph import Graph, Node
from core.ir.passes.patterns import near_scalar as _near
from core.ir.passes.patterns import other_input as _other
from core.ir.passes.patterns import replace_matches, scalar, sole_consumer


def fuse_hard_swish(graph: Graph) -> bool:
    return replace_matches(graph, ("Clip", "HardSigmoid"), _match)


def _gate_input(graph: Graph, gate: Node, producers) -> str | None:
    """x if ``gate`` is Clip(x + 3, 0, 6) or HardSigmoid(x) with alpha 1/6, beta 0.5 (both x/6 + 1/2
    clamped to [0, 1], the first times 6), else None."""
    if gate.op == "HardSigmoid":
        alpha, beta = gate.attrs.get("alpha", 0.2), gate.attrs.get("beta", 0.5)
        if abs(alpha - 1 / 6) <= 1e-6 and abs(beta - 0.5) <= 1e-6 and gate.inputs[0] not in graph.constants:
            return gate.inputs[0]
        return None
    if len(gate.inputs) != 3 or not (_near(graph, gate.inputs[2], 6.0) and scalar(graph, gate.inputs[1]) == 0.0):
        return None
    add = producers.get(gate.inputs[0])
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    for x, c in (add.inputs, add.inputs[::-1]):
        if x not in graph.constants and _near(graph, c, 3.0):
            return x
    return None


def _scaled(graph: Graph, node: Node | None, value: str, factor: float) -> bool:
    """``node`` computes value * factor (Mul by factor, or Div by 1 / factor)."""
    if node is None or len(node.inputs) != 2 or value not in node.inputs:
        return False
    if node.op == "Mul":
        return _near(graph, _other(node, value), factor)
    return node.op == "Div" and node.inputs[0] == value and _near(graph, node.inputs[1], 1.0 / factor)


def _match(graph: Graph, gate: Node, producers, consumers):
    x = _gate_input(graph, gate, producers)
    if x is None:
        return None
    h = gate.outputs[0]
    scale = 1.0 if gate.op == "HardSigmoid" else 1.0 / 6.0    # what h still needs to become HardSigmoid(x)
    tail = None
    first = sole_consumer(graph, h, consumers)
    if first is None:
        return None
    if first.op == "Mul" and sorted(first.inputs) == sorted([x, h]):
        if scale == 1.0:
            tail = first                                                         # x * HardSigmoid(x)
        else:
            nxt = sole_consumer(graph, first.outputs[0], consumers)
            tail = nxt if _scaled(graph, nxt, first.outputs[0], scale) else None  # (x * h) / 6
    elif scale != 1.0 and _scaled(graph, first, h, scale):
        nxt = sole_consumer(graph, first.outputs[0], consumers)
        if nxt is not None and nxt.op == "Mul" and sorted(nxt.inputs) == sorted([x, first.outputs[0]]):
            tail = nxt                                                           # x * (h / 6)
    if tail is None:
        return None
    fused = Node("HardSwish", [x], [tail.outputs[0]], {}, name=graph.unique_name(f"{gate.name}/hard_swish"),
                 source_name=gate.source_name or gate.name)
    return tail, fused
