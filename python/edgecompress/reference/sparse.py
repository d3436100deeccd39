"""Oracle of the sparse float32 family (SparseWeight, N:M included): the dense product of the stored weight.

The kernels sum in float32 in an order of their own (block order, SIMD lanes, spills); the
tolerance against this float64 product (``tolerance``) is gamma(K + 2) * (|x| @ |w|.T + |bias|)
per output (rounding.py: K products and additions, the bias, this oracle's own rounding to
float32), about (K + 2) * 6e-8: 1e-5 at K = 166, 6e-5 at K = 1024, 6e-2 at K = 2^20.
"""

from __future__ import annotations

import numpy as np

from .gemm_s8 import gelu
from .rounding import gamma


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


def tolerance(x: np.ndarray, w_dense: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The allowed |kernel - oracle| per output before the activation (module docstring)."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(w_dense.astype(np.float64)).T
    if bias is not None:
        mag = mag + np.abs(bias.astype(np.float64))[None, :]
    return gamma(w_dense.shape[1] + 2) * mag + 1e-30
