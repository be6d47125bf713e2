"""LoadedNet.calibrate: one float pass over real data records statistics for every tensor,
which then answer every method and scheme, and survive save/load."""
import numpy as np
import pytest

from core import CalibrationError, InputError, load_model, onnx_source, zoo
from core.quantization.calibration import CalibrationStatistics
from core.quantization.params import (
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    quantization_scheme,
)


@pytest.fixture(scope="module")
def mnist():
    return load_model(onnx_source(zoo.build("mnist_cnn")))


@pytest.fixture(scope="module")
def digits():
    return zoo.datasets.digits("calibration")


def samples(digits, n, batch=1):
    return [{"input": digits.inputs[i : i + batch]} for i in range(0, n * batch, batch)]


def test_one_pass_serves_every_method_and_scheme(mnist, digits, tmp_path):
    stats = mnist.calibrate(samples(digits, 16, batch=4))
    tensors = set(mnist.graph.inputs) | {o for n in mnist.graph.nodes for o in n.outputs}
    assert tensors <= set(stats.names())
    assert stats.num_samples == 16
    # the float pass really ran: the logits' observed max equals a direct execution's
    (logits,) = mnist.execute({"input": digits.inputs[:64]})
    out = mnist.graph.outputs[0]
    lo, hi = stats.compute_range(out, MinMaxMethod(), quantization_scheme(True, False, 8))
    assert lo == pytest.approx(min(0.0, float(logits.min()))) and hi == pytest.approx(max(0.0, float(logits.max())))
    methods = [MinMaxMethod(), MovingAverageMinMaxMethod(), HistogramMSEMethod(1024), HistogramEntropyMethod(),
               HistogramPercentileMethod(99.9)]
    for method in methods:
        for bits in (8, 16):
            for asym in (False, True):
                lo, hi = stats.compute_range(out, method, quantization_scheme(asym, False, bits))
                assert lo <= 0 <= hi and hi - lo > 0
    path = tmp_path / "stats.npz"
    stats.save(path)
    again = CalibrationStatistics.load(path)
    assert again.compute_range(out, HistogramMSEMethod(1024), quantization_scheme(False, False, 8)) == \
        stats.compute_range(out, HistogramMSEMethod(1024), quantization_scheme(False, False, 8))


def test_bad_calibration_data(mnist, digits):
    with pytest.raises(CalibrationError):
        mnist.calibrate([])
    with pytest.raises(InputError, match="input"):
        mnist.calibrate([{"image": digits.inputs[:1]}])
    bad = digits.inputs[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN|Inf|finite"):
        mnist.calibrate([{"input": bad}])
