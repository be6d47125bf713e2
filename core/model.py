"""``Model``: a quantized model (the result of ``LoadedNet.quantize``) that runs bit-accurately."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from core.ir.graph import Graph
from core.loaded_net import check_graph_inputs
from core.quantization.quantizer import QuantizedProgram


class Model:
    """A quantized model: ``name``, the integer ``program`` and the float graph it came from."""

    def __init__(self, name: str, program: QuantizedProgram, float_graph: Graph):
        self.name = name
        self.program = program
        self.float_graph = float_graph

    @property
    def input_names(self) -> list[str]:
        return list(self.program.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.program.graph.outputs)

    def execute(self, inputs: Mapping[str, Any], fast_mode: bool = False) -> list[np.ndarray]:
        """Run the quantized model on one set of inputs (any batch size); float32 outputs in
        graph-output order. Exact integer arithmetic unless ``fast_mode`` (see
        :mod:`core.runtime.integer_interpreter` for its tolerance)."""
        from core.runtime.integer_interpreter import run_program

        feeds = check_graph_inputs(self.program.graph, inputs)
        env = run_program(self.program, feeds, fast_mode=bool(fast_mode))
        return [env[o] for o in self.program.graph.outputs]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.program!r})"
