"""Saving and loading programs: one safetensors file.

Tensors: each weight's arrays, ``<weight>`` for a float array and ``<weight>/<array>`` for the arrays
of a canonical format (its ``state_dict()``). Metadata: one entry, ``"edgecompress.program"``, a JSON
document

    {"format": "edgecompress.program", "version": 1, "edgecompress_version": "...",
     "inputs": [{"name", "dtype", "dims"}], "outputs": [...], "nodes": [{"op", "inputs", "outputs",
     "attrs", "name"}], "weights": {"<name>": null (a float array) or <the format's metadata: format,
     version, ...>}, "info": {...}, "sha256": <hex digest of the document without it and of every
     tensor: name, dtype, shape, bytes>}

Loading maps the file into memory (no read of the whole file into a buffer), checks the header's
offsets against the file, the digest, every format through its ``from_state_dict`` (indices and
sizes checked before a kernel sees them) and the graph through ``Program``; any failure is a
ValueError naming what is wrong. Files are read with numpy alone: no torch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from typing import Any

import numpy as np

from .. import __version__
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from .ops import Node
from .program import Input, Program

__all__ = ["load", "save"]

KEY = "edgecompress.program"
VERSION = 1
_FORMATS = {c.FORMAT: c for c in (Int8Weight, Int4Weight, SparseWeight, LowRankWeight)}
_DTYPES = {"F32": np.float32, "F16": np.float16, "I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16,
           "I32": np.int32, "I64": np.int64}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 2**20
_SLICE = 4 * 2**20  # bytes hashed between releases of their pages (load)


def _path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _digest(doc: dict[str, Any], tensors: dict[str, np.ndarray], done: Any = None) -> str:
    """sha256 of the document (without its digest) and of every tensor; ``done(name, begin, end)`` is
    called after each slice of a tensor's bytes is hashed."""
    h = hashlib.sha256(json.dumps({k: v for k, v in doc.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        data = memoryview(np.ascontiguousarray(a)).cast("B")
        for b in range(0, len(data), _SLICE):
            h.update(data[b:b + _SLICE])
            if done is not None:
                done(name, b, min(len(data), b + _SLICE))
    return h.hexdigest()


def save(program: Program, path: Any) -> None:
    """Write ``program`` to one safetensors file at ``path`` (see the module docstring)."""
    path = _path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path: no directory {folder!r} to write {os.path.basename(path)!r} into")
    tensors: dict[str, np.ndarray] = {}
    weights: dict[str, Any] = {}
    for name, w in program.weights.items():
        if isinstance(w, np.ndarray):
            tensors[name] = w
            weights[name] = None
            continue
        d = w.state_dict()
        meta = d.pop("metadata")
        for k, a in d.items():
            if a is not None:
                tensors[f"{name}/{k}"] = np.asarray(a)
        weights[name] = meta
    doc = {"format": KEY, "version": VERSION, "edgecompress_version": __version__,
           "inputs": [i.to_json() for i in program.inputs], "outputs": program.outputs,
           "nodes": [n.to_json() for n in program.nodes], "weights": weights, "info": program.info}
    doc["sha256"] = _digest(doc, tensors)
    # safetensors' own writer: header, then each tensor's bytes
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={KEY: json.dumps(doc)})


def _header(buf: Any, size: int, path: str) -> tuple[dict[str, Any], int]:
    if size < 8:
        raise ValueError(f"path: {path!r} is too short to be a safetensors file ({size} bytes)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > min(size - 8, _MAX_HEADER):
        raise ValueError(f"path: {path!r} has a header of {n} bytes that does not fit the file (truncated or corrupt)")
    try:
        header = json.loads(bytes(buf[8:8 + n]))
    except (ValueError, RecursionError) as e:
        raise ValueError(f"path: the header of {path!r} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError(f"path: the header of {path!r} is not a JSON object")
    return header, 8 + n


def _tensors(header: dict[str, Any], buf: Any, start: int, size: int, path: str) -> dict[str, np.ndarray]:
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(t, dict) and t.get("dtype") in _DTYPES and isinstance(t.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in t["shape"])
                and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in t["data_offsets"])):
            raise ValueError(f"path: tensor {name!r} of {path!r} has an invalid header entry")
        dtype = np.dtype(_DTYPES[t["dtype"]])
        b, e = t["data_offsets"]
        count = int(np.prod(t["shape"], dtype=np.int64))
        if not (0 <= b <= e and start + e <= size and e - b == count * dtype.itemsize):
            raise ValueError(f"path: tensor {name!r} of {path!r} lies outside the file or does not match its shape "
                             f"(truncated or corrupt)")
        a = np.frombuffer(buf, dtype=dtype, count=count, offset=start + b).reshape(t["shape"])
        out[name] = a
    return out


def _doc(header: dict[str, Any], path: str) -> dict[str, Any]:
    meta = header.get("__metadata__")
    text = meta.get(KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        raise ValueError(f"path: {path!r} is not an edgecompress program (no {KEY!r} metadata)")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"path: the program description in {path!r} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY:
        raise ValueError(f"path: {path!r} is not an edgecompress program")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"path: {path!r} has no valid program version, got {version!r}")
    if version > VERSION:
        raise ValueError(f"path: {path!r} is a program of version {version}, newer than this edgecompress reads "
                         f"(<= {VERSION}); upgrade edgecompress")
    keys = {"format", "version", "edgecompress_version", "inputs", "outputs", "nodes", "weights", "info", "sha256"}
    if set(doc) != keys:
        raise ValueError(f"path: the program description in {path!r} has keys {sorted(map(str, doc))}, expected {sorted(keys)}")
    return doc


def _program(doc: dict[str, Any], tensors: dict[str, np.ndarray], path: str) -> Program:
    weights: dict[str, Any] = {}
    if not isinstance(doc["weights"], dict):
        raise ValueError(f"path: {path!r}: 'weights' is not a table")
    used = set()
    for name, meta in doc["weights"].items():
        if meta is None:
            if name not in tensors:
                raise ValueError(f"weight {name!r}: no tensor in {path!r}")
            weights[name] = tensors[name]
            used.add(name)
            continue
        cls = _FORMATS.get(meta.get("format")) if isinstance(meta, dict) and isinstance(meta.get("format"), str) else None
        if cls is None:
            raise ValueError(f"weight {name!r}: unknown format {meta!r}")
        prefix = name + "/"
        arrays = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and "/" not in k[len(prefix):]}
        used.update(prefix + k for k in arrays)
        try:
            weights[name] = cls.from_state_dict(dict(arrays, metadata=meta))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"weight {name!r}: {e}") from None
    extra = set(tensors) - used
    if extra:
        raise ValueError(f"path: {path!r} holds tensors no weight uses: {sorted(extra)[:5]}")
    try:
        inputs = [Input(i["name"], i["dtype"], tuple(i["dims"])) for i in doc["inputs"]]
        nodes = [Node(n["op"], list(n["inputs"]), list(n["outputs"]), dict(n["attrs"]), n["name"]) for n in doc["nodes"]]
        for i in inputs:
            if not isinstance(i.name, str) or not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in i.dims):
                raise ValueError("invalid input")
        for n in nodes:
            if not (isinstance(n.op, str) and isinstance(n.name, str) and all(isinstance(x, str) for x in n.inputs + n.outputs)):
                raise ValueError("invalid node")
        outputs = [o for o in doc["outputs"] if isinstance(o, str)]
        if len(outputs) != len(doc["outputs"]):
            raise ValueError("invalid outputs")
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise ValueError(f"path: the graph in {path!r} is malformed ({type(e).__name__}: {e})") from None
    return Program(inputs, outputs, nodes, weights, doc["info"] if isinstance(doc["info"], dict) else {})


