"""The memory planner: homes from live ranges, spills, tiles and cycle estimates; a synthetic
"large tensor model" whose activations exceed L2 still compiles, with its spills reported."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import ScalarType, default_quantization, load_model, onnx_source
from core.devkit.lm import read_lm
from core.devkit.planner import KiB, MiB, Target, plan_memory
from core.runtime.integer_interpreter import run_program

SHAPE = (1, 8, 64, 64)   # int8 input: 32 KiB; 16-channel activations: 64 KiB each
TINY = Target(name="tiny", l1_bytes=16 * KiB, l2_bytes=96 * KiB, dram_bytes=64 * MiB)


def _large_tensor_onnx():
    """conv(8->16)+relu, conv(16->16)+relu, conv(16->8), add(skip from the input)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = {
        "w1": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2, "b1": np.zeros(16, np.float32),
        "w2": rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "b2": np.zeros(16, np.float32),
        "w3": rng.standard_normal((8, 16, 1, 1)).astype(np.float32) * 0.2, "b3": np.zeros(8, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "x"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "large_tensor", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("large") / "large_tensor.onnx"
    onnx.save(_large_tensor_onnx(), str(path))
    net = load_model(onnx_source(str(path), {"x": list(SHAPE)}, {"x": ScalarType.float32}))
    x = np.random.default_rng(3).standard_normal((4,) + SHAPE[1:]).astype(np.float32)
    model = net.quantize([{"x": x[i:i + 1]} for i in range(4)], default_quantization, model_name="large_tensor")
    return model, x


def test_large_tensor_model_spills_and_tiles_on_a_small_target(large, tmp_path):
    model, x = large
    report = model.compile(str(tmp_path), target=TINY)
    t = report.totals
    assert t["activation_bytes"] > TINY.l2_bytes and t["peak_live_bytes"] > TINY.l2_bytes
    assert t["spilled_tensors"] > 0 and t["spilled_bytes"] > 0 and t["dram_bytes"] > 0
    assert t["tiles"] > t["layers"] and t["tiled_layers"] > 0
    assert t["peak_l2_bytes"] <= TINY.l2_bytes
    assert any(p.dram_bytes > 0 for p in report.layers)
    assert max(p.tiles for p in report.layers) > 1
    for p in report.layers:
        assert p.tiles == max(1, math.ceil(p.working_set / TINY.l1_bytes))
        assert p.cycles == max(p.compute_cycles, p.movement_cycles) > 0
    assert "spilled to DRAM: " in str(report) and f"{t['spilled_bytes']:,} bytes" in str(report)
    # the compiled large model still runs bit-identically
    _, program, plan, _ = read_lm(report.path)
    assert plan.totals == t
    assert np.array_equal(run_program(program, {"x": x})["y"], model.execute({"x": x})[0])


def test_same_model_on_the_default_target_has_no_spills(large, tmp_path):
    model, _ = large
    report = model.compile(str(tmp_path))
    t = report.totals
    assert report.target == Target() and t["spilled_tensors"] == 0 and t["spilled_bytes"] == 0
    assert t["dram_bytes"] == 0 and t["tiles"] == t["layers"]
    assert all(h == "L2" for h in report.plan.homes.values())


def test_live_ranges_and_homes(large):
    """Hand-checked on the tiny target: input 32 KiB, 16-channel activations 64 KiB, L2 96 KiB."""
    model, _ = large
    plan = plan_memory(model.program, 1, TINY)
    g = model.program.graph
    sizes = plan.tensor_bytes
    assert sizes["x"] == 32 * KiB and sizes["y"] == 32 * KiB
    conv1, conv2 = g.nodes[0].outputs[0], g.nodes[1].outputs[0]
    assert sizes[conv1] == sizes[conv2] == 64 * KiB
    # x (32 KiB) lives to the final Add, so conv1's output (64 KiB) just fits next to it; conv2's
    # output finds 96 KiB taken and spills; everything after it fits again once conv1's is freed
    assert plan.homes["x"] == "L2" and plan.homes[conv1] == "L2" and plan.homes[conv2] == "DRAM"
    assert plan.totals["spilled_tensors"] == 1 and plan.totals["spilled_bytes"] == 64 * KiB
    # batch 4 scales every activation by 4
    plan4 = plan_memory(model.program, 4, Target())
    assert plan4.tensor_bytes["x"] == 4 * sizes["x"] and plan4.totals["spilled_bytes"] == 0


def test_int16_layers_cost_more_cycles(mnist_models):
    t = Target()
    p8 = plan_memory(mnist_models["int8"].program, 8, t)
    p16 = plan_memory(mnist_models["int16"].program, 8, t)
    for a, b in zip(p8.layers, p16.layers):
        if a.macs:
            assert a.macs == b.macs
            assert a.compute_cycles == math.ceil(a.macs / t.int8_macs_per_cycle)
            assert b.compute_cycles == math.ceil(b.macs / t.int16_macs_per_cycle) > a.compute_cycles
            assert b.weight_bytes > a.weight_bytes
        assert b.input_bytes == 2 * a.input_bytes
    assert p16.totals["cycles"] > p8.totals["cycles"]
    assert p8.totals["estimated_seconds"] == pytest.approx(p8.totals["cycles"] / t.clock_hz)


def test_target_validation_and_round_trip():
    with pytest.raises(ValueError, match="l2_bytes"):
        Target(l2_bytes=0)
    with pytest.raises(ValueError, match="dram_bandwidth"):
        Target(dram_bandwidth=float("nan"))
    with pytest.raises(ValueError, match="no field"):
        Target.from_dict({"l3_bytes": 1})
    t = Target(l1_bytes=1000, int16_macs_per_cycle=3.5)
    assert Target.from_dict(t.to_dict()) == t
    assert Target().int16_macs_per_cycle == Target().int8_macs_per_cycle / 4
    assert "L1 256 KiB, L2 4 MiB, DRAM 2 GiB" in Target().describe()
