"""Bias correction: remove the shift that quantization adds to each output channel's mean.

For every integer Conv / Gemm / MatMul of a program, on calibration samples, each node is fed
the float model's values of its input (quantized as the program quantizes them), and its exact
integer accumulator, dequantized (``acc * s_in * s_w[c]``), is compared with the float node's
pre-activation output. The mean difference per output channel -- mostly the weights' rounding
error times the input's mean, plus the input's rounding -- is subtracted from the integer bias:
``bias_q[c] -= round(mean_err[c] / (s_in * s_w[c]))``. Before activation, so a fused ReLU/Clip
clamps the corrected value exactly as it clamps the float one.

This is the empirical variant of Nagel et al. 2019 ("Data-Free Quantization", section 4.2),
per node with the float model's inputs (so corrections do not chase each other); it needs
calibration *samples*, not only statistics.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from core.errors import CalibrationError
from core.ops.common import without_activation

__all__ = ["correct_bias"]

MAX_SAMPLES = 64
BATCH = 16


def _batched(samples, limit: int, batch: int):
    """Stack same-shaped samples into batches of ``batch``, at most ``limit`` samples in all."""
    pending, total = [], 0
    for feeds in samples:
        if total >= limit:
            break
        pending.append(feeds)
        total += len(next(iter(feeds.values())))
        if len(pending) == batch or any(v.shape[1:] != pending[0][k].shape[1:] for k, v in feeds.items()):
            last = pending.pop() if len(pending) > 1 and any(
                v.shape[1:] != pending[0][k].shape[1:] for k, v in feeds.items()) else None
            yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            pending = [last] if last is not None else []
    if pending:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


def correct_bias(program, float_graph, samples: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Correct ``program``'s dense-node biases in place (new arrays; the old ones are not
    modified); returns ``{node: correction in integer bias units}``. ``samples``: validated
    ``{input: array}`` batches (at most MAX_SAMPLES samples are used)."""
    from core.ops.quant_rules import rule_of
    from core.ops.registry import get_op
    from core.runtime.float_interpreter import run_graph

    tq = program.tensors
    consts = program.graph.constants
    dense = [n for n in program.graph.nodes if program.kinds[n.name] == "int"
             and getattr(rule_of(n), "weighted", False) and program.constants[n.name].w_q is not None]
    if not dense:
        return {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    seen = 0
    for feeds in _batched(samples, MAX_SAMPLES, BATCH):
        seen += len(next(iter(feeds.values())))
        env = run_graph(float_graph, feeds, keep=tuple({n.inputs[0] for n in dense} - set(feeds)))
        env.update(feeds)
        for n in dense:
            c = program.constants[n.name]
            x = env[n.inputs[0]]
            q_in = tq[n.inputs[0]]
            x_q = q_in.quantize(x).astype(np.int8 if q_in.bits == 8 else np.int16)
            rule = rule_of(n)
            acc = rule.accumulate(x_q, q_in.zero_point, c.w_q, c.bias_q, n)
            plain = without_activation(n)
            args = [x] + [consts[i] if i else None for i in n.inputs[1:]]
            (y,) = get_op(n.op, plain).run(plain, args)[:1]
            axis = rule.channel_axis % acc.ndim
            red = tuple(i for i in range(acc.ndim) if i != axis)
            shape = [1] * acc.ndim
            shape[axis] = -1
            err = np.asarray(acc, np.float64) * c.acc_scale.reshape(shape) - np.asarray(y, np.float64)
            sums[n.name] = sums.get(n.name, 0.0) + err.sum(axis=red)
            counts[n.name] = counts.get(n.name, 0) + int(np.prod([acc.shape[i] for i in red]))
    if seen == 0:
        raise CalibrationError("bias correction needs calibration samples; none were given")
    corrections = {}
    for n in dense:
        c = program.constants[n.name]
        mean_err = sums[n.name] / counts[n.name]
        delta = np.round(mean_err / c.acc_scale)
        if not np.any(delta):
            continue
        old = c.bias_q
        dtype = np.int32 if tq[n.inputs[0]].bits <= 8 else np.int64
        base = np.zeros(delta.shape, np.int64) if old is None else np.asarray(old, np.int64).reshape(-1)
        info = np.iinfo(np.int32) if dtype == np.int32 else np.iinfo(np.int64)
        c.bias_q = np.clip(base - delta.astype(np.int64), info.min, info.max).astype(dtype)
        corrections[n.name] = delta
    return corrections
