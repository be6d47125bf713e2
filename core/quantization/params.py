"""Quantization configuration: schemes, calibration methods, requantization mode, presets.

This module is the open counterpart of ModelSDK's ``afe.apis.defines`` configuration API.
Everything in it is an immutable value: builders (``with_*``) and ``dataclasses.replace``
return new objects, and every constructor validates, so an invalid configuration never
exists. Errors are :class:`~core.errors.QuantizationConfigError` naming the field at fault.

Presets
-------
``default_quantization`` (INT8):
    weights symmetric per-channel 8-bit, activations asymmetric per-tensor 8-bit,
    ``HistogramMSEMethod()`` calibration, ``RequantizationMode.sima``, no channel
    equalization, no bias correction. Why: per-channel symmetric weights are free at run
    time (the scale folds into the per-channel requantization multiplier) and remove the
    worst INT8 weight error (channels with very different ranges); asymmetric activations
    spend all 256 levels on one-sided tensors such as ReLU outputs; MSE calibration clips
    rare outliers where that lowers the expected squared error, which the specification
    reports as consistently best.

``int16_quantization``:
    the same, but activations *symmetric* per-tensor **16-bit** and weights symmetric
    per-channel **16-bit**. Measured on MobileNetV2 (128 calibration / 200 evaluation natural
    image crops): 16-bit activations with 8-bit weights (TensorFlow Lite's "16x8" mode) agree
    with FP32's top-1 on only 90.5% of the crops, barely above INT8, because the weights'
    rounding error is then what remains; with 16-bit weights, 100%. Symmetric int16
    activations keep the zero point 0, so the ``x - zero_point`` subtraction disappears from
    every MAC; accumulators are int64 (exact in float64 BLAS, see
    :func:`core.ops.conv.conv_accumulate`). For 16x8 pass
    ``int16_quantization.with_weight_quantization(quantization_scheme(False, True, bits=8))``.
    A node set to ``QuantizationPrecision.INT_16`` in ``custom_quantization_configs`` likewise
    gets 16-bit activations *and* 16-bit weights.

Presets are values *and* callables
----------------------------------
The specification uses both ``quantization_config=default_quantization`` and
``default_quantization()``. Both work here: the presets are ``QuantizationParams``
instances, and calling a ``QuantizationParams`` returns itself. Being immutable, one
shared instance is as safe as a fresh one.
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from core.errors import QuantizationConfigError

__all__ = [
    "AdaRoundMethod",
    "RangeSearchMethod",
    "CalibrationMethod",
    "HistogramEntropyMethod",
    "HistogramMSEMethod",
    "HistogramPercentileMethod",
    "MinMaxMethod",
    "MovingAverageMinMaxMethod",
    "QuantizationFlavor",
    "QuantizationParams",
    "QuantizationPrecision",
    "QuantizationScheme",
    "RequantizationMode",
    "check_custom_config_nodes",
    "default_quantization",
    "int16_quantization",
    "quantization_scheme",
]


# --------------------------------------------------------------------------- helpers

def _check_bool(value: Any, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise QuantizationConfigError(f"{name} must be a bool, got {value!r}")


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise QuantizationConfigError(f"{name} must be an int, got {value!r}")
    return int(value)


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise QuantizationConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise QuantizationConfigError(f"{name} must be finite, got {value!r}")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    # Frozen dataclasses normalise their own fields in __post_init__ this way.
    object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------- enums

class QuantizationPrecision(enum.Enum):
    """Integer precision of a node's activations (mixed precision is chosen per node)."""

    INT_8 = "int8"
    INT_16 = "int16"

    @property
    def bits(self) -> int:
        return 8 if self is QuantizationPrecision.INT_8 else 16

    @classmethod
    def from_bits(cls, bits: int) -> QuantizationPrecision:
        if bits == 8:
            return cls.INT_8
        if bits == 16:
            return cls.INT_16
        raise QuantizationConfigError(f"bits must be 8 or 16, got {bits!r}")


