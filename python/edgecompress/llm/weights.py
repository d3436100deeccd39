"""A GGUF tensor in the engine's weight formats, per ``weights=`` mode, and the report of what each
tensor takes in memory against its bytes in the file.

``"native"`` keeps each tensor as close to its file type as the engine's formats hold it:

- F32, F16, BF16: float32 (exact).
- Q4_0: an Int4Weight (exact: the same codes and float16 scales).
- Q8_0, Q5_0: a ``SplitInt8Weight`` (exact): the integer codes q (|q| <= 128) and float16 scale d of
  each block of 32, held as two 4-bit weights, q = 16 hi + lo with hi in -8..7 (scale 16 d) and lo in
  0..15 (scale d, zero point 0). The gemm_q4 kernels run both with activations quantized per group
  of 32 (as llama.cpp quantizes them per block), and the two products are added.
- Q4_1, Q5_1 and the K-quants: the same form, requantized from the exact values with a float16 scale
  per 32 (max|w| / 127): not exact (their minimums and 16-value sub-blocks have no engine format);
  the report gives each tensor's largest deviation.

``"float32"``, ``"int8"`` (one scale per row, activations quantized per row), ``"int4-g32"`` and
``"nf4"`` re-compress every matrix from its exact values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..convert import from_gguf_q4_0
from ..formats import Int4Weight, Int8Weight
from ..formats.int4 import pack_nibbles, pack_zero_points
from .gguf_file import GGUFFile
from .quants import DEQUANTIZABLE_TYPES, INTEGER_TYPES, dequantize, integer_codes

__all__ = ["MODES", "SplitInt8Weight", "TensorReport", "load_matrix", "load_vector", "split_int8"]

MODES = ("native", "float32", "int8", "int4-g32", "nf4")
_EXACT_FLOAT = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorReport:
    name: str
    file_type: str
    shape: tuple[int, ...]
    file_bytes: int
    memory_bytes: int
    form: str  # the engine format: float32, int8, int4, nf4, int8-g32 (SplitInt8Weight)
    exact: bool  # the engine's values equal the file's (gguf's dequantization) exactly
    max_error: float  # largest |engine value - file value| (0 when exact)


class SplitInt8Weight:
    """An 8-bit weight with a float16 scale d per group of 32 along K, as two Int4Weights: w = hi + lo,
    hi = 16 d (code - 8), lo = d code. ``to_float`` is d * q exactly (float32 products of a float16
    and an integer of at most 8 bits are exact)."""

    def __init__(self, hi: Int4Weight, lo: Int4Weight) -> None:
        if hi.shape != lo.shape:
            raise ValueError(f"hi and lo: expected one shape, got {hi.shape} and {lo.shape}")
        self.hi, self.lo = hi, lo

    @property
    def shape(self) -> tuple[int, int]:
        return self.hi.shape

    @property
    def nbytes(self) -> int:
        return self.hi.nbytes + self.lo.nbytes

    def to_float(self) -> np.ndarray:
        return (self.hi.to_float() + self.lo.to_float()).astype(np.float32)

    @staticmethod
    def concat(parts: list[SplitInt8Weight]) -> SplitInt8Weight | None:
        """The rows of parts in order (None when their halves cannot be joined)."""
        from ..engine.builder import concat_rows

        if len(parts) == 1:
            return parts[0]
        hi, lo = concat_rows([p.hi for p in parts]), concat_rows([p.lo for p in parts])
        return None if hi is None or lo is None else SplitInt8Weight(hi, lo)

    def __repr__(self) -> str:
        return f"SplitInt8Weight(shape={self.shape}, g=32)"


def split_int8(q: np.ndarray, d: np.ndarray) -> SplitInt8Weight:
    """Codes q (N, K) in -128..127 with float16 scales d (N, K / 32) as a SplitInt8Weight."""
    n, k = q.shape
    if q.min(initial=0) < -128 or q.max(initial=0) > 127:
        raise ValueError("q: expected codes in -128..127")
    d32 = d.astype(np.float32)
    if not np.isfinite(d32).all() or (np.abs(d32) > 4094).any():  # 16 d must stay a finite float16
        raise ValueError("d: expected finite scales of magnitude <= 4094")
    q = q.astype(np.int16)
    hi = np.floor_divide(q, 16)
    lo = q - 16 * hi
    hw = Int4Weight(pack_nibbles((hi + 8).astype(np.uint8), 32), (d32 * 16).astype(np.float16), None, k=k)
    lw = Int4Weight(pack_nibbles(lo.astype(np.uint8), 32), d.astype(np.float16),
                    pack_zero_points(np.zeros((n, k // 32), np.uint8)), k=k)
    return SplitInt8Weight(hw, lw)


def _requantize_g32(values: np.ndarray) -> SplitInt8Weight:
    """Float values as codes in -127..127 with a float16 scale max|w| / 127 per group of 32."""
    n, k = values.shape
    g = values.reshape(n, k // 32, 32)
    d = (np.abs(g).max(axis=-1) / 127).astype(np.float16)
    d32 = d.astype(np.float32)
    safe = np.where(d32 > 0, d32, 1.0)[..., None]
    q = np.clip(np.rint(g / safe), -127, 127).astype(np.int16).reshape(n, k)
    return split_int8(q, d)


_ROWS = 4096  # rows converted at a time: a 256k-row embedding never exists whole in float32


def _check(f: GGUFFile, name: str, shape: tuple[int, ...]) -> Any:
    info = f.tensors.get(name)
    if info is None:
        raise ValueError(f"{f.path}: missing tensor {name!r}")
    if info.type_name not in DEQUANTIZABLE_TYPES:
        raise ValueError(f"{f.path}: tensor {name!r} has GGML type {info.type_name}, which edgecompress cannot load "
                         f"(supported: {', '.join(DEQUANTIZABLE_TYPES)})")
    if info.shape != shape:
        raise ValueError(f"{f.path}: tensor {name!r}: expected shape {shape}, got {info.shape}")
    return info


def _finite(values: np.ndarray, f: GGUFFile, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{f.path}: tensor {name!r} holds NaN or Inf values")
    return values


def load_vector(f: GGUFFile, name: str, shape: tuple[int, ...]) -> np.ndarray:
    _check(f, name, shape)
    return np.array(_finite(f.dequantize(name), f, name), dtype=np.float32)  # a copy: the file's pages go


def _convert(values: np.ndarray, mode: str) -> tuple[Any, str]:
    if mode == "float32":
        return np.array(values, dtype=np.float32), "float32"  # a copy (F32 values are a view of the file)
    if mode == "native":
        return _requantize_g32(values), "int8-g32"
    if mode == "int8":
        return Int8Weight.from_float(values), "int8"
    if mode == "int4-g32":
        return Int4Weight.from_float(values, group_size=32), "int4"
    return Int4Weight.from_float(values, group_size=32, codebook="nf4"), "nf4"


def load_matrix(f: GGUFFile, name: str, shape: tuple[int, int], mode: str) -> tuple[Any, TensorReport]:
    """Tensor ``name`` (checked to have ``shape``) as a float32 array or a compressed weight, converted
    a block of rows at a time; the tensor's pages of the file are released afterwards."""
    try:
        return _load_matrix(f, name, shape, mode)
    finally:
        if name in f.tensors:
            f.release(name)


