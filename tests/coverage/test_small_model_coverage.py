"""The coverage suite (bench/bench_coverage.py) on small models, in `make test`: each loads, matches
onnxruntime in float, and quantizes to INT8 (against onnxruntime's own static INT8 QDQ quantizer on
the same samples) and INT16, measured by the bench's own harness (bench/coverage/harness.py).
Targets as the bench's: float <= 1e-4 relative, INT8 >= onnxruntime's - 0.5 dB, INT16 >= 60 dB;
here with margins (INT8 >= onnxruntime's - 1.5 dB, INT16 >= 60 dB) since the samples are few."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from bench.coverage.harness import format_table, measure
from tests.coverage.small_models import SMALL_MODELS
from tests.models.builders import MODELS

ALL = {**{n: ("transformer / detection head", f) for n, f in MODELS.items()},
       **{n: ("cnn", f) for n, f in SMALL_MODELS.items()}}
INT8_MARGIN_DB = 1.5
INT16_FLOOR_DB = 60.0


@pytest.mark.parametrize("name", sorted(ALL))
def test_small_model_meets_the_coverage_targets(name, tmp_path):
    kind, build = ALL[name]
    proto = build()
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(proto, path)
    shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(5)
    calib = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(16)]
    evaluation = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    row = measure(name, kind, path, calib, evaluation)
    print(format_table([row]))
    assert row.loads and not row.errors, row.errors
    assert row.float_rel <= 1e-4
    assert row.int8 >= row.ort_int8 - INT8_MARGIN_DB, (row.int8, row.ort_int8)
    assert row.int16 >= INT16_FLOOR_DB
    assert not [w for w in row.warnings if "collapsed" in w]
