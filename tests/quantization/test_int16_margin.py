"""INT16 activation ranges keep a margin over the calibrated range (SIXTEEN_BIT_RANGE_MARGIN):
held-out data beyond the calibration set is not clipped. The coverage suite's ResNet-18 (8
calibration crops) reached 21.8 dB INT16 output SQNR because its logits on held-out crops went
1.3x past the calibrated range; with the margin 77.7 dB."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from core import default_quantization, int16_quantization, load_model, onnx_source
from core.quantization.quantizer import SIXTEEN_BIT_RANGE_MARGIN


def _sqnr(ref, x):
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - x) ** 2), 1e-300))


def conv_net():
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 8, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_int16_held_out_data_beyond_the_calibrated_range(onnx_model_file):
    net = load_model(onnx_source(onnx_model_file(conv_net())))
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    # held-out samples 1.5x brighter than any calibration sample: every range is exceeded
    x = 1.5 * rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref, = net.execute({"x": x})
    out16, = net.quantize(calib, int16_quantization).execute({"x": x})
    out8, = net.quantize(calib, default_quantization).execute({"x": x})
    assert SIXTEEN_BIT_RANGE_MARGIN >= 1.5
    assert _sqnr(ref, out16) > 65          # 19 dB without the margin: clipped at the calibrated range
    assert _sqnr(ref, out16) > _sqnr(ref, out8) + 30


def test_the_margin_stops_at_a_fused_clip(onnx_model_file):
    """A Relu6 conv calibrated to 5.7 keeps [0, 6] (not 2 x 5.7): its output cannot exceed 6;
    an unbounded Relu conv keeps the full 2x margin."""
    model = conv_net()
    g = model.graph
    g.node[1].CopyFrom(helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]))
    g.initializer.extend([numpy_helper.from_array(np.float32(0.0), "lo"),
                          numpy_helper.from_array(np.float32(6.0), "hi")])
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    for clipped, proto in ((True, model), (False, conv_net())):
        net = load_model(onnx_source(onnx_model_file(proto)))
        stats = net.calibrate(calib)
        program = net.quantize(stats, int16_quantization).program
        conv = program.graph.nodes[0]
        hi = float(stats[conv.outputs[0]].max)
        scale = program.tensors[conv.outputs[0]].scale
        assert 3.0 < hi, hi      # 2x the calibrated maximum would pass 6
        want = min(SIXTEEN_BIT_RANGE_MARGIN * hi, 6.0) if clipped else SIXTEEN_BIT_RANGE_MARGIN * hi
        assert np.isclose(scale * 32767, want, rtol=1e-6), (clipped, scale * 32767, want)


def test_a_layer_norm_input_keeps_a_smaller_margin(onnx_model_file):
    """A tensor a LayerNormalization reads gets LAYER_NORM_INPUT_MARGIN (LayerNorm amplifies a
    narrow token's rounding error); the MatMul output beside it keeps the full 16-bit margin."""
    from core import MinMaxMethod
    from core.quantization.quantizer import LAYER_NORM_INPUT_MARGIN

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 16)) * 0.3).astype(np.float32)
    gamma, beta = np.ones(16, np.float32), np.zeros(16, np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["ln"], axis=-1),
             helper.make_node("Add", ["r", "ln"], ["y"])]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 16])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(gamma, "gamma"),
                           numpy_helper.from_array(beta, "beta")])
    net = load_model(onnx_source(onnx_model_file(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))))
    calib = [{"x": rng.standard_normal((1, 5, 16)).astype(np.float32)} for _ in range(8)]
    stats = net.calibrate(calib)
    program = net.quantize(stats, int16_quantization.with_calibration(MinMaxMethod())).program
    assert LAYER_NORM_INPUT_MARGIN < SIXTEEN_BIT_RANGE_MARGIN
    for t, margin in (("r", LAYER_NORM_INPUT_MARGIN), ("m", SIXTEEN_BIT_RANGE_MARGIN)):
        amax = max(abs(float(stats[t].min)), abs(float(stats[t].max)))
        assert np.isclose(program.tensors[t].scale * 32767, margin * amax, rtol=1e-6), t
