"""The .lm package: bit-identical round trips, compression, and refusing bad files."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest

from core.devkit.lm import LM_FORMAT_VERSION, LM_MAGIC, read_lm, read_lm_header, write_lm
from core.devkit.planner import CompileReport, Target
from core.errors import ModelFileError
from core.runtime.integer_interpreter import run_program

_PRE = struct.Struct("<8sQ32s")


@pytest.mark.parametrize("config", ["int8", "int16", "mixed"])
def test_round_trip_is_bit_identical(mnist_models, digits, tmp_path, config):
    model = mnist_models[config]
    report = model.compile(str(tmp_path), batch_size=4)
    assert isinstance(report, CompileReport)
    assert report.path == str(tmp_path / f"{model.name}.lm") and os.path.isfile(report.path)
    assert sorted(os.listdir(tmp_path)) == [f"{model.name}.lm"]          # atomic: no temp file left
    name, program, plan, meta = read_lm(report.path)
    assert name == model.name and meta["batch_size"] == 4 and plan.batch_size == 4
    assert [n.name for n in program.graph.nodes] == [n.name for n in model.program.graph.nodes]
    assert program.kinds == model.program.kinds
    for node, c in model.program.constants.items():     # integer weights and requantization parameters
        assert program.constants[node] == c, node         # NodeQuant ==: arrays by dtype, shape and values
    x = digits[:32]
    want = model.execute({"input": x}, fast_mode=False)
    got = run_program(program, {"input": x}, fast_mode=False)
    assert np.array_equal(got[model.output_names[0]], want[0])
    # the float copies of the conv/dense weights are not shipped: the .lm holds the integer program
    assert meta["stripped_float_weights"] and all(program.graph.constants[t].size == 0
                                                  for t in meta["stripped_float_weights"])
    assert model.program.graph.constants[meta["stripped_float_weights"][0]].size > 0   # the model is untouched
    precisions = {p.precision for p in plan.layers}
    assert precisions == {"int8": {"int8"}, "int16": {"int16"}, "mixed": {"int8", "int16"}}[config]


def test_compression_on_and_off(mnist_models, tmp_path):
    model = mnist_models["int8"]
    packed = model.compile(str(tmp_path / "z"), compress=True)
    plain = model.compile(str(tmp_path / "raw"), compress=False)
    xz = model.compile(str(tmp_path / "xz"), compress="lzma")
    assert plain.codec == "none" and plain.compression_ratio == 1.0
    assert plain.stored_constant_bytes == plain.constant_bytes == packed.constant_bytes
    assert packed.codec == "zlib" and packed.compression_ratio > 1.0 and xz.compression_ratio > 1.0
    assert packed.lm_bytes < plain.lm_bytes and xz.lm_bytes < plain.lm_bytes
    for r in (packed, plain, xz):
        assert os.path.getsize(r.path) == r.lm_bytes
        assert f"ratio {r.compression_ratio:.2f}x" in str(r)
    codecs = {b["codec"] for b in read_lm_header(packed.path)["blobs"]}
    assert "zlib" in codecs and codecs <= {"zlib", "raw"}
    assert {b["codec"] for b in read_lm_header(plain.path)["blobs"]} == {"raw"}
    for r in (packed, plain, xz):   # all three decode to the same program
        _, program, _, _ = read_lm(r.path)
        assert np.array_equal(program.constants["MLA_0/dense_add_relu_5"].w_q,
                              model.program.constants["MLA_0/dense_add_relu_5"].w_q)


def test_report_text_and_metadata(mnist_models, tmp_path):
    model = mnist_models["mixed"]
    target = Target(l1_bytes=64 * 1024)
    report = model.compile(str(tmp_path), batch_size=2, target=target)
    text = str(report)
    for word in ("layer", "prec", "L2 B", "DRAM B", "tiles", "cycles", "total", "compile time", ".lm",
                 "MLA_0/conv2d_add_relu_2", "int16", "spilled to DRAM"):
        assert word in text, word
    assert report.compile_seconds > 0 and report.totals["cycles"] > 0
    header = read_lm_header(report.path)
    assert header["format"] == "mixq.lm" and header["version"] == LM_FORMAT_VERSION
    meta = header["meta"]
    assert meta["batch_size"] == 2 and meta["target"]["l1_bytes"] == 64 * 1024 and meta["compiled_at"]
    _, _, plan, _ = read_lm(report.path)
    assert plan.target == target and plan.to_dict() == report.plan.to_dict()


def _rewrite_header(path, change):
    """Apply ``change`` to the header JSON and re-sign it (a well-formed file saying something else)."""
    data = open(path, "rb").read()
    magic, n, _ = _PRE.unpack(data[:_PRE.size])
    header = json.loads(data[_PRE.size:_PRE.size + n])
    change(header)
    body = data[_PRE.size + n:]
    for _ in range(4):
        raw = json.dumps(header, separators=(",", ":")).encode()
        header["file_size"] = _PRE.size + len(raw) + len(body)
    raw = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(_PRE.pack(magic, len(raw), hashlib.sha256(raw).digest()) + raw + body)


@pytest.fixture
def lm_file(mnist_models, tmp_path):
    return mnist_models["int8"].compile(str(tmp_path)).path


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def test_corrupt_header_is_refused(lm_file):
    _flip(lm_file, _PRE.size + 20)
    with pytest.raises(ModelFileError, match="header checksum mismatch") as e:
        read_lm(lm_file)
    assert repr(lm_file) in str(e.value)


def test_corrupt_blob_is_refused(lm_file):
    _flip(lm_file, os.path.getsize(lm_file) - 100)
    with pytest.raises(ModelFileError, match="checksum mismatch .data is corrupt"):
        read_lm(lm_file)


@pytest.mark.parametrize("keep", [5, 30, 200, -1000, -1])
def test_truncated_file_is_refused(lm_file, keep):
    data = open(lm_file, "rb").read()
    open(lm_file, "wb").write(data[:keep])
    with pytest.raises(ModelFileError, match="truncated|wrong magic") as e:
        read_lm(lm_file)
    assert lm_file in str(e.value)


def test_newer_version_is_refused(lm_file):
    _rewrite_header(lm_file, lambda h: h.update(version=LM_FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"format version {LM_FORMAT_VERSION + 1}.*upgrade mixq"):
        read_lm(lm_file)


def test_newer_program_version_is_refused(lm_file):
    _rewrite_header(lm_file, lambda h: h["program"]["program_format"].update(version=99))
    with pytest.raises(ModelFileError, match="program of format version 99"):
        read_lm(lm_file)


def test_foreign_and_crafted_files_are_refused(lm_file, tmp_path):
    sima = tmp_path / "m.sima"
    from core.formats.sima import write_sima

    write_sima(sima, {"a": np.zeros(3)}, {})
    with pytest.raises(ModelFileError, match="wrong magic"):
        read_lm(sima)
    with pytest.raises(ModelFileError, match="cannot read"):
        read_lm(tmp_path / "absent.lm")

    def object_dtype(h):
        h["blobs"][0]["dtype"] = "|O"

    _rewrite_header(lm_file, object_dtype)
    with pytest.raises(ModelFileError, match="only bool/numeric"):
        read_lm(lm_file)


def test_bomb_and_codec_faults_are_refused(mnist_models, tmp_path):
    path = mnist_models["int8"].compile(str(tmp_path)).path

    def lie_about_size(h):
        b = next(b for b in h["blobs"] if b["codec"] == "zlib")
        b["nbytes"] *= 2
        b["shape"] = [b["nbytes"] // np.dtype(b["dtype"]).itemsize]

    _rewrite_header(path, lie_about_size)
    with pytest.raises(ModelFileError, match="inflates to"):
        read_lm(path)
    path = mnist_models["int8"].compile(str(tmp_path)).path
    _rewrite_header(path, lambda h: h["blobs"][0].update(codec="brotli"))
    with pytest.raises(ModelFileError, match="unknown codec"):
        read_lm(path)


def test_failed_write_leaves_the_old_file(mnist_models, tmp_path, monkeypatch):
    import core.formats.atomic as atomic

    model = mnist_models["int8"]
    path = model.compile(str(tmp_path)).path
    before = open(path, "rb").read()

    def replace_fails(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", replace_fails)
    with pytest.raises(ModelFileError, match="No space left"):
        model.compile(str(tmp_path), compress=False)
    monkeypatch.undo()
    assert open(path, "rb").read() == before and before[:8] == LM_MAGIC
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]      # the temp file is gone
    with pytest.raises(ValueError, match="compress"):
        write_lm(tmp_path / "x.lm", model.program, "x", compress="brotli")


def _island_onnx():
    """conv+relu, mul by a constant (a float island), global average pool, flatten, gemm (an
    output), softmax (APU, an output)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
             "k": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
             "wd": rng.standard_normal((5, 4)).astype(np.float32) * 0.5,
             "bd": rng.standard_normal(5).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Mul", ["a", "k"], ["m"]),
             helper.make_node("GlobalAveragePool", ["m"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "wd", "bd"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "islands", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_float_islands_apu_nodes_and_int32_outputs_round_trip(tmp_path):
    import onnx

    from core import ScalarType, default_quantization, int16_quantization, load_model, onnx_source

    onnx.save(_island_onnx(), str(tmp_path / "islands.onnx"))
    net = load_model(onnx_source(str(tmp_path / "islands.onnx"), {"x": [1, 3, 8, 8]}, {"x": ScalarType.float32}))
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32) * 1.5
    stats = net.calibrate([{"x": x[i:i + 4]} for i in range(0, 8, 4)])
    dense = next(n.name for n in net.graph.nodes if n.op == "Gemm")
    configs = {"int8": default_quantization, "int16": int16_quantization,
               "output_int32": default_quantization.with_custom_quantization_configs({dense: {"output_int32": True}})}
    for label, cfg in configs.items():
        model = net.quantize(stats, cfg, model_name=f"islands_{label}")
        assert {"float", "apu"} <= set(model.program.kinds.values())
        _, program, plan, _ = read_lm(model.compile(str(tmp_path / label)).path)
        assert "float32" in {p.precision for p in plan.layers}
        for fast in (False, True):
            want = model.execute({"x": x}, fast_mode=fast)
            got = run_program(program, {"x": x}, fast_mode=fast)
            for o, w in zip(model.output_names, want):
                assert np.array_equal(got[o], w), (label, fast, o)
