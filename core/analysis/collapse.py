"""Collapse detection: a quantized node whose output no longer follows the float model.

A node *collapses* when, fed the float model's inputs (local feed), its dequantized output

* became constant while the float output varies, and its local SQNR is below 30 dB (a saturated
  HardSigmoid gate varying by 1e-4 around 1 is constant on the grid and right: 70 dB), or
* has a local SQNR below an absolute floor (``COLLAPSE_FLOOR_DB``: 8 dB for 8-bit nodes, 15 dB
  for 16-bit ones; a healthy INT8 node sits at 25-50 dB, an INT16 one at 60-95), or
* has a local SQNR ``COLLAPSE_GAP_DB`` (25 dB) below the median of its quantized neighbours (up
  to ``NEIGHBOURS`` nodes before and after it in graph order, same precision) and below 30 dB.

What this found: GoogLeNet's final Gemm at 4.7 dB among 50-60 dB neighbours (a clipped bias).
Nodes whose float output is all zero, and float / APU nodes, are never flagged.
:func:`core.analysis.layer_error.analyze_quantization_error` reports collapses in
``LayerErrorReport.collapses`` (table column, plot in red); ``LoadedNet.quantize`` runs

:func:`core.analysis.layer_error.check_collapses` on one calibration sample and warns
(:class:`core.errors.QuantizationCollapseWarning`) naming each collapsed node.
"""
from __future__ import annotations

import math
import statistics as _statistics
from dataclasses import dataclass

__all__ = ["COLLAPSE_FLOOR_DB", "COLLAPSE_GAP_DB", "NEIGHBOURS", "Collapse", "find_collapses"]

COLLAPSE_FLOOR_DB = {"int8": 8.0, "int16": 15.0, "int32 out": 8.0}
COLLAPSE_GAP_DB = 25.0
_GAP_CEILING_DB = 30.0
NEIGHBOURS = 4


@dataclass(frozen=True)
class Collapse:
    node: str
    op: str
    precision: str
    sqnr: float                 # local SQNR (dB)
    neighbours_sqnr: float      # median local SQNR of its neighbours (nan if none)
    reason: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op}, {self.precision}): {self.reason}"


def find_collapses(entries) -> list[Collapse]:
    """``entries``: graph-ordered ``(node, op, precision, sqnr, float_varies, float_nonzero,
    quantized_constant)`` of every node. Returns the collapsed quantized nodes, in graph order."""
    quantized = [e for e in entries if e[2] in COLLAPSE_FLOOR_DB and e[5]]
    found = []
    for k, (node, op, precision, sqnr, float_varies, _nonzero, q_constant) in enumerate(quantized):
        near = [e[3] for e in quantized[max(0, k - NEIGHBOURS):k] + quantized[k + 1:k + 1 + NEIGHBOURS]
                if e[2] == precision and math.isfinite(e[3])]
        median = _statistics.median(near) if near else math.nan
        if q_constant and float_varies and sqnr < _GAP_CEILING_DB:
            reason = f"output became constant (local SQNR {sqnr:.1f} dB)"
        elif sqnr < COLLAPSE_FLOOR_DB[precision]:
            reason = f"local SQNR {sqnr:.1f} dB is below the {COLLAPSE_FLOOR_DB[precision]:.0f} dB floor"
        elif near and sqnr < median - COLLAPSE_GAP_DB and sqnr < _GAP_CEILING_DB:
            reason = f"local SQNR {sqnr:.1f} dB, {median - sqnr:.0f} dB below its neighbours' ({median:.1f} dB)"
        else:
            continue
        found.append(Collapse(node, op, precision, float(sqnr), float(median), reason))
    return found
