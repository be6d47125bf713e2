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


class DevkitError(MixqError):
    """Talking to a devkit (a remote board reached over SSH) failed. Messages name the host and
    port and never contain a password or key passphrase."""


class DevkitConnectionError(DevkitError):
    """The devkit cannot be reached (refused, unreachable, timed out, SSH handshake failed) or the
    connection was lost; the message names ``host:port``."""


class DevkitAuthenticationError(DevkitError):
    """The devkit refused the credentials (wrong password, key not authorized, unreadable key or
    wrong key passphrase)."""


class DevkitHostKeyError(DevkitError):
    """The devkit's SSH host key is not in known_hosts (and unknown hosts were not explicitly
    accepted) or does not match the known key."""


class DevkitCommandError(DevkitError):
    """A command on the devkit exited non-zero, was not found (exit code 127) or was killed.
    ``exit_code`` is its exit status (-1 when it died without one) and ``stderr_tail`` the last
    characters of its standard error, also quoted in the message."""

    def __init__(self, message: str, *, exit_code: int, stderr_tail: str = "", command: str = ""):
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.command = command
        super().__init__(message)

    def __reduce__(self):  # picklable despite the keyword-only arguments
        return (_rebuild_devkit_command_error,
                (str(self), self.exit_code, self.stderr_tail, self.command))


class DevkitTimeoutError(DevkitError):
    """A command on the devkit ran past its time limit; it was killed."""


class DevkitTransferError(DevkitError):
    """A file could not be copied to or from the devkit intact: the checksum still differed, or the
    connection kept dropping, after every retry."""


class DevkitDiskFullError(DevkitError):
    """The devkit has no space left (ENOSPC or quota) for a file being written there."""


def _rebuild_devkit_command_error(message, exit_code, stderr_tail, command):
    return DevkitCommandError(message, exit_code=exit_code, stderr_tail=stderr_tail, command=command)


class AccuracyTargetError(MixqError):
    """An accuracy-feedback search could not reach its target; ``best_accuracy`` says how close it got."""

    def __init__(self, message: str, best_accuracy: float = float("nan")):
        super().__init__(message)
        self.best_accuracy = best_accuracy


class QuantizationCollapseWarning(UserWarning):
    """A quantized node's output collapsed: its local SQNR (fed the float model's inputs) is far
    below its neighbours' or an absolute floor, or its output became constant. Raised as a
    warning by ``LoadedNet.quantize`` (on the first calibration sample) naming the node; the same
    check is ``LayerErrorReport.collapses`` of ``analyze_quantization_error``."""
