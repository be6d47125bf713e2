"""ONNX's own node tests (onnx==1.22.0 ships them) for every operator in mixq's registry.

Each supported op's tests are included by name; the variants mixq does not implement are
excluded in EXCLUDED below, one line and one reason each. The session prints the pass count.
"""
import re

import onnx.backend.test

from core.ops.registry import supported_ops
from tests.conformance.backend import MixqBackend

# onnx's test-name prefix (a regex) for registry ops whose tests are not named test_<op lowercased>_...
TEST_PREFIX = {
    "BatchNormalization": "batchnorm", "Conv": "(basic_)?conv", "Dropout": "(training_)?dropout",
    "Pad": "(constant|reflect|edge|wrap)_pad", "ReduceMean": "reduce_mean",
    "LayerNormalization": "layer_normalization", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
    "ScatterND": "scatternd", "And": "and([234]d)?", "Or": "or([234]d)?",
}


def onnx_test_prefix(op: str) -> str:
    return TEST_PREFIX.get(op, op.lower())


# pattern (matched against the test name) -> why mixq does not run it. One line each.
EXCLUDED = {
    r"^test_(clip_(?!default(_int8)?_inbounds_)|hardsigmoid_|leakyrelu_|range_|relu_|softmax_).*expanded": "function-expanded variants whose body needs ops mixq lacks (Where, Less, Max, CastLike, Loop, Exp, ReduceMax...)",
    r"^test_cast_.*_to_(BFLOAT16|FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2)": "Cast to bfloat16/float8/float4/int4/int2 (not numpy dtypes; casts from them run)",
    r"^test_gather_elements": "GatherElements is a different op (the prefix 'gather' matches it)",
    r"^test_split_to_sequence": "SplitToSequence is a different op (sequence outputs)",
    r"^test_identity_(opt|sequence)": "optional and sequence types (mixq graphs carry tensors only)",
    r"^test_batchnorm_.*training_mode": "training-mode BatchNormalization (mixq runs inference only)",
    r"^test_training_dropout(_default)?(_mask)?(_cpu)?$": "training-mode Dropout with ratio > 0 is random (ratio 0 runs)",
    r"^test_maxpool_with_argmax": "MaxPool's Indices output is not supported",
    r"^test_resize_.*cubic": "cubic Resize is not implemented (nearest and linear are)",
    r"^test_resize_.*antialias": "antialiased Resize is not implemented",
    r"^test_reshape_allowzero_reordered|^test_split_zero_size_splits": "zero-size tensors (a dimension of 0) are not supported",
    r"^test_(elu|gelu|layer_normalization)_.*expanded": "function-expanded bodies use CastLike (not in mixq: every onnx CastLike test has a zero-size input)",
    r"^test_(not_|and|or)[234]d|^test_(and|or)_bcast": "opset 1/7 models (mixq reads opset 9+); tests/ops/test_transformer_ops.py runs these ops",
}
# Supported ops whose every onnx node test is excluded above for its model's opset alone
# (test_every_supported_op_has_conformance_tests checks that this stays true).
OLD_OPSET_ONLY = {"And", "Not", "Or"}

backend_test = onnx.backend.test.BackendTest(MixqBackend, __name__)
prefixes = [onnx_test_prefix(op) for op in supported_ops()]
backend_test.include(r"^test_(" + "|".join(prefixes) + r")(_.*)?_cpu$")
for pattern in EXCLUDED:
    backend_test.exclude(pattern)
# Only onnx's node tests, and only the included ones: the runner marks every other test as
# skipped, and a skipped test must not look like part of the suite.
NodeTests = backend_test.test_cases["OnnxBackendNodeModelTest"]
for _name in [n for n in dir(NodeTests) if n.startswith("test_")]:
    if getattr(getattr(NodeTests, _name), "__unittest_skip__", False):
        delattr(NodeTests, _name)
del _name


def excluded_tests() -> list[str]:
    """Node tests of supported ops that EXCLUDED rules out."""
    import os

    import onnx

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    include = re.compile(r"^test_(" + "|".join(prefixes) + r")(_.*)?$")
    return sorted(d for d in os.listdir(root)
                  if include.match(d) and any(re.search(p, d) for p in EXCLUDED))


def test_every_supported_op_has_conformance_tests():
    ran = {n[len("test_"):-len("_cpu")] for n in dir(NodeTests) if n.startswith("test_")}
    missing = [op for op in supported_ops() if not any(re.match(onnx_test_prefix(op) + r"(_|$)", t) for t in ran)]
    assert missing == sorted(OLD_OPSET_ONLY)
    from core.importers.onnx import MIN_OPSET

    for op in OLD_OPSET_ONLY:   # each of their tests is below mixq's opset range: nothing else to run
        tests = [t for t in excluded_tests() if re.match(r"test_" + onnx_test_prefix(op) + r"(_|$)", t)]
        assert tests and all(_model_opset(t) < MIN_OPSET for t in tests), op


def _model_opset(test: str) -> int:
    import os

    import onnx

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node", test, "model.onnx")
    return next(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx"))
