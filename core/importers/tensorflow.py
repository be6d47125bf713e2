"""TensorFlow importer: SavedModel directory, Keras ``.keras``/``.h5`` file or frozen GraphDef ``.pb``.

The model is converted with TensorFlow's own TFLite converter to a float TFLite flatbuffer in
memory, which the TFLite importer (``core/importers/tflite.py``) then reads: one set of op
mappings, and TensorFlow's graph optimizations (constant folding, batch-norm folding, activation
fusion) come for free. TensorFlow is imported lazily, only here.

Names. Graph inputs and outputs are named as the user knows them: a frozen graph's placeholder
and output op names (``output_names`` are required there), a SavedModel's or Keras model's
signature names (Keras: the input/output layer names). ``output_names`` selects outputs, in
that order: Keras layer names, SavedModel signature output keys, or frozen-graph tensor/op names.
Without it: Keras outputs in the model's order, a SavedModel's signature outputs sorted by key.

SavedModels and Keras models are traced (at ``shape_dict``'s shapes where given) and their
variables folded into constants before conversion (TFLite builtins have no variables).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import MixqError, ModelLoadError
from core.importers.sources import ImporterParams, ShapeDict, normalize_shapes
from core.ir.graph import Graph

_KERAS_EXTS = (".keras", ".h5", ".hdf5")
_FROZEN_EXTS = (".pb", ".pbtxt")


def import_tensorflow(params: ImporterParams) -> Graph:
    path = params.model_path
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}")
    kind = _kind(path)
    tf = _tensorflow()
    with _quiet():
        if kind == "saved_model":
            data, rename_outputs = _from_saved_model(tf, path, params)
        elif kind == "keras":
            data, rename_outputs = _from_keras(tf, path, params)
        else:
            data, rename_outputs = _from_frozen(tf, path, params)

    from core.importers.tflite import TFLiteParams, import_tflite_bytes

    # the converted flatbuffer's outputs are already the selected ones
    tfl_params = TFLiteParams(model_path=path, shape_dict=params.shape_dict)
    g = import_tflite_bytes(data, tfl_params, label=path, source_path=os.path.abspath(path))
    g.name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0] or g.name
    g.metadata["source_format"] = "tensorflow"
    g.metadata["tensorflow_model_kind"] = kind
    _rename_boundary(g, rename_outputs)
    return g


def _kind(path: str) -> str:
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")) or os.path.exists(
            os.path.join(path, "saved_model.pbtxt")
        ):
            return "saved_model"
        raise ModelLoadError(f"{path} is a directory without saved_model.pb: not a TensorFlow SavedModel")
    ext = os.path.splitext(path)[1].lower()
    if ext in _KERAS_EXTS:
        return "keras"
    if ext in _FROZEN_EXTS:
        return "frozen"
    raise ModelLoadError(f"{path}: unknown TensorFlow model type (expected a SavedModel directory, "
                         f"a Keras .keras/.h5 file or a frozen .pb graph)")


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise ModelLoadError(
            "importing TensorFlow models needs TensorFlow: pip install tensorflow-cpu==2.21.0"
        ) from None
    return tf


@contextlib.contextmanager
def _quiet():
    import logging
    import warnings

    tf_log = logging.getLogger("tensorflow")
    old = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # TensorFlow's and Keras's own deprecation chatter
            for module in (r"keras(\..*)?", r"tensorflow(\..*)?"):
                warnings.filterwarnings("ignore", category=UserWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            yield
    finally:
        tf_log.setLevel(old)


def _convert(converter, path: str) -> bytes:
    try:
        return bytes(converter.convert())
    except MixqError:
        raise
    except Exception as e:  # ConverterError, ValueError, ...
        msg = str(e).strip().splitlines()
        raise ModelLoadError(f"{path}: TensorFlow's TFLite converter failed: {type(e).__name__}: "
                             f"{' '.join(msg[:6])[:1500]}") from e


def _from_saved_model(tf, path: str, params: ImporterParams):
    try:
        loaded = tf.saved_model.load(path)
        sigs = dict(loaded.signatures)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable TensorFlow SavedModel: {type(e).__name__}: {e}") from e
    if not sigs:
        raise ModelLoadError(f"{path}: the SavedModel has no signatures to convert")
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    fn = sigs[key]
    # a loaded signature's outputs have no stable order: sorted by key, as TensorFlow lists them
    out_keys = sorted(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else []
    if params.output_names:
        missing = [n for n in params.output_names if n not in out_keys]
        if missing:
            raise ModelLoadError(f"{path}: output {missing[0]!r} is not an output of signature {key!r} "
                                 f"(its outputs are {out_keys})")
    specs = fn.structured_input_signature[1]
    shapes = dict(params.shape_dict or {})
    unknown = [n for n in shapes if n not in specs]
    if unknown:
        raise ModelLoadError(
            f"{path}: shape_dict names input {unknown[0]!r}, but the model's inputs are {sorted(specs)}"
        )
    new_specs = {}
    for n, spec in specs.items():
        shape = list(shapes[n]) if n in shapes else spec.shape.as_list()
        if shape and any(d is None for d in shape[1:]):
            raise ModelLoadError(f"{path}: input {n!r} has dynamic shape {spec.shape.as_list()}; "
                                 f"give its shape with shape_dict={{{n!r}: (...)}}")
        new_specs[n] = tf.TensorSpec(shape, spec.dtype, name=n)
    wanted = list(params.output_names) if params.output_names else out_keys

    # trace the signature (at the given shapes) and fold its variables: TFLite has no variables
    @tf.function(input_signature=[new_specs])
    def fixed(inputs):
        res = fn(**inputs)
        # a list: frozen functions name their outputs output_0, output_1, ... in this order
        return [res[k] for k in wanted] if wanted else res

    data = _convert_traced(tf, fixed, loaded, path, f"signature {key!r}")
    if wanted:
        return data, ("signature", [f"output_{i}" for i in range(len(wanted))], wanted)
    return data, ("signature", None)


def _from_keras(tf, path: str, params: ImporterParams):
    keras = tf.keras
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable Keras model: {type(e).__name__}: {e}") from e
    out_layers = list(params.output_names) if params.output_names else None
    if out_layers:
        outputs = []
        for n in out_layers:
            try:
                outputs.append(model.get_layer(n).output)
            except ValueError:
                names = [layer.name for layer in model.layers]
                raise ModelLoadError(
                    f"{path}: output {n!r} is not a layer of the Keras model (its layers are {names})"
                ) from None
        model = keras.Model(model.inputs, outputs)
        out_keys = out_layers
    else:
        out_keys = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
        if len(set(out_keys)) != len(model.outputs):
            out_keys = [f"output_{i}" for i in range(len(model.outputs))]
    in_names = [_keras_input_name(t, i) for i, t in enumerate(model.inputs)]
    shapes = dict(params.shape_dict or {})
    unknown = [n for n in shapes if n not in in_names]
    if unknown:
        raise ModelLoadError(f"{path}: shape_dict names input {unknown[0]!r}, but the model's inputs are {in_names}")
    specs = []
    for t, n in zip(model.inputs, in_names):
        shape = list(shapes.get(n, [d for d in t.shape]))
        if shape and shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise ModelLoadError(f"{path}: input {n!r} has dynamic shape {list(t.shape)}; "
                                 f"give its shape with shape_dict={{{n!r}: (...)}}")
        specs.append(tf.TensorSpec(shape, t.dtype, name=n))

    def serve(*xs):
        ys = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        return list(ys)  # frozen functions name outputs output_0, output_1, ... in this order

    data = _convert_traced(tf, tf.function(serve, input_signature=specs), model, path, "the Keras model")
    return data, ("signature", [f"output_{i}" for i in range(len(out_keys))], out_keys)


def _convert_traced(tf, fn, owner, path: str, what: str) -> bytes:
    """Trace the tf.function ``fn`` (of ``owner``, a SavedModel or Keras model), fold its variables
    and convert it to a float TFLite flatbuffer; a tracing failure names ``what``."""
    try:
        conc = fn.get_concrete_function()
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot trace {what}: {type(e).__name__}: {e}") from e
    return _convert(tf.lite.TFLiteConverter.from_concrete_functions([_frozen(conc, path)], owner), path)


def _frozen(conc, path: str):
    """The concrete function with its variables folded into constants (TFLite has no variables)."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    try:
        return convert_variables_to_constants_v2(conc)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot freeze the model's variables: {type(e).__name__}: {e}") from e


