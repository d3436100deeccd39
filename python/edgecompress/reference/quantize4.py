"""The clipping search of 4-bit quantization (``_core.int4_best_candidates``), in numpy.

For each group of g weights (g a multiple of 8) and each of its r candidates (a scale and the code
bounds lo..hi), the squared error of the codes clip(round(w / scale), lo, hi) times the scale; the
candidate of least error (the first of equals) wins. The error is summed as the native code sums it
(8 lanes of partial sums, then the lanes pairwise), so both pick the same candidate bit for bit.
"""

from __future__ import annotations

import numpy as np

LANES = 8


def best_candidates(w: np.ndarray, scale: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """w (groups, g) float32; scale, lo, hi (groups, r) float32 -> (groups,) int32 candidate indices."""
    groups, g = w.shape
    s = scale[:, :, None]
    with np.errstate(over="ignore"):  # a tiny scale: w / s overflows to +-inf, clipped next
        x = w[:, None, :] / np.where(s != 0, s, np.float32(1))  # a zero scale: every code times 0
    x = np.rint(np.minimum(np.maximum(x, lo[:, :, None]), hi[:, :, None]))
    d = x * s - w[:, None, :]
    sq = (d * d).reshape(groups, scale.shape[1], g // LANES, LANES)
    part = np.zeros(sq.shape[:2] + (LANES,), np.float32)
    for t in range(g // LANES):
        part = part + sq[:, :, t]
    p = [part[..., u] for u in range(LANES)]
    err = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
    return err.argmin(axis=1).astype(np.int32)
