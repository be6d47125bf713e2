"""Elu, the worked example of docs/architecture.md ("Adding an operator"): float kernel against
onnxruntime, its integer kernel (a lookup table over every input code) equal to the op run as a
float island, and its integer ONNX lowering bit-identical to execute, at 8 and 16 bits."""
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import default_quantization, int16_quantization, load_model, onnx_source
from core.quantization.quant_data import NodeQuant
from core.runtime.integer_interpreter import run_program

rng = np.random.default_rng(7)
X = (rng.standard_normal((8, 3, 6, 6)) * 2).astype(np.float32)


def conv_elu_conv(alpha=None):
    inits = {"w1": (rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32),
             "w2": (rng.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32)}
    elu = helper.make_node("Elu", ["c"], ["e"], **({} if alpha is None else {"alpha": alpha}))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), elu,
         helper.make_node("Conv", ["e", "w2"], ["y"])], "elu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("alpha", [None, 0.3, 2.0])
def test_elu_float_matches_onnxruntime(alpha, onnx_model_file):
    path = onnx_model_file(conv_elu_conv(alpha))
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    got = load_model(onnx_source(path)).execute({"x": X})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [default_quantization, int16_quantization], ids=["int8", "int16"])
def test_elu_integer_kernel_is_the_float_island_and_exports_exactly(config, onnx_model_file, tmp_path):
    net = load_model(onnx_source(onnx_model_file(conv_elu_conv(0.5))))
    model = net.quantize([{"x": X[i:i + 2]} for i in range(0, 8, 2)], config)
    program = model.program
    elu = next(n for n in program.graph.nodes if n.op == "Elu")
    assert program.kinds[elu.name] == "int"
    nq = program.constants[elu.name]
    bits = program.tensors[elu.outputs[0]].bits
    assert bits == (8 if config is default_quantization else 16)
    assert nq.table.size == 1 << bits and nq.table.dtype == (np.int8 if bits == 8 else np.int16)
    # the same program with Elu as a float island (dequantize, float kernel, quantize): equal, code for code
    island = dataclasses.replace(program, kinds=dict(program.kinds, **{elu.name: "float"}),
                                 constants=dict(program.constants, **{elu.name: NodeQuant()}))
    got = model.execute({"x": X})[0]
    assert np.array_equal(got, run_program(island, {"x": X})[program.graph.outputs[0]])
    # and against float: the quantized model stays close
    want = net.execute({"x": X})[0]
    assert np.max(np.abs(got - want)) < (0.05 if bits == 8 else 1e-3) * np.max(np.abs(want))
    # integer ONNX: the table is a Gather, bit-identical to execute
    path = model.export_onnx(str(tmp_path / "elu_int.onnx"), form="integer")
    proto = onnx.load(path)
    assert "run as float" not in proto.doc_string and "Gather" in {n.op_type for n in proto.graph.node}
    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    assert np.array_equal(out, got)
