"""Channel equalization and bias correction on MobileNetV2 (INT8, default calibration).

Top-1 agreement with FP32 on natural-image evaluation crops (photos disjoint from the
calibration photos), exact integer execution, for per-tensor and per-channel weights, each with
and without cross-layer equalization and bias correction. Per-tensor INT8 weights are the known
hard case for MobileNetV2 (depthwise channels whose ranges differ by orders of magnitude).

    python bench/bench_equalization.py           # 64 calibration, 200 evaluation crops
    python bench/bench_equalization.py --quick   # 32 calibration, 64 evaluation crops
"""
import argparse
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core import default_quantization, load_model, onnx_source, quantization_scheme, zoo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_calib, n_eval = (32, 64) if args.quick else (64, 200)
    net = load_model(onnx_source(zoo.build("mobilenet_v2")))
    name = net.input_names[0]
    calib = zoo.datasets.natural_images("calibration", n_calib).inputs
    crops = zoo.datasets.natural_images("evaluation", n_eval).inputs
    data = [{name: calib[i:i + 1]} for i in range(n_calib)]

    def top1(run):
        return np.concatenate([run(crops[i:i + 32]).argmax(1) for i in range(0, n_eval, 32)])

    fp32 = top1(lambda b: net.execute({name: b})[0])
    print(f"MobileNetV2{' [QUICK]' if args.quick else ''}: {n_calib} calibration crops, {n_eval} evaluation crops; "
          "top-1 agreement with FP32, INT8 exact execution")
    print(f"{'weights':<12} {'equalization':>12} {'bias corr.':>10} {'agreement':>10} {'seconds':>8}")
    results = {}
    for label, scheme in (("per-tensor", quantization_scheme(False, False)),
                          ("per-channel", quantization_scheme(False, True))):
        for eq in (False, True):
            for bc in (False, True):
                t = time.perf_counter()
                cfg = default_quantization.with_weight_quantization(scheme).with_channel_equalization(eq) \
                    .with_bias_correction(bc)
                model = net.quantize(data, cfg)
                agree = float((top1(lambda b, model=model: model.execute({name: b})[0]) == fp32).mean())
                results[(label, eq, bc)] = agree
                print(f"{label:<12} {'yes' if eq else 'no':>12} {'yes' if bc else 'no':>10} {agree:>10.1%} "
                      f"{time.perf_counter() - t:>8.0f}", flush=True)
    gain = results[("per-tensor", True, False)] - results[("per-tensor", False, False)]
    bc_delta = [
        results[(w, e, True)] - results[(w, e, False)] for w in ("per-tensor", "per-channel") for e in (False, True)
    ]
    print(f"equalization on per-tensor weights: {gain:+.1%} agreement; bias correction: "
          + ", ".join(f"{d:+.1%}" for d in bc_delta) + " (per-tensor/per-channel x without/with equalization)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
