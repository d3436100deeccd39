"""Int4Weight: 4-bit weights, group-wise along K, uniform or with a codebook; and their bit codec.

The byte layout is onnxruntime MatMulNBits' (see Int4Weight): codes and zero points two to a byte,
low nibble first. The functions here that read and write it are the one codec of that layout; the
oracle (reference.gemm_q4) and the converters (edgecompress.convert) use them too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import quantize4
from ._common import MAX_N, as_float_matrix, check_metadata, frozen, show, state_copy

__all__ = ["Int4Weight", "dequantize", "pack_nibbles", "unpack_nibbles", "unpack_zero_points"]

_F32 = np.float32


def unpack_nibbles(qweight: np.ndarray) -> np.ndarray:
    """(N, G, g/2) bytes, low nibble first -> (N, G * g) codes in 0..15."""
    n = qweight.shape[0]
    lo = qweight & 0x0F
    hi = qweight >> 4
    return np.stack([lo, hi], axis=-1).reshape(n, -1)


def pack_nibbles(codes: np.ndarray, group_size: int) -> np.ndarray:
    """(N, Kp) codes in 0..15 -> (N, Kp / g, g / 2) bytes, low nibble first."""
    n, kp = codes.shape
    c = codes.astype(np.uint8).reshape(n, kp // 2, 2)
    return (c[..., 0] | (c[..., 1] << 4)).reshape(n, kp // group_size, group_size // 2)


def unpack_zero_points(zero_point: np.ndarray | None, groups: int) -> np.ndarray | None:
    """(N, ceil(G/2)) bytes of 4-bit zero points, low nibble first -> (N, G) in 0..15."""
    if zero_point is None:
        return None
    return unpack_nibbles(zero_point[:, :, None].reshape(zero_point.shape[0], -1, 1))[:, :groups]


def pack_zero_points(zp: np.ndarray) -> np.ndarray:
    """(N, G) zero points in 0..15 -> (N, ceil(G/2)) bytes, low nibble first; an odd G leaves the last
    high nibble 0."""
    n, groups = zp.shape
    z = np.zeros((n, groups + groups % 2), np.uint8)
    z[:, :groups] = zp
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def dequantize(qweight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, codebook: np.ndarray | None,
               k: int) -> np.ndarray:
    """The float32 (N, K) weight the 4-bit codes stand for."""
    n, groups, half = qweight.shape
    g = 2 * half
    codes = unpack_nibbles(qweight).astype(np.int32)
    s = np.repeat(scale.astype(_F32), g, axis=1)
    if codebook is not None:
        table = np.asarray(codebook, dtype=_F32)
        vals = table[codes] if table.ndim == 1 else np.take_along_axis(table, codes, axis=1)
    else:
        zp = unpack_zero_points(zero_point, groups)
        zp = np.full((n, groups), 8, np.int32) if zp is None else zp.astype(np.int32)
        vals = (codes - np.repeat(zp, g, axis=1)).astype(_F32)
    return (vals * s)[:, :k].astype(_F32)



GROUP_SIZES = (32, 64, 128)
# Longest K for Int4Weight: keeps per-group int32 dot products and packed offsets far in range.
MAX_K_INT4 = 2**24


class Int4Weight:
    """4-bit weight, group-wise along K, shaped (N, K) like torch ``Linear.weight``.

    Arrays (the byte layout of onnxruntime's MatMulNBits, so weights convert without requantizing):
      ``qweight`` uint8 (N, K/g, g/2): 4-bit codes, low nibble first; K padded to whole groups;
      ``scale`` float16 (N, K/g);
      ``zero_point`` uint8 (N, ceil(K/g/2)): 4-bit zero points, low nibble first, or None
      (symmetric: every zero point is 8);
      ``codebook`` float32 (16,) or (N, 16), or None: a non-uniform weight is table[code] * scale.
    ``compute`` picks the kernels' arithmetic: "int8" (activations quantized per row and group,
    exact integer dot products; the default) or "float" (weights dequantized exactly to float32).
    """

    FORMAT = "int4"
    VERSION = 1

    def __init__(self, qweight: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None,
                 codebook: np.ndarray | None = None, *, k: int | None = None, compute: str = "int8") -> None:
        if not isinstance(qweight, np.ndarray) or qweight.dtype != np.uint8:
            raise TypeError(f"qweight: expected a uint8 numpy array, got {getattr(qweight, 'dtype', type(qweight).__name__)}")
        if qweight.ndim != 3 or 0 in qweight.shape:
            raise ValueError(f"qweight: expected a non-empty 3-D (N, K/g, g/2) array, got shape {qweight.shape}")
        n, groups, half = qweight.shape
        g = 2 * half
        if g not in GROUP_SIZES:
            raise ValueError(f"qweight: expected a group size g in {GROUP_SIZES} (last dimension g/2), got g = {g}")
        kp = groups * g
        if k is None:
            k = kp
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k: expected an int, got {type(k).__name__}")
        k = int(k)
        if not kp - g < k <= kp:
            raise ValueError(f"k: expected {kp - g + 1}..{kp} for {groups} groups of {g}, got {k}")
        if k > MAX_K_INT4:
            raise ValueError(f"k: expected K <= {MAX_K_INT4}, got {k}")
        if n > MAX_N:
            raise ValueError(f"qweight: expected N <= {MAX_N}, got shape {qweight.shape}")
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float16:
            raise TypeError(f"scale: expected a float16 numpy array, got {getattr(scale, 'dtype', type(scale).__name__)}")
        if scale.shape != (n, groups):
            raise ValueError(f"scale: expected shape ({n}, {groups}), got {scale.shape}")
        if not np.isfinite(scale).all():
            raise ValueError("scale: expected finite values, got NaN or Inf")
        if zero_point is not None:
            if not isinstance(zero_point, np.ndarray) or zero_point.dtype != np.uint8:
                raise TypeError(f"zero_point: expected a uint8 numpy array or None, got {getattr(zero_point, 'dtype', type(zero_point).__name__)}")
            if zero_point.shape != (n, (groups + 1) // 2):
                raise ValueError(f"zero_point: expected shape ({n}, {(groups + 1) // 2}), got {zero_point.shape}")
        if codebook is not None:
            if zero_point is not None:
                raise ValueError("zero_point: a codebook weight has no zero points (pass None)")
            if not isinstance(codebook, np.ndarray) or codebook.dtype != np.float32:
                raise TypeError(f"codebook: expected a float32 numpy array or None, got {getattr(codebook, 'dtype', type(codebook).__name__)}")
            if codebook.shape not in ((16,), (n, 16)):
                raise ValueError(f"codebook: expected shape (16,) or ({n}, 16), got {codebook.shape}")
            if not np.isfinite(codebook).all():
                raise ValueError("codebook: expected finite values, got NaN or Inf")
            # Float mode multiplies the dequantized padding columns past K by zero inputs: an entry x
            # scale that overflows there would turn every output into NaN. Bounding each row's largest
            # product keeps every dequantized value finite, which makes the padding codes harmless.
            table_max = np.abs(codebook.astype(np.float64)).max(axis=-1)
            largest = table_max * np.abs(scale.astype(np.float64)).max(axis=1)
            bad = np.flatnonzero(largest >= float(np.finfo(np.float32).max))
            if bad.size:
                raise ValueError(f"codebook, scale: row {bad[0]}: a codebook entry times a scale of that row "
                                 f"overflows float32 (max |entry| x max |scale| = {largest[bad[0]]:.3g})")
        if compute not in ("int8", "float"):
            raise ValueError(f"compute: expected 'int8' or 'float', got {show(compute)}")
        self.k = k
        self.group_size = g
        self.compute = compute
        self.qweight = frozen(qweight)
        self.scale = frozen(scale)
        self.zero_point = None if zero_point is None else frozen(zero_point)
        self.codebook = None if codebook is None else frozen(codebook)

    @classmethod
    def from_float(cls, w: Any, group_size: int = 32, symmetric: bool = True, method: str = "rtn",
                   codebook: str | np.ndarray | None = None, compute: str = "int8") -> Int4Weight:
        """Quantize a float (N, K) weight group-wise along K.

        Uniform (``codebook=None``): symmetric maps each group's largest-magnitude value to code 0
        (level -8, zero point 8, as GGUF Q4_0); asymmetric spreads [min(w, 0), max(w, 0)] over
        0..15 with a 4-bit zero point. ``method="rtn"`` rounds to nearest; ``"mse"`` also tries
        clipping the range to 0.98 ... 0.5 of it and keeps, per group, the scale with the smallest
        squared reconstruction error. ``codebook="nf4"`` (NormalFloat4 table), ``"kmeans"`` (16
        centroids fitted per output channel) or a float32 table (16,) / (N, 16) gives a
        non-uniform weight: table[code] * scale, scale = the group's max|w| (searched likewise by
        ``method="mse"``).
        """
        if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
            raise ValueError(f"group_size: expected one of {GROUP_SIZES}, got {group_size!r}")
        if method not in ("rtn", "mse"):
            raise ValueError(f"method: expected 'rtn' or 'mse', got {method!r}")
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
        w = as_float_matrix(w, "w")
        n, k = w.shape
        if k > MAX_K_INT4:
            raise ValueError(f"w: expected K <= {MAX_K_INT4}, got shape {w.shape}")
        if codebook is None:
            codes, scale, zp = quantize4.quantize_uniform(w, group_size, symmetric, method)
            zp_packed = None if zp is None else pack_zero_points(zp)
            return cls(pack_nibbles(codes, group_size), scale, zp_packed, k=k, compute=compute)
        if isinstance(codebook, str):
            if codebook not in ("nf4", "kmeans"):
                raise ValueError(f"codebook: expected 'nf4', 'kmeans', a float32 table or None, got {codebook!r}")
        else:
            codebook = np.asarray(codebook)
            if codebook.dtype != np.float32 or codebook.shape not in ((16,), (n, 16)) or not np.isfinite(codebook).all():
                raise ValueError(f"codebook: expected a finite float32 table of shape (16,) or ({n}, 16)")
        if not symmetric:
            raise ValueError("symmetric: a codebook weight has no zero points; pass symmetric=True")
        codes, scale, table = quantize4.quantize_codebook(w, group_size, codebook, method)
        return cls(pack_nibbles(codes, group_size), scale, None, np.asarray(table, np.float32), k=k, compute=compute)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.qweight.shape[0]), self.k)

    @property
    def groups(self) -> int:
        return int(self.qweight.shape[1])

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical arrays (what a file holds)."""
        arrays = (self.qweight, self.scale, self.zero_point, self.codebook)
        return int(sum(a.nbytes for a in arrays if a is not None))

    def to_float(self) -> np.ndarray:
        return dequantize(self.qweight, self.scale, self.zero_point, self.codebook, self.k)

    def with_compute(self, compute: str) -> Int4Weight:
        """The same weight (sharing its arrays) with another compute mode."""
        return Int4Weight(self.qweight, self.scale, self.zero_point, self.codebook, k=self.k, compute=compute)

    def state_dict(self) -> dict[str, Any]:
        """Arrays plus a JSON-able ``metadata`` dict (format name and version, K, group size)."""
        d: dict[str, Any] = {"qweight": self.qweight, "scale": self.scale}
        if self.zero_point is not None:
            d["zero_point"] = self.zero_point
        if self.codebook is not None:
            d["codebook"] = self.codebook
        d["metadata"] = {"format": self.FORMAT, "version": self.VERSION, "k": self.k,
                         "group_size": self.group_size, "compute": self.compute}
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> Int4Weight:
        meta = check_metadata(d, cls.FORMAT, cls.VERSION, ("k", "group_size", "compute"), ("qweight", "scale"),
                               ("zero_point", "codebook"))
        k = meta["k"]
        if isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"d: expected an int 'k' in metadata, got {show(k)}")
        zp, cb = d.get("zero_point"), d.get("codebook")
        w = cls(np.asarray(d["qweight"]), np.asarray(d["scale"]), None if zp is None else np.asarray(zp),
                None if cb is None else np.asarray(cb), k=k, compute=meta["compute"])
        group_size = meta["group_size"]
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size != w.group_size:
            raise ValueError(f"d: metadata group_size {show(group_size)} does not match qweight (group size {w.group_size})")
        return w

    def __getstate__(self) -> dict[str, Any]:
        return state_copy(self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = Int4Weight.from_state_dict(state)
        self.__dict__.update(other.__dict__)

    def __repr__(self) -> str:
        n, k = self.shape
        kind = "codebook" if self.codebook is not None else ("symmetric" if self.symmetric else "asymmetric")
        return f"Int4Weight(shape=({n}, {k}), group_size={self.group_size}, {kind}, compute={self.compute!r}, nbytes={self.nbytes})"

