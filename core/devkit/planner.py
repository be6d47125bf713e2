"""The memory planner behind ``Model.compile``: where each tensor lives, which layers are tiled,
what spills to DRAM, and an estimated cycle count, from a :class:`Target` description.

Rules (see docs/accelerator.md):

* **Sizes.** A tensor's bytes are its element count at the compiled batch size (dimension 0 is
  the batch) times its storage width: 1 byte for an 8-bit tensor, 2 for 16-bit, 4 for a 32-bit
  accumulator; float tensors (APU) use their dtype. A layer's weight bytes are its integer
  weights (``w_q``), its int32 bias and 5 bytes per output channel of requantization parameters
  (int32 multiplier + int8 shift); float / APU nodes count their float constants.
* **Homes (live ranges).** An activation lives from its producer (graph inputs: from the start)
  to its last consumer (graph outputs: to the end). Walking the nodes in order, a tensor is homed
  in L2 when it fits next to the L2-homed tensors still alive at the moment it is produced, else
  in DRAM (it *spills*); a tensor keeps its home for its whole life and frees its L2 bytes after
  its last consumer. Weights stay in DRAM and stream through L1.
* **Tiles.** A layer's working set is inputs + outputs + weights. A layer whose working set
  exceeds L1 is split into ``ceil(working set / L1)`` tiles: along the output channels when its
  weights are the larger part of it, else along the output rows.
* **Cycles.** ``max(compute, data movement)``: compute = MACs / MACs-per-cycle of the layer's
  precision (int8 or int16) for conv / dense / matmul, elements / vector ops-per-cycle for the
  other integer ops, elements / APU ops-per-cycle for float nodes; data movement = bytes of
  L2-homed activations / L2 bandwidth + bytes of DRAM-homed activations and weights / DRAM
  bandwidth + the working set / L1 bandwidth.

Pure numpy + stdlib (it runs inside ``Model.compile`` and its output is stored in the ``.lm``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from core.ops.quant_rules import rule_of
from core.quantization.quant_data import NodeQuant

__all__ = ["Target", "LayerPlan", "MemoryPlan", "CompileReport", "plan_memory", "KiB", "MiB", "GiB"]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator as the planner sees it. Defaults describe a generic edge MLA:

    ============================  ==========  ==============================================
    field                         default     meaning
    ============================  ==========  ==============================================
    ``l1_bytes``                  256 KiB     L1 scratchpad of the compute core
    ``l2_bytes``                  4 MiB       on-chip L2, shared
    ``dram_bytes``                2 GiB       off-chip DRAM
    ``l1_bandwidth``              256         bytes / cycle between L1 and the compute array
    ``l2_bandwidth``              64          bytes / cycle between L2 and L1
    ``dram_bandwidth``            16          bytes / cycle between DRAM and L1
    ``int8_macs_per_cycle``       4096        int8 x int8 multiply-accumulates per cycle
    ``int16_macs_per_cycle``      1024        int16 MACs per cycle (1/4 of int8)
    ``vector_ops_per_cycle``      256         elementwise / pooling integer ops per cycle
    ``apu_ops_per_cycle``         8           float ops per cycle of the APU (float nodes)
    ``clock_hz``                  1 GHz       clock of the estimate (cycles -> seconds)
    ============================  ==========  ==============================================
    """

    name: str = "mixq-generic-mla"
    l1_bytes: int = 256 * KiB
    l2_bytes: int = 4 * MiB
    dram_bytes: int = 2 * GiB
    l1_bandwidth: float = 256.0
    l2_bandwidth: float = 64.0
    dram_bandwidth: float = 16.0
    int8_macs_per_cycle: float = 4096.0
    int16_macs_per_cycle: float = 1024.0
    vector_ops_per_cycle: float = 256.0
    apu_ops_per_cycle: float = 8.0
    clock_hz: float = 1.0e9

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name == "name":
                if not isinstance(self.name, str) or not self.name:
                    raise ValueError("Target.name must be a non-empty string")
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(v)) or v <= 0:
                raise ValueError(f"Target.{f.name} must be a positive number, got {v!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Target has no field(s) {unknown}")
        return cls(**d)

    def describe(self) -> str:
        return (f"{self.name}: L1 {_size(self.l1_bytes)}, L2 {_size(self.l2_bytes)}, DRAM {_size(self.dram_bytes)}; "
                f"bandwidth L1/L2/DRAM {self.l1_bandwidth:g}/{self.l2_bandwidth:g}/{self.dram_bandwidth:g} B/cycle; "
                f"{self.int8_macs_per_cycle:g} int8 / {self.int16_macs_per_cycle:g} int16 MACs/cycle at "
                f"{self.clock_hz / 1e6:g} MHz")


