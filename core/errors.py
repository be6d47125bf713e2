"""mixq's exception types.

Every error raised on bad user input is one of these, and its message names the
file, node, op or parameter at fault.
"""
from __future__ import annotations


class MixqError(Exception):
    """Base class of every error mixq raises on purpose."""


class ModelLoadError(MixqError):
    """A model file cannot be read or is not a valid model (missing, truncated, wrong format)."""


class UnsupportedOperatorError(ModelLoadError):
    """The model uses an operator (or an operator variant) mixq does not implement."""

    def __init__(self, op_type: str, node_name: str, detail: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        msg = f"unsupported operator {op_type!r} at node {node_name!r}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class ShapeInferenceError(ModelLoadError):
    """Shapes or dtypes of a node's inputs do not fit its operator."""


class InputError(MixqError, ValueError):
    """Inputs given to execute/calibrate do not match the model (names, dtype, shape, values)."""


class ExecutionError(MixqError):
    """A kernel failed while executing a node; the message names the node and op."""


class ZooError(MixqError):
    """A zoo model or data set cannot be built (missing package, unreadable file)."""


class CheckpointError(ZooError):
    """A PyTorch checkpoint is malformed or asks to load something other than tensors."""


class QuantizationConfigError(MixqError, ValueError):
    """A quantization configuration (scheme, calibration method, custom per-node config,
    requantization parameter) is invalid; the message names the field or node at fault."""


class CalibrationError(MixqError):
    """Calibration cannot run or its statistics are unusable (no data, unreadable statistics file, unknown tensor)."""


class ModelFileError(MixqError):
    """A saved quantized-model file (.sima / .sima.json) cannot be written or read: missing,
    truncated, corrupt, of a newer format version, or declaring content mixq refuses to load;
    the message names the file and what is wrong."""
