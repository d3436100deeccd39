"""Converters between Int4Weight and other projects' 4-bit formats, all exact.

onnxruntime's ``com.microsoft.MatMulNBits`` (the ONNX exporter, edgecompress.nn.onnx, writes it) shares
Int4Weight's byte layout, so only scales change type; GGUF's Q4_0 (llama.cpp's files) interleaves a
float16 scale with each block of 32 codes. numpy only, like the formats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .formats.int4 import GROUP_SIZES, Int4Weight, pack_nibbles, unpack_nibbles

__all__ = ["from_gguf_q4_0", "from_onnx_matmulnbits", "to_gguf_q4_0", "to_onnx_matmulnbits"]


def _check_int4(w: Any) -> None:
    if not isinstance(w, Int4Weight):
        raise TypeError(f"w: expected an Int4Weight, got {type(w).__name__}")


def to_onnx_matmulnbits(w: Int4Weight) -> dict[str, Any]:
    """Initializers and attributes of an onnxruntime ``com.microsoft.MatMulNBits`` node.

    Returns {"B": uint8 (N, K/g, g/2), "scales": float32 (N * K/g,), "zero_points": uint8
    (N * ceil(K/g/2),) or absent, "attributes": {"K", "N", "bits", "block_size"}}. Uniform
    weights only (MatMulNBits has no codebooks). The conversion is exact.
    """
    _check_int4(w)
    if w.codebook is not None:
        raise ValueError("w: MatMulNBits holds uniform 4-bit weights; this weight has a codebook")
    n = w.shape[0]
    d: dict[str, Any] = {"B": np.array(w.qweight), "scales": w.scale.astype(np.float32).reshape(-1)}
    if w.zero_point is not None:
        d["zero_points"] = np.array(w.zero_point).reshape(-1)
    d["attributes"] = {"K": w.k, "N": n, "bits": 4, "block_size": w.group_size}
    return d


def from_onnx_matmulnbits(B: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None = None, *,
                          K: int, N: int, block_size: int, bits: int = 4) -> Int4Weight:
    """From MatMulNBits initializers (see to_onnx_matmulnbits). Scales are stored as float16:
    float32 scales that float16 cannot hold exactly are rounded (relative change <= 2^-11)."""
    if bits != 4:
        raise ValueError(f"bits: expected 4, got {bits}")
    if block_size not in GROUP_SIZES:
        raise ValueError(f"block_size: expected one of {GROUP_SIZES}, got {block_size}")
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
    return Int4Weight(b.reshape(N, groups, block_size // 2), s.reshape(N, groups).astype(np.float16), zp, k=int(K))


def to_gguf_q4_0(w: Int4Weight) -> np.ndarray:
    """GGUF Q4_0 blocks, uint8 (N, K/32 * 18): per 32 weights a float16 scale d and 16 bytes
    whose low nibbles are elements 0..15 and high nibbles 16..31, value (code - 8) * d. Exact;
    needs group_size 32, symmetric, no codebook and K a multiple of 32."""
    _check_int4(w)
    if w.codebook is not None or w.zero_point is not None or w.group_size != 32 or w.k % 32:
        raise ValueError("w: Q4_0 needs a symmetric uniform weight with group_size 32 and K a multiple of 32")
    n, groups = w.shape[0], w.groups
    codes = unpack_nibbles(w.qweight).reshape(n, groups, 32)
    qs = (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)
    d = w.scale.reshape(n, groups, 1).view(np.uint8).reshape(n, groups, 2)
    return np.concatenate([d, qs], axis=-1).reshape(n, groups * 18)


def from_gguf_q4_0(blocks: np.ndarray, shape: tuple[int, int]) -> Int4Weight:
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
    return Int4Weight(pack_nibbles(codes, 32), d, None, k=k)
