"""The numpy oracle of the engine's operations (edgecompress.engine): float64 arithmetic, float32
results. The native kernels (engine_f32 family) compute in float32 with their own summation order and
the exp / erf approximations of csrc/kernels/common/vmath.h, so they match these within float32
rounding: ``tolerance`` per op in tests/engine.
"""

from __future__ import annotations

import numpy as np

from .gemm_s8 import gelu

__all__ = ["act", "attention", "conv_patches", "depthwise", "embedding", "gather", "gelu", "glu", "kv_attention",
           "layernorm", "mean_pool", "pack", "pool", "position_ids", "rope", "scatter", "softmax", "window_size"]

_F32 = np.float32
# The additive mask of masked scores (as Hugging Face models use): the lowest float32, so a row whose
# keys are all masked becomes uniform instead of NaN.
MASKED = float(np.finfo(np.float32).min)


def layernorm(x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray | None, eps: float,
              rms: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(norm(x + residual) * gamma + beta, x + residual) over the last axis; RMSNorm when ``rms``
    (no mean, no beta). The sum is rounded to float32 first, as the kernels keep it."""
    v = x if residual is None else (x.astype(_F32) + residual.astype(_F32)).astype(_F32)
    v64 = v.astype(np.float64)
    mean = np.zeros(v.shape[:-1] + (1,)) if rms else v64.mean(axis=-1, keepdims=True)
    var = ((v64 - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (v64 - mean) / np.sqrt(var + eps) * gamma.astype(np.float64)
    if beta is not None:
        y = y + beta.astype(np.float64)
    return y.astype(_F32), v


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (max subtracted first)."""
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(_F32)


def attention(qkv: np.ndarray, mask: np.ndarray | None, heads: int, kv_heads: int, head_dim: int, causal: bool,
              scale: float) -> np.ndarray:
    """Scaled dot-product attention over a fused projection qkv (B, S, (heads + 2 kv_heads) * head_dim):
    q, k, v side by side in that order, query head h reading key/value head h // (heads // kv_heads).
    mask (B, S): 0 marks padding keys. causal: query i sees keys 0..i. Returns (B, S, heads * head_dim)."""
    b, s, _ = qkv.shape
    d = head_dim
    x = qkv.astype(np.float64)
    q = x[..., : heads * d].reshape(b, s, heads, d).transpose(0, 2, 1, 3)
    k = x[..., heads * d: (heads + kv_heads) * d].reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3)
    v = x[..., (heads + kv_heads) * d:].reshape(b, s, kv_heads, d).transpose(0, 2, 1, 3)
    group = heads // kv_heads
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    if mask is not None:
        scores = np.where(mask[:, None, None, :] != 0, scores, scores + MASKED)
    if causal:
        scores = np.where(np.tril(np.ones((s, s), dtype=bool))[None, None], scores, scores + MASKED)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)
    y = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, heads * d)
    return y.astype(_F32)


def embedding(ids: np.ndarray, table: np.ndarray, scale: np.ndarray | None = None,
              d: np.ndarray | None = None) -> np.ndarray:
    """Rows of table at ids; an int8 table is dequantized with one scale per row; a uint8 table is
    4-bit hi (table) and lo (scale) codes, two to a byte low nibble first, with float16 scales d per
    32 values: d (16 (hi - 8) + lo)."""
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"ids: expected values in [0, {table.shape[0]}), got {ids.min()}..{ids.max()}")
    if table.dtype == np.uint8:
        def codes(t: np.ndarray) -> np.ndarray:
            r = t[ids].reshape(ids.shape + (-1,))
            return np.stack([r & 15, r >> 4], axis=-1).reshape(r.shape[:-1] + (-1,)).astype(np.int32)
        q = 16 * (codes(table) - 8) + codes(scale)
        return (q * np.repeat(d[ids].astype(_F32), 32, axis=-1)).astype(_F32)
    rows = table[ids]
    if scale is not None:
        rows = (rows.astype(_F32) * scale[ids][..., None]).astype(_F32)
    return rows.astype(_F32)


def position_ids(ids: np.ndarray, mode: str, base: int) -> np.ndarray:
    """Positions of the tokens of ids (B, S): ``"arange"``: base + s; ``"padded"`` (RoBERTa): tokens
    other than the padding id ``base`` count from base + 1 in each row, padding gets base."""
    if mode == "arange":
        return np.broadcast_to(base + np.arange(ids.shape[-1], dtype=np.int64), ids.shape).copy()
    keep = ids != base
    return np.where(keep, base + np.cumsum(keep, axis=-1), base).astype(np.int64)


