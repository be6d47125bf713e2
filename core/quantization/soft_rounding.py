"""Soft-rounding primitives shared by per-node AdaRound (:mod:`core.quantization.adaround`) and
block reconstruction (:mod:`core.quantization.block_reconstruction`): which nodes can learn their
rounding, the rectified sigmoid, its round-to-nearest starting point, the rounding regulariser and
the Adam optimiser over the rounding variables."""
from __future__ import annotations

import numpy as np

from core.ir.graph import Node
from core.quantization.params import AdaRoundMethod

__all__ = ["Adam", "init_rounding", "learnable_dense_nodes", "rectified_sigmoid", "regularized"]

_ZETA, _GAMMA = 1.1, -0.1      # the rectified sigmoid's stretch (Nagel et al. 2020)


def learnable_dense_nodes(program) -> list[Node]:
    """The program's integer Conv / Gemm / MatMul nodes whose weights AdaRound can learn
    (a constant weight, quantized; not a transposed-A Gemm or a batched MatMul)."""
    out = []
    for n in program.graph.nodes:
        c = program.constants.get(n.name)
        if program.kinds[n.name] != "int" or n.op not in ("Conv", "Gemm", "MatMul") or c is None or c.w_q is None:
            continue
        w = c.w_q
        if n.op == "Gemm" and n.attrs.get("transA", 0):
            continue
        if n.op == "MatMul" and w.ndim != 2:
            continue
        out.append(n)
    return out


def rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(h(V), dh/dV)``: AdaRound's rectified sigmoid ``clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``."""
    sig = 1.0 / (1.0 + np.exp(-v))
    raw = sig * (_ZETA - _GAMMA) + _GAMMA
    h = np.clip(raw, 0.0, 1.0)
    dh = np.where((raw > 0) & (raw < 1), (_ZETA - _GAMMA) * sig * (1 - sig), 0.0).astype(v.dtype)
    return h, dh


def init_rounding(w_scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(floor(w / s), V)`` with ``V`` (float32) such that ``h(V)`` is the fractional part of
    ``w / s``: round-to-nearest's starting point."""
    floor = np.floor(w_scaled)
    rest = np.clip(w_scaled - floor, 0.0, 1.0)
    frac = np.clip((rest - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
    return floor, np.log(frac / (1 - frac)).astype(np.float32)


def regularized(grad: np.ndarray, h: np.ndarray, t: int, method: AdaRoundMethod) -> np.ndarray:
    """``grad`` (d loss / d h at step ``t``) plus the rounding regulariser's gradient
    ``lambda * d/dh sum (1 - |2h - 1|^beta)``, ``beta`` annealed after the warm-up."""
    T = method.iterations
    warm = int(method.warmup * T)
    if t >= warm and method.regularization > 0:
        rel = (t - warm) / max(1, T - warm)
        beta = method.beta_end + (method.beta_start - method.beta_end) * (1.0 - rel)
        u = 2.0 * h - 1.0
        grad = grad - method.regularization * beta * 2.0 * np.sign(u) * np.abs(u) ** (beta - 1.0)
    return grad


class Adam:
    """Adam on the rounding variables ``v`` (updated in place by :meth:`step`)."""

    b1, b2, eps = 0.9, 0.999, 1e-8

    def __init__(self, v: np.ndarray, learning_rate: float):
        self.v, self.lr, self.t = v, learning_rate, 0
        self.m = np.zeros_like(v)
        self.s2 = np.zeros_like(v)

    def step(self, g: np.ndarray) -> None:
        b1, b2 = self.b1, self.b2
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.s2 = b2 * self.s2 + (1 - b2) * g * g
        mh = self.m / (1 - b1 ** self.t)
        vh = self.s2 / (1 - b2 ** self.t)
        self.v -= self.lr * mh / (np.sqrt(vh) + self.eps)