@dataclasses.dataclass
class LayerPlan:
    """One node of the plan (bytes at the compiled batch size)."""

    index: int
    name: str
    op: str
    kind: str            # "int" | "float" | "apu"
    precision: str       # "int8" | "int16" | "float32"
    input_bytes: int
    output_bytes: int
    weight_bytes: int
    l2_bytes: int        # of this layer's inputs + outputs, the bytes homed in L2
    dram_bytes: int      # ... and the bytes homed in DRAM (spilled)
    tiles: int
    split: str           # "-" | "rows" | "channels"
    macs: int
    compute_cycles: int
    movement_cycles: int
    cycles: int

    @property
    def working_set(self) -> int:
        return self.input_bytes + self.output_bytes + self.weight_bytes


@dataclasses.dataclass
class MemoryPlan:
    """The plan: per-layer rows, where each activation lives, and totals."""

    target: Target
    batch_size: int
    layers: list[LayerPlan]
    homes: dict[str, str]                # activation tensor -> "L2" | "DRAM"
    tensor_bytes: dict[str, int]
    totals: dict[str, Any]

    def to_dict(self) -> dict:
        return {"target": self.target.to_dict(), "batch_size": self.batch_size,
                "layers": [dataclasses.asdict(layer) for layer in self.layers],
                "homes": dict(self.homes), "tensor_bytes": dict(self.tensor_bytes), "totals": dict(self.totals)}

    @classmethod
    def from_dict(cls, d: dict) -> MemoryPlan:
        return cls(Target.from_dict(d["target"]), int(d["batch_size"]), [LayerPlan(**row) for row in d["layers"]],
                   dict(d["homes"]), {k: int(v) for k, v in d["tensor_bytes"].items()}, dict(d["totals"]))

    def table(self) -> str:
        """The per-layer table and the totals, as text."""
        head = ("#", "layer", "op", "prec", "in B", "out B", "weights B", "L2 B", "DRAM B", "tiles", "split", "cycles")
        rows = [head]
        for p in self.layers:
            rows.append((str(p.index), p.name, p.op, p.precision, f"{p.input_bytes:,}", f"{p.output_bytes:,}",
                         f"{p.weight_bytes:,}", f"{p.l2_bytes:,}", f"{p.dram_bytes:,}", str(p.tiles), p.split,
                         f"{p.cycles:,}"))
        t = self.totals
        rows.append(("", "total", "", "", f"{t['input_bytes']:,}", f"{t['output_bytes']:,}", f"{t['weight_bytes']:,}",
                     f"{t['l2_bytes']:,}", f"{t['dram_bytes']:,}", str(t["tiles"]), "", f"{t['cycles']:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        left = {1, 2, 3, 10}
        lines = []
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         .rstrip())
            if k == 0 or k == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(
            f"activations: {t['activation_tensors']} tensors, {t['activation_bytes']:,} bytes; peak live "
            f"{t['peak_live_bytes']:,} bytes, peak in L2 {t['peak_l2_bytes']:,} of {self.target.l2_bytes:,}; "
            f"spilled to DRAM: {t['spilled_tensors']} tensors, {t['spilled_bytes']:,} bytes")
        lines.append(f"tiled layers: {t['tiled_layers']} ({t['tiles']} tiles in all); estimated "
                     f"{t['cycles']:,} cycles = {t['estimated_seconds'] * 1e3:.3f} ms at "
                     f"{self.target.clock_hz / 1e6:g} MHz (batch {self.batch_size})")
        return "\n".join(lines)


@dataclasses.dataclass
class CompileReport:
    """What ``Model.compile`` did: the memory plan, the ``.lm`` written, its size and the
    compression ratio of its constant data, and the compile time. ``str(report)`` is the table."""

    model_name: str
    path: str
    plan: MemoryPlan
    compile_seconds: float
    lm_bytes: int
    constant_bytes: int          # constant data, uncompressed
    stored_constant_bytes: int   # as stored in the .lm
    codec: str                   # "zlib" | "lzma" | "none"

    @property
    def compression_ratio(self) -> float:
        return self.constant_bytes / self.stored_constant_bytes if self.stored_constant_bytes else 1.0

    @property
    def totals(self) -> dict[str, Any]:
        return self.plan.totals

    @property
    def layers(self) -> list[LayerPlan]:
        return self.plan.layers

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def target(self) -> Target:
        return self.plan.target

    def __str__(self) -> str:
        return (f"compiled {self.model_name!r} to {self.path} (batch size {self.batch_size})\n"
                f"target {self.target.describe()}\n{self.plan.table()}\n"
                f"compile time {self.compile_seconds:.3f} s; .lm {self.lm_bytes:,} bytes; constant data "
                f"{self.constant_bytes:,} -> {self.stored_constant_bytes:,} bytes "
                f"(compression {self.codec}, ratio {self.compression_ratio:.2f}x)")

    def __repr__(self) -> str:
        t = self.totals
        return (f"CompileReport({self.model_name!r}, {len(self.layers)} layers, spilled {t['spilled_bytes']} B, "
                f"tiles {t['tiles']}, {t['cycles']} cycles, .lm {self.lm_bytes} B, ratio {self.compression_ratio:.2f})")


def _size(n: float) -> str:
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= k and n % k == 0:
            return f"{n // k:g} {unit}"
    return f"{n:g} B"


# --------------------------------------------------------------------------- planning

def _elements(shape: tuple[int, ...], batch_size: int) -> int:
    if not shape:
        return 1
    return batch_size * int(math.prod(max(int(d), 0) for d in shape[1:]))


def _itemsize(program, name: str) -> int:
    q = program.tensors.get(name)
    if q is not None:
        return {8: 1, 16: 2}.get(int(q.bits), 4)
    info = program.graph.tensors.get(name)
    return int(np.dtype(info.dtype).itemsize) if info is not None else 4


def _weight_bytes(program, node) -> int:
    kind = program.kinds.get(node.name, "apu")
    c = program.constants.get(node.name) or NodeQuant()
    if kind == "int":
        total = 0
        w = c.w_q
        if isinstance(w, np.ndarray):
            total += w.nbytes
        b = c.bias_q
        if isinstance(b, np.ndarray):
            total += b.size * 4
        m = c.multiplier
        if isinstance(m, np.ndarray):
            total += m.size * 5
        return int(total)
    consts = program.graph.constants
    return int(sum(np.asarray(consts[i]).nbytes for i in set(node.inputs) if i in consts))


def _precision(program, node, acts: list[str], outs: list[str]) -> str:
    if program.kinds.get(node.name, "apu") != "int":
        return "float32"
    bits = [program.tensors[t].bits for t in acts + outs if t in program.tensors]
    w = (program.constants.get(node.name) or NodeQuant()).w_q
    if isinstance(w, np.ndarray):
        bits.append(w.dtype.itemsize * 8)
    return "int16" if any(b == 16 for b in bits) else "int8"


def _macs(program, node, out_shape: tuple[int, ...], batch_size: int) -> int:
    rule = rule_of(node)
    if program.kinds.get(node.name) != "int" or not getattr(rule, "weighted", False):
        return 0
    w = (program.constants.get(node.name) or NodeQuant()).w_q
    out_elems = _elements(out_shape, batch_size)
    if not isinstance(w, np.ndarray) or not out_shape:
        return 0
    channels = out_shape[rule.channel_axis] if len(out_shape) > 1 else out_shape[-1]
    return int(out_elems * (w.size // max(int(channels), 1)))


def plan_memory(program, batch_size: int = 1, target: Target | None = None) -> MemoryPlan:
    """Plan ``program`` (a :class:`~core.quantization.quantizer.QuantizedProgram`) for ``target``
    (default :class:`Target`) at ``batch_size``; see the module docstring for the rules."""
    target = target or Target()
    if not isinstance(target, Target):
        raise TypeError(f"target must be a core.devkit.planner.Target, got {type(target).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    g = program.graph
    consts = g.constants
    nodes = list(g.nodes)
    end = len(nodes)

    def shape(t: str) -> tuple[int, ...]:
        info = g.tensors.get(t)
        return tuple(info.shape) if info is not None else ()

    # activations: graph inputs and node outputs; their sizes and live ranges
    produced: dict[str, int] = {t: -1 for t in g.inputs if t not in consts}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o and o not in consts:
                produced[o] = i
    last_use = dict(produced)
    for i, n in enumerate(nodes):
        for t in n.inputs:
            if t in produced:
                last_use[t] = max(last_use[t], i)
    for t in g.outputs:
        if t in produced:
            last_use[t] = end
    size = {t: _elements(shape(t), batch_size) * _itemsize(program, t) for t in produced}

    homes: dict[str, str] = {}
    in_l2: dict[str, int] = {}
    live: set[str] = set()
    peak_l2 = peak_live = 0

    def place(t: str) -> None:
        nonlocal peak_l2
        used = sum(in_l2.values())
        if used + size[t] <= target.l2_bytes:
            homes[t] = "L2"
            in_l2[t] = size[t]
            peak_l2 = max(peak_l2, used + size[t])
        else:
            homes[t] = "DRAM"
        live.add(t)

    for t, p in produced.items():
        if p == -1:
            place(t)
    layers: list[LayerPlan] = []
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o in produced and produced[o] == i:
                place(o)
        peak_live = max(peak_live, sum(size[t] for t in live))
        acts = [t for t in dict.fromkeys(n.inputs) if t in produced]
        outs = [t for t in dict.fromkeys(n.outputs) if t in produced]
        in_b = sum(size[t] for t in acts)
        out_b = sum(size[t] for t in outs)
        w_b = _weight_bytes(program, n)
        l2_b = sum(size[t] for t in acts + outs if homes[t] == "L2")
        dram_b = sum(size[t] for t in acts + outs if homes[t] == "DRAM")
        working = in_b + out_b + w_b
        tiles = max(1, math.ceil(working / target.l1_bytes))
        split = "-" if tiles == 1 else ("channels" if w_b > in_b + out_b else "rows")
        precision = _precision(program, n, acts, outs)
        out_shape = shape(outs[0]) if outs else ()
        macs = _macs(program, n, out_shape, batch_size)
        kind = program.kinds.get(n.name, "apu")
        if macs:
            rate = target.int16_macs_per_cycle if precision == "int16" else target.int8_macs_per_cycle
            compute = macs / rate
        else:
            elems = max(sum(_elements(shape(t), batch_size) for t in acts + outs), 1)
            compute = elems / (target.vector_ops_per_cycle if kind == "int" else target.apu_ops_per_cycle)
        movement = l2_b / target.l2_bandwidth + (dram_b + w_b) / target.dram_bandwidth + working / target.l1_bandwidth
        compute_c, movement_c = math.ceil(compute), math.ceil(movement)
        layers.append(LayerPlan(i, n.name, n.op, kind, precision, in_b, out_b, w_b, l2_b, dram_b, tiles, split, macs,
                                compute_c, movement_c, max(compute_c, movement_c)))
        for t in acts + outs:  # free what this node was the last to use
            if last_use[t] <= i:
                live.discard(t)
                in_l2.pop(t, None)

    spilled = [t for t, h in homes.items() if h == "DRAM"]
    cycles = sum(p.cycles for p in layers)
    totals = {
        "layers": len(layers),
        "input_bytes": sum(p.input_bytes for p in layers),
        "output_bytes": sum(p.output_bytes for p in layers),
        "weight_bytes": sum(p.weight_bytes for p in layers),
        "l2_bytes": sum(p.l2_bytes for p in layers),
        "dram_bytes": sum(p.dram_bytes for p in layers),
        "activation_tensors": len(size),
        "activation_bytes": sum(size.values()),
        "peak_live_bytes": peak_live,
        "peak_l2_bytes": peak_l2,
        "spilled_tensors": len(spilled),
        "spilled_bytes": sum(size[t] for t in spilled),
        "tiles": sum(p.tiles for p in layers),
        "tiled_layers": sum(1 for p in layers if p.tiles > 1),
        "macs": sum(p.macs for p in layers),
        "cycles": cycles,
        "estimated_seconds": cycles / target.clock_hz,
    }
    return MemoryPlan(target, batch_size, layers, homes, size, totals)
