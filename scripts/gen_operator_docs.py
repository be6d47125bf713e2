"""Writes docs/operators.md from the op registry (the one place the supported list is kept)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from core.ops.registry import supported_ops_markdown  # noqa: E402

HEADER = """# Supported operators

Generated from the op registry (`core/ops/registry.py`) by `make docs`; do not edit by hand.
"Runs on" is where the partitioner places the op: MLA (the accelerator, quantized) or APU
(stays float). Ops marked "MLA or APU" depend on the node (e.g. a MatMul runs on the MLA only
with constant weights, Resize only in nearest mode).

"""


def render() -> str:
    return HEADER + supported_ops_markdown()


if __name__ == "__main__":
    out = pathlib.Path(__file__).resolve().parents[1] / "docs" / "operators.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(render())
    print(f"wrote {out}")
