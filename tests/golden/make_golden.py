"""Write the golden integer outputs that ``tests/test_bit_identity.py`` holds mixq to.

Run from the repository root with the commit whose numbers are the reference:
``.venv/bin/python tests/golden/make_golden.py``. It writes ``tests/golden/outputs.npz`` (the
outputs of ``Model.execute`` for each model and configuration in :mod:`tests.golden.cases`) and,
with TensorFlow, the TFLite op models of ``tests/importers/test_tflite_prequantized.py`` under
``tests/golden/tflite/`` (committed, so the test needs no converter). Regenerate only when a change
of numbers is intended, and say so in the commit.
"""
from __future__ import annotations

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.golden.cases import GOLDEN_FILE, TFLITE_DIR, all_outputs  # noqa: E402


def write_tflite_models() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from tests.importers.conftest import to_tflite
    from tests.importers.test_tflite_prequantized import _op_models

    os.makedirs(TFLITE_DIR, exist_ok=True)
    rng = np.random.default_rng(0)
    calib = rng.normal(size=(24, 12, 12, 3)).astype(np.float32)
    for mode in ("int8", "16x8"):
        tf.keras.utils.set_random_seed(0)
        for name, m in _op_models(tf).items():
            if mode == "16x8" and name in ("logistic", "softmax"):
                continue
            data = to_tflite(tf, m, mode, lambda: ([c[None]] for c in calib))
            with open(os.path.join(TFLITE_DIR, f"{name}_{mode}.tflite"), "wb") as f:
                f.write(data)


def main() -> int:
    if "--no-tflite" not in sys.argv:
        write_tflite_models()
    outputs = all_outputs()
    tmp = GOLDEN_FILE + ".tmp.npz"
    np.savez_compressed(tmp, **outputs)
    os.replace(tmp, GOLDEN_FILE)
    print(f"wrote {len(outputs)} arrays to {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
