"""``Model``: a quantized model (the result of ``LoadedNet.quantize``) that runs bit-accurately."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.errors import InputError, ModelFileError
from core.inputs import InputSignature
from core.ir.graph import Graph
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

        feeds = InputSignature.of(self.program.graph).check(inputs, finite=True)
        env = run_program(self.program, feeds, fast_mode=bool(fast_mode))
        return [env[o] for o in self.program.graph.outputs]

    def analyze_quantization_error(self, evaluation_data, error_metric: str = "mae", *, local_feed: bool = True,
                                   log_level: int | None = logging.NOTSET, batch_size: int = 8,
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

    def export_onnx(self, path: str, form: str = "qdq") -> str:
        """Write the model as an ONNX file that onnxruntime and other ONNX runtimes execute; returns
        the path. ``form="qdq"``: QuantizeLinear/DequantizeLinear around every integer tensor and
        quantized weights, float ops in between (the format TensorRT and onnxruntime's quantizer
        use; each runtime requantizes its own way, so outputs can differ by LSBs).
        ``form="integer"``: ConvInteger/MatMulInteger and integer requantization, bit-exact with
        ``execute(fast_mode=False)``. See :mod:`core.formats.onnx_export`."""
        from core.formats.onnx_export import export_onnx

        return export_onnx(self, path, form)

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
             log_level: int | None = logging.NOTSET) -> None:
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
             log_level: int | None = logging.NOTSET) -> Model:
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

    # ---- accelerator mode (docs/accelerator.md)

    def compile(self, output_directory: str = "", batch_size: int = 1, compress: Any = True, target: Any = None, *,
                log_level: int | None = logging.NOTSET):
        """Compile the model to ``<output_directory>/<name>.lm`` (directory: the current one by
        default, created if missing) for the devkit runtime: the integer program, its memory plan
        for ``target`` (a :class:`core.devkit.planner.Target`; documented defaults when None) at
        ``batch_size``, and metadata; constant data compressed unless ``compress`` is False
        (``'lzma'`` picks lzma over zlib). Returns a :class:`core.devkit.planner.CompileReport`
        (``str(report)``: the per-layer plan, totals, compile time, ``.lm`` size and compression
        ratio). Raises :class:`~core.errors.ModelFileError`."""
        from core.devkit.lm import write_lm

        if log_level:
            log.setLevel(log_level)
        if output_directory is None:
            output_directory = ""
        if not isinstance(output_directory, (str, os.PathLike)):
            raise ModelFileError(f"cannot compile: output_directory must be a string, got {output_directory!r}")
        directory = os.fspath(output_directory) or os.getcwd()
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise ModelFileError(f"cannot create the output directory {directory!r}: {e}") from e
        report = write_lm(os.path.join(directory, f"{self.name}.lm"), self.program, self.name,
                          batch_size=batch_size, compress=compress, target=target)
        log.info("%s", report)
        return report

    def execute_in_accelerator_mode(self, input_data: Any, devkit: str, *, username: str, password: str = "",
                                    batch_size: int = 1, compress: Any = True, port: int = 22,
                                    key_filename: str | None = None, timeout: float = 600,
                                    accept_unknown_host: bool = False, known_hosts: str | None = None,
                                    remote_python: str = "python3", remote_root: str = "/tmp",
                                    remote_env: Mapping[str, str] | None = None, retry: Any = None,
                                    target: Any = None, tessellate_parameters: Any = None,
                                    l2_caching_mode: Any = None,
                                    log_level: int | None = logging.NOTSET) -> list[list[np.ndarray]]:
        """Run the model on a devkit over SSH (the specification's accelerator mode): compile to
        a ``.lm`` (``batch_size``, ``compress``, ``target``) in a local temporary directory,
        connect to ``devkit:port`` (host key checked against ``known_hosts``, default
        ``~/.ssh/known_hosts``; ``accept_unknown_host=True`` to trust a new one), upload the
        ``.lm`` and the inputs (``.npz``) into a fresh ``<remote_root>/mixq-<uuid>`` directory,
        run ``<remote_python> -m core.devkit run`` there (``remote_env``: extra environment, e.g.
        ``{"PYTHONPATH": "/opt/mixq"}`` where mixq's ``core`` package was copied) with a limit of
        ``timeout`` seconds, download the outputs and remove the remote directory.

        ``input_data``: one ``{input name: array}`` dict or an iterable of them (samples of equal
        shapes). Returns one list of float32 arrays (graph-output order) per sample, bit-identical
        to ``execute(sample, fast_mode=False)``. Passwords are never logged. ``retry``: a
        :class:`core.devkit.transport.RetryPolicy` for transfers. ``tessellate_parameters`` and
        ``l2_caching_mode`` are reserved (the specification's; must stay None). Faults raise the
        :class:`~core.errors.DevkitError` types (connection, authentication, host key, command
        with the runtime's stderr tail, timeout, transfer, disk full); nothing is left behind."""
        import shlex
        import tempfile
        from collections.abc import Mapping as _Mapping

        from core.devkit.transport import DevkitSession

        if log_level:
            log.setLevel(log_level)
        if tessellate_parameters is not None or l2_caching_mode is not None:
            raise InputError("tessellate_parameters and l2_caching_mode are reserved: leave them None")
        if isinstance(input_data, _Mapping):
            samples = [input_data]
        else:
            try:
                samples = list(input_data)
            except TypeError:
                raise InputError(f"input_data must be an input dict or an iterable of them, got "
                                 f"{type(input_data).__name__}") from None
        if not samples:
            raise InputError("input_data holds no samples")
        feeds = []
        signature = InputSignature.of(self.program.graph)
        for i, sample in enumerate(samples):
            feed = signature.check(sample, sample=f"sample {i}", finite=True)
            if feeds and any(feed[k].shape != feeds[0][k].shape for k in feed):
                raise InputError(f"sample {i} has shapes {[feed[k].shape for k in feed]}, sample 0 "
                                 f"{[feeds[0][k].shape for k in feed]}: all samples need the same shapes")
            feeds.append(feed)

        with tempfile.TemporaryDirectory(prefix="mixq-accel-") as tmp:
            report = self.compile(tmp, batch_size=batch_size, compress=compress, target=target)
            lm_path = report.path
            inputs_path = os.path.join(tmp, "inputs.npz")
            np.savez(inputs_path, **{k: np.stack([f[k] for f in feeds]) for k in self.program.graph.inputs})
            outputs_path = os.path.join(tmp, "outputs.npz")
            timing_path = os.path.join(tmp, "timing.json")
            log.info("accelerator mode: %d sample(s) of %s on %s@%s:%s", len(feeds), self.name, username, devkit, port)
            session = DevkitSession(devkit, port, username=username, password=password or None,
                                    key_filename=key_filename, timeout=min(float(timeout), 30.0),
                                    known_hosts=known_hosts, accept_unknown_host=accept_unknown_host,
                                    retry=retry, remote_root=remote_root)
            with session as dk:
                work = dk.create_workdir()
                dk.upload(lm_path, f"{work}/model.lm")
                dk.upload(inputs_path, f"{work}/inputs.npz")
                command = (f"{shlex.quote(remote_python)} -m core.devkit run model.lm inputs.npz outputs.npz "
                           f"--timing timing.json")
                dk.run(command, timeout=float(timeout), cwd=work, env=dict(remote_env) if remote_env else None)
                dk.download(f"{work}/outputs.npz", outputs_path)
                dk.download(f"{work}/timing.json", timing_path)
            try:
                with np.load(outputs_path, allow_pickle=False) as z:
                    arrays = [z[f"output_{k}"] for k in range(len(self.output_names))]
            except (OSError, ValueError, KeyError) as e:
                from core.errors import DevkitError

                raise DevkitError(f"the devkit {devkit}:{port} returned unreadable outputs: {e}") from None
        for k, a in enumerate(arrays):
            if a.shape[0] != len(feeds):
                from core.errors import DevkitError

                raise DevkitError(f"the devkit {devkit}:{port} returned {a.shape[0]} samples of output {k}, "
                                  f"expected {len(feeds)}")
        return [[np.asarray(a[i]) for a in arrays] for i in range(len(feeds))]

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {self.program!r})"
