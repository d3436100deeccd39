"""The execution layer: numpy-level operations on compressed weights, with user-facing validation.

Everything that runs a weight comes here (the torch modules of edgecompress.nn, compress() and its
speed guard, the engine): one table (``_FORMATS``), keyed by the weight's class, gives the kernel
family that runs a format, how to pack it for that family's kernel (packing.py), and the product.
A new format is one file in formats/ and one row here.

Inputs are checked before any native code runs; wrong dtypes raise TypeError, wrong shapes or
values raise ValueError, each naming the argument, what was expected and what was given.
Memory layout: a float32 input that is not C-contiguous or not aligned is copied (never refused).
Other dtypes are refused rather than converted, so no call silently changes precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import _core
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from ..formats._common import plug
from ..formats.int8 import MAX_K as _MAX_K_INT8
from ..formats.sparse import NM
from ..runtime import (dense_f32_kernel, gemm_q4_kernel, gemm_s8_kernel, sparse_f32_kernel, sparse_nm_f32_kernel,
                       sparse_s8_kernel)
from . import packing

__all__ = ["conv2d", "linear", "packed", "qgemm"]

_ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2}
_SCHEMES = {"symmetric": 0, "asymmetric": 1}
# Longest K with an exactly representable int32 accumulator for uint8 activations (|activation -
# zero point| <= 255, |weight| <= 127); int8 activations allow formats.int8.MAX_K.
MAX_K_UINT8 = (2**31 - 1) // (127 * 255)
_MAX_K_UINT8 = MAX_K_UINT8
_MAX_ROWS = 2**31 - 1
# Up to this many rows, two float32 low-rank factors run the fused native call (each factor streams
# once per 4 rows); above it, two numpy (BLAS) matrix products are faster (benchmarks/bench_lowrank.py).
LOWRANK_FUSED_MAX_ROWS = 32


def _dtype_name(a: Any) -> str:
    return str(a.dtype) if isinstance(a, np.ndarray) else type(a).__name__


def _contiguous(a: np.ndarray) -> np.ndarray:
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def linear(
    x: np.ndarray,
    w: Int8Weight | Int4Weight | SparseWeight | LowRankWeight,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    *,
    act_scheme: str = "symmetric",
    act_scale: float | None = None,
    act_zero_point: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """y = x @ W.T (+ bias), then ``activation`` ("relu", "gelu" or None), for x of shape (..., K).

    w is an Int8Weight, an Int4Weight, a SparseWeight or a LowRankWeight. x is float32.

    Int8Weight: activations are quantized per row inside the call: ``act_scheme="symmetric"``
    (int8, the default) or ``"asymmetric"`` (uint8 with a zero point). Passing ``act_scale`` (and,
    for asymmetric, ``act_zero_point`` in [0, 255]) uses that static quantization instead.
    Int4Weight: the weight's ``compute`` mode decides ("int8": activations quantized per row and
    group of K, exact integer dot products; "float": exact dequantization, float32 arithmetic); the
    act_* arguments do not apply. SparseWeight (any format, N:M included): float32 arithmetic over
    the stored float32 values (the act_* arguments do not apply either); int8 values: activations
    quantized per row (symmetric, dynamic) as for Int8Weight, bit for bit the dense int8 path on the
    same weight. LowRankWeight: ``(x @ v.T) @ u.T``, each int8 factor through the int8 path
    (activations quantized per row, the act_* arguments apply to both factors), each float32 factor
    in float32.
    Returns float32 of shape (..., N), written into ``out`` when given (a C-contiguous float32 array
    of that shape that does not overlap x or bias). NaN or Inf in x raises ValueError.
    """
    if type(x) is not np.ndarray:
        x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x: expected float32, got {_dtype_name(x)}")
    fmt = _format(w)
    n, k = w.shape
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(f"x: expected shape (..., {k}), got {x.shape}")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
            raise TypeError(f"bias: expected a float32 numpy array, got {_dtype_name(bias)}")
        if bias.shape != (n,):
            raise ValueError(f"bias: expected shape ({n},), got {bias.shape}")
        if not np.isfinite(bias).all():
            raise ValueError("bias: expected finite values, got NaN or Inf")
        bias = _contiguous(bias)
    act = _ACTIVATIONS.get(activation) if activation is None or isinstance(activation, str) else None
    if act is None:
        raise ValueError(f"activation: expected None, 'relu' or 'gelu', got {activation!r}")
    return fmt.linear(fmt, x, w, bias, activation, act, out, act_scheme, act_scale, act_zero_point)


def _linear_int8(fmt: _FormatOps, x: np.ndarray, w: Int8Weight, bias: np.ndarray | None, activation: str | None,
                 act: int, out: np.ndarray | None, act_scheme: Any, act_scale: Any, act_zero_point: Any) -> np.ndarray:
    n, k = w.shape
    scheme = _SCHEMES.get(act_scheme) if isinstance(act_scheme, str) else None
    if scheme is None:
        raise ValueError(f"act_scheme: expected 'symmetric' or 'asymmetric', got {act_scheme!r}")
    scale, zero_point = 1.0, 0
    if act_scale is not None:
        scale, zero_point = _static_quant(act_scale, act_zero_point, scheme)
        scheme += 2
    elif act_zero_point is not None:
        raise ValueError("act_zero_point: only meaningful with act_scale (static quantization)")
    max_k = _MAX_K_INT8 if scheme in (0, 2) else _MAX_K_UINT8
    if k > max_k:
        raise ValueError(f"w: expected K <= {max_k} for exact int32 accumulation with {act_scheme} activations, got K = {k}")
    x2, out2 = _rows(x, w, bias, out)
    y = _core.linear_s8(fmt.packed(w), x2, bias, act, scheme, scale, zero_point, out2)
    return out if out is not None else y.reshape(x.shape[:-1] + (n,))


def _dynamic_only(what: str, act_scheme: Any, act_scale: Any, act_zero_point: Any) -> None:
    """Int4Weight and SparseWeight quantize activations (if at all) per row, dynamically and symmetrically."""
    if act_scheme != "symmetric" or act_scale is not None or act_zero_point is not None:
        raise ValueError(f"act_scheme/act_scale/act_zero_point: not used with a {what}")


def _linear_int4(fmt: _FormatOps, x: np.ndarray, w: Int4Weight, bias: np.ndarray | None, activation: str | None,
                 act: int, out: np.ndarray | None, act_scheme: Any, act_scale: Any, act_zero_point: Any) -> np.ndarray:
    _dynamic_only(type(w).__name__, act_scheme, act_scale, act_zero_point)
    x2, out2 = _rows(x, w, bias, out)
    y = _core.linear_q4(fmt.packed(w), x2, bias, act, 0 if w.compute == "int8" else 1, out2)
    return out if out is not None else y.reshape(x.shape[:-1] + (w.shape[0],))


def sparse_family(w: SparseWeight) -> str:
    """The kernel family of a SparseWeight: its n:m layouts, int8 values and float32 blocks each have one."""
    return "sparse_nm_f32" if w.format in NM else "sparse_s8" if w.dtype == "int8" else "sparse_f32"


_SPARSE_KERNELS = {"sparse_nm_f32": (sparse_nm_f32_kernel, _core.linear_sparse_nm_f32),
                   "sparse_s8": (sparse_s8_kernel, _core.linear_sparse_s8),
                   "sparse_f32": (sparse_f32_kernel, _core.linear_sparse_f32)}


def _linear_sparse(fmt: _FormatOps, x: np.ndarray, w: SparseWeight, bias: np.ndarray | None, activation: str | None,
                   act: int, out: np.ndarray | None, act_scheme: Any, act_scale: Any, act_zero_point: Any) -> np.ndarray:
    _dynamic_only("int8 SparseWeight (dynamic symmetric activations only)" if w.dtype == "int8" else type(w).__name__,
                  act_scheme, act_scale, act_zero_point)
    n, k = w.shape
    if w.dtype == "int8" and k > _MAX_K_INT8:
        raise ValueError(f"w: expected K <= {_MAX_K_INT8} for exact int32 accumulation, got K = {k}")
    x2, out2 = _rows(x, w, bias, out)
    y = _SPARSE_KERNELS[sparse_family(w)][1](fmt.packed(w), x2, bias, act, out2)
    return out if out is not None else y.reshape(x.shape[:-1] + (n,))


def _rows(x: np.ndarray, w: Any, bias: np.ndarray | None, out: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """x as C-contiguous (M, K) rows, and out as (M, N) after checking it."""
    n, k = w.shape
    x2 = _contiguous(x).reshape(-1, k)
    if x2.shape[0] > _MAX_ROWS:
        raise ValueError(f"x: expected at most {_MAX_ROWS} rows, got {x2.shape[0]}")
    return x2, None if out is None else _check_out(out, x.shape[:-1] + (n,), x, bias)


def _linear_lowrank(fmt: _FormatOps, x: np.ndarray, w: LowRankWeight, bias: np.ndarray | None, activation: str | None,
                    act: int, out: np.ndarray | None, act_scheme: Any, act_scale: Any, act_zero_point: Any) -> np.ndarray:
    act_args = {"act_scheme": act_scheme, "act_scale": act_scale, "act_zero_point": act_zero_point}
    n, k = w.shape
    x2 = _contiguous(x).reshape(-1, k)
    out2 = None if out is None else _check_out(out, x.shape[:-1] + (n,), x, bias)
    m = x2.shape[0]
    # (numpy has no erf: a gelu epilogue stays in the native call at every batch size)
    pv, pu = fmt.packed(w) if w.dtype != "int8" else (None, None)
    if w.dtype == "float32" and (m <= LOWRANK_FUSED_MAX_ROWS or activation == "gelu"):
        y = _core.linear_lowrank_f32(pv, pu, x2, bias, act, out2)
    else:
        t = _factor_product(x2, w.v, pv, None, None, None, act_args)
        y = _factor_product(t, w.u, pu, bias, activation, out2, act_args)
    return out if out is not None else y.reshape(x.shape[:-1] + (n,))


def _factor_product(x2: np.ndarray, f: np.ndarray | Int8Weight, f_packed: Any, bias: np.ndarray | None, activation: str | None,
                    out2: np.ndarray | None, act_args: dict[str, Any]) -> np.ndarray:
    """One factor of a LowRankWeight: the int8 path, or float32 (numpy's BLAS; the dense_f32 kernel
    when there is a gelu to apply). NaN/Inf in x are refused like everywhere else."""
    if isinstance(f, Int8Weight):
        return linear(x2, f, bias, activation, out=out2, **act_args)
    if activation == "gelu":
        return _core.linear_dense_f32(f_packed, x2, bias, _ACTIVATIONS["gelu"], out2)
    if not np.isfinite(x2).all():
        raise ValueError("x: expected finite values, got NaN or Inf")
    y = np.matmul(x2, f.T, out=out2)
    if bias is not None:
        y += bias
    if activation == "relu":
        np.maximum(y, np.float32(0), out=y)
    return y


def _check_out(out: Any, shape: tuple[int, ...], x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    # The kernels read x and bias while they write out, so any overlap gives wrong results. Weights
    # cannot overlap: their arrays are read-only copies and kernels read the packed form.
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError(f"out: expected a float32 numpy array, got {_dtype_name(out)}")
    if out.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {out.shape}")
    if not (out.flags.c_contiguous and out.flags.aligned and out.flags.writeable):
        raise ValueError("out: expected a writeable, aligned, C-contiguous array")
    for name, a in (("x", x), ("bias", bias)):
        if a is not None and np.shares_memory(out, a):
            raise ValueError(f"out: must not overlap {name} (it shares memory with {name})")
    return out.reshape(-1, shape[-1])


def _static_quant(act_scale: Any, act_zero_point: Any, scheme: int) -> tuple[float, int]:
    if isinstance(act_scale, bool) or not isinstance(act_scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"act_scale: expected a float, got {type(act_scale).__name__}")
    scale = float(np.float32(act_scale))
    if not (np.isfinite(scale) and scale >= np.finfo(np.float32).tiny):
        raise ValueError(f"act_scale: expected a finite value > 0 that is a normal float32 (>= 1.18e-38), got {act_scale!r}")
    if scheme == 0:
        if act_zero_point not in (None, 0):
            raise ValueError(f"act_zero_point: symmetric activations have zero point 0, got {act_zero_point!r}")
        return scale, 0
    if act_zero_point is None:
        raise ValueError("act_zero_point: required (an int in [0, 255]) for static asymmetric activations")
    if isinstance(act_zero_point, bool) or not isinstance(act_zero_point, (int, np.integer)):
        raise TypeError(f"act_zero_point: expected an int, got {type(act_zero_point).__name__}")
    if not 0 <= int(act_zero_point) <= 255:
        raise ValueError(f"act_zero_point: expected an int in [0, 255], got {act_zero_point}")
    return scale, int(act_zero_point)


def qgemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact integer kernel: a (M, K) int8 or uint8 times b (N, K) int8 transposed -> int32 (M, N).

    b must lie in [-127, 127]. Every tier returns the same bits, equal to the int64 product.
    b is packed on each call; for repeated use, wrap it in an Int8Weight and call ``linear``.
    """
    if not isinstance(a, np.ndarray) or a.dtype not in (np.int8, np.uint8):
        raise TypeError(f"a: expected an int8 or uint8 numpy array, got {_dtype_name(a)}")
    if not isinstance(b, np.ndarray) or b.dtype != np.int8:
        raise TypeError(f"b: expected an int8 numpy array, got {_dtype_name(b)}")
    if a.ndim != 2:
        raise ValueError(f"a: expected a 2-D (M, K) array, got shape {a.shape}")
    if b.ndim != 2 or 0 in b.shape:
        raise ValueError(f"b: expected a non-empty 2-D (N, K) array, got shape {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a: expected K = {b.shape[1]} columns to match b, got shape {a.shape}")
    k = b.shape[1]
    max_k = _MAX_K_INT8 if a.dtype == np.int8 else _MAX_K_UINT8
    if k > max_k:
        raise ValueError(f"b: expected K <= {max_k} for exact int32 accumulation with {a.dtype} activations, got K = {k}")
    if a.shape[0] > _MAX_ROWS:
        raise ValueError(f"a: expected at most {_MAX_ROWS} rows, got {a.shape[0]}")
    if b.min() < -127:
        raise ValueError("b: expected values in [-127, 127] (symmetric int8), got -128")
    packed = _core.pack_s8(_contiguous(b), np.ones(1, np.float32), gemm_s8_kernel())
    return _core.qgemm_s8(packed, _contiguous(a))


