"""Real data for the zoo's models, from installed packages and Debian's opencv-doc; nothing is downloaded.

Every loader returns an ``ImageSet``: float32 inputs already preprocessed for its model (NCHW unless
said), integer labels where the data has them, and one source name per row.

* ``imagenet_samples()`` — foolbox's 20 labelled ImageNet images (MobileNetV2 preprocessing).
* ``natural_images(split, count)`` — 224x224 crops of natural photos (scikit-image, scikit-learn,
  opencv-doc), split by source photo into disjoint "calibration" and "evaluation" sets.
* ``digits(split=None)`` — OpenCV's digits.png, 5000 handwritten digits as MNIST inputs.
* ``foolbox_mnist()``, ``foolbox_cifar10()`` — foolbox's 20 MNIST / CIFAR-10 samples.

Pillow is imported inside the functions (``import core`` must stay light).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import os
import pathlib
import re
from dataclasses import dataclass

import numpy as np

from core.errors import ZooError

__all__ = [
    "ImageSet", "PhotoFile", "SPLITS", "digits", "foolbox_cifar10", "foolbox_mnist", "imagenet_preprocess",
    "imagenet_samples", "natural_images", "natural_photo_files", "opencv_data_dir",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLITS = ("calibration", "evaluation")
_CALIBRATION_SHARE = 0.4  # of the photo groups; evaluation gets the rest
_MAX_CROPS_PER_PHOTO = 32

_OPENCV_DATA_SUFFIX = "usr/share/doc/opencv-doc/examples/data"
_FOOLBOX_INSTALL = "pip install --no-deps foolbox==3.3.4"

# Natural photos only (no logos, renders, text, masks, synthetic shapes). Photos of one scene
# (stereo pairs, two frames) share a group, and a group never straddles the two splits.
_SKIMAGE_PHOTOS = {
    "astronaut.png": None, "brick.png": None, "camera.png": None, "chelsea.png": None,
    "clock_motion.png": None, "coffee.png": None, "coins.png": None, "grass.png": None, "gravel.png": None,
    "hubble_deep_field.jpg": None, "moon.png": None, "motorcycle_left.png": "motorcycle",
    "motorcycle_right.png": "motorcycle", "retina.jpg": None, "rocket.jpg": None,
}
_SKLEARN_PHOTOS = {"china.jpg": None, "flower.jpg": None}
_OPENCV_PHOTOS = {
    "aero1.jpg": "aero", "aero3.jpg": "aero", "aloeL.jpg": "aloe", "aloeR.jpg": "aloe", "apple.jpg": None,
    "baboon.jpg": None, "basketball1.png": "basketball", "basketball2.png": "basketball", "board.jpg": None,
    "box.png": "box", "box_in_scene.png": "box", "building.jpg": None, "butterfly.jpg": None,
    "chicky_512.png": None, "ela_modified.jpg": "ela", "ela_original.jpg": "ela", "fruits.jpg": None,
    "graf1.png": "graf", "graf3.png": "graf", "home.jpg": None, "left.jpg": "stereo-books",
    "right.jpg": "stereo-books", "leuvenA.jpg": "leuven", "leuvenB.jpg": "leuven",
    "licenseplate_motion.jpg": None, "messi5.jpg": None, "orange.jpg": None,
    "rubberwhale1.png": "rubberwhale", "rubberwhale2.png": "rubberwhale", "smarties.png": None,
    "squirrel_cls.jpg": None, "starry_night.jpg": None, "stuff.jpg": None, "sudoku.png": None,
}


@dataclass(frozen=True)
class ImageSet:
    """Preprocessed model inputs, one row per image, with labels (or None) and where each row came from."""

    inputs: np.ndarray
    labels: np.ndarray | None
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class PhotoFile:
    source: str          # "skimage", "sklearn" or "opencv-doc"
    name: str            # file name, without a Debian ".gz"
    path: pathlib.Path
    group: str           # photos of one scene share it; the split is decided per group
    split: str           # "calibration" or "evaluation"


# ---------------------------------------------------------------- locating files

def _package_dir(module: str, install: str) -> pathlib.Path:
    spec = importlib.util.find_spec(module)  # locates without importing (foolbox's import needs eagerpy)
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"the {module!r} package is not installed: {install}")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def opencv_data_dir(required: bool = True) -> pathlib.Path | None:
    """opencv-doc's examples/data: $MIXQ_OPENCV_DATA, <repo>/.cache/opencv-doc/..., /usr/share/doc/...

    Returns None (or, if ``required``, raises ZooError saying how to get it) when none holds data.
    """
    repo = pathlib.Path(__file__).resolve().parents[2]
    candidates = []
    if os.environ.get("MIXQ_OPENCV_DATA"):
        candidates.append(pathlib.Path(os.environ["MIXQ_OPENCV_DATA"]))
    candidates += [repo / ".cache" / "opencv-doc" / _OPENCV_DATA_SUFFIX, pathlib.Path("/") / _OPENCV_DATA_SUFFIX]
    for directory in candidates:
        if (directory / "digits.png").is_file() or (directory / "digits.png.gz").is_file():
            return directory
    if required:
        raise ZooError(
            "OpenCV sample data (opencv-doc) not found in: " + ", ".join(map(str, candidates))
            + ". Run `make data` in the repository (apt-get download opencv-doc && dpkg -x opencv-doc*.deb "
              ".cache/opencv-doc), or set MIXQ_OPENCV_DATA to a directory holding digits.png"
        )
    return None


def _existing(directory: pathlib.Path, name: str) -> pathlib.Path | None:
    """The file or its Debian-gzipped twin."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _open_image(path: pathlib.Path):
    from PIL import Image

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                image = Image.open(io.BytesIO(f.read()))
        else:
            image = Image.open(path)
        image.load()
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ZooError(f"cannot read image {path}: {exc}") from exc
    return image


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` alone (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def natural_photo_files(split: str | None = None) -> list[PhotoFile]:
    """The natural photos found on this machine, each with its group and split (None: both splits)."""
    if split is not None and split not in SPLITS:
        raise ZooError(f"split must be one of {SPLITS}, got {split!r}")
    roots = []
    for module, sub, names in (("skimage", "data", _SKIMAGE_PHOTOS),
                               ("sklearn", "datasets/images", _SKLEARN_PHOTOS)):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            roots.append((module, pathlib.Path(list(spec.submodule_search_locations)[0]) / sub, names))
    opencv = opencv_data_dir(required=False)
    if opencv is not None:
        roots.append(("opencv-doc", opencv, _OPENCV_PHOTOS))
    photos = []
    for source, directory, names in roots:
        for name, group in sorted(names.items()):
            path = _existing(directory, name)
            if path is None:
                continue
            group = f"{source}:{group or name}"
            photo_split = SPLITS[0] if _stable_fraction(group) < _CALIBRATION_SHARE else SPLITS[1]
            if split is None or photo_split == split:
                photos.append(PhotoFile(source, name, path, group, photo_split))
    return photos


# ---------------------------------------------------------------- preprocessing

def _normalize_imagenet(rgb_crop) -> np.ndarray:
    x = np.asarray(rgb_crop, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def _resize_short_side(image, short: int):
    from PIL import Image

    w, h = image.size
    # torchvision's Resize(int): the long side is truncated, not rounded.
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return image.resize(size, Image.BILINEAR)


def imagenet_preprocess(image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's ImageNet eval transform on a PIL image: Resize(256), CenterCrop(224), ToTensor, Normalize.

    Returns float32 CHW.
    """
    image = _resize_short_side(image.convert("RGB"), resize)
    w, h = image.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return _normalize_imagenet(image.crop((left, top, left + crop, top + crop)))


def _random_crop(image, key: str, crop: int = 224) -> np.ndarray:
    """A crop fixed by ``key``: random short side in [crop, 2*crop], random position, random mirror."""
    from PIL import Image

    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))
    image = image.convert("RGB")
    top_short = max(crop + 32, min(min(image.size), 2 * crop))
    resized = _resize_short_side(image, int(rng.integers(crop, top_short + 1)))
    w, h = resized.size
    left, top = int(rng.integers(0, w - crop + 1)), int(rng.integers(0, h - crop + 1))
    patch = resized.crop((left, top, left + crop, top + crop))
    if rng.random() < 0.5:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize_imagenet(patch)


# ---------------------------------------------------------------- loaders

_FOOLBOX_NAME = re.compile(r"^(?P<kind>[A-Za-z0-9]+)_(?P<index>\d+)_(?P<label>\d+)\.(png|jpg)$")


def _foolbox_files(kind: str) -> list[tuple[pathlib.Path, int]]:
    directory = _package_dir("foolbox", _FOOLBOX_INSTALL) / "data"
    found = []
    for path in directory.glob(f"{kind}_*"):
        match = _FOOLBOX_NAME.match(path.name)
        if match and match["kind"] == kind:
            found.append((int(match["index"]), path, int(match["label"])))
    if not found:
        raise ZooError(f"no {kind}_NN_<label> images in {directory}; reinstall: {_FOOLBOX_INSTALL}")
    return [(path, label) for _, path, label in sorted(found)]


def imagenet_samples() -> ImageSet:
    """foolbox's 20 labelled ImageNet images, preprocessed for MobileNetV2: float32 (20, 3, 224, 224)."""
    files = _foolbox_files("imagenet")
    inputs = np.stack([imagenet_preprocess(_open_image(path)) for path, _ in files])
    labels = np.array([label for _, label in files], np.int64)
    return ImageSet(inputs, labels, tuple(f"foolbox:{path.name}" for path, _ in files))


def natural_images(split: str, count: int) -> ImageSet:
    """``count`` 224x224 crops of the natural photos of one split, preprocessed like ImageNet.

    Crop 0 of each photo is the standard centre crop, later ones random (scale, position, mirror),
    all fixed by the photo's name, so results repeat exactly. Crops go round-robin over the photos:
    every photo contributes before any contributes twice. Calibration and evaluation photos are disjoint.
    """
    if split not in SPLITS:
        raise ZooError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(count, (int, np.integer)) or count <= 0:
        raise ZooError(f"count must be a positive integer, got {count!r}")
    photos = natural_photo_files(split)
    if not photos:
        raise ZooError(f"no natural photos found for the {split} split (install scikit-image / scikit-learn, "
                       "or run `make data` for opencv-doc)")
    per_photo = math.ceil(count / len(photos))
    if per_photo > _MAX_CROPS_PER_PHOTO:
        raise ZooError(f"count={count} would need {per_photo} crops from each of the {len(photos)} {split} "
                       f"photos (at most {_MAX_CROPS_PER_PHOTO}); ask for at most "
                       f"{_MAX_CROPS_PER_PHOTO * len(photos)}")
    inputs = np.empty((count, 3, 224, 224), np.float32)
    sources = []
    images = {}
    for i in range(count):
        round_, photo = divmod(i, len(photos))
        photo = photos[photo]
        if photo.path not in images:
            images[photo.path] = _open_image(photo.path)
        image = images[photo.path]
        name = f"{photo.source}:{photo.name}"
        inputs[i] = imagenet_preprocess(image) if round_ == 0 else _random_crop(image, f"{name}#{round_}")
        sources.append(f"{name}#{round_}")
    return ImageSet(inputs, None, tuple(sources))


def _mnist_normalize(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def digits(split: str | None = None) -> ImageSet:
    """OpenCV's digits.png as MNIST inputs: float32 (N, 1, 28, 28), labels 0-9.

    The sheet holds 50 rows of 100 20x20 digits, 5 rows per class; each cell is padded by 4 to 28x28
    and normalized like MNIST. ``split``: None for all 5000, "calibration" for the first row of each
    class (1000), "evaluation" for the other four rows (4000).
    """
    if split is not None and split not in SPLITS:
        raise ZooError(f"split must be None or one of {SPLITS}, got {split!r}")
    path = _existing(opencv_data_dir(), "digits.png")
    sheet = np.asarray(_open_image(path).convert("L"))
    if sheet.shape != (1000, 2000):
        raise ZooError(f"{path}: expected a 1000x2000 sheet of 20x20 digits, got {sheet.shape}")
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3)  # (row, column, 20, 20)
    rows = np.arange(50)
    if split == "calibration":
        rows = rows[rows % 5 == 0]
    elif split == "evaluation":
        rows = rows[rows % 5 != 0]
    cells = cells[rows].reshape(-1, 20, 20)
    labels = np.repeat(rows // 5, 100).astype(np.int64)
    padded = np.pad(cells, ((0, 0), (4, 4), (4, 4)))
    sources = tuple(f"opencv-doc:digits.png[row {r}, col {c}]" for r in rows for c in range(100))
    return ImageSet(_mnist_normalize(padded)[:, None], labels, sources)


def foolbox_mnist() -> ImageSet:
    """foolbox's 20 labelled MNIST images, normalized like MNIST: float32 (20, 1, 28, 28)."""
    files = _foolbox_files("mnist")
    pixels = np.stack([np.asarray(_open_image(path).convert("L")) for path, _ in files])
    labels = np.array([label for _, label in files], np.int64)
    return ImageSet(_mnist_normalize(pixels)[:, None], labels, tuple(f"foolbox:{p.name}" for p, _ in files))


def foolbox_cifar10() -> ImageSet:
    """foolbox's 20 labelled CIFAR-10 images as raw 0-255 float32 NHWC (20, 32, 32, 3), as Keras CIFAR models take."""
    files = _foolbox_files("cifar10")
    pixels = np.stack([np.asarray(_open_image(path).convert("RGB")) for path, _ in files]).astype(np.float32)
    labels = np.array([label for _, label in files], np.int64)
    return ImageSet(pixels, labels, tuple(f"foolbox:{p.name}" for p, _ in files))
