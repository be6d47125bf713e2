"""Block reconstruction (AdaRoundMethod(granularity="block"), BRECQ) on the zoo MNIST CNN: valid
integer weights on round-to-nearest's scales that differ from per-layer AdaRound's, a held-out
output error not worse than round-to-nearest's, bit-identical save/load, per-node fallback for
blocks with unsupported ops, validation; the block partition of MobileNetV2."""
import subprocess
import sys

import numpy as np
import pytest

from core import (
    AdaRoundMethod,
    Model,
    QuantizationConfigError,
    default_quantization,
    load_model,
    onnx_source,
    quantization_scheme,
    zoo,
)
from core.ops.common import weight_output_axis
from core.quantization import adaround, soft_rounding
from core.quantization import block_reconstruction as br
from core.quantization.quantizer import quantize_graph, quantize_weights
from core.runtime.float_interpreter import run_graph
from core.runtime.integer_interpreter import run_program

LAYER = AdaRoundMethod(iterations=100, rows=1024, batch=128, max_samples=16)
BLOCK = AdaRoundMethod(iterations=100, rows=1024, batch=128, max_samples=16, granularity="block",
                       block_batch=8)


@pytest.fixture(scope="module")
def setup():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration")
    calib = [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 32)[:32]]
    stats = net.calibrate(calib)
    program = quantize_graph(net.graph, stats, default_quantization)
    return net, calib, stats, program


@pytest.fixture(scope="module")
def learned(setup):
    net, calib, _, program = setup
    return (adaround.learn_rounding(program, net.graph, calib, BLOCK, progress=False),
            adaround.learn_rounding(program, net.graph, calib, LAYER, progress=False))


def test_blocks_of_the_mnist_cnn(setup):
    _, _, _, program = setup
    first, head = br.reconstruction_blocks(program, 4)
    assert first.inputs == ("input",) and head.outputs == ("output",) and first.outputs == head.inputs
    assert [len(b.dense) for b in (first, head)] == [2, 2] and head.nodes[0].op == "Flatten"
    assert first.learnable and head.learnable and first.stop == head.start
    singles = br.reconstruction_blocks(program, 1)
    assert [len(b.dense) for b in singles] == [1, 1, 1, 1] and all(b.learnable for b in singles)
    assert [b.nodes[-1].op for b in singles] == ["MaxPool", "MaxPool", "Gemm", "Gemm"]


def test_block_weights_are_valid_integers_and_differ_from_per_layer(setup, learned):
    net, _, _, program = setup
    block, layer = learned
    dense = [n for n in net.graph.nodes if n.op in ("Conv", "Gemm", "MatMul")]
    assert set(block) == set(layer) == {n.name for n in dense}
    moved = 0
    for n in dense:
        w = np.asarray(net.graph.constants[n.inputs[1]], np.float64)
        axis = weight_output_axis(n, w.ndim)
        rtn, scale = quantize_weights(w, axis, 8)
        c = program.constants[n.name]
        assert np.array_equal(c.w_scale, scale)
        q = block[n.name]
        assert q.dtype == rtn.dtype == np.int8 and q.shape == rtn.shape
        assert np.abs(q).max() <= 127
        shape = [1] * w.ndim
        shape[axis] = -1
        d = q.astype(np.int64) - np.floor(w / scale.reshape(shape))
        assert np.all((d == 0) | (d == 1) | (np.abs(q) == 127)), n.name
        moved += int((q != rtn).sum())
    assert moved > 0, "learned rounding must differ from round-to-nearest somewhere"
    assert any(not np.array_equal(block[k], layer[k]) for k in block), "block and per-layer rounding must differ"


def test_block_error_not_worse_than_round_to_nearest(setup, learned):
    net, _, stats, program = setup
    x = zoo.datasets.digits("evaluation").inputs[::16]          # held out: not the calibration row
    ref = run_graph(net.graph, {"input": x})["output"]

    def err(p):
        return float(np.mean((run_program(p, {"input": x})["output"] - ref) ** 2))

    block = quantize_graph(net.graph, stats, default_quantization, learned_weights=learned[0])
    assert err(block) <= err(program)


