"""SparseWeight: pruned weights by blocks (CSR, BSR; float32 or int8) or in N:M groups (float32)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import MAX_N, as_float_matrix, check_metadata, frozen, plugged, show, state_copy
from .int8 import quantize_weight_int8

__all__ = ["SparseWeight"]

BLOCKS = {"csr": (1, 1), "bsr4x1": (4, 1), "bsr8x1": (8, 1), "bsr1x4": (1, 4)}
# N:M layouts (float32): (kept, group), `kept` values stored of every `group` consecutive k.
NM = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}
_NM_BITS = {4: 2, 8: 4}  # bits of one stored position in `meta`, by group size
DTYPE_FORMATS = {"float32": ("csr", "bsr4x1", "bsr8x1") + tuple(NM), "int8": ("csr", "bsr1x4")}


def _nm_geometry(k: int, fmt: str) -> tuple[int, int, int, int]:
    """(kept, group, values per row, meta bytes per row) of the n:m layout `fmt` for K columns."""
    kept, group = NM[fmt]
    row_values = -(-k // group) * kept
    return kept, group, row_values, -(-row_values * _NM_BITS[group] // 8)


def nm_groups(w: np.ndarray, group: int) -> np.ndarray:
    """w (N, K) padded with zero columns to whole groups, viewed as (N, groups, group)."""
    n, k = w.shape
    kp = -(-k // group) * group
    if kp != k:
        w = np.concatenate([w, np.zeros((n, kp - k), w.dtype)], axis=1)
    return w.reshape(n, kp // group, group)


def fits_nm(w: np.ndarray, fmt: str) -> bool:
    """Whether the float (N, K) weight w already has the pattern of the n:m layout ``fmt``."""
    kept, group = NM[fmt]
    return nm_violation(nm_groups(w, group), kept) is None


def nm_violation(groups: np.ndarray, kept: int) -> tuple[int, int, int] | None:
    """(row, group, nonzeros) of the first group with more than `kept` nonzeros, or None."""
    counts = np.count_nonzero(groups, axis=-1)
    bad = np.flatnonzero(counts > kept)
    if bad.size == 0:
        return None
    r, g = divmod(int(bad[0]), counts.shape[1])
    return r, g, int(counts[r, g])


def _nm_pack_positions(pos: np.ndarray, group: int) -> np.ndarray:
    """Positions (N, V) in 0..group-1 -> meta (N, ceil(V * bits / 8)) uint8: per row a little-endian bit
    stream of `bits` per position (2 for groups of 4, 4 for groups of 8), the unused high bits 0."""
    bits = _NM_BITS[group]
    per_byte = 8 // bits
    n, v = pos.shape
    padded = np.zeros((n, -(-v // per_byte) * per_byte), np.uint8)
    padded[:, :v] = pos
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(n, -1, per_byte) << shifts, axis=-1).astype(np.uint8)


def _nm_unpack_positions(meta: np.ndarray, row_values: int, group: int) -> np.ndarray:
    """meta (N, B) uint8 -> positions (N, row_values) uint8 (the inverse of _nm_pack_positions)."""
    bits = _NM_BITS[group]
    shifts = (np.arange(8 // bits) * bits).astype(np.uint8)
    pos = (meta[:, :, None] >> shifts) & np.uint8(group - 1)
    return pos.reshape(meta.shape[0], -1)[:, :row_values]


class SparseWeight:
    """A pruned weight (N, K) stored by blocks, float32 or int8 values.

    ``format`` (the block shape): "csr" (unstructured: one value per nonzero), "bsr4x1" / "bsr8x1"
    (4 or 8 consecutive output rows at one k; float32) or "bsr1x4" (4 consecutive k of one row, k a
    multiple of 4: the unit of int8 dot-product instructions; int8). A block is kept when any of its
    values is nonzero, and stores its zeros too. Arrays: ``indptr`` int64 (block rows + 1),
    ``indices`` (each block's column of blocks: k, or k / 4 for bsr1x4) uint16 when they fit (K <=
    65536 blocks of columns) else int32, strictly increasing within each row of blocks (each block
    once), ``values`` (nnzb, block size) float32 or int8 (zeros where a last block reaches past N or
    K), and for int8 ``scale`` float32 (N,) or (1,): W = values * scale of the row. ``sparsity`` is
    the fraction of W's values that are not stored.

    ``format`` "2:4", "1:4" or "4:8" (n:m, float32): at most n nonzeros in every group of m consecutive
    k of a row; K is padded with zeros to Kp, a multiple of m. Arrays (``indptr`` and ``indices`` are
    None): ``values`` float32 (N, Kp * n / m): the n kept values of each group in k order (a group with
    fewer nonzeros keeps zeros too); ``meta`` uint8 (N, ceil(Kp * n / m * b / 8)): the position
    (0..m-1) of each kept value in its group, increasing inside a group, b = 2 bits per position for
    m = 4 and b = 4 bits (a nibble) for m = 8, packed as one little-endian bit stream per row: value
    j's position is ``(meta[r, j * b // 8] >> (j * b % 8)) & (m - 1)``, unused high bits 0. (The
    native kernels read the same bits, 16 positions at a time, and expand them in registers.)
    """

    FORMAT = "sparse"
    # Version 2 added the n:m layouts. csr/bsr weights are still saved as version 1, which readers
    # from before version 2 keep reading; they refuse an n:m file by its version.
    VERSION = 2

    def __init__(self, indptr: np.ndarray | None, indices: np.ndarray | None, values: np.ndarray,
                 shape: tuple[int, int], format: str = "csr", scale: np.ndarray | None = None, *,
                 meta: np.ndarray | None = None) -> None:
        if not isinstance(format, str) or format not in BLOCKS and format not in NM:
            raise ValueError(f"format: expected one of {', '.join(tuple(BLOCKS) + tuple(NM))}, got {format!r}")
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(v, (int, np.integer)) for v in shape)):
            raise TypeError(f"shape: expected a tuple (N, K) of ints, got {show(shape)}")
        n, k = int(shape[0]), int(shape[1])
        if n <= 0 or k <= 0 or n > MAX_N or k > 2**31 - 1:
            raise ValueError(f"shape: expected positive (N, K) within int32, got {shape}")
        self.format = format
        self.auto: dict[str, Any] | None = None  # what format="auto" measured, when it chose this
        self._shape = (n, k)
        if format in NM:
            if indptr is not None or indices is not None:
                raise ValueError(f"indptr, indices: a {format} weight has none (pass None; its arrays are values and meta)")
            if scale is not None:
                raise ValueError("scale: the n:m formats hold float32 values, which have no scale")
            self._check_nm(values, meta, n, k, format)
            self.dtype = "float32"
            self.indptr = self.indices = self.scale = None
            self.meta = frozen(meta)
            self.values = frozen(values)
            return
        if meta is not None:
            raise ValueError(f"meta: only the n:m formats have meta, not {format!r} (pass None)")
        br, bc = BLOCKS[format]
        block_rows, block_cols = -(-n // br), -(-k // bc)
        if not isinstance(indptr, np.ndarray) or indptr.dtype != np.int64 or indptr.shape != (block_rows + 1,):
            raise ValueError(f"indptr: expected int64 of shape ({block_rows + 1},), got {getattr(indptr, 'dtype', None)} {getattr(indptr, 'shape', None)}")
        if indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise ValueError("indptr: expected non-decreasing offsets starting at 0")
        nnzb = int(indptr[-1])
        idx_dtype = np.uint16 if block_cols <= 65536 else np.int32
        if not isinstance(indices, np.ndarray) or indices.dtype != idx_dtype or indices.shape != (nnzb,):
            raise ValueError(f"indices: expected {np.dtype(idx_dtype).name} of shape ({nnzb},), got {getattr(indices, 'dtype', None)} {getattr(indices, 'shape', None)}")
        if nnzb and (int(indices.min()) < 0 or int(indices.max()) >= block_cols):
            raise ValueError(f"indices: expected block columns in 0..{block_cols - 1}")
        _check_increasing(indptr, indices, "row" if br == 1 else "block row")
        dtype = "int8" if isinstance(values, np.ndarray) and values.dtype == np.int8 else "float32"
        if format not in DTYPE_FORMATS[dtype]:
            raise ValueError(f"format: {format!r} is not a layout for {dtype} values (those are {', '.join(DTYPE_FORMATS[dtype])})")
        if not isinstance(values, np.ndarray) or values.dtype not in (np.float32, np.int8) or values.shape != (nnzb, br * bc):
            raise ValueError(f"values: expected float32 or int8 of shape ({nnzb}, {br * bc}), got {getattr(values, 'dtype', None)} {getattr(values, 'shape', None)}")
        if dtype == "float32":
            if not np.isfinite(values).all():
                raise ValueError("values: expected finite values, got NaN or Inf")
            if scale is not None:
                raise ValueError("scale: only int8 values have a scale")
        else:
            if nnzb and int(values.min()) < -127:
                raise ValueError("values: expected int8 in [-127, 127] (symmetric), got -128")
            if not (isinstance(scale, np.ndarray) and scale.dtype == np.float32 and scale.shape in ((n,), (1,))):
                raise ValueError(f"scale: expected float32 of shape ({n},) or (1,) for int8 values, got {getattr(scale, 'dtype', None)} {getattr(scale, 'shape', None)}")
            if not (np.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError("scale: expected finite values > 0")
        _check_block_padding(indptr, indices, values, n, k, br, bc)
        self.dtype = dtype
        self.indptr = frozen(indptr)
        self.indices = frozen(indices)
        self.values = frozen(values)
        self.scale = None if scale is None else frozen(scale)
        self.meta = None

    @staticmethod
    def _check_nm(values: Any, meta: Any, n: int, k: int, fmt: str) -> None:
        """Checks the arrays of an n:m weight."""
        if k > 2**30:
            raise ValueError(f"shape: expected K <= 2**30 for the n:m formats, got K = {k}")
        kept, group, row_values, row_meta = _nm_geometry(k, fmt)
        if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.shape != (n, row_values):
            raise ValueError(f"values: expected float32 of shape ({n}, {row_values}) for {fmt} with K = {k}, "
                             f"got {getattr(values, 'dtype', type(values).__name__)} {getattr(values, 'shape', '')}")
        if not np.isfinite(values).all():
            raise ValueError("values: expected finite values, got NaN or Inf")
        if not isinstance(meta, np.ndarray) or meta.dtype != np.uint8 or meta.shape != (n, row_meta):
            raise ValueError(f"meta: expected uint8 of shape ({n}, {row_meta}) for {fmt} with K = {k}, "
                             f"got {getattr(meta, 'dtype', type(meta).__name__)} {getattr(meta, 'shape', '')}")
        pos = _nm_unpack_positions(meta, row_values, group)
        if not np.array_equal(_nm_pack_positions(pos, group), meta):
            raise ValueError(f"meta: expected {_NM_BITS[group]}-bit positions in 0..{group - 1} and the unused bits 0")
        groups = row_values // kept
        if kept > 1 and (np.diff(pos.reshape(n, groups, kept).astype(np.int16), axis=-1) <= 0).any():
            raise ValueError("meta: expected strictly increasing positions inside each group")
        if groups * group > k:
            cols = (groups - 1) * group + pos[:, -kept:].astype(np.int64)
            if (values[:, -kept:][cols >= k] != 0).any():
                raise ValueError(f"values: expected zeros at the padding columns {k}..{groups * group - 1}")

    @classmethod
    def from_float(cls, w: Any, format: str = "csr", dtype: str = "float32", *, rows: int = 1) -> SparseWeight:
        """Store the nonzeros of a (pruned) float weight; the zeros are what pruning left (this does
        not prune).

        ``dtype="int8"`` quantizes per output row first (symmetric, scale = max|row| / 127, as
        Int8Weight) and stores what stays nonzero; its layouts are "csr" and "bsr1x4", and it runs
        with activations quantized per row like the dense int8 path, bit for bit equal to it.

        The n:m formats ("2:4", "1:4", "4:8"; float32) need a weight that already has the pattern (at
        most n nonzeros in every group of m consecutive values along K); otherwise ValueError names the
        first row and group that has more.

        ``format="auto"`` builds every layout of the dtype (the n:m ones only where the weight has the
        pattern), times each on this CPU for ``rows`` rows
        of input (the batch the layer will see), and keeps the fastest. The choice and the timings,
        with the dense product for comparison (numpy for float32, our int8 kernel for int8), are in
        ``.auto`` (``dense_faster`` says when the weight is not sparse enough to pay on this CPU).
        For int8, "csr" and "bsr1x4" run one kernel on the same packed 1 x 4 blocks, so only the one
        that stores fewer bytes is timed and kept (``.auto["same_blocks"]`` names the other).
        Choices are cached for the life of the process per shape, rows, dtype and the fraction (to
        1%) each layout would store.
        """
        if dtype not in DTYPE_FORMATS:
            raise ValueError(f"dtype: expected 'float32' or 'int8', got {dtype!r}")
        if format == "auto":
            # timing the kernels is the ops layer's (edgecompress.ops.autoformat)
            return plugged("sparse_auto")(as_float_matrix(w, "w"), rows, dtype)
        if format not in DTYPE_FORMATS[dtype]:
            raise ValueError(f"format: expected one of {', '.join(DTYPE_FORMATS[dtype])} or 'auto' for {dtype}, got {format!r}")
        w = as_float_matrix(w, "w")
        if format in NM:
            return cls._from_float_nm(w, format)
        scale = None
        if dtype == "int8":
            q, scale = quantize_weight_int8(w, "channel")
            w = q
        n, k = w.shape
        br, bc = BLOCKS[format]
        block_rows, block_cols = -(-n // br), -(-k // bc)
        wp = np.zeros((block_rows * br, block_cols * bc), w.dtype)
        wp[:n, :k] = w
        blocks = wp.reshape(block_rows, br, block_cols, bc).transpose(0, 2, 1, 3).reshape(block_rows, block_cols, br * bc)
        keep = (blocks != 0).any(axis=2)  # (block_rows, block_cols)
        indptr = np.zeros(block_rows + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        rows_, cols = np.nonzero(keep)
        indices = cols.astype(np.uint16 if block_cols <= 65536 else np.int32)
        values = np.ascontiguousarray(blocks[rows_, cols])
        return cls(indptr, indices, values, (n, k), format, scale)

    @classmethod
    def _from_float_nm(cls, w: np.ndarray, fmt: str) -> SparseWeight:
        n, k = w.shape
        kept, group = NM[fmt]
        groups = nm_groups(w, group)
        bad = nm_violation(groups, kept)
        if bad is not None:
            r, g, count = bad
            raise ValueError(f"w: row {r}, group {g} (columns {g * group}..{min(k, g * group + group) - 1}) has {count} "
                             f"nonzeros; format {fmt!r} keeps at most {kept} of every {group} consecutive values along K "
                             "(prune to the pattern first)")
        # Each group keeps its nonzeros and its first (kept - nonzeros) zero positions, in position order.
        free = groups == 0
        fill = kept - group + np.count_nonzero(free, axis=-1, keepdims=True)
        keep = ~free | (free & (np.cumsum(free, axis=-1, dtype=np.int8) <= fill))
        values = groups[keep].reshape(n, -1)
        pos = np.broadcast_to(np.arange(group, dtype=np.uint8), groups.shape)[keep].reshape(n, -1)
        return cls(None, None, values, (n, k), fmt, meta=_nm_pack_positions(pos, group))

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def block(self) -> tuple[int, int]:
        """(rows along N, columns along K) of one block ((1, 1) for the n:m formats, which have none)."""
        return BLOCKS.get(self.format, (1, 1))

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(n, m) of an n:m format, else None."""
        return NM.get(self.format)

    @property
    def nnz(self) -> int:
        """Stored values (nonzero blocks times the block size)."""
        return int(self.values.size)

    @property
    def sparsity(self) -> float:
        n, k = self._shape
        return 1.0 - self.nnz / (n * k)

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical arrays (what a file holds)."""
        arrays = (self.indptr, self.indices, self.values, self.scale, self.meta)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def _dense_blocks(self) -> np.ndarray:
        """The stored values as a dense (N, K) array of their own dtype."""
        n, k = self._shape
        br, bc = self.block
        block_rows = len(self.indptr) - 1
        block_cols = -(-k // bc)
        out = np.zeros((block_rows, block_cols, br * bc), self.values.dtype)
        rows = np.repeat(np.arange(block_rows), np.diff(self.indptr))
        out[rows, self.indices.astype(np.int64)] = self.values
        out = out.reshape(block_rows, block_cols, br, bc).transpose(0, 2, 1, 3).reshape(block_rows * br, block_cols * bc)
        return np.ascontiguousarray(out[:n, :k])

    def to_float(self) -> np.ndarray:
        if self.format in NM:
            n, k = self._shape
            kept, group, row_values, _ = _nm_geometry(k, self.format)
            groups = row_values // kept
            pos = _nm_unpack_positions(self.meta, row_values, group).reshape(n, groups, kept)
            out = np.zeros((n, groups, group), np.float32)
            np.put_along_axis(out, pos.astype(np.intp), self.values.reshape(n, groups, kept), axis=-1)
            return out.reshape(n, groups * group)[:, :k].copy()
        q = self._dense_blocks()
        if self.scale is None:
            return q
        return (q.astype(np.float32) * self.scale[:, None]).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        metadata = {"format": self.FORMAT, "version": 1, "layout": self.format, "shape": list(self._shape)}
        if self.format in NM:
            return {"values": self.values, "meta": self.meta, "metadata": {**metadata, "version": 2}}
        d = {"indptr": self.indptr, "indices": self.indices, "values": self.values, "metadata": metadata}
        if self.scale is not None:
            d["scale"] = self.scale
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> SparseWeight:
        meta = check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), None)
        shape, layout = meta["shape"], meta["layout"]
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
            raise ValueError(f"d: expected a 'shape' [N, K] of ints in metadata, got {show(shape)}")
        if isinstance(layout, str) and layout in NM:
            if meta["version"] < 2:
                raise ValueError(f"d: layout {layout!r} needs format version 2, got version {meta['version']}")
            check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), ("values", "meta"))
            return cls(None, None, np.asarray(d["values"]), tuple(shape), layout, meta=np.asarray(d["meta"]))
        if not (isinstance(layout, str) and layout in BLOCKS):
            raise ValueError(f"d: expected a 'layout' in metadata, one of {', '.join(tuple(BLOCKS) + tuple(NM))}, "
                             f"got {show(layout)}")
        check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), ("indptr", "indices", "values"), ("scale",))
        scale = d.get("scale")
        return cls(np.asarray(d["indptr"]), np.asarray(d["indices"]), np.asarray(d["values"]), tuple(shape), layout,
                   None if scale is None else np.asarray(scale))

    def __getstate__(self) -> dict[str, Any]:
        return state_copy(self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(SparseWeight.from_state_dict(state).__dict__)

    def __repr__(self) -> str:
        n, k = self._shape
        return (f"SparseWeight(shape=({n}, {k}), format={self.format!r}, dtype={self.dtype!r}, "
                f"sparsity={self.sparsity:.3f}, nbytes={self.nbytes})")


def _check_increasing(indptr: np.ndarray, indices: np.ndarray, row: str) -> None:
    """Strictly increasing block columns within each row: a column listed twice would be added twice
    by the kernels (and could wrap an int8 accumulator) while to_float() keeps one copy."""
    if indices.size < 2:
        return
    step = np.diff(indices.astype(np.int64))
    row_ends = indptr[1:-1]
    step[row_ends[(row_ends > 0) & (row_ends < indices.size)] - 1] = 1  # the step into the next row
    bad = np.flatnonzero(step <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        r = int(np.searchsorted(indptr, i, side="right")) - 1
        raise ValueError(f"indices: expected strictly increasing columns within each {row}, {row} {r} has "
                         f"{int(indices[i])} after {int(indices[i - 1])}")


def _check_block_padding(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n: int, k: int, br: int,
                         bc: int) -> None:
    """Zeros where the last blocks reach past N or K: kernels of different tiers read those places
    or not, so a nonzero there would make the tiers disagree."""
    blocks = values.reshape(-1, br, bc)
    if k % bc and (blocks[indices == -(-k // bc) - 1][:, :, k % bc:] != 0).any():
        raise ValueError(f"values: expected zeros at the padding columns {k}..{-(-k // bc) * bc - 1} (past K = {k})")
    if n % br and (blocks[int(indptr[-2]):][:, n % br:, :] != 0).any():
        raise ValueError(f"values: expected zeros at the padding rows {n}..{-(-n // br) * br - 1} (past N = {n})")
