"""Fixtures of the accelerator-mode tests: quantized zoo models and a loopback devkit (a real
OpenSSH server on 127.0.0.1, started by :func:`core.devkit.testing.loopback_sshd`)."""
from __future__ import annotations

import os

import pytest

from core import QuantizationPrecision, default_quantization, int16_quantization, load_model, onnx_source, zoo

MIXED_NODE = "MLA_0/conv2d_add_relu_2"


@pytest.fixture(scope="session")
def mnist_net():
    return load_model(onnx_source(zoo.build("mnist_cnn")))


@pytest.fixture(scope="session")
def digits():
    return zoo.datasets.digits("calibration").inputs


@pytest.fixture(scope="session")
def mnist_models(mnist_net, digits):
    """{"int8", "int16", "mixed"} -> Model (mixed: one conv in INT16, the rest INT8)."""
    stats = mnist_net.calibrate([{"input": digits[i:i + 8]} for i in range(0, 64, 8)])
    configs = {
        "int8": default_quantization,
        "int16": int16_quantization,
        "mixed": default_quantization.with_custom_quantization_configs(
            {MIXED_NODE: {"quantization_precision": QuantizationPrecision.INT_16}}),
    }
    return {k: mnist_net.quantize(stats, cfg, model_name=f"mnist_{k}") for k, cfg in configs.items()}


@pytest.fixture(scope="session")
def mobilenet():
    """(MobileNetV2 INT8 calibrated on 8 natural-image crops, those crops)."""
    net = load_model(onnx_source(zoo.build("mobilenet_v2")))
    x = zoo.datasets.natural_images("calibration", 8).inputs
    model = net.quantize([{"input": x[i:i + 1]} for i in range(len(x))], default_quantization,
                         model_name="mobilenet_v2")
    return model, x


@pytest.fixture(scope="session")
def devkit(tmp_path_factory):
    from core.devkit.testing import SshdUnavailable, loopback_sshd

    try:
        with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except SshdUnavailable as e:
        pytest.fail(f"{e} (`make test` installs openssh-server)")


@pytest.fixture
def remote_root(tmp_path, devkit):
    """A fresh parent for the remote work directories; no ``mixq-*`` may remain after the test."""
    root = tmp_path / "devkit-remote"
    root.mkdir()
    yield str(root)
    assert devkit.proc.poll() is None, "sshd died during the test"
    leftovers = sorted(p for p in os.listdir(root) if p.startswith("mixq-"))
    assert leftovers == [], f"remote work directories left behind: {leftovers}"


@pytest.fixture
def accel_kwargs(devkit, remote_root):
    """``accel_kwargs(**overrides)``: keyword arguments of execute_in_accelerator_mode for the
    loopback devkit (key auth, the test known_hosts, this test's remote root, fast retries)."""
    from core.devkit.transport import RetryPolicy

    def make(**overrides):
        kwargs = devkit.accelerator_kwargs(remote_root, timeout=120,
                                           retry=RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.2))
        kwargs.update(overrides)
        return kwargs

    return make

