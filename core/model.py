"""``Model``: a quantized model (the result of ``LoadedNet.quantize``) that runs bit-accurately."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import numpy as np

from core.errors import InputError, ModelFileError
from core.ir.graph import Graph
from core.loaded_net import check_graph_inputs
from core.quantization.quantizer import QuantizedProgram

log = logging.getLogger("mixq")


class Model:
    """A quantized model: ``name``, the integer ``program`` and the float graph it came from."""

    def __init__(self, name: str, program: QuantizedProgram, float_graph: Graph):
        self.name = name
        self.program = program
        self.float_graph = float_graph

    @property
    def input_names(self) -> list[str]:
        return list(self.program.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.program.graph.outputs)

    def execute(self, inputs: Mapping[str, Any], fast_mode: bool = False) -> list[np.ndarray]:
        """Run the quantized model on one set of inputs (any batch size); float32 outputs in
        graph-output order. Exact integer arithmetic unless ``fast_mode`` (see
        :mod:`core.runtime.integer_interpreter` for its tolerance)."""
        from core.runtime.integer_interpreter import run_program

        feeds = check_graph_inputs(self.program.graph, inputs)
        for name, value in feeds.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                bad = int((~np.isfinite(value)).sum())
                raise InputError(f"input {name!r} holds {bad} NaN/Inf value(s) of {value.size}: the quantized "
                                 f"model needs finite inputs")
        env = run_program(self.program, feeds, fast_mode=bool(fast_mode))
        return [env[o] for o in self.program.graph.outputs]

    def analyze_quantization_error(self, evaluation_data, error_metric: str = "mae", *, local_feed: bool = True,
                                   log_level: Optional[int] = logging.NOTSET, batch_size: int = 8,
                                   progress: bool = False):
        """Per-layer quantization statistics (the specification's API; see
        :mod:`core.analysis.layer_error`): ``error_metric`` 'mae', 'mse', 'psnr', 'sqnr' or
        'cosine'; ``local_feed=True`` feeds each node the float model's inputs (the error it adds),
        ``False`` runs both models end to end (the error accumulated up to each node). The values
        go into ``.sima.json`` as each layer's ``"Layer Statistics"`` on the next :meth:`save`, and
        into the ``.sima``. Works on loaded models too. Returns a
        :class:`~core.analysis.LayerErrorReport` (``table()``, ``ranking()``, ``plot(path)``)."""
        from core.analysis import analyze_quantization_error

        if log_level:
            log.setLevel(log_level)
        report = analyze_quantization_error(self, evaluation_data, error_metric, local_feed=local_feed,
                                            batch_size=batch_size, progress=progress)
        log.info("per-layer %s (%s feed) on %d samples:\n%s", report.metric,
                 "local" if local_feed else "cumulative", report.num_samples, report.table())
        return report

    def export_onnx(self, path: str) -> str:
        """Write the model as a QDQ ONNX file (QuantizeLinear/DequantizeLinear around every integer
        tensor, quantized weights) that onnxruntime and other ONNX runtimes execute; see
        :mod:`core.formats.onnx_export`. Returns the path."""
        from core.formats.onnx_export import export_qdq_onnx

        return export_qdq_onnx(self, path)

    # ---- saving and loading (docs/saved_models.md)

    @staticmethod
    def _file_names(model_name: Any, directory: Any, what: str) -> tuple[str, str]:
        """``(<directory>/<model_name>.sima, <that>.json)``; ``.sima`` is appended unless
        ``model_name`` already ends with it; the directory defaults to the current one."""
        if not isinstance(model_name, (str, os.PathLike)) or not os.fspath(model_name):
            raise ModelFileError(f"{what}: model_name must be a non-empty string, got {model_name!r}")
        if directory is None:
            directory = ""
        if not isinstance(directory, (str, os.PathLike)):
            raise ModelFileError(f"{what}: the directory must be a string, got {directory!r}")
        name = os.fspath(model_name)
        sima_name = name if name.endswith(".sima") else name + ".sima"
        sima_path = os.path.join(os.fspath(directory) or os.getcwd(), sima_name)
        return sima_path, sima_path + ".json"

    def save(self, model_name: str, output_directory: str = "", *,
             log_level: Optional[int] = logging.NOTSET) -> None:
        """Save the model as ``<output_directory>/<model_name>.sima`` (the program: arrays and a
        versioned JSON document, checksummed) and ``<...>.sima.json`` (Netron-viewable view).
        ``.sima`` is appended unless ``model_name`` ends with it; ``output_directory`` defaults to
        the current directory and is created if missing. Each file is written atomically (the
        ``.sima`` first): a failed save leaves existing files as they were. Raises
        :class:`~core.errors.ModelFileError`."""
        from core.formats.program_io import save_program

        if log_level:
            log.setLevel(log_level)
        sima_path, json_path = self._file_names(model_name, output_directory, "cannot save model")
        directory = os.path.dirname(sima_path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ModelFileError(f"cannot create the output directory {directory!r}: {e}") from e
        saved_name = os.path.basename(sima_path)[: -len(".sima")] or self.name
        save_program(sima_path, json_path, saved_name, self.program)
        log.info("saved %s to %s and %s", saved_name, sima_path, json_path)

    @classmethod
    def load(cls, model_name: str, network_directory: str = "", *,
             log_level: Optional[int] = logging.NOTSET) -> "Model":
        """Load a model saved by :meth:`save` from ``<network_directory>/<model_name>.sima``
        (``.sima`` appended unless present; directory defaults to the current one). Only the
        ``.sima`` is read. Raises :class:`~core.errors.ModelFileError` naming the file when it is
        missing, truncated, corrupt, of a newer format or inconsistent."""
        from core.formats.program_io import load_program

        if log_level:
            log.setLevel(log_level)
        sima_path, _ = cls._file_names(model_name, network_directory, "cannot load model")
        if not os.path.isfile(sima_path):
            raise ModelFileError(f"cannot load model: no saved model file {sima_path!r}")
        name, program = load_program(sima_path)
        log.info("loaded %s from %s: %r", name, sima_path, program)
        # The program's graph and the float graph are copies sharing the constant arrays.
        return cls(name, program, program.graph.copy())

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.program!r})"
