"""Oracle of the 4-bit weight family (Int4Weight): group-wise uniform int4 and 4-bit codebooks.

Weights: q[n, k] in 0..15 (4-bit codes), groups of g consecutive k, one float16 scale per (n, group).
  uniform:  w[n, k] = (q - zp[n, group]) * scale[n, group]   (symmetric: zp = 8)
  codebook: w[n, k] = table[q] * scale[n, group]              (table (16,) or per channel (N, 16))

Two compute modes for y = x @ w.T:

int8 (the default, integer and exact): x is padded with zeros to whole groups and quantized per row
and group like the int8 family (quantize_rows_symmetric), giving xq and a scale sx[m, group]. Per
group the integer dot product
    dot = sum_k xq[m, k] * c[n, k],   c = q - zp (uniform) or ct[q] (codebook)
is exact in int32. A codebook is used as integers ct = round(table / a) (a = max|table| / 127, per
table), its scale `a` applied once at the end. The float result is accumulated group by group:
    acc = 0;  for each group:  acc = acc + float32(dot) * (sx * float32(scale))
    y = acc (uniform) or acc * a (codebook)
all in float32, in this order, so every tier returns these bits. Rows whose scale products could
overflow float32 (max sx * max|scale| >= 2^64) take the same sum in float64, rounded once.

float: y = x @ w.T in float32 with w the dequantized weight (as `dequantize`: (q - zp) * scale, exact,
or float32(table[q] * scale)); no activation quantization. Tolerance against float64 arithmetic
(``float_tolerance``): gamma(K + 2) * (|x| @ |w|.T) + 1e-30, the worst case of float32 sums of K
products (rounding.py), about (K + 2) * 6e-8.
"""

from __future__ import annotations

import numpy as np

# The byte layout is the format's (Int4Weight): the oracle reads it with the format's one codec.
from ..formats.int4 import dequantize, pack_nibbles, unpack_nibbles, unpack_zero_points  # noqa: F401
from .gemm_s8 import gelu, quantize_rows_symmetric
from .rounding import gamma

_F32 = np.float32
ROW_F64_LIMIT = 2.0**64  # max sx * max|scale| at or above this: the row is scaled in float64


def codebook_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer form of codebook tables (16,) or (N, 16): int8 entries and the scale a per table."""
    t = np.atleast_2d(np.asarray(table, dtype=_F32))
    ct, a = quantize_rows_symmetric(t)
    return ct, a


def _codes_as_int(qweight: np.ndarray, zero_point: np.ndarray | None, codebook: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The integers c[n, k] the int8 mode multiplies, and the codebook scale a (N,) if any."""
    n, groups, half = qweight.shape
    codes = unpack_nibbles(qweight).astype(np.int64)
    if codebook is not None:
        ct, a = codebook_int8(codebook)
        ct = ct.astype(np.int64)
        c = ct[0][codes] if ct.shape[0] == 1 else np.take_along_axis(ct, codes, axis=1)
        return c, np.broadcast_to(a, (n,)).astype(_F32)
    zp = unpack_zero_points(zero_point, groups)
    zp = np.full((n, groups), 8, np.int64) if zp is None else zp.astype(np.int64)
    return codes - np.repeat(zp, 2 * half, axis=1), None


def linear_int4(
    x: np.ndarray,
    qweight: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    codebook: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    compute: str = "int8",
) -> np.ndarray:
    """y = x @ w.T (+ bias), then relu or gelu, for x (M, K); see the module docstring."""
    x = np.asarray(x, dtype=_F32)
    m, k = x.shape
    n, groups, half = qweight.shape
    g = 2 * half
    kp = groups * g
    c, a = _codes_as_int(qweight, zero_point, codebook)
    sw = scale.astype(_F32)
    if compute == "float":
        w_deq = dequantize(qweight, scale, zero_point, codebook, k).astype(np.float64)
        with np.errstate(over="ignore"):  # beyond the float32 range: +-inf, as float32 arithmetic gives
            y = (x.astype(np.float64) @ w_deq.T).astype(_F32)
    else:
        xp = np.zeros((m, kp), _F32)
        xp[:, :k] = x
        xq, sx = quantize_rows_symmetric(xp.reshape(m * groups, g))
        xq = xq.reshape(m, kp).astype(np.int64)
        sx = sx.reshape(m, groups)
        acc = np.zeros((m, n), _F32)
        acc64 = np.zeros((m, n), np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for gi in range(groups):
                cols = slice(gi * g, (gi + 1) * g)
                dot = xq[:, cols] @ c[:, cols].T
                assert np.abs(dot).max(initial=0) < 2**31
                acc = acc + dot.astype(_F32) * (sx[:, gi][:, None] * sw[:, gi][None, :])
                acc64 += dot.astype(np.float64) * sx[:, gi].astype(np.float64)[:, None] * sw[:, gi].astype(np.float64)[None, :]
            big = sx.max(axis=1).astype(np.float64) * float(np.abs(sw.astype(np.float64)).max()) >= ROW_F64_LIMIT
            if a is not None:
                acc = acc * a[None, :]
                acc64 = acc64 * a.astype(np.float64)[None, :]
            y = np.where(big[:, None], acc64.astype(_F32), acc)
    if bias is not None:
        y = y + bias.astype(_F32)[None, :]
    if activation == "relu":
        y = np.maximum(y, _F32(0))
    elif activation == "gelu":
        y = gelu(y)
    return y.astype(_F32)


def float_tolerance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Allowed |error| of the float mode for each output: gamma(K + 2) * (|x| @ |w|.T) + 1e-30."""
    return gamma(w.shape[1] + 2) * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T) + 1e-30
