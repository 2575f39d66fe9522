"""numpy array aliases shared by the placement modules (one place, so they agree)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["BOOL", "F64", "I64", "U64"]

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]
