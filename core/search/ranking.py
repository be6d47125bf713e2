"""Which nodes lose most to INT8: a cheap sensitivity ranking that seeds the INT16 search.

One float pass over a few calibration samples. For every node whose output the INT8 program
stores as an integer tensor, the noise-to-signal ratio its own INT8 rounding adds:

* activation: ``sum((y - dq(q(y)))**2) / sum((y - mean y)**2)`` with the program's own scale and
  zero point for the node's float output ``y`` (rounding + clipping of that tensor);
* weights (Conv/Gemm/MatMul): ``sum((w - dq(q(w)))**2) / sum(w**2)`` with the program's weight
  scales -- the relative error of the weights, which is what an INT16 node also removes
  (INT16 nodes get 16-bit weights).

The score is their sum. It measures what the per-node ``INT_16`` override changes, on its own,
without quantizing the model once per node (the Neural Compressor / NNCF "per-op MSE" idea).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["rank_nodes_by_int8_noise"]


def rank_nodes_by_int8_noise(net, int8_model, samples: Mapping[str, np.ndarray]) -> list[tuple[str, float]]:
    """``[(node name, score), ...]``, highest score (most sensitive) first. ``samples`` is one
    batch of inputs ``{input name: array}``; ``int8_model`` is ``net`` quantized at INT8."""
    from core.runtime.float_interpreter import run_graph

    prog = int8_model.program
    owner: dict[str, str] = {}
    for n in prog.graph.nodes:
        if prog.kinds[n.name] == "int":
            for o in n.outputs:
                if o in prog.tensors and prog.tensors[o].bits == 8:
                    owner[o] = n.name
    noise: dict[str, float] = {}
    signal: dict[str, float] = {}

    def observe(name, value):
        if name in owner and value.dtype.kind == "f":
            tq = prog.tensors[name]
            v = np.asarray(value, np.float64)
            noise[name] = noise.get(name, 0.0) + float(((v - tq.dequantize(tq.quantize(v))) ** 2).sum())
            signal[name] = signal.get(name, 0.0) + float(((v - v.mean()) ** 2).sum())

    run_graph(net.graph, net.check_inputs(samples), on_tensor=observe)
    scores: dict[str, float] = {}
    for t in noise:
        scores[owner[t]] = max(scores.get(owner[t], 0.0), noise[t] / max(signal[t], 1e-30))
    for n in prog.graph.nodes:
        c = prog.constants.get(n.name) or {}
        if n.name in scores and "w_q" in c and "w_scale" in c and np.ndim(c["w_q"]) >= 2:
            w = np.asarray(prog.graph.constants[n.inputs[1]], np.float64)
            axis = 0 if n.op == "Conv" else (0 if n.attrs.get("transB", 0) else w.ndim - 1)
            shape = [1] * w.ndim
            shape[axis] = -1
            scales = c["w_scale"].reshape(shape) if w.ndim else c["w_scale"].reshape(())
            dq = np.asarray(c["w_q"], np.float64) * scales
            scores[n.name] += float(((w - dq) ** 2).sum() / max((w ** 2).sum(), 1e-30))
    return sorted(scores.items(), key=lambda kv: -kv[1])
