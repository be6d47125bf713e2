"""ONNX graphs for the zoo's pretrained models, built from their PyTorch checkpoints with onnx.helper.

The graphs look like ``torch.onnx.export`` output of the original modules in eval mode without
constant folding: Conv (no bias) + BatchNormalization + Clip(0, 6) for MobileNetV2's
Conv-BN-ReLU6 blocks, so that mixq's own passes have BatchNormalization to fold. Initializers
keep the checkpoint's parameter names. onnx is imported inside the functions (``import core``
must stay light).
"""
from __future__ import annotations

import numpy as np

from core.errors import ZooError

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; newer ones are refused by older runtimes

# torchvision's MobileNetV2 inverted_residual_setting: expansion t, channels c, repeats n, stride s.
_MOBILENET_V2_SETTING = [
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]
_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default, which torchvision uses


class _GraphBuilder:
    """Collects nodes and initializers; node names follow torch.onnx.export's ``/module/path/Op``."""

    def __init__(self, weights: dict[str, np.ndarray], source: str):
        from onnx import numpy_helper

        self._numpy_helper = numpy_helper
        self.weights = weights
        self.source = source
        self.nodes = []
        self.initializers = []
        self._added: set[str] = set()

    def param(self, name: str, shape: tuple[int, ...] | None = None) -> str:
        if name not in self.weights:
            raise ZooError(f"{self.source}: checkpoint has no parameter {name!r}")
        array = np.asarray(self.weights[name], dtype=np.float32)
        if shape is not None and array.shape != tuple(shape):
            raise ZooError(f"{self.source}: parameter {name!r} has shape {array.shape}, expected {tuple(shape)}")
        if name not in self._added:
            self.initializers.append(self._numpy_helper.from_array(array, name))
            self._added.add(name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        if name not in self._added:
            self.initializers.append(self._numpy_helper.from_array(np.asarray(value), name))
            self._added.add(name)
        return name

    def node(self, op: str, inputs: list[str], scope: str, output: str | None = None, **attrs) -> str:
        from onnx import helper

        # torch.onnx.export's scopes: a Sequential's child shows as "<parent>.<index>", an attribute as itself.
        scopes = []
        for part in scope.split(".") if scope else []:
            scopes.append(f"{scopes[-1]}.{part}" if part.isdigit() and scopes else part)
        name = "".join(f"/{s}" for s in scopes) + f"/{op}"
        output = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def model(self, graph_name: str, input_shape: list[int], output_shape: list[int], doc: str):
        """The graph's input is "input" and its output "output" (the last node must write it)."""
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="mixq.zoo", doc_string=doc)
        model.ir_version = IR_VERSION
        return model