def enum_from(enum_cls: type[enum.Enum], value: Any, name: str) -> enum.Enum:
    """Accept an enum member or its name/value as a string (case-insensitive)."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        for member in enum_cls:
            if key in (member.name.lower(), str(member.value).lower()):
                return member
    valid = ", ".join(f"{enum_cls.__name__}.{m.name}" for m in enum_cls)
    raise QuantizationConfigError(f"{name} must be one of {valid}; got {value!r}")


class RequantizationMode(enum.Enum):
    """Which integer arithmetic rescales int32/int64 accumulators to the output type.

    ``sima``: one 16-bit multiply and one rounding shift (cheap; see docs/quantization.md).
    ``tflite``: TensorFlow Lite's fixed-point arithmetic (bit-exact with its reference kernels).
    """

    sima = "sima"
    tflite = "tflite"

    @classmethod
    def from_str(cls, name: str) -> RequantizationMode:
        return enum_from(cls, name, "requantization_mode")


class QuantizationFlavor(enum.Enum):
    """The arithmetic a pre-quantized (TFLite) model is converted to."""

    sima = "sima"
    tflite = "tflite"

    @property
    def requantization_mode(self) -> RequantizationMode:
        return RequantizationMode(self.value)

    @classmethod
    def from_str(cls, name: str) -> QuantizationFlavor:
        return enum_from(cls, name, "quantization_flavor")


# --------------------------------------------------------------------------- schemes

@dataclass(frozen=True)
class QuantizationScheme:
    """How one kind of tensor is quantized: zero point or not, one scale per channel or
    per tensor, and the integer width."""

    asymmetric: bool
    per_channel: bool
    bits: int = 8

    def __post_init__(self) -> None:
        _set(self, "asymmetric", _check_bool(self.asymmetric, "asymmetric"))
        _set(self, "per_channel", _check_bool(self.per_channel, "per_channel"))
        bits = _check_int(self.bits, "bits")
        if bits not in (4, 8, 16):
            raise QuantizationConfigError(f"bits must be 8 or 16 (4: weights with AdaRound only), got {bits}")
        _set(self, "bits", bits)

    @property
    def precision(self) -> QuantizationPrecision:
        return QuantizationPrecision.from_bits(self.bits)

    def int_range(self, *, narrow: bool = False) -> tuple[int, int]:
        """(qmin, qmax) of the signed integer type; ``narrow`` drops the most negative
        value so the range is symmetric (TFLite's int8 weights use [-127, 127])."""
        qmax = (1 << (self.bits - 1)) - 1
        return (-qmax if narrow else -qmax - 1), qmax


def quantization_scheme(asymmetric: bool, per_channel: bool, bits: int = 8) -> QuantizationScheme:
    """Build a :class:`QuantizationScheme` (the specification's constructor function). ``bits``:
    8 or 16; 4 for weights with AdaRound (stored in int8 containers, values in [-7, 7])."""
    return QuantizationScheme(asymmetric=asymmetric, per_channel=per_channel, bits=bits)


# --------------------------------------------------------------------------- learned rounding

GRANULARITIES = ("layer", "block")


@dataclass(frozen=True, repr=False)
class AdaRoundMethod:
    """Learned weight rounding (AdaRound, Nagel et al. 2020) for every integer Conv/Gemm/MatMul:
    see :mod:`core.quantization.adaround`.

    ``iterations``: Adam steps per node; ``batch``: output rows (positions x samples) per step;
    ``rows``: output rows sampled per node (bounds memory: the node's input patches at those
    rows); ``regularization``: lambda of the rounding regulariser; ``beta_start``/``beta_end``:
    its annealed exponent; ``warmup``: fraction of the iterations without the regulariser;
    ``learning_rate``: Adam's on V; ``max_samples``: calibration samples used; ``seed``.

    ``granularity``: ``"layer"`` (AdaRound: each node against its own float output) or
    ``"block"`` (BRECQ, Li et al. 2021: the dense nodes of a block, at most ``block_size`` of
    them, learned jointly against the float output of the block; see
    :mod:`core.quantization.block_reconstruction`); ``block_batch``: calibration samples per Adam
    step in block mode, at least (more while they give fewer than ``batch`` output rows).
    """

    iterations: int = 600
    batch: int = 256
    rows: int = 4096
    regularization: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    learning_rate: float = 0.01
    max_samples: int = 128
    seed: int = 0
    granularity: str = "layer"
    block_size: int = 4
    block_batch: int = 8

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise QuantizationConfigError(
                f"AdaRoundMethod.granularity must be one of {', '.join(map(repr, GRANULARITIES))}; "
                f"got {self.granularity!r}")
        for name in ("iterations", "batch", "rows", "max_samples", "block_size", "block_batch"):
            v = _check_int(getattr(self, name), f"AdaRoundMethod.{name}")
            if v < 1:
                raise QuantizationConfigError(f"AdaRoundMethod.{name} must be >= 1, got {v}")
            _set(self, name, v)
        _set(self, "seed", _check_int(self.seed, "AdaRoundMethod.seed"))
        for name, lo, lo_open, hi in (("regularization", 0.0, False, math.inf), ("beta_start", 0.0, True, math.inf),
                                      ("beta_end", 0.0, True, math.inf), ("warmup", 0.0, False, 1.0),
                                      ("learning_rate", 0.0, True, math.inf)):
            v = _check_real(getattr(self, name), f"AdaRoundMethod.{name}")
            if v < lo or (lo_open and v == lo) or v > hi or (name == "warmup" and v >= 1.0):
                raise QuantizationConfigError(f"AdaRoundMethod.{name} out of range: {v!r}")
            _set(self, name, v)
        if self.beta_end > self.beta_start:
            raise QuantizationConfigError(
                f"AdaRoundMethod.beta_end ({self.beta_end}) must be <= beta_start ({self.beta_start})")

    def __repr__(self) -> str:
        # the block fields only when they matter: a per-layer method keeps the repr (and so the
        # learned-rounding cache digest) it had before block reconstruction existed
        skip = () if self.granularity == "block" else ("granularity", "block_size", "block_batch")
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if f.name not in skip)
        return f"AdaRoundMethod({fields})"


