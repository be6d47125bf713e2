"""One coverage measurement: a model file -> loads?, float error vs onnxruntime, INT8/INT16 output
SQNR vs float, and onnxruntime's own static INT8 QDQ SQNR on the same samples.

Shared by ``bench/bench_coverage.py`` (the full suite) and ``tests/coverage/`` (small models).
Nothing here raises for a model that fails: the failure is recorded in the row and the next step
that does not depend on it still runs (onnxruntime's peer needs no mixq step).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Row", "sqnr_db", "rel_max_error", "measure", "ort_run", "ort_static_int8", "format_table"]


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """10 log10(sum ref**2 / sum (ref - x)**2); inf when equal."""
    ref = np.asarray(ref, np.float64)
    err = float(np.sum((ref - np.asarray(x, np.float64)) ** 2))
    sig = float(np.sum(ref ** 2))
    if err == 0:
        return math.inf
    if sig == 0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def rel_max_error(ref: np.ndarray, x: np.ndarray) -> float:
    """max |ref - x| / max |ref| (the float engine's agreement with onnxruntime)."""
    ref = np.asarray(ref, np.float64)
    peak = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(ref - np.asarray(x, np.float64)))) if ref.size else 0.0
    return diff / peak if peak > 0 else diff


def _outputs_sqnr(refs: list[np.ndarray], xs: list[np.ndarray]) -> float:
    """SQNR over all outputs together (each flattened)."""
    r = np.concatenate([np.asarray(a, np.float64).ravel() for a in refs])
    x = np.concatenate([np.asarray(a, np.float64).ravel() for a in xs])
    return sqnr_db(r, x)


@dataclass
class Row:
    name: str
    kind: str
    loads: bool = False
    float_rel: float | None = None
    int8: float | None = None
    int16: float | None = None
    int8_minmax: float | None = None     # mixq INT8 with onnxruntime's calibration (MinMax): same algorithm
    ort_int8: float | None = None
    ort_int16: float | None = None        # onnxruntime's 16-bit QDQ (QInt16 activations and weights)
    ort_int8_fused: float | None = None   # ort_int8's model through onnxruntime's fused integer kernels
    errors: dict[str, str] = field(default_factory=dict)     # step -> "Type: message"
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failed(self) -> list[str]:
        return sorted(self.errors)


def _err(e: BaseException) -> str:
    msg = str(e).replace("\n", " ")
    return f"{type(e).__name__}: {msg[:300]}"


def ort_session(path_or_bytes, threads: int = 1, fused: bool = True):
    """``fused=False``: no graph optimizations, so a QDQ model runs as written (dequantize, float op,
    quantize) instead of through onnxruntime's fused integer kernels, whose U8S8 products saturate
    int16 pair sums on AVX2 CPUs without VNNI (see docs/quantization.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes, opts, providers=["CPUExecutionProvider"])


def ort_run(sess, feeds: dict[str, np.ndarray], batch: int = 1) -> list[np.ndarray]:
    """Run sample by sample (models exported at a fixed batch stay runnable), concatenate."""
    n = len(next(iter(feeds.values())))
    parts = []
    for i in range(0, n, batch):
        parts.append(sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()}))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


class SampleReader:
    """onnxruntime's CalibrationDataReader protocol over a list of {input name: array} feeds."""

    def __init__(self, samples):
        self.samples = list(samples)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples[self.i - 1]

    def rewind(self):
        self.i = 0


