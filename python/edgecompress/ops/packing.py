"""Packing: a canonical weight laid out for one kernel of this CPU, once per weight and kernel.

A weight (formats/) is portable and knows nothing of kernels; each kernel reads its own layout
(panels, interleaved blocks, expanded zero points), built here on first use and kept for the life of
the weight object: in a table by the weight's id(), whose entry leaves with the weight (a finalizer),
so a weight that is dropped takes its packed forms with it, and a copy (pickle, deepcopy) packs again
in its own process. (A WeakKeyDictionary would do the same at twice the cost per call.) One lock per
weight makes concurrent first calls pack once; a fork gets fresh locks (below).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

import numpy as np

from .. import _core
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from ..formats.int4 import unpack_zero_points
from ..formats.sparse import NM

__all__ = ["cached", "pack_int4", "pack_int8", "pack_lowrank", "pack_sparse"]


def pack_int8(w: Int8Weight, kernel: str) -> Any:
    return _core.pack_s8(w.qweight, w.scale, kernel)


def pack_int4(w: Int4Weight, kernel: str) -> Any:
    zp = None if w.zero_point is None else np.ascontiguousarray(unpack_zero_points(w.zero_point, w.groups))
    return _core.pack_q4(w.qweight, w.scale, zp, w.codebook, w.k, kernel)


def pack_sparse(w: SparseWeight, kernel: str) -> Any:
    """For the sparse_nm_f32, sparse_f32 or sparse_s8 kernel ``kernel``, as the layout and dtype of w
    decide (see ops.sparse_family)."""
    n, k = w.shape
    if w.format in NM:
        kept, group = NM[w.format]
        return _core.pack_sparse_nm_f32(n, k, kept, group, w.values, w.meta, kernel)
    if w.dtype == "float32":
        return _core.pack_sparse_f32(n, k, w.block[0], w.indptr, w.indices, w.values.reshape(-1), kernel)
    indptr, indices, values = w.indptr, w.indices, w.values
    if w.format == "csr":  # the kernels read 1 x 4 blocks: group each row's nonzeros by k / 4
        indptr, indices, values = csr_to_1x4(indptr, indices, values.reshape(-1), n, k)
    return _core.pack_sparse_s8(n, k, indptr, indices, values.reshape(-1), w.scale, kernel)


def pack_lowrank(w: LowRankWeight, kernel: str) -> tuple[Any, Any]:
    """(v, u) packed for the dense_f32 kernel ``kernel``; None for an int8 factor (it runs as an
    Int8Weight of its own, packed on its own)."""
    return tuple(None if isinstance(f, Int8Weight) else _core.pack_dense_f32(f, kernel) for f in (w.v, w.u))


def csr_to_1x4(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n: int,
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (one value per nonzero) as 1 x 4 blocks along K, without a dense temporary."""
    kblocks = -(-k // 4)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    cols = indices.astype(np.int64)
    keys, inverse = np.unique(rows * kblocks + cols // 4, return_inverse=True)
    blocks = np.zeros((len(keys), 4), np.int8)
    blocks[inverse, cols % 4] = values
    block_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(keys // kblocks, minlength=n), out=block_ptr[1:])
    return block_ptr, (keys % kblocks).astype(np.uint16 if kblocks <= 65536 else np.int32), blocks


class _Packs:
    """The packed forms of one weight by kernel name, and the lock that builds them."""

    __slots__ = ("by_kernel", "lock")

    def __init__(self) -> None:
        self.by_kernel: dict[str, Any] = {}
        self.lock = threading.Lock()


_PACKS: dict[int, _Packs] = {}  # by id() of a live weight: its finalizer removes the entry before the id is free
_PACKS_LOCK = threading.Lock()  # guards adding a weight to _PACKS


def cached(w: Any, kernel: str, pack: Callable[[Any, str], Any]) -> Any:
    """``pack(w, kernel)``, built on the first call for this weight object and kernel, then the same object."""
    key = id(w)
    packs = _PACKS.get(key)
    if packs is None:
        with _PACKS_LOCK:
            packs = _PACKS.get(key)
            if packs is None:
                packs = _PACKS[key] = _Packs()
                weakref.finalize(w, _PACKS.pop, key, None).atexit = False
    p = packs.by_kernel.get(kernel)
    if p is None:
        with packs.lock:
            p = packs.by_kernel.get(kernel)
            if p is None:
                p = packs.by_kernel[kernel] = pack(w, kernel)
    return p


# A fork() while another thread packs copies that weight's lock held by a thread the child does not
# have: the child gets fresh locks (nothing it packs is half-built, the packer's result never
# reached the dict).
def _fresh_locks_after_fork() -> None:
    global _PACKS_LOCK
    _PACKS_LOCK = threading.Lock()
    for packs in list(_PACKS.values()):
        packs.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_after_fork)
