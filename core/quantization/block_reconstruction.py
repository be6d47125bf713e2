"""Block reconstruction (BRECQ, Li et al. 2021): learned rounding of a block's dense nodes, jointly.

``AdaRoundMethod(granularity="block")``. The program graph is split into blocks
(:func:`reconstruction_blocks`); for each block, in graph order, the up/down rounding of all of
its dense nodes (AdaRound's rectified sigmoid ``h(V)``, regulariser and beta annealing, the
helpers of :mod:`core.quantization.adaround`) is learned against the float model's output of the
*block*, with the block's input as the integer program computes it (the earlier blocks'
weights already learned) and every tensor inside the block fake-quantized with the program's own
activation quantization (straight-through rounding, zero gradient outside the clipping range).
The block output is only clipped to its range. The result is ordinary integer weights on
round-to-nearest's scales.

Blocks: a *cut* is a tensor that is, after its producer runs, the only live activation (every
path passes through it). Cuts that fork (more than one consumer) or are produced by a merge
(a node with several activation inputs) -- the residual stream -- and cuts read by a global
pooling or Flatten (the classifier head) delimit segments; a segment
with more than ``block_size`` dense nodes is split at its inner cuts into the fewest pieces of
balanced dense counts. A block whose ops the reconstruction cannot differentiate (see
:data:`SUPPORTED_OPS`), with more than ``block_size`` dense nodes between two cuts, or not on
the integer program, falls back to per-node AdaRound.

Gradients: TensorFlow's autodiff (imported lazily, inside :func:`learn_block` only; ``import
core`` stays numpy-only), NHWC internally. Memory: per block only the block input (integer
codes) and the float block output of the calibration samples are kept.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from core.ir.graph import Graph, Node

__all__ = ["SUPPORTED_OPS", "Block", "reconstruction_blocks", "float_block_output", "learn_block"]

# ops that collapse the positions (the classifier head starts there: its own block, whose few
# output rows per sample get more samples per step)
_HEAD_OPS = ("GlobalAveragePool", "Flatten")
SUPPORTED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "GlobalAveragePool", "Flatten")


@dataclasses.dataclass
class Block:
    """Nodes ``start:stop`` of the program graph (contiguous in graph order)."""

    start: int
    stop: int
    nodes: list[Node]
    dense: list[Node]
    inputs: tuple[str, ...]       # activations live before the block
    outputs: tuple[str, ...]      # activations live after it
    unsupported: str = ""         # why it falls back to per-node AdaRound; "" = learned jointly

    @property
    def learnable(self) -> bool:
        return not self.unsupported


def _live_sets(g: Graph):
    consts = g.constants
    last: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for i in n.inputs:
            if i and i not in consts:
                last[i] = k
    for o in g.outputs:
        last[o] = len(g.nodes)
    live = {i for i in g.inputs if i in last}
    before, after = [], []
    for k, n in enumerate(g.nodes):
        before.append(tuple(sorted(live)))
        live |= {o for o in n.outputs if o and o in last}
        live = {t for t in live if last[t] > k}
        after.append(tuple(sorted(live)))
    return before, after


def _group(regions: list[tuple[int, int, int]], max_dense: int) -> list[tuple[int, int]]:
    """Consecutive regions (start, stop, dense count) into the fewest pieces of <= max_dense
    dense nodes with balanced counts (a region over the cap stays one piece)."""
    total = sum(d for _, _, d in regions)
    target = math.ceil(total / max(1, math.ceil(total / max_dense))) if total else max_dense
    pieces, cur, count = [], None, 0
    for s, e, d in regions:
        if cur is not None and count + d > target:
            pieces.append(cur)
            cur, count = None, 0
        cur = (s, e) if cur is None else (cur[0], e)
        count += d
    if cur is not None:
        pieces.append(cur)
    return pieces


def reconstruction_blocks(program, max_dense: int = 4) -> list[Block]:
    """The blocks of ``program``'s graph holding >= 1 dense node, in graph order (see the module
    docstring); ``Block.unsupported`` says why one falls back to per-node AdaRound."""
    from core.quantization.soft_rounding import learnable_dense_nodes

    g = program.graph
    consts = g.constants
    dense = {n.name for n in learnable_dense_nodes(program)}
    before, after = _live_sets(g)
    consumers = g.consumers()
    nodes = g.nodes
    cuts, boundaries = [], []
    for k, n in enumerate(nodes[:-1]):
        if len(after[k]) == 1 and after[k][0] in n.outputs:
            t = after[k][0]
            cuts.append(k)
            acts = {i for i in n.inputs if i and i not in consts}
            users = {c.name: c.op for c in consumers.get(t, [])}
            head = n.op not in _HEAD_OPS and set(users.values()) & set(_HEAD_OPS)
            if len(users) > 1 or len(acts) > 1 or head:
                boundaries.append(k)
    ends = sorted(set(boundaries) | {len(nodes) - 1})
    blocks = []
    s0 = 0
    for end in ends:
        inner = [k for k in cuts if s0 <= k < end] + [end]
        regions, r0 = [], s0
        for k in inner:
            regions.append((r0, k + 1, sum(nodes[j].name in dense for j in range(r0, k + 1))))
            r0 = k + 1
        for s, e in _group(regions, max_dense):
            b = Block(s, e, nodes[s:e], [n for n in nodes[s:e] if n.name in dense], before[s], after[e - 1])
            if b.dense:
                b.unsupported = _why_unsupported(program, b, max_dense)
                blocks.append(b)
        s0 = end + 1
    return blocks


def _why_unsupported(program, b: Block, max_dense: int) -> str:
    g = program.graph
    consts, tq = g.constants, program.tensors
    if len(b.dense) > max_dense:
        return f"{len(b.dense)} dense nodes between two cuts (block_size={max_dense})"
    if len(b.inputs) != 1 or len(b.outputs) != 1:
        return "not a single input and output tensor"
    if b.inputs[0] not in tq:
        return f"input {b.inputs[0]!r} is not an integer tensor"
    dense = {n.name for n in b.dense}
    for n in b.nodes:
        if program.kinds[n.name] != "int":
            return f"{n.describe()} is not on the integer program"
        if n.op not in SUPPORTED_OPS:
            return f"{n.describe()}: op {n.op} is not differentiated by block reconstruction"
        outs = [o for o in n.outputs if o]
        if len(outs) != 1 or outs[0] not in tq or tq[outs[0]].bits not in (8, 16):
            return f"{n.describe()}: not one 8/16-bit output"
        a = n.attrs
        if n.op in ("Conv", "Gemm", "MatMul") and n.name not in dense:
            return f"{n.describe()}: weights are not constant"
        if n.op == "Conv":
            w = consts[n.inputs[1]]
            if w.ndim != 4 or a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                return f"{n.describe()}: only 2-D convs with explicit pads"
        elif n.op == "Gemm":
            if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
                return f"{n.describe()}: Gemm with alpha/beta/transA"
        elif n.op == "MatMul":
            if consts[n.inputs[1]].ndim != 2:
                return f"{n.describe()}: MatMul weights not 2-D"
        elif n.op == "MaxPool":
            if (len(a.get("kernel_shape", ())) != 2 or a.get("ceil_mode", 0) or a.get("storage_order", 0)
                    or any(d != 1 for d in a.get("dilations", [1, 1]))
                    or a.get("auto_pad", "NOTSET") not in ("NOTSET", "")):
                return f"{n.describe()}: only plain 2-D max pooling"
        elif n.op == "Flatten":
            if a.get("axis", 1) != 1:
                return f"{n.describe()}: Flatten axis != 1"
        elif n.op == "Add":
            if sum(1 for i in n.inputs if i and i not in consts) < 1:
                return f"{n.describe()}: no activation input"
    return ""


# --------------------------------------------------------------------------- float targets

def float_block_output(float_graph: Graph, nodes: list[Node], feeds: dict[str, np.ndarray], outputs, batch: int):
    """The float model's ``outputs`` after ``nodes`` (a contiguous stretch of ``float_graph``) from
    the float values ``feeds`` of the tensors live before them, ``batch`` samples at a time."""
    from core.runtime.float_interpreter import run_graph

    sub = Graph(float_graph.name)
    sub.nodes, sub.constants, sub.outputs = list(nodes), float_graph.constants, list(outputs)
    N = len(next(iter(feeds.values())))
    parts: dict[str, list] = {o: [] for o in outputs}
    for s0 in range(0, N, batch):
        res = run_graph(sub, {k: v[s0:s0 + batch] for k, v in feeds.items()})
        for o in outputs:
            parts[o].append(np.asarray(res[o], np.float32))
    return {o: np.concatenate(p) for o, p in parts.items()}


# --------------------------------------------------------------------------- the differentiable block

class _Forward:
    """The block's float computation in TensorFlow, tensors fake-quantized like the integer
    program holds them. Values are (tensor, layout) with layout "nchw" or "nhwc" (4-D only)."""

    def __init__(self, tf, program, block: Block):
        from core.ops.quant_rules import fused_bounds

        self.tf, self.program, self.block = tf, program, block
        self.consts = program.graph.constants
        self.bounds = {n.name: fused_bounds(n) for n in block.nodes}
        self.bias = {}
        for n in block.dense:
            c = program.constants[n.name]
            O = np.asarray(c.w_scale).size
            self.bias[n.name] = tf.constant(np.zeros(O, np.float32) if c.bias_q is None else
                                            (np.asarray(c.bias_q, np.float64) * c.acc_scale).reshape(-1)
                                            .astype(np.float32))

    def nhwc(self, v):
        t, lay = v
        return t if lay == "nhwc" or len(t.shape) != 4 else self.tf.transpose(t, [0, 2, 3, 1])

    def nchw(self, v):
        t, lay = v
        return t if lay == "nchw" else self.tf.transpose(t, [0, 3, 1, 2])

    def clip_to(self, t, name, quantize: bool):
        tf = self.tf
        q = self.program.tensors.get(name)
        if q is None:
            return t
        s = float(q.scale)
        t = tf.clip_by_value(t, (q.qmin - q.zero_point) * s, (q.qmax - q.zero_point) * s)
        return t + tf.stop_gradient(tf.round(t / s) * s - t) if quantize else t

    def act(self, n: Node, t, lay: str):
        lo, hi = self.bounds[n.name]
        if np.ndim(lo) == 0 and np.ndim(hi) == 0:
            if math.isinf(lo) and math.isinf(hi):
                return t
            return self.tf.clip_by_value(t, max(lo, -3.0e38), min(hi, 3.0e38))
        channels_last = lay == "nhwc" or len(t.shape) == 2
        C = t.shape[-1] if channels_last else t.shape[1]
        b = [np.clip(np.broadcast_to(np.asarray(x, np.float32), (C,)), -3.0e38, 3.0e38)
             .reshape([-1] if channels_last else [-1, 1, 1]) for x in (lo, hi)]
        return self.tf.minimum(self.tf.maximum(t, b[0]), b[1])

    def conv(self, n: Node, x, w):
        from core.ops.conv import conv_out_shape

        tf = self.tf
        xs = x.shape
        _, strides, dil, pads, _ = conv_out_shape(n, (xs[0], xs[3], xs[1], xs[2]), tuple(w.shape))
        x = tf.pad(x, [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]])
        g = int(n.attrs.get("group", 1))
        O, cg = w.shape[0], w.shape[1]
        st = [1, strides[0], strides[1], 1]
        if g == 1:
            return tf.nn.conv2d(x, tf.transpose(w, [2, 3, 1, 0]), st, "VALID", dilations=[1, dil[0], dil[1], 1])
        if cg == 1 and g == xs[3] and strides[0] == strides[1] and (strides[0] == 1 or dil == [1, 1]):
            f = tf.transpose(tf.reshape(w, [g, O // g, w.shape[2], w.shape[3]]), [2, 3, 0, 1])
            return tf.nn.depthwise_conv2d(x, f, st, "VALID", dilations=list(dil))
        xg = tf.split(x, g, axis=3)
        wg = tf.split(w, g, axis=0)
        return tf.concat([tf.nn.conv2d(a, tf.transpose(b, [2, 3, 1, 0]), st, "VALID", dilations=[1, dil[0], dil[1], 1])
                          for a, b in zip(xg, wg)], axis=3)

    def __call__(self, x, weights: dict):
        tf = self.tf
        b = self.block
        env = {b.inputs[0]: (x, "nchw")}
        last = b.nodes[-1]
        for n in b.nodes:
            if n.op == "Conv":
                t = self.conv(n, self.nhwc(env[n.inputs[0]]), weights[n.name]) + self.bias[n.name]
                t, lay = self.act(n, t, "nhwc"), "nhwc"
            elif n.op in ("Gemm", "MatMul"):
                w = weights[n.name]
                if n.op == "Gemm" and n.attrs.get("transB", 0):
                    w = tf.transpose(w)
                t = tf.matmul(self.nchw(env[n.inputs[0]]), w) + self.bias[n.name]
                t, lay = self.act(n, t, "nchw"), "nchw"
            elif n.op == "Add":
                ins = [env[i] if i in env else (tf.constant(np.asarray(self.consts[i], np.float32)), "nchw")
                       for i in n.inputs[:2]]
                if all(len(v[0].shape) == 4 and v[1] == "nhwc" for v in ins):
                    t, lay = ins[0][0] + ins[1][0], "nhwc"
                else:
                    t, lay = self.nchw(ins[0]) + self.nchw(ins[1]), "nchw"
                t = self.act(n, t, lay)
            elif n.op == "Relu":
                t, lay = env[n.inputs[0]]
                t = tf.nn.relu(t)
            elif n.op == "MaxPool":
                a = n.attrs
                p = list(a.get("pads", [0, 0, 0, 0]))
                k = list(a["kernel_shape"])
                s = list(a.get("strides", [1, 1]))
                xin = tf.pad(self.nhwc(env[n.inputs[0]]), [[0, 0], [p[0], p[2]], [p[1], p[3]], [0, 0]],
                             constant_values=-3.0e38)
                t, lay = tf.nn.max_pool2d(xin, k, s, "VALID"), "nhwc"
            elif n.op == "GlobalAveragePool":
                t, lay = tf.reduce_mean(self.nhwc(env[n.inputs[0]]), axis=[1, 2], keepdims=True), "nhwc"
            else:  # Flatten, axis 1
                xin = self.nchw(env[n.inputs[0]])
                t, lay = tf.reshape(xin, [xin.shape[0], -1]), "nchw"
            env[n.outputs[0]] = (self.clip_to(t, n.outputs[0], quantize=n is not last), lay)
        return self.nchw(env[b.outputs[0]])


@dataclasses.dataclass
class _NodeState:
    node: Node
    floor: np.ndarray      # floor(w / s), float64
    scale: np.ndarray      # float32, broadcast over the weights
    v: np.ndarray          # the rounding variables (Adam updates them in place)
    qmax: int
    adam: object
    w_q: np.ndarray        # round-to-nearest's weights (dtype and shape of the result)


def learn_block(block: Block, program, x_codes: np.ndarray, x_is_int: bool, target: np.ndarray, method,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Integer weights ``{node: w_q}`` for ``block``'s dense nodes, learned jointly. ``x_codes``:
    the block input for the calibration samples, integer codes (``x_is_int``) or float (a graph
    input, quantized here like the program does); ``target``: the float block output."""
    import tensorflow as tf

    from core.ops.common import weight_output_axis
    from core.ops.quant_rules import DenseRule
    from core.quantization.soft_rounding import Adam, init_rounding, rectified_sigmoid, regularized

    q_in = program.tensors[block.inputs[0]]
    consts = program.graph.constants
    state = []
    for n in block.dense:
        c = program.constants[n.name]
        w = np.asarray(consts[n.inputs[1]], np.float64)
        shape = [1] * w.ndim
        shape[weight_output_axis(n, w.ndim)] = -1
        scale = np.asarray(c.w_scale, np.float64).reshape(shape)
        floor, v = init_rounding(w / scale)
        qmax = (1 << (DenseRule.weight_bits(n, program.params) - 1)) - 1
        state.append(_NodeState(n, floor, scale.astype(np.float32), v, qmax, Adam(v, method.learning_rate), c.w_q))
    fwd = _Forward(tf, program, block)
    N = len(x_codes)
    channels = target.shape[1] if target.ndim > 1 else 1
    positions = target[0].size // channels
    # at least block_batch samples a step, more while the output has fewer than batch rows
    B = min(N, max(method.block_batch, math.ceil(method.batch / positions)))
    rows = B * positions
    names = [st.node.name for st in state]

    @tf.function
    def gradients(xb, yb, ws):
        """d loss / d (dequantized integer weights), traced once per block."""
        with tf.GradientTape() as tape:
            tape.watch(ws)
            y = fwd(xb, dict(zip(names, ws)))
            loss = tf.reduce_sum(tf.square(y - yb)) / rows
        return tape.gradient(loss, ws)

    for t in range(method.iterations):
        idx = np.sort(rng.choice(N, B, replace=False)) if B < N else np.arange(N)
        xb = x_codes[idx]
        xb = q_in.dequantize(xb if x_is_int else q_in.quantize(xb))
        yb = tf.constant(target[idx])
        steps = []
        for st in state:
            h, dh = rectified_sigmoid(st.v)
            q = st.floor.astype(np.float32) + h
            inside = (q >= -st.qmax) & (q <= st.qmax)
            steps.append((h, dh, inside, tf.constant(np.clip(q, -st.qmax, st.qmax) * st.scale)))
        grads = gradients(tf.constant(xb), yb, [s[3] for s in steps])
        for st, (h, dh, inside, _), gw in zip(state, steps, grads):
            grad = gw.numpy() * st.scale * inside                     # d loss / d h
            st.adam.step(regularized(grad, h, t, method) * dh)
    return {st.node.name: np.clip(st.floor + (st.v >= 0), -st.qmax, st.qmax).astype(st.w_q.dtype) for st in state}
