"""Refactors must not move a single integer: every golden output (tests/golden/cases.py) is
recomputed and compared with ``np.array_equal``. A change that means to alter numbers regenerates
tests/golden/outputs.npz with tests/golden/make_golden.py and says so in its commit."""
import numpy as np
import pytest

from tests.golden.cases import GOLDEN_FILE, tflite_files, tflite_key, tflite_outputs, zoo_cases, zoo_outputs

GOLDEN = dict(np.load(GOLDEN_FILE))


@pytest.mark.parametrize("case", zoo_cases(), ids=lambda c: c[0])
def test_zoo_models_bit_identical(case):
    name, calibration, x = case
    got = zoo_outputs(name, calibration, x)
    expected = {k: v for k, v in GOLDEN.items() if k.startswith(name + "/")}
    assert sorted(got) == sorted(expected)
    for key, value in got.items():
        assert value.dtype == expected[key].dtype and np.array_equal(value, expected[key]), key


def test_tflite_op_models_bit_identical():
    files = tflite_files()
    assert len(files) == 30, files      # 16 int8 op models + 14 16x8 ones
    for path in files:
        key = tflite_key(path)
        assert np.array_equal(tflite_outputs(path), GOLDEN[key]), key
