"""AdaRound: learned up/down rounding of each dense node's integer weights (Nagel et al. 2020).

For every integer Conv / Gemm / MatMul of a program, in graph order, the weights keep the scale
``quantize_weights`` gives them (symmetric, per channel), but each weight's rounding is learned:
``w_q = clip(floor(w / s) + h, -qmax, qmax)`` with ``h`` in {0, 1}. During learning ``h`` is the
rectified sigmoid ``h(V) = clip(sigmoid(V) * 1.2 - 0.1, 0, 1)`` of a free variable ``V``
(initialised so that ``h`` equals the fractional part: round-to-nearest's starting point), and
Adam minimises

    mean_rows sum_channels (act(x_q W~ + b) - y_float)^2  +  lambda * sum (1 - |2h - 1|^beta)

where ``x_q`` is the node's input *as the integer program computes it* with the already-learned
weights of the nodes before it (AdaRound's asymmetric reconstruction), ``y_float`` the float
model's output of the node (after its fused Relu/Clip, if any), ``b`` the integer bias
dequantized, and ``beta`` annealed from ``beta_start`` to ``beta_end`` after a warm-up without
the regulariser. At the end ``h = [V >= 0]``. The result is one ordinary integer weight array
per node (same shape, dtype and scale as round-to-nearest's), passed to ``quantize_graph`` as
``learned_weights``: execution, save/load, export and compile are unchanged and bit-accurate.

Memory is bounded: the integer program runs node by node over the calibration samples (at most
``max_samples``) keeping only live int8/int16 tensors; per node, ``rows`` output positions are
sampled (spread over the samples) and only the input patches (im2col rows) and float targets at
those positions are kept. Float targets come from one streaming float pass beforehand that
keeps nothing else.

Learned roundings are cached in ``.npz`` files (format version, no pickle, atomic writes) keyed
by a digest of the calibration data, the configuration and the program's weights and scales.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np

from core.errors import CalibrationError
from core.ir.graph import Node
from core.progress import progress_bar
from core.quantization.params import AdaRoundMethod
from core.quantization.soft_rounding import Adam, init_rounding, learnable_dense_nodes, rectified_sigmoid, regularized

__all__ = ["ADAROUND_FORMAT_VERSION", "learn_rounding", "rounding_digest", "load_rounding", "save_rounding"]

log = logging.getLogger("mixq")

ADAROUND_FORMAT_VERSION = 1
_BATCH = 16            # samples per integer / float pass step


# --------------------------------------------------------------------------- data

def _stack_samples(samples: Iterable[Mapping[str, np.ndarray]], limit: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    total = 0
    for feeds in samples:
        if total >= limit:
            break
        n = len(next(iter(feeds.values())))
        take = min(n, limit - total)
        for k, v in feeds.items():
            parts.setdefault(k, []).append(np.asarray(v)[:take])
        total += take
    if not total:
        raise CalibrationError("AdaRound needs calibration samples (calibration_data=...); none were given")
    shapes = {k: {a.shape[1:] for a in v} for k, v in parts.items()}
    if any(len(s) > 1 for s in shapes.values()):
        raise CalibrationError("AdaRound needs calibration samples of one shape per input")
    return {k: np.concatenate(v) for k, v in parts.items()}


def _rows_per_sample(method: AdaRoundMethod, n_samples: int) -> int:
    return max(1, math.ceil(method.rows / n_samples))


def _sample_rows(method: AdaRoundMethod, node_index: int, sample: int, spatial: int, n_samples: int) -> np.ndarray:
    """The output positions (flat spatial indices) sampled for one sample of one node (seeded by
    node and sample)."""
    r = _rows_per_sample(method, n_samples)
    rng = np.random.default_rng([method.seed & 0xFFFFFFFF, node_index, sample])
    if spatial <= r:
        return np.arange(spatial)
    return np.sort(rng.choice(spatial, r, replace=False))


def _output_rows(y: np.ndarray, op: str) -> np.ndarray:
    """(b, S, O): a node's output per sample, per position, per channel."""
    if op == "Conv":
        return y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 2, 1)
    return y.reshape(y.shape[0], -1, y.shape[-1])


# --------------------------------------------------------------------------- per-node geometry

