"""A GGUF tensor in the engine's weight formats, per ``weights=`` mode, and the report of what each
tensor takes in memory against its bytes in the file.

``"native"`` keeps each tensor as close to its file type as the engine's formats hold it: F32, F16 and
BF16 as float32 (exact), Q4_0 as an Int4Weight (exact: the same codes and float16 scales), every other
type as an Int8Weight with one scale per output row, quantized from the exact dequantized values. That
last step is not exact: Q8_0's per-32 scales, Q5/Q6 codes and the K-quants' group minimums have no
engine format yet, and the report says so per tensor (``exact`` False and the largest deviation).
``"float32"``, ``"int8"``, ``"int4-g32"`` and ``"nf4"`` re-compress every matrix from its exact values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..convert import from_gguf_q4_0
from ..formats import Int4Weight, Int8Weight
from .gguf_file import GGUFFile
from .quants import dequantize

__all__ = ["MODES", "TensorReport", "load_matrix", "load_vector"]

MODES = ("native", "float32", "int8", "int4-g32", "nf4")
_EXACT_FLOAT = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorReport:
    name: str
    file_type: str
    shape: tuple[int, ...]
    file_bytes: int
    memory_bytes: int
    form: str  # the engine format: float32, int8, int4, nf4
    exact: bool  # the engine's values equal the file's (gguf's dequantization) exactly
    max_error: float  # largest |engine value - file value| (0 when exact)


_ROWS = 4096  # rows converted at a time: a 256k-row embedding never exists whole in float32


def _check(f: GGUFFile, name: str, shape: tuple[int, ...]) -> Any:
    info = f.tensors.get(name)
    if info is None:
        raise ValueError(f"{f.path}: missing tensor {name!r}")
    if info.shape != shape:
        raise ValueError(f"{f.path}: tensor {name!r}: expected shape {shape}, got {info.shape}")
    return info


def _finite(values: np.ndarray, f: GGUFFile, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{f.path}: tensor {name!r} holds NaN or Inf values")
    return values


def load_vector(f: GGUFFile, name: str, shape: tuple[int, ...]) -> np.ndarray:
    _check(f, name, shape)
    return np.ascontiguousarray(_finite(f.dequantize(name), f, name), dtype=np.float32)


def _convert(values: np.ndarray, mode: str) -> tuple[Any, str]:
    if mode == "float32":
        return np.ascontiguousarray(values, dtype=np.float32), "float32"
    if mode in ("native", "int8"):
        return Int8Weight.from_float(values), "int8"
    if mode == "int4-g32":
        return Int4Weight.from_float(values, group_size=32), "int4"
    return Int4Weight.from_float(values, group_size=32, codebook="nf4"), "nf4"


def load_matrix(f: GGUFFile, name: str, shape: tuple[int, int], mode: str) -> tuple[Any, TensorReport]:
    """Tensor ``name`` (checked to have ``shape``) as a float32 array or a compressed weight, converted
    a block of rows at a time."""
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
    parts, err, form = [], 0.0, "float32"
    for a in range(0, rows, _ROWS):
        values = _finite(dequantize(raw[a:a + _ROWS], info.type_name, (min(rows, a + _ROWS) - a, k)), f, name)
        part, form = _convert(values, mode)
        back = part if isinstance(part, np.ndarray) else part.to_float()
        err = max(err, float(np.max(np.abs(back - values))))
        parts.append(part)
    w = parts[0] if len(parts) == 1 else concat_rows(parts)
    return w, TensorReport(name, info.type_name, info.shape, info.nbytes, int(w.nbytes), form, err == 0.0, err)
