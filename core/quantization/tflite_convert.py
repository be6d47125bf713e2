"""Pre-quantized TFLite models -> a :class:`QuantizedProgram` that keeps the model's own quantization.

``convert_tflite_program(graph, requantization_mode, model_name)`` reads what the TFLite importer
recorded (``graph.metadata["tflite_quantization"]``, ``["tflite_quantized_constants"]``,
``["tflite_ops"]``; see :mod:`core.importers.tflite`) and builds the program the integer
interpreter runs, without calibration:

* every quantized activation tensor gets a :class:`TensorQuant` with the file's scale and zero
  point (``rounding="tflite"``: a float tensor entering the integer part is quantized as TFLite's
  QUANTIZE does, ``x / scale`` in float32 rounded half away from zero). Tensors the graph passes
  renamed or removed (QUANTIZE/DEQUANTIZE became Identity and were removed, MEAN became
  GlobalAveragePool + Flatten, the NHWC<->NCHW Transposes at the edges) get theirs through the
  recorded TFLite ops and through layout ops (Transpose/Reshape/Flatten/Squeeze/Unsqueeze/Identity),
  forwards and backwards.
* Conv (incl. depthwise) / Gemm: the file's int8 weights (raw arrays, brought to mixq's layout:
  OHWI -> OIHW, 1HWO -> O1HW, (O, K)), per-channel scales, the int32 bias as stored, and per output
  channel ``real = (double)s_in * (double)s_w[c] / (double)s_out`` as TFLite's
  ``PopulateConvolutionQuantizationParams`` computes it, turned into (multiplier, shift) by the
  configured :class:`RequantizationMode` (``tflite``: QuantizeMultiplier, bit for bit). The clamp
  comes from the fused activation (``CalculateActivationRangeQuantized``).
  Gemm (FULLY_CONNECTED) with the tflite flavor requantizes as TF 2.21's reference kernel does,
  ``round(double(acc) * real)`` half away from zero (``tflite_requant="float"``), not with the
  fixed-point multiplier; Conv and depthwise use the fixed-point MultiplyByQuantizedMultiplier.
* Add/Sub/Mul (two activation inputs, or one and an int8 constant such as an unfolded
  BatchNormalization's scale/offset), GlobalAveragePool (MEAN over H, W: ``QuantizedMeanOrSum``,
  :func:`mean_int_tflite`), Concat, pools, Pad, nearest Resize, layout ops, standalone Relu/Clip,
  Sigmoid (LOGISTIC: TFLite's float32 lookup table) and Softmax (the reference fixed-point
  kernel): integer kernels (``core.ops.activation.logistic_int8`` / ``softmax_int8``).
* any other op whose tensors are quantized runs as a float island (dequantize, float kernel,
  quantize with TFLite's rounding): correct, not bit-exact; ``program.meta["tflite_float_islands"]``
  lists them. Float ops of a mixed model (float inputs and outputs) run float (``"apu"``).
* operators that cannot be converted raise :class:`~core.errors.UnsupportedOperatorError` naming
  them (uint8 activations, a dense op with quantized activations but weights the file does not
  hold as int8 with a scale, ...).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from core.errors import QuantizationConfigError, UnsupportedOperatorError
from core.ir.graph import Graph, Node
from core.ops.common import weight_output_axis
from core.ops.quant_rules import is_layout_op, rule_of
from core.quantization.params import QuantizationFlavor, RequantizationMode, default_quantization
from core.quantization.quantizer import NodeQuant, QuantizedProgram, TensorQuant

__all__ = ["convert_tflite_program", "is_prequantized"]

log = logging.getLogger("mixq")

_BITS = {"int8": 8, "int16": 16}


def is_prequantized(graph: Graph) -> bool:
    """True when the TFLite importer recorded quantized activation tensors (not only weights)."""
    qmeta = graph.metadata.get("tflite_quantization") or {}
    raw = graph.metadata.get("tflite_quantized_constants") or {}
    return any(k not in raw and v.get("dtype") in ("int8", "int16", "uint8") for k, v in qmeta.items())


def _mode(requantization_mode) -> RequantizationMode:
    if isinstance(requantization_mode, QuantizationFlavor):
        return requantization_mode.requantization_mode
    if isinstance(requantization_mode, RequantizationMode):
        return requantization_mode
    if isinstance(requantization_mode, str):
        try:
            return RequantizationMode(requantization_mode)
        except ValueError:
            pass
    raise QuantizationConfigError(f"requantization_mode must be a RequantizationMode or QuantizationFlavor "
                                  f"('sima' or 'tflite'), got {requantization_mode!r}")


class _Converter:
    """The conversion, and what op rules' ``convert_tflite`` reads: ``graph``, ``consts``,
    ``mode``, the file's integer ``weights`` / ``bias`` of a dense node, a ``constant_operand``'s
    codes, a MEAN's ``mean_keepdims``."""

    def __init__(self, graph: Graph, mode: RequantizationMode, model_name: str | None):
        self.g = graph
        self.graph = graph
        self.mode = mode
        self.model_name = model_name or graph.name
        md = graph.metadata
        self.qmeta: dict[str, dict] = md.get("tflite_quantization") or {}
        self.raw: dict[str, np.ndarray] = md.get("tflite_quantized_constants") or {}
        self.ops: list[dict] = md.get("tflite_ops") or []
        self.consts = graph.constants
        # IR constant name -> TFLite tensor name (for the raw integer weights / biases)
        self.const_src: dict[str, str] = {}
        for name, e in self.qmeta.items():
            ir = e.get("ir_tensor")
            if ir and name in self.raw:
                self.const_src.setdefault(ir, name)

    # ---- tensor quantization ---------------------------------------------------------------
    def _tq(self, entry: dict, where: str) -> TensorQuant | None:
        dtype = entry.get("dtype")
        if dtype not in _BITS:
            if dtype == "uint8":
                raise UnsupportedOperatorError(
                    "uint8 activation",
                    where,
                    "uint8 (pre-2.0 TFLite) quantization is not converted; re-convert with int8",
                )
            return None
        if len(entry["scale"]) != 1:
            raise UnsupportedOperatorError("per-axis activation quantization", where,
                                           "activations must be quantized per tensor")
        bits = _BITS[dtype]
        return TensorQuant(float(np.float32(entry["scale"][0])), int(entry["zero_point"][0]), bits, rounding="tflite")

    def tensor_quant(self) -> dict[str, TensorQuant]:
        g = self.g
        live = set(g.tensors) | set(g.inputs) | set(g.outputs)
        for n in g.nodes:
            live.update(i for i in n.inputs if i)
            live.update(o for o in n.outputs if o)
        tq: dict[str, TensorQuant] = {}
        by_tfl: dict[str, TensorQuant] = {}
        for name, e in self.qmeta.items():
            if name in self.raw or e.get("ir_tensor") in self.consts:
                continue
            q = self._tq(e, name)
            if q is None:
                continue
            by_tfl[name] = q
            ir = e.get("ir_tensor")
            if ir and ir in live and ir not in self.consts:
                tq.setdefault(ir, q)
        # QUANTIZE (float -> int): the float tensor read by the integer part takes the output's
        # quantization; DEQUANTIZE (int -> float): the float result is the input's real value
        for op in self.ops:
            ins, outs = op.get("inputs") or [], op.get("outputs") or []
            if not ins or not outs:
                continue
            if op["op"] == "QUANTIZE" and outs[0] in by_tfl:
                if ins[0] in by_tfl:   # int -> int requantization: an Identity node, see requantize_int_tflite
                    continue
                for ir in self._ir_names(ins[0]):
                    if ir in live:
                        tq.setdefault(ir, by_tfl[outs[0]])
            elif op["op"] == "DEQUANTIZE" and ins[0] in by_tfl:
                for ir in self._ir_names(outs[0]):
                    if ir in live:
                        tq.setdefault(ir, by_tfl[ins[0]])
        # through layout ops, both ways, until nothing changes
        changed = True
        while changed:
            changed = False
            for n in g.nodes:
                if not n.inputs or not n.outputs or not is_layout_op(n.op):
                    continue
                a, b = n.inputs[0], n.outputs[0]
                if a in self.consts:
                    continue
                if a in tq and b not in tq:
                    tq[b] = tq[a]
                    changed = True
                elif b in tq and a not in tq:
                    tq[a] = tq[b]
                    changed = True
        return tq

    def constant_operand(self, n: Node, name: str) -> tuple[np.ndarray, TensorQuant] | None:
        """The int8 codes (in the IR constant's layout) and quantization of a constant operand of
        an elementwise node, found through the TFLite op that produced the node's output."""
        outs = set(n.outputs)
        for op in self.ops:
            if not op.get("outputs") or not outs & set(self._ir_names(op["outputs"][0])):
                continue
            for t in op.get("inputs") or []:
                e = self.qmeta.get(t)
                if not e or t not in self.raw or name not in (t, e.get("ir_tensor")) and not name.startswith(t):
                    continue
                q = self._tq(e, t)
                if q is None:
                    return None
                v = np.asarray(self.consts[name], np.float64)
                codes = np.round(v / q.scale) + q.zero_point
                if codes.min() < q.qmin or codes.max() > q.qmax:
                    return None
                back = ((codes - q.zero_point) * q.scale).astype(np.float32)
                if not np.array_equal(back, np.asarray(self.consts[name], np.float32)):
                    return None
                return codes.astype(np.int8 if q.bits == 8 else np.int16), q
        return None

    def mean_keepdims(self, n: Node) -> bool | None:
        """For a GlobalAveragePool made from a TFLite MEAN: its keep_dims (True when the pool's
        output is the MEAN's output, False when a Flatten/Reshape after it is); None otherwise."""
        mean_outs = set()
        for op in self.ops:
            if op["op"] == "MEAN" and op.get("outputs"):
                mean_outs.update(self._ir_names(op["outputs"][0]))
        out = n.outputs[0]
        if out in mean_outs:
            return True
        for m in self.g.nodes:
            if m.inputs and m.inputs[0] == out and is_layout_op(m.op) and m.outputs[0] in mean_outs:
                return False
        # the MEAN's output was renamed (e.g. it is a graph output behind a removed DEQUANTIZE):
        # mixq's passes make GlobalAveragePool only out of ReduceMean, i.e. TFLite's MEAN
        return False if mean_outs else None

    def _ir_names(self, tfl_name: str) -> list[str]:
        names = [tfl_name, f"{tfl_name}:nchw"]
        e = self.qmeta.get(tfl_name)
        if e and e.get("ir_tensor"):
            names.insert(0, e["ir_tensor"])
        return names

    # ---- dense ops ---------------------------------------------------------------------------
    def weights(self, n: Node) -> tuple[np.ndarray, np.ndarray]:
        """(w_q in mixq's layout, per-output-channel scales float64)."""
        wname = n.inputs[1]
        w = np.asarray(self.consts[wname])
        axis = weight_output_axis(n, w.ndim)
        n_out = w.shape[axis]
        src = self.const_src.get(wname)
        if src is None:
            raise UnsupportedOperatorError(n.op, n.source_name or n.name,
                                           f"its weights {wname!r} are not int8 weights of the TFLite file")
        e = self.qmeta[src]
        raw = np.asarray(self.raw[src])
        if e.get("dtype") != "int8":
            raise UnsupportedOperatorError(n.op, n.source_name or n.name, f"{e.get('dtype')} weights")
        if any(int(z) != 0 for z in e["zero_point"]):
            raise UnsupportedOperatorError(n.op, n.source_name or n.name, "weights with a nonzero zero point")
        scales = np.asarray([float(np.float32(s)) for s in e["scale"]], np.float64)
        wq = rule_of(n).tflite_weight_layout(n, raw, w)
        if wq is None:
            raise UnsupportedOperatorError(n.op, n.source_name or n.name,
                                           f"weights of shape {raw.shape} do not map onto {w.shape}")
        wq = np.ascontiguousarray(wq)
        if scales.size == 1:
            scales = np.full(n_out, scales[0])
        elif scales.size != n_out:
            raise UnsupportedOperatorError(n.op, n.source_name or n.name,
                                           f"{scales.size} weight scales for {n_out} output channels")
        # the float graph holds the same weights dequantized: a cheap check of the layout
        shape = [1] * w.ndim
        shape[axis] = -1
        deq = (wq.astype(np.float64) * scales.reshape(shape)).astype(np.float32)
        if wq.shape != w.shape or not np.allclose(deq, w, rtol=1e-6, atol=1e-12):
            raise UnsupportedOperatorError(n.op, n.source_name or n.name,
                                           "the file's int8 weights do not match the imported graph's weights")
        return wq.astype(np.int8), scales

    def bias(self, n: Node, n_out: int, acc_scale: np.ndarray) -> np.ndarray | None:
        if len(n.inputs) < 3 or not n.inputs[2]:
            return None
        bname = n.inputs[2]
        src = self.const_src.get(bname)
        if src is not None and self.qmeta[src].get("dtype") in ("int32", "int64"):
            b = np.asarray(self.raw[src]).reshape(-1)
        else:   # a float bias (never in files TensorFlow's converter writes for int8)
            bf = np.asarray(self.consts[bname], np.float64).reshape(-1)
            b = np.round(bf / acc_scale)
            log.warning("%s: bias %r is not an integer tensor of the file; quantized with the accumulator scale",
                        n.name, bname)
        if b.size == 1 and n_out > 1:
            b = np.broadcast_to(b, (n_out,))
        if b.size != n_out:
            raise UnsupportedOperatorError(
                n.op, n.source_name or n.name, f"bias of {b.size} values for {n_out} channels"
            )
        return np.clip(b, -(2 ** 31), 2 ** 31 - 1).astype(np.int32)

    # ---- the program -------------------------------------------------------------------------
    def convert(self) -> QuantizedProgram:
        g = self.g.copy()
        self.g = self.graph = g
        self.consts = g.constants
        tq = self.tensor_quant()
        kinds: dict[str, str] = {}
        node_consts: dict[str, NodeQuant] = {}
        islands: list[str] = []
        for n in g.nodes:
            kinds[n.name], node_consts[n.name] = self.convert_node(n, tq)
            if kinds[n.name] == "float":
                islands.append(n.name)
        if islands:
            log.info("%s: %d quantized op(s) run as float islands (not bit-exact): %s", self.model_name,
                     len(islands), ", ".join(islands))
        params = default_quantization.with_requantization_mode(self.mode)
        bits = max([q.bits for q in tq.values()] or [8])
        meta = {"activation_bits": bits, "source": "tflite", "tflite_float_islands": islands}
        return QuantizedProgram(g, tq, node_consts, kinds, self.mode, params, meta)

    def convert_node(self, n: Node, tq: dict[str, TensorQuant]) -> tuple[str, NodeQuant]:
        """A node whose tensors are all quantized runs its op's rule (``convert_tflite``), or is a
        float island when the rule declines; other nodes are float ("apu")."""
        acts = [i for i in n.inputs if i and i not in self.consts]
        outs = [o for o in n.outputs if o]
        q_ins = [tq.get(i) for i in acts]
        q_outs = [tq.get(o) for o in outs]
        rule = rule_of(n)
        if outs and all(q is not None for q in q_outs) and acts and all(q is not None for q in q_ins):
            nq = rule.convert_tflite(n, self, acts, q_ins, q_outs[0]) if rule is not None else None
            return ("int", nq) if nq is not None else ("float", NodeQuant())
        if rule is not None and rule.weighted and acts and q_ins[0] is not None and n.inputs[1] in self.const_src:
            raise UnsupportedOperatorError(n.op, n.source_name or n.name,
                                           "quantized input and weights but a float output")
        return "apu", NodeQuant()


def convert_tflite_program(graph: Graph, requantization_mode: Any = RequantizationMode.sima,
                           model_name: str | None = None) -> QuantizedProgram:
    """A pre-quantized TFLite model's graph (from ``load_model(tflite_source(...))``) -> a
    :class:`QuantizedProgram` with the model's own scales and zero points (see the module doc)."""
    if graph.metadata.get("source_format") != "tflite" or not is_prequantized(graph):
        raise QuantizationConfigError(
            f"model {graph.name!r} is not a pre-quantized TFLite model (no quantized activation tensors): "
            f"use LoadedNet.quantize(calibration_data, ...) for float models")
    return _Converter(graph, _mode(requantization_mode), model_name).convert()
