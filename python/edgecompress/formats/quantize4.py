"""4-bit weight quantizers behind Int4Weight.from_float: uniform (RTN or MSE-searched clipping) and
codebooks (NF4, k-means per output channel). Every function works on all groups at once; the
clipping search of the uniform quantizer (every group at 26 ratios) runs natively, through the
"int4_clip_search" the ops layer plugs in (_common.py says why; reference.quantize4 is its spec).

Shapes: a weight (N, K) is padded with zeros to Kp = whole groups and viewed as (N, G, g).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable

import numpy as np

from ._common import plugged

_F32 = np.float32
_F16_MAX = float(np.finfo(np.float16).max)
# Clipping ratios tried by method="mse": the group's range is scaled by each and the best kept.
MSE_RATIOS = np.linspace(1.0, 0.5, 26)
_SEARCH_VALUES = 1 << 18  # values quantized at once by the search (rows x groups x ratios x g)


def nf4_table() -> np.ndarray:
    """NormalFloat4: 16 levels at quantiles of N(0, 1), normalized to [-1, 1], with an exact zero.

    Built as in the NF4 definition: 8 positive levels from quantiles evenly spaced between 1/2 and
    `offset`, 7 negative ones the same way, plus 0; `offset` centres the outermost quantile between
    the 15- and 16-level spacings.
    """
    offset = 0.5 * ((1 - 1 / 30) + (1 - 1 / 32))
    ppf = NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.array(sorted(pos + neg + [0.0]), dtype=np.float64)
    return (v / np.abs(v).max()).astype(_F32)


def _groups(w: np.ndarray, g: int) -> np.ndarray:
    n, k = w.shape
    kp = -(-k // g) * g
    wp = np.zeros((n, kp), _F32)
    wp[:, :k] = w
    return wp.reshape(n, kp // g, g)


def _to_f16(s: np.ndarray) -> np.ndarray:
    return np.clip(s, -_F16_MAX, _F16_MAX).astype(np.float16)


def _uniform_params(lo: np.ndarray, hi: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """fp16 scales and int32 zero points of groups whose kept range is [lo, hi] (lo <= 0 <= hi)."""
    if symmetric:
        # The level of largest magnitude maps to -8 (the full 4-bit range), as in GGUF Q4_0.
        peak = np.where(-lo > hi, lo, hi)
        s = _to_f16(peak / _F32(-8))
        return s, np.full(s.shape, 8, np.int32)
    s = _to_f16((hi - lo) / _F32(15))
    s32 = s.astype(_F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(s32 != 0, np.clip(np.rint(-lo / s32), 0, 15), 8).astype(np.int32)
    return s, zp


def _uniform_at(wg: np.ndarray, lo: np.ndarray, hi: np.ndarray, symmetric: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, fp16 scales and zero points for groups whose kept range is [lo, hi] (lo <= 0 <= hi)."""
    s, zp = _uniform_params(lo, hi, symmetric)
    s32 = s.astype(_F32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s32 != 0, np.rint(wg / s32), 0)
    q = np.clip(q + zp[..., None], 0, 15).astype(np.uint8)
    return q, s, zp


