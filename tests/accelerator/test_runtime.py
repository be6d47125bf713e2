"""The devkit runtime, ``python -m core.devkit run``: numpy only, bit-identical outputs, timing,
one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.devkit.testing import REPO

HEAVY = ("onnx", "onnxruntime", "tensorflow", "prefect", "mlflow", "paramiko", "scipy", "torch", "optuna")


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core.devkit", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, **(env or {})), timeout=120)


@pytest.fixture(scope="module")
def compiled(mnist_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    model = mnist_models["mixed"]
    return model, model.compile(str(d), batch_size=3).path


def test_outputs_are_bit_identical_and_timed(compiled, digits, tmp_path):
    model, lm = compiled
    x = digits[:7]                                         # 7 samples in groups of 3, 3, 1
    np.savez(tmp_path / "in.npz", input=x[:, None])        # leading sample axis, each (1, 1, 28, 28)
    r = _run("run", lm, tmp_path / "in.npz", tmp_path / "out.npz", "--timing", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz", allow_pickle=False) as z:
        out = z["output_0"]
        assert list(z["output_names"]) == model.output_names
    want = model.execute({"input": x}, fast_mode=False)[0]
    assert out.shape == (7, 1, 10) and out.dtype == np.float32
    assert np.array_equal(out[:, 0], want)
    timing = json.loads((tmp_path / "t.json").read_text())
    assert timing["samples"] == 7 and timing["batch_size"] == 3 and timing["model"] == model.name
    assert [b["count"] for b in timing["batches"]] == [3, 3, 1] and len(timing["per_sample_seconds"]) == 7
    assert timing["total_seconds"] >= timing["run_seconds"] > 0


def test_samples_with_their_own_batch(compiled, digits, tmp_path):
    model, lm = compiled
    x = digits[:8].reshape(4, 2, 1, 28, 28)                # 4 samples of batch 2
    np.savez(tmp_path / "in.npz", input=x)
    assert _run("run", lm, tmp_path / "in.npz", tmp_path / "out.npz").returncode == 0
    with np.load(tmp_path / "out.npz") as z:
        out = z["output_0"]
    assert out.shape == (4, 2, 10)
    assert np.array_equal(out.reshape(8, 10), model.execute({"input": digits[:8]})[0])


def test_runtime_imports_numpy_and_core_only(compiled, digits, tmp_path):
    _, lm = compiled
    np.savez(tmp_path / "in.npz", input=digits[:2, None])
    script = ("import runpy, sys, json\n"
              f"sys.argv = ['core.devkit', 'run', {lm!r}, {str(tmp_path / 'in.npz')!r}, {str(tmp_path / 'o.npz')!r}]\n"
              "try:\n    runpy.run_module('core.devkit', run_name='__main__', alter_sys=True)\n"
              "except SystemExit as e:\n    code = e.code\n"
              "print(json.dumps([code, sorted(sys.modules)]))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    code, modules = json.loads(r.stdout.strip().splitlines()[-1])
    assert code == 0 and os.path.isfile(tmp_path / "o.npz")
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"the devkit runtime imported {heavy}"
    assert "core.devkit.runtime" in modules and "core.devkit.transport" not in modules


def test_errors_are_one_line_with_nonzero_exit(compiled, digits, tmp_path):
    model, lm = compiled
    good = tmp_path / "in.npz"
    np.savez(good, input=digits[:2, None])
    cases = []
    r = _run("run", tmp_path / "absent.lm", good, tmp_path / "o.npz")
    cases.append((r, "absent.lm"))
    bad_lm = tmp_path / "bad.lm"
    data = bytearray(open(lm, "rb").read())
    data[200] ^= 0xFF
    bad_lm.write_bytes(bytes(data))
    cases.append((_run("run", bad_lm, good, tmp_path / "o.npz"), "not a valid .lm file"))
    np.savez(tmp_path / "wrong.npz", image=digits[:2, None])
    cases.append((_run("run", lm, tmp_path / "wrong.npz", tmp_path / "o.npz"), "the model's inputs are ['input']"))
    np.savez(tmp_path / "shape.npz", input=digits[:2])
    cases.append((_run("run", lm, tmp_path / "shape.npz", tmp_path / "o.npz"), "expects samples of shape"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases.append((_run("run", lm, tmp_path / "junk.npz", tmp_path / "o.npz"), "cannot read inputs"))
    for r, words in cases:
        assert r.returncode == 1, r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mixq-devkit: error:") and words in lines[0], r.stderr
    assert not (tmp_path / "o.npz").exists()
    usage = _run("frobnicate")
    assert usage.returncode == 2


def test_sleep_hook(compiled, digits, tmp_path):
    import time

    _, lm = compiled
    np.savez(tmp_path / "in.npz", input=digits[:1, None])
    t = time.perf_counter()
    r = _run("run", lm, tmp_path / "in.npz", tmp_path / "o.npz", env={"MIXQ_DEVKIT_TEST_SLEEP": "1"})
    assert r.returncode == 0 and time.perf_counter() - t >= 1.0
