"""The engine's operations: for each op, its shape rule, its numpy specification (the oracle in
edgecompress.reference.engine, or the reference of the weight's format for ``linear``) and its
lowering to nodes of the native executor (csrc/include/edgecompress/engine.h).

Every value is a float32 or int64 array of concrete shape once the program is planned for one set of
input shapes; ops read and write whole values (a ``reshape`` output shares its input's buffer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .. import _core
from .. import reference as ref
from ..reference import engine as eref
from .. import ops
from ..runtime import dense_f32_kernel, gemm_s8_kernel
from ..formats import Int4Weight, Int8Weight, SparseWeight

__all__ = ["Node", "OPS", "Shape"]

Shape = tuple[tuple[int, ...], str]  # (shape, dtype name)

# native op ids and operand spaces: csrc/include/edgecompress/engine.h
NATIVE_OP = {"linear": 0, "norm": 1, "attention": 2, "gelu": 3, "add": 4, "mul": 5, "softmax": 6, "embedding": 7,
             "pack": 10, "gather": 11, "scatter": 12,
             "position_ids": 8, "mean_pool": 9, "rope": 13, "kv_attention": 14, "glu": 15, "concat": 16,
             "conv2d": 17, "depthwise": 18, "pool": 19, "act": 20, "transpose": 21, "winograd": 22,
             "winograd_s8": 23}
GLU_ACTS = {"silu": 0, "gelu_tanh": 1}
# the element-wise pass (UnaryAct in csrc/include/edgecompress/engine_ops.h)
UNARY_ACTS = {"relu": 0, "relu6": 1, "silu": 2, "hardswish": 3, "hardsigmoid": 4, "sigmoid": 5}
POOL_MODES = {"max": 0, "avg": 1}
ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2}
NO_REF = (0, 0, 0)
LINEAR_WEIGHTS = (np.ndarray, Int8Weight, Int4Weight, SparseWeight)


@dataclass
class Node:
    """One op of a program: ``inputs`` name values or constants ("" for an optional input left out)."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": self.inputs, "outputs": self.outputs, "attrs": self.attrs, "name": self.name}

    @property
    def weight_names(self) -> list[str]:
        """The compressed-or-float weights the node reads through its ``weight`` attribute: one name, or
        (a grouped conv2d) a list of one per group."""
        w = self.attrs.get("weight")
        return [] if w is None else [w] if isinstance(w, str) else list(w)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class OpError(ValueError):
    """A shape rule's refusal; the program adds the node's name and op."""


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise OpError(what)


# ---- shape rules: (node, input shapes (None for absent), weights) -> output shapes ----

