"""Output-aware activation ranges: each activation tensor's per-tensor clip range chosen for the
network's output error, not for the tensor's own histogram error.

The calibration methods (MSE, entropy, percentile...) choose a tensor's range from its own
histogram. What the model's accuracy depends on is how that tensor's rounding and clipping error
reaches the output. This pass searches, greedily in graph order, one clip factor ``f`` per 8-bit
activation tensor that has its own range (conv/add/pool outputs and graph inputs; the reuse ops'
outputs inherit theirs): candidate ranges ``(f * lo, f * hi)`` around the calibrated ``(lo, hi)``,
each scored by the mean squared error of the network's outputs against the float model's when
every tensor up to this one (weights and activations) is fake-quantized with the choices already
made and the rest of the network runs in float. The best factor is kept and the pass moves on,
with this tensor quantized from now on.

The result is a ``{tensor: (lo, hi)}`` mapping that :func:`core.quantization.quantizer.quantize_graph`
uses instead of the calibrated ranges (``activation_ranges``): every tensor keeps one ordinary
per-tensor scale and zero point, so the integer engine, save/load and export are unchanged.

Memory: the search keeps the float model's outputs and the live fake-quantized tensors of
``samples`` calibration samples (a few of the widest activations), nothing per layer.
Results are cached like AdaRound's (``.npz``, format version, no pickle, atomic writes).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np

from core.errors import CalibrationError
from core.progress import progress_bar
from core.quantization.params import RangeSearchMethod

__all__ = ["RANGE_SEARCH_FORMAT_VERSION", "search_ranges", "range_digest", "load_ranges", "save_ranges",
           "fake_quant_constants", "fake_quant_outputs", "searchable_tensors",
           "pick_samples"]

log = logging.getLogger("mixq")

RANGE_SEARCH_FORMAT_VERSION = 1


def fake_quant_constants(program) -> dict[str, np.ndarray]:
    """The integer dense nodes' weights and biases as the integer program sees them
    (``w_q * w_scale``, ``bias_q * acc_scale``), by constant name, in float32."""
    from core.ops.common import weight_output_axis

    out: dict[str, np.ndarray] = {}
    consts = program.graph.constants
    for n in program.graph.nodes:
        c = program.constants.get(n.name)
        if program.kinds.get(n.name) != "int" or c is None or c.w_q is None or len(n.inputs) < 2 \
                or n.inputs[1] not in consts:
            continue
        w = np.asarray(consts[n.inputs[1]])
        axis = weight_output_axis(n, w.ndim)
        shape = [1] * w.ndim
        if w.ndim:
            shape[axis] = -1
        s = np.asarray(c.w_scale, np.float64)
        s = s.reshape(shape) if s.size > 1 else s.reshape(())
        out[n.inputs[1]] = (np.asarray(c.w_q, np.float64) * s).astype(w.dtype)
        if c.bias_q is not None and len(n.inputs) > 2 and n.inputs[2]:
            b = np.asarray(consts[n.inputs[2]])
            out[n.inputs[2]] = (np.asarray(c.bias_q, np.float64) * np.asarray(c.acc_scale)).reshape(b.shape) \
                .astype(b.dtype)
    return out


def searchable_tensors(program, bits: int = 8) -> list[str]:
    """The ``bits``-bit activation tensors with a range of their own: graph inputs read by the
    program and outputs of nodes that do not reuse their input's quantization (in graph order)."""
    from core.ops.quant_rules import reuses_input_quant

    tq = program.tensors
    out = [t for t in program.graph.inputs if t in tq and tq[t].bits == bits]
    for n in program.graph.nodes:
        if program.kinds.get(n.name) == "apu" or reuses_input_quant(n.op):
            continue
        out += [o for o in n.outputs if o and o in tq and tq[o].bits == bits]
    return out


