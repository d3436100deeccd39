"""GGML tensor types: their block layouts, and exact numpy dequantizers for the ones LLM files use.

A GGML type stores a row as blocks of ``block_size`` values in ``bytes_per_block`` bytes. The table
below lists every type id llama.cpp's ``ggml`` knows, so that a file's sizes and offsets can be checked
even for a tensor this module cannot dequantize; ``dequantize`` then names the type it refuses.

Each dequantizer is written from the block layout and computes in float32 in the same order as
llama.cpp's reference Python package (``gguf.quants``): float16 scales are widened to float32 first,
``d * q`` is one float32 product and ``d * q + m`` / ``d * q - m`` round after the product and again
after the sum (numpy never fuses them). The results are therefore equal bit for bit, which the tests
check against ``gguf.quants.dequantize``.

Layouts (all little-endian; ``f16`` is an IEEE half; super-blocks of the K types hold 256 values):

- Q4_0 / Q4_1: ``d`` (and ``m``), then 16 bytes of nibbles: byte j holds value j (low nibble) and
  value j + 16 (high nibble). Q4_0 is ``d * (q - 8)``, Q4_1 is ``d * q + m``.
- Q5_0 / Q5_1: as Q4_0 / Q4_1 plus a 32-bit word whose bit j is the fifth bit of value j; Q5_0
  subtracts 16.
- Q8_0: ``d`` then 32 int8.
- Q4_K: ``d``, ``dmin``, 12 bytes holding eight 6-bit (scale, min) pairs, then 4 chunks of 32 bytes:
  chunk c holds sub-block 2c in its low nibbles and 2c + 1 in its high nibbles. Value =
  ``(d * scale) * q - (dmin * min)``.
- Q5_K: Q4_K plus 32 bytes after the scales whose bit j of byte l is the fifth bit of value l of
  sub-block j.
- Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 int8 scales (one per 16 values),
  then ``d``; value = ``(d * scale) * (q - 32)``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["DEQUANTIZABLE_TYPES", "GGML_TYPES", "block_size", "bytes_per_block", "dequantize"]

# name -> (type id, values per block, bytes per block); ids and sizes of llama.cpp's ggml.h
GGML_TYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4), "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34), "Q8_1": (9, 32, 40),
    "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110), "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210), "Q8_K": (15, 256, 292),
    "IQ2_XXS": (16, 256, 66), "IQ2_XS": (17, 256, 74), "IQ3_XXS": (18, 256, 98), "IQ1_S": (19, 256, 50),
    "IQ4_NL": (20, 32, 18), "IQ3_S": (21, 256, 110), "IQ2_S": (22, 256, 82), "IQ4_XS": (23, 256, 136),
    "I8": (24, 1, 1), "I16": (25, 1, 2), "I32": (26, 1, 4), "I64": (27, 1, 8), "F64": (28, 1, 8),
    "IQ1_M": (29, 256, 56), "BF16": (30, 1, 2), "TQ1_0": (34, 256, 54), "TQ2_0": (35, 256, 66),
    "MXFP4": (39, 32, 17),
}
TYPE_NAMES_BY_ID: dict[int, str] = {tid: name for name, (tid, _, _) in GGML_TYPES.items()}

# Decoding a whole tensor at once would hold several float32 temporaries of its full size; chunks of
# this many values keep them small while each chunk is still one vectorized pass.
_CHUNK_VALUES = 1 << 20


def _check_type_name(type_name: Any, arg: str = "type_name") -> str:
    if not isinstance(type_name, str):
        raise TypeError(f"{arg}: expected a GGML type name (str), got {type(type_name).__name__}")
    if type_name not in GGML_TYPES:
        raise ValueError(f"{arg}: unknown GGML type {type_name!r}; known: {', '.join(GGML_TYPES)}")
    return type_name


def block_size(type_name: str) -> int:
    """Values per block of the GGML type ``type_name`` (1 for the plain float and int types)."""
    return GGML_TYPES[_check_type_name(type_name)][1]


def bytes_per_block(type_name: str) -> int:
    """Bytes one block of the GGML type ``type_name`` takes in a file."""
    return GGML_TYPES[_check_type_name(type_name)][2]


def _f16(blocks: np.ndarray, col: int) -> np.ndarray:
    """The little-endian float16 at byte ``col`` of each block, widened to float32, shape (n, 1)."""
    return np.ascontiguousarray(blocks[:, col:col + 2]).view("<f2").astype(np.float32)


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """Along the last axis: the low nibbles of all bytes, then their high nibbles."""
    return np.concatenate([packed & np.uint8(0x0F), packed >> np.uint8(4)], axis=-1)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Bit j of a little-endian 32-bit word is the fifth bit of value j: (n, 4) bytes -> (n, 32) << 4."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << np.uint8(4)


def _q4_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return _f16(b, 0) * q.astype(np.float32)


def _q4_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 4:20]).astype(np.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q5_0(b: np.ndarray) -> np.ndarray:
    q = (_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
    return _f16(b, 0) * q.astype(np.float32)


def _q5_1(b: np.ndarray) -> np.ndarray:
    q = (_nibbles(b[:, 8:24]) | _fifth_bits(b[:, 4:8])).astype(np.float32)
    return _f16(b, 0) * q + _f16(b, 2)


def _q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(np.float32)


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eight 6-bit scales and mins from Q4_K/Q5_K's 12 bytes: pairs 0-3 sit in the low 6 bits of
    bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 take their low 4 bits from bytes 8-11 (scale low
    nibble, min high nibble) and their top 2 bits from the top of bytes 0-3 / 4-7."""
    lo_sc, lo_m, packed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    hi_sc = (packed & np.uint8(0x0F)) | ((lo_sc >> np.uint8(6)) << np.uint8(4))
    hi_m = (packed >> np.uint8(4)) | ((lo_m >> np.uint8(6)) << np.uint8(4))
    scales = np.concatenate([lo_sc & np.uint8(0x3F), hi_sc], axis=-1)
    mins = np.concatenate([lo_m & np.uint8(0x3F), hi_m], axis=-1)
    return scales, mins


