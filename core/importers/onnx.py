"""ONNX importer: an ONNX file -> a shape-inferred ``Graph`` in mixq's IR.

onnx is imported lazily so that ``import core`` stays numpy-only.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ModelLoadError, UnsupportedOperatorError
from core.importers.sources import DtypeDict, ImporterParams, ShapeDict, normalize_dtypes, normalize_shapes
from core.ir.graph import Graph, Node, TensorInfo
from core.ir.shape_inference import infer_shapes

# Opsets 9-10 load too (older forms are upgraded per op: Slice/Pad/Clip attributes, Upsample);
# 11-20 is the range mixq targets.
MIN_OPSET = 9
# Opsets 21-27 changed type support, not semantics, for the ops mixq implements (their
# attributes are unchanged but Cast's round_mode, checked by Cast itself); onnx's own node
# tests, generated at those opsets, check that.
MAX_OPSET = 27
_DEFAULT_DOMAINS = ("", "ai.onnx")


def import_onnx(params: ImporterParams) -> Graph:
    model = _read_model(params.model_path)
    g = _build_graph(model, params, 1)
    if g.metadata.get("symbolic_batch"):
        _record_reshape_batch_axes(g, model, params)
    return g


def _record_reshape_batch_axes(g: Graph, model, params: ImporterParams) -> None:
    """A model with a symbolic batch is imported at batch 1; its Reshape targets, computed from
    ``Shape`` in the file, fold to batch-1 constants. Imported once more at batch 2, a target dim
    that doubles is the batch (``view(tokens * batch, dim)``, ``view(tokens, batch * heads, d)``:
    transformers move it off dim 0, where shapes alone cannot tell): recorded as
    ``metadata["reshape_batch_axis"][source node] = axis`` for ``batch_agnostic_reshape``."""
    try:
        g2 = _build_graph(model, params, 2)
    except Exception:   # the model does not import at batch 2: keep the shape-only rules
        return
    targets2 = {n.source_name: n.inputs[1] for n in g2.nodes if n.op == "Reshape" and len(n.inputs) > 1}
    axes = {}
    for n in g.nodes:
        if n.op != "Reshape" or len(n.inputs) < 2 or n.source_name not in targets2:
            continue
        t1, t2 = g.tensors.get(n.inputs[1]), g2.tensors.get(targets2[n.source_name])
        if t1 is None or t2 is None or t1.value is None or t2.value is None or t1.value.shape != t2.value.shape:
            continue
        v1, v2 = np.asarray(t1.value).reshape(-1), np.asarray(t2.value).reshape(-1)
        moved = np.flatnonzero(v1 != v2)
        if moved.size == 1 and v1[moved[0]] > 0 and v2[moved[0]] == 2 * v1[moved[0]]:
            axes[n.source_name] = int(moved[0])
    if axes:
        g.metadata["reshape_batch_axis"] = axes


def _build_graph(model, params: ImporterParams, batch: int) -> Graph:
    path = params.model_path
    opset = _default_opset(model, path)
    g = Graph(model.graph.name or os.path.splitext(os.path.basename(path))[0])
    g.opset = opset
    g.metadata["source_format"] = "onnx"
    g.metadata["source_path"] = os.path.abspath(path)

    from onnx import numpy_helper

    initializers = {}
    for init in model.graph.initializer:
        try:
            initializers[init.name] = numpy_helper.to_array(init, base_dir=os.path.dirname(os.path.abspath(path)))
        except Exception as e:  # external data missing, bad raw_data size...
            raise ModelLoadError(f"{path}: cannot read initializer {init.name!r}: {e}") from e
    for name, value in initializers.items():
        g.add_constant(name, value)

    declared = [vi for vi in model.graph.input if vi.name not in initializers]
    declared_names = [vi.name for vi in declared]
    for label, given in (("shape_dict", params.shape_dict), ("dtype_dict", params.dtype_dict),
                         ("input_values", params.input_values)):
        for name in given or {}:
            if name not in declared_names:
                raise ModelLoadError(
                    f"{path}: {label} names input {name!r}, but the model's inputs are {declared_names}"
                )

    for vi in declared:
        if params.input_values and vi.name in params.input_values:
            g.add_constant(vi.name, params.input_values[vi.name])
            continue
        g.inputs.append(vi.name)
        g.tensors[vi.name], symbolic = _input_info(vi, params, path, batch)
        if symbolic:
            g.metadata["symbolic_batch"] = True

    _add_nodes(g, model, path)
    available = set(g.tensors) | {o for n in g.nodes for o in n.outputs}
    wanted = list(params.output_names) if params.output_names else [o.name for o in model.graph.output]
    for o in wanted:
        if o not in available:
            raise ModelLoadError(f"{path}: output {o!r} is not produced by the model")
    g.outputs = wanted
    if not g.nodes and not g.outputs:
        raise ModelLoadError(f"{path}: the ONNX graph is empty")

    g.toposort()
    g.remove_unused()
    for n in g.nodes:
        from core.ops.registry import get_op

        opdef = get_op(n.op, n)
        if opdef.upgrade is not None:
            opdef.upgrade(n, g)
    infer_shapes(g)
    return g


def _read_model(path: str):
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path} is a directory, not an ONNX file")
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path} is not a valid ONNX model (truncated or not ONNX): {e}") from e
    except Exception as e:  # protobuf raises a zoo of types on garbage input
        raise ModelLoadError(f"{path} is not a valid ONNX model: {type(e).__name__}: {e}") from e
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(f"{path} is not an ONNX model (no ir_version/graph found)")
    try:
        from onnx.external_data_helper import load_external_data_for_model

        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read external tensor data: {e}") from e
    return model


def _default_opset(model, path: str) -> int:
    opset = None
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            opset = imp.version
    if opset is None:
        raise ModelLoadError(f"{path}: the model imports no default ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelLoadError(f"{path}: opset {opset} is not supported (mixq reads opset {MIN_OPSET} to {MAX_OPSET})")
    return opset


def _input_info(vi, params: ImporterParams, path: str, batch: int = 1) -> tuple[TensorInfo, bool]:
    """The input's TensorInfo, and whether its dim 0 was symbolic (imported at ``batch``)."""
    from onnx import helper

    symbolic = False
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type"):
        raise ModelLoadError(f"{path}: input {vi.name!r} is not a tensor (sequences/maps are not supported)")
    if params.shape_dict and vi.name in params.shape_dict:
        shape = params.shape_dict[vi.name]
        if tt.HasField("shape") and len(tt.shape.dim) != len(shape):
            raise ModelLoadError(
                f"{path}: shape_dict gives input {vi.name!r} rank {len(shape)} "
                f"but the model declares rank {len(tt.shape.dim)}"
            )
    else:
        if not tt.HasField("shape"):
            raise ModelLoadError(
                f"{path}: input {vi.name!r} has no declared shape; pass shape_dict={{{vi.name!r}: (...)}}"
            )
        shape = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif k == 0:
                # a symbolic (or unknown) dim 0 is the batch, as everywhere in mixq: import at
                # batch 1 (batch_agnostic_reshape lets the model run at any batch size)
                shape.append(batch)
                symbolic = True
            else:
                sym = d.dim_param or "?"
                raise ModelLoadError(
                    f"{path}: input {vi.name!r} has dynamic dimension {k} ({sym!r}); "
                    f"give its shape with shape_dict={{{vi.name!r}: (...)}}"
                )
    if params.dtype_dict and vi.name in params.dtype_dict:
        dtype = params.dtype_dict[vi.name]
    else:
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        except Exception:
            raise ModelLoadError(f"{path}: input {vi.name!r} has unsupported element type {tt.elem_type}") from None
    return TensorInfo(tuple(shape), dtype), symbolic


