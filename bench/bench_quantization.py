"""Quantized MobileNetV2: mixq vs onnxruntime's ``quantize_static`` on the same ONNX file and crops.

1. Fidelity: agreement of each quantized model's top-1 with FP32's top-1 on the natural-image
   evaluation crops (photos disjoint from the calibration photos) and on the 20 labelled foolbox
   ImageNet images (top-1 accuracy against the labels is shown too). FP32 is mixq's float run of
   the same file. Quantized models:
   * mixq INT8 ``default_quantization``, mixq ``int16_quantization``;
   * mixq mixed: INT8 with the MIXED_NODES most sensitive nodes at INT16, ranked by
     ``core.search.rank_nodes_by_output_gain`` on RANK_SAMPLES calibration crops (float passes that
     simulate the INT8 program, leaving one node in float at a time: how much the output error
     drops; the ranking the accuracy-feedback search uses);
   * onnxruntime ``quantize_static``: QDQ, per_channel=True, activations QUInt8, weights QInt8,
     with MinMax, Entropy and Percentile calibration on the same calibration crops (fed one sample
     at a time: the zoo file fixes batch 1), each with default options (Entropy / Percentile keep
     every sample's activations, ~90 MiB a sample: ~12 GiB at 128; ``CalibMaxIntermediateOutputs``
     is not used: in onnxruntime 1.32 only MinMax reads it, and it drops each full chunk uncomputed).
     No ``quant_pre_process``. Its QDQ model is evaluated from a copy with a free batch dimension,
     as onnxruntime runs it by default (fused integer kernels) and unfused (graph optimizations off:
     the QDQ model as written); on AVX2 CPUs without VNNI the fused U8S8 kernels saturate int16 pair
     sums, which costs the fused rows accuracy the quantization itself does not lose.
   Targets: mixq INT8 >= onnxruntime's best; int16 >= 99%; mixed > INT8.
2. Time at batch 32: mixq INT8 bit-accurate (``fast_mode=False``) and fast mode vs onnxruntime
   running its INT8 QDQ model (the best calibration's; 2 intra-op threads); runs alternate and the
   median is shown. Targets: exact <= 4x, fast <= 1.5x.

onnxruntime's artifacts (augmented model, quantized models) live in a temporary directory.

    python bench/bench_quantization.py            # 128 calibration, 200 evaluation crops, 7 timing runs
    python bench/bench_quantization.py --quick    # 32 calibration, 48 evaluation crops, 3 timing runs
    python bench/bench_quantization.py --timing-only  # section 2 only: TIMING_CALIB crops, MinMax QDQ, 7 runs
"""
import argparse
import logging
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.coverage.harness import SampleReader  # noqa: E402
from bench.coverage.harness import ort_session as harness_ort_session  # noqa: E402
from core import QuantizationPrecision, default_quantization, int16_quantization, load_model, onnx_source, zoo  # noqa: E402
from core.search import rank_nodes_by_output_gain  # noqa: E402

ORT_THREADS = 2
MIXED_NODES = 5
RANK_SAMPLES = 16
TIMING_BATCH = 32
TARGET_EXACT, TARGET_FAST = 4.0, 1.5
TIMING_CALIB = 8  # --timing-only: calibration crops for both quantizers (timing does not depend on them)


def ort_session(model_proto, fused: bool = True):
    """``fused=False``: the QDQ model as written (see ``bench.coverage.harness.ort_session``)."""
    return harness_ort_session(model_proto.SerializeToString(), threads=ORT_THREADS, fused=fused)


def batch_free(path):
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]  # the quantizer records batch-1 shapes of intermediates
    return model


