"""The specification's data helpers: ``DataGenerator``, ``convert_data_generator_to_iterable``
and ``length_hinted``.

They turn a dict of per-input sample arrays into the iterable of per-sample dicts that
``LoadedNet.quantize(calibration_data=...)`` and ``execute_in_accelerator_mode(input_data=...)``
take, as in the specification's accelerator-mode example::

    input_generator = DataGenerator({"input_tensor": dataset["data"]})
    input_generator.map({"input_tensor": pre_process_func})     # return value may be ignored
    input_iterable = convert_data_generator_to_iterable(input_generator, length_limit=NUM_SAMPLES)
    loaded_net.quantize(length_hinted(NUM_SAMPLES, input_iterable), default_quantization, ...)

A sample may lack the model's batch dimension (one image ``(H, W, C)`` for an input of shape
``(1, H, W, C)``): the calibration helper (``core.quantization.calibration.iter_calibration_batches``)
adds it. Nothing here copies the data set: samples are indexed and mapped lazily, one at a time.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import InputError

__all__ = ["DataGenerator", "convert_data_generator_to_iterable", "length_hinted"]


def _count(value: Any, name: str) -> int:
    """A non-negative int (bools refused); ``name`` is the parameter named in the error."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a non-negative int, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be a non-negative int, got {value!r}") from None
    if n < 0:
        raise InputError(f"{name} must be a non-negative int, got {n}")
    return n


class DataGenerator:
    """Per-sample view of a dict of arrays: ``{name: array}`` with one row per sample.

    Iterating yields ``{name: array[i]}`` for i in ``range(len(self))``; ``gen[i]`` gives one sample.
    Values may be numpy arrays (sample axis 0) or sequences (lists of arrays of varying shapes,
    e.g. images before resizing). Every value must hold the same number of samples.
    """

    def __init__(self, data: Mapping[str, Any]):
        if not isinstance(data, Mapping) or not data:
            raise InputError(
                "DataGenerator takes a non-empty dict of input name -> array of samples, "
                f"got {type(data).__name__ if not isinstance(data, Mapping) else 'an empty dict'}"
            )
        columns: dict[str, Any] = {}
        for name, value in data.items():
            if not isinstance(name, str):
                raise InputError(f"DataGenerator input names must be str, got {name!r}")
            if not isinstance(value, (np.ndarray, Sequence)) or isinstance(value, (str, bytes)):
                value = np.asarray(value)
            if isinstance(value, np.ndarray) and value.ndim == 0:
                raise InputError(f"DataGenerator input {name!r} must hold samples along axis 0, got a scalar")
            columns[name] = value
        lengths = {name: len(v) for name, v in columns.items()}
        if len(set(lengths.values())) != 1:
            raise InputError(f"DataGenerator inputs hold different numbers of samples: {lengths}")
        self._columns = columns
        self._length = next(iter(lengths.values()))
        # Per input, the functions map() added, applied in the order given.
        self._maps: dict[str, list[Callable[[Any], Any]]] = {name: [] for name in columns}

    @property
    def input_names(self) -> list[str]:
        return list(self._columns)

    def map(self, functions: Mapping[str, Callable[[Any], Any]]) -> DataGenerator:
        """Apply ``functions[name]`` to input ``name`` of every sample, lazily, after any earlier map.

        Mutates this generator (the specification calls it and ignores the result) and returns it.
        """
        if not isinstance(functions, Mapping):
            raise InputError(
                f"DataGenerator.map takes a dict of input name -> function, got {type(functions).__name__}"
            )
        for name, fn in functions.items():
            if name not in self._columns:
                raise InputError(f"DataGenerator.map: unknown input {name!r}; the inputs are {self.input_names}")
            if not callable(fn):
                raise InputError(f"DataGenerator.map: the function for input {name!r} is not callable: {fn!r}")
        for name, fn in functions.items():
            self._maps[name].append(fn)
        return self

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = operator.index(index)
        if i < 0:
            i += self._length
        if not 0 <= i < self._length:
            raise IndexError(f"sample index {index} out of range for {self._length} samples")
        sample = {}
        for name, column in self._columns.items():
            value = column[i]
            for fn in self._maps[name]:
                value = fn(value)
            sample[name] = value
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._length):
            yield self[i]

    def __repr__(self) -> str:
        return f"DataGenerator({self.input_names}, {self._length} samples)"


class _LimitedIterable:
    """Re-iterable, sized view of the first ``length`` samples of a generator."""

    def __init__(self, source: Iterable, length: int | None):
        self._source = source
        self._length = length

    def __iter__(self) -> Iterator:
        for i, item in enumerate(self._source):
            if self._length is not None and i >= self._length:
                return
            yield item

    def __len__(self) -> int:
        if self._length is None:
            return len(self._source)
        try:
            return min(self._length, len(self._source))
        except TypeError:  # a source without len(): the limit is the best hint there is
            return self._length


def convert_data_generator_to_iterable(data_generator: Iterable, length_limit: int | None = None) -> Iterable:
    """An iterable over (at most ``length_limit``) samples of ``data_generator``.

    The result can be iterated more than once (calibration, then evaluation) and has ``len()``.
    """
    if not isinstance(data_generator, Iterable):
        raise InputError(
            f"convert_data_generator_to_iterable takes a DataGenerator, got {type(data_generator).__name__}"
        )
    limit = None if length_limit is None else _count(length_limit, "length_limit")
    return _LimitedIterable(data_generator, limit)


class _LengthHinted:
    """An iterable that also reports ``len()`` (a hint for progress reporting)."""

    def __init__(self, length: int, iterable: Iterable):
        self._length = length
        self._iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self._iterable)

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"length_hinted({self._length}, {self._iterable!r})"


def length_hinted(length: int, iterable: Iterable) -> Iterable:
    """Wrap ``iterable`` so that ``len()`` returns ``length``.

    The length is a hint (for progress bars); iteration is not cut or padded to it.
    """
    n = _count(length, "length")
    if not isinstance(iterable, Iterable):
        raise InputError(f"length_hinted takes an iterable, got {type(iterable).__name__}")
    return _LengthHinted(n, iterable)


def update_digest(digest, arrays: Mapping[str, Any], names: Iterable[str]) -> None:
    """Feed ``arrays[name]`` for each of ``names`` (in that order) to a hashlib ``digest``: the
    name, dtype, shape and bytes, so equal data gives equal fingerprints (calibration reuse,
    search study names)."""
    for name in names:
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value)   # the buffer protocol: no copy