def mean_pool(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mean over the sequence axis of x (B, S, H) of the tokens whose mask is not 0 (all without a mask);
    the count is clamped to 1e-9, so an all-padding row gives zeros."""
    keep = np.ones(x.shape[:2]) if mask is None else (mask != 0).astype(np.float64)
    total = (x.astype(np.float64) * keep[..., None]).sum(axis=1)
    return (total / np.maximum(keep.sum(axis=1), 1e-9)[:, None]).astype(_F32)


def pack(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of a (batch, seq) mask: their flat positions (where the mask is not 0), in order, and
    each sequence's offset among them (batch + 1 values)."""
    keep = mask != 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    return np.flatnonzero(keep.reshape(-1)).astype(np.int64), offsets


def gather(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The entries of x (batch, seq, ...) at the flat positions ``index``: (tokens, ...)."""
    return x.reshape((-1,) + x.shape[2:])[index]


def scatter(x: np.ndarray, index: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """x (tokens, ...) put back at the flat positions ``index`` of a (batch, seq, ...) array of zeros."""
    y = np.zeros((shape[0] * shape[1],) + x.shape[1:], x.dtype)
    y[index] = x
    return y.reshape(tuple(shape) + x.shape[1:])


def rope(qkv: np.ndarray, pos: int, inv_freq: np.ndarray, qk_gamma: np.ndarray | None, heads: int, kv_heads: int,
         head_dim: int, rope_dims: int, neox: bool, eps: float) -> np.ndarray:
    """Rotary position embedding of the query and key heads of qkv (tokens, (heads + 2 kv_heads) *
    head_dim), token t at position pos + t, each head first RMS-normalized by its row of qk_gamma
    (query, key) when given; pairs (2j, 2j + 1) or, ``neox``, (j, j + rope_dims / 2). The angle is
    rounded to float32 first, as transformers computes it."""
    y = qkv.astype(np.float64).copy()
    t = qkv.shape[0]
    half = rope_dims // 2
    angle = ((pos + np.arange(t, dtype=np.float32))[:, None] * inv_freq.astype(np.float32)[None, :]).astype(np.float64)
    cs, sn = np.cos(angle), np.sin(angle)
    for h in range(heads + kv_heads):
        v = y[:, h * head_dim:(h + 1) * head_dim]
        if qk_gamma is not None:
            g = qk_gamma[0 if h < heads else 1].astype(np.float64)
            v[:] = v / np.sqrt((v * v).mean(axis=-1, keepdims=True) + eps) * g
        i0 = np.arange(half) if neox else 2 * np.arange(half)
        i1 = i0 + half if neox else i0 + 1
        x0, x1 = v[:, i0].copy(), v[:, i1].copy()
        v[:, i0] = x0 * cs - x1 * sn
        v[:, i1] = x0 * sn + x1 * cs
    return y.astype(_F32)


def kv_attention(qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, heads: int, kv_heads: int,
                 head_dim: int, window: int, scale: float) -> np.ndarray:
    """Causal attention of the tokens of qkv (positions pos, pos + 1, ...) over the keys before them
    in the caches (position p in slot p % slots) and their own; ``window`` > 0: only the last
    ``window`` positions. Then stores the call's keys and values in the caches (in place)."""
    n, slots, d = qkv.shape[0], k_cache.shape[0], head_dim
    if pos < 0 or (window == 0 and pos + n > slots):
        raise ValueError(f"positions {pos}..{pos + n - 1} do not fit a cache of {slots} slots")
    lo = max(0, pos - window + 1) if window else 0
    kpos = np.arange(lo, pos + n)
    q = qkv[:, : heads * d].astype(np.float64).reshape(n, heads, d)
    new_k = qkv[:, heads * d:(heads + kv_heads) * d].reshape(n, kv_heads, d)
    new_v = qkv[:, (heads + kv_heads) * d:(heads + 2 * kv_heads) * d].reshape(n, kv_heads, d)
    old = np.arange(lo, pos) % slots
    keys = np.concatenate([k_cache[old].reshape(-1, kv_heads, d), new_k]).astype(np.float64)
    vals = np.concatenate([v_cache[old].reshape(-1, kv_heads, d), new_v]).astype(np.float64)
    qpos = pos + np.arange(n)
    visible = kpos[None, :] <= qpos[:, None]
    if window:
        visible &= qpos[:, None] - kpos[None, :] < window
    y = np.zeros((n, heads, d))
    group = heads // kv_heads
    for h in range(heads):
        s = q[:, h] @ keys[:, h // group].T * scale
        s = np.where(visible, s, -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        y[:, h] = (e / e.sum(axis=-1, keepdims=True)) @ vals[:, h // group]
    for t in range(max(0, n - slots), n):
        k_cache[(pos + t) % slots] = new_k[t].reshape(-1)
        v_cache[(pos + t) % slots] = new_v[t].reshape(-1)
    return y.reshape(n, heads * d).astype(_F32)


def glu(gate: np.ndarray, up: np.ndarray, act: str) -> np.ndarray:
    """act(gate) * up: SiLU, or GELU in its tanh form."""
    g = gate.astype(np.float64)
    if act == "silu":
        a = g / (1.0 + np.exp(-g))
    else:
        a = 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
    return (a * up.astype(np.float64)).astype(_F32)


# ---- the 2-D window ops on channels-last images (batch, h, w, c) ----

def act(x: np.ndarray, kind: str) -> np.ndarray:
    """An element-wise activation: relu, relu6, silu, hardswish, hardsigmoid or sigmoid (float64 math)."""
    v = x.astype(np.float64)
    if kind == "relu":
        y = np.maximum(v, 0.0)
    elif kind == "relu6":
        y = np.clip(v, 0.0, 6.0)
    elif kind == "silu":
        y = v / (1.0 + np.exp(-v))
    elif kind == "hardswish":
        y = v * np.clip(v + 3.0, 0.0, 6.0) / 6.0
    elif kind == "hardsigmoid":
        y = np.clip(v + 3.0, 0.0, 6.0) / 6.0
    elif kind == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-v))
    else:
        raise ValueError(f"act: unknown activation {kind!r}")
    return y.astype(_F32)


def window_size(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    """(ho, wo) of a sliding window: padding (top, bottom, left, right)."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1


def _taps(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
          dilation: tuple[int, int], fill: float) -> np.ndarray:
    """(batch, ho, wo, kh, kw, c): each output pixel's taps, `fill` outside the image."""
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    b, h, w, c = x.shape
    ho, wo = window_size(h, w, kernel, stride, padding, dilation)
    xp = np.full((b, h + pt + pb, w + pl + pr, c), fill, x.dtype)
    xp[:, pt:pt + h, pl:pl + w] = x
    sb, sy, sx, sc = xp.strides
    return np.lib.stride_tricks.as_strided(xp, (b, ho, wo, kh, kw, c), (sb, sy * sh, sx * sw, sy * dh, sx * dw, sc),
                                           writeable=False)


def conv_patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int, int, int],
                 dilation: tuple[int, int]) -> np.ndarray:
    """The patch matrix (batch * ho * wo, kh * kw * c) of x, taps in (kh, kw, c) order, zeros outside:
    a convolution is the product of its weight (n, kh * kw * c) with these rows."""
    t = _taps(x, kernel, stride, padding, dilation, 0.0)
    return np.ascontiguousarray(t.reshape(-1, kernel[0] * kernel[1] * x.shape[3]))


def depthwise(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
              padding: tuple[int, int, int, int], dilation: tuple[int, int]) -> np.ndarray:
    """Depthwise convolution: w (kh, kw, c), one filter per channel."""
    t = _taps(x.astype(np.float64), w.shape[:2], stride, padding, dilation, 0.0)
    y = np.einsum("bhwijc,ijc->bhwc", t, w.astype(np.float64))
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y.astype(_F32)


def pool(x: np.ndarray, mode: str, kernel: tuple[int, int], stride: tuple[int, int],
         padding: tuple[int, int, int, int], dilation: tuple[int, int], count_include_pad: bool = True) -> np.ndarray:
    """Max pooling (padding never wins) or average pooling (over kh * kw when count_include_pad, else
    over the taps inside the image), as torch's pools."""
    if mode == "max":
        return _taps(x, kernel, stride, padding, dilation, -np.inf).max(axis=(3, 4)).astype(_F32)
    t = _taps(x.astype(np.float64), kernel, stride, padding, dilation, 0.0)
    total = t.sum(axis=(3, 4))
    if count_include_pad:
        return (total / (kernel[0] * kernel[1])).astype(_F32)
    inside = _taps(np.ones(x.shape[:3] + (1,)), kernel, stride, padding, dilation, 0.0).sum(axis=(3, 4))
    return (total / np.maximum(inside, 1)).astype(_F32)
