"""DataGenerator, convert_data_generator_to_iterable and length_hinted, used as the specification's
accelerator-mode example uses them."""
import numpy as np
import pytest

from core.data import DataGenerator, convert_data_generator_to_iterable, length_hinted
from core.errors import InputError
from core.quantization.calibration import iter_calibration_batches

NUM_SAMPLES = 10
INPUT_SHAPE = (1, 8, 8, 3)  # the model's NHWC input, batch first


def pre_process_func(image: np.ndarray) -> np.ndarray:
    # The example's preprocessing: CHW uint8 -> HWC float32 (no batch dimension).
    return image.transpose([1, 2, 0]).astype(np.float32) / 255.0


@pytest.fixture
def dataset():
    rng = np.random.default_rng(0)
    return {"data": rng.integers(0, 256, size=(25, 3, 8, 8), dtype=np.uint8)}


def create_calibration_data(dataset):
    # The specification's _create_calibration_data(), verbatim apart from the names' module.
    input_generator = DataGenerator({"input_tensor": dataset["data"]})
    input_generator.map({"input_tensor": pre_process_func})
    input_iterable = convert_data_generator_to_iterable(input_generator, length_limit=NUM_SAMPLES)
    return input_iterable


def test_the_specification_example_yields_preprocessed_samples(dataset):
    calibration_data = create_calibration_data(dataset)
    hinted = length_hinted(NUM_SAMPLES, calibration_data)
    assert len(hinted) == NUM_SAMPLES == len(calibration_data)
    samples = list(hinted)
    assert len(samples) == NUM_SAMPLES
    assert all(list(s) == ["input_tensor"] and s["input_tensor"].shape == (8, 8, 3) for s in samples)
    np.testing.assert_array_equal(samples[3]["input_tensor"], pre_process_func(dataset["data"][3]))
    # The calibration helper adds the batch dimension the samples lack.
    batches = list(iter_calibration_batches(hinted, ["input_tensor"], {"input_tensor": INPUT_SHAPE},
                                            {"input_tensor": np.float32}))
    assert [b["input_tensor"].shape for b in batches] == [INPUT_SHAPE] * NUM_SAMPLES


def test_the_iterable_can_be_read_twice(dataset):
    # quantize() reads the calibration data, then an evaluation reads the same object again.
    data = create_calibration_data(dataset)
    first = [s["input_tensor"] for s in data]
    second = [s["input_tensor"] for s in data]
    assert len(first) == len(second) == NUM_SAMPLES
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_map_is_lazy_mutates_in_place_and_composes_in_order(dataset):
    calls = []

    def record(x):
        calls.append(1)
        return x

    gen = DataGenerator({"input_tensor": dataset["data"]})
    assert gen.map({"input_tensor": record}) is gen
    assert calls == []  # nothing runs until a sample is read
    gen.map({"input_tensor": pre_process_func})
    gen.map({"input_tensor": lambda x: x * 2.0})
    sample = gen[1]
    assert len(calls) == 1
    np.testing.assert_array_equal(sample["input_tensor"], pre_process_func(dataset["data"][1]) * 2.0)
    assert len(gen) == 25 and gen[-1]["input_tensor"].shape == (8, 8, 3)
    with pytest.raises(IndexError):
        gen[25]


def test_several_inputs_and_lists_of_varying_shapes():
    images = [np.zeros((4 + i, 5, 3)) for i in range(3)]  # before resizing: shapes differ
    gen = DataGenerator({"image": images, "scale": np.arange(3.0)})
    samples = list(gen)
    assert [s["image"].shape for s in samples] == [(4, 5, 3), (5, 5, 3), (6, 5, 3)]
    assert [float(s["scale"]) for s in samples] == [0.0, 1.0, 2.0]


def test_length_limit_and_length_hint():
    gen = DataGenerator({"x": np.arange(5)})
    assert len(convert_data_generator_to_iterable(gen)) == 5
    assert [s["x"] for s in convert_data_generator_to_iterable(gen, length_limit=2)] == [0, 1]
    assert len(convert_data_generator_to_iterable(gen, length_limit=50)) == 5
    assert len(list(convert_data_generator_to_iterable(gen, length_limit=0))) == 0
    # The hint is only a hint: iteration is neither cut nor padded.
    hinted = length_hinted(3, ({"x": i} for i in range(7)))
    assert len(hinted) == 3 and len(list(hinted)) == 7


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: DataGenerator({"a": np.zeros(3), "b": np.zeros(4)}),
            r"different numbers of samples: \{'a': 3, 'b': 4\}",
        ),
        (lambda: DataGenerator({}), "empty dict"),
        (lambda: DataGenerator([np.zeros(3)]), "dict"),
        (lambda: DataGenerator({"a": 1.0}), "'a'.*scalar"),
        (lambda: DataGenerator({"a": np.zeros(3)}).map({"b": abs}), r"unknown input 'b'.*\['a'\]"),
        (lambda: DataGenerator({"a": np.zeros(3)}).map({"a": 3}), "'a' is not callable"),
        (
            lambda: convert_data_generator_to_iterable(DataGenerator({"a": np.zeros(3)}), length_limit=-1),
            "length_limit",
        ),
        (
            lambda: convert_data_generator_to_iterable(DataGenerator({"a": np.zeros(3)}), length_limit=2.5),
            "length_limit",
        ),
        (lambda: convert_data_generator_to_iterable(42), "DataGenerator"),
        (lambda: length_hinted(-1, []), "length"),
        (lambda: length_hinted(3, 42), "iterable"),
    ],
)
def test_bad_arguments_raise_input_error_naming_them(make, message):
    with pytest.raises(InputError, match=message):
        make()