def ort_quantize(src, dst, calib, input_name, method):
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # one "Axis 1 is out-of-range" warning per 1-D weight, and a pre-processing hint
    try:
        quantize_static(str(src), str(dst), SampleReader([{input_name: calib[i:i + 1]} for i in range(len(calib))]),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
    finally:
        root.setLevel(level)


def top1(run, x, batch=32):
    return np.concatenate([run(x[i:i + batch]).argmax(-1).ravel() for i in range(0, len(x), batch)])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer crops and timing runs (development)")
    ap.add_argument("--timing-only", action="store_true",
                    help="skip fidelity: time only, onnxruntime QDQ from MinMax calibration on a few crops")
    args = ap.parse_args()
    if args.timing_only:
        return timing_only(3 if args.quick else 7)
    n_calib, n_eval, repeats = (32, 48, 3) if args.quick else (128, 200, 7)

    import onnxruntime as ort

    t_start = time.perf_counter()
    path = zoo.build("mobilenet_v2")
    net = load_model(onnx_source(path))
    name = net.input_names[0]
    calib = zoo.datasets.natural_images("calibration", n_calib).inputs
    evalset = zoo.datasets.natural_images("evaluation", n_eval).inputs
    labelled = zoo.datasets.imagenet_samples()
    sets = {"eval crops": evalset, "labelled": labelled.inputs}
    print(f"MobileNetV2 ({path.name}){' [QUICK]' if args.quick else ''}: {n_calib} calibration crops, "
          f"{n_eval} evaluation crops + {len(labelled)} labelled images; onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    fp32 = {k: top1(lambda b: net.execute({name: b})[0], x) for k, x in sets.items()}
    fp32_acc = float((fp32["labelled"] == labelled.labels).mean())

    stats = net.calibrate([{name: calib[i:i + 1]} for i in range(n_calib)])
    int8 = net.quantize(stats, default_quantization)
    ranked = rank_nodes_by_output_gain(net, int8, {name: calib[:RANK_SAMPLES]})
    chosen = [n for n, _ in ranked[:MIXED_NODES]]
    mixed_cfg = default_quantization.with_custom_quantization_configs(
        {n: {"quantization_precision": QuantizationPrecision.INT_16} for n in chosen})
    models = {
        "mixq INT8 (default_quantization)": int8,
        "mixq INT16 (int16_quantization)": net.quantize(stats, int16_quantization),
        f"mixq mixed (INT8, {len(chosen)} nodes INT16)": net.quantize(stats, mixed_cfg),
    }
    rows = []
    for label, m in models.items():
        rows.append(
            (label, {k: top1(lambda b, m=m: m.execute({name: b}, fast_mode=False)[0], x) for k, x in sets.items()})
        )

    ort_rows = []   # (label, predictions, name, method, its fused session: what section 2 times)
    with tempfile.TemporaryDirectory(prefix="mixq_bench_ort_") as tmp:
        for method in ("MinMax", "Entropy", "Percentile"):
            dst = pathlib.Path(tmp) / f"mobilenet_v2_qdq_{method.lower()}.onnx"
            t = time.perf_counter()
            cwd = os.getcwd()
            os.chdir(tmp)  # onnxruntime writes its augmented model to the working directory
            try:
                ort_quantize(path, dst, calib, name, method)
            finally:
                os.chdir(cwd)
            t_q = time.perf_counter() - t
            sess = ort_session(batch_free(dst))
            unfused = ort_session(batch_free(dst), fused=False)
            for label, runner, shown in ((f"onnxruntime QDQ {method} ({t_q:.0f} s to quantize)", sess, method),
                                         (f"onnxruntime QDQ {method}, unfused", unfused, f"{method} (unfused)")):
                preds = {k: top1(lambda b, s=runner: s.run(None, {name: b})[0], x) for k, x in sets.items()}
                ort_rows.append((label, preds, shown, method, sess))

    def agree(pred, k):
        return float((pred[k] == fp32[k]).mean())

    def overall(pred):
        return float(sum((pred[k] == fp32[k]).sum() for k in sets) / sum(len(x) for x in sets.values()))

    print("\nnodes at INT16 in 'mixed' (output-error drop when left in float, on "
          f"{RANK_SAMPLES} calibration crops): " + ", ".join(f"{n} ({s:.2e})" for n, s in ranked[:MIXED_NODES]))
    print(f"\n{'model':<48}  {'eval crops':>10}  {'labelled':>8}  {'all':>6}  {'label acc':>9}")
    print(f"{'FP32 (mixq float)':<48}  {'-':>10}  {'-':>8}  {'-':>6}  {fp32_acc:>9.0%}")
    all_rows = [(l, p) for l, p in rows] + [(l, p) for l, p, *_ in ort_rows]
    for label, pred in all_rows:
        acc = float((pred["labelled"] == labelled.labels).mean())
        print(f"{label:<48}  {agree(pred, 'eval crops'):>10.1%}  {agree(pred, 'labelled'):>8.0%}  "
              f"{overall(pred):>6.1%}  {acc:>9.0%}")
    best_label, best_pred, best_shown, best_method, best_fused = max(ort_rows, key=lambda r: agree(r[1], "eval crops"))
    print(f"{'onnxruntime best: ' + best_shown:<48}  {agree(best_pred, 'eval crops'):>10.1%}  "
          f"{agree(best_pred, 'labelled'):>8.0%}  {overall(best_pred):>6.1%}")

    a8, a16, amix = (agree(p, "eval crops") for _, p in rows)
    aort = agree(best_pred, "eval crops")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"targets (agreement on eval crops): INT8 {a8:.1%} >= onnxruntime best {aort:.1%} -> {verdict(a8 >= aort)}; "
          f"INT16 {a16:.1%} >= 99% -> {verdict(a16 >= 0.99)}; mixed {amix:.1%} > INT8 {a8:.1%} -> {verdict(amix > a8)}")

    # ---- 2. time at batch 32
    # the best calibration's model, timed with onnxruntime's fused kernels, as users run it
    time_batch(int8, best_fused, f"QDQ {best_method}", name, evalset, repeats)
    print(f"load average now {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f} s")
    return 0


def time_batch(int8, sess, ort_label, name, evalset, repeats):
    """Section 2: mixq INT8 exact and fast_mode vs onnxruntime at batch TIMING_BATCH, alternating runs."""
    x = evalset[np.arange(TIMING_BATCH) % len(evalset)]
    int8.execute({name: x}, fast_mode=False)
    int8.execute({name: x}, fast_mode=True)
    sess.run(None, {name: x})
    t_exact, t_fast, t_ort = [], [], []
    for _ in range(repeats):
        for lst, fn in ((t_exact, lambda: int8.execute({name: x}, fast_mode=False)),
                        (t_fast, lambda: int8.execute({name: x}, fast_mode=True)),
                        (t_ort, lambda: sess.run(None, {name: x}))):
            t = time.perf_counter()
            fn()
            lst.append(time.perf_counter() - t)
    e, f, o = (statistics.median(v) for v in (t_exact, t_fast, t_ort))
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"\ntime at batch {TIMING_BATCH}, median of {repeats} alternating runs "
          f"(onnxruntime: {ort_label}, {ORT_THREADS} intra-op threads)")
    print(f"{'runner':<30}  {'ms':>8}  {'vs onnxruntime':>14}  {'target':>7}")
    print(f"{'onnxruntime INT8 QDQ':<30}  {o * 1e3:>8.1f}  {'1.00x':>14}  {'':>7}")
    print(f"{'mixq INT8 exact':<30}  {e * 1e3:>8.1f}  {e / o:>13.2f}x  {'<= ' + format(TARGET_EXACT, 'g') + 'x':>7}  "
          f"{verdict(e / o <= TARGET_EXACT)}")
    print(
        f"{'mixq INT8 fast_mode':<30}  {f * 1e3:>8.1f}  {f / o:>13.2f}x  {'<= ' + format(TARGET_FAST, 'g') + 'x':>7}  "
        f"{verdict(f / o <= TARGET_FAST)}"
    )
    return e / o, f / o


