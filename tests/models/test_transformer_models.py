"""ViT / Swin / ConvNeXt-style models and a YOLOv8-style detection head (tests/models/builders.py)
through mixq: they load, match onnxruntime in float at any batch, quantize to INT8 / INT16 /
mixed precision with sensible output SQNR, and the analysis and sensitivity ranking run on them."""
import numpy as np
import onnx
import pytest

from core import QuantizationPrecision, default_quantization, int16_quantization, load_model, onnx_source
from core.search.ranking import rank_nodes_by_output_gain
from tests.models.builders import MODELS

NAMES = sorted(MODELS)
# held-out INT8 output SQNR floors (measured: vit 25, swin 31, convnext 32, yolov8_head 63 dB)
INT8_FLOOR = {"vit": 20.0, "swin": 26.0, "convnext": 27.0, "yolov8_head": 55.0}


def sqnr(ref, got) -> float:
    ref = np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-30)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("tfmodels")
    for name in NAMES:
        proto = MODELS[name]()
        path = str(root / f"{name}.onnx")
        onnx.save(proto, path)
        shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        rng = np.random.default_rng(3)
        calib = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(32)]
        held_out = rng.standard_normal([16] + shape[1:]).astype(np.float32)
        net = load_model(onnx_source(path))
        out[name] = dict(path=path, net=net, calib=calib, x=held_out, stats=net.calibrate(calib),
                         ref=net.execute({"input": held_out})[0])
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_float_matches_onnxruntime(models, name, batch):
    import onnxruntime as ort

    m = models[name]
    sess = ort.InferenceSession(m["path"], providers=["CPUExecutionProvider"])
    x = m["x"][:batch]
    want = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(batch)])
    got = m["net"].execute({"input": x})[0]   # one batch: the import-batch-1 constants follow it
    assert got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    print(f"{name} batch {batch}: float max error / max |output| = {rel:.2e}")
    assert rel <= 1e-4


def test_patterns_are_fused_and_mask_code_folded(models):
    ops = {name: [n.op for n in models[name]["net"].graph.nodes] for name in NAMES}
    for name in ("vit", "swin", "convnext"):
        assert {"Erf", "Pow", "Sqrt", "ReduceMean"}.isdisjoint(ops[name]), name
        assert ops[name].count("Gelu") == 2, name
    assert ops["vit"].count("LayerNormalization") == 5      # written out at opset 14, fused
    assert ops["swin"].count("LayerNormalization") == 6
    assert {"ScatterND", "Where", "Equal", "Not", "Mod", "Range", "Expand"}.isdisjoint(ops["swin"] + ops["vit"])
    assert {"Range", "Expand"}.isdisjoint(ops["yolov8_head"])