@dataclass(frozen=True)
class _FormatOps:
    """How the ops layer runs one weight format."""

    kernel: Callable[[Any], str]  # the name of the kernel that runs weight w at the current tier cap
    pack: Callable[[Any, str], Any]  # w packed for that kernel (packing.py)
    linear: Callable[..., np.ndarray]  # linear() after its common checks, given this row first

    def packed(self, w: Any) -> Any:
        return packing.cached(w, self.kernel(w), self.pack)


_FORMATS: dict[type, _FormatOps] = {
    Int8Weight: _FormatOps(lambda w: gemm_s8_kernel(), packing.pack_int8, _linear_int8),
    Int4Weight: _FormatOps(lambda w: gemm_q4_kernel(), packing.pack_int4, _linear_int4),
    SparseWeight: _FormatOps(lambda w: _SPARSE_KERNELS[sparse_family(w)][0](), packing.pack_sparse, _linear_sparse),
    LowRankWeight: _FormatOps(lambda w: dense_f32_kernel(), packing.pack_lowrank, _linear_lowrank),
}


def _format(w: Any) -> _FormatOps:
    """The table row of w's format (a subclass of a format is that format), else TypeError."""
    fmt = _FORMATS.get(type(w))
    if fmt is None:
        fmt = next((_FORMATS[c] for c in type(w).__mro__ if c in _FORMATS), None)
        if fmt is None:
            raise TypeError(f"w: expected an Int8Weight, Int4Weight, SparseWeight or LowRankWeight, got {type(w).__name__}")
    return fmt


def packed(w: Int8Weight | Int4Weight | SparseWeight | LowRankWeight) -> Any:
    """w packed for the kernel that runs it now (the registry's pick at the current tier cap): built on
    the first call, then the same object for as long as w lives (one per kernel, i.e. per tier in use).
    A LowRankWeight gives (v, u) packed for the dense_f32 kernel, None for an int8 factor."""
    return _format(w).packed(w)


# The modules built on linear() and the table come after them. formats/ is numpy only; the two steps
# of its constructors that need the kernels are plugged in here (formats/_common.py says why).
from . import autoformat  # noqa: E402
from .conv import conv2d  # noqa: E402

plug("sparse_auto", autoformat.sparse_auto)
plug("int4_clip_search", _core.int4_best_candidates)
