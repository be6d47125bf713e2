"""Helpers shared by op modules: attribute access, fused activations, broadcasting shapes."""
from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import QuantizationConfigError, ShapeInferenceError, UnsupportedOperatorError
from core.ir.graph import Node, TensorInfo
from core.quantization.requantize import INT32_MAX, INT32_MIN


def attr(node: Node, key: str, default: Any = None) -> Any:
    return node.attrs.get(key, default)


def const_input(node: Node, infos: list, idx: int, what: str) -> np.ndarray | None:
    """The constant value of optional input ``idx`` (None if omitted); error if it is not constant."""
    if idx >= len(infos) or infos[idx] is None:
        return None
    v = infos[idx].value
    if v is None:
        raise UnsupportedOperatorError(
            node.op, node.source_name or node.name, f"{what} (input {idx}) must be a constant"
        )
    return v


def broadcast_shape(node: Node, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeInferenceError(f"{node.describe()}: shapes {list(shapes)} do not broadcast") from None


# Fused activations: conv/gemm nodes may carry attrs["activation"] after fusion, as
# {"kind": "relu"} or {"kind": "clip", "min": float, "max": float}.
def apply_activation(x: np.ndarray, node: Node) -> np.ndarray:
    act = node.attrs.get("activation")
    if not act:
        return x
    kind = act["kind"]
    if kind == "relu":
        return np.maximum(x, 0, out=x)
    if kind == "clip":
        # bounds may be per channel (channel equalization): arrays over axis 1 (NC..., or (N, O))
        lo, hi = (_channel_bound(act.get(k, d), x.ndim) for k, d in (("min", -np.inf), ("max", np.inf)))
        return np.clip(x, lo, hi, out=x)
    raise UnsupportedOperatorError(node.op, node.name, f"fused activation {kind!r}")


def _channel_bound(bound, ndim: int):
    b = np.asarray(bound)
    if b.ndim == 0 or ndim < 2:
        return b
    return b.reshape((1, -1) + (1,) * (ndim - 2))


def weight_output_axis(node: Node, ndim: int) -> int:
    """The output-channel axis of a Conv/Gemm/MatMul weight of rank ``ndim``: Conv OIHW -> 0,
    Gemm (O, K) with transB -> 0 else (K, O) -> 1, MatMul (K, O) or (K,) -> last."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return ndim - 1


def without_activation(node: Node) -> Node:
    """A copy of ``node`` without its fused activation (to get pre-activation values)."""
    attrs = {k: v for k, v in node.attrs.items() if k != "activation"}
    return Node(node.op, node.inputs, node.outputs, attrs, name=node.name, source_name=node.source_name,
                segment=node.segment)


def activation_suffix(node: Node) -> str:
    act = node.attrs.get("activation")
    return f"_{act['kind']}" if act else ""


def same(info: TensorInfo, shape=None, dtype=None, value=None) -> TensorInfo:
    return TensorInfo(info.shape if shape is None else shape, info.dtype if dtype is None else dtype, value)


def normalize_axis(node: Node, axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` in [-rank, rank-1] -> [0, rank-1]; out of range is the model's error, not a wrap-around."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ShapeInferenceError(f"{node.describe()}: {what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(node: Node, axes, rank: int, what: str = "axes") -> list[int]:
    """Each of ``axes`` normalized as by ``normalize_axis``; a repeated axis is an error."""
    out = [normalize_axis(node, a, rank, what) for a in np.asarray(axes).reshape(-1).tolist()]
    if len(set(out)) != len(out):
        raise ShapeInferenceError(f"{node.describe()}: {what} {list(np.asarray(axes).reshape(-1))} repeat an axis")
    return out


# ---- shared by the integer kernels --------------------------------------------------------
def scale32(value, name: str) -> float:
    """A quantization scale as TFLite stores it (float32), widened to float64."""
    try:
        s = float(np.float32(value))
    except (TypeError, ValueError):
        raise QuantizationConfigError(f"{name} must be a positive real number, got {value!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise QuantizationConfigError(f"{name} must be a positive finite number, got {value!r}")
    return s


def qrange(qmin, qmax, *zps: tuple[str, object]) -> tuple[int, int, list[int]]:
    qmin, qmax = int(qmin), int(qmax)
    if not INT32_MIN <= qmin <= qmax <= INT32_MAX:
        raise QuantizationConfigError(f"qmin ({qmin}) and qmax ({qmax}) must satisfy "
                                      f"{INT32_MIN} <= qmin <= qmax <= {INT32_MAX}")
    out = []
    for name, zp in zps:
        if np.ndim(zp) != 0 or np.asarray(zp).dtype.kind not in "iu":
            raise QuantizationConfigError(f"{name} must be an integer scalar, got {zp!r}")
        out.append(int(zp))
    return qmin, qmax, out