def _attr_value(a) -> Any:
    from onnx import AttributeProto, numpy_helper

    t = a.type
    if t == AttributeProto.FLOAT:
        return float(a.f)
    if t == AttributeProto.INT:
        return int(a.i)
    if t == AttributeProto.STRING:
        return a.s.decode("utf-8", errors="replace")
    if t == AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t)
    if t == AttributeProto.FLOATS:
        return [float(x) for x in a.floats]
    if t == AttributeProto.INTS:
        return [int(x) for x in a.ints]
    if t == AttributeProto.STRINGS:
        return [s.decode("utf-8", errors="replace") for s in a.strings]
    raise ValueError(f"attribute type {AttributeProto.AttributeType.Name(t)}")


def _add_nodes(g: Graph, model, path: str) -> None:
    from core.ops.registry import supported_ops

    supported = set(supported_ops())
    unsupported: list[tuple[str, str]] = []
    seen_names: set[str] = set()
    for idx, pn in enumerate(model.graph.node):
        source_name = pn.name or f"{pn.op_type}_{idx}"
        name = source_name
        while name in seen_names:
            name = f"{name}_{idx}"
        seen_names.add(name)
        if pn.domain not in _DEFAULT_DOMAINS or pn.op_type not in supported:
            op = pn.op_type if pn.domain in _DEFAULT_DOMAINS else f"{pn.domain}::{pn.op_type}"
            unsupported.append((op, source_name))
            continue
        attrs = {}
        for a in pn.attribute:
            try:
                attrs[a.name] = _attr_value(a)
            except ValueError as e:
                raise UnsupportedOperatorError(
                    pn.op_type, source_name, f"attribute {a.name!r} has unsupported {e}"
                ) from None
        g.nodes.append(Node(pn.op_type, list(pn.input), list(pn.output), attrs, name=name, source_name=source_name))
    if unsupported:
        op, node = unsupported[0]
        more = "; ".join(f"{o} at node {n!r}" for o, n in unsupported[1:6])
        detail = "mixq does not implement it (see docs/operators.md)"
        if more:
            detail += f"; also unsupported: {more}" + (" ..." if len(unsupported) > 6 else "")
        raise UnsupportedOperatorError(op, node, detail)


# ---- the source: what load_model gets ----------------------------------------------------------

@dataclass(frozen=True)
class OnnxParams(ImporterParams):
    """``ImporterParams`` of an ONNX model (registers the ONNX importer)."""

    format = "onnx"
    suffixes = (".onnx",)

    def import_graph(self) -> Graph:
        return import_onnx(self)


def onnx_source(
    model_path: str | os.PathLike,
    shape_dict: ShapeDict | None = None,
    dtype_dict: DtypeDict | None = None,
    *,
    output_names: Sequence[str] | None = None,
    input_values: Mapping[str, np.ndarray] | None = None,
) -> OnnxParams:
    """Parameters to import an ONNX model (opset 11 to 20; newer opsets where op semantics are known)."""
    return OnnxParams(
        model_path=os.fspath(model_path),
        shape_dict=normalize_shapes(shape_dict),
        dtype_dict=normalize_dtypes(dtype_dict),
        output_names=tuple(output_names) if output_names else None,
        input_values={k: np.asarray(v) for k, v in input_values.items()} if input_values else None,
    )
