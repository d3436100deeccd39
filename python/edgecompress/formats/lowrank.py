"""LowRankWeight: a factorized weight u @ v, each factor float32 or an Int8Weight."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import as_float_matrix, check_metadata, frozen, show, state_copy
from .int8 import Int8Weight

__all__ = ["LowRankWeight"]


def _factor(a: Any, name: str, shape_hint: str) -> np.ndarray | Int8Weight:
    if isinstance(a, Int8Weight):
        return a
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 2 or 0 in a.shape:
        raise TypeError(f"{name}: expected a float32 {shape_hint} numpy array or an Int8Weight, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
    return frozen(a)


class LowRankWeight:
    """A factorized weight W (N, K) = u @ v with u (N, r) and v (r, K): y = (x @ v.T) @ u.T.

    Each factor is a float32 array or an Int8Weight (int8 factors run the int8 kernels, one after the
    other). Two float32 factors run one fused call for a few rows of x (the r-long intermediate stays
    in L1), and two matrix products for many rows. It pays when r * (N + K) is well below N * K.
    """

    FORMAT = "lowrank"
    VERSION = 1

    def __init__(self, u: np.ndarray | Int8Weight, v: np.ndarray | Int8Weight) -> None:
        u = _factor(u, "u", "(N, r)")
        v = _factor(v, "v", "(r, K)")
        if u.shape[1] != v.shape[0]:
            raise ValueError(f"u, v: u (N, r) and v (r, K) must share r, got u {u.shape} and v {v.shape}")
        self.u, self.v = u, v

    @classmethod
    def from_float(cls, w: Any, rank: int | None = None, energy: float | None = None, dtype: str = "float32",
                   multiple: int = 16) -> LowRankWeight:
        """Truncated SVD of w: rank ``rank``, or the smallest rank keeping ``energy`` of the squared
        singular values (0 < energy <= 1); then rounded up to a multiple of ``multiple`` (the SIMD
        width) and capped at min(N, K). The singular values are split evenly between the factors
        (u = U sqrt(S), v = sqrt(S) V.T). ``dtype="int8"`` stores each factor as a per-channel
        Int8Weight.
        """
        w = as_float_matrix(w, "w")
        if (rank is None) == (energy is None):
            raise ValueError(f"rank, energy: expected exactly one of them, got rank={rank!r}, energy={energy!r}")
        if dtype not in ("float32", "int8"):
            raise ValueError(f"dtype: expected 'float32' or 'int8', got {dtype!r}")
        if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
            raise ValueError(f"multiple: expected an int >= 1, got {multiple!r}")
        full = min(w.shape)
        uu, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank:
                raise ValueError(f"rank: expected an int >= 1, got {rank!r}")
            r = int(rank)
        else:
            if isinstance(energy, bool) or not isinstance(energy, (int, float, np.floating)) or not 0 < energy <= 1:
                raise ValueError(f"energy: expected a float in (0, 1], got {energy!r}")
            kept = np.cumsum(s**2) / max(float(np.sum(s**2)), np.finfo(np.float64).tiny)
            r = int(np.searchsorted(kept, float(energy) - 1e-12)) + 1
        r = min(-(-r // int(multiple)) * int(multiple), full)
        root = np.sqrt(s[:r])
        u = np.ascontiguousarray((uu[:, :r] * root).astype(np.float32))
        v = np.ascontiguousarray((root[:, None] * vt[:r]).astype(np.float32))
        if dtype == "int8":
            return cls(Int8Weight.from_float(u), Int8Weight.from_float(v))
        return cls(u, v)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.u.shape[0]), int(self.v.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.v.shape[0])

    @property
    def dtype(self) -> str:
        """"float32", "int8", or "mixed" (one factor of each)."""
        kinds = {isinstance(f, Int8Weight) for f in (self.u, self.v)}
        return "mixed" if len(kinds) == 2 else ("int8" if kinds == {True} else "float32")

    @property
    def nbytes(self) -> int:
        return int(sum(f.nbytes for f in (self.u, self.v)))

    @staticmethod
    def _float(f: np.ndarray | Int8Weight) -> np.ndarray:
        return f.to_float() if isinstance(f, Int8Weight) else f

    def to_float(self) -> np.ndarray:
        """u @ v in float64, rounded to float32."""
        return (self._float(self.u).astype(np.float64) @ self._float(self.v).astype(np.float64)).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        dtypes = {}
        for name, f in (("u", self.u), ("v", self.v)):
            if isinstance(f, Int8Weight):
                d[f"{name}.qweight"], d[f"{name}.scale"] = f.qweight, f.scale
                dtypes[name] = "int8"
            else:
                d[name] = f
                dtypes[name] = "float32"
        d["metadata"] = {"format": self.FORMAT, "version": self.VERSION, "dtypes": dtypes}
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LowRankWeight:
        meta = check_metadata(d, cls.FORMAT, cls.VERSION, ("dtypes",), None)
        dtypes = meta["dtypes"]
        if not (isinstance(dtypes, dict) and set(dtypes) == {"u", "v"}
                and all(dtypes[f] in ("float32", "int8") for f in ("u", "v"))):
            raise ValueError(f"d: expected metadata 'dtypes' {{'u': 'float32' | 'int8', 'v': ...}}, got {show(dtypes)}")
        arrays = {name: (f"{name}.qweight", f"{name}.scale") if dtypes[name] == "int8" else (name,) for name in ("u", "v")}
        check_metadata(d, cls.FORMAT, cls.VERSION, ("dtypes",), arrays["u"] + arrays["v"])
        factors = []
        for name in ("u", "v"):
            keys = arrays[name]
            factors.append(Int8Weight(np.asarray(d[keys[0]]), np.asarray(d[keys[1]])) if dtypes[name] == "int8"
                           else np.asarray(d[name]))
        return cls(*factors)

    def __getstate__(self) -> dict[str, Any]:
        return state_copy(self.state_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(LowRankWeight.from_state_dict(state).__dict__)

    def __repr__(self) -> str:
        n, k = self.shape
        return f"LowRankWeight(shape=({n}, {k}), rank={self.rank}, dtype={self.dtype!r}, nbytes={self.nbytes})"