def ort_static_int8(model_path: str, calib: list[dict], workdir: str, bits: int = 8):
    """onnxruntime's static INT8 QDQ (per-channel MinMax, QUInt8 activations, QInt8 weights;
    ``bits=16``: QInt16 activations and weights, its 16-bit form) after
    ``quant_pre_process`` (skipped, with a note, if pre-processing itself fails; without its graph
    optimization when the quantized model of the optimized graph does not load). Returns
    (session with onnxruntime's fused kernels, the same model unfused, note)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = ""
    import onnx

    proto = onnx.load(model_path)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:   # per-channel QDQ (DequantizeLinear's axis) needs opset 13
        from onnx import version_converter

        model_path = os.path.join(workdir, "opset13.onnx")
        onnx.save(version_converter.convert_version(proto, 13), model_path)
        note = f"opset {opset} converted to 13 for onnxruntime's quantizer"
    for skip_optimization in (False, True):
        pre = os.path.join(workdir, "pre.onnx")
        try:   # symbolic shape inference needs sympy, which is not installed: onnx's shape inference
            quant_pre_process(model_path, pre, skip_symbolic_shape=True, skip_optimization=skip_optimization)
        except Exception as e:
            pre = model_path
            note = f"ort pre-process failed ({type(e).__name__}: {str(e)[:80]})"
        out = os.path.join(workdir, "ort_int8.onnx")
        act, wt = (QuantType.QUInt8, QuantType.QInt8) if bits == 8 else (QuantType.QInt16, QuantType.QInt16)
        quantize_static(pre, out, SampleReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=wt, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"UseQDQContribOps": bits == 16})
        try:
            return ort_session(out), ort_session(out, fused=False), note
        except Exception as e:
            if skip_optimization:
                raise
            # onnxruntime's Conv+BN fusion in pre-processing can leave an invalid QDQ graph (PP-OCR):
            # quantize the unfused model instead
            note = f"ort pre-process optimization skipped (its quantized model failed: {type(e).__name__})"
    raise AssertionError("unreachable")


def _stack(samples: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}


def measure(name: str, kind: str, model_path: str, calib: list[dict], evaluation: list[dict], *,
            shape_dict=None, peer: bool = True, int16: bool = True, fast: bool = False,
            minmax: bool = False, peer_int16: bool = False) -> Row:
    """Measure one model. ``calib``/``evaluation``: lists of {input name: array with batch 1}.
    ``minmax``: also mixq INT8 calibrated like the peer (MinMax), the same algorithm on both sides;
    ``peer_int16``: also onnxruntime's 16-bit QDQ, the peer of mixq's INT16."""
    import dataclasses

    from core import MinMaxMethod, default_quantization, int16_quantization, load_model, onnx_source

    row = Row(name, kind)
    t0 = time.perf_counter()
    feeds = _stack(evaluation)
    ref = None
    try:
        ref = ort_run(ort_session(model_path), feeds)
    except Exception as e:
        row.errors["onnxruntime float"] = _err(e)
    net = None
    try:
        net = load_model(onnx_source(model_path, shape_dict=shape_dict))
        row.loads = True
    except Exception as e:
        row.errors["load"] = _err(e)
    floats = None
    if net is not None:
        try:
            floats = net.execute(feeds)
            if ref is not None:
                row.float_rel = max(rel_max_error(r, f) for r, f in zip(ref, floats))
        except Exception as e:
            row.errors["float"] = _err(e)
    baseline = ref if ref is not None else floats
    if net is not None and baseline is not None:
        steps = [("int8", default_quantization, "int8"), ("int16", int16_quantization, "int16")]
        if minmax:
            steps.append(("int8 minmax", dataclasses.replace(default_quantization, calibration_method=MinMaxMethod()),
                          "int8_minmax"))
        for label, cfg, attr in steps:
            if label == "int16" and not int16:
                continue
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    model = net.quantize(calib, cfg, model_name=f"{name}_{label.replace(' ', '_')}")
                    outs = model.execute(feeds, fast_mode=fast)
                row.warnings += [f"{label}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
                setattr(row, attr, _outputs_sqnr(baseline, outs))
            except Exception as e:
                row.errors[label] = _err(e)
                if os.environ.get("MIXQ_COVERAGE_TRACEBACK"):
                    traceback.print_exc()
    if peer and ref is not None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                fused, unfused, note = ort_static_int8(model_path, calib, tmp)
                row.ort_int8 = _outputs_sqnr(ref, ort_run(unfused, feeds))
                row.ort_int8_fused = _outputs_sqnr(ref, ort_run(fused, feeds))
                if note:
                    row.warnings.append(note)
        except Exception as e:
            row.errors["onnxruntime int8"] = _err(e)
    if peer and peer_int16 and int16 and ref is not None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                _, unfused, _ = ort_static_int8(model_path, calib, tmp, bits=16)
                row.ort_int16 = _outputs_sqnr(ref, ort_run(unfused, feeds))
        except Exception as e:
            row.errors["onnxruntime int16"] = _err(e)
    row.seconds = time.perf_counter() - t0
    return row


def _db(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.1f}"


def format_table(rows: list[Row]) -> str:
    head = ("model", "kind", "loads", "float rel", "INT8 dB", "INT16 dB", "ORT INT8 dB", "ORT fused", "INT8-ORT",
            "MinMax INT8-ORT", "ORT INT16 dB", "s", "notes")
    lines = []
    for r in rows:
        delta = "-" if r.int8 is None or r.ort_int8 is None else f"{r.int8 - r.ort_int8:+.1f}"
        same = "-" if r.int8_minmax is None or r.ort_int8 is None else f"{r.int8_minmax - r.ort_int8:+.1f}"
        notes = "; ".join(f"{k}: {v}" for k, v in r.errors.items())
        if r.warnings:
            notes = "; ".join(filter(None, [notes, f"{len(r.warnings)} warning(s): {r.warnings[0][:120]}"]))
        lines.append((r.name, r.kind, "yes" if r.loads else "NO",
                      "-" if r.float_rel is None else f"{r.float_rel:.1e}",
                      _db(r.int8), _db(r.int16), _db(r.ort_int8), _db(r.ort_int8_fused), delta, same, _db(r.ort_int16),
                      f"{r.seconds:.0f}",
                      notes[:220]))
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head[:-1])]
    out = [" | ".join(h.ljust(w) for h, w in zip(head[:-1], widths)) + " | notes"]
    out.append("-+-".join("-" * w for w in widths) + "-+------")
    for x in lines:
        out.append(" | ".join(v.ljust(w) for v, w in zip(x[:-1], widths)) + " | " + x[-1])
    return "\n".join(out)