@dataclass(frozen=True)
class RangeSearchMethod:
    """Output-aware activation ranges (see :mod:`core.quantization.range_search`): per 8-bit
    activation tensor, in graph order, the clip factor in ``factors`` (times the calibrated range)
    that minimises the network outputs' squared error against float, with the tensors before it
    quantized and the network after it in float (``downstream="float"``) or fake-quantized with
    the calibrated ranges (``"quantized"``). ``samples``: calibration samples scored (a seeded
    random choice); ``seed``. Every tensor keeps one ordinary per-tensor scale."""

    factors: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25)
    samples: int = 32
    downstream: str = "quantized"
    seed: int = 0

    def __post_init__(self) -> None:
        fs = self.factors
        if isinstance(fs, (str, bytes)) or not hasattr(fs, "__iter__"):
            raise QuantizationConfigError(f"RangeSearchMethod.factors must be a sequence of numbers, got {fs!r}")
        fs = tuple(_check_real(f, "RangeSearchMethod.factors") for f in fs)
        if not fs or any(not (0.0 < f < math.inf) for f in fs):
            raise QuantizationConfigError(f"RangeSearchMethod.factors must be positive numbers, got {self.factors!r}")
        _set(self, "factors", fs)
        v = _check_int(self.samples, "RangeSearchMethod.samples")
        if v < 1:
            raise QuantizationConfigError(f"RangeSearchMethod.samples must be >= 1, got {v}")
        _set(self, "samples", v)
        _set(self, "seed", _check_int(self.seed, "RangeSearchMethod.seed"))
        if self.downstream not in ("float", "quantized"):
            raise QuantizationConfigError(
                f"RangeSearchMethod.downstream must be 'float' or 'quantized', got {self.downstream!r}")


