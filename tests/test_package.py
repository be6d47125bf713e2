"""Package-level promises: a flat public API and a light ``import core``."""
import subprocess
import sys


def test_public_names_import_flat_from_core():
    import core

    for name in ["load_model", "onnx_source", "ImporterParams", "LoadedNet", "ScalarType",
                 "ModelLoadError", "UnsupportedOperatorError", "InputError", "MixqError"]:
        assert hasattr(core, name), name
        assert name in core.__all__


def test_import_core_stays_light():
    code = (
        "import sys, core; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'tensorflow', 'prefect', 'mlflow', 'PIL') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_core_never_imports_prefect_or_mlflow():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "core"
    offenders = [
        str(p) for p in root.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+(prefect|mlflow)\b", p.read_text(), re.M)
    ]
    assert offenders == []
