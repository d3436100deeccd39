"""Oracle of the sparse float32 family (SparseWeight): the dense product of the stored weight.

The kernels sum in block order in float32; the tolerance against this float64 product is
1e-5 * (|x| @ |w|.T) + 1e-30 per output (the same as the 4-bit float mode).
"""

from __future__ import annotations

import numpy as np

from .gemm_s8 import gelu


def linear_sparse(x: np.ndarray, w_dense: np.ndarray, bias: np.ndarray | None = None,
                  activation: str | None = None) -> np.ndarray:
    """y = x @ w.T (+ bias), then relu or gelu, in float64, returned as float32."""
    y = x.astype(np.float64) @ w_dense.astype(np.float64).T
    if bias is not None:
        y = y + bias.astype(np.float64)[None, :]
    y = y.astype(np.float32)
    if activation == "relu":
        y = np.maximum(y, np.float32(0))
    elif activation == "gelu":
        y = gelu(y)
    return y
