"""core.zoo.data: real images, preprocessed per model, with calibration and evaluation split by source photo."""
import gzip
import shutil

import numpy as np
import pytest

from core.errors import ZooError
from core.zoo import data


def source_file(source):
    return source.rsplit("#", 1)[0]


@pytest.fixture(scope="module")
def calibration_crops():
    return data.natural_images("calibration", 128)


@pytest.fixture(scope="module")
def evaluation_crops():
    return data.natural_images("evaluation", 300)


def test_imagenet_samples():
    images = data.imagenet_samples()
    assert images.inputs.shape == (20, 3, 224, 224) and images.inputs.dtype == np.float32
    assert images.labels.dtype == np.int64
    assert images.labels[:3].tolist() == [243, 559, 438]  # imagenet_00_243.jpg, imagenet_01_559.jpg, ...
    assert images.sources[0] == "foolbox:imagenet_00_243.jpg"
    # ImageNet-normalized pixels: roughly zero-mean, within (0-mean)/std .. (1-mean)/std.
    assert -2.2 < images.inputs.min() < -1.5 and 2.0 < images.inputs.max() < 2.7
    assert abs(float(images.inputs.mean())) < 0.5


def test_photo_splits_are_disjoint_by_file_and_scene():
    calibration = data.natural_photo_files("calibration")
    evaluation = data.natural_photo_files("evaluation")
    assert len(calibration) >= 10 and len(evaluation) >= 10
    assert not {p.path for p in calibration} & {p.path for p in evaluation}
    assert not {p.group for p in calibration} & {p.group for p in evaluation}
    assert {p.path for p in calibration + evaluation} == {p.path for p in data.natural_photo_files()}
    assert data.natural_photo_files("calibration") == calibration  # deterministic
    # Photos of one scene share a group and so a split.
    motorcycle = [p for p in calibration + evaluation if p.name.startswith("motorcycle_")]
    assert len(motorcycle) == 2 and motorcycle[0].split == motorcycle[1].split


def test_opencv_photos_are_included():
    sources = {p.source for p in data.natural_photo_files()}
    assert sources == {"skimage", "sklearn", "opencv-doc"}, "opencv-doc missing: run `make data`"


def test_natural_image_crops(calibration_crops, evaluation_crops):
    assert calibration_crops.inputs.shape == (128, 3, 224, 224) and calibration_crops.inputs.dtype == np.float32
    assert evaluation_crops.inputs.shape == (300, 3, 224, 224)
    assert calibration_crops.labels is None
    calibration_files = {source_file(s) for s in calibration_crops.sources}
    evaluation_files = {source_file(s) for s in evaluation_crops.sources}
    assert not calibration_files & evaluation_files
    # Every photo of the split contributes (round-robin) and the crops are distinct.
    assert len(calibration_files) == len(data.natural_photo_files("calibration"))
    assert len(set(calibration_crops.sources)) == 128
    flat = evaluation_crops.inputs.reshape(300, -1)
    assert len({row.tobytes() for row in flat}) == 300


def test_first_crop_is_the_standard_centre_crop(calibration_crops):
    from PIL import Image

    photo = data.natural_photo_files("calibration")[0]
    assert calibration_crops.sources[0] == f"{photo.source}:{photo.name}#0"
    expected = data.imagenet_preprocess(Image.open(photo.path))
    np.testing.assert_array_equal(calibration_crops.inputs[0], expected)


def test_crops_repeat_exactly(calibration_crops):
    again = data.natural_images("calibration", 40)
    np.testing.assert_array_equal(again.inputs, calibration_crops.inputs[:40])
    assert again.sources == calibration_crops.sources[:40]


@pytest.mark.parametrize("split, count, message", [
    ("train", 10, "split must be one of"),
    ("calibration", 0, "count must be a positive integer"),
    ("evaluation", 10**6, "at most"),
])
def test_bad_natural_image_parameters(split, count, message):
    with pytest.raises(ZooError, match=message):
        data.natural_images(split, count)


def test_digits():
    digits = data.digits()
    assert digits.inputs.shape == (5000, 1, 28, 28) and digits.inputs.dtype == np.float32
    assert np.bincount(digits.labels).tolist() == [500] * 10
    assert digits.labels[0] == 0 and digits.labels[-1] == 9
    background = (0 - 0.1307) / 0.3081
    assert np.allclose(digits.inputs[:, :, :4, :], background)  # the 4-pixel padding
    assert digits.inputs.max() == pytest.approx((1 - 0.1307) / 0.3081)
    calibration, evaluation = data.digits("calibration"), data.digits("evaluation")
    assert (len(calibration), len(evaluation)) == (1000, 4000)
    assert np.bincount(calibration.labels).tolist() == [100] * 10
    assert not set(calibration.sources) & set(evaluation.sources)
    assert set(calibration.sources) | set(evaluation.sources) == set(digits.sources)


def test_digits_from_a_gzipped_copy(tmp_path, monkeypatch):
    # Debian may gzip files under /usr/share/doc; the loaders read either form.
    plain_dir = data.opencv_data_dir()
    from_plain = data.digits()
    with open(plain_dir / "digits.png", "rb") as src, gzip.open(tmp_path / "digits.png.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    monkeypatch.setenv("MIXQ_OPENCV_DATA", str(tmp_path))
    assert data.opencv_data_dir() == tmp_path
    np.testing.assert_array_equal(data.digits().inputs, from_plain.inputs)


def test_missing_opencv_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQ_OPENCV_DATA", str(tmp_path))
    monkeypatch.setattr(data, "_OPENCV_DATA_SUFFIX", "no/such/dir")
    assert data.opencv_data_dir(required=False) is None
    with pytest.raises(ZooError, match="make data"):
        data.digits()


def test_foolbox_mnist_and_cifar10():
    mnist = data.foolbox_mnist()
    assert mnist.inputs.shape == (20, 1, 28, 28) and mnist.inputs.dtype == np.float32
    assert mnist.labels[:3].tolist() == [7, 2, 1]
    cifar = data.foolbox_cifar10()
    assert cifar.inputs.shape == (20, 32, 32, 3) and cifar.inputs.dtype == np.float32
    assert 0 <= cifar.inputs.min() and cifar.inputs.max() <= 255 and cifar.inputs.max() > 200
    assert cifar.labels[:3].tolist() == [3, 8, 8]