def _range_of(q) -> tuple[float, float]:
    return (q.qmin - q.zero_point) * q.scale, (q.qmax - q.zero_point) * q.scale


def _fq(q, x: np.ndarray) -> np.ndarray:
    return q.dequantize(q.quantize(x)).astype(x.dtype, copy=False)


def _mse(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return float(sum(np.mean((np.asarray(a[k], np.float64) - b[k]) ** 2) for k in b))


def pick_samples(samples: Iterable[Mapping[str, np.ndarray]], method: RangeSearchMethod) -> dict[str, np.ndarray]:
    """``method.samples`` samples of a seeded random choice among all of them, stacked (two passes
    over ``samples``: count, then keep only the chosen ones)."""
    samples = list(samples)
    sizes = [len(next(iter(f.values()))) for f in samples]
    total = sum(sizes)
    if not total:
        raise CalibrationError("the output-aware range search needs calibration samples; none were given")
    pick = set(np.random.default_rng(method.seed & 0xFFFFFFFF).permutation(total)[:method.samples].tolist())
    parts: dict[str, list[np.ndarray]] = {}
    start = 0
    for feeds, n in zip(samples, sizes):
        rows = [i - start for i in range(start, start + n) if i in pick]
        start += n
        if rows:
            for k, v in feeds.items():
                parts.setdefault(k, []).append(np.asarray(v)[rows])
    return {k: np.concatenate(v) for k, v in parts.items()}


def search_ranges(program, float_graph, samples: Iterable[Mapping[str, np.ndarray]], method: RangeSearchMethod, *,
                  progress: bool = True) -> dict[str, tuple[float, float]]:
    """``{tensor: (lo, hi)}`` for ``program``'s searchable 8-bit activation tensors (only those
    whose range changed). ``samples``: validated ``{input: array}`` calibration samples."""
    from core.ops.registry import get_op
    from core.quantization.quantizer import activation_quant
    from core.runtime.float_interpreter import run_graph

    graph = program.graph
    feeds = pick_samples(samples, method)
    act = program.params.activation_quantization_scheme
    candidates = set(searchable_tensors(program, act.bits))
    reference = run_graph(float_graph, feeds)
    outputs = list(reference)
    tq = dict(program.tensors)
    fq_consts = fake_quant_constants(program)
    float_consts = graph.constants
    nodes = graph.nodes
    last_use: dict[str, int] = {}
    for k, n in enumerate(nodes):
        for i in n.inputs:
            last_use[i] = k

    def run(n, env, quantized: bool):
        consts = fq_consts if quantized else {}
        args = [None if not i else consts.get(i, env[i] if i in env else float_consts[i]) for i in n.inputs]
        return get_op(n.op, n).run(n, args)

    def suffix_loss(start: int, env: dict) -> float:
        """The outputs' error when nodes ``start..`` run on ``env`` (fake-quantized so far): in float,
        or (``downstream="quantized"``) fake-quantized with the calibrated ranges."""
        env = dict(env)
        quantized = method.downstream == "quantized"
        for k in range(start, len(nodes)):
            n = nodes[k]
            q = quantized and program.kinds.get(n.name) != "apu"
            for name, value in zip(n.outputs, run(n, env, q)):
                if name:
                    env[name] = _fq(tq[name], value) if q and name in tq and tq[name].bits <= 16 else value
            for i in n.inputs:
                if i and last_use.get(i) == k and i not in outputs:
                    env.pop(i, None)
        return _mse(env, reference)

    chosen: dict[str, tuple[float, float]] = {}
    factors = sorted(set(method.factors) | {1.0})
    bar = progress_bar(len(candidates), "output-aware ranges", "tensor") if progress else None

    def choose(t: str, raw: np.ndarray, env: dict, start: int) -> np.ndarray:
        q0 = tq[t]
        lo, hi = _range_of(q0)
        asym = q0.zero_point != 0 or act.asymmetric
        best = None
        for f in factors:
            q = q0 if f == 1.0 else activation_quant(lo * f, hi * f, q0.bits, asym)
            v = _fq(q, raw)
            loss = suffix_loss(start, {**env, t: v})
            if best is None or loss < best[0] - 1e-12 * abs(best[0]):
                best = (loss, f, q, v)
        _, f, q, v = best
        if f != 1.0:
            tq[t] = q
            chosen[t] = (lo * f, hi * f)
        if bar is not None:
            bar.update(1)
        return v

    try:
        env: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            if name in tq:
                env[name] = choose(name, value, dict(env), 0) if name in candidates else _fq(tq[name], value)
            else:
                env[name] = value
        for k, n in enumerate(nodes):
            quantized = program.kinds.get(n.name) != "apu"
            outs = run(n, env, quantized)
            for name, value in zip(n.outputs, outs):
                if not name:
                    continue
                if name in candidates:
                    env[name] = choose(name, value, env, k + 1)
                elif name in tq and tq[name].bits <= 16:
                    env[name] = _fq(tq[name], value)
                else:
                    env[name] = value
            for i in n.inputs:
                if i and last_use.get(i) == k and i not in outputs:
                    env.pop(i, None)
    finally:
        if bar is not None:
            bar.close()
    return chosen


# --------------------------------------------------------------------------- cache

def range_digest(program, data_digest: str, method: RangeSearchMethod) -> str:
    """What the search depends on: the data, the method, every tensor's quantization and the
    dense nodes' integer weights."""
    h = hashlib.sha256()
    h.update(f"mixq.range_search/{RANGE_SEARCH_FORMAT_VERSION}|{data_digest}|{method!r}|".encode())
    h.update(repr(program.requantization_mode).encode())
    h.update(repr(sorted((k, repr(v)) for k, v in program.tensors.items())).encode())
    for name, a in sorted(fake_quant_constants(program).items()):
        a = np.ascontiguousarray(a)
        h.update(f"|{name}|{a.dtype.str}{a.shape}".encode())
        h.update(a)
    return h.hexdigest()


def save_ranges(path, digest: str, ranges: Mapping[str, tuple[float, float]]) -> None:
    """An ``.npz`` (format version, digest, tensor names, their (lo, hi)), written atomically."""
    from core.formats.atomic import atomic_write

    names = list(ranges)
    buf = io.BytesIO()
    np.savez(buf, format_version=np.int64(RANGE_SEARCH_FORMAT_VERSION), digest=np.array(digest),
             names=np.array(names, dtype=str),
             ranges=np.array([ranges[k] for k in names], np.float64).reshape(len(names), 2))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()), CalibrationError, "output-aware range cache")


def load_ranges(path, digest: str) -> dict[str, tuple[float, float]] | None:
    """The ranges of ``path`` if it is a valid cache file for ``digest``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != RANGE_SEARCH_FORMAT_VERSION or str(z["digest"]) != digest:
                return None
            return {str(k): (float(r[0]), float(r[1])) for k, r in zip(z["names"], z["ranges"])}
    except (OSError, KeyError, ValueError, TypeError) as e:
        if os.path.exists(path):
            log.warning("ignoring unreadable output-aware range cache %s: %s", path, e)
        return None


def fake_quant_outputs(program, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float graph run with ``program``'s quantization simulated in float (the dense nodes'
    weights and biases as the integer program holds them, every integer tensor rounded to its
    grid): the model the search scores."""
    from core.runtime.float_interpreter import run_graph

    graph = program.graph.copy()
    graph.constants = {**graph.constants, **fake_quant_constants(program)}
    tq = program.tensors

    def on_tensor(name, value):
        return _fq(tq[name], value) if name in tq and tq[name].bits <= 16 else None

    return run_graph(graph, {k: _fq(tq[k], np.asarray(v)) if k in tq else v for k, v in feeds.items()},
                     on_tensor=on_tensor)
