"""The plain data of a quantized program: :class:`TensorQuant` per integer tensor and
:class:`NodeQuant` per node (what its integer kernel needs). Both are saved by
:mod:`core.formats.program_io` through its class allow-list; neither imports an op module, so the
op modules' quantization rules (:mod:`core.ops.quant_rules`) can build them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import QuantizationConfigError

__all__ = ["NodeQuant", "TensorQuant"]


@dataclass(frozen=True)
class TensorQuant:
    """``real = (q - zero_point) * scale``; ``q`` a signed ``bits``-bit integer (32: accumulator)."""

    scale: float
    zero_point: int
    bits: int
    # how ``quantize`` rounds float inputs: "half_even" (np.round of x / scale in float64) or
    # "tflite" (TFLite's QUANTIZE: x / scale in float32, TfLiteRound = half away from zero)
    rounding: str = "half_even"

    def __post_init__(self):
        if self.rounding not in ("half_even", "tflite"):
            raise QuantizationConfigError(
                f"TensorQuant.rounding must be 'half_even' or 'tflite', got {self.rounding!r}"
            )

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """``clamp(np.round(x / scale) + zp)`` as int64; ``np.round`` rounds half to even, in
        float64 (exact for float32 inputs up to the final rounding, so batch-independent).
        ``rounding="tflite"``: TFLite's QUANTIZE, ``x / scale`` in float32 rounded half away from zero."""
        if self.rounding == "tflite":
            # reference_ops::AffineQuantize: static_cast<int32>(TfLiteRound(val / scale)) + zp,
            # the division in float32; the rounding of that float32 quotient is exact in float64
            with np.errstate(over="ignore", invalid="ignore"):
                d = (np.asarray(x, np.float32) / np.float32(self.scale)).astype(np.float64)
            q = np.sign(d) * np.floor(np.abs(d) + 0.5)
        else:
            q = np.round(np.asarray(x, np.float64) / self.scale)
        return np.clip(q, self.qmin - self.zero_point, self.qmax - self.zero_point).astype(np.int64) + self.zero_point

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q, np.int64) - self.zero_point) * np.float64(self.scale)).astype(np.float32)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@dataclass(eq=False)
class NodeQuant:
    """The integer constants of one node (``QuantizedProgram.constants[node]``). Every field is
    optional: an op's quantization rule sets the ones its kernel reads, None means "not used".

    Dense ops (Conv / Gemm / MatMul):
      w_q              quantized weights (int8 / int16), in the float weights' layout
      w_scale          per-output-channel weight scales (float64)
      acc_scale        ``s_in * w_scale``: the accumulator's scale per output channel
      bias_q           the bias on the accumulator's grid (int32 for 8-bit inputs, int64 for 16), or None
      output_int32     True: the accumulator leaves the MLA dequantized (a final node); False: requantized
      multiplier, shift  the fixed-point requantization per output channel (int64 arrays)
      real_multiplier  ``acc_scale / s_out``, the real factor (fast mode, TFLite float requantization)
      tflite_rounding  TFLite's MultiplyByQuantizedMultiplier variant: "double" (8-bit) or "int64" (16-bit)
      tflite_requant   "float": TFLite's FULLY_CONNECTED ``round(double(acc) * real)`` instead of fixed point
    Any requantizing op:
      act_min, act_max the integer clamp (output range narrowed by a fused Relu / Clip)
      act_channel_bounds  (mins, maxs) int64 arrays: per-channel clamps (channel-equalized Clip)
      qmin, qmax       the output type's range, for kernels that clamp to it (AveragePool, TFLite kernels)
    Op specific:
      pad_value_q      Pad: the quantized constant_value
      const_pos, const_q, const_scale, const_zp   Add/Sub/Mul of converted TFLite models: the integer
                       constant operand (its slot, codes, scale, zero point)
      requant_inputs   Concat of converted TFLite models: per input None or (multiplier, shift)
      tflite_kernel    a TFLite reference kernel of a converted model ("requantize", "mean_quantized",
                       "logistic_int8", "softmax_int8"); beta, axis: Softmax's parameters
      kernel           mixq's integer kernel of an attention op: "matmul_int" (MatMul of two
                       activations: multiplier, shift, real_multiplier, tflite_rounding, act_min,
                       act_max) or "softmax_int" (Softmax with a 16-bit output: exp_table, axis, and
                       ``shift``: the output's extra bits, scale 2**-(15 + shift))
      exp_table        softmax_int's table ``round(exp(-s_in * j) * 2**20)``, int32
      table            a lookup-table kernel (``TableRule``): the output code of every input code
                       ``qmin .. qmax`` (int8 / int16, the output's type)
    """

    w_q: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    acc_scale: np.ndarray | None = None
    bias_q: np.ndarray | None = None
    output_int32: bool | None = None
    multiplier: Any = None
    shift: Any = None
    real_multiplier: Any = None
    tflite_rounding: str | None = None
    tflite_requant: str | None = None
    act_min: int | None = None
    act_max: int | None = None
    act_channel_bounds: tuple[np.ndarray, np.ndarray] | None = None
    qmin: int | None = None
    qmax: int | None = None
    pad_value_q: int | None = None
    const_pos: int | None = None
    const_q: np.ndarray | None = None
    const_scale: float | None = None
    const_zp: int | None = None
    requant_inputs: list | None = None
    tflite_kernel: str | None = None
    beta: float | None = None
    axis: int | None = None
    kernel: str | None = None
    exp_table: np.ndarray | None = None
    table: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        # arrays compare by dtype, shape and values (a dataclass's == would compare them elementwise)
        if not isinstance(other, NodeQuant):
            return NotImplemented
        return all(_same_value(getattr(self, f), getattr(other, f)) for f in self.field_names())

    __hash__ = None  # mutable

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeQuant:
        """A node's constants as the program format before NodeQuant stored them (a dict of these
        field names); unknown keys raise ``KeyError`` naming them."""
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise KeyError(f"unknown node constant(s) {unknown}")
        return cls(**d)

    @property
    def has_weights(self) -> bool:
        return self.w_q is not None