def _weight_groups(n: Node, w: np.ndarray) -> np.ndarray:
    """Weights as (G, O_g, K_g): rows are output channels, columns match :func:`_patches`."""
    if n.op == "Conv":
        g = int(n.attrs.get("group", 1))
        return w.reshape(g, w.shape[0] // g, -1)
    if n.op == "Gemm" and n.attrs.get("transB", 0):
        return w[None]
    return w.T[None]


def _ungroup(n: Node, wg: np.ndarray, shape) -> np.ndarray:
    if n.op == "Conv" or (n.op == "Gemm" and n.attrs.get("transB", 0)):
        return wg.reshape(shape)
    return wg[0].T.reshape(shape)


def _patches(n: Node, x: np.ndarray, w_shape, rows: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """The input rows (im2col patches) at the sampled output positions: (G, P, K_g).
    ``x``: a float chunk of samples; ``rows``: (local sample index, flat positions) pairs."""
    if n.op != "Conv":
        xs = x.reshape(x.shape[0], -1, x.shape[-1])
        return np.concatenate([xs[i, r] for i, r in rows])[None]
    from core.ops.conv import conv_out_shape, conv_windows, to_channels_last

    kernel, strides, dilations, pads, out = conv_out_shape(n, x.shape, w_shape)
    nd = len(kernel)
    xl = np.pad(to_channels_last(x), [(0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)] + [(0, 0)])
    win = conv_windows(xl, kernel, strides, dilations, out)          # (b, *out, *kernel, C)
    picked = []
    for i, r in rows:
        coords = np.unravel_index(r, out)
        picked.append(win[(np.full(len(r), i),) + tuple(coords)])  # (p, *kernel, C)
    p = np.concatenate(picked)
    g = int(n.attrs.get("group", 1))
    cg = p.shape[-1] // g
    p = p.reshape(p.shape[0], -1, g, cg)                         # (P, k, G, cg)
    return np.ascontiguousarray(p.transpose(2, 0, 3, 1).reshape(g, p.shape[0], cg * p.shape[1]))


# --------------------------------------------------------------------------- optimisation

def _one_blas_thread():
    """Adam's steps are many small matmuls: one BLAS thread runs them fastest, and on a loaded
    machine OpenBLAS's threads waiting for each other made them ~100x slower (measured: a
    4x3136 @ 3136x128 product 150 ms with 2 threads under load, 1.3 ms with one).
    ``threadpoolctl`` when installed, else nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:      # pragma: no cover - threadpoolctl is in requirements.lock
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def optimize_rounding(x: np.ndarray, target: np.ndarray, w: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                      lo, hi, qmax: int, method: AdaRoundMethod, rng: np.random.Generator) -> np.ndarray:
    """Learn ``h`` for one node. ``x`` (G, P, K) inputs, ``target`` (G, P, O) float outputs,
    ``w`` (G, O, K) float weights, ``scale`` (G, O, 1), ``bias`` (G, 1, O), ``lo``/``hi`` the
    fused activation's bounds (scalars or (G, 1, O)). Returns the integer weights (G, O, K)."""
    floor, v = init_rounding(w / scale)
    floor32, scale32 = floor.astype(np.float32), scale.astype(np.float32)
    x = x.astype(np.float32, copy=False)
    target = target.astype(np.float32, copy=False)
    bias = bias.astype(np.float32)
    adam = Adam(v, method.learning_rate)
    P = x.shape[1]
    batch = min(method.batch, P)
    for t in range(method.iterations):
        idx = rng.choice(P, batch, replace=False) if batch < P else slice(None)
        xb, yb = x[:, idx], target[:, idx]
        h, dh = rectified_sigmoid(v)
        q = floor32 + h
        inside = (q >= -qmax) & (q <= qmax)
        wq = np.clip(q, -qmax, qmax) * scale32
        y = np.matmul(xb, wq.transpose(0, 2, 1)) + bias
        pass_ = (y >= lo) & (y <= hi)
        diff = np.clip(y, lo, hi) - yb
        dy = (2.0 / batch) * diff * pass_
        grad = np.matmul(dy.transpose(0, 2, 1), xb) * scale32 * inside   # d loss / d h
        adam.step(regularized(grad, h, t, method) * dh)
    return np.clip(floor + (v >= 0), -qmax, qmax)


# --------------------------------------------------------------------------- the pass

def _float_targets(float_graph, feeds: dict[str, np.ndarray], dense: list[Node], method: AdaRoundMethod,
                   only: set[str] | None = None):
    """One streaming float pass: per dense node (of ``only`` if given), [(sample, positions)] and
    the (P, O) targets."""
    from core.runtime.float_interpreter import run_graph

    index = {n.outputs[0]: (k, n) for k, n in enumerate(dense) if only is None or n.name in only}
    dense = [n for _, n in index.values()]
    rows: dict[str, list] = {n.name: [] for n in dense}
    targets: dict[str, list] = {n.name: [] for n in dense}
    N = len(next(iter(feeds.values())))
    for s0 in range(0, N, _BATCH):
        chunk = {k: v[s0:s0 + _BATCH] for k, v in feeds.items()}

        def observe(name, value, s0=s0):
            if name not in index:
                return None
            k, n = index[name]
            yr = _output_rows(np.asarray(value), n.op)
            for i in range(yr.shape[0]):
                r = _sample_rows(method, k, s0 + i, yr.shape[1], N)
                rows[n.name].append((s0 + i, r))
                targets[n.name].append(np.asarray(yr[i, r], np.float32))
            return None

        run_graph(float_graph, chunk, on_tensor=observe)
    return rows, {k: np.concatenate(v) for k, v in targets.items()}


def _run_node(n: Node, program, qenv: dict, fenv: dict) -> None:
    """One node of the integer program, as :func:`core.runtime.integer_interpreter.run_program`
    runs it."""
    from core.runtime.integer_interpreter import IntegerContext

    IntegerContext(program, qenv, fenv).run_node(n)


def learn_rounding(program, float_graph, samples: Iterable[Mapping[str, np.ndarray]], method: AdaRoundMethod,
                   *, progress: bool = True) -> dict[str, np.ndarray]:
    """Learned integer weights ``{node: w_q}`` for ``program``'s dense nodes (``program`` is not
    modified). ``samples``: validated ``{input: array}`` calibration samples."""
    from core.ops.quant_rules import DenseRule, fused_bounds

    feeds = _stack_samples(samples, method.max_samples)
    N = len(next(iter(feeds.values())))
    dense = learnable_dense_nodes(program)
    if not dense:
        return {}
    blocks = {}
    if method.granularity == "block":
        from core.quantization import block_reconstruction as br

        for b in br.reconstruction_blocks(program, method.block_size):
            if b.learnable:
                blocks[b.start] = b
            else:
                log.info("block reconstruction: per-node AdaRound for %s: %s",
                         ", ".join(n.name for n in b.dense), b.unsupported)
    in_block = {n.name for b in blocks.values() for n in b.dense}
    dense_set = {n.name for n in dense} - in_block
    rows, targets = _float_targets(float_graph, feeds, dense, method, dense_set) if dense_set else ({}, {})
    g = program.graph
    consts = g.constants
    tq = program.tensors
    # a scratch program whose dense nodes get their learned weights as the pass goes
    scratch = type(program)(g, tq, {k: dataclasses.replace(v) for k, v in program.constants.items()}, program.kinds,
                            program.requantization_mode, program.params, program.meta)
    last_use: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            last_use[i] = k
    qstore: dict[str, np.ndarray] = {}
    fstore: dict[str, np.ndarray] = dict(feeds)
    learned: dict[str, np.ndarray] = {}
    bar = progress_bar(len(dense), "adaround", "node") if progress else None
    rng = np.random.default_rng(method.seed & 0xFFFFFFFF)
    try:
        float_at, float_live = 0, dict(feeds)      # block mode: the float model's live tensors at node float_at
        for k, n in enumerate(g.nodes):
            b = blocks.get(k)
            if b is not None:
                if float_at < k:
                    float_live = br.float_block_output(float_graph, g.nodes[float_at:k], float_live, b.inputs, _BATCH)
                float_live = br.float_block_output(float_graph, b.nodes, float_live, b.outputs, _BATCH)
                float_at = b.stop
                x = b.inputs[0]
                new = br.learn_block(b, scratch, qstore[x] if x in qstore else fstore[x], x in qstore,
                                     float_live[b.outputs[0]], method,
                                     np.random.default_rng([method.seed & 0xFFFFFFFF, 1 << 20, k]))
                for name, w_q in new.items():
                    learned[name] = w_q
                    scratch.constants[name].w_q = w_q
                if bar is not None:
                    bar.update(len(b.dense))
            if n.name in dense_set:
                learned[n.name] = _learn_node(n, scratch, qstore, fstore, rows[n.name], targets[n.name], method,
                                              DenseRule.weight_bits(n, program.params), fused_bounds(n), rng)
                scratch.constants[n.name].w_q = learned[n.name]
                if bar is not None:
                    bar.update(1)
            outs_q: dict[str, list] = {}
            outs_f: dict[str, list] = {}
            for s0 in range(0, N, _BATCH):
                qenv = {t: qstore[t][s0:s0 + _BATCH] for t in n.inputs if t in qstore}
                fenv = {t: fstore[t][s0:s0 + _BATCH] for t in n.inputs if t in fstore}
                _run_node(n, scratch, qenv, fenv)
                for o in n.outputs:
                    if o in qenv:
                        outs_q.setdefault(o, []).append(qenv[o])
                    elif o in fenv:
                        outs_f.setdefault(o, []).append(fenv[o])
            for o, parts in outs_q.items():
                qstore[o] = np.concatenate(parts)
            for o, parts in outs_f.items():
                fstore[o] = np.concatenate(parts)
            for t in set(n.inputs) | set(n.outputs):
                if t and last_use.get(t, -1) <= k and t not in consts:
                    qstore.pop(t, None)
                    fstore.pop(t, None)
    finally:
        if bar is not None:
            bar.close()
    return learned


def _learn_node(n: Node, program, qstore, fstore, rows, target, method, bits, bounds, rng) -> np.ndarray:
    tq = program.tensors
    c = program.constants[n.name]
    x_name = n.inputs[0]
    w = np.asarray(program.graph.constants[n.inputs[1]], np.float64)
    w_q = c.w_q
    q_in = tq[x_name]
    store = qstore if x_name in qstore else fstore
    full = store[x_name]
    parts = []
    by_sample: dict[int, np.ndarray] = dict(rows)
    for s0 in range(0, len(full), _BATCH):
        chunk = full[s0:s0 + _BATCH]
        x = q_in.dequantize(chunk) if store is qstore else q_in.dequantize(q_in.quantize(chunk))
        picked = [(i - s0, by_sample[i]) for i in range(s0, s0 + len(chunk)) if i in by_sample]
        if picked:
            parts.append(_patches(n, x, w.shape, picked))
    xp = np.concatenate(parts, axis=1)                           # (G, P, K)
    wg = _weight_groups(n, w)                                    # (G, O, K)
    G, O = wg.shape[0], wg.shape[1]
    scale = np.asarray(c.w_scale, np.float64).reshape(G, O, 1)
    bias = np.zeros((G, 1, O)) if c.bias_q is None else \
        (np.asarray(c.bias_q, np.float64) * c.acc_scale).reshape(G, 1, O)
    tg = target.reshape(target.shape[0], G, O).transpose(1, 0, 2)  # (G, P, O)
    lo, hi = bounds
    lo, hi = [b if np.ndim(b) == 0 else np.asarray(b, np.float32).reshape(G, 1, O) for b in (lo, hi)]
    qmax = (1 << (bits - 1)) - 1
    with _one_blas_thread():
        q = optimize_rounding(xp, tg, wg, scale, bias, lo, hi, qmax, method, rng)
    return _ungroup(n, q, w_q.shape).astype(w_q.dtype)


# --------------------------------------------------------------------------- cache

def rounding_digest(program, data_digest: str, method: AdaRoundMethod) -> str:
    """What the learned rounding depends on: the data, the method, every tensor's quantization and
    every dense node's float weights, scales and bias."""
    h = hashlib.sha256()
    h.update(f"mixq.adaround/{ADAROUND_FORMAT_VERSION}|{data_digest}|{method!r}|".encode())
    h.update(repr(program.requantization_mode).encode())
    h.update(repr(sorted((k, repr(v)) for k, v in program.tensors.items())).encode())
    consts = program.graph.constants
    for n in learnable_dense_nodes(program):
        c = program.constants[n.name]
        h.update(f"|{n.name}|{n.op}|{sorted(n.attrs.items())!r}|".encode())
        for a in (consts[n.inputs[1]], c.w_scale, c.w_q, c.bias_q):
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype.str}{a.shape}".encode())
                h.update(a)
    return h.hexdigest()


def save_rounding(path, digest: str, learned: Mapping[str, np.ndarray]) -> None:
    """An ``.npz`` (format version, digest, node names, one array per node), written atomically."""
    from core.errors import CalibrationError as _Err
    from core.formats.atomic import atomic_write

    names = list(learned)
    arrays = {f"w_{i}": np.asarray(learned[k]) for i, k in enumerate(names)}
    buf = io.BytesIO()
    np.savez(buf, format_version=np.int64(ADAROUND_FORMAT_VERSION), digest=np.array(digest),
             names=np.array(names, dtype=str), **arrays)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()), _Err, "AdaRound cache")


def load_rounding(path, digest: str) -> dict[str, np.ndarray] | None:
    """The learned weights of ``path`` if it is a valid cache file for ``digest``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format_version"]) != ADAROUND_FORMAT_VERSION or str(z["digest"]) != digest:
                return None
            names = [str(s) for s in z["names"]]
            return {k: z[f"w_{i}"] for i, k in enumerate(names)}
    except (OSError, KeyError, ValueError, TypeError) as e:
        if os.path.exists(path):
            log.warning("ignoring unreadable AdaRound cache %s: %s", path, e)
        return None
