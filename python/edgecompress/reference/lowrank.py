"""Oracle of LowRankWeight: W = U @ V with u (N, r) and v (r, K).

Float32 factors: y = (x @ v.T) @ u.T (+ bias), then the activation, in float64. The kernels round
the r-long intermediate to float32 and sum in float32, so the tolerance per output is
``2e-5 * ((|x| @ |v|.T) @ |u|.T + |bias|)`` (``tolerance``).
Int8 factors: two int8 layers in a row, each bit-exact (``linear_int8`` on v, then on u).
"""

from __future__ import annotations

import numpy as np

from .gemm_s8 import gelu


def linear_lowrank(x: np.ndarray, u: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None,
                   activation: str | None = None) -> np.ndarray:
    """y = (x @ v.T) @ u.T (+ bias), then relu or gelu, in float64, returned as float32."""
    t = x.astype(np.float64) @ v.astype(np.float64).T
    y = t @ u.astype(np.float64).T
    if bias is not None:
        y = y + bias.astype(np.float64)[None, :]
    y = y.astype(np.float32)
    if activation == "relu":
        y = np.maximum(y, np.float32(0))
    elif activation == "gelu":
        y = gelu(y)
    return y


def tolerance(x: np.ndarray, u: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The allowed |kernel - oracle| per output of the float32 low-rank product."""
    mag = (np.abs(x.astype(np.float64)) @ np.abs(v.astype(np.float64)).T) @ np.abs(u.astype(np.float64)).T
    if bias is not None:
        mag = mag + np.abs(bias.astype(np.float64))[None, :]
    return 2e-5 * mag + 1e-30
