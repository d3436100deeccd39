"""Canonical compressed weight formats: portable arrays + metadata, packed lazily per CPU."""

from __future__ import annotations

import os
import reprlib
import threading
import weakref
from typing import Any

import numpy as np

from . import _core
from . import quantize4
from .runtime import sparse_f32_kernel, sparse_nm_f32_kernel, sparse_s8_kernel
from .reference import quantize_weight_int8
from .reference.gemm_q4 import dequantize as _dequantize_q4
from .reference.gemm_q4 import pack_nibbles, unpack_nibbles
from .timing import interleaved_rounds

__all__ = ["Int4Weight", "Int8Weight", "LowRankWeight", "SparseWeight"]

# The longest rows whose int32 accumulators stay exact: |activation - zero point| <= 128 (int8
# activations), |weight| <= 127. (uint8 activations allow less; ops.linear checks that per call.)
MAX_K = (2**31 - 1) // (127 * 128)
_MAX_N = 2**31 - 1


def _as_float_matrix(w: Any, name: str) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype not in (np.float32, np.float64, np.float16):
        raise TypeError(f"{name}: expected a float32/float64/float16 array, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (out_features, in_features) array, got shape {w.shape}")
    if 0 in w.shape:
        raise ValueError(f"{name}: expected non-empty dimensions, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
    return w.astype(np.float32, copy=False)


# Untrusted values (a file's metadata) appear in error messages bounded: a value nested 1,000 deep or
# megabytes long would otherwise make the message itself fail (RecursionError) or flood the terminal.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80


def show(value: Any) -> str:
    """repr(value), shortened for an error message."""
    return _REPR.repr(value)


def _check_metadata(d: Any, fmt: str, version_max: int, fields: tuple[str, ...], arrays: tuple[str, ...] | None,
                    optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The metadata dict of a state_dict() for format `fmt`, after checking it and its keys: exactly
    `fields` besides format and version in the metadata; the `arrays`, and of `optional` any, next to
    it (arrays None: not checked yet, the metadata decides which). A key it does not know is refused:
    a misspelled one would otherwise be ignored in silence."""
    if not isinstance(d, dict):
        raise TypeError(f"d: expected a dict from state_dict(), got {type(d).__name__}")
    meta = d.get("metadata")
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"d: expected metadata with format {fmt!r}, got {show(meta)}")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version > version_max or version < 1:
        raise ValueError(f"d: format version {show(version)} is not supported (this edgecompress reads <= {version_max})")
    _check_keys(meta, {"format", "version", *fields}, "metadata of format " + repr(fmt))
    if arrays is None:
        return meta
    for key in arrays:
        if key not in d:
            raise ValueError(f"d: missing array {key!r}")
    unknown = sorted(str(k) for k in set(d) - {"metadata", *arrays, *optional})
    if unknown:
        raise ValueError(f"d: unknown arrays {show(unknown)} for format {fmt!r} (expected {', '.join(arrays + optional)})")
    return meta


def _check_keys(table: dict[str, Any], expected: set[str], what: str) -> None:
    """Exactly the keys `expected` in `table`, or ValueError naming the missing and the unknown ones."""
    missing, unknown = sorted(expected - set(table)), sorted(str(k) for k in set(table) - expected)
    if missing or unknown:
        raise ValueError(f"d: {what}: expected the keys {sorted(expected)}, got {show(sorted(str(k) for k in table))}"
                         + (f" (missing {missing})" if missing else "") + (f" (unknown {show(unknown)})" if unknown else ""))


class _PackedCache:
    """Packing for the running CPU happens on first use, once per kernel, under a lock."""

    def _init_cache(self) -> None:
        self._packed: dict[str, Any] = {}
        self._lock = threading.Lock()
        _PACK_LOCK_OWNERS.add(self)

    def _pack(self, kernel: str) -> Any:
        raise NotImplementedError

    def packed(self, kernel: str) -> Any:
        """The weight packed for `kernel` (built once, then cached)."""
        p = self._packed.get(kernel)
        if p is None:
            with self._lock:
                p = self._packed.get(kernel)
                if p is None:
                    p = self._packed[kernel] = self._pack(kernel)
        return p


# A fork() while another thread packs copies that weight's lock held by a thread the child does not
# have: the child gets fresh locks (nothing it packs is half-built, the packer's result never
# reached the dict).
_PACK_LOCK_OWNERS: weakref.WeakSet[_PackedCache] = weakref.WeakSet()


def _fresh_pack_locks_after_fork() -> None:
    for owner in _PACK_LOCK_OWNERS:
        owner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_pack_locks_after_fork)


class Int8Weight(_PackedCache):
    """Symmetric int8 weight W ~ qweight * scale, shaped (N, K) like torch ``Linear.weight``.

    ``qweight`` is int8 in [-127, 127] (the symmetric range: -128 is excluded so that every tier's
    integer arithmetic stays exact); ``scale`` is float32 (N,) per output channel or (1,) per tensor.
    The arrays are stored read-only. The packed form for the running CPU is built on first use and
    kept for the life of the object (one per kernel, i.e. per tier in use).
    """

    FORMAT = "int8"
    VERSION = 1

    def __init__(self, qweight: np.ndarray, scale: np.ndarray) -> None:
        if not isinstance(qweight, np.ndarray) or qweight.dtype != np.int8:
            raise TypeError(f"qweight: expected an int8 numpy array, got {getattr(qweight, 'dtype', type(qweight).__name__)}")
        if qweight.ndim != 2 or 0 in qweight.shape:
            raise ValueError(f"qweight: expected a non-empty 2-D (N, K) array, got shape {qweight.shape}")
        if qweight.shape[1] > MAX_K:
            raise ValueError(f"qweight: expected K <= {MAX_K} (exact int32 accumulation), got shape {qweight.shape}")
        if qweight.shape[0] > _MAX_N:
            raise ValueError(f"qweight: expected N <= {_MAX_N}, got shape {qweight.shape}")
        if qweight.min() < -127:
            raise ValueError("qweight: expected values in [-127, 127] (symmetric int8), got -128")
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float32:
            raise TypeError(f"scale: expected a float32 numpy array, got {getattr(scale, 'dtype', type(scale).__name__)}")
        n = qweight.shape[0]
        if scale.shape not in ((n,), (1,)):
            raise ValueError(f"scale: expected shape ({n},) or (1,), got {scale.shape}")
        if not np.isfinite(scale).all():
            raise ValueError("scale: expected finite values, got NaN or Inf")
        if (scale < 0).any():
            raise ValueError("scale: expected values >= 0")
        self.qweight = np.array(qweight, order="C", copy=True)
        self.scale = np.array(scale, order="C", copy=True)
        self.qweight.flags.writeable = False
        self.scale.flags.writeable = False
        self._init_cache()

    @classmethod
    def from_float(cls, w: Any, granularity: str = "channel") -> Int8Weight:
        """Quantize a float (N, K) weight: scale = max|w| / 127 per output channel or per tensor."""
        if granularity not in ("channel", "tensor"):
            raise ValueError(f"granularity: expected 'channel' or 'tensor', got {granularity!r}")
        q, s = quantize_weight_int8(_as_float_matrix(w, "w"), granularity)
        return cls(q, s)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.qweight.shape[0]), int(self.qweight.shape[1]))

    @property
    def granularity(self) -> str:
        return "tensor" if self.scale.shape == (1,) and self.shape[0] != 1 else "channel"

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical arrays (what a file holds)."""
        return int(self.qweight.nbytes + self.scale.nbytes)

    def to_float(self) -> np.ndarray:
        s = self.scale[:, None] if self.scale.shape[0] == self.shape[0] else self.scale[None, :]
        return (self.qweight.astype(np.float32) * s).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Arrays plus a JSON-able ``metadata`` dict (format name and version)."""
        return {
            "qweight": self.qweight,
            "scale": self.scale,
            "metadata": {"format": self.FORMAT, "version": self.VERSION, "granularity": self.granularity},
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> Int8Weight:
        meta = _check_metadata(d, cls.FORMAT, cls.VERSION, ("granularity",), ("qweight", "scale"))
        w = cls(np.asarray(d["qweight"]), np.asarray(d["scale"]))
        if meta["granularity"] != w.granularity:
            raise ValueError(f"d: metadata granularity {show(meta['granularity'])} does not match the scale "
                             f"of shape {w.scale.shape} ({w.granularity!r})")
        return w

    def __getstate__(self) -> dict[str, Any]:
        # Copies (copy.deepcopy, multiprocessing) carry the canonical arrays only; packing is per
        # process and the lock is per object. Files use state_dict() and safetensors, not pickle.
        return {"qweight": np.array(self.qweight), "scale": np.array(self.scale)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["qweight"], state["scale"])

    def _pack(self, kernel: str) -> Any:
        return _core.pack_s8(self.qweight, self.scale, kernel)

    def __repr__(self) -> str:
        n, k = self.shape
        return f"Int8Weight(shape=({n}, {k}), granularity={self.granularity!r}, nbytes={self.nbytes})"


_GROUP_SIZES = (32, 64, 128)
# Longest K for Int4Weight: keeps per-group int32 dot products and packed offsets far in range.
MAX_K_INT4 = 2**24


class Int4Weight(_PackedCache):
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
        if g not in _GROUP_SIZES:
            raise ValueError(f"qweight: expected a group size g in {_GROUP_SIZES} (last dimension g/2), got g = {g}")
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
        if n > _MAX_N:
            raise ValueError(f"qweight: expected N <= {_MAX_N}, got shape {qweight.shape}")
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
        self.qweight = _frozen(qweight)
        self.scale = _frozen(scale)
        self.zero_point = None if zero_point is None else _frozen(zero_point)
        self.codebook = None if codebook is None else _frozen(codebook)
        self._init_cache()

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
        if isinstance(group_size, bool) or group_size not in _GROUP_SIZES:
            raise ValueError(f"group_size: expected one of {_GROUP_SIZES}, got {group_size!r}")
        if method not in ("rtn", "mse"):
            raise ValueError(f"method: expected 'rtn' or 'mse', got {method!r}")
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric: expected a bool, got {type(symmetric).__name__}")
        w = _as_float_matrix(w, "w")
        n, k = w.shape
        if k > MAX_K_INT4:
            raise ValueError(f"w: expected K <= {MAX_K_INT4}, got shape {w.shape}")
        if codebook is None:
            codes, scale, zp = quantize4.quantize_uniform(w, group_size, symmetric, method)
            zp_packed = None if zp is None else _pack_zero_points(zp)
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
        return _dequantize_q4(self.qweight, self.scale, self.zero_point, self.codebook, self.k)

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
        meta = _check_metadata(d, cls.FORMAT, cls.VERSION, ("k", "group_size", "compute"), ("qweight", "scale"),
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
        d = self.state_dict()
        return {key: (np.array(v) if isinstance(v, np.ndarray) else v) for key, v in d.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        other = Int4Weight.from_state_dict(state)
        self.__dict__.update(other.__dict__)

    def _pack(self, kernel: str) -> Any:
        zp = None if self.zero_point is None else _unpack_zero_points(self.zero_point, self.groups)
        return _core.pack_q4(self.qweight, self.scale, zp, self.codebook, self.k, kernel)

    # --- converters -------------------------------------------------------------------------------

    def to_onnx_matmulnbits(self) -> dict[str, Any]:
        """Initializers and attributes of an onnxruntime ``com.microsoft.MatMulNBits`` node.

        Returns {"B": uint8 (N, K/g, g/2), "scales": float32 (N * K/g,), "zero_points": uint8
        (N * ceil(K/g/2),) or absent, "attributes": {"K", "N", "bits", "block_size"}}. Uniform
        weights only (MatMulNBits has no codebooks). The conversion is exact.
        """
        if self.codebook is not None:
            raise ValueError("self: MatMulNBits holds uniform 4-bit weights; this weight has a codebook")
        n = self.shape[0]
        d: dict[str, Any] = {"B": np.array(self.qweight), "scales": self.scale.astype(np.float32).reshape(-1)}
        if self.zero_point is not None:
            d["zero_points"] = np.array(self.zero_point).reshape(-1)
        d["attributes"] = {"K": self.k, "N": n, "bits": 4, "block_size": self.group_size}
        return d

    @classmethod
    def from_onnx_matmulnbits(cls, B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None = None, *,
                              K: int, N: int, block_size: int, bits: int = 4) -> Int4Weight:
        """From MatMulNBits initializers (see to_onnx_matmulnbits). Scales are stored as float16:
        float32 scales that float16 cannot hold exactly are rounded (relative change <= 2^-11)."""
        if bits != 4:
            raise ValueError(f"bits: expected 4, got {bits}")
        if block_size not in _GROUP_SIZES:
            raise ValueError(f"block_size: expected one of {_GROUP_SIZES}, got {block_size}")
        groups = -(-int(K) // block_size)
        b = np.asarray(B)
        if b.dtype != np.uint8 or b.size != N * groups * block_size // 2:
            raise ValueError(f"B: expected uint8 with {N * groups * block_size // 2} bytes, got {b.dtype} {b.shape}")
        s = np.asarray(scales)
        if s.dtype not in (np.float32, np.float16) or s.size != N * groups:
            raise ValueError(f"scales: expected float32/float16 with {N * groups} values, got {s.dtype} {s.shape}")
        if np.abs(s.astype(np.float64)).max(initial=0) > float(np.finfo(np.float16).max):
            raise ValueError("scales: values beyond the float16 range")
        zp = None
        if zero_points is not None:
            z = np.asarray(zero_points)
            if z.dtype != np.uint8 or z.size != N * ((groups + 1) // 2):
                raise ValueError(f"zero_points: expected uint8 with {N * ((groups + 1) // 2)} bytes (4-bit packed), got {z.dtype} {z.shape}")
            zp = z.reshape(N, (groups + 1) // 2)
        return cls(b.reshape(N, groups, block_size // 2), s.reshape(N, groups).astype(np.float16), zp, k=int(K))

    def to_gguf_q4_0(self) -> np.ndarray:
        """GGUF Q4_0 blocks, uint8 (N, K/32 * 18): per 32 weights a float16 scale d and 16 bytes
        whose low nibbles are elements 0..15 and high nibbles 16..31, value (code - 8) * d. Exact;
        needs group_size 32, symmetric, no codebook and K a multiple of 32."""
        if self.codebook is not None or self.zero_point is not None or self.group_size != 32 or self.k % 32:
            raise ValueError("self: Q4_0 needs a symmetric uniform weight with group_size 32 and K a multiple of 32")
        n, groups = self.shape[0], self.groups
        codes = unpack_nibbles(self.qweight).reshape(n, groups, 32)
        qs = (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)
        d = self.scale.reshape(n, groups, 1).view(np.uint8).reshape(n, groups, 2)
        return np.concatenate([d, qs], axis=-1).reshape(n, groups * 18)

    @classmethod
    def from_gguf_q4_0(cls, blocks: np.ndarray, shape: tuple[int, int]) -> Int4Weight:
        """From GGUF Q4_0 tensor data (raw blocks, e.g. ``gguf.GGUFReader(...).tensors[i].data``)
        for a weight of ``shape`` (N, K) in torch order. Exact."""
        n, k = (int(v) for v in shape)
        b = np.asarray(blocks)
        if b.dtype != np.uint8 or k % 32 or b.size != n * k // 32 * 18:
            raise ValueError(f"blocks: expected uint8 Q4_0 data with {n * k // 32 * 18} bytes for shape {shape} (K a multiple of 32), got {b.dtype} {b.shape}")
        b = np.ascontiguousarray(b).reshape(n, k // 32, 18)
        d = b[..., :2].copy().view(np.float16).reshape(n, k // 32)
        if not np.isfinite(d).all():
            raise ValueError("blocks: scales with NaN or Inf")
        qs = b[..., 2:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, k)
        return cls(pack_nibbles(codes, 32), d, None, k=k)

    def __repr__(self) -> str:
        n, k = self.shape
        kind = "codebook" if self.codebook is not None else ("symmetric" if self.symmetric else "asymmetric")
        return f"Int4Weight(shape=({n}, {k}), group_size={self.group_size}, {kind}, compute={self.compute!r}, nbytes={self.nbytes})"


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, order="C", copy=True)
    a.flags.writeable = False
    return a


def _pack_zero_points(zp: np.ndarray) -> np.ndarray:
    """(N, G) zero points in 0..15 -> (N, ceil(G/2)) bytes, low nibble first; an odd G leaves the last
    high nibble 0."""
    n, groups = zp.shape
    z = np.zeros((n, groups + groups % 2), np.uint8)
    z[:, :groups] = zp
    return (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def _unpack_zero_points(zp: np.ndarray, groups: int) -> np.ndarray:
    return np.ascontiguousarray(np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(zp.shape[0], -1)[:, :groups])


# Block shape (rows along N, columns along K) of each layout, and the value types it is built for.
_BLOCKS = {"csr": (1, 1), "bsr4x1": (4, 1), "bsr8x1": (8, 1), "bsr1x4": (1, 4)}
# N:M layouts (float32): (kept, group), `kept` values stored of every `group` consecutive k.
_NM = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}
_NM_BITS = {4: 2, 8: 4}  # bits of one stored position in `meta`, by group size
_DTYPE_FORMATS = {"float32": ("csr", "bsr4x1", "bsr8x1") + tuple(_NM), "int8": ("csr", "bsr1x4")}
_AUTO_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def _best_of(runs: dict[str, Any], rounds: int = 7, close: float = 0.1) -> dict[str, float]:
    """Fastest call of each candidate over interleaved rounds after a warm-up (a short pack-time
    measurement); candidates within ``close`` of the fastest take more rounds among themselves."""
    return {name: min(t) for name, t in interleaved_rounds(runs, rounds, close=close).items()}


def _nm_geometry(k: int, fmt: str) -> tuple[int, int, int, int]:
    """(kept, group, values per row, meta bytes per row) of the n:m layout `fmt` for K columns."""
    kept, group = _NM[fmt]
    row_values = -(-k // group) * kept
    return kept, group, row_values, -(-row_values * _NM_BITS[group] // 8)


def _nm_groups(w: np.ndarray, group: int) -> np.ndarray:
    """w (N, K) padded with zero columns to whole groups, viewed as (N, groups, group)."""
    n, k = w.shape
    kp = -(-k // group) * group
    if kp != k:
        w = np.concatenate([w, np.zeros((n, kp - k), w.dtype)], axis=1)
    return w.reshape(n, kp // group, group)


def _nm_violation(groups: np.ndarray, kept: int) -> tuple[int, int, int] | None:
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


class SparseWeight(_PackedCache):
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
        if not isinstance(format, str) or format not in _BLOCKS and format not in _NM:
            raise ValueError(f"format: expected one of {', '.join(tuple(_BLOCKS) + tuple(_NM))}, got {format!r}")
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(v, (int, np.integer)) for v in shape)):
            raise TypeError(f"shape: expected a tuple (N, K) of ints, got {show(shape)}")
        n, k = int(shape[0]), int(shape[1])
        if n <= 0 or k <= 0 or n > _MAX_N or k > 2**31 - 1:
            raise ValueError(f"shape: expected positive (N, K) within int32, got {shape}")
        self.format = format
        self.auto: dict[str, Any] | None = None  # what format="auto" measured, when it chose this
        self._shape = (n, k)
        self._init_cache()
        if format in _NM:
            if indptr is not None or indices is not None:
                raise ValueError(f"indptr, indices: a {format} weight has none (pass None; its arrays are values and meta)")
            if scale is not None:
                raise ValueError("scale: the n:m formats hold float32 values, which have no scale")
            self._check_nm(values, meta, n, k, format)
            self.dtype = "float32"
            self.indptr = self.indices = self.scale = None
            self.meta = _frozen(meta)
            self.values = _frozen(values)
            return
        if meta is not None:
            raise ValueError(f"meta: only the n:m formats have meta, not {format!r} (pass None)")
        br, bc = _BLOCKS[format]
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
        if format not in _DTYPE_FORMATS[dtype]:
            raise ValueError(f"format: {format!r} is not a layout for {dtype} values (those are {', '.join(_DTYPE_FORMATS[dtype])})")
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
        self.indptr = _frozen(indptr)
        self.indices = _frozen(indices)
        self.values = _frozen(values)
        self.scale = None if scale is None else _frozen(scale)
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
        if dtype not in _DTYPE_FORMATS:
            raise ValueError(f"dtype: expected 'float32' or 'int8', got {dtype!r}")
        if format == "auto":
            return cls._auto(_as_float_matrix(w, "w"), rows, dtype)
        if format not in _DTYPE_FORMATS[dtype]:
            raise ValueError(f"format: expected one of {', '.join(_DTYPE_FORMATS[dtype])} or 'auto' for {dtype}, got {format!r}")
        w = _as_float_matrix(w, "w")
        if format in _NM:
            return cls._from_float_nm(w, format)
        scale = None
        if dtype == "int8":
            q, scale = quantize_weight_int8(w, "channel")
            w = q
        n, k = w.shape
        br, bc = _BLOCKS[format]
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
        kept, group = _NM[fmt]
        groups = _nm_groups(w, group)
        bad = _nm_violation(groups, kept)
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

    @classmethod
    def _auto(cls, w: np.ndarray, rows: int, dtype: str) -> SparseWeight:
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 1:
            raise ValueError(f"rows: expected an int >= 1, got {rows!r}")
        from . import ops

        kernel = (sparse_f32_kernel(), sparse_nm_f32_kernel()) if dtype == "float32" else sparse_s8_kernel()
        # The n:m formats are candidates where the weight already has their pattern (no pruning here).
        cands = {f: cls.from_float(w, f, dtype) for f in _DTYPE_FORMATS[dtype]
                 if f not in _NM or _nm_violation(_nm_groups(w, _NM[f][1]), _NM[f][0]) is None}
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
        report = _AUTO_CACHE.get(key)
        if report is None:
            x = np.random.default_rng(0).standard_normal((int(rows), w.shape[1])).astype(np.float32)
            runs = {f: (lambda c=c: ops.linear(x, c)) for f, c in cands.items()}
            if dtype == "float32":
                wt = np.ascontiguousarray(w.T)
                runs["dense"] = lambda: x @ wt
            else:
                dense = Int8Weight.from_float(w)
                runs["dense"] = lambda: ops.linear(x, dense)
            seconds = _best_of(runs)
            dense_s = seconds.pop("dense")
            chosen = min(seconds, key=seconds.__getitem__)
            report = {"chosen": chosen, "seconds": seconds, "same_blocks": same_blocks, "dense_seconds": dense_s,
                      "dense_faster": dense_s < seconds[chosen], "rows": int(rows),
                      "kernel": kernel if dtype == "int8" else kernel[1] if chosen in _NM else kernel[0]}
            _AUTO_CACHE[key] = report
        out = cands[report["chosen"]]
        out.auto = dict(report)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def block(self) -> tuple[int, int]:
        """(rows along N, columns along K) of one block ((1, 1) for the n:m formats, which have none)."""
        return _BLOCKS.get(self.format, (1, 1))

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(n, m) of an n:m format, else None."""
        return _NM.get(self.format)

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
        if self.format in _NM:
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
        if self.format in _NM:
            return {"values": self.values, "meta": self.meta, "metadata": {**metadata, "version": 2}}
        d = {"indptr": self.indptr, "indices": self.indices, "values": self.values, "metadata": metadata}
        if self.scale is not None:
            d["scale"] = self.scale
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> SparseWeight:
        meta = _check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), None)
        shape, layout = meta["shape"], meta["layout"]
        if not (isinstance(shape, list) and len(shape) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
            raise ValueError(f"d: expected a 'shape' [N, K] of ints in metadata, got {show(shape)}")
        if isinstance(layout, str) and layout in _NM:
            if meta["version"] < 2:
                raise ValueError(f"d: layout {layout!r} needs format version 2, got version {meta['version']}")
            _check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), ("values", "meta"))
            return cls(None, None, np.asarray(d["values"]), tuple(shape), layout, meta=np.asarray(d["meta"]))
        if not (isinstance(layout, str) and layout in _BLOCKS):
            raise ValueError(f"d: expected a 'layout' in metadata, one of {', '.join(tuple(_BLOCKS) + tuple(_NM))}, "
                             f"got {show(layout)}")
        _check_metadata(d, cls.FORMAT, cls.VERSION, ("layout", "shape"), ("indptr", "indices", "values"), ("scale",))
        scale = d.get("scale")
        return cls(np.asarray(d["indptr"]), np.asarray(d["indices"]), np.asarray(d["values"]), tuple(shape), layout,
                   None if scale is None else np.asarray(scale))

    def __getstate__(self) -> dict[str, Any]:
        return {key: (np.array(v) if isinstance(v, np.ndarray) else v) for key, v in self.state_dict().items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(SparseWeight.from_state_dict(state).__dict__)

    def _pack(self, kernel: str) -> Any:
        n, k = self._shape
        if self.format in _NM:
            kept, group = _NM[self.format]
            return _core.pack_sparse_nm_f32(n, k, kept, group, self.values, self.meta, kernel)
        if self.dtype == "float32":
            return _core.pack_sparse_f32(n, k, self.block[0], self.indptr, self.indices, self.values.reshape(-1), kernel)
        indptr, indices, values = self.indptr, self.indices, self.values
        if self.format == "csr":  # the kernels read 1 x 4 blocks: group each row's nonzeros by k / 4
            indptr, indices, values = _csr_to_1x4(indptr, indices, values.reshape(-1), n, k)
        return _core.pack_sparse_s8(n, k, indptr, indices, values.reshape(-1), self.scale, kernel)

    def _linear(self, x2: np.ndarray, bias: np.ndarray | None, act: int, out2: np.ndarray | None = None) -> np.ndarray:
        """The native product for checked (M, K) float32 rows x2, on the kernel family of the format
        (sparse_nm_f32, sparse_s8 or sparse_f32) at the current tier cap."""
        if self.format in _NM:
            return _core.linear_sparse_nm_f32(self.packed(sparse_nm_f32_kernel()), x2, bias, act, out2)
        if self.dtype == "int8":
            return _core.linear_sparse_s8(self.packed(sparse_s8_kernel()), x2, bias, act, out2)
        return _core.linear_sparse_f32(self.packed(sparse_f32_kernel()), x2, bias, act, out2)

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


def _csr_to_1x4(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n: int,
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


def _factor(a: Any, name: str, shape_hint: str) -> np.ndarray | Int8Weight:
    if isinstance(a, Int8Weight):
        return a
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or 0 in a.shape:
        raise TypeError(f"{name}: expected a float32 {shape_hint} numpy array or an Int8Weight, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
    return _frozen(a)


class LowRankWeight(_PackedCache):
    """A factorized weight W (N, K) = u @ v with u (N, r) and v (r, K): y = (x @ v.T) @ u.T.

    Each factor is a float32 array or an Int8Weight (int8 factors run the int8 kernels, one after the
    other). Two float32 factors run one fused call for a few rows of x (the r-long intermediate stays
    in L1), and two matrix products for many rows. It pays when r * (N + K) is well below N * K.
    """

    FORMAT = "lowrank"
    VERSION = 1

    def __init__(self, u: np.ndarray | Int8Weight, v: np.ndarray | Int8Weight) -> None:
        u = _factor(u, "u", "(N, r)")
        v = _factor(v, "v", "(r, K)")
        if u.shape[1] != v.shape[0]:
            raise ValueError(f"u, v: u (N, r) and v (r, K) must share r, got u {u.shape} and v {v.shape}")
        self.u, self.v = u, v
        self._init_cache()

    @classmethod
    def from_float(cls, w: Any, rank: int | None = None, energy: float | None = None, dtype: str = "float32",
                   multiple: int = 16) -> LowRankWeight:
        """Truncated SVD of w: rank ``rank``, or the smallest rank keeping ``energy`` of the squared
        singular values (0 < energy <= 1); then rounded up to a multiple of ``multiple`` (the SIMD
        width) and capped at min(N, K). The singular values are split evenly between the factors
        (u = U sqrt(S), v = sqrt(S) V.T). ``dtype="int8"`` stores each factor as a per-channel
        Int8Weight.
        """
        w = _as_float_matrix(w, "w")
        if (rank is None) == (energy is None):
            raise ValueError(f"rank, energy: expected exactly one of them, got rank={rank!r}, energy={energy!r}")
        if dtype not in ("float32", "int8"):
            raise ValueError(f"dtype: expected 'float32' or 'int8', got {dtype!r}")
        if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
            raise ValueError(f"multiple: expected an int >= 1, got {multiple!r}")
        full = min(w.shape)
        uu, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank:
                raise ValueError(f"rank: expected an int >= 1, got {rank!r}")
            r = int(rank)
        else:
            if isinstance(energy, bool) or not isinstance(energy, (int, float, np.floating)) or not 0 < energy <= 1:
                raise ValueError(f"energy: expected a float in (0, 1], got {energy!r}")
            kept = np.cumsum(s**2) / max(float(np.sum(s**2)), np.finfo(np.float64).tiny)
            r = int(np.searchsorted(kept, float(energy) - 1e-12)) + 1
        r = min(-(-r // int(multiple)) * int(multiple), full)
        root = np.sqrt(s[:r])
        u = np.ascontiguousarray((uu[:, :r] * root).astype(np.float32))
        v = np.ascontiguousarray((root[:, None] * vt[:r]).astype(np.float32))
        if dtype == "int8":
            return cls(Int8Weight.from_float(u), Int8Weight.from_float(v))
        return cls(u, v)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.u.shape[0]), int(self.v.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.v.shape[0])

    @property
    def dtype(self) -> str:
        """"float32", "int8", or "mixed" (one factor of each)."""
        kinds = {isinstance(f, Int8Weight) for f in (self.u, self.v)}
        return "mixed" if len(kinds) == 2 else ("int8" if kinds == {True} else "float32")

    @property
    def nbytes(self) -> int:
        return int(sum(f.nbytes for f in (self.u, self.v)))

    @staticmethod
    def _float(f: np.ndarray | Int8Weight) -> np.ndarray:
        return f.to_float() if isinstance(f, Int8Weight) else f

    def to_float(self) -> np.ndarray:
        """u @ v in float64, rounded to float32."""
        return (self._float(self.u).astype(np.float64) @ self._float(self.v).astype(np.float64)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        dtypes = {}
        for name, f in (("u", self.u), ("v", self.v)):
            if isinstance(f, Int8Weight):
                d[f"{name}.qweight"], d[f"{name}.scale"] = f.qweight, f.scale
                dtypes[name] = "int8"
            else:
                d[name] = f
                dtypes[name] = "float32"
        d["metadata"] = {"format": self.FORMAT, "version": self.VERSION, "dtypes": dtypes}
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LowRankWeight:
        meta = _check_metadata(d, cls.FORMAT, cls.VERSION, ("dtypes",), None)
        dtypes = meta["dtypes"]
        if not (isinstance(dtypes, dict) and set(dtypes) == {"u", "v"}
                and all(dtypes[f] in ("float32", "int8") for f in ("u", "v"))):
            raise ValueError(f"d: expected metadata 'dtypes' {{'u': 'float32' | 'int8', 'v': ...}}, got {show(dtypes)}")
        arrays = {name: (f"{name}.qweight", f"{name}.scale") if dtypes[name] == "int8" else (name,) for name in ("u", "v")}
        _check_metadata(d, cls.FORMAT, cls.VERSION, ("dtypes",), arrays["u"] + arrays["v"])
        factors = []
        for name in ("u", "v"):
            keys = arrays[name]
            factors.append(Int8Weight(np.asarray(d[keys[0]]), np.asarray(d[keys[1]])) if dtypes[name] == "int8"
                           else np.asarray(d[name]))
        return cls(*factors)

    def __getstate__(self) -> dict[str, Any]:
        return {key: (np.array(v) if isinstance(v, np.ndarray) else v) for key, v in self.state_dict().items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(LowRankWeight.from_state_dict(state).__dict__)

    def _pack(self, kernel: str) -> Any:
        """(v, u) packed for the dense_f32 kernel ``kernel``; None for an int8 factor."""
        return tuple(None if isinstance(f, Int8Weight) else _core.pack_dense_f32(f, kernel) for f in (self.v, self.u))

    def __repr__(self) -> str:
        n, k = self.shape
        return f"LowRankWeight(shape=({n}, {k}), rank={self.rank}, dtype={self.dtype!r}, nbytes={self.nbytes})"
