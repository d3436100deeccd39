"""Oracle of the int8 GEMM family (W8A8): y = dequant(quant(x) @ W.T) + bias, then activation."""

from __future__ import annotations

import math

import numpy as np

# The weight quantizer is the format's own (Int8Weight.from_float); the oracle names it for its users.
from ..formats.int8 import quantize_weight_int8  # noqa: F401

_F32 = np.float32
_TINY = np.finfo(_F32).tiny  # smallest normal float32


def _reciprocal(s: np.ndarray) -> np.ndarray:
    """1 / s in float32: quantization multiplies by it (x * (1 / s), not x / s)."""
    return (_F32(1) / s).astype(_F32)


def quantize_rows_symmetric(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: s = max|x| / 127 (1 if that is not a normal float32), q = round_half_even(x * (1 / s))
    clipped to [-127, 127]."""
    x = np.asarray(x, dtype=_F32)
    s = (np.abs(x).max(axis=1, initial=_F32(0)) / _F32(127)).astype(_F32)
    s[~(s >= _TINY)] = 1
    with np.errstate(over="ignore"):
        q = np.clip(np.round(np.clip(x * _reciprocal(s)[:, None], -512, 512)), -127, 127).astype(np.int8)
    return q, s


def quantize_rows_asymmetric(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, uint8 with a zero point; the range always includes 0 so that 0 is exact.

    s = max(x, 0) / 255 - min(x, 0) / 255 (two quotients: the difference could overflow float32;
    1 if not a normal float32), zp = round(-min * (1 / s)), q = clip(round(x * (1 / s)) + zp, 0, 255).
    """
    x = np.asarray(x, dtype=_F32)
    lo = np.minimum(x.min(axis=1, initial=_F32(0)), _F32(0))
    hi = np.maximum(x.max(axis=1, initial=_F32(0)), _F32(0))
    s = (hi / _F32(255) - lo / _F32(255)).astype(_F32)
    s[~(s >= _TINY)] = 1
    inv = _reciprocal(s)
    zp = np.clip(np.round(np.clip(-lo * inv, 0, 255)), 0, 255).astype(np.int32)
    with np.errstate(over="ignore"):
        q = np.clip(np.round(np.clip(x * inv[:, None], -512, 512)) + zp[:, None], 0, 255).astype(np.uint8)
    return q, s, zp


def quantize_static(x: np.ndarray, scale: float, zero_point: int | None) -> np.ndarray:
    """Caller's scale (a normal float32 > 0): int8 in [-128, 127] without a zero point, uint8 in
    [0, 255] with one; q = round(x * (1 / scale)) (+ zero point), clipped."""
    x = np.asarray(x, dtype=_F32)
    with np.errstate(over="ignore"):  # x * (1 / scale) beyond float32 is +-inf, which the clip saturates
        t = np.round(np.clip(x * _reciprocal(np.float32(scale)), -512, 512))
    if zero_point is None:
        return np.clip(t, -128, 127).astype(np.int8)
    return np.clip(t + zero_point, 0, 255).astype(np.uint8)


def qgemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact a (M, K) @ b (N, K).T in int64, returned as int32 (the caller keeps it in range)."""
    acc = a.astype(np.int64) @ b.astype(np.int64).T
    assert np.abs(acc).max(initial=0) < 2**31, "result exceeds int32"
    return acc.astype(np.int32)


def gelu(y: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch.nn.GELU(); computed in float64, returned as float32."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    y64 = y.astype(np.float64)
    return (0.5 * y64 * (1.0 + erf(y64 / math.sqrt(2.0)))).astype(_F32)


def linear_int8(
    x: np.ndarray,
    qweight: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    act_scheme: str = "symmetric",
    act_scale: float | None = None,
    act_zero_point: int | None = None,
) -> np.ndarray:
    """y = float32(y_int) * (row_scale * col_scale) + bias, then relu or gelu; x is (M, K).

    The scaling runs in float32 for rows where every row_scale * col_scale is a normal float32, and
    as float32(y_int * row_scale * col_scale in float64) for other rows (where a float32 product
    would overflow or be subnormal).

    Tolerance against the kernels: bit-exact up to the last float32 operation except for gelu
    (float32 erf in the kernels): 1e-6 relative plus 1e-6 of the output's scale.
    """
    n = qweight.shape[0]
    if act_scale is not None:
        zp = act_zero_point if act_scheme == "asymmetric" else None
        q = quantize_static(x, act_scale, zp)
        s = np.full(x.shape[0], act_scale, dtype=_F32)
        zps = np.full(x.shape[0], zp or 0, dtype=np.int64)
    elif act_scheme == "asymmetric":
        q, s, zps = quantize_rows_asymmetric(x)
    else:
        q, s = quantize_rows_symmetric(x)
        zps = np.zeros(x.shape[0], dtype=np.int64)
    acc = qgemm(q.astype(np.int64) - zps[:, None], qweight)
    col_scale = np.broadcast_to(np.asarray(scale, dtype=_F32), (n,))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # rows that fail `normal` are discarded
        # float32 where every scale product of the row is a normal float, float64 elsewhere
        products = s[:, None] * col_scale[None, :]
        normal = (s * col_scale.min() >= np.finfo(_F32).tiny) & (s * col_scale.max() <= np.finfo(_F32).max)
        y32 = acc.astype(_F32) * products
        y64 = (acc.astype(np.float64) * s.astype(np.float64)[:, None] * col_scale.astype(np.float64)[None, :]).astype(_F32)
        y = np.where(normal[:, None], y32, y64)
        if bias is not None:
            y = y + bias.astype(_F32)[None, :]
    if activation == "relu":
        y = np.maximum(y, _F32(0))
    elif activation == "gelu":
        y = gelu(y)
    return y.astype(_F32)