def _conv(b: _GraphBuilder, x: str, prefix: str, in_ch: int, out_ch: int, kernel: int, stride: int,
          groups: int = 1, bias: bool = False) -> str:
    inputs = [x, b.param(f"{prefix}.weight", (out_ch, in_ch // groups, kernel, kernel))]
    if bias:
        inputs.append(b.param(f"{prefix}.bias", (out_ch,)))
    pad = (kernel - 1) // 2
    return b.node("Conv", inputs, prefix, dilations=[1, 1], group=groups, kernel_shape=[kernel, kernel],
                  pads=[pad] * 4, strides=[stride, stride])


def _batch_norm(b: _GraphBuilder, x: str, prefix: str, channels: int) -> str:
    params = [b.param(f"{prefix}.{p}", (channels,)) for p in ("weight", "bias", "running_mean", "running_var")]
    return b.node("BatchNormalization", [x, *params], prefix, epsilon=_BN_EPSILON, momentum=0.9)


def _conv_bn_relu6(b: _GraphBuilder, x: str, prefix: str, in_ch: int, out_ch: int, kernel: int,
                   stride: int, groups: int = 1) -> str:
    """torchvision's Conv2dNormActivation(…, activation_layer=ReLU6): children .0 conv, .1 bn, .2 relu6."""
    y = _conv(b, x, f"{prefix}.0", in_ch, out_ch, kernel, stride, groups)
    y = _batch_norm(b, y, f"{prefix}.1", out_ch)
    clip_min = b.constant("relu6_min", np.array(0.0, np.float32))
    clip_max = b.constant("relu6_max", np.array(6.0, np.float32))
    return b.node("Clip", [y, clip_min, clip_max], f"{prefix}.2")


def mobilenet_v2_onnx(weights: dict[str, np.ndarray], source: str = "mobilenet_v2"):
    """torchvision.models.mobilenet_v2 (width 1.0, 1000 classes) as an onnx.ModelProto, batch 1, NCHW."""
    b = _GraphBuilder(weights, source)
    x = _conv_bn_relu6(b, "input", "features.0", 3, 32, 3, 2)
    in_ch, index = 32, 1
    for expansion, out_ch, repeats, first_stride in _MOBILENET_V2_SETTING:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            hidden = in_ch * expansion
            prefix = f"features.{index}.conv"
            y, layer = x, 0
            if expansion != 1:
                y = _conv_bn_relu6(b, y, f"{prefix}.0", in_ch, hidden, 1, 1)
                layer = 1
            y = _conv_bn_relu6(b, y, f"{prefix}.{layer}", hidden, hidden, 3, stride, groups=hidden)
            y = _conv(b, y, f"{prefix}.{layer + 1}", hidden, out_ch, 1, 1)
            y = _batch_norm(b, y, f"{prefix}.{layer + 2}", out_ch)
            if stride == 1 and in_ch == out_ch:
                y = b.node("Add", [x, y], f"features.{index}")
            x, in_ch, index = y, out_ch, index + 1
    x = _conv_bn_relu6(b, x, f"features.{index}", in_ch, 1280, 1, 1)
    x = b.node("GlobalAveragePool", [x], "")
    x = b.node("Flatten", [x], "", axis=1)
    b.node("Gemm", [x, b.param("classifier.1.weight", (1000, 1280)), b.param("classifier.1.bias", (1000,))],
           "classifier.1", output="output", alpha=1.0, beta=1.0, transB=1)
    return b.model("mobilenet_v2", [1, 3, 224, 224], [1, 1000],
                   "torchvision MobileNetV2 (ImageNet-1k), weights mobilenet_v2-b0353104.pth; dropout omitted (eval)")


def mnist_cnn_onnx(weights: dict[str, np.ndarray], source: str = "mnist_cnn"):
    """ccexam's MNISTNet(input_size=28) as an onnx.ModelProto, batch 1, NCHW 1x1x28x28."""
    b = _GraphBuilder(weights, source)
    x = _conv(b, "input", "features.0", 1, 32, 3, 1, bias=True)
    x = b.node("Relu", [x], "features.1")
    x = b.node("MaxPool", [x], "features.2", ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2],
               pads=[0, 0, 0, 0], strides=[2, 2])
    x = _conv(b, x, "features.3", 32, 64, 3, 1, bias=True)
    x = b.node("Relu", [x], "features.4")
    x = b.node("MaxPool", [x], "features.5", ceil_mode=0, dilations=[1, 1], kernel_shape=[2, 2],
               pads=[0, 0, 0, 0], strides=[2, 2])
    x = b.node("Flatten", [x], "", axis=1)
    x = b.node("Gemm", [x, b.param("classifier.0.weight", (128, 3136)), b.param("classifier.0.bias", (128,))],
               "classifier.0", alpha=1.0, beta=1.0, transB=1)
    x = b.node("Relu", [x], "classifier.1")
    b.node("Gemm", [x, b.param("classifier.2.weight", (10, 128)), b.param("classifier.2.bias", (10,))],
           "classifier.2", output="output", alpha=1.0, beta=1.0, transB=1)
    return b.model("mnist_cnn", [1, 1, 28, 28], [1, 10],
                   "ccexam MNISTNet(input_size=28), weights ccexam/weights/mnist.pth")
