"""The coverage suite (bench/bench_coverage.py) on small models, in `make test`: each loads, matches
onnxruntime in float, and quantizes to INT8 (against onnxruntime's own static INT8 QDQ quantizer on
the same samples) and INT16, measured by the bench's own harness (bench/coverage/harness.py).
Targets as the bench's: float <= 1e-4 relative, INT8 >= onnxruntime's - 0.5 dB, INT16 >= 60 dB.
The peer's QDQ model runs unfused (dequantize, float op, quantize): onnxruntime's fused U8S8 kernels
saturate on AVX2 CPUs without VNNI (small Swin: 17.4 dB fused, 33.7 dB unfused), which would make
the comparison trivial. Like for like (mixq calibrated with MinMax, the peer's method) INT8 must be
within the issue's 0.5 dB; mixq's default (histogram MSE, the specification's) within 2 dB: on the
small Swin its tensor-optimal clipping costs 1.5 dB downstream (MinMax 34.8 dB, MSE 32.2 dB, the
peer 33.7 dB), a known limit noted in docs/quantization.md."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from bench.coverage.harness import format_table, measure
from tests.coverage.small_models import SMALL_MODELS
from tests.models.builders import MODELS

ALL = {**{n: ("transformer / detection head", f) for n, f in MODELS.items()},
       **{n: ("cnn", f) for n, f in SMALL_MODELS.items()}}
LIKE_FOR_LIKE_MARGIN_DB = 0.5
DEFAULT_MARGIN_DB = 2.0
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
    row = measure(name, kind, path, calib, evaluation, minmax=True)
    print(format_table([row]))
    assert row.loads and not row.errors, row.errors
    assert row.float_rel <= 1e-4
    assert row.int8_minmax >= row.ort_int8 - LIKE_FOR_LIKE_MARGIN_DB, (row.int8_minmax, row.ort_int8)
    assert row.int8 >= row.ort_int8 - DEFAULT_MARGIN_DB, (row.int8, row.ort_int8)
    assert row.int16 >= INT16_FLOOR_DB
    assert not [w for w in row.warnings if "collapsed" in w]
