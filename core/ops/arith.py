"""Elementwise math beyond Add/Sub/Mul/Div: Pow, Mod, Max, Min, Sum (numpy broadcasting) and the unary
Sqrt, Exp, Log, Erf, Neg, Abs, Reciprocal, Floor, Ceil. They run on the APU (float); written-out
LayerNorm (Pow/Sqrt) and GELU (Erf) are fused into LayerNormalization / Gelu by graph passes.

``erf`` is mixq's own (numpy has none): float64, within a few ulp of float64 ``math.erf``.
"""
from __future__ import annotations

import math

import numpy as np

from core.errors import ShapeInferenceError
from core.ir.graph import Node, TensorInfo
from core.ops.common import broadcast_shape
from core.ops.registry import OpDef, register

# ---------------------------------------------------------------------------- erf

# Maclaurin coefficients of erf(x) * sqrt(pi) / 2 in x**2 (times x): (-1)^n / (n! (2n + 1))
_ERF_TERMS = 60
_ERF_SERIES = np.array([(-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(_ERF_TERMS)], np.float64)
_ERF_SPLIT = 2.5       # |x| below: the series (terms stay below 2**8 there: ~1e-14 relative); above: erfc's fraction
_ERFC_LEVELS = 60


def erf(x) -> np.ndarray:
    """erf of any real array, in float64. ``|x| < 2.5``: the Maclaurin series (60 terms, Horner
    in x**2); beyond, ``1 - erfc(|x|)`` with erfc from its continued fraction
    ``exp(-x**2) / sqrt(pi) / (x + (1/2) / (x + 1 / (x + (3/2) / (x + ...))))`` (60 levels), sign
    restored. NaN stays NaN; +-inf gives +-1."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    ax = np.abs(x)
    small = ax < _ERF_SPLIT
    xs = x[small]
    z = xs * xs
    acc = np.full_like(z, _ERF_SERIES[-1])
    for c in _ERF_SERIES[-2::-1]:
        acc = acc * z + c
    out[small] = (2.0 / math.sqrt(math.pi)) * xs * acc
    big = ~small
    xb = ax[big]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = xb.copy()
        for k in range(_ERFC_LEVELS, 0, -1):
            t = xb + (k / 2.0) / t
        erfc = np.exp(-xb * xb) / (math.sqrt(math.pi) * t)
        erfc = np.where(np.isinf(xb), 0.0, erfc)
    out[big] = np.sign(x[big]) * (1.0 - erfc)
    return out


# ---------------------------------------------------------------------------- unary ops

def _same(node: Node, infos):
    return [TensorInfo(infos[0].shape, infos[0].dtype)]


def _float_unary(fn):
    """A float function, computed in float64 for float16/32 inputs (exactly rounded back)."""
    def run(node: Node, inputs):
        x = inputs[0]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return [np.asarray(fn(x.astype(np.float64) if x.dtype.kind == "f" else x)).astype(x.dtype, copy=False)]
    return run


def _reciprocal(x):
    return 1.0 / x


for _name, _fn, _kind, _doc in [
    ("Sqrt", np.sqrt, "sqrt", "sqrt(x); NaN below 0"),
    ("Exp", np.exp, "exp", "exp(x)"),
    ("Log", np.log, "log", "natural log; -inf at 0, NaN below"),
    ("Erf", erf, "erf", "mixq's float64 erf (series / continued fraction); GELU patterns fuse to Gelu"),
    ("Reciprocal", _reciprocal, "reciprocal", "1 / x"),
]:
    register(OpDef(_name, _same, _float_unary(_fn), kind=_kind, doc=_doc))

for _name, _fn, _kind, _doc in [
    ("Neg", np.negative, "negative", "-x (integers wrap, as in C)"),
    ("Abs", np.abs, "abs", "|x|"),
    ("Floor", np.floor, "floor", "floor(x)"),
    ("Ceil", np.ceil, "ceil", "ceil(x)"),
]:
    register(OpDef(_name, _same, (lambda f: lambda n, x: [np.asarray(f(x[0])).astype(x[0].dtype, copy=False)])(_fn),
                   kind=_kind, doc=_doc))


# ---------------------------------------------------------------------------- binary ops

def _pow_infer(node: Node, infos):
    x, y = infos
    return [TensorInfo(broadcast_shape(node, x.shape, y.shape), x.dtype)]


def _pow_run(node: Node, inputs):
    x, y = inputs
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if x.dtype.kind in "iu" and y.dtype.kind in "iu":
            if np.any(y < 0):
                raise ShapeInferenceError(f"{node.describe()}: integer Pow with a negative exponent")
            return [np.power(x.astype(np.int64), y.astype(np.int64)).astype(x.dtype)]
        # float math in float64 (std::pow of the widened values), the result in X's type
        r = np.power(x.astype(np.float64), y.astype(np.float64))
        if x.dtype.kind in "iu":
            r = np.trunc(r)
        return [r.astype(x.dtype)]


register(OpDef("Pow", _pow_infer, _pow_run, kind="pow", doc="numpy broadcasting; the exponent may have another type"))


def _same_type_infer(node: Node, infos):
    first = infos[0]
    for k, t in enumerate(infos[1:], start=1):
        if t.dtype != first.dtype:
            raise ShapeInferenceError(f"{node.describe()}: input {k} has type {t.dtype}, input 0 {first.dtype}")
    return [TensorInfo(broadcast_shape(node, *(t.shape for t in infos)), first.dtype)]


def _mod_check(node: Node, infos):
    if infos and infos[0] is not None and infos[0].dtype.kind == "f" and not node.attrs.get("fmod", 0):
        raise ShapeInferenceError(f"{node.describe()}: Mod of floating-point inputs needs fmod=1")


def _mod_run(node: Node, inputs):
    a, b = inputs
    with np.errstate(divide="ignore", invalid="ignore"):
        if node.attrs.get("fmod", 0):
            r = np.fmod(a, b)         # C fmod: the sign of the dividend
        else:
            r = np.mod(a, b)          # Python's %: the sign of the divisor
    return [np.asarray(r).astype(a.dtype, copy=False)]


register(OpDef("Mod", _same_type_infer, _mod_run, kind="mod", check=_mod_check,
               doc="fmod 0 (sign of the divisor, integers) or 1 (C fmod); numpy broadcasting"))


def _reduce_run(fn):
    def run(node: Node, inputs):
        out = inputs[0]
        for v in inputs[1:]:
            out = fn(out, v)
        return [np.asarray(out).astype(inputs[0].dtype, copy=False)]
    return run


register(OpDef("Max", _same_type_infer, _reduce_run(np.maximum), kind="maximum", doc="variadic, numpy broadcasting"))
register(OpDef("Min", _same_type_infer, _reduce_run(np.minimum), kind="minimum", doc="variadic, numpy broadcasting"))
register(OpDef("Sum", _same_type_infer, _reduce_run(np.add), kind="sum", doc="variadic, numpy broadcasting"))
