"""A reader of GGUF files (llama.cpp's model format, versions 2 and 3, little-endian) that trusts nothing.

Layout: the magic ``GGUF``, a uint32 version, uint64 tensor and metadata counts; the metadata as
(string key, uint32 value type, value) entries; per tensor a string name, uint32 n_dims, n_dims
uint64 sizes ne (ne0 first: ne0 is the contiguous axis, so numpy's shape is ne reversed), a uint32
GGML type and a uint64 offset into the data section; then padding to the alignment
(``general.alignment``, default 32) and the data section. Strings are a uint64 byte length and UTF-8
bytes; an array is a uint32 element type, a uint64 count and the elements (arrays may nest).

GGUF loaders have a long history of memory-safety bugs from trusting these integers, so every one is
checked before it is used and any inconsistency is a ``ValueError`` that says what and where:

- counts (tensors, metadata entries, array elements) against the bytes left, using the smallest size
  one item can take, so no loop runs longer than the file allows; every read is bounds-checked;
- the caps below on string, key, name and array lengths and on array nesting;
- n_dims in 1..MAX_DIMS, each ne >= 1, sizes computed with Python ints (no overflow), a known GGML type
  (unknown ids are refused, naming the tensor), ne0 a multiple of the type's block;
- tensor data aligned, inside the file and not overlapping other tensors; duplicate keys and tensor
  names, invalid UTF-8, booleans other than 0/1, a non-power-of-two alignment are refused.

Tensors are not copied: the file is memory-mapped read-only and ``raw`` returns numpy views of it.
Arrays taken from a file stay valid after ``close`` (the mapping goes away with the last of them).
A file changed or truncated by another process while mapped can still fault: GGUF files are meant to
be read-only once written.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .quants import DEQUANTIZABLE_TYPES, GGML_TYPES, TYPE_NAMES_BY_ID, dequantize

__all__ = ["GGUFFile", "GGUFTensorInfo", "MAX_ARRAY_LENGTH", "MAX_ARRAY_NESTING", "MAX_DIMS",
           "MAX_KEY_BYTES", "MAX_STRING_BYTES", "MAX_TENSOR_NAME_BYTES"]

# Caps. Real files stay far below them; they bound the memory and time a hostile file can cost.
# A string value: chat templates take kilobytes, but some converters embed a whole tokenizer.json
# (tens of MB for 256k-token vocabularies) as ``tokenizer.huggingface.json``.
MAX_STRING_BYTES = 64 << 20
# Elements of one array: vocabularies and merge lists are at most a few hundred thousand entries.
MAX_ARRAY_LENGTH = 1 << 24
# Arrays inside arrays: files use none or one level; recursion depth stays small.
MAX_ARRAY_NESTING = 8
# Keys: the GGUF specification limits them to 65535 bytes.
MAX_KEY_BYTES = 65535
# Tensor names: ggml stores them in 64 bytes including the terminating zero (GGML_MAX_NAME).
MAX_TENSOR_NAME_BYTES = 63
# ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
MAX_DIMS = 4

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_HEADER_BYTES = 4 + 4 + 8 + 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# GGUF metadata value types: id -> (name, numpy dtype of one element, or None for string/array)
_STRING, _ARRAY, _BOOL = 8, 9, 7
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<u1"), 1: ("INT8", "<i1"), 2: ("UINT16", "<u2"), 3: ("INT16", "<i2"),
    4: ("UINT32", "<u4"), 5: ("INT32", "<i4"), 6: ("FLOAT32", "<f4"), 7: ("BOOL", "<u1"),
    8: ("STRING", None), 9: ("ARRAY", None), 10: ("UINT64", "<u8"), 11: ("INT64", "<i8"),
    12: ("FLOAT64", "<f8"),
}
# the fewest bytes one value of each type takes: a string is at least its length, an array at
# least its element type and count
_MIN_VALUE_BYTES = {t: (8 if t == _STRING else 12 if t == _ARRAY else np.dtype(dt).itemsize)
                    for t, (_, dt) in _VALUE_TYPES.items()}
_MIN_KV_BYTES = 8 + 1 + 4 + 1          # key length, a key of one byte, value type, smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, name, n_dims, one ne, type, offset


@dataclass(frozen=True)
class GGUFTensorInfo:
    """Where one tensor lies in a GGUF file. ``shape`` is in numpy order (ggml's ne reversed);
    ``offset`` is from the start of the file; ``nbytes`` is its size in the file."""

    name: str
    type_name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class _Cursor:
    """Reads little-endian values from a buffer, refusing any read past its end."""

    def __init__(self, buf: Any, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def left(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.left():
            raise ValueError(f"GGUF file truncated: {what} needs {n} bytes at offset {self.pos}, only {self.left()} left")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self, what: str, cap: int) -> str:
        n = self.u64(f"the length of {what}")
        if n > cap:
            raise ValueError(f"{what}: string of {n} bytes exceeds the cap of {cap}")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}: string is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    def count(self, n: int, min_item_bytes: int, what: str) -> None:
        """Refuse a count of items that could not fit in the bytes left, before looping over it."""
        if n * min_item_bytes > self.left():
            raise ValueError(f"{what}: a count of {n} needs at least {n * min_item_bytes} bytes, only {self.left()} left at offset {self.pos}")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype not in _VALUE_TYPES:
            raise ValueError(f"{what}: unknown metadata value type {vtype}")
        if vtype == _STRING:
            return self.string(what, MAX_STRING_BYTES)
        if vtype == _ARRAY:
            return self.array(what, depth + 1)
        return self.scalars(vtype, 1, what)[0]

    def scalars(self, vtype: int, n: int, what: str) -> list[Any]:
        dtype = np.dtype(_VALUE_TYPES[vtype][1])
        self.need(n * dtype.itemsize, what)
        values = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos)
        if vtype == _BOOL:
            if np.any(values > 1):
                raise ValueError(f"{what}: a BOOL must be 0 or 1, got {int(values.max())}")
            values = values.astype(bool)
        self.pos += n * dtype.itemsize
        return values.tolist()

    def array(self, what: str, depth: int) -> list[Any]:
        if depth > MAX_ARRAY_NESTING:
            raise ValueError(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        etype = self.u32(f"the element type of {what}")
        if etype not in _VALUE_TYPES:
            raise ValueError(f"{what}: unknown array element type {etype}")
        n = self.u64(f"the length of {what}")
        if n > MAX_ARRAY_LENGTH:
            raise ValueError(f"{what}: array of {n} elements exceeds the cap of {MAX_ARRAY_LENGTH}")
        self.count(n, _MIN_VALUE_BYTES[etype], what)
        if etype == _STRING:
            return [self.string(f"{what}[{i}]", MAX_STRING_BYTES) for i in range(n)]
        if etype == _ARRAY:
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(n)]
        return self.scalars(etype, n, what)


class GGUFFile:
    """A GGUF file, checked whole on opening and memory-mapped read-only.

    ``version`` (2 or 3), ``metadata`` (key -> int, float, bool, str or list of them, nested for
    arrays of arrays), ``tensors`` (name -> GGUFTensorInfo, in file order), ``alignment``,
    ``architecture`` (``general.architecture``). ``raw(name)`` is a tensor's bytes (a read-only uint8
    view, no copy); ``dequantize(name)`` its float32 values. Use as a context manager or ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        self.path = os.fspath(path)
        self._map: mmap.mmap | None = None
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER_BYTES:
                raise ValueError(f"{self.path}: not a GGUF file: {size} bytes, shorter than the {_HEADER_BYTES}-byte header")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(_Cursor(self._map, len(self._map)))
        except BaseException:
            self.close()
            raise

    def _parse(self, cur: _Cursor) -> None:
        magic = bytes(self._map[0:4])  # type: ignore[index]
        if magic != _MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file: magic {magic!r}, expected {_MAGIC!r}")
        cur.pos = 4
        version = cur.u32("the version")
        if version not in (2, 3):
            if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
                raise ValueError(f"{self.path}: big-endian GGUF files are not supported")
            raise ValueError(f"{self.path}: GGUF version {version} is not supported (2 and 3 are)")
        self.version = version
        n_tensors = cur.u64("the tensor count")
        n_kv = cur.u64("the metadata count")
        cur.count(n_kv, _MIN_KV_BYTES, "metadata entries")
        cur.count(n_tensors, _MIN_TENSOR_INFO_BYTES, "tensor infos")

        self.metadata: dict[str, Any] = {}
        self.alignment = _DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key = cur.string(f"metadata key {i}", MAX_KEY_BYTES)
            if not key:
                raise ValueError(f"metadata key {i} is empty")
            if key in self.metadata:
                raise ValueError(f"metadata key {key!r} appears twice")
            vtype = cur.u32(f"the value type of metadata key {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata key {key!r}")
            if key == "general.alignment":
                a = self.metadata[key]
                if vtype != 4 or a == 0 or a & (a - 1):
                    raise ValueError(f"metadata key 'general.alignment': expected a UINT32 power of two, got {_VALUE_TYPES[vtype][0]} {a!r}")
                self.alignment = a

        infos = [self._tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, type_name, shape, rel_offset, nbytes in infos:
            if name in self.tensors:
                raise ValueError(f"tensor name {name!r} appears twice")
            if rel_offset % self.alignment:
                raise ValueError(f"tensor {name!r}: data offset {rel_offset} is not a multiple of the alignment {self.alignment}")
            start = self.data_offset + rel_offset
            if start + nbytes > cur.size:
                raise ValueError(f"tensor {name!r}: data [{start}, {start + nbytes}) runs past the end of the file ({cur.size} bytes)")
            self.tensors[name] = GGUFTensorInfo(name, type_name, shape, start, nbytes)
        by_offset = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_offset, by_offset[1:]):
            if b.offset < a.offset + a.nbytes:
                raise ValueError(f"tensors {a.name!r} and {b.name!r} overlap: [{a.offset}, {a.offset + a.nbytes}) and [{b.offset}, {b.offset + b.nbytes})")

    @staticmethod
    def _tensor_info(cur: _Cursor, i: int) -> tuple[str, str, tuple[int, ...], int, int]:
        name = cur.string(f"the name of tensor {i}", MAX_TENSOR_NAME_BYTES)
        if not name:
            raise ValueError(f"tensor {i} has an empty name")
        n_dims = cur.u32(f"n_dims of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"tensor {name!r}: n_dims must be in 1..{MAX_DIMS}, got {n_dims}")
        ne = [cur.u64(f"ne[{d}] of tensor {name!r}") for d in range(n_dims)]
        if min(ne) < 1:
            raise ValueError(f"tensor {name!r}: every dimension must be at least 1, got ne {ne}")
        type_id = cur.u32(f"the type of tensor {name!r}")
        if type_id not in TYPE_NAMES_BY_ID:
            raise ValueError(f"tensor {name!r}: unknown GGML type id {type_id}")
        type_name = TYPE_NAMES_BY_ID[type_id]
        _, values_per_block, block_bytes = GGML_TYPES[type_name]
        if ne[0] % values_per_block:
            raise ValueError(f"tensor {name!r}: ne0 = {ne[0]} is not a multiple of the {type_name} block of {values_per_block}")
        rel_offset = cur.u64(f"the data offset of tensor {name!r}")
        n_values = 1
        for n in ne:  # Python ints: no overflow; the bounds check against the file size follows
            n_values *= n
        return name, type_name, tuple(reversed(ne)), rel_offset, n_values // values_per_block * block_bytes

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{self.path}: metadata key 'general.architecture' is missing or not a string (got {arch!r})")
        return arch

    def _info(self, name: Any) -> GGUFTensorInfo:
        if not isinstance(name, str):
            raise TypeError(f"name: expected a tensor name (str), got {type(name).__name__}")
        if self._map is None:
            raise ValueError(f"{self.path}: the file is closed")
        if name not in self.tensors:
            raise ValueError(f"name: no tensor {name!r} in {self.path}")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor ``name`` in the file: a read-only uint8 view of the mapping."""
        info = self._info(name)
        return np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)  # type: ignore[arg-type]

    def dequantize(self, name: str) -> np.ndarray:
        """The float32 values of tensor ``name``, in numpy order (see ``quants.dequantize``)."""
        info = self._info(name)
        if info.type_name not in DEQUANTIZABLE_TYPES:
            raise ValueError(f"tensor {name!r} has GGML type {info.type_name}, which cannot be loaded; supported: {', '.join(DEQUANTIZABLE_TYPES)}")
        return dequantize(self.raw(name), info.type_name, info.shape)

    def release(self, name: str) -> None:
        """Drop the pages of tensor ``name`` from this process (they stay in the page cache and come
        back if read again): a loader that converts tensors one by one then never holds the whole file
        next to what it converted it into."""
        info = self._info(name)
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = info.offset // mmap.PAGESIZE * mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, lo, info.offset + info.nbytes - lo)  # type: ignore[union-attr]

    def close(self) -> None:
        """Release the mapping. Arrays returned by ``raw`` keep it alive until they are freed."""
        m, self._map = self._map, None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # views are still exported; the mapping is unmapped when the last one goes

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._map is None else f"{len(self.tensors)} tensors"
        return f"GGUFFile({self.path!r}, version {getattr(self, 'version', '?')}, {state})"
