"""Float execution of MobileNetV2: mixq vs onnxruntime on the same ONNX file, batch 1 and 32.

Prints the median time of each and the ratio mixq / onnxruntime (target at batch 32: <= 3x).
onnxruntime runs with 2 intra-op threads (this machine's core count); numpy's BLAS uses its default.
"""
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core import load_model, onnx_source, zoo  # noqa: E402


def median_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    import onnxruntime as ort

    path = zoo.build("mobilenet_v2")
    net = load_model(onnx_source(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    # the zoo file fixes batch 1; give onnxruntime a copy with a free batch dimension
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    print(f"{'batch':>5}  {'mixq [ms]':>10}  {'onnxruntime [ms]':>16}  {'ratio':>6}  {'max rel err':>11}")
    worst = 0.0
    for batch, repeats in ((1, 20), (32, 5)):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        t_mixq = median_time(lambda: net.execute({"input": x}), repeats)
        t_ort = median_time(lambda: sess.run(None, {"input": x}), repeats)
        (ours,) = net.execute({"input": x})
        (theirs,) = sess.run(None, {"input": x})
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        ratio = t_mixq / t_ort
        worst = max(worst, ratio) if batch == 32 else worst
        print(f"{batch:>5}  {t_mixq * 1e3:>10.1f}  {t_ort * 1e3:>16.1f}  {ratio:>5.2f}x  {err:>11.1e}")
    print(f"onnxruntime: {ort.__version__}, 2 intra-op threads; target at batch 32: <= 3x -> "
          f"{'met' if worst <= 3 else 'NOT met'} ({worst:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