def _load_matrix(f: GGUFFile, name: str, shape: tuple[int, int], mode: str) -> tuple[Any, TensorReport]:
    from ..engine.builder import concat_rows

    info = _check(f, name, shape)
    if mode == "native" and info.type_name in _EXACT_FLOAT:
        mode = "float32"
    if mode == "native" and info.type_name == "Q4_0":
        w = from_gguf_q4_0(f.raw(name), shape)
        _finite(w.scale, f, name)
        return w, TensorReport(name, info.type_name, info.shape, info.nbytes, int(w.nbytes), "int4", True, 0.0)
    rows, k = shape
    raw = f.raw(name).reshape(rows, -1)
    if mode == "native" and info.type_name in INTEGER_TYPES and k % 32 == 0:
        parts = []
        for a in range(0, rows, _ROWS):
            q, d = integer_codes(raw[a:a + _ROWS], info.type_name, min(rows, a + _ROWS) - a, k)
            parts.append(split_int8(q, d))
        w = SplitInt8Weight.concat(parts)
        return w, TensorReport(name, info.type_name, info.shape, info.nbytes, int(w.nbytes), "int8-g32", True, 0.0)
    parts, err, form = [], 0.0, "float32"
    for a in range(0, rows, _ROWS):
        values = _finite(dequantize(raw[a:a + _ROWS], info.type_name, (min(rows, a + _ROWS) - a, k)), f, name)
        part, form = _convert(values, mode)
        back = part if isinstance(part, np.ndarray) else part.to_float()
        err = max(err, float(np.max(np.abs(back - values))))
        parts.append(part)
    if isinstance(parts[0], SplitInt8Weight):
        w = SplitInt8Weight.concat(parts)
    else:
        w = parts[0] if len(parts) == 1 else concat_rows(parts)
    return w, TensorReport(name, info.type_name, info.shape, info.nbytes, int(w.nbytes), form, err == 0.0, err)
