"""Int8Weight: symmetric int8 weights with one float32 scale per output channel or per tensor."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import MAX_N, as_float_matrix, check_metadata, frozen, show

__all__ = ["Int8Weight", "quantize_weight_int8"]

# The longest rows whose int32 accumulators stay exact: |activation - zero point| <= 128 (int8
# activations), |weight| <= 127. (uint8 activations allow less; ops.linear checks that per call.)
MAX_K = (2**31 - 1) // (127 * 128)


def quantize_weight_int8(w: np.ndarray, granularity: str = "channel") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127]: scale = max|w| / 127 per output row (or per tensor); 1 if zero."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1) if granularity == "channel" else np.abs(w).max().reshape(1)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


class Int8Weight:
    """Symmetric int8 weight W ~ qweight * scale, shaped (N, K) like torch ``Linear.weight``.

    ``qweight`` is int8 in [-127, 127] (the symmetric range: -128 is excluded so that every tier's
    integer arithmetic stays exact); ``scale`` is float32 (N,) per output channel or (1,) per tensor.
    The arrays are stored read-only. The packed form for the running CPU is built by the ops layer
    on first use and kept for the life of the object (one per kernel, i.e. per tier in use).
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
        if qweight.shape[0] > MAX_N:
            raise ValueError(f"qweight: expected N <= {MAX_N}, got shape {qweight.shape}")
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
        self.qweight = frozen(qweight)
        self.scale = frozen(scale)

    @classmethod
    def from_float(cls, w: Any, granularity: str = "channel") -> Int8Weight:
        """Quantize a float (N, K) weight: scale = max|w| / 127 per output channel or per tensor."""
        if granularity not in ("channel", "tensor"):
            raise ValueError(f"granularity: expected 'channel' or 'tensor', got {granularity!r}")
        q, s = quantize_weight_int8(as_float_matrix(w, "w"), granularity)
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
        meta = check_metadata(d, cls.FORMAT, cls.VERSION, ("granularity",), ("qweight", "scale"))
        w = cls(np.asarray(d["qweight"]), np.asarray(d["scale"]))
        if meta["granularity"] != w.granularity:
            raise ValueError(f"d: metadata granularity {show(meta['granularity'])} does not match the scale "
                             f"of shape {w.scale.shape} ({w.granularity!r})")
        return w

    def __getstate__(self) -> dict[str, Any]:
        # Copies (copy.deepcopy, multiprocessing) carry the canonical arrays only: packing is per
        # process (the ops layer keeps it per weight object). Files use state_dict() and safetensors, not pickle.
        return {"qweight": np.array(self.qweight), "scale": np.array(self.scale)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["qweight"], state["scale"])

    def __repr__(self) -> str:
        n, k = self.shape
        return f"Int8Weight(shape=({n}, {k}), granularity={self.granularity!r}, nbytes={self.nbytes})"