def _keras_input_name(t, i: int) -> str:
    op = getattr(getattr(t, "_keras_history", None), "operation", None)
    name = getattr(op, "name", None) or getattr(t, "name", None) or f"input_{i}"
    return str(name).split(":")[0]


def _from_frozen(tf, path: str, params: ImporterParams):
    if not params.output_names:
        raise ModelLoadError(f"{path}: a frozen graph needs output_names (the tensors to convert)")
    v1 = tf.compat.v1
    try:
        gd = v1.GraphDef()
        with open(path, "rb") as f:
            raw = f.read()
        if path.lower().endswith(".pbtxt"):
            from google.protobuf import text_format

            text_format.Parse(raw.decode("utf-8"), gd)
        else:
            gd.ParseFromString(raw)
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a TensorFlow GraphDef (truncated or wrong file type): {type(e).__name__}: {e}"
        ) from e
    if not gd.node:
        raise ModelLoadError(f"{path}: the frozen graph has no nodes")
    placeholders = [n for n in gd.node if n.op == "Placeholder"]
    names = [n.name for n in placeholders]
    shapes = dict(params.shape_dict or {})
    for n in shapes:
        if n.split(":")[0] not in names:
            raise ModelLoadError(f"{path}: shape_dict names input {n!r}, but the graph's placeholders are {names}")
    node_names = {n.name for n in gd.node}
    outs = [o.split(":")[0] for o in params.output_names]
    for o in outs:
        if o not in node_names:
            raise ModelLoadError(f"{path}: output {o!r} is not a node of the frozen graph")
    input_arrays = [n for n in names if n in {k.split(":")[0] for k in shapes}] if shapes else names
    input_shapes = {}
    for n in input_arrays:
        s = shapes.get(n) or shapes.get(f"{n}:0")
        if s is None:
            ph = next(p for p in placeholders if p.name == n)
            dims = [d.size for d in ph.attr["shape"].shape.dim]
            if not dims or any(d <= 0 for d in dims[1:]):
                raise ModelLoadError(f"{path}: placeholder {n!r} has dynamic shape {dims}; "
                                     f"give its shape with shape_dict={{{n!r}: (...)}}")
            s = [1] + dims[1:] if dims[0] <= 0 else dims
        input_shapes[n] = list(s)
    try:
        converter = v1.lite.TFLiteConverter.from_frozen_graph(path, input_arrays, outs, input_shapes)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot read the frozen graph: {type(e).__name__}: {e}") from e
    data = _convert(converter, path)
    return data, ("order", input_arrays, list(params.output_names))


