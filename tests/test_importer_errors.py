"""Bad input to the ONNX importer and to LoadedNet.execute gets mixq's own errors, naming the culprit."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import (
    InputError,
    ModelLoadError,
    UnsupportedOperatorError,
    load_model,
    onnx_source,
)


def conv_relu_model(batch=1, opset=17, dynamic=False, dims=None):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    dims = dims or (["N", 3, 8, 8] if dynamic else [batch, 3, 8, 8])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    g = helper.make_graph(nodes, "convrelu", [x], [y], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="not found.*nope.onnx"):
        load_model(onnx_source(missing))


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        load_model(onnx_source(tmp_path))


def test_file_that_is_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a protobuf\n" * 10)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        load_model(onnx_source(p))


def test_truncated_file(tmp_path, onnx_model_file):
    path = onnx_model_file(conv_relu_model())
    data = open(path, "rb").read()
    cut = tmp_path / "truncated.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx"):
        load_model(onnx_source(cut))


def test_unsupported_operator_names_op_and_node(onnx_model_file):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax_node")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOperatorError, match="'Hardmax'.*'my_hardmax_node'") as info:
        load_model(onnx_source(onnx_model_file(model)))
    assert info.value.op_type == "Hardmax" and info.value.node_name == "my_hardmax_node"


def test_custom_domain_operator_is_unsupported(onnx_model_file):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("FusedGemm", ["x"], ["y"], name="msft", domain="com.microsoft")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    with pytest.raises(UnsupportedOperatorError, match="com.microsoft::FusedGemm.*'msft'"):
        load_model(onnx_source(onnx_model_file(model)))


def test_shape_dict_naming_unknown_input(onnx_model_file):
    path = onnx_model_file(conv_relu_model())
    with pytest.raises(ModelLoadError, match="shape_dict names input 'image'.*\\['x'\\]"):
        load_model(onnx_source(path, shape_dict={"image": (1, 3, 8, 8)}))


def test_symbolic_batch_dimension_defaults_to_one(onnx_model_file):
    # torch.onnx.export(..., dynamic_axes={"x": {0: "N"}}): dim 0 is the batch, imported at 1
    path = onnx_model_file(conv_relu_model(dynamic=True))
    net = load_model(onnx_source(path))
    assert net.input_shapes() == {"x": (1, 3, 8, 8)}
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    y, = net.execute({"x": x})
    assert y.shape == (3, 4, 8, 8)
    assert np.array_equal(y[1:2], net.execute({"x": x[1:2]})[0])
    net = load_model(onnx_source(path, shape_dict={"x": (2, 3, 8, 8)}))
    assert net.input_shapes() == {"x": (2, 3, 8, 8)}


def test_other_dynamic_dimension_needs_shape(onnx_model_file):
    path = onnx_model_file(conv_relu_model(dims=["N", 3, "H", 8]))
    with pytest.raises(ModelLoadError, match="input 'x' has dynamic dimension 2 \\('H'\\).*shape_dict"):
        load_model(onnx_source(path))
    net = load_model(onnx_source(path, shape_dict={"x": (2, 3, 8, 8)}))
    assert net.input_shapes() == {"x": (2, 3, 8, 8)}


def test_shape_dict_with_wrong_rank(onnx_model_file):
    path = onnx_model_file(conv_relu_model())
    with pytest.raises(ModelLoadError, match="rank 3.*rank 4"):
        load_model(onnx_source(path, shape_dict={"x": (3, 8, 8)}))


def test_shape_dict_with_bad_value():
    with pytest.raises(ModelLoadError, match="shape_dict\\['x'\\]"):
        onnx_source("m.onnx", shape_dict={"x": (1, -3)})


def test_old_opset_is_refused(onnx_model_file):
    path = onnx_model_file(conv_relu_model(opset=7))
    with pytest.raises(ModelLoadError, match="opset 7"):
        load_model(onnx_source(path))


def test_conv_channel_mismatch_names_node(onnx_model_file):
    path = onnx_model_file(conv_relu_model())
    with pytest.raises(ModelLoadError, match="conv"):
        load_model(onnx_source(path, shape_dict={"x": (1, 5, 8, 8)}))


@pytest.fixture
def net(onnx_model_file):
    return load_model(onnx_source(onnx_model_file(conv_relu_model())))


def test_execute_matches_onnxruntime_at_any_batch(net, onnx_model_file):
    import onnxruntime as ort

    path = onnx_model_file(conv_relu_model(), "again.onnx")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        (got,) = net.execute({"x": x})
        (want,) = (
            sess.run(None, {"x": x})
            if batch == 1
            else [np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(batch)])]
        )
        assert got.shape == (batch, 4, 8, 8)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_execute_wrong_dtype(net):
    with pytest.raises(InputError, match="input 'x' expects float32, got uint8"):
        net.execute({"x": np.zeros((1, 3, 8, 8), np.uint8)})


def test_execute_wrong_shape(net):
    with pytest.raises(InputError, match="input 'x' expects shape \\(1, 3, 8, 8\\).*\\(1, 3, 9, 8\\)"):
        net.execute({"x": np.zeros((1, 3, 9, 8), np.float32)})
    with pytest.raises(InputError, match="rank 4"):
        net.execute({"x": np.zeros((3, 8, 8), np.float32)})


def test_execute_missing_and_unknown_inputs(net):
    with pytest.raises(InputError, match="missing input.*'x'"):
        net.execute({})
    with pytest.raises(InputError, match="unknown input name.*'image'"):
        net.execute({"image": np.zeros((1, 3, 8, 8), np.float32), "x": np.zeros((1, 3, 8, 8), np.float32)})


def test_execute_not_a_dict(net):
    with pytest.raises(InputError, match="dict"):
        net.execute(np.zeros((1, 3, 8, 8), np.float32))


def test_float64_input_is_accepted_and_cast(net):
    (out,) = net.execute({"x": np.ones((1, 3, 8, 8))})
    assert out.dtype == np.float32


def test_node_listing_names_and_table(net):
    rows = net.nodes()
    assert [r.name for r in rows] == ["MLA_0/conv2d_add_relu_0"]
    assert rows[0].segment == "MLA_0" and rows[0].op == "Conv"
    assert rows[0].output_shapes == ((1, 4, 8, 8),)
    table = net.node_table()
    assert "MLA_0/conv2d_add_relu_0" in table and "1x4x8x8" in table and "conv" in table
