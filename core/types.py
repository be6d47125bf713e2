"""Scalar types users name in dtype_dict (``ScalarType.float32``), mapped to numpy."""
from __future__ import annotations

import enum

import numpy as np


class ScalarType(enum.Enum):
    bool = "bool"
    int8 = "int8"
    uint8 = "uint8"
    int16 = "int16"
    uint16 = "uint16"
    int32 = "int32"
    uint32 = "uint32"
    int64 = "int64"
    uint64 = "uint64"
    float16 = "float16"
    float32 = "float32"
    float64 = "float64"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.value)

    @classmethod
    def from_numpy(cls, dtype) -> ScalarType:
        return cls(np.dtype(dtype).name)
