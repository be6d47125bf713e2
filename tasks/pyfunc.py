"""An MLflow pyfunc flavor for mixq models: loads the ``.sima`` artifact and runs ``Model.execute``.

``mlflow.pyfunc.load_model("models:/mixq-mnist_cnn@champion").predict(x)`` takes a float array
(the model's single input, batch first), a ``{input name: array}`` dict, or a pandas DataFrame
whose columns are the flattened input; it returns the output array (a ``{output name: array}``
dict for models with several outputs). ``params={"fast_mode": True}`` selects the fast path.
"""
from __future__ import annotations

import os

import mlflow.pyfunc
import numpy as np

__all__ = ["SimaPyfunc", "requirements"]


def requirements() -> list[str]:
    """Pinned requirements of the logged model (given explicitly: no inference pass)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mixq", "numpy", "onnx", "mlflow"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


class SimaPyfunc(mlflow.pyfunc.PythonModel):
    """Runs a saved mixq model (the ``sima`` artifact) bit-accurately."""

    def load_context(self, context) -> None:
        from core import Model

        path = context.artifacts["sima"]
        directory, name = os.path.split(path)
        self._model = Model.load(name, directory)

    def predict(self, context, model_input, params=None):  # noqa: D401
        model = self._model
        names = model.input_names
        if isinstance(model_input, dict):
            feeds = {k: np.asarray(v) for k, v in model_input.items()}
        else:
            if hasattr(model_input, "to_numpy"):           # a pandas DataFrame: one row per sample
                arr = model_input.to_numpy()
            else:
                arr = np.asarray(model_input)
            if len(names) != 1:
                raise ValueError(f"the model has inputs {names}: pass a dict {{name: array}}")
            feeds = {names[0]: arr}
        program_inputs = model.program.graph.tensors
        for k, v in list(feeds.items()):
            info = program_inputs.get(k)
            if info is not None and v.ndim == 2 and len(info.shape) > 2:   # flattened rows (DataFrame)
                feeds[k] = v.reshape((len(v),) + tuple(info.shape[1:]))
            if v.dtype == np.float64:
                feeds[k] = feeds[k].astype(np.float32)
        fast = bool((params or {}).get("fast_mode", False))
        outputs = model.execute(feeds, fast_mode=fast)
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(model.output_names, outputs))