def _method_or_none(value: Any, method_type: type, field: str):
    """A bool-or-method field: None when off, ``method_type()`` for True, the method itself."""
    if value is None or value is False or (isinstance(value, np.bool_) and not value):
        return None
    if value is True or isinstance(value, np.bool_):
        return method_type()
    if isinstance(value, method_type):
        return value
    raise QuantizationConfigError(f"{field} must be a bool or a {method_type.__name__}, got {value!r}")


# --------------------------------------------------------------------------- calibration

_NUM_BINS_MIN = 16


def _check_num_bins(value: Any) -> int:
    bins = _check_int(value, "num_bins")
    if bins < _NUM_BINS_MIN:
        raise QuantizationConfigError(f"num_bins must be >= {_NUM_BINS_MIN}, got {bins}")
    return bins


# name or alias -> calibration method class (filled by CalibrationMethod.__init_subclass__)
_CALIBRATION_METHODS: dict[str, type[CalibrationMethod]] = {}


@dataclass(frozen=True)
class CalibrationMethod:
    """Base of the calibration methods: how observed activation values become a range.

    ``CalibrationMethod.from_str(name)`` builds one with default parameters.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()   # more names ``from_str`` accepts
    uses_histogram: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        # a subclass with a name registers itself: from_str, compute_range and the program
        # format's allow-list (core.formats.program_io) find it with no other change
        super().__init_subclass__(**kwargs)
        if not cls.name:
            return
        for key in (cls.name, *cls.aliases):
            other = _CALIBRATION_METHODS.get(key)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"calibration method name {key!r} is taken by {other.__name__}")
            _CALIBRATION_METHODS[key] = cls

    @staticmethod
    def registered() -> tuple[type[CalibrationMethod], ...]:
        """Every calibration method class, in registration order."""
        return tuple(dict.fromkeys(_CALIBRATION_METHODS.values()))

    def range(self, observer, bits: int, asymmetric: bool) -> tuple[float, float]:
        """The (lo, hi) this method gives ``observer``'s tensor (a
        :class:`core.quantization.calibration.TensorObserver`: ``min``, ``max``, ``abs_max``,
        ``batch_mins``, ``batch_maxs``, the histogram ...) before ``compute_range`` applies the
        scheme (zero inside, symmetric, clamped to the observed values). A new method overrides
        this; the built-in methods' rules are in core/quantization/calibration.py (``_METHODS``),
        next to the histogram arithmetic they share."""
        raise QuantizationConfigError(
            f"{type(self).__name__} has no range rule: a calibration method overrides CalibrationMethod.range")

    def __post_init__(self) -> None:
        if type(self) is CalibrationMethod:
            raise QuantizationConfigError(
                "CalibrationMethod is abstract: use MinMaxMethod(), MovingAverageMinMaxMethod(), "
                "HistogramMSEMethod(), HistogramEntropyMethod(), HistogramPercentileMethod() "
                "or CalibrationMethod.from_str(name)"
            )

    @staticmethod
    def from_str(name: str) -> CalibrationMethod:
        """'min_max' (or 'minmax'), 'moving_average', 'mse', 'entropy', 'percentile';
        case-insensitive, '-' and ' ' read as '_', 'histogram_' prefix allowed."""
        if not isinstance(name, str):
            raise QuantizationConfigError(f"calibration method name must be a str, got {name!r}")
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        if key in _CALIBRATION_METHODS:
            return _CALIBRATION_METHODS[key]()
        valid = ", ".join(repr(c.name) for c in CalibrationMethod.registered())
        close = difflib.get_close_matches(key, list(_CALIBRATION_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QuantizationConfigError(
            f"unknown calibration method name {name!r}: valid names are {valid}{hint}"
        )


@dataclass(frozen=True)
class MinMaxMethod(CalibrationMethod):
    """Range = [min, max] over all calibration samples."""

    name: ClassVar[str] = "min_max"
    aliases: ClassVar[tuple[str, ...]] = ("minmax",)


@dataclass(frozen=True)
class MovingAverageMinMaxMethod(CalibrationMethod):
    """Range = exponential moving average of each sample's min and max:
    ``r <- r + averaging_constant * (sample_r - r)``."""

    averaging_constant: float = 0.01
    name: ClassVar[str] = "moving_average"
    aliases: ClassVar[tuple[str, ...]] = ("moving_average_min_max", "movingaverage")

    def __post_init__(self) -> None:
        c = _check_real(self.averaging_constant, "averaging_constant")
        if not 0.0 < c <= 1.0:
            raise QuantizationConfigError(f"averaging_constant must be in (0, 1], got {c!r}")
        _set(self, "averaging_constant", c)


@dataclass(frozen=True)
class HistogramMSEMethod(CalibrationMethod):
    """Range minimising the mean squared quantization error over a histogram."""

    num_bins: int = 2048
    name: ClassVar[str] = "mse"
    aliases: ClassVar[tuple[str, ...]] = ("histogram_mse",)
    uses_histogram: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _set(self, "num_bins", _check_num_bins(self.num_bins))


@dataclass(frozen=True)
class HistogramEntropyMethod(CalibrationMethod):
    """Range minimising the KL divergence between the float and quantized histograms."""

    num_bins: int = 2048
    name: ClassVar[str] = "entropy"
    aliases: ClassVar[tuple[str, ...]] = ("histogram_entropy",)
    uses_histogram: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _set(self, "num_bins", _check_num_bins(self.num_bins))


@dataclass(frozen=True)
class HistogramPercentileMethod(CalibrationMethod):
    """Range covering ``percentile`` percent of the observed values' histogram."""

    percentile: float = 99.999
    num_bins: int = 2048
    name: ClassVar[str] = "percentile"
    aliases: ClassVar[tuple[str, ...]] = ("histogram_percentile",)
    uses_histogram: ClassVar[bool] = True

    def __post_init__(self) -> None:
        p = _check_real(self.percentile, "percentile")
        if not 0.0 < p <= 100.0:
            raise QuantizationConfigError(f"percentile must be in (0, 100], got {p!r}")
        _set(self, "percentile", p)
        _set(self, "num_bins", _check_num_bins(self.num_bins))