@pytest.mark.parametrize("name", NAMES)
def test_int8_and_int16_output_sqnr(models, name):
    m = models[name]
    int8 = m["net"].quantize(m["stats"], default_quantization)
    int16 = m["net"].quantize(m["stats"], int16_quantization)
    s8 = sqnr(m["ref"], int8.execute({"input": m["x"]})[0])
    s16 = sqnr(m["ref"], int16.execute({"input": m["x"]})[0])
    seen = np.concatenate([c["input"] for c in m["calib"][:8]])
    s16_seen = sqnr(m["net"].execute({"input": seen})[0], int16.execute({"input": seen})[0])
    print(f"{name}: INT8 {s8:.1f} dB, INT16 {s16:.1f} dB held out ({s16_seen:.1f} dB on calibration inputs); "
          f"float islands {len(int8.program.float_islands)}")
    assert s8 >= INT8_FLOOR[name]
    assert s16 >= s8 + 15
    # held-out inputs exceed the 32 calibration samples' ranges (clipping); within them INT16 is > 60 dB
    assert s16_seen >= 60


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_ranking_and_mixed_precision(models, name):
    m = models[name]
    int8 = m["net"].quantize(m["stats"], default_quantization)
    # ranked on 16 calibration samples (4 ViT samples are 40 logits: too few to rank 45 nodes by)
    samples = np.concatenate([c["input"] for c in m["calib"][:16]])
    ranking = rank_nodes_by_output_gain(m["net"], int8, {"input": samples})
    ops = {n.name: n.op for n in int8.program.graph.nodes}
    assert any(ops[node] in ("LayerNormalization", "Gelu") for node, _ in ranking)   # float islands ranked too
    # every node's probe sees what its INT16 override widens (its inputs, outputs and the layout ops
    # sharing their grid). Leaving only the node's own output float, the Transpose / Reshape after a
    # MatMul re-quantized it on the same grid: 12 of ViT's 45 nodes scored exactly 0 (now 1: a
    # Softmax whose 16-bit output is re-quantized to 8 bits downstream, its measured gain 0.03 dB)
    zeros = [node for node, gain in ranking if gain == 0.0]
    assert len(zeros) <= len(ranking) // 10, zeros
    top = [node for node, gain in ranking[:4]]
    cfg = default_quantization.with_custom_quantization_configs(
        {node: {"quantization_precision": QuantizationPrecision.INT_16} for node in top})
    mixed = m["net"].quantize(m["stats"], cfg)
    s8 = sqnr(m["ref"], int8.execute({"input": m["x"]})[0])
    s_mixed = sqnr(m["ref"], mixed.execute({"input": m["x"]})[0])
    print(f"{name}: INT8 {s8:.1f} dB, INT8 + top-4 ranked nodes in INT16 {s_mixed:.1f} dB ({top})")
    assert s_mixed > s8


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_per_layer_analysis_runs(models, name):
    m = models[name]
    model = m["net"].quantize(m["stats"], default_quantization)
    for local in (True, False):
        report = model.analyze_quantization_error([{"input": m["x"][i:i + 1]} for i in range(2)], "mae",
                                                  local_feed=local)
        assert "LayerNormalization" in str(report)


def test_yolov8_decode_tail_on_apu_and_int8_detections_close_to_float(models):
    m = models["yolov8_head"]
    nodes = m["net"].graph.nodes
    by_source = {n.source_name: n for n in nodes}
    softmax = next(n for n in nodes if n.op == "Softmax")
    assert softmax.segment.startswith("APU")
    tail = nodes[nodes.index(softmax):]
    assert all(n.segment.startswith("APU") for n in tail)           # DFL conv, decode, output Concat
    assert by_source["/Concat_out"].segment.startswith("APU")
    int8 = m["net"].quantize(m["stats"], default_quantization)
    got = int8.execute({"input": m["x"]})[0]
    box, score = sqnr(m["ref"][:, :4], got[:, :4]), sqnr(m["ref"][:, 4:], got[:, 4:])
    print(f"yolov8_head INT8: box SQNR {box:.1f} dB, score SQNR {score:.1f} dB")
    assert box >= 50 and score >= 35


@pytest.mark.parametrize("name", NAMES)
def test_int8_close_to_onnxruntime_static_quantizer(models, name, tmp_path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    m = models[name]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(m["calib"])

        def get_next(self):
            return next(self.it, None)

    qpath = str(tmp_path / "qdq.onnx")
    quantize_static(m["path"], qpath, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sess = ort.InferenceSession(qpath, providers=["CPUExecutionProvider"])
    theirs = np.concatenate([sess.run(None, {"input": m["x"][i:i + 1]})[0] for i in range(len(m["x"]))])
    ours = m["net"].quantize(m["stats"], default_quantization).execute({"input": m["x"]})[0]
    s_ort, s_mixq = sqnr(m["ref"], theirs), sqnr(m["ref"], ours)
    print(f"{name}: INT8 output SQNR mixq {s_mixq:.1f} dB, onnxruntime quantize_static {s_ort:.1f} dB")
    assert s_mixq >= s_ort - 6


@pytest.mark.parametrize("name", NAMES)
def test_exported_integer_onnx_equals_execute_at_batch_3(models, name, tmp_path):
    import onnxruntime as ort

    m = models[name]
    model = m["net"].quantize(m["stats"], default_quantization)
    path = str(tmp_path / "int.onnx")
    model.export_onnx(path, form="integer")
    x = m["x"][:3]
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = model.execute({"input": x})[0]
    attention = [k for k, c in model.program.constants.items() if c.kernel in ("matmul_int", "softmax_int")]
    if attention:   # their integer ONNX lowering is not written yet: float between exact steps, a few LSB apart
        assert all(k in onnx.load(path).doc_string for k in attention)
        assert sqnr(want, got) >= 30
    else:
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