def test_block_model_save_load_bit_identical(setup, tmp_path):
    net, calib, _, _ = setup
    x = zoo.datasets.digits("evaluation").inputs[:64]
    model = net.quantize(calib, default_quantization.with_adaround(BLOCK))
    assert model.program.params.adaround == BLOCK
    out = model.execute({"input": x}, fast_mode=False)[0]
    model.save("brecq", str(tmp_path))
    again = Model.load("brecq", str(tmp_path))
    assert again.program.params.adaround == BLOCK
    for n, c in model.program.constants.items():
        if c is not None and c.w_q is not None:
            assert np.array_equal(again.program.constants[n].w_q, c.w_q), n
    assert np.array_equal(again.execute({"input": x}, fast_mode=False)[0], out)


def test_4bit_block_weights(setup):
    net, calib, _, _ = setup
    method = AdaRoundMethod(iterations=30, rows=256, batch=64, max_samples=8, granularity="block", block_batch=4)
    model = net.quantize(calib, default_quantization.with_adaround(method)
                         .with_weight_quantization(quantization_scheme(False, True, 4)))
    for n in net.graph.nodes:
        if n.op in ("Conv", "Gemm"):
            w_q = model.program.constants[n.name].w_q
            assert w_q.dtype == np.int8 and np.abs(w_q).max() <= 7, n.name


def test_unsupported_op_falls_back_to_per_layer(setup, monkeypatch):
    """Without MaxPool among the differentiable ops, the MNIST CNN's conv block falls back: its
    nodes get exactly per-layer AdaRound's rounding; the dense head is still learned as a block."""
    net, calib, _, program = setup
    monkeypatch.setattr(br, "SUPPORTED_OPS", tuple(op for op in br.SUPPORTED_OPS if op != "MaxPool"))
    convs, head = br.reconstruction_blocks(program, 4)
    assert not convs.learnable and "MaxPool" in convs.unsupported and head.learnable
    method = AdaRoundMethod(iterations=30, rows=256, batch=64, max_samples=8, granularity="block")
    got = adaround.learn_rounding(program, net.graph, calib, method, progress=False)
    want = adaround.learn_rounding(program, net.graph, calib,
                                   AdaRoundMethod(iterations=30, rows=256, batch=64, max_samples=8), progress=False)
    assert set(got) == set(want)
    for n in convs.dense:
        assert np.array_equal(got[n.name], want[n.name]), n.name
    assert any(not np.array_equal(got[n.name], want[n.name]) for n in head.dense)


def test_granularity_is_validated_and_in_the_digest(setup):
    _, _, _, program = setup
    with pytest.raises(QuantizationConfigError, match="AdaRoundMethod.granularity"):
        AdaRoundMethod(granularity="blocks")
    with pytest.raises(QuantizationConfigError, match="AdaRoundMethod.block_size"):
        AdaRoundMethod(granularity="block", block_size=0)
    with pytest.raises(QuantizationConfigError, match="AdaRoundMethod.block_batch"):
        AdaRoundMethod(block_batch=0)
    assert AdaRoundMethod().granularity == "layer"
    assert "granularity" not in repr(AdaRoundMethod()) and "granularity='block'" in repr(BLOCK)
    digests = {adaround.rounding_digest(program, "d", m) for m in (LAYER, BLOCK, AdaRoundMethod(
        iterations=100, rows=1024, batch=128, max_samples=16, granularity="block", block_size=3, block_batch=8))}
    assert len(digests) == 3


def test_import_core_stays_numpy_only():
    code = "import core, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_blocks_of_mobilenet_v2():
    """MobileNetV2: blocks end at the residual stream (or split a longer stretch evenly), hold
    1-4 dense nodes, are all learnable and cover every dense node once."""
    net = load_model(onnx_source(zoo.build("mobilenet_v2")))
    x = zoo.datasets.natural_images("calibration", 2).inputs
    program = quantize_graph(net.graph, net.calibrate([{net.input_names[0]: x}]), default_quantization)
    blocks = br.reconstruction_blocks(program, 4)
    dense = [n.name for n in soft_rounding.learnable_dense_nodes(program)]
    assert [n.name for b in blocks for n in b.dense] == dense
    assert all(b.learnable and 1 <= len(b.dense) <= 4 for b in blocks), [b.unsupported for b in blocks]
    producers = program.graph.producers()
    ends = {producers[b.outputs[0]].op for b in blocks}
    assert "Add" in ends
    # stem + first two inverted residuals split 3 + 3, then one block per inverted residual, the
    # last one with the 1x1 conv after it, the classifier head alone
    assert [len(b.dense) for b in blocks] == [3] * 16 + [4, 1]
    assert [b.nodes[0].op for b in blocks[-1:]] == ["GlobalAveragePool"]
