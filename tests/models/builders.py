"""Small transformer and detection models written with onnx.helper the way PyTorch's exporter
writes the real ones (torchvision ViT / Swin / ConvNeXt, a YOLOv8 head): the same op patterns,
few channels, seeded random weights. Each builder returns an ``onnx.ModelProto``.

- ``vit``: patch Conv, class token expanded with torch's ``expand(n, -1, -1)`` chain
  (Shape/Gather/Concat/Equal/Where/Expand), position embedding, pre-LN encoder blocks with
  written-out LayerNorm (opset 14: ReduceMean/Sub/Pow/Sqrt/Div) and Erf GELU, multi-head attention
  (MatMul of two activations, Softmax), class-token Gather, Gemm head.
- ``swin``: NHWC patch embedding with LayerNormalization (opset 17), cyclic shift (Slice/Concat),
  window partition (Reshape/Transpose), relative position bias (Gather of a table), the shifted-window
  mask built by ScatterND, Sub, Equal/Not/Where, a Mod/Range pad computation; window reverse.
- ``convnext``: stem, LayerNorm2d (Transpose/LayerNormalization/Transpose), depthwise 7x7 conv,
  MLP with Erf GELU, layer scale, residual; global pooling, LayerNorm, Gemm head.
- ``yolov8_head``: a small backbone (Conv + SiLU), two detection levels (box and class convs),
  DFL (Reshape/Transpose/Softmax/Conv with arange weights), anchors from Range/Expand, box decode
  (Sub/Add/Div/Mul/Concat) and Sigmoid class scores.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, value, base: str = "c") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def weight(self, *shape, scale: float | None = None, base: str = "w") -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        s = scale if scale is not None else 1.0 / math.sqrt(max(fan_in, 1))
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32), base)

    def op(self, op_type: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"/{op_type}_{self.k}", **attrs))
        return outs[0] if n_out == 1 else outs

    def i64(self, *values) -> str:
        return self.const(np.array(values, np.int64), "i")

    def f32(self, value) -> str:
        return self.const(np.array(value, np.float32), "f")

    # ---- building blocks, as PyTorch exports them
    def linear(self, x, d_in, d_out):
        y = self.op("MatMul", [x, self.weight(d_in, d_out)])
        return self.op("Add", [self.const((self.rng.standard_normal(d_out) * 0.1).astype(np.float32), "b"), y])

    def layer_norm_written_out(self, x, d, axes=(-1,)):
        """torch.nn.LayerNorm before opset 17 (axes as an attribute, opset < 18)."""
        m = self.op("ReduceMean", [x], axes=list(axes))
        c = self.op("Sub", [x, m])
        p = self.op("Pow", [c, self.f32(2.0)])
        v = self.op("ReduceMean", [p], axes=list(axes))
        e = self.op("Add", [v, self.f32(1e-6)])
        s = self.op("Sqrt", [e])
        n = self.op("Div", [c, s])
        g = self.const((1 + 0.2 * self.rng.standard_normal(d)).astype(np.float32), "ln_g")
        b = self.const((0.1 * self.rng.standard_normal(d)).astype(np.float32), "ln_b")
        return self.op("Add", [self.op("Mul", [n, g]), b])

    def layer_norm(self, x, d, eps=1e-6):
        g = self.const((1 + 0.2 * self.rng.standard_normal(d)).astype(np.float32), "ln_g")
        b = self.const((0.1 * self.rng.standard_normal(d)).astype(np.float32), "ln_b")
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    def gelu_erf(self, x):
        """F.gelu before opset 20: x * (Erf(x / sqrt2) + 1) * 0.5."""
        e = self.op("Erf", [self.op("Div", [x, self.f32(1.4142135381698608)])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [e, self.f32(1.0)])]), self.f32(0.5)])

    def attention(self, x, tokens, d, heads, batch, bias=None, mask=None, windows=None):
        """qkv linear, reshape/transpose, q * scale @ k^T (+ bias, + mask), Softmax, @ v, proj."""
        hd = d // heads
        qkv = self.linear(x, d, 3 * d)
        qkv = self.op("Reshape", [qkv, self.i64(batch, tokens, 3, heads, hd)])
        qkv = self.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
        q, k, v = (self.op("Gather", [qkv, self.const(np.array(i, np.int64), "i")], axis=0) for i in range(3))
        q = self.op("Mul", [q, self.f32(hd ** -0.5)])
        att = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        if bias is not None:
            att = self.op("Add", [att, bias])
        if mask is not None:
            n_w = windows
            att = self.op("Reshape", [att, self.i64(batch // n_w, n_w, heads, tokens, tokens)])
            att = self.op("Add", [att, mask])
            att = self.op("Reshape", [att, self.i64(-1, heads, tokens, tokens)])
        att = self.op("Softmax", [att], axis=-1)
        o = self.op("MatMul", [att, v])
        o = self.op("Reshape", [self.op("Transpose", [o], perm=[0, 2, 1, 3]), self.i64(batch, tokens, d)])
        return self.linear(o, d, d)

    def mlp(self, x, d, hidden):
        return self.linear(self.gelu_erf(self.linear(x, d, hidden)), hidden, d)

    def model(self, inputs, outputs, opset: int):
        graph = helper.make_graph(self.nodes, "m", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return m


def _input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _output(name):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def vit(seed: int = 0, image: int = 16, patch: int = 4, d: int = 16, heads: int = 2, depth: int = 2,
        classes: int = 10):
    b = Builder(seed)
    n_tok = (image // patch) ** 2
    x = b.op("Conv", ["input", b.weight(d, 3, patch, patch), b.weight(d, scale=0.1)],
             kernel_shape=[patch, patch], strides=[patch, patch])
    x = b.op("Reshape", [x, b.i64(1, d, n_tok)])
    x = b.op("Transpose", [x], perm=[0, 2, 1])
    # class_token.expand(n, -1, -1): torch writes the -1s out with Equal/Where
    n = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", ["input"]), b.const(np.array(0, np.int64), "i")], axis=0),
                           b.i64(0)])
    shape = b.op("Concat", [n, b.i64(-1, -1)], axis=0)
    shape = b.op("Where", [b.op("Equal", [shape, b.i64(-1, -1, -1)]), b.i64(1, 1, 1), shape])
    cls = b.op("Expand", [b.weight(1, 1, d, scale=0.5), shape])
    x = b.op("Concat", [cls, x], axis=1)
    x = b.op("Add", [x, b.weight(1, n_tok + 1, d, scale=0.2)])
    for _ in range(depth):
        h = b.layer_norm_written_out(x, d)
        x = b.op("Add", [x, b.attention(h, n_tok + 1, d, heads, 1)])
        h = b.layer_norm_written_out(x, d)
        x = b.op("Add", [x, b.mlp(h, d, 2 * d)])
    x = b.layer_norm_written_out(x, d)
    x = b.op("Gather", [x, b.const(np.array(0, np.int64), "i")], axis=1)
    b.nodes.append(helper.make_node("Gemm", [x, b.weight(classes, d), b.weight(classes, scale=0.1)], ["logits"],
                                    transB=1, name="/head/Gemm"))
    return b.model([_input("input", (1, 3, image, image))], [_output("logits")], opset=14)


def _relative_position_index(w: int) -> np.ndarray:
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
    return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).reshape(-1).astype(np.int64)


def swin(seed: int = 0, image: int = 16, patch: int = 2, d: int = 8, heads: int = 2, window: int = 4,
         classes: int = 5):
    b = Builder(seed)
    hw = image // patch
    n_w = (hw // window) ** 2
    tokens = window * window
    shift = window // 2
    x = b.op("Conv", ["input", b.weight(d, 3, patch, patch), b.weight(d, scale=0.1)],
             kernel_shape=[patch, patch], strides=[patch, patch])
    x = b.op("Transpose", [x], perm=[0, 2, 3, 1])                 # NHWC
    x = b.layer_norm(x, d)
    # the pad torchvision computes: (window - W % window) % window, from the tensor's shape
    width = b.op("Gather", [b.op("Shape", [x]), b.const(np.array(2, np.int64), "i")], axis=0)
    pad = b.op("Mod", [b.op("Sub", [b.const(np.array(window, np.int64), "i"),
                                     b.op("Mod", [width, b.const(np.array(window, np.int64), "i")])]),
                       b.const(np.array(window, np.int64), "i")])
    pads = b.op("Concat", [b.i64(0, 0, 0, 0, 0, 0), b.op("Unsqueeze", [pad, b.i64(0)]), b.i64(0)], axis=0)
    x = b.op("Pad", [x, pads])

    def roll(t, s):
        for axis in (1, 2):
            lo = b.op("Slice", [t, b.i64(s % hw), b.i64(hw), b.i64(axis)])
            hi = b.op("Slice", [t, b.i64(0), b.i64(s % hw), b.i64(axis)])
            t = b.op("Concat", [lo, hi], axis=axis)
        return t

    def partition(t, channels):
        t = b.op("Reshape", [t, b.i64(1, hw // window, window, hw // window, window, channels)])
        t = b.op("Transpose", [t], perm=[0, 1, 3, 2, 4, 5])
        return b.op("Reshape", [t, b.i64(n_w, tokens, channels)])

    # the shifted-window mask: region ids written by slice assignment (ScatterND), as torchvision
    idx = []
    ids = []
    count = 0
    bounds = ((0, hw - window), (hw - window, hw - shift), (hw - shift, hw))
    region = np.zeros((hw, hw), np.float32)
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            region[h0:h1, w0:w1] = count
            count += 1
    for i in range(hw):
        for j in range(hw):
            if region[i, j]:
                idx.append((0, i, j, 0))
                ids.append(region[i, j])
    img_mask = b.op("ScatterND", [b.const(np.zeros((1, hw, hw, 1), np.float32), "z"),
                                  b.const(np.array(idx, np.int64), "idx"), b.const(np.array(ids, np.float32), "ids")])
    mw = b.op("Reshape", [partition(img_mask, 1), b.i64(n_w, tokens)])
    diff = b.op("Sub", [b.op("Unsqueeze", [mw, b.i64(1)]), b.op("Unsqueeze", [mw, b.i64(2)])])
    neq = b.op("Not", [b.op("Equal", [diff, b.f32(0.0)])])
    mask = b.op("Where", [neq, b.f32(-100.0), b.f32(0.0)])
    mask = b.op("Unsqueeze", [mask, b.i64(0, 2)])                # (1, nW, 1, T, T)
    # relative position bias: a learned table gathered by a constant index (Range-built coords)
    table = b.weight((2 * window - 1) ** 2, heads, scale=0.5)
    bias = b.op("Gather", [table, b.const(_relative_position_index(window), "rpi")], axis=0)
    bias = b.op("Reshape", [bias, b.i64(tokens, tokens, heads)])
    bias = b.op("Unsqueeze", [b.op("Transpose", [bias], perm=[2, 0, 1]), b.i64(0)])
    for blk in range(2):
        s = 0 if blk == 0 else shift
        h = b.layer_norm(x, d)
        if s:
            h = roll(h, s)
        h = partition(h, d)
        h = b.attention(h, tokens, d, heads, n_w, bias=bias, mask=mask if s else None, windows=n_w)
        h = b.op("Reshape", [h, b.i64(1, hw // window, hw // window, window, window, d)])
        h = b.op("Transpose", [h], perm=[0, 1, 3, 2, 4, 5])
        h = b.op("Reshape", [h, b.i64(1, hw, hw, d)])
        if s:
            h = roll(h, -s)
        x = b.op("Add", [x, h])
        x = b.op("Add", [x, b.mlp(b.layer_norm(x, d), d, 2 * d)])
    x = b.layer_norm(x, d)
    x = b.op("Flatten", [b.op("GlobalAveragePool", [b.op("Transpose", [x], perm=[0, 3, 1, 2])])], axis=1)
    b.nodes.append(helper.make_node("Gemm", [x, b.weight(classes, d), b.weight(classes, scale=0.1)], ["logits"],
                                    transB=1, name="/head/Gemm"))
    return b.model([_input("input", (1, 3, image, image))], [_output("logits")], opset=17)


def convnext(seed: int = 0, image: int = 16, d: int = 16, depth: int = 2, classes: int = 5):
    b = Builder(seed)

    def ln2d(t):
        t = b.op("Transpose", [t], perm=[0, 2, 3, 1])
        return b.op("Transpose", [b.layer_norm(t, d)], perm=[0, 3, 1, 2])

    x = b.op("Conv", ["input", b.weight(d, 3, 4, 4), b.weight(d, scale=0.1)], kernel_shape=[4, 4], strides=[4, 4])
    x = ln2d(x)
    for _ in range(depth):
        h = b.op("Conv", [x, b.weight(d, 1, 7, 7, scale=0.2), b.weight(d, scale=0.1)], kernel_shape=[7, 7],
                 pads=[3, 3, 3, 3], group=d)
        h = b.layer_norm(b.op("Transpose", [h], perm=[0, 2, 3, 1]), d)
        h = b.mlp(h, d, 4 * d)
        h = b.op("Mul", [h, b.const((0.5 + 0.1 * b.rng.standard_normal(d)).astype(np.float32), "gamma")])
        x = b.op("Add", [x, b.op("Transpose", [h], perm=[0, 3, 1, 2])])
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [ln2d(x)], axis=1)
    b.nodes.append(helper.make_node("Gemm", [x, b.weight(classes, d), b.weight(classes, scale=0.1)], ["logits"],
                                    transB=1, name="/head/Gemm"))
    return b.model([_input("input", (1, 3, image, image))], [_output("logits")], opset=17)


def yolov8_head(seed: int = 0, image: int = 32, c: int = 16, reg_max: int = 8, nc: int = 3):
    b = Builder(seed)

    def conv_silu(t, c_in, c_out, k=3, s=1):
        y = b.op("Conv", [t, b.weight(c_out, c_in, k, k), b.weight(c_out, scale=0.1)], kernel_shape=[k, k],
                 strides=[s, s], pads=[k // 2] * 4)
        return b.op("Mul", [y, b.op("Sigmoid", [y])])

    x = conv_silu("input", 3, c, s=2)
    p3 = conv_silu(x, c, c, s=2)                   # stride 4
    p4 = conv_silu(p3, c, c, s=2)                  # stride 8
    levels, anchors, strides = [], [], []
    for p, stride in ((p3, 4), (p4, 8)):
        h = w = image // stride
        box = b.op("Conv", [conv_silu(p, c, c), b.weight(4 * reg_max, c, 1, 1), b.weight(4 * reg_max, scale=0.5)],
                   kernel_shape=[1, 1])
        cls = b.op("Conv", [conv_silu(p, c, c), b.weight(nc, c, 1, 1), b.weight(nc, scale=0.5)], kernel_shape=[1, 1])
        levels.append(b.op("Reshape", [b.op("Concat", [box, cls], axis=1), b.i64(1, 4 * reg_max + nc, -1)]))
        # make_anchors: (arange(w) + 0.5, arange(h) + 0.5) meshgrid, stacked
        sx = b.op("Add", [b.op("Range", [b.f32(0.0), b.f32(float(w)), b.f32(1.0)]), b.f32(0.5)])
        sy = b.op("Add", [b.op("Range", [b.f32(0.0), b.f32(float(h)), b.f32(1.0)]), b.f32(0.5)])
        gx = b.op("Expand", [b.op("Unsqueeze", [sx, b.i64(0)]), b.i64(h, w)])
        gy = b.op("Expand", [b.op("Unsqueeze", [sy, b.i64(1)]), b.i64(h, w)])
        anchors.append(b.op("Concat", [b.op("Reshape", [gx, b.i64(1, -1)]), b.op("Reshape", [gy, b.i64(1, -1)])],
                            axis=0))
        strides.append(b.op("Expand", [b.f32(np.full((1, 1), float(stride), np.float32)), b.i64(1, h * w)]))
    x = b.op("Concat", levels, axis=2)
    n = sum((image // s) ** 2 for s in (4, 8))
    anchor = b.op("Concat", anchors, axis=1)                     # (2, n)
    stride = b.op("Concat", strides, axis=1)                     # (1, n)
    box, cls = b.op("Split", [x, b.i64(4 * reg_max, nc)], n_out=2, axis=1)
    # DFL: softmax over reg_max bins, expectation with a 1x1 conv of arange weights
    dfl = b.op("Transpose", [b.op("Reshape", [box, b.i64(1, 4, reg_max, n)])], perm=[0, 2, 1, 3])
    dfl = b.op("Softmax", [dfl], axis=1)
    dfl = b.op("Conv", [dfl, b.const(np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1), "dfl_w")],
               kernel_shape=[1, 1])
    dist = b.op("Reshape", [dfl, b.i64(1, 4, n)])
    lt, rb = b.op("Split", [dist, b.i64(2, 2)], n_out=2, axis=1)
    x1y1 = b.op("Sub", [anchor, lt])
    x2y2 = b.op("Add", [anchor, rb])
    cxy = b.op("Div", [b.op("Add", [x1y1, x2y2]), b.f32(2.0)])
    wh = b.op("Sub", [x2y2, x1y1])
    dbox = b.op("Mul", [b.op("Concat", [cxy, wh], axis=1), stride])
    b.nodes.append(helper.make_node("Concat", [dbox, b.op("Sigmoid", [cls])], ["output0"], axis=1, name="/Concat_out"))
    return b.model([_input("input", (1, 3, image, image))], [_output("output0")], opset=17)


MODELS = {"vit": vit, "swin": swin, "convnext": convnext, "yolov8_head": yolov8_head}
