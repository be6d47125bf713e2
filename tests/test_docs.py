import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_operator_doc_is_generated_from_registry():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_operator_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "operators.md").read_text() == gen.render(), "run `make docs`"


def test_every_op_named_by_the_foundation_issue_is_supported():
    from core.ops.registry import supported_ops

    required = """Conv ConvTranspose Gemm MatMul Add Sub Mul Div Relu LeakyRelu Clip Sigmoid Tanh HardSigmoid
    HardSwish Softmax MaxPool AveragePool GlobalAveragePool ReduceMean BatchNormalization Concat Reshape
    Flatten Transpose Squeeze Unsqueeze Pad Slice Split Resize Identity Dropout Cast Shape Gather
    ConstantOfShape Constant Range Upsample""".split()
    assert sorted(set(required) - set(supported_ops())) == []
