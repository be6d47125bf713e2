"""Checking model inputs: one set of rules for ``LoadedNet.execute``, ``Model.execute``, calibration
and analysis.

A model's inputs are an :class:`InputSignature` (names, shapes with the batch first, dtypes).
Inputs pass when the names match exactly, the dtype kind (float / integer / bool) matches (values
are cast to the model's dtype), the rank and every dimension but the batch match (any batch size
>= 1 runs), and -- where asked -- samples may lack the batch dimension and floats must be finite.
Every fault raises :class:`core.errors.InputError` naming the sample (when there are several) and
the input.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from core.ir.graph import Graph

__all__ = ["DTYPE_KINDS", "InputSignature", "check_samples"]

DTYPE_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}   # numpy kind -> what must match


@dataclass(frozen=True)
class InputSignature:
    """The inputs a model takes: ``shapes`` batch first (negative: any size), ``dtypes`` to cast
    to (None: any float / integer / bool array, not cast)."""

    names: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype] | None = None

    @classmethod
    def of(cls, graph: Graph) -> InputSignature:
        """The graph's inputs with their declared shapes and dtypes."""
        return cls(tuple(graph.inputs), {n: tuple(graph.tensors[n].shape) for n in graph.inputs},
                   {n: np.dtype(graph.tensors[n].dtype) for n in graph.inputs})

    def check(self, inputs: Any, *, sample: str | None = None, unbatched: bool = False,
              finite: bool = False) -> dict[str, np.ndarray]:
        """One set of inputs -> ``{name: array}`` in the signature's order and dtypes.

        ``sample`` names it in messages (e.g. ``"calibration sample 3"``); ``unbatched`` accepts
        arrays without the batch dimension (one is added); ``finite`` refuses NaN/Inf floats.
        """
        at = f"{sample}: " if sample else ""
        if not isinstance(inputs, Mapping):
            raise InputError(f"{sample or 'inputs'} must be a dict of input name -> array, got {type(inputs).__name__}")
        unknown = [k for k in inputs if k not in self.shapes]
        if unknown:
            raise InputError(f"{at}unknown input name(s) {unknown}; the model's inputs are {list(self.names)}")
        missing = [k for k in self.names if k not in inputs]
        if missing:
            raise InputError(f"{at}missing input(s) {missing}; the model's inputs are {list(self.names)}")
        return {name: self._conform(name, inputs[name], at, unbatched, finite) for name in self.names}

    def _conform(self, name: str, given: Any, at: str, unbatched: bool, finite: bool) -> np.ndarray:
        try:
            value = np.asarray(given)
        except Exception as e:
            raise InputError(f"{at}input {name!r} cannot be converted to an array: {e}") from None
        want = None if self.dtypes is None else self.dtypes[name]
        # other dtypes (bfloat16, float8 from ml_dtypes) pass only where the model declares that very dtype
        if value.dtype.kind not in DTYPE_KINDS and value.dtype != want:
            raise InputError(f"{at}input {name!r} has unsupported dtype {value.dtype}")
        if want is not None and DTYPE_KINDS.get(value.dtype.kind) != DTYPE_KINDS.get(want.kind):
            raise InputError(f"{at}input {name!r} expects {want.name}, got {value.dtype.name} array")
        shape = self.shapes[name]
        if unbatched and len(shape) >= 1 and value.ndim == len(shape) - 1:
            value = value[np.newaxis]                # a sample without the batch dimension
        if value.ndim != len(shape):
            raise InputError(f"{at}input {name!r} expects shape {shape} (rank {len(shape)}"
                             + (f", or {shape[1:]} without the batch dimension" if unbatched else "")
                             + f"), got shape {np.shape(given)}")
        # dimension 0 is the batch: any size runs; every other dimension must match
        if (value.ndim and value.shape[0] < 1) or any(d >= 0 and d != v for d, v in zip(shape[1:], value.shape[1:])):
            raise InputError(f"{at}input {name!r} expects shape {shape} (any batch size"
                             + (f", or {shape[1:]} without it" if unbatched else "")
                             + f"), got shape {np.shape(given)}")
        if want is not None:
            value = value.astype(want, copy=False)
        if finite and value.dtype.kind == "f":
            ok = np.isfinite(value)
            if not ok.all():
                raise InputError(f"{at}input {name!r} holds {value.size - int(np.count_nonzero(ok))} NaN/Inf "
                                 f"value(s) of {value.size}: quantization needs finite inputs")
        return value


def check_samples(samples: Iterable, signature: InputSignature, *, what: str, unbatched: bool = True,
                  finite: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Check samples one at a time as they are read (``samples`` may be a generator), naming
    each as ``"<what> <index>"`` in errors."""
    for i, sample in enumerate(samples):
        yield signature.check(sample, sample=f"{what} {i}", unbatched=unbatched, finite=finite)
