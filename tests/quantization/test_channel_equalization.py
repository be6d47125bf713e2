"""Cross-layer channel equalization: float outputs unchanged, weight ranges even out, ReLU6
bounds become per-channel and the integer program clamps them per channel."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import default_quantization, load_model, onnx_source, quantization_scheme
from core.ir.passes.equalize_channels import equalizable_pairs, equalize_channels


def mobilenet_block(path, seed=0):
    """conv 3x3 (8 ch, ReLU6) -> depthwise 3x3 (ReLU6) -> conv 1x1 (6 ch) -> GAP -> Gemm, with
    per-channel weight ranges spread over two decades (what equalization is for)."""
    rng = np.random.default_rng(seed)
    spread = np.logspace(-1.5, 0.5, 8).astype(np.float32)
    w1 = rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None]
    w2 = rng.normal(size=(8, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None] * 0.3
    w3 = rng.normal(size=(6, 8, 1, 1)).astype(np.float32) * 0.5
    wf = rng.normal(size=(4, 6)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1, "w1"), (rng.normal(size=8).astype(np.float32) * 0.1, "b1"), (w2, "w2"),
        (rng.normal(size=8).astype(np.float32) * 0.1, "b2"), (w3, "w3"), (np.zeros(6, np.float32), "b3"),
        (wf, "wf"), (np.zeros(4, np.float32), "bf"), (np.array(0, np.float32), "lo"), (np.array(6, np.float32), "hi"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    return load_model(onnx_source(mobilenet_block(str(tmp_path_factory.mktemp("cle") / "block.onnx"))))


def per_channel_ratio(graph, node):
    w = graph.constants[node.inputs[1]]
    r = np.abs(w).reshape(w.shape[0], -1).max(1)
    return r.max() / r.min()


def test_float_outputs_unchanged_and_ranges_even_out(block):
    g = block.graph.copy()
    pairs = equalizable_pairs(g)
    assert [(a.op, b.op) for a, b in pairs] == [("Conv", "Conv"), ("Conv", "Conv")]
    assert equalize_channels(g) == 2
    x = np.random.default_rng(1).normal(size=(5, 3, 12, 12)).astype(np.float32)
    from core.runtime.float_interpreter import run_graph

    before = run_graph(block.graph, {"x": x})["y"]
    after = run_graph(g, {"x": x})["y"]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    first = g.nodes[0]
    assert per_channel_ratio(g, first) < per_channel_ratio(block.graph, first) / 5
    act = first.attrs["activation"]
    assert np.ndim(act["max"]) == 1 and len(act["max"]) == 8 and np.ptp(act["max"]) > 0
    assert block.graph.nodes[0].attrs["activation"]["max"] == 6.0          # the original graph is untouched


def test_per_channel_clip_runs_in_integers(block):
    rng = np.random.default_rng(2)
    calib = [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(32)]
    x = rng.normal(size=(16, 3, 12, 12)).astype(np.float32)
    (f,) = block.execute({"x": x})
    per_tensor = default_quantization.with_weight_quantization(quantization_scheme(False, False))
    plain = block.quantize(calib, per_tensor)
    equalized = block.quantize(calib, per_tensor.with_channel_equalization(True))
    first = equalized.program.graph.nodes[0].name
    lo, hi = equalized.program.constants[first].act_channel_bounds
    assert len(hi) == 8 and hi.min() < hi.max()
    # the per-channel clamp holds in the integer output of the first conv
    import copy

    from core.runtime.integer_interpreter import run_program

    prog = copy.copy(equalized.program)
    prog.graph = equalized.program.graph.copy()
    prog.graph.outputs = [prog.graph.nodes[0].outputs[0]]
    q_first = run_program(prog, {"x": x})[prog.graph.outputs[0]]
    t = equalized.program.tensors[prog.graph.outputs[0]]
    bound = (hi.astype(np.float64) - t.zero_point) * t.scale
    assert np.all(q_first.max(axis=(0, 2, 3)) <= bound + 1e-6)
    err_plain = np.abs(plain.execute({"x": x})[0] - f).mean()
    err_eq = np.abs(equalized.execute({"x": x})[0] - f).mean()
    assert err_eq < err_plain, (err_eq, err_plain)
    fast = equalized.execute({"x": x}, fast_mode=True)[0]
    exact = equalized.execute({"x": x})[0]
    assert np.abs(fast - exact).max() <= 4 * equalized.program.tensors["y"].scale


def test_equalized_model_saves_loads_and_exports(block, tmp_path):
    import onnxruntime as ort

    from core import Model

    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    model = block.quantize(calib, default_quantization.with_channel_equalization(True))
    model.save("eq", str(tmp_path))
    loaded = Model.load("eq", str(tmp_path))
    x = rng.normal(size=(4, 3, 12, 12)).astype(np.float32)
    assert np.array_equal(loaded.execute({"x": x})[0], model.execute({"x": x})[0])
    path = model.export_onnx(str(tmp_path / "eq.onnx"))
    o = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(o - model.execute({"x": x})[0]).max() <= 2 * model.program.tensors["y"].scale
