"""HardSwish written out (PP-OCR / Paddle2ONNX, Keras) fuses into one HardSwish; HardSwish,
HardSigmoid, Sigmoid and Add / Sub / Mul / Div with a scalar constant run on the MLA as lookup tables equal,
code for code, to the float island, and their integer ONNX is bit-identical to execute; a Div by
an activation stays on the APU."""
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import default_quantization, int16_quantization, load_model, onnx_source
from core.quantization.quant_data import NodeQuant
from core.runtime.integer_interpreter import run_program

rng = np.random.default_rng(11)
X = (rng.standard_normal((8, 3, 6, 6)) * 2).astype(np.float32)


def _const(name, v):
    return numpy_helper.from_array(np.asarray(v, np.float32), name)


def _model(middle, inits, opset=13):
    """Conv -> ``middle`` (nodes from "c" to "h") -> Conv."""
    inits = dict(inits, w1=(rng.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32),
                 w2=(rng.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), *middle,
             helper.make_node("Conv", ["h", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [_const(k, v) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


RELU6_OF_X_PLUS_3 = [helper.make_node("Add", ["c", "three"], ["a"]),
                     helper.make_node("Clip", ["a", "zero", "six"], ["g"])]
K = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}
WRITTEN_OUT = {
    "paddle (x*relu6(x+3))/6": (RELU6_OF_X_PLUS_3 + [helper.make_node("Mul", ["c", "g"], ["m"]),
                                                    helper.make_node("Div", ["m", "six"], ["h"])], K),
    "(relu6(x+3)*x)*(1/6)": ([helper.make_node("Add", ["three", "c"], ["a"]), RELU6_OF_X_PLUS_3[1],
                             helper.make_node("Mul", ["g", "c"], ["m"]),
                             helper.make_node("Mul", ["m", "sixth"], ["h"])], K),
    "x*(relu6(x+3)/6)": (RELU6_OF_X_PLUS_3 + [helper.make_node("Div", ["g", "six"], ["d"]),
                                             helper.make_node("Mul", ["c", "d"], ["h"])], K),
    "x*hardsigmoid(x)": ([helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5),
                          helper.make_node("Mul", ["c", "g"], ["h"])], {}),
}


@pytest.mark.parametrize("form", list(WRITTEN_OUT))
def test_written_out_hard_swish_fuses_and_matches_onnxruntime(form, onnx_model_file):
    middle, inits = WRITTEN_OUT[form]
    path = onnx_model_file(_model(middle, inits))
    net = load_model(onnx_source(path))
    ops = [n.op for n in net.graph.nodes]
    assert ops.count("HardSwish") == 1 and not {"Clip", "Div", "Mul", "Add", "HardSigmoid"} & set(ops), ops
    assert all(n.segment.startswith("MLA") for n in net.graph.nodes)     # no trip to the APU
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(net.execute({"x": X})[0], want, rtol=1e-5, atol=1e-5)


def test_not_fused_when_a_part_is_read_elsewhere(onnx_model_file):
    middle, inits = WRITTEN_OUT["paddle (x*relu6(x+3))/6"]
    # the Clip's output also feeds the output sum: the pattern's inside is needed, nothing fuses
    middle = middle[:-1] + [helper.make_node("Div", ["m", "six"], ["d"]), helper.make_node("Add", ["d", "g"], ["h"])]
    path = onnx_model_file(_model(middle, inits))
    net = load_model(onnx_source(path))
    assert "HardSwish" not in [n.op for n in net.graph.nodes]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(net.execute({"x": X})[0], want, rtol=1e-5, atol=1e-5)


TABLE_CASES = {
    "HardSwish": ([helper.make_node("HardSwish", ["c"], ["h"])], {}, 14),
    "Sigmoid": ([helper.make_node("Sigmoid", ["c"], ["h"])], {}, 13),
    "HardSigmoid": ([helper.make_node("HardSigmoid", ["c"], ["h"], alpha=0.25, beta=0.4)], {}, 13),
    # after a Relu (fused into the Conv), so that the scalar cannot fold into the Conv's weights
    "Mul by scalar": ([helper.make_node("Mul", ["k", "r"], ["h"])], {"k": [-0.7]}, 13),
    "Div by scalar": ([helper.make_node("Div", ["r", "k"], ["h"])], {"k": 3.5}, 13),
    "Sub from scalar": ([helper.make_node("Sub", ["k", "r"], ["h"])], {"k": 0.25}, 13),
}


@pytest.mark.parametrize("config", [default_quantization, int16_quantization], ids=["int8", "int16"])
@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_scalar_tables_are_the_float_island_and_export_exactly(case, config, onnx_model_file, tmp_path):
    middle, inits, opset = TABLE_CASES[case]
    path = onnx_model_file(_model([helper.make_node("Relu", ["c"], ["r"]), *middle], inits, opset))
    net = load_model(onnx_source(path))
    model = net.quantize([{"x": X[i:i + 2]} for i in range(0, 8, 2)], config)
    program = model.program
    node = next(n for n in program.graph.nodes if n.op == middle[-1].op_type)
    assert node.segment.startswith("MLA") and program.kinds[node.name] == "int"
    bits = program.tensors[node.outputs[0]].bits
    assert program.constants[node.name].table.size == 1 << bits
    island = dataclasses.replace(program, kinds=dict(program.kinds, **{node.name: "float"}),
                                 constants=dict(program.constants, **{node.name: NodeQuant()}))
    got = model.execute({"x": X})[0]
    assert np.array_equal(got, run_program(island, {"x": X})[program.graph.outputs[0]])
    want = net.execute({"x": X})[0]
    assert np.max(np.abs(got - want)) < (0.06 if bits == 8 else 2e-3) * np.max(np.abs(want))
    out_path = model.export_onnx(str(tmp_path / "int.onnx"), form="integer")
    out = ort.InferenceSession(out_path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    assert np.array_equal(out, got)


def test_div_by_an_activation_stays_on_the_apu(onnx_model_file):
    middle = [helper.make_node("Abs", ["c"], ["a"]), helper.make_node("Add", ["a", "one"], ["b"]),
              helper.make_node("Div", ["c", "b"], ["h"])]
    path = onnx_model_file(_model(middle, {"one": 1.0}))
    net = load_model(onnx_source(path))
    div = next(n for n in net.graph.nodes if n.op == "Div")
    assert div.segment.startswith("APU")
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(net.execute({"x": X})[0], want, rtol=1e-5, atol=1e-5)
