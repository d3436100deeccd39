"""What every format shares: input and metadata checks, read-only arrays, bounded error messages, and
the two machine-dependent steps that the ops layer plugs in.

formats/ is numpy only: it imports neither the native module nor runtime, ops or reference, so a
weight can be built, checked, saved and loaded where no kernel is (an engine that only reads files,
a tool that converts them). Two constructors still need the machine: ``SparseWeight.from_float(...,
format="auto")`` times the kernels, and the clipping search of ``Int4Weight.from_float(...,
method="mse")`` runs natively (numpy takes seconds per layer for it). Rather than import upwards,
formats/ calls them through ``plugged(name)``; the ops layer registers them with ``plug`` when it is
imported, which ``import edgecompress`` always does.
"""

from __future__ import annotations

import reprlib
from typing import Any, Callable

import numpy as np

MAX_N = 2**31 - 1  # the most output rows (N) any format holds: kernels index them with int32

_PLUGS: dict[str, Callable[..., Any]] = {}


def plug(name: str, fn: Callable[..., Any]) -> None:
    """Register the ops layer's implementation of ``name`` ("sparse_auto" or "int4_clip_search")."""
    _PLUGS[name] = fn


def plugged(name: str) -> Callable[..., Any]:
    """The implementation of ``name`` that the ops layer registered (RuntimeError when it is not loaded)."""
    fn = _PLUGS.get(name)
    if fn is None:
        raise RuntimeError(f"{name}: needs edgecompress's kernels (import edgecompress.ops first)")
    return fn


def as_float_matrix(w: Any, name: str) -> np.ndarray:
    """w as a finite, non-empty float32 (N, K) array (float16/32/64 accepted), else TypeError/ValueError."""
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


def frozen(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous copy of a: a weight's arrays never change after it is built (the
    packed forms are built from them once). An array that nothing can write already (a C-contiguous,
    read-only view whose memory is a read-only buffer, e.g. a file mapped for reading by
    edgecompress.engine.load) is kept as it is: copying it would only double the memory of a load."""
    if _immutable(a):
        return a
    a = np.array(a, order="C", copy=True)
    a.flags.writeable = False
    return a


def _immutable(a: Any) -> bool:
    if not (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.aligned and not a.flags.writeable):
        return False
    base = a
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    if base is None:
        return False
    try:
        return memoryview(base).readonly
    except TypeError:
        return False


def state_copy(d: dict[str, Any]) -> dict[str, Any]:
    """A state_dict with its arrays copied (writeable): what __getstate__ gives copy.deepcopy and
    multiprocessing (see Int8Weight.__getstate__)."""
    return {key: (np.array(v) if isinstance(v, np.ndarray) else v) for key, v in d.items()}


# Untrusted values (a file's metadata) appear in error messages bounded: a value nested 1,000 deep or
# megabytes long would otherwise make the message itself fail (RecursionError) or flood the terminal.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80


def show(value: Any) -> str:
    """repr(value), shortened for an error message."""
    return _REPR.repr(value)


def check_metadata(d: Any, fmt: str, version_max: int, fields: tuple[str, ...], arrays: tuple[str, ...] | None,
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
    check_keys(meta, {"format", "version", *fields}, "metadata of format " + repr(fmt))
    if arrays is None:
        return meta
    for key in arrays:
        if key not in d:
            raise ValueError(f"d: missing array {key!r}")
    unknown = sorted(str(k) for k in set(d) - {"metadata", *arrays, *optional})
    if unknown:
        raise ValueError(f"d: unknown arrays {show(unknown)} for format {fmt!r} (expected {', '.join(arrays + optional)})")
    return meta


def check_keys(table: dict[str, Any], expected: set[str], what: str) -> None:
    """Exactly the keys `expected` in `table`, or ValueError naming the missing and the unknown ones."""
    missing, unknown = sorted(expected - set(table)), sorted(str(k) for k in set(table) - expected)
    if missing or unknown:
        raise ValueError(f"d: {what}: expected the keys {sorted(expected)}, got {show(sorted(str(k) for k in table))}"
                         + (f" (missing {missing})" if missing else "") + (f" (unknown {show(unknown)})" if unknown else ""))

