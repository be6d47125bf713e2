"""Small ONNX models (onnx.helper, no torch) with the structure of two coverage-suite families that
tests/models/builders.py does not have: a MobileNetV3-style classifier (HardSwish, a
squeeze-excite gate with HardSigmoid) and a text-detector-style FPN (strided convs, nearest Resize
up + Add, ConvTranspose up to the input size, Sigmoid probability map; opset 12 like PP-OCR)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


class _B:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0

    def w(self, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / np.sqrt(fan_in)
        name = f"w{len(self.inits)}"
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * s).astype(np.float32), name))
        return name

    def const(self, value, dtype=np.float32):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op, inputs, out=None, **attrs):
        self.k += 1
        out = out or f"t{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.k}", **attrs))
        return out

    def conv(self, x, c_in, c_out, k=3, s=1, group=1):
        return self.op("Conv", [x, self.w(c_out, c_in // group, k, k), self.w(c_out, scale=0.1)],
                       kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=group)

    def model(self, shape, out, opset):
        g = helper.make_graph(self.nodes, "small",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape[1:]])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def mobilenet_v3_style(seed: int = 0, image: int = 32, c: int = 16, classes: int = 10):
    b = _B(seed)
    x = b.op("HardSwish", [b.conv("input", 3, c, s=2)])
    y = b.op("HardSwish", [b.conv(x, c, c, group=c)])                     # depthwise
    se = b.op("GlobalAveragePool", [y])
    se = b.op("Relu", [b.conv(se, c, c // 4, k=1)])
    se = b.op("HardSigmoid", [b.conv(se, c // 4, c, k=1)], alpha=1 / 6, beta=0.5)
    y = b.op("Mul", [y, se])
    y = b.op("Add", [b.conv(y, c, c, k=1), x])
    y = b.op("HardSwish", [b.conv(y, c, 2 * c, k=1)])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    b.op("Gemm", [y, b.w(classes, 2 * c), b.w(classes, scale=0.1)], "logits", transB=1)
    return b.model((1, 3, image, image), "logits", 17)


def text_detector_style(seed: int = 0, image: int = 32, c: int = 8):
    b = _B(seed)
    f1 = b.op("Relu", [b.conv("input", 3, c, s=2)])                      # /2
    f2 = b.op("Relu", [b.conv(f1, c, c, s=2)])                           # /4
    f3 = b.op("Relu", [b.conv(f2, c, c, s=2)])                           # /8
    scales = b.const([1.0, 1.0, 2.0, 2.0])
    roi = b.const([], np.float32)
    up3 = b.op("Resize", [f3, roi, scales], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
    p2 = b.op("Add", [b.conv(f2, c, c, k=1), up3])
    up2 = b.op("Resize", [p2, roi, scales], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
    p1 = b.op("HardSigmoid", [b.op("Add", [b.conv(f1, c, c, k=1), up2])], alpha=0.2, beta=0.5)
    y = b.op("Relu", [b.conv(p1, c, c)])
    y = b.op("ConvTranspose", [y, b.w(c, c // 2, 2, 2), b.w(c // 2, scale=0.1)], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("ConvTranspose", [b.op("Relu", [y]), b.w(c // 2, 1, 2, 2)], kernel_shape=[2, 2], strides=[2, 2])
    b.op("Sigmoid", [b.op("Add", [y, b.const(np.full((1, 1, 1, 1), -0.5))])], "prob")
    return b.model((1, 3, image, image), "prob", 12)


SMALL_MODELS = {"mobilenet_v3_style": mobilenet_v3_style, "text_detector_style": text_detector_style}
