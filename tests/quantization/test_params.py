"""Quantization configuration API: the specification's examples, defaults and validation."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import MixqError, QuantizationConfigError
from core.quantization import (
    CalibrationMethod,
    HistogramEntropyMethod,
    HistogramMSEMethod,
    HistogramPercentileMethod,
    MinMaxMethod,
    MovingAverageMinMaxMethod,
    QuantizationFlavor,
    QuantizationParams,
    QuantizationPrecision,
    QuantizationScheme,
    RequantizationMode,
    check_custom_config_nodes,
    default_quantization,
    int16_quantization,
    quantization_scheme,
)

RESNET_INT16_NODES = [
    "MLA_0/conv2d_add_relu_0", "MLA_0/max_pool2d_1", "MLA_0/conv2d_add_relu_2",
    "MLA_0/conv2d_add_relu_3", "MLA_0/conv2d_add_4", "MLA_0/conv2d_add_5",
]


# --------------------------------------------------------------------------- spec examples

def test_spec_defining_different_quantization_schemes():
    # define quantization schemes for weights and activations
    symmetric_per_tensor_8_bits = quantization_scheme(asymmetric=False, per_channel=False, bits=8)
    symmetric_per_channel_8_bits = quantization_scheme(asymmetric=False, per_channel=True, bits=8)
    asymmetric_per_tensor_8_bits = quantization_scheme(asymmetric=True, per_channel=False, bits=8)

    # set the quantization configuration to the default
    quant_configs = default_quantization

    # modify default to change weight quantization
    quant_configs = dataclasses.replace(quant_configs, weight_quantization_scheme=symmetric_per_channel_8_bits)

    # modify default to change activation quantization
    quant_configs = dataclasses.replace(quant_configs, activation_quantization_scheme=symmetric_per_tensor_8_bits)

    assert quant_configs.weight_quantization_scheme == QuantizationScheme(False, True, 8)
    assert quant_configs.activation_quantization_scheme == QuantizationScheme(False, False, 8)
    assert asymmetric_per_tensor_8_bits == default_quantization.activation_quantization_scheme
    # replace() built a new value; the shared preset is untouched.
    assert default_quantization.activation_quantization_scheme.asymmetric is True


def test_spec_mixed_precision_int16_nodes():
    int16_nodes = RESNET_INT16_NODES
    quant_configs = default_quantization.with_custom_quantization_configs(
        {int16_node: {'quantization_precision': QuantizationPrecision.INT_16} for int16_node in int16_nodes}
    )
    assert set(quant_configs.custom_quantization_configs) == set(int16_nodes)
    assert quant_configs.precision_for("MLA_0/max_pool2d_1") is QuantizationPrecision.INT_16
    assert quant_configs.precision_for("MLA_0/some_other_node") is QuantizationPrecision.INT_8
    assert default_quantization.custom_quantization_configs is None


def test_spec_int32_output_of_last_node():
    custom_quantization_configs = {
        "MLA_1/conv2d_add_84": {"output_int32": True}
    }
    quant_configs = default_quantization.with_custom_quantization_configs(
        custom_quantization_configs
    )
    assert quant_configs.output_int32_for("MLA_1/conv2d_add_84") is True
    assert quant_configs.output_int32_for("MLA_1/conv2d_add_83") is False
    # Later edits of the caller's dict do not leak into the immutable config.
    custom_quantization_configs["MLA_1/conv2d_add_84"]["output_int32"] = False
    assert quant_configs.output_int32_for("MLA_1/conv2d_add_84") is True


def test_spec_calibration_method_examples():
    # Use MSE calibration method
    quant_configs = default_quantization
    calibration_method = CalibrationMethod.from_str('mse')
    quant_configs = quant_configs.with_calibration(calibration_method)
    assert quant_configs.calibration_method == HistogramMSEMethod(2048)

    # Use percentile calibration method with custom percentile value and number of bins
    quant_configs = default_quantization
    calibration_method = HistogramPercentileMethod(91.0, 2048)
    quant_configs = quant_configs.with_calibration(calibration_method)
    assert quant_configs.calibration_method.percentile == 91.0
    assert quant_configs.calibration_method.num_bins == 2048

    # set the quantization configuration to the default
    quant_configs = default_quantization
    # modify the default quantization to use moving average min-max calibration
    quant_configs = dataclasses.replace(quant_configs, calibration_method=MovingAverageMinMaxMethod())
    assert quant_configs.calibration_method == MovingAverageMinMaxMethod(averaging_constant=0.01)


def test_spec_overriding_configuration_parameters():
    requantization_mode = RequantizationMode.tflite
    asymmetric_pertensor_int16 = quantization_scheme(asymmetric=True, per_channel=False, bits=16)
    enable_bias_correction = True
    quant_config = default_quantization \
        .with_activation_quantization(asymmetric_pertensor_int16) \
        .with_requantization_mode(requantization_mode) \
        .with_bias_correction(enable_bias_correction)

    assert quant_config.activation_quantization_scheme == QuantizationScheme(True, False, 16)
    assert quant_config.requantization_mode is RequantizationMode.tflite
    assert quant_config.bias_correction is True
    # "while leaving other settings at their default value"
    assert quant_config.weight_quantization_scheme == default_quantization.weight_quantization_scheme
    assert quant_config.calibration_method == default_quantization.calibration_method
    assert quant_config.channel_equalization is False


def test_spec_cycling_template_builds_every_combination():
    # define quantization schemes & calibration methods
    symmetric_per_tensor = quantization_scheme(asymmetric=False, per_channel=False)
    symmetric_per_channel = quantization_scheme(asymmetric=False, per_channel=True)
    asymmetric_per_tensor = quantization_scheme(asymmetric=True, per_channel=False)

    weights_schemes = [symmetric_per_channel, symmetric_per_tensor]
    activation_schemes = [symmetric_per_tensor, asymmetric_per_tensor]
    cal_methods = [MinMaxMethod(), MovingAverageMinMaxMethod(), HistogramMSEMethod(1024),
                   HistogramEntropyMethod(), HistogramPercentileMethod(99.9)]

    seen = set()
    quant_configs = default_quantization
    for c in cal_methods:
        quant_configs = dataclasses.replace(quant_configs, calibration_method=c)
        for w in weights_schemes:
            quant_configs = dataclasses.replace(quant_configs, weight_quantization_scheme=w)
            for a in activation_schemes:
                quant_configs = dataclasses.replace(quant_configs, activation_quantization_scheme=a)
                seen.add(quant_configs)          # params are hashable values
    assert len(seen) == 5 * 2 * 2
    assert HistogramMSEMethod(1024).num_bins == 1024
    assert HistogramPercentileMethod(99.9) == HistogramPercentileMethod(percentile=99.9, num_bins=2048)


def test_spec_tflite_flavor_and_requantization_mode():
    assert QuantizationFlavor.sima.requantization_mode is RequantizationMode.sima
    assert QuantizationFlavor.tflite.requantization_mode is RequantizationMode.tflite


# --------------------------------------------------------------------------- presets

def test_presets_are_values_and_callables():
    assert default_quantization() is default_quantization
    assert int16_quantization() is int16_quantization
    assert default_quantization.with_bias_correction()() == default_quantization.with_bias_correction()


def test_default_quantization_values():
    d = default_quantization
    assert d.weight_quantization_scheme == QuantizationScheme(asymmetric=False, per_channel=True, bits=8)
    assert d.activation_quantization_scheme == QuantizationScheme(asymmetric=True, per_channel=False, bits=8)
    assert d.calibration_method == HistogramMSEMethod()
    assert d.requantization_mode is RequantizationMode.sima
    assert (d.channel_equalization, d.bias_correction, d.custom_quantization_configs) == (False, False, None)
    assert QuantizationParams() == default_quantization


def test_int16_preset_is_16_bit_activations_and_weights():
    p = int16_quantization
    assert p.activation_quantization_scheme == QuantizationScheme(asymmetric=False, per_channel=False, bits=16)
    assert p.weight_quantization_scheme == QuantizationScheme(asymmetric=False, per_channel=True, bits=16)
    assert p.precision_for("any") is QuantizationPrecision.INT_16
    assert p.calibration_method == default_quantization.calibration_method


def test_params_pickle_copy_and_hash():
    p = default_quantization.with_custom_quantization_configs(
        {"a": {"quantization_precision": QuantizationPrecision.INT_16, "output_int32": True}})
    for clone in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert clone == p and hash(clone) == hash(p)
    assert p != default_quantization


def test_builders_set_fields():
    p = (default_quantization.with_weight_quantization(quantization_scheme(False, False, 16))
         .with_channel_equalization().with_bias_correction(False)
         .with_requantization_mode(RequantizationMode.tflite))
    assert p.weight_quantization_scheme.bits == 16 and not p.weight_quantization_scheme.per_channel
    assert p.channel_equalization is True and p.bias_correction is False
    assert p.with_channel_equalization(False).channel_equalization is False
    # Setting custom configs replaces, not merges; empty and None both clear them.
    q = p.with_custom_quantization_configs({"a": {"output_int32": True}})
    q = q.with_custom_quantization_configs({"b": {"output_int32": True}})
    assert list(q.custom_quantization_configs) == ["b"]
    assert q.with_custom_quantization_configs({}).custom_quantization_configs is None
    assert q.with_custom_quantization_configs(None) == p


def test_requantization_mode_accepts_its_name():
    assert default_quantization.with_requantization_mode("TFLite").requantization_mode is RequantizationMode.tflite


# --------------------------------------------------------------------------- calibration

@pytest.mark.parametrize("name, cls", [
    ("min_max", MinMaxMethod), ("minmax", MinMaxMethod), ("MinMax", MinMaxMethod), ("min-max", MinMaxMethod),
    ("moving_average", MovingAverageMinMaxMethod), ("MOVING_AVERAGE", MovingAverageMinMaxMethod),
    ("mse", HistogramMSEMethod), ("MSE", HistogramMSEMethod), ("histogram_mse", HistogramMSEMethod),
    ("entropy", HistogramEntropyMethod), ("Entropy", HistogramEntropyMethod),
    ("percentile", HistogramPercentileMethod), (" Percentile ", HistogramPercentileMethod),
])
def test_calibration_from_str(name, cls):
    method = CalibrationMethod.from_str(name)
    assert type(method) is cls and method == cls()


def test_calibration_from_str_unknown_lists_valid_names():
    with pytest.raises(QuantizationConfigError) as info:
        CalibrationMethod.from_str("entropi")
    msg = str(info.value)
    assert "'entropi'" in msg
    for name in ("min_max", "moving_average", "mse", "entropy", "percentile"):
        assert repr(name) in msg
    assert "did you mean 'entropy'" in msg
    with pytest.raises(QuantizationConfigError, match="name"):
        CalibrationMethod.from_str(3)


@pytest.mark.parametrize("make, culprit", [
    (lambda: HistogramPercentileMethod(0.0), "percentile"),
    (lambda: HistogramPercentileMethod(100.5), "percentile"),
    (lambda: HistogramPercentileMethod(float("nan")), "percentile"),
    (lambda: HistogramPercentileMethod("99"), "percentile"),
    (lambda: HistogramPercentileMethod(99.0, 15), "num_bins"),
    (lambda: HistogramMSEMethod(8), "num_bins"),
    (lambda: HistogramMSEMethod(1024.0), "num_bins"),
    (lambda: HistogramEntropyMethod(True), "num_bins"),
    (lambda: MovingAverageMinMaxMethod(0.0), "averaging_constant"),
    (lambda: MovingAverageMinMaxMethod(1.5), "averaging_constant"),
    (lambda: CalibrationMethod(), "abstract"),
])
def test_calibration_method_validation(make, culprit):
    with pytest.raises(QuantizationConfigError, match=culprit):
        make()


def test_calibration_boundaries_accepted_and_normalised():
    assert HistogramPercentileMethod(100).percentile == 100.0
    assert isinstance(HistogramPercentileMethod(100).percentile, float)
    assert HistogramMSEMethod(np.int64(16)).num_bins == 16 and type(HistogramMSEMethod(np.int64(16)).num_bins) is int
    assert MovingAverageMinMaxMethod(1).averaging_constant == 1.0
    assert HistogramPercentileMethod(99.9).uses_histogram and not MinMaxMethod().uses_histogram


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True), st.integers(-10, 5000))
def test_percentile_accepts_exactly_its_range(p, bins):
    valid = (p == p) and 0.0 < p <= 100.0 and bins >= 16
    try:
        method = HistogramPercentileMethod(p, bins)
    except QuantizationConfigError as exc:
        assert not valid
        assert ("percentile" in str(exc)) or ("num_bins" in str(exc))
    else:
        assert valid and method.percentile == p and method.num_bins == bins


# --------------------------------------------------------------------------- scheme validation

@pytest.mark.parametrize("bits", [2, 7, 12, 32, 8.0, True, "8"])
def test_scheme_bits_must_be_8_or_16(bits):
    with pytest.raises(QuantizationConfigError, match="bits"):
        quantization_scheme(asymmetric=False, per_channel=False, bits=bits)


def test_four_bit_only_for_learned_weights():
    from core.quantization import AdaRoundMethod, default_quantization

    w4 = quantization_scheme(asymmetric=False, per_channel=True, bits=4)
    with pytest.raises(QuantizationConfigError, match="weight_quantization_scheme"):
        default_quantization.with_weight_quantization(w4)          # round-to-nearest 4-bit: refused
    with pytest.raises(QuantizationConfigError, match="activation_quantization_scheme"):
        default_quantization.with_adaround(True).with_activation_quantization(
            quantization_scheme(asymmetric=True, per_channel=False, bits=4))
    cfg = default_quantization.with_adaround(True).with_weight_quantization(w4)
    assert cfg.adaround == AdaRoundMethod() and cfg.weight_quantization_scheme.bits == 4
    assert default_quantization.with_adaround(False).adaround is None
    with pytest.raises(QuantizationConfigError, match="AdaRoundMethod.iterations"):
        AdaRoundMethod(iterations=0)


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(asymmetric=1, per_channel=False), "asymmetric"),
    (dict(asymmetric=False, per_channel="yes"), "per_channel"),
])
def test_scheme_flags_must_be_bool(kwargs, culprit):
    with pytest.raises(QuantizationConfigError, match=culprit):
        quantization_scheme(**kwargs)


def test_scheme_int_ranges():
    assert quantization_scheme(True, False, 8).int_range() == (-128, 127)
    assert quantization_scheme(False, True, 8).int_range(narrow=True) == (-127, 127)
    assert quantization_scheme(False, False, 16).int_range() == (-32768, 32767)


# --------------------------------------------------------------------------- params validation

@pytest.mark.parametrize("changes, culprit", [
    (dict(weight_quantization_scheme=quantization_scheme(asymmetric=True, per_channel=True)),
     "weight_quantization_scheme"),
    (dict(weight_quantization_scheme="int8"), "weight_quantization_scheme"),
    (dict(activation_quantization_scheme=quantization_scheme(asymmetric=True, per_channel=True)),
     "activation_quantization_scheme"),
    (dict(activation_quantization_scheme=None), "activation_quantization_scheme"),
    (dict(calibration_method="mse"), "calibration_method"),
    (dict(calibration_method=HistogramMSEMethod), "calibration_method"),
    (dict(requantization_mode="fast"), "requantization_mode"),
    (dict(requantization_mode=QuantizationFlavor.sima), "requantization_mode"),
    (dict(channel_equalization="yes"), "channel_equalization"),
    (dict(bias_correction=1), "bias_correction"),
    (dict(custom_quantization_configs=["MLA_0/conv"]), "custom_quantization_configs"),
    (dict(custom_quantization_configs={"MLA_0/conv": True}), "MLA_0/conv"),
    (dict(custom_quantization_configs={3: {"output_int32": True}}), "node names"),
    (dict(custom_quantization_configs={"n1": {"quantisation_precision": QuantizationPrecision.INT_16}}),
     "quantisation_precision"),
    (dict(custom_quantization_configs={"n1": {"quantization_precision": 16}}), "quantization_precision"),
    (dict(custom_quantization_configs={"n1": {"output_int32": "true"}}), "output_int32"),
])
def test_replace_validates_and_names_the_culprit(changes, culprit):
    # replace() goes through __init__/__post_init__, so it validates like the constructor.
    with pytest.raises(QuantizationConfigError) as info:
        dataclasses.replace(default_quantization, **changes)
    assert culprit in str(info.value)
    assert isinstance(info.value, (MixqError, ValueError))


def test_builders_validate_too():
    with pytest.raises(QuantizationConfigError, match="weight_quantization_scheme"):
        default_quantization.with_weight_quantization(quantization_scheme(asymmetric=True, per_channel=False))
    with pytest.raises(QuantizationConfigError, match="activation_quantization_scheme"):
        default_quantization.with_activation_quantization(quantization_scheme(False, True, 16))
    with pytest.raises(QuantizationConfigError, match="calibration_method"):
        default_quantization.with_calibration("entropy")
    with pytest.raises(QuantizationConfigError, match="bias_correction"):
        default_quantization.with_bias_correction("no")


def test_unknown_custom_field_suggests_the_known_one():
    with pytest.raises(QuantizationConfigError) as info:
        default_quantization.with_custom_quantization_configs({"n1": {"output_int": True}})
    msg = str(info.value)
    assert "'n1'" in msg and "'output_int'" in msg and "did you mean 'output_int32'" in msg


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_quantization.bias_correction = True
    p = default_quantization.with_custom_quantization_configs({"n": {"output_int32": True}})
    with pytest.raises(TypeError):
        p.custom_quantization_configs["n"] = {}


# --------------------------------------------------------------------------- node-name check

def test_check_custom_config_nodes_accepts_known_nodes():
    p = default_quantization.with_custom_quantization_configs(
        {n: {"quantization_precision": QuantizationPrecision.INT_16} for n in RESNET_INT16_NODES})
    check_custom_config_nodes(p, RESNET_INT16_NODES + ["MLA_0/conv2d_add_6"])
    check_custom_config_nodes(default_quantization, [])      # nothing to check


def test_check_custom_config_nodes_names_unknown_node_and_suggests():
    p = default_quantization.with_custom_quantization_configs({
        "MLA_0/conv2d_add_relu_0": {"output_int32": True},
        "MLA_0/conv2d_add_rleu_2": {"output_int32": True},     # typo
        "nothing_like_it": {"output_int32": True},
    })
    with pytest.raises(QuantizationConfigError) as info:
        check_custom_config_nodes(p, RESNET_INT16_NODES)
    msg = str(info.value)
    assert "'MLA_0/conv2d_add_rleu_2'" in msg and "did you mean 'MLA_0/conv2d_add_relu_2'" in msg
    # Exactly the two unknown nodes are reported (relu_0 exists; it may only appear as a hint).
    reported = [entry.split(" (")[0] for entry in msg.split(": ", 1)[1].split("; ")]
    assert reported == ["'MLA_0/conv2d_add_rleu_2'", "'nothing_like_it'"]


def test_docs_example_runs():
    # docs/quantization.md's python block must stay in step with the API.
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "quantization.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(block, namespace)
    cfg = namespace["cfg"]
    assert cfg.activation_quantization_scheme.bits == 16
    assert cfg.calibration_method == HistogramPercentileMethod()
    assert cfg.output_int32_for("MLA_1/conv2d_add_84") is True
