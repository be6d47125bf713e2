"""Accelerator mode: compiling to ``.lm`` and running on a devkit over SSH (loopback).

1. MobileNetV2 INT8 (calibrated on 8 natural-image crops): compile time and ``.lm`` size without
   compression, with zlib (the default) and with lzma; the ratios are the constant data's.
2. Accelerator-mode round trip over loopback (a real OpenSSH server on 127.0.0.1 started by
   :func:`core.devkit.testing.loopback_sshd`; the "devkit" runtime is this machine's Python) vs
   local ``Model.execute(fast_mode=False)`` of the same samples one at a time: overhead in seconds
   and the ratio, at batch 1 and batch 4 (median of RUNS); the outputs are checked bit-identical.
3. The memory plan of a synthetic large-tensor model (activations larger than L2) on a small
   target, and its totals on the default target.

    python bench/bench_accelerator.py            # 8 samples, 3 runs
    python bench/bench_accelerator.py --quick    # 4 samples, 1 run
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core import ScalarType, default_quantization, load_model, onnx_source, zoo  # noqa: E402
from core.devkit.lm import read_lm_header  # noqa: E402
from core.devkit.planner import KiB, MiB, Target  # noqa: E402
from core.devkit.testing import SshdUnavailable, loopback_sshd  # noqa: E402


def mobilenet():
    net = load_model(onnx_source(zoo.build("mobilenet_v2")))
    x = zoo.datasets.natural_images("calibration", 8).inputs
    return net.quantize([{"input": x[i:i + 1]} for i in range(len(x))], default_quantization,
                        model_name="mobilenet_v2"), x


def compile_section(model, tmp):
    print("1. MobileNetV2 INT8 -> .lm")
    print(f"   {'compression':<12} {'compile s':>10} {'.lm bytes':>12} {'constants':>12} {'stored':>12} {'ratio':>6}")
    rows = {}
    for label, compress in (("none", False), ("zlib", True), ("lzma", "lzma")):
        t = time.perf_counter()
        r = model.compile(os.path.join(tmp, label), compress=compress)
        seconds = time.perf_counter() - t
        rows[label] = r
        print(f"   {label:<12} {seconds:>10.3f} {r.lm_bytes:>12,} {r.constant_bytes:>12,} "
              f"{r.stored_constant_bytes:>12,} {r.compression_ratio:>5.2f}x")
    stripped = read_lm_header(rows["zlib"].path)["meta"]["stripped_float_weights"]
    float_bytes = sum(np.asarray(model.program.graph.constants[t]).nbytes for t in stripped)
    print(f"   .lm size ratio none/zlib {rows['none'].lm_bytes / rows['zlib'].lm_bytes:.2f}x, "
          f"none/lzma {rows['none'].lm_bytes / rows['lzma'].lm_bytes:.2f}x; float copies of integer weights "
          f"left out of the .lm: {len(stripped)} arrays, {float_bytes:,} bytes")
    t = rows["zlib"].totals
    print(f"   plan (default target, batch 1): {t['layers']} layers, peak live {t['peak_live_bytes']:,} B, "
          f"spilled {t['spilled_bytes']:,} B, {t['tiled_layers']} tiled layers, {t['cycles']:,} cycles "
          f"(~{t['estimated_seconds'] * 1e3:.2f} ms at 1 GHz)")


def round_trip_section(model, x, samples, runs, tmp):
    print(f"\n2. accelerator mode over loopback vs local execute ({samples} samples, median of {runs})")
    feeds = [{"input": x[i % len(x):i % len(x) + 1]} for i in range(samples)]
    try:
        with loopback_sshd(os.path.join(tmp, "sshd")) as dk:
            root = os.path.join(tmp, "remote")
            os.makedirs(root)
            print(f"   {'batch':>5} {'local s':>9} {'devkit s':>9} {'overhead s':>11} {'ratio':>6}  bit-identical")
            for batch in (1, 4):
                local_t, remote_t, same = [], [], True
                for _ in range(runs):
                    t = time.perf_counter()
                    local = [model.execute(f, fast_mode=False) for f in feeds]
                    local_t.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    remote = model.execute_in_accelerator_mode(feeds, dk.host, batch_size=batch,
                                                               **dk.accelerator_kwargs(root))
                    remote_t.append(time.perf_counter() - t)
                    same &= all(np.array_equal(a, b) for o, l in zip(remote, local) for a, b in zip(o, l))
                lo, re = statistics.median(local_t), statistics.median(remote_t)
                print(f"   {batch:>5} {lo:>9.3f} {re:>9.3f} {re - lo:>11.3f} {re / lo:>5.2f}x  {same}")
            left = [p for p in os.listdir(root) if p.startswith("mixq-")]
            print(f"   remote work directories left: {len(left)}")
    except SshdUnavailable as e:
        print(f"   skipped: {e}")


def large_tensor_model(tmp):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, 16, 128, 128]
    rng = np.random.default_rng(7)
    inits = {
        "w1": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1, "b1": np.zeros(32, np.float32),
        "w2": rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.06, "b2": np.zeros(32, np.float32),
        "w3": rng.standard_normal((16, 32, 1, 1)).astype(np.float32) * 0.2, "b3": np.zeros(16, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
             helper.make_node("Add", ["c3", "x"], ["y"])]
    graph = helper.make_graph(nodes, "large_tensor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    path = os.path.join(tmp, "large_tensor.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    net = load_model(onnx_source(path, {"x": shape}, {"x": ScalarType.float32}))
    xs = rng.standard_normal((2, *shape[1:])).astype(np.float32)
    return net.quantize([{"x": xs[i:i + 1]} for i in range(2)], default_quantization, model_name="large_tensor")


def plan_section(tmp):
    print("\n3. synthetic large-tensor model (16x128x128 input, 32-channel activations of 512 KiB)")
    model = large_tensor_model(tmp)
    small = Target(name="small-edge", l1_bytes=64 * KiB, l2_bytes=1 * MiB, dram_bytes=256 * MiB)
    report = model.compile(os.path.join(tmp, "small"), target=small, batch_size=2)
    print("   " + str(report).replace("\n", "\n   "))
    big = model.compile(os.path.join(tmp, "default"), batch_size=2).totals
    t = report.totals
    print(f"   default target: spilled {big['spilled_bytes']:,} B, {big['tiles']} tiles, {big['cycles']:,} cycles; "
          f"small target: spilled {t['spilled_bytes']:,} B, {t['tiles']} tiles, {t['cycles']:,} cycles "
          f"({t['cycles'] / big['cycles']:.2f}x)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    samples, runs = (4, 1) if args.quick else (8, 3)
    with tempfile.TemporaryDirectory(prefix="mixq-bench-accel-") as tmp:
        model, x = mobilenet()
        compile_section(model, tmp)
        round_trip_section(model, x, samples, runs, tmp)
        plan_section(tmp)


if __name__ == "__main__":
    main()
