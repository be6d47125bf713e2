"""Operator implementations. Importing this package registers every op module."""
from core.ops import (  # noqa: F401
    activation,
    arith,
    conv,
    elementwise,
    gemm,
    indexing,
    logic,
    normalization,
    pool,
    resize,
    shape,
)
from core.ops.registry import OpDef, get_op, register, supported_ops  # noqa: F401
