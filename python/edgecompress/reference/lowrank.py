"""Oracle of LowRankWeight: W = U @ V with u (N, r) and v (r, K).

Float32 factors: y = (x @ v.T) @ u.T (+ bias), then the activation, in float64. The kernels sum
x @ v.T in float32 (K terms), round it to float32, then sum r terms and the bias in float32, so
the tolerance per output (``tolerance``) is gamma(K + r + 4) * ((|x| @ |v|.T) @ |u|.T + |bias|)
(rounding.py: the two sums' roundings in a row plus this oracle's own), about (K + r + 4) * 6e-8.
Int8 factors: two int8 layers in a row, each bit-exact (``linear_int8`` on v, then on u).
"""

from __future__ import annotations

import numpy as np

from .gemm_s8 import gelu
from .rounding import gamma


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
    return gamma(v.shape[1] + u.shape[1] + 4) * mag + 1e-30
