"""Building programs: a small helper that names values and collects nodes and weights, and the
row-wise concatenation of compressed weights that fuses projections (one quantization of x, one
product over the concatenated weight)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from .ops import Node
from .program import Input, Program

__all__ = ["GraphBuilder", "concat_rows"]


class GraphBuilder:
    def __init__(self) -> None:
        self.inputs: list[Input] = []
        self.nodes: list[Node] = []
        self.weights: dict[str, Any] = {}
        self._count = 0

    def input(self, name: str, dtype: str, dims: tuple[int | str, ...]) -> str:
        self.inputs.append(Input(name, dtype, dims))
        return name

    def weight(self, name: str, w: Any) -> str:
        if name in self.weights:
            raise ValueError(f"weight {name!r} defined twice")
        if isinstance(w, np.ndarray):  # float32 unless an integer table or float16 scales (embedding)
            w = np.ascontiguousarray(w, dtype=None if w.dtype in (np.int8, np.uint8, np.float16) else np.float32)
        self.weights[name] = w
        return name

    def op(self, op: str, inputs: list[str], name: str, n_outputs: int = 1, **attrs: Any) -> Any:
        outs = [f"{name}:{k}" if n_outputs > 1 else name for k in range(n_outputs)]
        self.nodes.append(Node(op, list(inputs), outs, attrs, name))
        return outs if n_outputs > 1 else outs[0]

    def linear(self, x: str, w: Any, bias: np.ndarray | None, name: str, activation: str | None = None,
               act_scale: float | None = None, act_zero_point: int | None = None) -> str:
        """A linear node on w (float32 array or canonical weight); a low-rank weight becomes two nodes
        (x @ v.T, then @ u.T with the bias and activation)."""
        if isinstance(w, LowRankWeight):
            t = self.linear(x, w.v, None, name + ".v", act_scale=act_scale, act_zero_point=act_zero_point)
            return self.linear(t, w.u, bias, name + ".u", activation)
        attrs: dict[str, Any] = {"weight": self.weight(name + ".weight", w)}
        if activation is not None:
            attrs["activation"] = activation
        if act_scale is not None:
            attrs["act_scale"] = float(act_scale)
            if act_zero_point is not None:
                attrs["act_zero_point"] = int(act_zero_point)
        ins = [x]
        if bias is not None:
            ins.append(self.weight(name + ".bias", bias))
        return self.op("linear", ins, name, **attrs)

    def program(self, outputs: list[str], info: dict[str, Any]) -> Program:
        return Program(self.inputs, outputs, self.nodes, self.weights, info)


def concat_rows(ws: list[Any]) -> Any:
    """One weight holding the rows of ws in order (computing exactly what the parts compute, row by
    row), or None when their formats cannot be joined (different formats or options, per-tensor
    scales that differ, low-rank factors)."""
    first = ws[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(ws, axis=0) if all(isinstance(w, np.ndarray) for w in ws) else None
    if any(type(w) is not type(first) for w in ws):
        return None
    if isinstance(first, Int8Weight):
        if first.granularity != "channel" or any(w.granularity != "channel" for w in ws):
            return None
        return Int8Weight(np.concatenate([w.qweight for w in ws]), np.concatenate([w.scale for w in ws]))
    if isinstance(first, Int4Weight):
        same = all(w.k == first.k and w.group_size == first.group_size and w.compute == first.compute
                   and (w.zero_point is None) == (first.zero_point is None) and (w.codebook is None) == (first.codebook is None)
                   for w in ws)
        if not same:
            return None
        codebook = first.codebook
        if codebook is not None:
            if codebook.ndim == 2:
                codebook = np.concatenate([w.codebook for w in ws])
            elif any(not np.array_equal(w.codebook, codebook) for w in ws):
                return None
        zp = None if first.zero_point is None else np.concatenate([w.zero_point for w in ws])
        return Int4Weight(np.concatenate([w.qweight for w in ws]), np.concatenate([w.scale for w in ws]), zp, codebook,
                          k=first.k, compute=first.compute)
    if isinstance(first, SparseWeight):
        k = first.shape[1]
        if any(w.format != first.format or w.dtype != first.dtype or w.shape[1] != k for w in ws):
            return None
        n = sum(w.shape[0] for w in ws)
        if first.pattern is not None:
            return SparseWeight(None, None, np.concatenate([w.values for w in ws]), (n, k), first.format,
                                meta=np.concatenate([w.meta for w in ws]))
        br = first.block[0]
        if any(w.shape[0] % br for w in ws[:-1]):
            return None
        indptr, start = [np.zeros(1, np.int64)], 0
        for w in ws:
            indptr.append(w.indptr[1:] + start)
            start += int(w.indptr[-1])
        scale = None
        if first.dtype == "int8":
            if any(w.scale.shape[0] != w.shape[0] for w in ws):
                return None
            scale = np.concatenate([w.scale for w in ws])
        return SparseWeight(np.concatenate(indptr), np.concatenate([w.indices for w in ws]),
                            np.concatenate([w.values for w in ws]), (n, k), first.format, scale)
    return None
