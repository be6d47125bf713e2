"""Bit-accurate execution of a :class:`~core.quantization.quantizer.QuantizedProgram`.

* Graph inputs (and APU outputs) read by MLA nodes are quantized with
  ``clamp(np.round(x / scale) + zp)`` (float64 division, ``np.round`` = round half to even).
* MLA nodes run their integer kernel, their op's ``OpDef.quant.run_int`` (exact integer
  accumulation, the requantization arithmetic of the configured mode); activations are stored
  as int8 / int16, in whatever memory layout the kernel produced (convs: channels-last behind an
  NCHW view; kernels take any strides).
  Conv/Gemm/MatMul requantize block by block inside the kernel (``requant=``, bit-identical
  to ``requantize`` of the accumulators); 8-bit Add/Sub/Mul look their results up in a table
  the kernel computes from its own arithmetic.
* Float islands and APU nodes run the float kernel on dequantized inputs (a float island's graph
  output then leaves through its tensor's integer grid, as the MLA holds it); graph outputs are
  dequantized to float32 (``(q - zp) * scale``).

Every integer step is exact and elementwise or per-sample, so results are bit-identical for any
batch size or batch split.

``fast_mode=True``: Conv/Gemm/MatMul compute ``(x - zp) * w_q`` in float32 BLAS (exact while
the accumulators stay below 2**24, approximate beyond) and requantize with the *real*
multiplier in float32, ``clamp(np.rint(acc * real + (bias_q * real + zp)))``, instead of the
fixed-point one. It differs from the exact path by off-by-one output codes where the
fixed-point multiplier's rounding (sima: relative error <= 2**-15) or float32 rounding flips a
tie; those differences propagate. The tests bound it (MNIST: dequantized logits within 4
output steps, >= 99% argmax agreement with the exact path). All other ops use the exact
kernels in both modes.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.errors import ExecutionError, MixqError
from core.ir.graph import Node
from core.ops.registry import get_op
from core.quantization.quantizer import QuantizedProgram, TensorQuant

__all__ = ["IntegerContext", "run_program"]


def _dtype(tq: TensorQuant):
    return np.dtype(np.int8 if tq.bits == 8 else np.int16 if tq.bits == 16 else np.int64)


def _storage(q: np.ndarray, tq: TensorQuant) -> np.ndarray:
    # kernels take any strides: a conv's channels-last result stays as it is (no transposing copy)
    q = np.asarray(q)
    dtype = _dtype(tq)
    return q if q.dtype == dtype else q.astype(dtype)


def run_program(
    program: QuantizedProgram, feeds: Mapping[str, np.ndarray], fast_mode: bool = False
) -> dict[str, np.ndarray]:
    """Run ``program`` on ``feeds`` (graph input name -> float array, already validated);
    returns every graph output as float32, by name."""
    ctx = IntegerContext(program, {}, dict(feeds), fast_mode)
    for n in program.graph.nodes:
        ctx.run_node(n)
    return ctx.outputs()


class IntegerContext:
    """The tensors of one run of a program: integer ones (``qenv``, stored as each tensor's integer
    type) and float ones (``fenv``). ``run_node`` runs one node; an op's integer kernel
    (``QuantRule.run_int``) reads ``int(t)`` (a float tensor is quantized on first use) and
    stores ``set_int`` / ``set_float``."""

    def __init__(self, program: QuantizedProgram, qenv: dict, fenv: dict, fast_mode: bool = False):
        self.program = program
        self.tensors = program.tensors
        self.consts = program.graph.constants
        self.mode = program.requantization_mode
        self.fast_mode = fast_mode
        self.qenv = qenv
        self.fenv = fenv

    # ---- tensors
    def int(self, t: str) -> np.ndarray:
        if t not in self.qenv:
            if t not in self.fenv:
                raise ExecutionError(f"tensor {t!r} was not computed")
            self.qenv[t] = _storage(self.tensors[t].quantize(self.fenv[t]), self.tensors[t])
        return self.qenv[t]

    def float_of(self, t: str) -> np.ndarray:
        if t in self.consts:
            return self.consts[t]
        if t not in self.fenv:
            if t not in self.qenv:
                raise ExecutionError(f"tensor {t!r} was not computed")
            self.fenv[t] = self.tensors[t].dequantize(self.qenv[t])
        return self.fenv[t]

    def activations(self, node: Node) -> list[str]:
        return [i for i in node.inputs if i and i not in self.consts]

    @staticmethod
    def dtype_of(tq: TensorQuant) -> np.dtype:
        return _dtype(tq)

    def set_int(self, t: str, y: np.ndarray) -> None:
        self.qenv[t] = _storage(y, self.tensors[t])

    def set_float(self, t: str, y: np.ndarray) -> None:
        self.fenv[t] = y

    # ---- nodes
    def run_node(self, n: Node) -> None:
        """One node: an integer node through its op's rule, a float island or APU node through the
        float kernel (failures other than mixq's own name the node)."""
        kind = self.program.kinds[n.name]
        try:
            if kind == "int":
                self.run_integer(n)
            else:
                self.run_float(n, island=kind == "float")
        except MixqError:
            raise
        except Exception as e:
            raise ExecutionError(f"{n.describe()} failed in the integer program: {type(e).__name__}: {e}") from e

    def run_integer(self, n: Node) -> None:
        rule = get_op(n.op, n).quant
        if rule is None:
            raise ExecutionError(f"{n.describe()}: op {n.op} has no integer kernel")
        rule.run_int(n, self.program.constants[n.name], self)

    def run_float(self, n: Node, island: bool) -> None:
        """A float island on the MLA reads its inputs as the MLA holds them (quantized); an APU
        node reads float tensors (graph inputs unquantized)."""
        tq = self.tensors
        if island:
            args = [None if not i else tq[i].dequantize(self.int(i)) if i in tq else self.float_of(i) for i in n.inputs]
        else:
            args = [self.float_of(i) if i else None for i in n.inputs]
        for name, value in zip(n.outputs, get_op(n.op, n).run(n, args)):
            if name:
                self.fenv[name] = value

    def outputs(self) -> dict[str, np.ndarray]:
        """Every graph output as float32; a float island's output is an MLA tensor too, so it
        leaves through its integer grid."""
        p, tq = self.program, self.tensors
        island_outputs = {o for n in p.graph.nodes if p.kinds[n.name] == "float" for o in n.outputs
                          if o in tq and tq[o].bits in (8, 16)}
        return {o: np.asarray(tq[o].dequantize(self.int(o)) if o in island_outputs else self.float_of(o), np.float32)
                for o in p.graph.outputs}