def _k_scaled(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: (d * scale) * q - (dmin * min) per sub-block of 32; q is (n, 8, 32) float32."""
    scales, mins = _k_scales_mins(b[:, 4:16])
    d = (_f16(b, 0) * scales.astype(np.float32))[:, :, None]
    dm = (_f16(b, 2) * mins.astype(np.float32))[:, :, None]
    return (d * q - dm).reshape(len(b), 256)


def _q4_k(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 16:144].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    return _k_scaled(b, q.astype(np.float32))


def _q5_k(b: np.ndarray) -> np.ndarray:
    low = _nibbles(b[:, 48:176].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    # bit j of byte l -> (l, j); sub-block j wants its bits along l
    high = np.unpackbits(b[:, 16:48, None], axis=-1, bitorder="little").transpose(0, 2, 1)
    return _k_scaled(b, (low | (high << np.uint8(4))).astype(np.float32))


def _q6_k(b: np.ndarray) -> np.ndarray:
    n = len(b)
    # each half of 128 values: 64 low-nibble bytes (l and l + 32) and 32 high bytes with 4 pairs of
    # bits; value 32k + l takes quarter k of those: low/high nibble of byte l or l + 32, bits 2k..2k+1
    low = _nibbles(b[:, 0:128].reshape(n, 2, 64)).reshape(n, 2, 4, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = (b[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & np.uint8(3)
    q = ((low | (high << np.uint8(4))).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    d = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)
    return (d[:, :, None] * q.astype(np.float32)).reshape(n, 256)


_BLOCK_DECODERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}
DEQUANTIZABLE_TYPES: tuple[str, ...] = ("F32", "F16", "BF16", *_BLOCK_DECODERS)


def _as_bytes(raw_bytes: Any) -> np.ndarray:
    if isinstance(raw_bytes, np.ndarray):
        if raw_bytes.dtype != np.uint8:
            raise TypeError(f"raw_bytes: expected a uint8 array, got dtype {raw_bytes.dtype}")
        return raw_bytes.reshape(-1)
    if isinstance(raw_bytes, (bytes, bytearray, memoryview)):
        return np.frombuffer(raw_bytes, dtype=np.uint8)
    raise TypeError(f"raw_bytes: expected a uint8 numpy array or a bytes-like object, got {type(raw_bytes).__name__}")


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or not shape:
        raise TypeError(f"shape: expected a non-empty tuple of ints, got {shape!r}")
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"shape: expected positive ints, got {tuple(shape)!r}")
    return tuple(int(d) for d in shape)


def dequantize(raw_bytes: Any, type_name: str, shape: Any) -> np.ndarray:
    """The float32 values of a GGML tensor, in numpy order ``shape`` (the last axis is ggml's ne0, the
    one blocks run along), equal bit for bit to ``gguf.quants.dequantize``.

    ``raw_bytes``: the tensor's bytes (a uint8 array, e.g. ``GGUFFile.raw(name)``, or bytes). F32 comes
    back as a view of them, without a copy (read-only when they are); every other type is decoded
    into a new array.
    """
    data = _as_bytes(raw_bytes)
    _check_type_name(type_name)
    dims = _check_shape(shape)
    if type_name not in DEQUANTIZABLE_TYPES:
        raise ValueError(f"type_name: no dequantizer for GGML type {type_name}; supported: {', '.join(DEQUANTIZABLE_TYPES)}")
    _, values_per_block, block_bytes = GGML_TYPES[type_name]
    if dims[-1] % values_per_block:
        raise ValueError(f"shape: the last axis of a {type_name} tensor must be a multiple of {values_per_block}, got shape {dims}")
    n_values = int(np.prod(dims, dtype=object))
    n_blocks = n_values // values_per_block
    if data.size != n_blocks * block_bytes:
        raise ValueError(f"raw_bytes: a {type_name} tensor of shape {dims} takes {n_blocks * block_bytes} bytes, got {data.size}")
    if type_name == "F32":
        return data.view("<f4").astype(np.float32, copy=False).reshape(dims)
    if type_name == "F16":
        return data.view("<f2").astype(np.float32).reshape(dims)
    if type_name == "BF16":
        # bfloat16 is the top half of a float32
        return (data.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32).reshape(dims)
    decode = _BLOCK_DECODERS[type_name]
    blocks = data.reshape(n_blocks, block_bytes)
    out = np.empty((n_blocks, values_per_block), dtype=np.float32)
    step = max(1, _CHUNK_VALUES // values_per_block)
    # inf and NaN scales are the file's values: they come out as they are (as in gguf.quants), silently
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, n_blocks, step):
            out[start:start + step] = decode(blocks[start:start + step])
    return out.reshape(dims)


# Types whose values are a float16 scale per 32 times an integer: (bytes per block, codes of blocks)
_INTEGER_BLOCKS = {
    "Q8_0": lambda b: b[:, 2:34].view(np.int8).astype(np.int16),
    "Q5_0": lambda b: (_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])).astype(np.int16) - 16,
    "Q4_0": lambda b: _nibbles(b[:, 2:18]).astype(np.int16) - 8,
}
INTEGER_TYPES = tuple(_INTEGER_BLOCKS)


def integer_codes(raw_bytes: Any, type_name: str, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For Q8_0, Q5_0 and Q4_0 (value = d * q per block of 32): the integer codes q (rows, k) int16
    and the float16 scales d (rows, k / 32), exactly as stored."""
    if type_name not in _INTEGER_BLOCKS:
        raise ValueError(f"type_name: expected one of {', '.join(INTEGER_TYPES)}, got {type_name!r}")
    _, per, block_bytes = GGML_TYPES[type_name]
    data = _as_bytes(raw_bytes)
    if k % per or data.size != rows * k // per * block_bytes:
        raise ValueError(f"raw_bytes: a {type_name} tensor ({rows}, {k}) takes {rows * k // per * block_bytes} bytes, got {data.size}")
    blocks = data.reshape(rows * k // per, block_bytes)
    d = np.ascontiguousarray(blocks[:, 0:2]).view("<f2").astype(np.float16).reshape(rows, k // per)
    return _INTEGER_BLOCKS[type_name](blocks).reshape(rows, k), d
