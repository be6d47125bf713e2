"""The devkit-side runtime: execute a ``.lm`` on the samples of an ``.npz``.

::

    python -m core.devkit run MODEL.lm INPUTS.npz OUTPUTS.npz [--timing TIMING.json]

Deploying it to a board means copying mixq's ``core`` package there (``PYTHONPATH`` pointing at
its parent) next to numpy: this module and everything it imports need numpy and the standard
library only (no onnx, onnxruntime, TensorFlow, Prefect, MLflow or paramiko).

* ``INPUTS.npz`` holds one array per model input, named by the input, with a leading *sample*
  axis: ``inputs[name][i]`` is sample ``i``'s value for ``name`` (its own shape starting with the
  model's batch dimension, usually 1). All samples have the same shape.
* Samples run in groups of the ``.lm``'s compiled ``batch_size`` (the last group may be smaller):
  a group's samples are concatenated along the batch dimension, executed with the exact
  (``fast_mode=False``) integer interpreter and split back. Integer execution is per-sample, so
  the outputs are bit-identical to ``Model.execute(fast_mode=False)`` on each sample.
* ``OUTPUTS.npz`` holds ``output_<k>`` (``k`` the position in the model's output list) with the
  same leading sample axis, and ``output_names`` (a unicode array of the output names).
* ``TIMING.json``: ``{"model", "samples", "batch_size", "load_seconds", "run_seconds",
  "total_seconds", "per_sample_seconds": [...], "batches": [{"first", "count", "seconds"}]}``;
  a sample's time is its group's time divided by the group's size.

Errors (bad files, wrong inputs, execution failures) exit with status 1 and one line on stderr
starting ``mixq-devkit: error:``; usage errors exit 2.

Test hook: ``MIXQ_DEVKIT_TEST_SLEEP=<seconds>`` makes the runtime sleep that long before it
loads anything (the accelerator-mode timeout tests use it); unset in production.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["run_lm", "main", "TEST_SLEEP_ENV"]

TEST_SLEEP_ENV = "MIXQ_DEVKIT_TEST_SLEEP"


class RuntimeFault(Exception):
    """A fault the command reports in one line (exit status 1)."""


def _load_inputs(path: str, graph) -> tuple[dict[str, np.ndarray], int]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise RuntimeFault(f"cannot read inputs {path!r}: {e}") from None
    except Exception as e:  # zipfile.BadZipFile and friends
        raise RuntimeFault(f"cannot read inputs {path!r}: {type(e).__name__}: {e}") from None
    expected = list(graph.inputs)
    unknown = sorted(set(arrays) - set(expected))
    missing = [k for k in expected if k not in arrays]
    if unknown or missing:
        raise RuntimeFault(f"inputs {path!r} hold {sorted(arrays)}, the model's inputs are {expected}")
    counts = {k: (arrays[k].shape[0] if arrays[k].ndim else -1) for k in expected}
    if len(set(counts.values())) != 1 or min(counts.values()) < 1:
        raise RuntimeFault(f"inputs {path!r}: every input needs the same number (>= 1) of samples along "
                           f"axis 0, got {counts}")
    for k in expected:
        info = graph.tensors[k]
        a = arrays[k]
        kinds = {"f": "f", "i": "i", "u": "i", "b": "b"}
        if kinds.get(a.dtype.kind) != kinds.get(np.dtype(info.dtype).kind):
            raise RuntimeFault(f"input {k!r} expects {np.dtype(info.dtype).name}, got {a.dtype.name}")
        if a.ndim != len(info.shape) + 1 or a.shape[2:] != tuple(info.shape[1:]) or a.shape[1] < 1:
            raise RuntimeFault(f"input {k!r} expects samples of shape {tuple(info.shape)} (any batch size) "
                               f"stacked along a leading axis, got {a.shape}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise RuntimeFault(f"input {k!r} holds NaN/Inf values: the quantized model needs finite inputs")
        arrays[k] = a.astype(info.dtype, copy=False)
    return arrays, next(iter(counts.values()))


def run_lm(lm_path: str, inputs_path: str, outputs_path: str, timing_path: str | None = None) -> dict:
    """Execute ``lm_path`` on every sample of ``inputs_path``; write ``outputs_path`` (and the
    timing JSON). Returns the timing dict. Raises ModelFileError / RuntimeFault / MixqError."""
    from core.devkit.lm import read_lm
    from core.formats.atomic import atomic_write
    from core.runtime.integer_interpreter import run_program

    t_start = time.perf_counter()
    name, program, plan, meta = read_lm(lm_path)
    batch_size = int(meta["batch_size"])
    inputs, samples = _load_inputs(inputs_path, program.graph)
    t_loaded = time.perf_counter()
    outputs = list(program.graph.outputs)
    results: list[list[np.ndarray]] = [[] for _ in outputs]
    per_sample: list[float] = []
    batches = []
    for first in range(0, samples, batch_size):
        count = min(batch_size, samples - first)
        feeds = {k: np.concatenate(list(v[first:first + count]), axis=0) if count > 1 else v[first]
                 for k, v in inputs.items()}
        per = {k: v.shape[1] for k, v in inputs.items()}   # each sample's own batch dimension
        t = time.perf_counter()
        env = run_program(program, feeds, fast_mode=False)
        seconds = time.perf_counter() - t
        b = next(iter(per.values()))
        for j, o in enumerate(outputs):
            y = np.asarray(env[o])
            if y.ndim == 0 or y.shape[0] != b * count:
                raise RuntimeFault(f"output {o!r} has shape {y.shape}; cannot split it into {count} samples")
            results[j].extend(y[i * b:(i + 1) * b] for i in range(count))
        batches.append({"first": first, "count": count, "seconds": seconds})
        per_sample.extend([seconds / count] * count)
    arrays = {f"output_{j}": np.stack(r) for j, r in enumerate(results)}
    arrays["output_names"] = np.array(outputs, dtype=str)

    def write_npz(f):
        np.savez(f, **arrays)

    atomic_write(outputs_path, write_npz, what="outputs")
    t_end = time.perf_counter()
    timing = {"model": name, "samples": samples, "batch_size": batch_size,
              "load_seconds": t_loaded - t_start, "run_seconds": sum(per_sample),
              "total_seconds": t_end - t_start, "per_sample_seconds": per_sample, "batches": batches}
    if timing_path:
        data = json.dumps(timing, indent=1).encode("utf-8")
        atomic_write(timing_path, lambda f: f.write(data), what="timing")
    return timing


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.devkit", description="mixq devkit runtime")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute a .lm on the samples of an .npz")
    r.add_argument("model", metavar="MODEL.lm")
    r.add_argument("inputs", metavar="INPUTS.npz")
    r.add_argument("outputs", metavar="OUTPUTS.npz")
    r.add_argument("--timing", metavar="TIMING.json")
    return p


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from core.errors import MixqError

    try:
        delay = os.environ.get(TEST_SLEEP_ENV)
        if delay:
            time.sleep(float(delay))
        if args.command == "run":
            run_lm(args.model, args.inputs, args.outputs, args.timing)
        return 0
    except (MixqError, RuntimeFault) as e:
        print(f"mixq-devkit: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("mixq-devkit: error: out of memory", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, on the devkit's stderr
        print(f"mixq-devkit: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 1