def _infer_linear(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    w = weights[node.attrs["weight"]]
    n, k = w.shape
    (xs, xd) = s[0]
    _expect(xd == "float32" and len(xs) >= 1 and xs[-1] == k, f"expected a float32 input (..., {k}), got {xd} {xs}")
    if s[1] is not None:
        _expect(s[1] == ((n,), "float32"), f"expected a float32 bias ({n},), got {s[1]}")
    return [(xs[:-1] + (n,), "float32")]


def _infer_norm(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    xs, xd = s[0]
    _expect(xd == "float32" and len(xs) >= 1, f"expected a float32 input, got {xd} {xs}")
    if s[1] is not None:
        _expect(s[1] == s[0], f"expected the residual to match x {xs}, got {s[1]}")
    for i, what in ((2, "gamma"), (3, "beta")):
        if s[i] is not None:
            _expect(s[i] == ((xs[-1],), "float32"), f"expected {what} float32 ({xs[-1]},), got {s[i]}")
    _expect(s[2] is not None, "gamma is required")
    return [(xs, "float32")] * len(node.outputs)


def _attention_parts(node: Node) -> int:
    """How many of the inputs carry q, k and v: 1 (one fused projection) or 3."""
    return 3 if node.attrs.get("layout", "fused") == "separate" else 1


def _infer_attention(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """Inputs: qkv (batch, seq, (heads + 2 kv_heads) * head_dim) and mask? (attrs layout "fused"), or
    q, k, v (batch, seq, heads * head_dim / kv_heads * head_dim each) and mask? (layout "separate"), or
    (layout "packed") qkv (tokens, (heads + 2 kv_heads) * head_dim) of sequences packed one after
    another, and their offsets (batch + 1,) from a pack node."""
    a = node.attrs
    h, kv, d = a["heads"], a["kv_heads"], a["head_dim"]
    _expect(isinstance(h, int) and isinstance(kv, int) and isinstance(d, int) and h >= 1 and kv >= 1 and d >= 1
            and h % kv == 0, f"expected heads a multiple of kv_heads >= 1 and head_dim >= 1, got {h}, {kv}, {d}")
    layout = a.get("layout", "fused")
    parts = _attention_parts(node)
    _expect(layout in ("fused", "separate", "packed") and all(x is not None for x in s[:parts]),
            "expected layout 'fused' (qkv, mask?), 'separate' (q, k, v, mask?) or 'packed' (qkv, offsets)")
    if layout == "packed":
        (xs, xd), off = s[0], s[1]
        _expect(xd == "float32" and len(xs) == 2 and xs[1] == (h + 2 * kv) * d,
                f"expected float32 (tokens, {(h + 2 * kv) * d}), got {xd} {xs}")
        _expect(off is not None and off[1] == "int64" and len(off[0]) == 1 and off[0][0] >= 2,
                f"expected the int64 offsets (batch + 1,) of the packed sequences, got {off}")
        return [((xs[0], h * d), "float32")]
    widths = [(h + 2 * kv) * d] if parts == 1 else [h * d, kv * d, kv * d]
    xs = s[0][0]
    for x, width in zip(s[:parts], widths):
        _expect(x[1] == "float32" and len(x[0]) == 3 and x[0][2] == width and x[0][:2] == xs[:2],
                f"expected float32 {xs[:2] + (width,)}, got {x}")
    mask = s[parts]
    if mask is not None:
        _expect(mask == (xs[:2], "int64"), f"expected an int64 mask {xs[:2]}, got {mask}")
    return [((xs[0], xs[1], h * d), "float32")]


def _infer_pack(node: Node, s: list[Shape | None], weights: dict[str, Any], count: int) -> list[Shape]:
    """mask (batch, seq) -> the positions of its tokens (tokens,) and each sequence's offset (batch + 1,);
    ``count``: the tokens of this call's mask (the plan is made per count)."""
    (ms, md) = s[0]
    _expect(md == "int64" and len(ms) == 2, f"expected an int64 mask (batch, seq), got {md} {ms}")
    return [((count,), "int64"), ((ms[0] + 1,), "int64")]


def _infer_gather(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """x (batch, seq, ...) and index (tokens,) -> x's rows at index (tokens, ...)."""
    (xs, xd), (ix, idd) = s[0], s[1]
    _expect(len(xs) >= 2 and xd in ("float32", "int64"), f"expected float32 or int64 (batch, seq, ...), got {xd} {xs}")
    _expect(idd == "int64" and len(ix) == 1, f"expected an int64 index (tokens,), got {idd} {ix}")
    return [((ix[0],) + tuple(xs[2:]), xd)]


def _infer_scatter(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """x (tokens, ...), index (tokens,) and like (batch, seq) -> (batch, seq, ...), zero where no token."""
    (xs, xd), (ix, idd), (ls, _) = s[0], s[1], s[2]
    _expect(xd in ("float32", "int64") and len(xs) >= 1, f"expected float32 or int64 (tokens, ...), got {xd} {xs}")
    _expect(idd == "int64" and ix == (xs[0],), f"expected an int64 index ({xs[0]},), got {idd} {ix}")
    _expect(len(ls) == 2, f"expected a (batch, seq) array to take the shape of, got {ls}")
    return [(tuple(ls) + tuple(xs[1:]), xd)]


def _heads(a: dict[str, Any]) -> tuple[int, int, int]:
    h, kv, d = a["heads"], a["kv_heads"], a["head_dim"]
    _expect(h % kv == 0, f"expected heads a multiple of kv_heads, got {h} and {kv}")
    return h, kv, d


def _infer_rope(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """qkv (tokens, (heads + 2 kv_heads) * head_dim), pos (1,), inv_freq (rope_dims / 2,), qk_gamma?
    (2, head_dim) -> qkv rotated."""
    a = node.attrs
    h, kv, d = _heads(a)
    rd = a["rope_dims"]
    (xs, xd) = s[0]
    _expect(xd == "float32" and len(xs) == 2 and xs[1] == (h + 2 * kv) * d,
            f"expected float32 (tokens, {(h + 2 * kv) * d}), got {xd} {xs}")
    _expect(s[1] == ((1,), "int64"), f"expected the int64 position (1,), got {s[1]}")
    _expect(rd % 2 == 0 and rd <= d, f"expected rope_dims even and <= head_dim {d}, got {rd}")
    _expect(s[2] == ((rd // 2,), "float32"), f"expected float32 inv_freq ({rd // 2},), got {s[2]}")
    if s[3] is not None:
        _expect(s[3] == ((2, d), "float32") and "eps" in a, f"expected float32 qk_gamma (2, {d}) and eps, got {s[3]}")
    return [s[0]]


def _infer_kv_attention(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """qkv (tokens, (heads + 2 kv_heads) * head_dim), k_cache and v_cache (slots, kv_heads *
    head_dim), pos (1,) -> (tokens, heads * head_dim)."""
    a = node.attrs
    h, kv, d = _heads(a)
    (xs, xd) = s[0]
    _expect(xd == "float32" and len(xs) == 2 and xs[1] == (h + 2 * kv) * d,
            f"expected float32 (tokens, {(h + 2 * kv) * d}), got {xd} {xs}")
    for i, what in ((1, "k_cache"), (2, "v_cache")):
        _expect(s[i][1] == "float32" and len(s[i][0]) == 2 and s[i][0][1] == kv * d,
                f"expected {what} float32 (slots, {kv * d}), got {s[i]}")
    _expect(s[1] == s[2], f"expected k_cache and v_cache of one shape, got {s[1][0]} and {s[2][0]}")
    _expect(a["window"] == 0 or s[1][0][0] >= a["window"],
            f"expected at least window = {a['window']} slots, got {s[1][0][0]}")
    _expect(s[3] == ((1,), "int64"), f"expected the int64 position (1,), got {s[3]}")
    return [((xs[0], h * d), "float32")]


def _infer_glu(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """x (..., 2 n) = [gate | up], or gate and up (..., n) -> (..., n)."""
    (xs, xd) = s[0]
    _expect(xd == "float32" and len(xs) >= 1, f"expected float32, got {xd} {xs}")
    if s[1] is None:
        _expect(xs[-1] % 2 == 0, f"expected [gate | up] of an even width, got {xs}")
        return [(xs[:-1] + (xs[-1] // 2,), "float32")]
    _expect(s[1] == s[0], f"expected up of gate's shape {xs}, got {s[1]}")
    return [s[0]]


def _infer_concat(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    parts = [x for x in s if x is not None]
    xs = parts[0][0]
    _expect(all(p[1] == "float32" and len(p[0]) == len(xs) and p[0][:-1] == xs[:-1] for p in parts),
            f"expected float32 arrays that differ only in their last dimension, got {parts}")
    return [(xs[:-1] + (sum(p[0][-1] for p in parts),), "float32")]


def _window(a: dict[str, Any], kernel: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding (top, bottom, left, right), dilation) of a window op's attributes."""
    return (tuple(kernel), tuple(a.get("stride", (1, 1))), tuple(a.get("padding", (0, 0, 0, 0))),
            tuple(a.get("dilation", (1, 1))))


def _infer_window(node: Node, s: list[Shape | None], kernel: tuple[int, int], n: int) -> list[Shape]:
    """x (batch, h, w, c) channels last -> (batch, ho, wo, n)."""
    (xs, xd) = s[0]
    _expect(xd == "float32" and len(xs) == 4, f"expected a float32 channels-last image (batch, h, w, c), got {xd} {xs}")
    k, st, pad, dil = _window(node.attrs, kernel)
    ho, wo = eref.window_size(xs[1], xs[2], k, st, pad, dil)
    _expect(ho >= 1 and wo >= 1, f"the window {k} (dilation {dil}, padding {pad}) does not fit the image {xs[1:3]}")
    return [((xs[0], ho, wo, n), "float32")]


def _infer_conv2d(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """x (batch, h, w, c), bias? (n,), residual? (batch, ho, wo, n) and the weight (n, kh * kw * c)
    -> (batch, ho, wo, n): activation(conv(x) + bias + residual), the residual added to the biased
    sums before the activation (a residual block's add and ReLU in the convolution's epilogue).
    Grouped: ``weight`` lists one weight (n / groups, kh * kw * c / groups) per group of c / groups
    channels, all of one format; group g writes the outputs g * n / groups onwards."""
    ws = [weights[name] for name in node.weight_names]
    groups = len(ws)
    ng, k = ws[0].shape
    n = ng * groups
    kh, kw = node.attrs["kernel"]
    c = s[0][0][-1] if len(s[0][0]) == 4 else -1
    if groups > 1:
        _expect(c % groups == 0, f"expected the channels ({c}) to divide into the {groups} groups")
        kinds = {(type(w).__name__, tuple(w.shape), getattr(w, "compute", None)) for w in ws}
        _expect(len(kinds) == 1, f"expected the {groups} group weights to share one format and shape, got {sorted(kinds)}")
        c //= groups
    _expect(k == kh * kw * c, f"expected the weight's K = kh * kw * c{'/groups' if groups > 1 else ''} = "
            f"{kh} * {kw} * {c}, got {k}")
    if s[1] is not None:
        _expect(s[1] == ((n,), "float32"), f"expected a float32 bias ({n},), got {s[1]}")
    out = _infer_window(node, s, (kh, kw), n)
    if len(s) > 2 and s[2] is not None:
        _expect(s[2] == out[0], f"expected a residual of the output's shape and dtype {out[0]}, got {s[2]}")
    return out


def _infer_depthwise(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """x (batch, h, w, c), w (kh, kw, c), bias? (c,) -> (batch, ho, wo, c)."""
    (ws, wd) = s[1]
    c = s[0][0][-1]
    _expect(wd == "float32" and len(ws) == 3 and ws[2] == c, f"expected a float32 weight (kh, kw, {c}), got {wd} {ws}")
    if s[2] is not None:
        _expect(s[2] == ((c,), "float32"), f"expected a float32 bias ({c},), got {s[2]}")
    return _infer_window(node, s, ws[:2], c)


def _infer_pool(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    a = node.attrs
    (kh, kw), (pt, pb, pl, pr) = a["kernel"], tuple(a.get("padding", (0, 0, 0, 0)))
    # as torch: a window always holds a tap of the image (the max of none would be -inf)
    _expect(max(pt, pb) <= kh // 2 and max(pl, pr) <= kw // 2, f"expected padding at most half the kernel {a['kernel']}, "
            f"got {a.get('padding')}")
    _expect(a["mode"] == "max" or tuple(a.get("dilation", (1, 1))) == (1, 1), "expected no dilation for average pooling")
    return _infer_window(node, s, (kh, kw), s[0][0][-1] if len(s[0][0]) == 4 else 0)


def _transpose_split(perm: list[int]) -> int:
    """perm = (0, j, .., n - 1, 1, .., j - 1): the first moved dimension j, or 0 for another order."""
    n = len(perm)
    if n < 3 or perm[0] != 0:
        return 0
    j = perm[1]
    return j if j >= 2 and list(perm[1:]) == list(range(j, n)) + list(range(1, j)) else 0


def _infer_transpose(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    (xs, xd) = s[0]
    perm = node.attrs["perm"]
    _expect(len(perm) == len(xs) and _transpose_split(perm) > 0,
            f"expected perm (0, j, .., {len(xs) - 1}, 1, .., j - 1) for a {len(xs)}-d array, got {perm}")
    return [(tuple(xs[p] for p in perm), xd)]


def _infer_same(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    _expect(s[0][1] == "float32", f"expected float32, got {s[0][1]}")
    return [s[0]]


def _per_batch(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """b (batch, 1, .., 1, c) scales each image of a (batch, .., c) by its own row (squeeze-excitation)."""
    return len(a) >= 3 and len(b) == len(a) and b[0] == a[0] and b[-1] == a[-1] and all(d == 1 for d in b[1:-1])


def _infer_binary(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    (a, ad), (b, bd) = s[0], s[1]
    _expect(ad == bd == "float32" and ((len(b) <= len(a) and a[len(a) - len(b):] == b) or _per_batch(a, b)),
            f"expected float32 operands where b's shape {b} ends a's {a}, or is (batch, 1, .., 1, c) of a's batch and c")
    return [s[0]]


def _infer_embedding(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    """ids, and a float32 table (rows, width), an int8 table and float32 scales (rows,), or two 4-bit
    tables hi, lo (rows, width / 32, 16) uint8 and float16 scales (rows, width / 32); or (attribute
    ``halves``) ids alone and the rows of two Int4Weights of one shape added (a split output head's)."""
    (ids, idd) = s[0]
    _expect(idd == "int64", f"expected int64 ids, got {idd}")
    if "halves" in node.attrs:
        _expect(all(x is None for x in s[1:]), "expected the ids alone with 'halves'")
        return [(ids + (weights[node.attrs["halves"][0]].shape[1],), "float32")]
    _expect(s[1] is not None, "expected a table")
    (table, td) = s[1]
    if td == "uint8":
        _expect(len(table) == 3 and table[2] == 16 and s[2] == s[1] and s[3] == (table[:2], "float16"),
                f"expected uint8 hi and lo (rows, groups, 16) and float16 scales (rows, groups), got {s[1:]}")
        return [(ids + (32 * table[1],), "float32")]
    _expect(s[3] is None, "expected no fourth input but for 4-bit tables")
    _expect(len(table) == 2 and td in ("float32", "int8"), f"expected a float32 or int8 table (rows, width), got {td} {table}")
    if td == "int8":
        _expect(s[2] == ((table[0],), "float32"), f"expected float32 scales ({table[0]},) for an int8 table, got {s[2]}")
    return [(ids + (table[1],), "float32")]


def _infer_position_ids(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    _expect(s[0][1] == "int64" and len(s[0][0]) == 2, f"expected int64 ids (batch, seq), got {s[0]}")
    return [s[0]]


def _infer_mean_pool(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    xs, xd = s[0]
    _expect(xd == "float32" and len(xs) == 3, f"expected float32 (batch, seq, width), got {xd} {xs}")
    if s[1] is not None:
        _expect(s[1] == (xs[:2], "int64"), f"expected an int64 mask {xs[:2]}, got {s[1]}")
    return [((xs[0], xs[2]), "float32")]


def _infer_reshape(node: Node, s: list[Shape | None], weights: dict[str, Any]) -> list[Shape]:
    xs, xd = s[0]
    _expect(all(d != 0 or i < len(xs) for i, d in enumerate(node.attrs["shape"])),
            f"cannot reshape {xs} to {node.attrs['shape']} (a 0 keeps a dimension the input does not have)")
    want = [xs[i] if d == 0 else d for i, d in enumerate(node.attrs["shape"])]
    if -1 in want:
        known = _prod(tuple(d for d in want if d != -1))
        _expect(known > 0 and _prod(xs) % known == 0, f"cannot reshape {xs} to {node.attrs['shape']}")
        want[want.index(-1)] = _prod(xs) // known
    _expect(_prod(tuple(want)) == _prod(xs), f"cannot reshape {xs} to {node.attrs['shape']}")
    return [(tuple(want), xd)]


# ---- the numpy specification: (node, input arrays, weights) -> outputs ----

def _ref_linear(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    w = weights[node.attrs["weight"]]
    if not isinstance(w, LINEAR_WEIGHTS):
        raise ValueError(f"node {node.name!r}: its weight was released after packing; no reference")
    x, bias = a[0], a[1]
    act = node.attrs.get("activation")
    x2 = x.reshape(-1, x.shape[-1])
    if isinstance(w, np.ndarray):
        y = ref.linear_sparse(x2, w, bias, act)  # the float product in float64
    elif isinstance(w, Int8Weight):
        scale = node.attrs.get("act_scale")
        zp = node.attrs.get("act_zero_point")
        y = ref.linear_int8(x2, w.qweight, w.scale, bias, act, act_scheme="asymmetric" if zp is not None else "symmetric",
                            act_scale=scale, act_zero_point=zp)
    elif isinstance(w, Int4Weight):
        y = ref.linear_int4(x2, w.qweight, w.scale, w.zero_point, w.codebook, bias, act, compute=w.compute)
    elif w.dtype == "int8":
        y = ref.linear_int8(x2, w._dense_blocks().reshape(w.shape[0], -1)[:, : w.shape[1]], w.scale, bias, act)
    else:
        y = ref.linear_sparse(x2, w.to_float(), bias, act)
    return [y.reshape(x.shape[:-1] + (w.shape[0],))]


def _ref_norm(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    y, total = eref.layernorm(a[0], a[1], a[2], a[3], node.attrs["eps"], rms=node.op == "rmsnorm")
    return [y, total][: len(node.outputs)]


def _ref_attention(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    t = node.attrs
    args = (t["heads"], t["kv_heads"], t["head_dim"], t["causal"], t["scale"])
    if t.get("layout") == "packed":
        off, width = a[1], t["heads"] * t["head_dim"]
        parts = [eref.attention(a[0][off[b]:off[b + 1]][None], None, *args)[0] for b in range(len(off) - 1)
                 if off[b + 1] > off[b]]  # (an all-padding sequence has no rows)
        return [np.concatenate(parts) if parts else np.zeros((0, width), np.float32)]
    parts = _attention_parts(node)
    qkv = a[0] if parts == 1 else np.concatenate(a[:3], axis=-1)
    return [eref.attention(qkv, a[parts], *args)]


def _ref_pack(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    return list(eref.pack(a[0]))


def _ref_binary(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    return [(a[0] + a[1] if node.op == "add" else a[0] * a[1]).astype(np.float32)]


def _ref_rope(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    t = node.attrs
    return [eref.rope(a[0], int(a[1][0]), a[2], a[3], t["heads"], t["kv_heads"], t["head_dim"], t["rope_dims"],
                      t["neox"], t.get("eps", 0.0))]


def _ref_kv_attention(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    t = node.attrs
    return [eref.kv_attention(a[0], a[1], a[2], int(a[3][0]), t["heads"], t["kv_heads"], t["head_dim"], t["window"],
                              t["scale"])]


def _ref_glu(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    if a[1] is None:
        n = a[0].shape[-1] // 2
        return [eref.glu(a[0][..., :n], a[0][..., n:], node.attrs["act"])]
    return [eref.glu(a[0], a[1], node.attrs["act"])]


def _ref_halves(node: Node, a: list[Any], weights: dict[str, Any]) -> np.ndarray:
    hi, lo = (weights[name] for name in node.attrs["halves"])
    if not isinstance(hi, Int4Weight) or not isinstance(lo, Int4Weight):
        raise ValueError(f"node {node.name!r}: its weights were released after packing; no reference")
    ids = a[0]
    if ids.size and (ids.min() < 0 or ids.max() >= hi.shape[0]):
        raise ValueError(f"ids: expected values in [0, {hi.shape[0]}), got {ids.min()}..{ids.max()}")
    return (hi.to_float()[ids] + lo.to_float()[ids]).astype(np.float32)


def _then_act(node: Node, y: np.ndarray) -> np.ndarray:
    act = node.attrs.get("activation")
    return y if act is None else eref.act(y, act)


def _ref_conv2d(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    k, st, pad, dil = _window(node.attrs, node.attrs["kernel"])
    x, bias, residual = a[0], a[1], a[2]
    if residual is not None:  # the sums with their bias, then the residual, then the activation
        plain = replace(node, attrs={key: v for key, v in node.attrs.items() if key != "activation"})
        return [_then_act(node, _ref_conv2d(plain, [x, bias, None], weights)[0] + residual)]
    names = node.weight_names
    cg = x.shape[3] // len(names)
    ho, wo = eref.window_size(x.shape[1], x.shape[2], k, st, pad, dil)
    relu = node.attrs.get("activation") == "relu"
    quant = {key: v for key, v in node.attrs.items() if key in ("act_scale", "act_zero_point")}
    if per_image_scale(node, weights[names[0]]):
        # each image quantized once, with its own dynamic scale: its patches' codes are its pixels'
        scales = ref.quantize_rows_symmetric(x.reshape(x.shape[0], -1))[1]
        return [np.concatenate([_ref_conv2d(replace(node, attrs=node.attrs | {"act_scale": float(s)}), [xb[None], bias, None],
                                            weights)[0] for xb, s in zip(x, scales)])]
    ys = []
    for g, name in enumerate(names):  # a group's patches hold its channels only
        patches = eref.conv_patches(x[..., g * cg:(g + 1) * cg], k, st, pad, dil)
        lin = Node("linear", ["x", "b"], ["y"], quant | {"weight": name} | ({"activation": "relu"} if relu else {}), node.name)
        ng = weights[name].shape[0]
        bg = None if bias is None else bias[g * ng:(g + 1) * ng]
        ys.append(_ref_linear(lin, [patches, bg], weights)[0])
    y = np.concatenate(ys, axis=-1).reshape(x.shape[0], ho, wo, -1)
    return [y if relu else _then_act(node, y)]


def per_image_scale(node: Node, w: Any) -> bool:
    """Whether conv2d ``node`` quantizes its input per image with a dynamic scale: an Int8Weight
    without a static input scale, unless its patches are the image's pixels (a 1x1 kernel of stride 1
    without padding: the product's rows, quantized one by one). Its patches then hold the image's
    codes (kh kw times fewer values to quantize), and a 3x3 kernel of stride 1 may run as integer
    Winograd (winograd_form)."""
    if not isinstance(w, Int8Weight) or node.attrs.get("act_scale") is not None:
        return False
    k, st, pad, _ = _window(node.attrs, tuple(node.attrs["kernel"]))
    return not (k == (1, 1) and st == (1, 1) and pad == (0, 0, 0, 0))


def _ref_depthwise(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    _, st, pad, dil = _window(node.attrs, (1, 1))
    return [_then_act(node, eref.depthwise(a[0], a[1], a[2], st, pad, dil))]


def _ref_pool(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    t = node.attrs
    k, st, pad, dil = _window(t, t["kernel"])
    return [eref.pool(a[0], t["mode"], k, st, pad, dil, t.get("count_include_pad", True))]


def _ref_binary_act(node: Node, a: list[Any], weights: dict[str, Any]) -> list[np.ndarray]:
    return [_then_act(node, _ref_binary(node, a, weights)[0])]


_REFERENCE: dict[str, Callable[[Node, list[Any], dict[str, Any]], list[np.ndarray]]] = {
    "linear": _ref_linear,
    "layernorm": _ref_norm,
    "rmsnorm": _ref_norm,
    "attention": _ref_attention,
    "gelu": lambda n, a, w: [eref.gelu(a[0])],
    "add": _ref_binary_act,
    "mul": _ref_binary_act,
    "softmax": lambda n, a, w: [eref.softmax(a[0])],
    "conv2d": _ref_conv2d,
    "depthwise_conv2d": _ref_depthwise,
    "pool2d": _ref_pool,
    "act": lambda n, a, w: [eref.act(a[0], n.attrs["act"])],
    "transpose": lambda n, a, w: [np.ascontiguousarray(a[0].transpose(n.attrs["perm"]))],
    "embedding": lambda n, a, w: [_ref_halves(n, a, w) if "halves" in n.attrs else eref.embedding(a[0], a[1], a[2], a[3])],
    "position_ids": lambda n, a, w: [eref.position_ids(a[0], n.attrs["mode"], n.attrs["base"])],
    "mean_pool": lambda n, a, w: [eref.mean_pool(a[0], a[1])],
    "pack": _ref_pack,
    "gather": lambda n, a, w: [eref.gather(a[0], a[1])],
    "scatter": lambda n, a, w: [eref.scatter(a[0], a[1], a[2].shape)],
    "rope": _ref_rope,
    "kv_attention": _ref_kv_attention,
    "glu": _ref_glu,
    "concat": lambda n, a, w: [np.concatenate([x for x in a if x is not None], axis=-1)],
    "reshape": lambda n, a, w: [a[0].reshape(_infer_reshape(n, [(a[0].shape, str(a[0].dtype))], w)[0][0])],
}


# ---- lowering to native nodes: (node, operand refs, input shapes, program) -> node tuples ----
# A native node: (op id, [input refs], [output refs], ints, floats, packed weight, act scheme,
# (act scale, act zero point), q4 compute).

def _native(op: str, ins: list[tuple[int, int, int]], outs: list[tuple[int, int, int]], ints: list[int],
            floats: tuple[float, ...] = ()) -> tuple[Any, ...]:
    return (NATIVE_OP[op], ins, outs, ints, list(floats), None, 0, (1.0, 0), 0)


# Winograd F(m x m, 3x3) (the native winograd op), m = 2 or 4: the weight transform G g G^T of each
# 3x3 kernel g (the input and output transforms: csrc/include/edgecompress/engine_ops.h).
WINOGRAD_G = {2: np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
              4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                           [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}
# Fewer input channels than this: the products are too short to pay for the transforms.
WINOGRAD_MIN_CHANNELS = 8
# F(4x4, 3x3) (4 times fewer multiply-adds, weights 4 times larger) for weights of at most this many
# kernels (channels x outputs), F(2x2, 3x3) above: the wide layers of a network are its late ones,
# whose small images give few tiles to read the larger weight.
WINOGRAD4_MAX_KERNELS = 256 * 256


def winograd_weights(w: np.ndarray, m: int) -> list[np.ndarray]:
    """The (m + 2)^2 (n, c) float32 matrices U[e] (e = (m + 2) a + b) of a 3x3 convolution's weight w
    (n, 9 c) for Winograd F(m x m, 3x3): U[e][o, j] = (G g G^T)[a, b] for the kernel g of output o and
    input channel j (float64 sums)."""
    n, c = w.shape[0], w.shape[1] // 9
    g = w.reshape(n, 3, 3, c).astype(np.float64)
    u = np.einsum("ai,nijc,bj->abnc", WINOGRAD_G[m], g, WINOGRAD_G[m])
    return [np.ascontiguousarray(u[a, b], dtype=np.float32) for a in range(m + 2) for b in range(m + 2)]


# The weight of a Winograd product is read once per call, from memory at batch 1 (a network's weights
# do not stay in L2 from one call to the next): a core's FMA rate over the rate it reads a weight
# streamed from memory, in float operations per byte (measured on a Sapphire Rapids core: about 200
# GFLOPS and 10 GB/s).
WINOGRAD_FLOPS_PER_BYTE = 20


def winograd_tile_for(images: int, ho: int, wo: int) -> int:
    """m of the Winograd F(m x m, 3x3) that costs less on ``images`` outputs of ho x wo: the products'
    2 a^2 c n t operations (t tiles of m x m) plus WINOGRAD_FLOPS_PER_BYTE times the transformed
    weight's 4 a^2 c n bytes, a = m + 2 (c n cancels). F(4x4) does 2.25 times fewer multiply-adds than
    F(2x2) on large images, but on a small one its tiles are few and partly outside the image (a 14 x
    14 image: 16 tiles of 16 outputs, against 49 of 4) and its weight is 2.25 times larger: ResNet-18's
    14 x 14 layers of 256 channels took 1.25 ms each in F(4x4), 1.05 in F(2x2)."""
    def cost(m: int) -> int:
        tiles = images * -(-ho // m) * -(-wo // m)
        return (m + 2) ** 2 * (2 * tiles + 4 * WINOGRAD_FLOPS_PER_BYTE)

    return 4 if cost(4) <= cost(2) else 2


def winograd_tile(w: np.ndarray) -> int:
    """m of the Winograd F(m x m, 3x3) a 3x3 convolution weight w (n, 9 c) runs in where its node does
    not fix one (a ``winograd`` attribute of 2 or 4, which winograd_form passes on): 4 when the
    weight has at most WINOGRAD4_MAX_KERNELS kernels (n c), else 2."""
    return 4 if w.shape[0] * (w.shape[1] // 9) <= WINOGRAD4_MAX_KERNELS else 2


def winograd_applies(node: Node, channels: int) -> bool:
    """Whether conv2d ``node`` over ``channels`` input channels may run as Winograd F(m x m, 3x3) (a
    float32 weight, or an int8 one as winograd_form says): one group, a 3x3 kernel of stride 1, not
    dilated, at least WINOGRAD_MIN_CHANNELS channels, and its attribute ``winograd`` not False."""
    t = node.attrs
    if node.op != "conv2d" or not t.get("winograd", True) or len(node.weight_names) != 1:
        return False
    k, st, _, dil = _window(t, tuple(t["kernel"]))
    return k == (3, 3) and st == (1, 1) and dil == (1, 1) and channels >= WINOGRAD_MIN_CHANNELS


# Integer Winograd F(2x2, 3x3) for int8 convolutions, their input scale static or dynamic per image
# (the native winograd_s8 op, csrc/include/edgecompress/winograd_s8.h): 16 products per 2 x 2
# outputs instead of 36, in int16 x int16. It pays where the int8 products multiply 16-bit values
# too (these gemm_s8 tiers: no 8-bit dot-product instruction), and stays exact up to
# WINOGRAD_S8_MAX_CHANNELS channels.
WINOGRAD_S8_TIERS = ("scalar", "avx2", "neon")
WINOGRAD_S8_MAX_CHANNELS = 1841
WINOGRAD_G2_INT = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)


def winograd_s8_weights(q: np.ndarray) -> np.ndarray:
    """The integer Winograd F(2x2, 3x3) transform of an int8 3x3 convolution weight q (n, 9 c), taps
    in (kh, kw, c) order: U[e] = (2G) g (2G)^T (e = 4 a + b, |U| <= 1143), laid out for the native
    kernels as int16 (16, panels, c pairs, 16, 2): panels of 16 outputs, pairs of channels, outputs
    past n and the channel past an odd c zero."""
    n, c = q.shape[0], q.shape[1] // 9
    g = q.reshape(n, 3, 3, c).astype(np.int64)
    u = np.einsum("ai,nijc,bj->abnc", WINOGRAD_G2_INT, g, WINOGRAD_G2_INT).reshape(16, n, c)
    panels, pairs = -(-n // 16), -(-c // 2)
    full = np.zeros((16, panels * 16, pairs * 2), np.int16)
    full[:, :n, :c] = u
    return np.ascontiguousarray(full.reshape(16, panels, 16, pairs, 2).transpose(0, 1, 3, 2, 4))


def winograd_form(node: Node, channels: int) -> str:
    """The Winograd form (packed_weight's) conv2d ``node`` over ``channels`` input channels asks for:
    "" where winograd_applies does not, "winograd_s8" up to WINOGRAD_S8_MAX_CHANNELS channels (an
    Int8Weight then takes the integer transform, with its static input scale or a dynamic one per
    image: per_image_scale), else "winograd". A float32 weight takes the float32 products under either
    form, in the tile the node's ``winograd`` attribute fixes (2 or 4: "@2" or "@4" after the form)."""
    if not winograd_applies(node, channels):
        return ""
    form = "winograd_s8" if channels <= WINOGRAD_S8_MAX_CHANNELS else "winograd"
    m = node.attrs.get("winograd", True)
    return form if m is True else f"{form}@{m}"  # a float32 weight's tile, where the node fixes it


def winograd_s8_pays() -> bool:
    """Whether the gemm_s8 kernel in use multiplies 16-bit values (WINOGRAD_S8_TIERS), so that the
    integer Winograd's 16 products per 4 outputs cost less than the int8 product's 36."""
    return gemm_s8_kernel().rsplit("_", 1)[-1] in WINOGRAD_S8_TIERS


def packed_weight(w: Any, form: str = "") -> tuple[Any, int, int] | None:
    """The native packed form of a linear weight for the kernel the registry picks now (the ops
    layer's, shared with every other user of the weight; a float32 array is packed for dense_f32), the
    q4 compute mode (0 int8, 1 float32) and the weight's N. forms "winograd" and "winograd_s8"
    (winograd_form): the list of the transformed products of a float32 3x3 convolution weight
    (winograd_weights for its winograd_tile; "@2" or "@4" after the form: the node's fixed tile); under
    "winograd_s8", for an Int8Weight where
    winograd_s8_pays, the pair (its packed weight, winograd_s8_weights); None for any other weight."""
    form, _, tile = form.partition("@")
    if form in ("winograd", "winograd_s8"):
        if isinstance(w, np.ndarray):
            m = int(tile) if tile else winograd_tile(w)
            return [_core.pack_dense_f32(u, dense_f32_kernel()) for u in winograd_weights(w, m)], 0, w.shape[0]
        if form == "winograd_s8" and isinstance(w, Int8Weight) and winograd_s8_pays():
            return (ops.packed(w), winograd_s8_weights(w.qweight)), 0, w.shape[0]
        return None
    if isinstance(w, np.ndarray):
        return _core.pack_dense_f32(w, dense_f32_kernel()), 0, w.shape[0]
    return ops.packed(w), 0 if not isinstance(w, Int4Weight) or w.compute == "int8" else 1, w.shape[0]


def _lower_linear(node: Node, r: list[Any], s: list[Shape | None], packed: Callable[[str], tuple[Any, int, int]]) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    pw, q4, n = packed(node.attrs["weight"])
    scale, zp = node.attrs.get("act_scale"), node.attrs.get("act_zero_point")
    scheme = 0 if scale is None else (3 if zp is not None else 2)
    act = node.attrs.get("activation")
    # GELU as a pass of its own over y: the engine_f32 loop runs it at about 1.3 ns a value here, the
    # products' per-tile epilogues at about 6 (their tiles are too short to keep its constants in
    # registers); measured on a 128 x 768 x 3072 int8 product: 6.8 ms fused, 4.4 + 0.5 apart
    split = act == "gelu"
    ints = [_prod(xs[:-1]), xs[-1], ACTIVATIONS[None if split else act]]
    out = [(NATIVE_OP["linear"], [r[0], r[1] or NO_REF], [r[-1]], ints, [], pw, scheme,
            (float(scale or 1.0), int(zp or 0)), q4)]
    if split:
        out.append(_native("gelu", [r[-1]], [r[-1]], [_prod(xs[:-1]) * n]))
    return out


def _window_ints(node: Node, xs: tuple[int, ...], ys: tuple[int, ...], kernel: tuple[int, int]) -> list[int]:
    (kh, kw), (sh, sw), (pt, _, pl, _), (dh, dw) = _window(node.attrs, kernel)
    return [xs[0], xs[1], xs[2], xs[3], ys[1], ys[2], kh, kw, sh, sw, pt, pl, dh, dw]


def _lower_conv2d(node: Node, r: list[Any], s: list[Shape | None], packed: Callable[..., Any]) -> list[tuple[Any, ...]]:
    t = node.attrs
    xs = s[0][0]
    # a 3x3 convolution of stride 1: Winograd's transformed products (packed_weight's forms "winograd",
    # float32, and "winograd_s8", int8)
    form = winograd_form(node, xs[3])
    wino = packed(node.weight_names[0], form) if form else None
    op = "conv2d" if wino is None else "winograd" if isinstance(wino[0], list) else "winograd_s8"
    groups = [wino] if wino is not None else [packed(name) for name in node.weight_names]
    pw, q4, n = groups[0]
    if len(groups) > 1:  # the executor takes the list of the groups' packed weights
        pw, n = [g[0] for g in groups], n * len(groups)
    (ys, _), = _infer_window(node, s, tuple(t["kernel"]), n)
    scale, zp = t.get("act_scale"), t.get("act_zero_point")
    scheme = 0 if scale is None else (3 if zp is not None else 2)
    act = t.get("activation")
    fused = act == "relu"
    aq = (float(scale or 1.0), int(zp or 0))
    k, st, pad, dil = _window(t, tuple(t["kernel"]))
    unary = 0 if act is None or fused else UNARY_ACTS[act] + 1
    residual = r[2]
    if (wino is None and len(groups) == 1 and k == (1, 1) and st == (1, 1) and pad == (0, 0, 0, 0) and not unary
            and residual is None):
        # a 1x1 convolution is the product
        return [(NATIVE_OP["linear"], [r[0], r[1] or NO_REF], [r[-1]], [_prod(xs[:-1]), xs[-1], int(fused)], [], pw,
                 scheme, aq, q4)]
    # other activations: the executor's pass over each tile of output rows while it is in cache; a
    # residual: in Winograd's output transform, else in that pass (then ReLU too: it follows the add)
    ints = _window_ints(node, xs, ys, k) + [int(fused) + 4 * unary, n]
    return [(NATIVE_OP[op], [r[0], r[1] or NO_REF, residual or NO_REF], [r[-1]], ints, [], pw, scheme, aq, q4)]


def _lower_depthwise(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    (ys, _), = _infer_window(node, s, s[1][0][:2], xs[3])
    act = node.attrs.get("activation")
    ints = _window_ints(node, xs, ys, s[1][0][:2]) + [0 if act is None else UNARY_ACTS[act] + 1]
    return [_native("depthwise", [r[0], r[1], r[2] or NO_REF], [r[3]], ints)]


def _lower_pool(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    t = node.attrs
    xs = s[0][0]
    (ys, _), = _infer_window(node, s, tuple(t["kernel"]), xs[3])
    mode = 0 if t["mode"] == "max" else (1 if t.get("count_include_pad", True) else 2)
    return [_native("pool", [r[0]], [r[1]], _window_ints(node, xs, ys, tuple(t["kernel"])) + [mode])]


def _lower_transpose(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    (xs, xd) = s[0]
    j = _transpose_split(node.attrs["perm"])
    return [_native("transpose", [r[0]], [r[1]], [xs[0], _prod(xs[1:j]), _prod(xs[j:]), np.dtype(xd).itemsize])]


def _lower_act(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    return [_native("act", [r[0]], [r[1]], [_prod(s[0][0]), UNARY_ACTS[node.attrs["act"]]])]


def _lower_norm(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    ins = [x or NO_REF for x in r[:4]]
    return [_native("norm", ins, r[4:], [_prod(xs[:-1]), xs[-1], int(node.op == "rmsnorm")], (node.attrs["eps"],))]


def _lower_attention(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    t = node.attrs
    h, kv, d = t["heads"], t["kv_heads"], t["head_dim"]
    layout = t.get("layout", "fused")
    if layout == "separate":
        b, sq, _ = s[0][0]
        q, k, v = r[0], r[1], r[2]
        lds = [h * d, kv * d, kv * d]
        mask = r[3]
    else:
        q = r[0]
        k, v = (q[0], q[1], q[2] + 4 * h * d), (q[0], q[1], q[2] + 4 * (h + kv) * d)
        lds = [(h + 2 * kv) * d] * 3
        mask = r[1]
        if layout == "packed":  # the offsets take the mask's place; a sequence is at most all tokens
            b, sq = s[1][0][0] - 1, s[0][0][0]
        else:
            b, sq, _ = s[0][0]
    ints = [b, sq, h, kv, d, lds[0], int(t["causal"]), sq, lds[1], lds[2], int(layout == "packed")]
    return [_native("attention", [q, k, v, mask or NO_REF], [r[-1]], ints, (t["scale"],))]


def _lower_pack(node: Node, r: list[Any], s: list[Shape | None], packed: Any, count: int = 0) -> list[tuple[Any, ...]]:
    b, sq = s[0][0]
    return [_native("pack", [r[0]], [r[1], r[2]], [b, sq, count])]


def _lower_gather(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    (xs, xd), (ix, _) = s[0], s[1]
    return [_native("gather", [r[0], r[1]], [r[2]], [xs[0] * xs[1], np.dtype(xd).itemsize * _prod(xs[2:]), ix[0]])]


def _lower_scatter(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    (xs, xd), (ls, _) = s[0], s[2]
    return [_native("scatter", [r[0], r[1]], [r[3]], [_prod(ls), np.dtype(xd).itemsize * _prod(xs[1:]), xs[0]])]


def _lower_unary(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    if node.op == "softmax":
        return [_native("softmax", [r[0]], [r[1]], [_prod(xs[:-1]), xs[-1]])]
    return [_native("gelu", [r[0]], [r[1]], [_prod(xs)])]


def _lower_binary(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    a, b = s[0][0], s[1][0]
    act = node.attrs.get("activation")
    blocks = _prod(a[1:]) if _per_batch(a, b) and a != b else 0
    return [_native(node.op, [r[0], r[1]], [r[2]], [_prod(a), b[-1] if blocks else _prod(b),
                                                    0 if act is None else UNARY_ACTS[act] + 1, blocks])]


def _lower_embedding(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    if "halves" in node.attrs:  # the rows of the products' own packed weights
        hi, lo = (packed(name)[0] for name in node.attrs["halves"])
        return [(NATIVE_OP["embedding"], [r[0]], [r[-1]], [_prod(s[0][0]), hi.k, hi.n, 3], [], (hi, lo), 0,
                 (1.0, 0), 0)]
    (ids, _), (table, td) = s[0], s[1]
    if td == "uint8":
        return [_native("embedding", r[:4], [r[-1]], [_prod(ids), 32 * table[1], table[0], 2])]
    ins = [r[0], r[1]] + ([r[2]] if td == "int8" else [])
    return [_native("embedding", ins, [r[-1]], [_prod(ids), table[1], table[0], int(td == "int8")])]


def _lower_position_ids(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    b, sq = s[0][0]
    mode = {"arange": 0, "padded": 1}[node.attrs["mode"]]
    return [_native("position_ids", [r[0]], [r[1]], [b, sq, mode, node.attrs["base"]])]


def _lower_mean_pool(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    b, sq, width = s[0][0]
    return [_native("mean_pool", [r[0], r[1] or NO_REF], [r[2]], [b, sq, width])]


def _lower_rope(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    t = node.attrs
    xs = s[0][0]
    ints = [xs[0], t["heads"], t["kv_heads"], t["head_dim"], t["rope_dims"], int(t["neox"]), xs[1]]
    return [_native("rope", [r[0], r[1], r[2], r[3] or NO_REF], [r[4]], ints, (t.get("eps", 0.0),))]


def _lower_kv_attention(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    t = node.attrs
    xs = s[0][0]
    ints = [xs[0], t["heads"], t["kv_heads"], t["head_dim"], s[1][0][0], t["window"], xs[1]]
    return [_native("kv_attention", r[:4], [r[4]], ints, (t["scale"],))]


def _lower_glu(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    act = GLU_ACTS[node.attrs["act"]]
    if s[1] is None:  # [gate | up] in one row: up starts n floats after gate
        n = xs[-1] // 2
        up = (r[0][0], r[0][1], r[0][2] + 4 * n)
        return [_native("glu", [r[0], up], [r[2]], [_prod(xs[:-1]), n, act, xs[-1], xs[-1]])]
    n = xs[-1]
    return [_native("glu", [r[0], r[1]], [r[2]], [_prod(xs[:-1]), n, act, n, n])]


def _lower_concat(node: Node, r: list[Any], s: list[Shape | None], packed: Any) -> list[tuple[Any, ...]]:
    xs = s[0][0]
    ins = [x or NO_REF for x in r[:4]]
    widths = [x[0][-1] if x is not None else 0 for x in s[:4]]
    return [_native("concat", ins, [r[4]], [_prod(xs[:-1])] + widths)]


# ---- attributes: what each may hold (a file's graph reaches the kernels through them) ----

_I32 = 2**31 - 1


def _int(lo: int, hi: int = _I32) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi), f"an int in [{lo}, {hi}]"


def _finite(v: Any) -> bool:
    """A finite float, or an int a float holds exactly (JSON may write 1.0 as 1; a huge int would not convert)."""
    return (isinstance(v, float) and math.isfinite(v)) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**53)


def _float(what: str, ok: Callable[[float], bool]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _finite(v) and ok(v)), what


def _one_of(*values: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, (str, type(None))) and v in values), "one of " + ", ".join(map(repr, values))


def _shape(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) >= 1 and sum(d == -1 for d in v) <= 1
            and all(isinstance(d, int) and not isinstance(d, bool) and -1 <= d <= _I32 for d in v))


_NORM_ATTRS = {"eps": _float("a finite float >= 0", lambda v: v >= 0)}


def _ints(n: int, lo: int, hi: int = 1 << 16) -> tuple[Callable[[Any], bool], str]:
    return ((lambda v: isinstance(v, (list, tuple)) and len(v) == n
             and all(isinstance(d, int) and not isinstance(d, bool) and lo <= d <= hi for d in v)),
            f"a list of {n} ints in [{lo}, {hi}]")


_WINDOW_ATTRS = {"stride": _ints(2, 1), "padding": _ints(4, 0), "dilation": _ints(2, 1)}
_ACT = {"activation": _one_of(None, *UNARY_ACTS)}
ATTRS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "linear": {"weight": ((lambda v: isinstance(v, str)), "a weight's name"),
               "activation": _one_of(*ACTIVATIONS),
               # the static input quantization of ops.linear: a normal float32 scale, a uint8 zero point
               "act_scale": _float("a finite float >= 1.18e-38", lambda v: v >= np.finfo(np.float32).tiny),
               "act_zero_point": _int(0, 255)},
    "layernorm": _NORM_ATTRS,
    "rmsnorm": _NORM_ATTRS,
    "attention": {"heads": _int(1), "kv_heads": _int(1), "head_dim": _int(1),
                  "causal": ((lambda v: isinstance(v, bool)), "a bool"),
                  "scale": _float("a finite float", lambda v: True), "layout": _one_of("fused", "separate", "packed")},
    "position_ids": {"mode": _one_of("arange", "padded"), "base": _int(0)},
    "rope": {"heads": _int(1, 4096), "kv_heads": _int(1, 4096), "head_dim": _int(2, 4096), "rope_dims": _int(2, 4096),
             "neox": ((lambda v: isinstance(v, bool)), "a bool"), "eps": _NORM_ATTRS["eps"]},
    "kv_attention": {"heads": _int(1, 4096), "kv_heads": _int(1, 4096), "head_dim": _int(1, 4096), "window": _int(0),
                     "scale": _float("a finite float", lambda v: True)},
    "glu": {"act": _one_of(*GLU_ACTS)},
    "embedding": {"halves": ((lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)),
                             "a list of two weight names")},
    "reshape": {"shape": (_shape, "a list of ints >= -1 (0: keep that dimension), at most one -1")},
    "conv2d": {"weight": ((lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) >= 2 and all(isinstance(x, str) for x in v))),
                          "a weight's name, or a list of one per group (2 or more)"), "kernel": _ints(2, 1), **_WINDOW_ATTRS,
               **_ACT, "act_scale": _float("a finite float >= 1.18e-38", lambda v: v >= np.finfo(np.float32).tiny),
               "act_zero_point": _int(0, 255),
               "winograd": ((lambda v: isinstance(v, bool) or (type(v) is int and v in (2, 4))), "a bool, 2 or 4")},
    "depthwise_conv2d": {**_WINDOW_ATTRS, **_ACT},
    "pool2d": {"mode": _one_of(*POOL_MODES), "kernel": _ints(2, 1), **_WINDOW_ATTRS,
               "count_include_pad": ((lambda v: isinstance(v, bool)), "a bool")},
    "act": {"act": _one_of(*UNARY_ACTS)},
    "add": _ACT,
    "mul": _ACT,
    "transpose": {"perm": ((lambda v: isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)),
                           "a list of ints")},
}


@dataclass(frozen=True)
class OpSpec:
    infer: Callable[..., list[Shape]]
    lower: Callable[..., list[tuple[Any, ...]]] | None  # None: a view (reshape)
    inputs: tuple[int, int]  # (required, total) inputs
    outputs: tuple[int, int]  # (min, max) outputs
    attrs: tuple[str, ...] = ()  # required attributes (ATTRS: every attribute the op takes)
    optional: tuple[int, ...] = ()  # inputs that may be left out ("")


OPS: dict[str, OpSpec] = {
    "linear": OpSpec(_infer_linear, _lower_linear, (1, 2), (1, 1), ("weight",), (1,)),
    "layernorm": OpSpec(_infer_norm, _lower_norm, (3, 4), (1, 2), ("eps",), (1, 3)),
    "rmsnorm": OpSpec(_infer_norm, _lower_norm, (3, 4), (1, 2), ("eps",), (1, 3)),
    "attention": OpSpec(_infer_attention, _lower_attention, (1, 4), (1, 1), ("heads", "kv_heads", "head_dim", "causal", "scale"), (1, 3)),
    "gelu": OpSpec(_infer_same, _lower_unary, (1, 1), (1, 1)),
    "softmax": OpSpec(_infer_same, _lower_unary, (1, 1), (1, 1)),
    "add": OpSpec(_infer_binary, _lower_binary, (2, 2), (1, 1)),
    "mul": OpSpec(_infer_binary, _lower_binary, (2, 2), (1, 1)),
    "embedding": OpSpec(_infer_embedding, _lower_embedding, (1, 4), (1, 1), (), (2, 3)),
    "position_ids": OpSpec(_infer_position_ids, _lower_position_ids, (1, 1), (1, 1), ("mode", "base")),
    "mean_pool": OpSpec(_infer_mean_pool, _lower_mean_pool, (1, 2), (1, 1), (), (1,)),
    "pack": OpSpec(_infer_pack, _lower_pack, (1, 1), (2, 2)),
    "gather": OpSpec(_infer_gather, _lower_gather, (2, 2), (1, 1)),
    "scatter": OpSpec(_infer_scatter, _lower_scatter, (3, 3), (1, 1)),
    "rope": OpSpec(_infer_rope, _lower_rope, (3, 4), (1, 1), ("heads", "kv_heads", "head_dim", "rope_dims", "neox"), (3,)),
    "kv_attention": OpSpec(_infer_kv_attention, _lower_kv_attention, (4, 4), (1, 1),
                           ("heads", "kv_heads", "head_dim", "window", "scale")),
    "glu": OpSpec(_infer_glu, _lower_glu, (1, 2), (1, 1), ("act",), (1,)),
    "concat": OpSpec(_infer_concat, _lower_concat, (2, 4), (1, 1), (), (2, 3)),
    "reshape": OpSpec(_infer_reshape, None, (1, 1), (1, 1), ("shape",)),
    "conv2d": OpSpec(_infer_conv2d, _lower_conv2d, (1, 3), (1, 1), ("weight", "kernel"), (1, 2)),
    "depthwise_conv2d": OpSpec(_infer_depthwise, _lower_depthwise, (2, 3), (1, 1), (), (2,)),
    "pool2d": OpSpec(_infer_pool, _lower_pool, (1, 1), (1, 1), ("mode", "kernel")),
    "act": OpSpec(_infer_same, _lower_act, (1, 1), (1, 1), ("act",)),
    "transpose": OpSpec(_infer_transpose, _lower_transpose, (1, 1), (1, 1), ("perm",)),
}
REFERENCE = _REFERENCE
