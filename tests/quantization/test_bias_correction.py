"""Bias correction on the zoo MNIST CNN: corrected biases leave no per-channel mean shift."""
import dataclasses

import numpy as np
import pytest

from core import CalibrationError, default_quantization, load_model, onnx_source, quantization_scheme, zoo
from core.quantization.bias_correction import correct_bias


@pytest.fixture(scope="module")
def setup():
    net = load_model(onnx_source(zoo.build("mnist_cnn")))
    cal = zoo.datasets.digits("calibration")
    calib = [{"input": cal.inputs[i : i + 1]} for i in range(0, len(cal), len(cal) // 64)[:64]]
    return net, calib


@pytest.mark.parametrize("per_channel", [True, False])
def test_corrected_biases_leave_no_mean_shift(setup, per_channel):
    net, calib = setup
    cfg = default_quantization.with_weight_quantization(quantization_scheme(False, per_channel))
    plain = net.quantize(calib, cfg)
    corrected = net.quantize(calib, cfg.with_bias_correction(True))
    dense = [n.name for n in net.graph.nodes if n.op in ("Conv", "Gemm")]
    changed = [n for n in dense if not np.array_equal(plain.program.constants[n].bias_q,
                                                     corrected.program.constants[n].bias_q)]
    assert changed, "some bias must move"
    # measured again on the corrected program, what is left is below half an integer bias step
    before = correct_bias(_copy(plain.program), net.graph, calib)
    after = correct_bias(_copy(corrected.program), net.graph, calib)
    assert sum(np.abs(d).sum() for d in before.values()) > 0
    assert after == {} or max(np.abs(d).max() for d in after.values()) <= 1
    ev = zoo.datasets.digits("evaluation")
    x = ev.inputs[::8]
    (f,) = net.execute({"input": x})
    err_plain = np.abs(plain.execute({"input": x})[0] - f).mean()
    err_corrected = np.abs(corrected.execute({"input": x})[0] - f).mean()
    assert err_corrected < err_plain * 1.02, (err_corrected, err_plain)   # helps or is neutral


def test_needs_samples_not_only_statistics(setup):
    net, calib = setup
    stats = net.calibrate(calib)
    with pytest.raises(CalibrationError, match="bias_correction needs calibration samples"):
        net.quantize(stats, default_quantization.with_bias_correction(True))
    model = net.quantize(iter(calib), default_quantization.with_bias_correction(True))   # one-shot iterator
    assert model.program.params.bias_correction


def _copy(program):
    import copy

    clone = copy.copy(program)
    clone.constants = {k: dataclasses.replace(v) for k, v in program.constants.items()}
    return clone