def _releaser(buf: Any, header: dict[str, Any], start: int) -> Any:
    """A function that unmaps the pages of one hashed tensor from this process (they stay in the page
    cache): the weights' pages come back as packing reads them, a float table's only as rows are looked
    up, so loading never holds the whole file plus the packed copies."""
    if not (hasattr(buf, "madvise") and hasattr(mmap, "MADV_DONTNEED")):
        return None
    page = mmap.PAGESIZE

    def release(name: str, begin: int, end: int) -> None:
        b = header[name]["data_offsets"][0]
        lo = (start + b + begin) // page * page
        if start + b + end > lo:
            buf.madvise(mmap.MADV_DONTNEED, lo, start + b + end - lo)

    return release


def load(path: Any) -> Program:
    """The program saved at ``path`` (memory-mapped; see the module docstring)."""
    path = _path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no file at {path!r}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ValueError(f"path: {path!r} is empty")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header, start = _header(buf, size, path)
    doc = _doc(header, path)
    tensors = _tensors(header, buf, start, size, path)
    if doc["sha256"] != _digest(doc, tensors, _releaser(buf, header, start)):
        raise ValueError(f"path: the content of {path!r} does not match its digest (the file was changed or damaged)")
    program = _program(doc, tensors, path)
    for n in program.nodes:  # attributes come from the file: check them by planning nothing yet, only by op rules
        if not isinstance(n.attrs, dict):
            raise ValueError(f"node {n.name!r}: attrs is not a table")
    return program
