"""Model.save / Model.load: bit-identical round trips for every quantization configuration, the
Netron .sima.json view, and files that are corrupt, crafted or from a newer mixq."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct

import numpy as np
import pytest

import core.formats.atomic as atomic
import core.formats.sima as sima
from core import (
    HistogramPercentileMethod,
    MinMaxMethod,
    Model,
    QuantizationPrecision,
    RequantizationMode,
    ScalarType,
    default_quantization,
    int16_quantization,
    load_model,
    onnx_source,
    quantization_scheme,
)
from core.errors import ModelFileError
from core.formats import read_sima, write_sima
from core.formats.program_io import PROGRAM_FORMAT_VERSION, load_program, save_program

CONV = "MLA_0/conv2d_add_relu_0"
DEPTHWISE = "MLA_0/conv2d_add_clip_1"
DENSE = "MLA_0/dense_add_6"


def _small_onnx():
    """conv+relu, depthwise conv+clip, add, mul by a constant (a float island), global average
    pool, flatten, gemm (a graph output), softmax (APU)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = {
        "w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
        "b1": rng.standard_normal(4).astype(np.float32) * 0.1,
        "wdw": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.5,
        "bdw": rng.standard_normal(4).astype(np.float32) * 0.1,
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
        "k": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
        "wd": rng.standard_normal((5, 4)).astype(np.float32) * 0.5,
        "bd": rng.standard_normal(5).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "wdw", "bdw"], ["d"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Clip", ["d", "lo", "hi"], ["e"]),
        helper.make_node("Add", ["a", "e"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["m"]),
        helper.make_node("GlobalAveragePool", ["m"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wd", "bd"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    onnx.save(_small_onnx(), str(path))
    return load_model(onnx_source(str(path), {"x": [1, 3, 8, 8]}, {"x": ScalarType.float32}))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32) * 1.5


@pytest.fixture(scope="module")
def stats(net, x):
    return net.calibrate([{"x": x[i : i + 4]} for i in range(0, 16, 4)])


CONFIGS = {
    "int8": default_quantization,
    "int16": int16_quantization,
    "mixed": default_quantization.with_custom_quantization_configs(
        {DEPTHWISE: {"quantization_precision": QuantizationPrecision.INT_16}}),
    "output_int32": default_quantization.with_custom_quantization_configs({DENSE: {"output_int32": True}}),
    "tflite": default_quantization.with_requantization_mode(RequantizationMode.tflite),
    "int16_tflite": int16_quantization.with_requantization_mode(RequantizationMode.tflite),
    "per_tensor_minmax": default_quantization.with_weight_quantization(quantization_scheme(False, False, 8))
    .with_activation_quantization(quantization_scheme(False, False, 8)).with_calibration(MinMaxMethod()),
    "percentile_16x8": int16_quantization.with_weight_quantization(quantization_scheme(False, True, 8))
    .with_calibration(HistogramPercentileMethod(percentile=99.9, num_bins=512)),
}


@pytest.fixture(scope="module")
def models(net, stats):
    return {k: net.quantize(stats, cfg, model_name=f"small_{k}") for k, cfg in CONFIGS.items()}


def _assert_same_outputs(a: Model, b: Model, x: np.ndarray) -> None:
    for fast in (False, True):
        out_a, out_b = a.execute({"x": x}, fast_mode=fast), b.execute({"x": x}, fast_mode=fast)
        assert len(out_a) == len(out_b)
        for p, q in zip(out_a, out_b):
            assert p.dtype == q.dtype and np.array_equal(p, q)


def _same(a, b) -> bool:
    """Equal values of the same types, arrays bit-identical with the same dtype."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(p, q) for p, q in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


@pytest.mark.parametrize("config", list(CONFIGS))
def test_round_trip_is_bit_identical(models, x, tmp_path, config):
    model = models[config]
    model.save(f"small_{config}", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"small_{config}.sima", f"small_{config}.sima.json"]
    loaded = Model.load(f"small_{config}", str(tmp_path))
    assert loaded.name == f"small_{config}"
    _assert_same_outputs(model, loaded, x)
    p, q = model.program, loaded.program
    assert q.params == p.params and q.requantization_mode is p.requantization_mode
    assert q.kinds == p.kinds and q.tensors == p.tensors and _same(q.meta, p.meta)
    assert list(q.constants) == list(p.constants)
    for k in p.constants:
        assert _same(q.constants[k], p.constants[k]), k
    g, h = p.graph, q.graph
    assert (h.name, h.inputs, h.outputs, h.opset) == (g.name, g.inputs, g.outputs, g.opset)
    assert [(n.name, n.op, n.inputs, n.outputs, n.segment, n.source_name) for n in h.nodes] == \
           [(n.name, n.op, n.inputs, n.outputs, n.segment, n.source_name) for n in g.nodes]
    assert all(_same(m.attrs, n.attrs) for m, n in zip(h.nodes, g.nodes))
    assert all(_same(h.constants[k], g.constants[k]) for k in g.constants) and list(h.constants) == list(g.constants)
    assert {k: (t.shape, t.dtype) for k, t in h.tensors.items()} == {
        k: (t.shape, t.dtype) for k, t in g.tensors.items()
    }
    # one graph saved; the float graph is a copy sharing the constant arrays
    f = loaded.float_graph
    assert f is not h and all(f.constants[k] is h.constants[k] for k in h.constants)
    assert all(h.tensors[k].value is h.constants[k] for k in h.constants)
    assert [n.name for n in f.nodes] == [n.name for n in h.nodes]


def test_sima_json_layers_and_int16_flags(models, tmp_path):
    for config in ("int8", "mixed", "int16"):
        model = models[config]
        model.save(config, str(tmp_path))
        with open(tmp_path / f"{config}.sima.json", encoding="utf-8") as fh:
            doc = json.load(fh)
        layers = doc["config"]["layers"]
        g = model.program.graph
        assert [l["name"] for l in layers] == list(g.inputs) + [n.name for n in g.nodes]
        assert layers[0]["class_name"] == "InputLayer" and layers[0]["inbound_nodes"] == []
        by_name = {l["name"]: l for l in layers}
        tq = model.program.tensors
        for n in g.nodes:
            layer = by_name[n.name]
            cfg = layer["config"]
            assert layer["class_name"] == n.op and cfg["segment"] == n.segment
            assert cfg["kind"] == model.program.kinds[n.name]
            assert "Layer Statistics" in cfg and cfg["Layer Statistics"] is None
            acts = [i for i in n.inputs if i and i not in g.constants]
            producers = [next((m.name for m in g.nodes if i in m.outputs), i) for i in acts]
            assert [e[0] for e in layer["inbound_nodes"][0]] == producers
            expected16 = cfg["kind"] != "apu" and any(tq[i].bits == 16 for i in acts)
            assert cfg["input_int16"] is expected16
            if cfg["kind"] != "apu":
                assert cfg["scales"] == [tq[o].scale for o in n.outputs]
                assert cfg["zero_points"] == [tq[o].zero_point for o in n.outputs]
            if n.op == "Conv":
                assert len(cfg["weight_scales"]) == 4 and cfg["weight_bits"] in (8, 16)
        if config == "int8":
            assert not any(l["config"]["input_int16"] for l in layers)
            assert {l["config"]["precision"] for l in layers} == {"int8", "float32"}
        elif config == "mixed":
            assert by_name[DEPTHWISE]["config"]["input_int16"] is True
            assert by_name[DEPTHWISE]["config"]["precision"] == "int16"
            assert by_name[DEPTHWISE]["config"]["weight_bits"] == 16
            assert by_name[CONV]["config"]["input_int16"] is False
            assert by_name[DENSE]["config"]["input_int16"] is False
        else:
            mla = [l for l in layers[1:] if l["config"]["kind"] != "apu"]
            assert mla and all(l["config"]["input_int16"] and l["config"]["precision"] == "int16" for l in mla)
        assert doc["config"]["output_layers"] == [["APU_0/softmax_7", 0, 0]]


def test_file_naming_and_default_directory(models, x, tmp_path, monkeypatch):
    model = models["int8"]
    monkeypatch.chdir(tmp_path)
    model.save("m.sima")                              # ".sima" not doubled; cwd by default
    assert sorted(os.listdir(tmp_path)) == ["m.sima", "m.sima.json"]
    assert Model.load("m").name == "m" and Model.load("m.sima").name == "m"
    nested = tmp_path / "a" / "b"
    model.save("n", str(nested))                      # created when missing
    assert sorted(os.listdir(nested)) == ["n.sima", "n.sima.json"]
    _assert_same_outputs(model, Model.load("n", str(nested)), x[:3])
    with pytest.raises(ModelFileError, match="nope.sima"):
        Model.load("nope", str(tmp_path))
    with pytest.raises(ModelFileError):
        model.save("")


def test_generic_constants_and_attrs_round_trip(models, tmp_path):
    """Every value type (in the free-form meta), int16 weights, exotic attribute values all survive."""
    import copy
    import dataclasses

    src = models["int8"].program
    program = copy.copy(src)
    program.constants = {k: dataclasses.replace(v) for k, v in src.constants.items()}
    program.constants[CONV].w_q = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    program.graph = src.graph.copy()
    extra = {
        "w16": np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        "f32": np.float32(0.1),
        "f64": np.float64(1 / 3),
        "i64": np.int64(-3),
        "c64": np.complex64(1 - 2j),
        "u8": np.uint8(200),
        "f16": np.float16(0.5),
        "inf": float("-inf"),
        "flag": np.bool_(True),
        "tup": (1, 2.5, "a", None),
        "blob": b"\x00\x01\xff",
        "none": None,
        "weird": {"__array__": "not a tag", 3: "int key", (1, 2): [np.uint8(7)]},
        "strs": np.array(["ab", "c"]),
        "empty": np.zeros((0, 3), np.float64),
        "nan": float("nan"),
        "big": 2**70,
        "dt": np.dtype(np.int16),
        "mode": RequantizationMode.tflite,
    }
    program.graph.nodes[0].attrs["extra"] = {"t": (np.array([1.5, 2.5], np.float16),), "b": b"xy"}
    program.meta = dict(src.meta, note=("x", 1), extra=extra)
    save_program(tmp_path / "g.sima", tmp_path / "g.sima.json", "g", program)
    name, loaded = load_program(tmp_path / "g.sima")
    assert name == "g"
    assert loaded.constants[CONV] == program.constants[CONV]
    assert loaded.constants[CONV].w_q.dtype == np.int16
    assert _same(loaded.meta["extra"], extra)
    assert _same(loaded.graph.nodes[0].attrs, program.graph.nodes[0].attrs)
    assert _same(loaded.meta, program.meta)
    json.loads((tmp_path / "g.sima.json").read_text())


# --------------------------------------------------------------------------- bad files

def _good_file(models, tmp_path, name="good") -> str:
    models["int8"].save(name, str(tmp_path))
    return str(tmp_path / f"{name}.sima")


def _rewrite(path: str, mutate, out: str | None = None) -> str:
    """Rewrite a .sima with ``mutate(metadata_document)`` applied (arrays kept)."""
    arrays, doc = read_sima(path)
    mutate(doc)
    out = out or path
    write_sima(out, arrays, doc)
    return out


def _node(doc, i=0):
    return doc["graph"]["nodes"][i]


BAD_DOCUMENTS = {
    "missing key": lambda d: d.pop("kinds"),
    "missing graph key": lambda d: d["graph"].pop("nodes"),
    "missing node key": lambda d: _node(d).pop("op"),
    "wrong type": lambda d: d["graph"].__setitem__("opset", "13"),
    "wrong type nodes": lambda d: d["graph"].__setitem__("nodes", {"a": 1}),
    "unknown op": lambda d: _node(d).__setitem__("op", "EvilOp"),
    "dangling input": lambda d: _node(d, 1)["inputs"].__setitem__(0, "no_such_tensor"),
    "missing graph output": lambda d: d["graph"]["outputs"].append("ghost"),
    "missing array": lambda d: d["graph"]["constants"].__setitem__("w1", {"__array__": "graph/constants/ghost"}),
    "unknown tag": lambda d: _node(d)["attrs"].__setitem__("x", {"__reduce__": ["os.system", ["true"]]}),
    "two tags": lambda d: _node(d)["attrs"].__setitem__("x", {"__tuple__": [], "__bytes__": ""}),
    "unknown enum": lambda d: d.__setitem__("requantization_mode", {"__enum__": "os.system"}),
    "unknown enum member": lambda d: d.__setitem__("requantization_mode", {"__enum__": "RequantizationMode.evil"}),
    "enum of wrong type": lambda d: d.__setitem__("requantization_mode", {"__enum__": "QuantizationPrecision.INT_8"}),
    "unknown class": lambda d: d.__setitem__(
        "params", {"__object__": {"class": "os.system", "fields": {"command": "true"}}}
    ),
    "dotted class": lambda d: d["params"]["__object__"].__setitem__(
        "class", "core.quantization.params.QuantizationParams"
    ),
    "unknown field": lambda d: d["params"]["__object__"]["fields"].__setitem__("__class__", "x"),
    "invalid field value": lambda d: d["params"]["__object__"]["fields"].__setitem__("bias_correction", "yes"),
    "bad tensor quant": lambda d: d["tensors"]["x"]["__object__"]["fields"].__setitem__("bits", 7),
    "bad kind": lambda d: d["kinds"].__setitem__(CONV, "exec"),
    "kinds mismatch": lambda d: d["kinds"].pop(CONV),
    "constants of unknown node": lambda d: d["constants"].__setitem__("ghost", {}),
    "bad dtype": lambda d: d["graph"]["tensors"]["x"].__setitem__("dtype", "|O"),
    "bad dtype tag": lambda d: _node(d)["attrs"].__setitem__("x", {"__dtype__": "O"}),
    "no program_format": lambda d: d.pop("program_format"),
    "foreign format": lambda d: d["program_format"].__setitem__("name", "other.program"),
    "duplicate node": lambda d: _node(d, 1).__setitem__("name", _node(d, 0)["name"]),
    "params not params": lambda d: d.__setitem__("params", {"__enum__": "RequantizationMode.sima"}),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_invalid_documents_raise_model_file_error(models, tmp_path, case):
    path = _rewrite(_good_file(models, tmp_path), BAD_DOCUMENTS[case])
    with pytest.raises(ModelFileError) as info:
        Model.load("good", str(tmp_path))
    assert path in str(info.value)


def test_newer_program_format_is_refused(models, tmp_path):
    path = _rewrite(_good_file(models, tmp_path),
                    lambda d: d["program_format"].__setitem__("version", PROGRAM_FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match=f"version {PROGRAM_FORMAT_VERSION + 1}.*upgrade mixq") as info:
        Model.load(path)
    assert path in str(info.value)


def _sentinel_command(tmp_path) -> tuple[str, str]:
    sentinel = str(tmp_path / "pwned")
    return sentinel, f"touch {sentinel}"


def test_crafted_documents_cannot_run_code(models, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    sentinel, cmd = _sentinel_command(tmp_path)
    crafted = [
        lambda d: d.__setitem__("params", {"__object__": {"class": "os.system", "fields": {"command": cmd}}}),
        lambda d: d.__setitem__("params", {"__object__": {"class": "posix.system", "fields": {"command": cmd}}}),
        lambda d: d.__setitem__("requantization_mode", {"__enum__": "os.system"}),
        lambda d: d.__setitem__("meta", {"__reduce__": ["os.system", [cmd]]}),
        lambda d: d.__setitem__("meta", {"__object__": {"class": "Popen", "fields": {"args": cmd}}}),
        lambda d: _node(d).__setitem__("op", "__import__('os').system"),
    ]
    for i, mutate in enumerate(crafted):
        path = _rewrite(_good_file(models, tmp_path, f"c{i}"), mutate)
        with pytest.raises(ModelFileError, match=f"c{i}.sima"):
            Model.load(path)
    assert calls == [] and not os.path.exists(sentinel)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _rewrite_header(path: str, mutate) -> None:
    """Change the container header in place (same length, padded with JSON whitespace)."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    pre = struct.Struct("<8sQ32s")
    magic, hlen, _ = pre.unpack_from(data)
    header = json.loads(data[pre.size : pre.size + hlen])
    mutate(header)
    new = json.dumps(header, separators=(",", ":")).encode()
    assert len(new) <= hlen
    new = new.ljust(hlen, b" ")
    data[: pre.size + hlen] = pre.pack(magic, hlen, hashlib.sha256(new).digest()) + new
    with open(path, "wb") as fh:
        fh.write(bytes(data))


def test_pickle_payload_in_arrays_is_refused(models, tmp_path, monkeypatch):
    sentinel, cmd = _sentinel_command(tmp_path)
    payload = np.frombuffer(pickle.dumps(_Evil(cmd)), np.uint8).copy()   # os.system by reference
    assert b"system" in payload.tobytes()
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    good = _good_file(models, tmp_path)
    arrays, doc = read_sima(good)
    arrays["evil"] = payload
    doc["meta"]["evil"] = {"__array__": "evil"}
    write_sima(good, arrays, doc)
    assert load_program(good)[1].meta["evil"].dtype == np.uint8      # just bytes while it is bytes

    def to_object(header):
        for e in header["arrays"]:
            if e["name"] == "evil":
                e["dtype"] = "|O8"
    _rewrite_header(good, to_object)
    with pytest.raises(ModelFileError, match="good.sima") as info:
        Model.load(good)
    assert "dtype" in str(info.value)
    assert calls == [] and not os.path.exists(sentinel)


def test_corrupt_files_raise_model_file_error(models, tmp_path):
    good = _good_file(models, tmp_path)
    raw = open(good, "rb").read()
    variants = {
        "truncated": raw[: len(raw) - 10],
        "truncated_header": raw[:100],
        "flipped_data": raw[:-5] + bytes([raw[-5] ^ 0x01]) + raw[-4:],
        "flipped_header": raw[:60] + bytes([raw[60] ^ 0x20]) + raw[61:],
        "empty": b"",
        "not_sima": b'{"class_name": "Functional"}',
    }
    for name, data in variants.items():
        path = tmp_path / f"{name}.sima"
        path.write_bytes(data)
        with pytest.raises(ModelFileError) as info:
            Model.load(name, str(tmp_path))
        assert str(path) in str(info.value), (name, str(info.value))
    with pytest.raises(ModelFileError, match="missing.sima"):
        Model.load("missing", str(tmp_path))
    # a .sima that is a valid container but not a program
    write_sima(tmp_path / "plain.sima", {"a": np.zeros(3)}, {"hello": 1})
    with pytest.raises(ModelFileError, match="plain.sima.*program_format"):
        Model.load("plain", str(tmp_path))


def test_absurdly_nested_header_is_refused(tmp_path):
    header = ('{"format":"mixq.sima","version":1,"minor_version":0,"metadata":{"x":' + "[" * 100000
              + "]" * 100000 + '},"file_size":0,"arrays":[]}').encode()
    path = tmp_path / "deep.sima"
    path.write_bytes(struct.pack("<8sQ32s", sima.MAGIC, len(header), hashlib.sha256(header).digest()) + header)
    with pytest.raises(ModelFileError, match="deep.sima"):
        Model.load(str(path))


def test_failed_save_leaves_previous_model_intact(models, x, tmp_path, monkeypatch):
    good = _good_file(models, tmp_path, "m")
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}

    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "fsync", boom)      # fails after the data is written, before the rename
    with pytest.raises(ModelFileError, match="m.sima"):
        models["int16"].save("m", str(tmp_path))
    monkeypatch.undo()

    def raise_midway(*a, **k):
        raise RuntimeError("interrupted")
    monkeypatch.setattr(sima.hashlib, "sha256", raise_midway)   # raises inside write_sima's writer
    with pytest.raises(RuntimeError):
        models["int16"].save("m", str(tmp_path))
    monkeypatch.undo()

    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before   # no temp files either
    _assert_same_outputs(models["int8"], Model.load(good), x[:4])


def test_output_directory_that_is_a_file(models, tmp_path):
    (tmp_path / "f").write_text("not a directory")
    with pytest.raises(ModelFileError, match="f"):
        models["int8"].save("m", str(tmp_path / "f"))
    with pytest.raises(ModelFileError):
        models["int8"].save("m", str(tmp_path / "f" / "sub"))
    assert os.listdir(tmp_path) == ["f"]


def test_unsaveable_values_raise_before_writing(models, tmp_path):
    import copy
    import dataclasses

    program = copy.copy(models["int8"].program)
    nq = program.constants[CONV]
    program.constants = dict(program.constants, **{CONV: dataclasses.replace(nq, tflite_kernel=print)})
    with pytest.raises(ModelFileError, match="cannot be saved"):
        save_program(tmp_path / "u.sima", tmp_path / "u.sima.json", "u", program)
    program.constants[CONV] = dataclasses.replace(nq, const_q=np.array([object()]))
    with pytest.raises(ModelFileError, match="dtype object"):
        save_program(tmp_path / "u.sima", tmp_path / "u.sima.json", "u", program)
    assert os.listdir(tmp_path) == []
