"""``SparseWeight.from_float(w, format="auto")``: every layout of w timed on this CPU, the fastest kept.

It runs the kernels, so it belongs to the ops layer; formats/sparse.py calls it through the plug
that edgecompress.ops registers (formats/_common.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..formats import Int8Weight, SparseWeight
from ..formats.sparse import DTYPE_FORMATS, NM, fits_nm
from ..runtime import sparse_f32_kernel, sparse_nm_f32_kernel, sparse_s8_kernel
from ..timing import interleaved_rounds
from . import linear

__all__ = ["sparse_auto"]

# What each choice measured, for the life of the process (see SparseWeight.from_float)
_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def _best_of(runs: dict[str, Any], rounds: int = 7, close: float = 0.1) -> dict[str, float]:
    """Fastest call of each candidate over interleaved rounds after a warm-up (a short pack-time
    measurement); candidates within ``close`` of the fastest take more rounds among themselves."""
    return {name: min(t) for name, t in interleaved_rounds(runs, rounds, close=close).items()}


def sparse_auto(w: np.ndarray, rows: int, dtype: str) -> SparseWeight:
    """The fastest SparseWeight layout of the checked float32 weight w for ``rows`` rows of input,
    with what was measured in its ``.auto``."""
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
        raise ValueError(f"rows: expected an int >= 1, got {rows!r}")
    kernel = (sparse_f32_kernel(), sparse_nm_f32_kernel()) if dtype == "float32" else sparse_s8_kernel()
    # The n:m formats are candidates where the weight already has their pattern (no pruning here).
    cands = {f: SparseWeight.from_float(w, f, dtype) for f in DTYPE_FORMATS[dtype]
             if f not in NM or fits_nm(w, f)}
    same_blocks = None
    if dtype == "int8":
        # int8 csr is packed as the 1 x 4 blocks its nonzeros fall in, which are bsr1x4's blocks
        # of the same weight: one kernel on the same packed bytes. Timing both would only pick
        # between two samples of noise; keep the one that stores fewer bytes.
        same_blocks = max(("bsr1x4", "csr"), key=lambda f: cands[f].nbytes)
        del cands[same_blocks]
    # Same shape and sparsity can still favour different formats (unstructured vs by blocks):
    # the key holds each format's stored fraction.
    key = (w.shape, int(rows), dtype, kernel) + tuple((f, round(1 - c.sparsity, 2)) for f, c in cands.items())
    report = _CACHE.get(key)
    if report is None:
        x = np.random.default_rng(0).standard_normal((int(rows), w.shape[1])).astype(np.float32)
        runs = {f: (lambda c=c: linear(x, c)) for f, c in cands.items()}
        if dtype == "float32":
            wt = np.ascontiguousarray(w.T)
            runs["dense"] = lambda: x @ wt
        else:
            dense = Int8Weight.from_float(w)
            runs["dense"] = lambda: linear(x, dense)
        seconds = _best_of(runs)
        dense_s = seconds.pop("dense")
        chosen = min(seconds, key=seconds.__getitem__)
        report = {"chosen": chosen, "seconds": seconds, "same_blocks": same_blocks, "dense_seconds": dense_s,
                  "dense_faster": dense_s < seconds[chosen], "rows": int(rows),
                  "kernel": kernel if dtype == "int8" else kernel[1] if chosen in NM else kernel[0]}
        _CACHE[key] = report
    out = cands[report["chosen"]]
    out.auto = dict(report)
    return out