def _rename(g: Graph, old: str, new: str) -> None:
    if old == new or new in g.tensors or new in g.constants:
        return
    for n in g.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
        n.outputs = [new if o == old else o for o in n.outputs]
    g.inputs = [new if i == old else i for i in g.inputs]
    g.outputs = [new if o == old else o for o in g.outputs]
    if old in g.tensors:
        g.tensors[new] = g.tensors.pop(old)


def _rename_boundary(g: Graph, how) -> None:
    """Name graph inputs/outputs as the TensorFlow user knows them (signature names / given names)."""
    renamed = {}
    if how[0] == "signature":
        keys = how[1]
        user_names = how[2] if len(how) > 2 else keys
        sigs = g.metadata.get("tflite_signatures") or []
        if sigs:
            sig = sigs[0]
            for key, tname in sig["inputs"].items():
                if tname in g.inputs:
                    renamed[tname] = key
            by_key = dict(sig["outputs"])
            if keys and all(k in by_key and by_key[k] in g.outputs for k in keys):
                g.outputs = [by_key[k] for k in keys]
            out_map = {tname: key for key, tname in by_key.items()}
            if keys and user_names and len(user_names) == len(keys):
                out_map.update({by_key[k]: u for k, u in zip(keys, user_names) if k in by_key})
            for tname in g.outputs:
                if tname in out_map:
                    renamed[tname] = out_map[tname]
    else:
        _, in_names, out_names = how
        for old, new in zip(list(g.inputs), in_names):
            renamed[old] = new
        by_name = {o: o for o in g.outputs}
        if out_names and len(out_names) == len(g.outputs):
            ordered = []
            for k, want in enumerate(out_names):
                ordered.append(by_name.get(want, by_name.get(want.split(":")[0], g.outputs[k])))
            if len(set(ordered)) == len(ordered):
                g.outputs = ordered
            for old, new in zip(list(g.outputs), out_names):
                renamed[old] = new
    for old, new in renamed.items():
        _rename(g, old, new)
    g.metadata["tensorflow_names"] = renamed
    g.remove_unused()


# ---- the source: what load_model gets ----------------------------------------------------------

@dataclass(frozen=True)
class TensorFlowParams(ImporterParams):
    """``ImporterParams`` of a TensorFlow model (registers the TensorFlow importer)."""

    format = "tensorflow"
    suffixes = _KERAS_EXTS + _FROZEN_EXTS

    @classmethod
    def reads(cls, path: str) -> bool:
        return super().reads(path) or any(os.path.isfile(os.path.join(path, f))
                                          for f in ("saved_model.pb", "saved_model.pbtxt"))

    def import_graph(self) -> Graph:
        return import_tensorflow(self)


def tensorflow_source(
    model_path: str | os.PathLike,
    shape_dict: ShapeDict | None = None,
    output_names: Sequence[str] | None = None,
) -> TensorFlowParams:
    """Parameters to import a TensorFlow model: a SavedModel directory, a Keras ``.keras``/``.h5``
    file or a frozen GraphDef ``.pb`` (which needs ``shape_dict`` and ``output_names``).

    The model is converted with TensorFlow's own TFLite converter (float) and imported as TFLite.
    """
    if isinstance(output_names, str):
        output_names = [output_names]
    return TensorFlowParams(
        model_path=os.fspath(model_path),
        shape_dict=normalize_shapes(shape_dict),
        output_names=tuple(output_names) if output_names else None,
    )