def timing_only(repeats) -> int:
    """Section 2 alone: both quantizers calibrate on TIMING_CALIB crops (onnxruntime with MinMax)."""
    import onnxruntime as ort

    t_start = time.perf_counter()
    path = zoo.build("mobilenet_v2")
    net = load_model(onnx_source(path))
    name = net.input_names[0]
    calib = zoo.datasets.natural_images("calibration", TIMING_CALIB).inputs
    evalset = zoo.datasets.natural_images("evaluation", TIMING_BATCH).inputs
    print(f"MobileNetV2 ({path.name}) [TIMING ONLY]: {TIMING_CALIB} calibration crops; onnxruntime "
          f"{ort.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    int8 = net.quantize(net.calibrate([{name: calib[i:i + 1]} for i in range(TIMING_CALIB)]), default_quantization)
    with tempfile.TemporaryDirectory(prefix="mixq_bench_ort_") as tmp:
        dst = pathlib.Path(tmp) / "mobilenet_v2_qdq_minmax.onnx"
        cwd = os.getcwd()
        os.chdir(tmp)  # onnxruntime writes its augmented model to the working directory
        try:
            ort_quantize(path, dst, calib, name, "MinMax")
        finally:
            os.chdir(cwd)
        sess = ort_session(batch_free(dst))
    time_batch(int8, sess, "QDQ MinMax", name, evalset, repeats)
    print(f"load average now {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
