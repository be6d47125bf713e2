"""`make demo`: MobileNetV2 from the zoo, run in mixq on the 20 labelled ImageNet images.

(Later issues turn this into the full quantization flow.)
"""
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core import load_model, onnx_source, zoo  # noqa: E402


def main() -> int:
    t0 = time.perf_counter()
    path = zoo.build("mobilenet_v2")
    net = load_model(onnx_source(path))
    t_load = time.perf_counter() - t0
    segments = net.segments()
    print(f"MobileNetV2: {path}")
    print(f"  {len(net.graph.nodes)} nodes after folding/fusion, segments: "
          + ", ".join(f"{s} ({len(n)} nodes)" for s, n in segments.items()))
    first = net.nodes()[:3]
    print("  first nodes: " + ", ".join(n.name for n in first) + ", ...  (net.node_table() lists all)")

    images = zoo.datasets.imagenet_samples()
    t1 = time.perf_counter()
    (logits,) = net.execute({"input": images.inputs})
    t_exec = time.perf_counter() - t1
    top5 = np.argsort(-logits, axis=1)[:, :5]
    top1 = top5[:, 0]

    print(f"\n{'image':<34} {'label':>5} {'top-1':>5}  ok  {'in top-5':>8}")
    print("-" * 62)
    for src, label, pred, five in zip(images.sources, images.labels, top1, top5):
        print(f"{src:<34} {label:>5} {pred:>5}  {'✓' if pred == label else '✗':>2}  {'yes' if label in five else 'no':>8}")
    n = len(images)
    correct1 = int((top1 == images.labels).sum())
    correct5 = int(sum(lbl in five for lbl, five in zip(images.labels, top5)))
    print("-" * 62)
    print(f"FP32 top-1 {correct1}/{n}, top-5 {correct5}/{n}   "
          f"(load+optimize {t_load:.1f} s, execute batch {n} {t_exec:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
