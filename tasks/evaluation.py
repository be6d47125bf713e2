"""Scoring quantized models against the float model (plain functions; the tasks wrap them).

* ``accuracy``: top-1 against the data's labels when it has some, else ``agreement``;
* ``agreement``: the share of samples whose top-1 equals FP32's top-1;
* ``logit_sqnr_db``: ``10*log10(sum(fp32**2) / sum((quantized - fp32)**2))`` over the first
  output (capped at 200 dB when identical).
"""
from __future__ import annotations

import functools
import hashlib
import math
import os

import numpy as np

from tasks.data import Samples, load_samples, sha256_file

__all__ = ["Scorer", "file_stamp", "get_net", "int16_node_count", "scorer_for", "SQNR_CAP_DB"]

SQNR_CAP_DB = 200.0
BATCH = 32


def file_stamp(path: str):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def get_net(model_path: str):
    """The LoadedNet of a model file (memoized per process while the file is unchanged)."""
    return _get_net(file_stamp(model_path))


@functools.lru_cache(maxsize=4)
def _get_net(stamp):
    from core import load_model, source_for_path

    return load_model(source_for_path(stamp[0]))      # the importer that reads this file (ONNX, TFLite, ...)


@functools.lru_cache(maxsize=32)
def model_sha256(stamp) -> str:
    """sha256 of a model file, or of a model directory's files (a SavedModel) with their names."""
    path = stamp[0]
    if not os.path.isdir(path):
        return sha256_file(path)
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            full = os.path.join(folder, f)
            digest.update(os.path.relpath(full, path).encode() + b"\0" + sha256_file(full).encode())
    return digest.hexdigest()


def _first_output(outputs, n: int) -> np.ndarray:
    return np.asarray(outputs[0], np.float64).reshape(n, -1)


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    noise = float(((value - reference) ** 2).sum())
    signal = float((reference ** 2).sum())
    if noise <= 0.0:
        return SQNR_CAP_DB
    if signal <= 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


class Scorer:
    """FP32 reference logits of a data set and the scores of a model's outputs against them.

    ``dataset`` is the ``(inputs dict, label)`` list core's searches take, with the sample's
    index as its label, so ``__call__(outputs, labels)`` (core's ``accuracy_score``) can look up
    both the true label and FP32's logits. The metrics of the last scoring stay in ``last``.
    """

    def __init__(self, net, samples: Samples):
        self.input_name = net.input_names[0]
        x = samples.inputs
        self.samples = samples
        self.reference = np.concatenate([
            _first_output(net.execute({self.input_name: x[i:i + BATCH]}), len(x[i:i + BATCH]))
            for i in range(0, len(x), BATCH)])
        self.reference_top1 = self.reference.argmax(1)
        self.labels = None if samples.labels is None else np.asarray(samples.labels).reshape(len(x), -1)[:, 0]
        self.metric = "accuracy" if self.labels is not None else "agreement"
        self.dataset = [({self.input_name: x[i:i + 1]}, i) for i in range(len(x))]
        self.last: dict = {}

    def scores(self, logits: np.ndarray, index: np.ndarray | None = None) -> dict:
        index = np.arange(len(self.reference)) if index is None else np.asarray(index)
        ref = self.reference[index]
        top1 = logits.argmax(1)
        agreement = float(np.mean(top1 == self.reference_top1[index]))
        out = {"agreement": agreement, "logit_sqnr_db": sqnr_db(ref, logits), "samples": int(len(index)),
               "metric": self.metric}
        if self.labels is not None:
            out["top1_accuracy"] = float(np.mean(top1 == self.labels[index]))
            out["fp32_top1_accuracy"] = float(np.mean(self.reference_top1[index] == self.labels[index]))
        out["accuracy"] = out.get("top1_accuracy", agreement)
        return out

    def __call__(self, outputs, labels) -> float:
        logits = np.concatenate([_first_output(o, len(o[0])) for o in outputs])
        self.last = self.scores(logits, np.asarray(labels, int))
        return self.last["accuracy"]

    def evaluate(self, model, fast_mode: bool = False) -> dict:
        x = self.samples.inputs
        logits = np.concatenate([
            _first_output(model.execute({self.input_name: x[i:i + BATCH]}, fast_mode=fast_mode), len(x[i:i + BATCH]))
            for i in range(0, len(x), BATCH)])
        return self.scores(logits)


def scorer_for(model_path: str, data: dict) -> Scorer:
    """The Scorer of a model file and a data spec (memoized per process)."""
    samples = load_samples(data)
    return _scorer(file_stamp(model_path), samples.spec, samples.digest())


@functools.lru_cache(maxsize=4)
def _scorer(stamp, spec_text: str, digest: str) -> Scorer:
    import json

    return Scorer(_get_net(stamp), load_samples(json.loads(spec_text)))


def int16_node_names(model) -> list[str]:
    """Integer nodes the model's configuration puts at INT16 (its custom per-node precision or
    a 16-bit activation scheme); without a stored configuration, nodes with 16-bit outputs. (A
    node feeding an INT16 node may also get a 16-bit output tensor: it is not counted.)"""
    from core import QuantizationPrecision

    prog = model.program
    params = getattr(prog, "params", None)
    out = []
    for n in prog.graph.nodes:
        if prog.kinds.get(n.name) != "int":
            continue
        if params is not None:
            if params.precision_for(n.name) is QuantizationPrecision.INT_16:
                out.append(n.name)
        else:
            bits = [prog.tensors[o].bits for o in n.outputs if o in prog.tensors]
            if bits and max(bits) == 16:
                out.append(n.name)
    return out


def int16_node_count(model) -> int:
    return len(int16_node_names(model))
