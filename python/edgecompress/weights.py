"""Canonical compressed weight formats: portable arrays + metadata, packed lazily per CPU."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from . import _core
from .reference import quantize_weight_int8

__all__ = ["Int8Weight"]

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


class Int8Weight:
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
        self._packed: dict[str, Any] = {}
        self._lock = threading.Lock()

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
        if not isinstance(d, dict):
            raise TypeError(f"d: expected a dict from Int8Weight.state_dict(), got {type(d).__name__}")
        meta = d.get("metadata")
        if not isinstance(meta, dict) or meta.get("format") != cls.FORMAT:
            raise ValueError(f"d: expected metadata with format {cls.FORMAT!r}, got {meta!r}")
        version = meta.get("version")
        if not isinstance(version, int) or version > cls.VERSION or version < 1:
            raise ValueError(f"d: format version {version!r} is not supported (this edgecompress reads <= {cls.VERSION})")
        for key in ("qweight", "scale"):
            if key not in d:
                raise ValueError(f"d: missing array {key!r}")
        return cls(np.asarray(d["qweight"]), np.asarray(d["scale"]))

    def __getstate__(self) -> dict[str, Any]:
        # Copies (copy.deepcopy, multiprocessing) carry the canonical arrays only; packing is per
        # process and the lock is per object. Files use state_dict() and safetensors, not pickle.
        return {"qweight": np.array(self.qweight), "scale": np.array(self.scale)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["qweight"], state["scale"])

    def packed(self, kernel: str) -> Any:
        """The weight packed for a gemm_s8 kernel (built once, then cached)."""
        p = self._packed.get(kernel)
        if p is None:
            with self._lock:
                p = self._packed.get(kernel)
                if p is None:
                    p = self._packed[kernel] = _core.pack_s8(self.qweight, self.scale, kernel)
        return p

    def __repr__(self) -> str:
        n, k = self.shape
        return f"Int8Weight(shape=({n}, {k}), granularity={self.granularity!r}, nbytes={self.nbytes})"
