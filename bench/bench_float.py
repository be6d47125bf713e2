"""Float execution of MobileNetV2: mixq vs onnxruntime on the same ONNX file, batch 1 and 32.

Prints the median time of each and the ratio mixq / onnxruntime (target at batch 32: <= 3x).
onnxruntime runs with 2 intra-op threads; mixq's numpy/BLAS use their defaults. The two
alternate run by run, so a busy machine slows both alike; the load average is printed too.
"""
import os
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core import load_model, onnx_source, zoo  # noqa: E402

ORT_THREADS = 2
TARGET_RATIO = 3.0


def onnxruntime_session(path):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    # the zoo file fixes batch 1; give onnxruntime a copy with a free batch dimension
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = ORT_THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    import onnxruntime as ort

    path = zoo.build("mobilenet_v2")
    net = load_model(onnx_source(path))
    sess = onnxruntime_session(path)
    name = net.input_names[0]

    rng = np.random.default_rng(0)
    print(f"MobileNetV2 float ({path.name}); onnxruntime {ort.__version__} with {ORT_THREADS} intra-op threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>5}  {'runs':>4}  {'mixq [ms]':>10}  {'onnxruntime [ms]':>16}  {'ratio':>6}  {'max rel err':>11}")
    ratio_at_32 = None
    for batch, repeats in ((1, 20), (32, 7)):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        (ours,) = net.execute({name: x})  # also the warm-up
        (theirs,) = sess.run(None, {name: x})
        err = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        t_mixq, t_ort = [], []
        for _ in range(repeats):
            t_mixq.append(timed(lambda x=x: net.execute({name: x})))
            t_ort.append(timed(lambda x=x: sess.run(None, {name: x})))
        m, o = statistics.median(t_mixq), statistics.median(t_ort)
        if batch == 32:
            ratio_at_32 = m / o
        print(f"{batch:>5}  {repeats:>4}  {m * 1e3:>10.1f}  {o * 1e3:>16.1f}  {m / o:>5.2f}x  {err:>11.1e}")
    verdict = "met" if ratio_at_32 <= TARGET_RATIO else "NOT met"
    print(f"target at batch 32: mixq <= {TARGET_RATIO:g}x onnxruntime -> {verdict} ({ratio_at_32:.2f}x); "
          f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
