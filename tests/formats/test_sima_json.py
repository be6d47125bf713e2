"""The Netron-viewable .sima.json companion file."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import core.formats.sima as sima
from core.errors import ModelFileError
from core.formats import read_sima_json, update_layer_statistics, write_sima_json

LAYERS = [
    {"name": "input_1", "op": "InputLayer", "inbound": [],
     "config": {"segment": "CPU", "precision": "float32", "batch_input_shape": [1, 3, 8, 8]}},
    {"name": "MLA_0/conv2d_add_5", "op": "MLA_0/Conv2DAddActivation_5", "inbound": ["input_1"],
     "config": {"segment": "MLA_0", "precision": "int16", "scales": np.array([0.5, 0.25], np.float32),
                "zero_points": [0, 0], "input_int16": True, "activ_attrs": None, "msb_left_shift": True,
                "Layer Statistics": ("mae", 3.9165286500938237)}},
    {"name": "MLA_0/relu_6", "op": "Relu", "inbound": ["MLA_0/conv2d_add_5"],
     "config": {"segment": "MLA_0", "precision": "int8", "scales": [np.float32(0.125)], "zero_points": [np.int64(-3)],
                "input_int16": False, "Layer Statistics": None}},
    {"name": "add_7", "op": "Add", "inbound": ["MLA_0/conv2d_add_5", "MLA_0/relu_6"],
     "config": {"segment": "MLA_0", "precision": "int8", "scales": [0.1], "zero_points": [1],
                "Layer Statistics": {"metric": "psnr", "error_value": 41.5}}},
    {"name": "side_out", "op": "Identity", "inbound": ["input_1"], "config": {}},
]


def _strict_load(path):
    def bad_constant(name):
        raise AssertionError(f"non-standard JSON constant {name} (Netron's JSON parser rejects it)")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=bad_constant)


def _write(tmp_path, layers=LAYERS, name="tut_resnet50.sima.json"):
    path = tmp_path / name
    write_sima_json(path, "tut_resnet50", layers)
    return path


def assert_netron_keras_readable(doc: dict) -> None:
    """The fields Netron's Keras reader (netron/keras.js, v9.3.3) relies on for a functional
    model in Keras JSON: ModelFactory.match needs ``class_name`` and ``config`` at the top;
    keras.Graph needs class_name Model/Functional, ``config.layers``, every layer with an
    ``inbound_nodes`` array (else the model is read as Sequential and loses its edges), each
    connection ``[layer_name: str, node_index: int, tensor_index: int, kwargs: {}]``, and
    ``input_layers``/``output_layers`` as ``[name, 0, 0]`` lists; keras.Node takes the node's
    name from ``layer.config.name`` and shows the other config keys as attributes."""
    assert isinstance(doc.get("class_name"), str) and isinstance(doc.get("config"), dict)
    assert doc["class_name"] in ("Model", "Functional")
    assert isinstance(doc.get("keras_version"), str) and isinstance(doc.get("backend"), str)
    cfg = doc["config"]
    assert isinstance(cfg.get("name"), str) and cfg["name"]
    layers = cfg["layers"]
    assert isinstance(layers, list) and layers
    names = [layer["name"] for layer in layers]
    assert len(set(names)) == len(names)
    for layer in layers:
        assert isinstance(layer["class_name"], str) and layer["class_name"]
        assert layer["class_name"] not in ("Model", "Functional", "Sequential")
        assert isinstance(layer["config"], dict) and layer["config"]["name"] == layer["name"]
        assert isinstance(layer["inbound_nodes"], list) and len(layer["inbound_nodes"]) <= 1
        for node in layer["inbound_nodes"]:
            assert isinstance(node, list) and node
            for conn in node:
                assert isinstance(conn, list) and len(conn) == 4
                src, node_index, tensor_index, kwargs = conn
                assert isinstance(src, str) and src in names
                assert type(node_index) is int and type(tensor_index) is int and kwargs == {}
    for key in ("input_layers", "output_layers"):
        assert isinstance(cfg[key], list) and cfg[key]
        for item in cfg[key]:
            assert isinstance(item, list) and len(item) == 3
            assert item[0] in names and type(item[1]) is int and type(item[2]) is int


def test_structure_is_netron_keras_json(tmp_path):
    path = _write(tmp_path)
    doc = _strict_load(path)
    assert_netron_keras_readable(doc)
    cfg = doc["config"]
    assert cfg["name"] == "tut_resnet50"
    assert [layer["name"] for layer in cfg["layers"]] == [layer["name"] for layer in LAYERS]
    assert [layer["class_name"] for layer in cfg["layers"]] == [layer["op"] for layer in LAYERS]
    assert cfg["input_layers"] == [["input_1", 0, 0]]
    assert cfg["output_layers"] == [["add_7", 0, 0], ["side_out", 0, 0]]
    by_name = {layer["name"]: layer for layer in cfg["layers"]}
    assert by_name["input_1"]["inbound_nodes"] == []
    assert by_name["add_7"]["inbound_nodes"] == [[["MLA_0/conv2d_add_5", 0, 0, {}], ["MLA_0/relu_6", 0, 0, {}]]]
    assert doc["mixq_format"] == {"name": "mixq.sima.json", "version": 1}
    assert read_sima_json(path) == doc


def test_layer_configs_carry_quantization_fields(tmp_path):
    doc = _strict_load(_write(tmp_path))
    by_name = {layer["name"]: layer["config"] for layer in doc["config"]["layers"]}
    conv = by_name["MLA_0/conv2d_add_5"]
    assert conv["input_int16"] is True and conv["precision"] == "int16" and conv["segment"] == "MLA_0"
    assert conv["scales"] == [0.5, 0.25] and conv["zero_points"] == [0, 0]
    assert conv["activ_attrs"] is None and conv["msb_left_shift"] is True
    assert conv["Layer Statistics"] == {"metric": "mae", "error_value": 3.9165286500938237,
                                        "__decode_key__": "LayerStats"}
    relu = by_name["MLA_0/relu_6"]
    assert relu["input_int16"] is False and relu["Layer Statistics"] is None
    assert relu["scales"] == [0.125] and relu["zero_points"] == [-3]
    assert by_name["add_7"]["Layer Statistics"] == {"metric": "psnr", "error_value": 41.5,
                                                    "__decode_key__": "LayerStats"}
    # defaults when the caller leaves them out
    assert by_name["side_out"] == {"name": "side_out", "input_int16": False, "Layer Statistics": None}
    # the seed's grep target: a text search for the string finds it
    text = (tmp_path / "tut_resnet50.sima.json").read_text()
    assert '"input_int16": true' in text and '"Layer Statistics": {' in text


def test_update_layer_statistics(tmp_path):
    path = _write(tmp_path)
    update_layer_statistics(path, {"MLA_0/relu_6": ("mse", np.float64(0.25)), "add_7": None,
                                   "input_1": ("mae", float("nan")), "side_out": ("psnr", float("inf"))})
    doc = _strict_load(path)
    assert_netron_keras_readable(doc)
    by_name = {layer["name"]: layer["config"] for layer in doc["config"]["layers"]}
    assert by_name["MLA_0/relu_6"]["Layer Statistics"] == {"metric": "mse", "error_value": 0.25,
                                                           "__decode_key__": "LayerStats"}
    assert by_name["add_7"]["Layer Statistics"] is None
    assert by_name["input_1"]["Layer Statistics"]["error_value"] == "nan"
    assert by_name["side_out"]["Layer Statistics"]["error_value"] == "inf"
    # untouched layers keep their statistics and everything else
    assert by_name["MLA_0/conv2d_add_5"]["Layer Statistics"]["error_value"] == 3.9165286500938237
    assert by_name["MLA_0/conv2d_add_5"]["input_int16"] is True
    assert os.listdir(tmp_path) == ["tut_resnet50.sima.json"]


def test_update_unknown_layer_changes_nothing(tmp_path):
    path = _write(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ModelFileError, match="'nope'") as info:
        update_layer_statistics(path, {"add_7": ("mae", 1.0), "nope": ("mae", 1.0)})
    assert "tut_resnet50.sima.json" in str(info.value)
    assert path.read_bytes() == before
    with pytest.raises(ModelFileError, match="error_value"):
        update_layer_statistics(path, {"add_7": ("mae", "lots")})
    assert path.read_bytes() == before


def test_update_is_atomic(tmp_path, monkeypatch):
    path = _write(tmp_path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sima.os, "replace", failing_replace)
    with pytest.raises(ModelFileError, match="Input/output error"):
        update_layer_statistics(path, {"add_7": ("mae", 9.0)})
    with pytest.raises(ModelFileError):
        write_sima_json(path, "other", LAYERS[:1])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["tut_resnet50.sima.json"]


def test_write_failure_midway_keeps_old_file(tmp_path, monkeypatch):
    path = _write(tmp_path)
    before = path.read_bytes()
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sima.os, "fsync", failing_fsync)
    with pytest.raises(ModelFileError, match="No space left"):
        write_sima_json(path, "other", LAYERS[:1])
    monkeypatch.setattr(sima.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["tut_resnet50.sima.json"]


@pytest.mark.parametrize("layers, match", [
    ([{"name": "a", "op": "X", "inbound": []}, {"name": "a", "op": "Y", "inbound": []}], "duplicate"),
    ([{"name": "a", "op": "X", "inbound": ["ghost"]}], "ghost"),
    ([{"name": "a", "op": "X", "inbound": ["a"]}], "itself"),
    ([{"name": "a", "op": "Functional", "inbound": []}], "nested model"),
    ([{"name": "", "op": "X"}], "no name"),
    ([{"name": "a", "inbound": []}], "no op"),
    ([{"name": "a", "op": "X", "config": {"w": object()}}], "object"),
    ([{"name": "a", "op": "X", "config": {"Layer Statistics": ("mae",)}}], "Layer Statistics"),
])
def test_bad_layers_are_refused_and_nothing_is_written(tmp_path, layers, match):
    path = tmp_path / "m.sima.json"
    with pytest.raises(ModelFileError, match=match):
        write_sima_json(path, "m", layers)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not UTF-8 JSON"),
    (b'{"layers": []}', "class_name"),
    (b'{"class_name": "Functional", "config": {"layers": [1]}}', "config.layers"),
    (b'{"class_name": "Functional", "config": {"layers": []}, "mixq_format": {"version": 9}}', "version 9"),
])
def test_read_refuses_malformed_files(tmp_path, content, match):
    path = tmp_path / "m.sima.json"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match) as info:
        read_sima_json(path)
    assert "m.sima.json" in str(info.value)
    with pytest.raises(ModelFileError):
        update_layer_statistics(path, {})
    assert path.read_bytes() == content


_NETRON_SCRIPT = r"""
import * as fs from 'fs';
import * as url from 'url';
const [dir, file] = process.argv.slice(2);
const keras = await import(url.pathToFileURL(dir + '/keras.js').href);
const obj = JSON.parse(fs.readFileSync(file, 'utf8'));
const ctx = {
  identifier: file.split('/').pop(), type: null, value: null,
  async peek(kind) { return kind === 'json' ? obj : null; },
  set(type, value) { this.type = type; this.value = value; return type; },
  async fetch(name) { throw new Error('no ' + name); },
  async metadata() { return { type: () => null, attribute: () => null, add: () => {} }; },
};
const factory = new keras.ModelFactory();
await factory.match(ctx);
if (ctx.type !== 'keras.config.json') { throw new Error('not matched: ' + ctx.type); }
const model = await factory.open(ctx);
const graphs = [];
for (const g of model.modules || model.graphs) {
  graphs.push({ name: g.name, inputs: g.inputs.map(a => a.name), outputs: g.outputs.map(a => a.name),
    nodes: g.nodes.map(n => ({ name: n.name, type: n.type && n.type.name,
      inputs: n.inputs.flatMap(a => a.value.map(v => v.name)),
      attributes: Object.fromEntries(n.attributes.map(a => [a.name, a.value])) })) });
}
console.log(JSON.stringify({ format: model.format, graphs }));
"""


def test_netron_keras_reader_opens_the_file(tmp_path):
    path = _write(tmp_path)
    script = tmp_path / "check.mjs"
    script.write_text(_NETRON_SCRIPT)
    # Netron's own reader: the pinned netron package (requirements.lock) under Debian's nodejs
    # (scripts/ensure_browser.sh installs it; `make test` runs that first).
    assert shutil.which("node"), "node not on PATH: run scripts/ensure_browser.sh"
    reader = os.environ.get("MIXQ_NETRON_DIR") or os.path.dirname(importlib.import_module("netron").__file__)
    proc = subprocess.run(["node", str(script), reader, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"].startswith("Keras")
    (graph,) = out["graphs"]
    assert graph["name"] == "tut_resnet50"
    assert graph["outputs"] == ["add_7", "side_out"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["add_7"]["type"] == "Add"
    assert nodes["add_7"]["inputs"] == ["MLA_0/conv2d_add_5[0][0]", "MLA_0/relu_6[0][0]"]
    conv = nodes["MLA_0/conv2d_add_5"]
    assert conv["attributes"]["input_int16"] is True
    assert conv["attributes"]["Layer Statistics"]["metric"] == "mae"
