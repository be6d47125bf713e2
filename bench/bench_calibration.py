"""Calibration of MobileNetV2: mixq vs onnxruntime on the same ONNX file and the same natural-image crops.

1. Time: mixq's one float pass that records the statistics of all five calibration methods
   (``LoadedNet.calibrate``), and the Entropy ranges of every tensor computed from them, vs
   onnxruntime's ``quantize_static`` calibration (``create_calibrator`` + ``collect_data`` +
   ``compute_data``) with ``CalibrationMethod.Entropy``, and MinMax for reference. onnxruntime's
   calibrator is created the way ``quantize_static`` creates it (default op types, default options);
   its set-up (graph augmentation, session creation) is shown apart and left out of the ratio, as
   mixq's ``load_model`` is. The zoo file fixes batch 1, so samples are fed one at a time to both.
2. Memory: peak RSS (``resource.getrusage``, ``ru_maxrss``) of each measurement in a fresh
   subprocess: mixq calibration at 64 and at 512 samples (the statistics are bounded, so the peak
   should stay flat), onnxruntime Entropy at 128 samples (it keeps every activation of every sample).

The crops are written once (by a subprocess of their own) to a raw float32 file; each measuring
subprocess reads one sample at a time from it (plain reads, no mmap), so the data set never sits in
a measured process's memory. The driver itself imports neither numpy nor mixq nor onnxruntime: on
Linux a child's ``ru_maxrss`` starts from the RSS of the process that spawned it (the peak is carried
across fork and exec), so a heavy driver would set a floor under every measurement. Each subprocess
also reports its peak before calibration (imports + model), shown as "base", and cross-checks
``ru_maxrss`` against /proc/self/status VmHWM (the peak of its own address space).

    python bench/bench_calibration.py            # 128 samples for time, 64/512 for memory
    python bench/bench_calibration.py --quick    # 16 for time, 16/32 for memory (development)
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_SHAPE = (1, 3, 224, 224)
SAMPLE_BYTES = 3 * 224 * 224 * 4  # float32
TARGET_TIME_RATIO = 1.0
ORT_TIME_LIMIT_S = 1800  # per onnxruntime subprocess (Entropy at 128 samples is the slow one)
MIXQ_TIME_LIMIT_S = 1800
ORT_ENTROPY_MIB_PER_SAMPLE = 100  # onnxruntime keeps every activation: ~92 MiB a MobileNetV2 sample


# ---------------------------------------------------------------- worker side (one per subprocess)
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def vm_hwm_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class Samples:
    """Samples 0..count-1 of the raw crop file (sample i is stored crop i % stored), read one at a time."""

    def __init__(self, path: str, count: int, input_name: str):
        self.path, self.count, self.input_name = path, count, input_name
        self.stored = os.path.getsize(path) // SAMPLE_BYTES

    def __len__(self) -> int:
        return self.count

    def read(self, f, i: int):
        import numpy as np

        f.seek((i % self.stored) * SAMPLE_BYTES)
        x = np.empty(SAMPLE_SHAPE, np.float32)
        if f.readinto(memoryview(x).cast("B")) != SAMPLE_BYTES:
            raise RuntimeError(f"short read of sample {i} from {self.path}")
        return x

    def __iter__(self):
        with open(self.path, "rb", buffering=0) as f:
            for i in range(self.count):
                yield {self.input_name: self.read(f, i)}


def worker_mixq(model_path: str, data_path: str, count: int) -> dict:
    from core import HistogramEntropyMethod, load_model, onnx_source, quantization_scheme

    net = load_model(onnx_source(model_path))
    samples = Samples(data_path, count, net.input_names[0])
    base = peak_rss_mib()
    t0 = time.perf_counter()
    stats = net.calibrate(samples)
    t1 = time.perf_counter()
    scheme = quantization_scheme(asymmetric=True, per_channel=False, bits=8)
    method = HistogramEntropyMethod()
    for name in stats.names():
        if stats[name].count:
            stats.compute_range(name, method, scheme)
    t2 = time.perf_counter()
    return {"calibrate_s": t1 - t0, "ranges_s": t2 - t1, "tensors": len(stats),
            "samples": stats.num_samples, "base_mib": base, "peak_mib": peak_rss_mib(), "hwm_mib": vm_hwm_mib()}


class OrtReader:
    """onnxruntime CalibrationDataReader over the raw crop file, one sample per get_next()."""

    def __init__(self, samples: Samples):
        self.samples = samples
        self.it = iter(samples)

    def get_next(self):
        return next(self.it, None)

    def __len__(self):
        return len(self.samples)


def worker_ort(model_path: str, data_path: str, count: int, method: str) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    input_name = onnx.load(model_path, load_external_data=False).graph.input[0].name
    reader = type("Reader", (OrtReader, CalibrationDataReader), {})(Samples(data_path, count, input_name))
    # what quantize_static calibrates when op_types_to_quantize is not given
    op_types = list(set(QLinearOpsRegistry) | set(QDQRegistry))
    base = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="bench-ort-calib.") as tmp:
        t0 = time.perf_counter()
        calibrator = create_calibrator(pathlib.Path(model_path), op_types,
                                       augmented_model_path=os.path.join(tmp, "augmented_model.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, method))
        t1 = time.perf_counter()
        calibrator.collect_data(reader)
        t2 = time.perf_counter()
        ranges = calibrator.compute_data()
        t3 = time.perf_counter()
    return {"setup_s": t1 - t0, "collect_s": t2 - t1, "compute_s": t3 - t2, "tensors": len(ranges.data),
            "base_mib": base, "peak_mib": peak_rss_mib(), "hwm_mib": vm_hwm_mib()}


def worker_main(argv) -> int:
    kind, model_path, data_path, count = argv[:4]
    if kind == "prepare":
        result = worker_prepare(data_path, int(count))
    elif kind == "mixq":
        result = worker_mixq(model_path, data_path, int(count))
    else:
        result = worker_ort(model_path, data_path, int(count), argv[4])
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- driver side
def run_worker(args, limit_s: float) -> dict:
    """Run one measurement in a fresh interpreter; {'error': ...} when it fails or runs too long."""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", *map(str, args)]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"error": f"exceeded the {limit_s:.0f} s limit"}
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = wall
            result["load"] = load
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"error": f"{how}: {tail[:160]}"}


def mem_available_mib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def worker_prepare(path: str, count: int) -> dict:
    """Build the zoo model and write ``count`` crops to ``path``."""
    import numpy as np

    from core import zoo
    from core.errors import ZooError

    model_path = str(zoo.build("mobilenet_v2"))

    try:
        images = zoo.datasets.natural_images("calibration", count)
        how = f"{count} calibration-split crops"
    except ZooError as e:
        fallback = min(count, 128)
        images = zoo.datasets.natural_images("calibration", fallback)
        how = f"{fallback} calibration-split crops, repeated up to {count} ({e})"
    np.ascontiguousarray(images.inputs, np.float32).tofile(path)
    return {"model_path": model_path, "how": how}


def fmt_mem(r: dict) -> str:
    return "failed" if "error" in r else f"{r['peak_mib']:.0f} (base {r['base_mib']:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 samples for time, 16/32 for memory")
    args = parser.parse_args()
    n_time, n_mem = (16, (16, 32)) if args.quick else (128, (64, 512))

    from importlib.metadata import version

    with tempfile.TemporaryDirectory(prefix="bench-calib.") as tmp:
        data_path = pathlib.Path(tmp) / "crops.f32"
        prep = run_worker(["prepare", "-", data_path, max(n_time, *n_mem)], MIXQ_TIME_LIMIT_S)
        if "error" in prep:
            print(f"could not build the model or the calibration crops: {prep['error']}")
            return 1
        model_path = prep["model_path"]
        print(f"MobileNetV2 calibration ({pathlib.Path(model_path).name}); onnxruntime {version('onnxruntime')}; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; each measurement in a fresh subprocess")
        print(f"data: {prep['how']}; sample i of a run is crop i, so every run shares its first crops")

        mixq_runs = {n: run_worker(["mixq", model_path, data_path, n], MIXQ_TIME_LIMIT_S)
                     for n in sorted({n_time, *n_mem})}
        ort_runs = {"MinMax": run_worker(["ort", model_path, data_path, n_time, "MinMax"], ORT_TIME_LIMIT_S)}
        # Entropy holds every activation of every sample: skip it rather than push a shared machine into OOM
        need, avail = ORT_ENTROPY_MIB_PER_SAMPLE * n_time + 1024, mem_available_mib()
        if avail < need:
            ort_runs["Entropy"] = {"error": f"skipped: needs ~{need / 1024:.0f} GiB, {avail / 1024:.1f} GiB available"}
        else:
            ort_runs["Entropy"] = run_worker(["ort", model_path, data_path, n_time, "Entropy"], ORT_TIME_LIMIT_S)

    # ---- time table
    mq = mixq_runs[n_time]
    print(f"\ncalibration time on {n_time} samples [s] (set-up = load/augment + session; not in the ratio)")
    print(f"{'':34}  {'set-up':>6}  {'pass':>7}  {'ranges':>7}  {'total':>7}")
    if "error" in mq:
        print(f"{'mixq calibrate (all 5 methods)':34}  failed: {mq['error']}")
    else:
        print(f"{'mixq calibrate (all 5 methods)':34}  {'-':>6}  {mq['calibrate_s']:7.1f}  {'-':>7}  "
              f"{mq['calibrate_s']:7.1f}")
        print(f"{'mixq calibrate + Entropy ranges':34}  {'-':>6}  {mq['calibrate_s']:7.1f}  {mq['ranges_s']:7.1f}  "
              f"{mq['calibrate_s'] + mq['ranges_s']:7.1f}")
    for m, r in ort_runs.items():
        label = f"onnxruntime {m}"
        if "error" in r:
            print(f"{label:34}  failed: {r['error']}")
        else:
            print(f"{label:34}  {r['setup_s']:6.1f}  {r['collect_s']:7.1f}  {r['compute_s']:7.1f}  "
                  f"{r['collect_s'] + r['compute_s']:7.1f}")

    ratios = []
    if "error" not in mq:
        for m, r in ort_runs.items():
            if "error" in r:
                continue
            ort_s = r["collect_s"] + r["compute_s"]
            ratios.append((m, mq["calibrate_s"] / ort_s, (mq["calibrate_s"] + mq["ranges_s"]) / ort_s))
    for m, pass_ratio, with_ranges in ratios:
        print(f"ratio mixq / onnxruntime {m}: {pass_ratio:.2f}x (pass only), {with_ranges:.2f}x (with Entropy ranges)")
    entropy = [x for x in ratios if x[0] == "Entropy"]
    if entropy:
        verdict = "met" if entropy[0][2] <= TARGET_TIME_RATIO else "NOT met"
        print(f"target: mixq (pass + Entropy ranges) <= {TARGET_TIME_RATIO:g}x onnxruntime Entropy -> {verdict} "
              f"({entropy[0][2]:.2f}x)")
    else:
        print("target: mixq <= 1x onnxruntime Entropy -> not measured (a run failed)")

    # ---- memory table
    print("\npeak memory (max RSS of the subprocess) [MiB]; base = peak before calibration (imports + model)")
    print(f"{'':34}  {'samples':>7}  {'peak':>22}  {'wall [s]':>8}  {'load before':>11}")
    rows = [("mixq calibrate", n, mixq_runs[n]) for n in sorted(mixq_runs)] + \
           [(f"onnxruntime {m}", n_time, r) for m, r in ort_runs.items()]
    for label, n, r in rows:
        peak = f"failed: {r['error']}" if "error" in r else fmt_mem(r)
        wall = "" if "error" in r else f"{r['wall_s']:8.1f}  {r['load']:11.1f}"
        print(f"{label:34}  {n:7d}  {peak:>22}  {wall}")
    for label, n, r in rows:
        hwm = r.get("hwm_mib")
        if hwm and abs(r["peak_mib"] - hwm) > 0.05 * hwm + 8:
            print(f"note: {label} at {n}: ru_maxrss {r['peak_mib']:.0f} MiB but VmHWM {hwm:.0f} MiB "
                  f"(ru_maxrss includes memory from before the exec)")
    lo, hi = mixq_runs[n_mem[0]], mixq_runs[n_mem[1]]
    if "error" not in lo and "error" not in hi:
        growth = round(hi["peak_mib"] - lo["peak_mib"]) + 0
        print(f"mixq peak {n_mem[1]} vs {n_mem[0]} samples: {hi['peak_mib'] / lo['peak_mib']:.2f}x "
              f"({growth:+.0f} MiB for {n_mem[1] - n_mem[0]} more samples; flat is the target)")
    ent = ort_runs["Entropy"]
    if "error" not in mq and "error" not in ent:
        print(f"peak memory at {n_time} samples, mixq / onnxruntime Entropy: {mq['peak_mib'] / ent['peak_mib']:.2f}x "
              f"(above base: {mq['peak_mib'] - mq['base_mib']:.0f} vs {ent['peak_mib'] - ent['base_mib']:.0f} MiB)")
    elif "error" in ent:
        print(f"onnxruntime Entropy at {n_time} samples: {ent['error']}")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit(main())