# --------------------------------------------------------------------------- custom configs

class _FrozenMapping(Mapping):
    """A read-only, hashable, picklable dict (frozen dataclasses must stay hashable)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)

    def __getstate__(self) -> dict:
        return self._data

    def __setstate__(self, state: dict) -> None:
        self._data = state


def _check_precision(value: Any, where: str) -> QuantizationPrecision:
    if isinstance(value, QuantizationPrecision):
        return value
    raise QuantizationConfigError(
        f"{where}: 'quantization_precision' must be QuantizationPrecision.INT_8 or "
        f"QuantizationPrecision.INT_16, got {value!r}"
    )


def _check_output_int32(value: Any, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise QuantizationConfigError(f"{where}: 'output_int32' must be a bool, got {value!r}")


# Field name -> validator(value, where) returning the normalised value.
CUSTOM_CONFIG_FIELDS = {
    "quantization_precision": _check_precision,
    "output_int32": _check_output_int32,
}


def _normalise_custom_configs(configs: Any) -> _FrozenMapping | None:
    if configs is None:
        return None
    if not isinstance(configs, Mapping):
        raise QuantizationConfigError(
            "custom_quantization_configs must be a dict {node_name: {field: value}}, "
            f"got {type(configs).__name__}"
        )
    out: dict[str, _FrozenMapping] = {}
    for node, cfg in configs.items():
        if not isinstance(node, str) or not node:
            raise QuantizationConfigError(
                f"custom_quantization_configs: node names must be non-empty strings, got {node!r}"
            )
        where = f"custom_quantization_configs[{node!r}]"
        if not isinstance(cfg, Mapping):
            raise QuantizationConfigError(
                f"{where} must be a dict {{field: value}}, got {type(cfg).__name__}"
            )
        fields: dict[str, Any] = {}
        for key, value in cfg.items():
            if key not in CUSTOM_CONFIG_FIELDS:
                close = difflib.get_close_matches(str(key), list(CUSTOM_CONFIG_FIELDS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise QuantizationConfigError(
                    f"{where}: unknown field {key!r}; known fields are "
                    f"{', '.join(repr(k) for k in CUSTOM_CONFIG_FIELDS)}{hint}"
                )
            fields[key] = CUSTOM_CONFIG_FIELDS[key](value, where)
        out[node] = _FrozenMapping(fields)
    return _FrozenMapping(out) if out else None


# --------------------------------------------------------------------------- params

@dataclass(frozen=True)
class QuantizationParams:
    """The whole quantization configuration passed to ``LoadedNet.quantize``.

    Validated on construction, so ``dataclasses.replace(params, field=value)`` validates
    too. Calling an instance returns it (the specification writes both
    ``default_quantization`` and ``default_quantization()``).
    """

    weight_quantization_scheme: QuantizationScheme = QuantizationScheme(False, True, 8)
    activation_quantization_scheme: QuantizationScheme = QuantizationScheme(True, False, 8)
    calibration_method: CalibrationMethod = HistogramMSEMethod()
    requantization_mode: RequantizationMode = RequantizationMode.sima
    channel_equalization: bool = False
    bias_correction: bool = False
    custom_quantization_configs: Mapping[str, Mapping[str, Any]] | None = field(default=None)
    adaround: AdaRoundMethod | None = None
    output_aware_ranges: RangeSearchMethod | None = None

    def __post_init__(self) -> None:
        w = self.weight_quantization_scheme
        if not isinstance(w, QuantizationScheme):
            raise QuantizationConfigError(
                "weight_quantization_scheme must be a QuantizationScheme (use quantization_scheme()), "
                f"got {w!r}"
            )
        if w.asymmetric:
            raise QuantizationConfigError(
                "weight_quantization_scheme: weights support symmetric quantization only "
                f"(asymmetric=False), got {w!r}"
            )
        a = self.activation_quantization_scheme
        if not isinstance(a, QuantizationScheme):
            raise QuantizationConfigError(
                "activation_quantization_scheme must be a QuantizationScheme (use quantization_scheme()), "
                f"got {a!r}"
            )
        if a.per_channel:
            raise QuantizationConfigError(
                "activation_quantization_scheme: activations support per-tensor quantization only "
                f"(per_channel=False), got {a!r}"
            )
        if a.bits == 4:
            raise QuantizationConfigError(
                f"activation_quantization_scheme: activations are 8 or 16 bits (4 is for weights), got {a!r}")
        _set(self, "adaround", _method_or_none(self.adaround, AdaRoundMethod, "adaround"))
        _set(self, "output_aware_ranges", _method_or_none(self.output_aware_ranges, RangeSearchMethod,
                                                         "output_aware_ranges"))
        if w.bits == 4 and self.adaround is None:
            raise QuantizationConfigError(
                "weight_quantization_scheme: 4-bit weights need learned rounding (with_adaround(True)); "
                "round-to-nearest 4-bit weights are not offered")
        if not isinstance(self.calibration_method, CalibrationMethod):
            raise QuantizationConfigError(
                "calibration_method must be a CalibrationMethod such as HistogramMSEMethod() "
                f"(or CalibrationMethod.from_str(name)), got {self.calibration_method!r}"
            )
        _set(self, "requantization_mode",
             enum_from(RequantizationMode, self.requantization_mode, "requantization_mode"))
        _set(self, "channel_equalization", _check_bool(self.channel_equalization, "channel_equalization"))
        _set(self, "bias_correction", _check_bool(self.bias_correction, "bias_correction"))
        _set(self, "custom_quantization_configs",
             _normalise_custom_configs(self.custom_quantization_configs))

    def __call__(self) -> QuantizationParams:
        return self

    # ---- builders (each returns a new, validated QuantizationParams)

    def with_activation_quantization(self, scheme: QuantizationScheme) -> QuantizationParams:
        return dataclasses.replace(self, activation_quantization_scheme=scheme)

    def with_weight_quantization(self, scheme: QuantizationScheme) -> QuantizationParams:
        return dataclasses.replace(self, weight_quantization_scheme=scheme)

    def with_calibration(self, method: CalibrationMethod) -> QuantizationParams:
        return dataclasses.replace(self, calibration_method=method)

    def with_requantization_mode(self, mode: RequantizationMode) -> QuantizationParams:
        return dataclasses.replace(self, requantization_mode=mode)

    def with_bias_correction(self, enable: bool = True) -> QuantizationParams:
        return dataclasses.replace(self, bias_correction=enable)

    def with_channel_equalization(self, enable: bool = True) -> QuantizationParams:
        return dataclasses.replace(self, channel_equalization=enable)

    def with_adaround(self, method: bool | AdaRoundMethod = True) -> QuantizationParams:
        """Learned weight rounding: ``True`` (``AdaRoundMethod()``), an ``AdaRoundMethod``, or
        ``False`` (round to nearest)."""
        return dataclasses.replace(self, adaround=method)

    def with_output_aware_ranges(self, method: bool | RangeSearchMethod = True) -> QuantizationParams:
        """Output-aware activation ranges (:mod:`core.quantization.range_search`): ``True``
        (``RangeSearchMethod()``), a ``RangeSearchMethod``, or ``False`` (the calibrated ranges)."""
        return dataclasses.replace(self, output_aware_ranges=method)

    def with_custom_quantization_configs(
        self, custom_quantization_configs: Mapping[str, Mapping[str, Any]] | None
    ) -> QuantizationParams:
        """Set (replace, not merge) the per-node overrides ``{node: {field: value}}``.

        Fields: ``quantization_precision`` (QuantizationPrecision) and ``output_int32`` (bool).
        Node names are checked against the model at quantize time
        (:func:`check_custom_config_nodes`).
        """
        return dataclasses.replace(self, custom_quantization_configs=custom_quantization_configs)

    # ---- per-node queries for the quantizer

    def custom_config_for(self, node_name: str) -> Mapping[str, Any]:
        configs = self.custom_quantization_configs or {}
        return configs.get(node_name, _FrozenMapping({}))

    def precision_for(self, node_name: str) -> QuantizationPrecision:
        """The node's activation precision: its custom override, else the activation scheme's."""
        override = self.custom_config_for(node_name).get("quantization_precision")
        return override if override is not None else self.activation_quantization_scheme.precision

    def output_int32_for(self, node_name: str) -> bool:
        return bool(self.custom_config_for(node_name).get("output_int32", False))


def check_custom_config_nodes(params: QuantizationParams, node_names: Iterable[str]) -> None:
    """Raise QuantizationConfigError if a custom config names a node the model lacks.

    The message names every unknown node, with the closest existing names as suggestions.
    """
    if not isinstance(params, QuantizationParams):
        raise QuantizationConfigError(f"params must be QuantizationParams, got {type(params).__name__}")
    configs = params.custom_quantization_configs
    if not configs:
        return
    known = list(node_names)
    known_set = set(known)
    problems = []
    for node in configs:
        if node in known_set:
            continue
        close = difflib.get_close_matches(node, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        problems.append(f"{node!r}{hint}")
    if problems:
        raise QuantizationConfigError(
            "custom_quantization_configs names node(s) not in the model: " + "; ".join(problems)
        )


# --------------------------------------------------------------------------- presets

default_quantization = QuantizationParams(
    weight_quantization_scheme=quantization_scheme(asymmetric=False, per_channel=True, bits=8),
    activation_quantization_scheme=quantization_scheme(asymmetric=True, per_channel=False, bits=8),
    calibration_method=HistogramMSEMethod(),
    requantization_mode=RequantizationMode.sima,
    channel_equalization=False,
    bias_correction=False,
    custom_quantization_configs=None,
)

int16_quantization = dataclasses.replace(
    default_quantization,
    weight_quantization_scheme=quantization_scheme(asymmetric=False, per_channel=True, bits=16),
    activation_quantization_scheme=quantization_scheme(asymmetric=False, per_channel=False, bits=16),
)