def _best_ratios(wg: np.ndarray, error_at: Callable[[slice, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each group's clipping ratio of lowest reconstruction error (the first of equals), (N, G) float32.

    ``error_at(rows, ratios)``: the errors (n, G, len(ratios)) of rows ``rows`` of ``wg`` quantized
    at every ratio. All ratios are tried at once on a few rows at a time, so that the temporaries
    (rows x G x ratios x g values) stay in cache.
    """
    n, groups, g = wg.shape
    ratios = MSE_RATIOS.astype(_F32)
    step = max(1, _SEARCH_VALUES // (groups * ratios.size * g))
    best = np.empty((n, groups), np.intp)
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        best[rows] = error_at(rows, ratios).argmin(axis=-1)
    return ratios[best]


def quantize_uniform(w: np.ndarray, g: int, symmetric: bool, method: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(N, K) float -> codes (N, Kp) uint8, scale (N, G) float16, zero points (N, G) or None."""
    wg = _groups(w, g)
    lo = np.minimum(wg.min(axis=-1), 0)
    hi = np.maximum(wg.max(axis=-1), 0)
    if method == "mse":  # every ratio at once, natively
        ratios = MSE_RATIOS.astype(_F32)
        s, zp = _uniform_params(lo[..., None] * ratios, hi[..., None] * ratios, symmetric)
        zp32 = zp.astype(_F32).reshape(-1, ratios.size)
        best = plugged("int4_clip_search")(wg.reshape(-1, g), s.astype(_F32).reshape(-1, ratios.size), -zp32,
                                           15 - zp32)
        r = ratios[best].reshape(lo.shape)
        lo, hi = lo * r, hi * r
    q, s, zp = _uniform_at(wg, lo, hi, symmetric)
    n = w.shape[0]
    return q.reshape(n, -1), s, None if symmetric else zp.astype(np.uint8)


def _nearest(v: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index of the nearest table entry for each value; table (16,) or per row (N, 16) for v (N, ...)."""
    t = np.sort(table, axis=-1)
    order = np.argsort(table, axis=-1)
    mid = (t[..., 1:] + t[..., :-1]) / 2
    if table.ndim == 1:
        idx = np.searchsorted(mid, v)
        return order[idx]
    flat = v.reshape(v.shape[0], -1)
    idx = np.stack([np.searchsorted(mid[i], flat[i]) for i in range(flat.shape[0])])
    return np.take_along_axis(order, idx, axis=1).reshape(v.shape)


def _codebook_at(wg: np.ndarray, amax: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _to_f16(amax)
    s32 = s.astype(_F32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(s32 != 0, wg / s32, 0)
    return _nearest(v, table).astype(np.uint8), s


def _codebook_error(wg: np.ndarray, q: np.ndarray, s: np.ndarray, table: np.ndarray) -> np.ndarray:
    vals = table[q] if table.ndim == 1 else np.take_along_axis(table, q.reshape(q.shape[0], -1), axis=1).reshape(q.shape)
    return ((vals * s.astype(_F32)[..., None] - wg) ** 2).sum(axis=-1)


def kmeans_tables(wg: np.ndarray, amax: np.ndarray, iters: int = 15) -> np.ndarray:
    """16 centroids per output channel for the group-normalized weights v = w / max|w_group|.

    Lloyd's algorithm started at the NF4 levels, each value weighted by its group's max|w|^2 so that
    the centroids minimize the squared error of the weights themselves (error in v times the scale).
    Starting from NF4, each iteration can only lower that error.
    """
    n = wg.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(amax[..., None] != 0, wg / amax[..., None], 0).reshape(n, -1).astype(_F32)
    wgt = np.broadcast_to((amax.astype(np.float64) ** 2)[..., None], wg.shape).reshape(n, -1)
    cent = np.tile(nf4_table(), (n, 1))
    rows = np.arange(n)[:, None]
    for _ in range(iters):
        idx = _nearest(v, cent)
        sums = np.zeros((n, 16), np.float64)
        mass = np.zeros((n, 16), np.float64)
        np.add.at(sums, (rows, idx), v * wgt)
        np.add.at(mass, (rows, idx), wgt)
        cent = np.where(mass > 0, sums / np.where(mass > 0, mass, 1), cent).astype(_F32)
    return cent


def quantize_codebook(w: np.ndarray, g: int, table: np.ndarray | str, method: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) float -> codes (N, Kp) uint8, scale (N, G) float16 and the table (16,) or (N, 16)."""
    wg = _groups(w, g)
    amax = np.abs(wg).max(axis=-1)
    if isinstance(table, str):
        table = nf4_table() if table == "nf4" else kmeans_tables(wg, amax)
    if method == "mse":
        def error_at(rows: slice, ratios: np.ndarray) -> np.ndarray:
            w4 = wg[rows, :, None, :]
            t = table if table.ndim == 1 else table[rows]
            q, s = _codebook_at(w4, amax[rows, :, None] * ratios, t)
            return _codebook_error(w4, q, s, t)
        amax = amax * _best_ratios(wg, error_at)
    q, s = _codebook_at(wg, amax, table)
    return q.reshape(w.shape[0], -1), s, table
