"""onnx.backend interface over mixq: import with mixq's ONNX importer, run with its float kernels."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from core import load_model, onnx_source
from core.ops.registry import get_op, supported_ops


class MixqBackendRep(BackendRep):
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        inits = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.static_names = set()
        known = set(supported_ops())
        for node in model.graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type in known:
                for slot in get_op(node.op_type).static_inputs:
                    if slot < len(node.input):
                        self.static_names.add(node.input[slot])

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            named = dict(inputs)
        else:
            named = dict(zip(self.input_names, inputs))
        # mixq compiles static-shape programs: graph inputs that feed an op's static slot
        # (Reshape's shape, Resize's scales, Slice's starts...) are frozen as constants, the
        # way a deployment pins them.
        frozen = {k: np.asarray(v) for k, v in named.items() if k in self.static_names}
        feeds = {k: np.asarray(v) for k, v in named.items() if k not in frozen}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            onnx.save(self.model, path)
            shapes = {k: v.shape for k, v in feeds.items() if v.ndim and 0 not in v.shape}
            net = load_model(onnx_source(path, shape_dict=shapes or None, input_values=frozen or None))
        return net.execute(feeds)


class MixqBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        return MixqBackendRep(model)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
