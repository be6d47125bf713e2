"""Scoring a model on an evaluation dataset of ``(inputs, label)`` pairs, in batches."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from core.data import update_digest
from core.errors import InputError, QuantizationConfigError

__all__ = ["Evaluator", "score_outputs"]


def score_outputs(accuracy_score: Any, outputs: list, labels: list) -> float:
    """``accuracy_score(outputs, labels)``, or an object's ``reset(); update(o, l)...; compute()``."""
    if all(callable(getattr(accuracy_score, a, None)) for a in ("reset", "update", "compute")):
        accuracy_score.reset()
        for o, label in zip(outputs, labels):
            accuracy_score.update(o, label)
        value = accuracy_score.compute()
    elif callable(accuracy_score):
        value = accuracy_score(outputs, labels)
    else:
        raise QuantizationConfigError(
            "accuracy_score must be a callable (outputs, labels) -> float or an object with "
            f"reset()/update(outputs, label)/compute(), got {type(accuracy_score).__name__}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise QuantizationConfigError(f"accuracy_score returned {type(value).__name__}, not a number") from None
    if not math.isfinite(value):
        raise QuantizationConfigError(f"accuracy_score returned {value}")
    return value


class Evaluator:
    """Holds an evaluation dataset (read once) and scores models on it.

    ``dataset``: an iterable of ``(inputs, label)`` pairs, ``inputs`` a dict ``{input name:
    array}`` with or without the batch dimension. Samples run in batches of ``batch_size``;
    ``outputs[i]`` passed to ``accuracy_score`` is the list of the model's output arrays for
    sample ``i`` (batch dimension kept), as ``Model.execute`` returns it for that sample alone.
    """

    def __init__(self, dataset: Iterable, input_names: list[str], input_shapes: Mapping[str, tuple],
                 accuracy_score: Any, *, batch_size: int = 32, fast_mode: bool = False):
        if dataset is None or isinstance(dataset, (str, bytes, Mapping)) or not isinstance(dataset, Iterable):
            raise InputError("evaluation_dataset must be an iterable of (inputs dict, label) pairs, "
                             f"got {type(dataset).__name__}")
        self.input_names = list(input_names)
        self.samples: list[dict[str, np.ndarray]] = []
        self.labels: list[Any] = []
        for i, pair in enumerate(dataset):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], Mapping)):
                raise InputError(
                    f"evaluation sample {i} must be an (inputs dict, label) pair, got {type(pair).__name__}"
                )
            inputs, label = pair
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise InputError(f"evaluation sample {i} is missing model input(s) {missing}")
            sample = {}
            for n in self.input_names:
                v = np.asarray(inputs[n])
                if v.ndim == len(input_shapes[n]) - 1:
                    v = v[None]
                sample[n] = v
            self.samples.append(sample)
            self.labels.append(label)
        if not self.samples:
            raise InputError("evaluation_dataset is empty")
        self.accuracy_score = accuracy_score
        self.batch_size = max(1, int(batch_size))
        self.fast_mode = bool(fast_mode)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for sample, label in zip(self.samples, self.labels):
            update_digest(h, sample, self.input_names)
            h.update(repr(label).encode())
        return h.hexdigest()

    def outputs(self, model) -> list[list[np.ndarray]]:
        """Per sample, the model's list of outputs; samples of equal shapes run batched."""
        result: list[list[np.ndarray] | None] = [None] * len(self.samples)
        i = 0
        while i < len(self.samples):
            shapes = {n: self.samples[i][n].shape[1:] for n in self.input_names}
            j = i
            while (j < len(self.samples) and j - i < self.batch_size
                   and all(self.samples[j][n].shape[1:] == shapes[n] for n in self.input_names)):
                j += 1
            batch = {n: np.concatenate([self.samples[k][n] for k in range(i, j)]) for n in self.input_names}
            outs = model.execute(batch, fast_mode=self.fast_mode)
            start = 0
            for k in range(i, j):
                b = self.samples[k][self.input_names[0]].shape[0]
                result[k] = [o[start:start + b] for o in outs]
                start += b
            i = j
        return result  # type: ignore[return-value]

    def __call__(self, model) -> float:
        return score_outputs(self.accuracy_score, self.outputs(model), self.labels)
