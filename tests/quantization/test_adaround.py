"""AdaRound on the zoo MNIST CNN: learned weights are valid integer weights on round-to-nearest's
scales, differ from it, and save/load keeps execution bit-identical; the cache reuses them."""
import numpy as np
import pytest

from core import (
    AdaRoundMethod,
    CalibrationError,
    Model,
    default_quantization,
    load_model,
    onnx_source,
    quantization_scheme,
    zoo,
)
from core.ops.common import weight_output_axis
from core.quantization.quantizer import quantize_weights

FAST = AdaRoundMethod(iterations=100, rows=1024, batch=128)


@pytest.fixture(scope="module")
def setup():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration")
    calib = [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 32)[:32]]
    return net, calib, cal.inputs[:64]


@pytest.mark.parametrize("bits", [8, 4])
def test_learned_weights_are_valid_integers(setup, bits, tmp_path):
    net, calib, x = setup
    cfg = default_quantization.with_adaround(FAST).with_weight_quantization(quantization_scheme(False, True, bits))
    model = net.quantize(calib, cfg)
    qmax = (1 << (bits - 1)) - 1
    moved = 0
    for n in net.graph.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul"):
            continue
        c = model.program.constants[n.name]
        w = net.graph.constants[n.inputs[1]]
        rtn, scale = quantize_weights(w, weight_output_axis(n, w.ndim), bits)
        assert c.w_q.dtype == rtn.dtype == np.int8 and c.w_q.shape == rtn.shape
        assert np.array_equal(c.w_scale, scale)
        assert c.w_q.min() >= -qmax and c.w_q.max() <= qmax
        # up or down: within one step of round-to-nearest and of floor(w / s)
        shape = [1] * w.ndim
        shape[weight_output_axis(n, w.ndim)] = -1
        fl = np.floor(np.asarray(w, np.float64) / scale.reshape(shape))
        d = c.w_q.astype(np.int64) - fl
        assert np.all((d == 0) | (d == 1) | (np.abs(c.w_q) == qmax))
        moved += int((c.w_q != rtn).sum())
    assert moved > 0, "learned rounding must differ from round-to-nearest somewhere"
    out = model.execute({"input": x})[0]
    model.save("m", str(tmp_path))
    again = Model.load("m", str(tmp_path))
    assert np.array_equal(again.execute({"input": x})[0], out)


def test_cache_and_needs_samples(setup):
    net, calib, _ = setup
    cfg = default_quantization.with_adaround(FAST)
    a = net.quantize(calib, cfg)
    b = net.quantize(calib, cfg)          # from the cache
    for n in a.program.constants:
        if a.program.constants[n].w_q is not None:
            assert np.array_equal(a.program.constants[n].w_q, b.program.constants[n].w_q)
    with pytest.raises(CalibrationError, match="adaround"):
        net.quantize(net.calibrate(calib), cfg)
