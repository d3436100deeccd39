"""What a GGUF file's metadata and tensors say about the decoder they hold: the hyperparameters of the
architectures edgecompress runs (``llama`` and ``gemma3``), checked, and the tensors each layer needs.

Conventions the file does not state, as llama.cpp's model code applies them:

- llama: RoPE on adjacent pairs (llama.cpp's converter permutes Q and K so that its "norm" rotation
  equals the checkpoint's half-split one); SiLU-gated feed-forward; an ``output`` tensor, or the
  embeddings tied; ``rope_freqs`` (Llama 3.1 and later) divides the frequencies.
- gemma3: RoPE on halves (NeoX); per-head RMSNorm of queries and keys before it; norms after the
  attention and the feed-forward as well as before; GELU (tanh form) gating; embeddings scaled by
  sqrt(n_embd); the output tied to the embeddings; five local layers (sliding window, RoPE base
  10000) then one global layer (the file's base and scaling), repeating; the norm weights in the file
  already hold Gemma's 1 + w. The attention scale is 1 / sqrt(head_dim) (the 27B model, 62 layers:
  1 / sqrt(n_embd / n_head)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .gguf_file import GGUFFile

__all__ = ["ARCHITECTURES", "HParams", "hparams", "layer_tensors"]

ARCHITECTURES = ("llama", "gemma3")
# bounds on hyperparameters: far above real models, low enough that sizes computed from them stay sane
_MAX_WIDTH = 1 << 16
_MAX_LAYERS = 1024
_MAX_CONTEXT = 1 << 21


@dataclass(frozen=True)
class HParams:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    eps: float
    context_length: int
    rope_dims: int
    rope_base: float
    rope_scale: float  # position multiplier of the global layers (1 / the linear scaling factor)
    rope_base_local: float
    window: int  # sliding window of the local layers (0: none)
    local: tuple[bool, ...]  # per layer: sliding-window layer
    neox: bool
    act: str  # "silu" or "gelu_tanh"
    qk_norm: bool
    post_norms: bool
    embed_scale: float | None
    attn_scale: float


def _get(meta: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    v = meta.get(key, default)
    if v is None:
        raise ValueError(f"GGUF metadata: missing {key!r}")
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if kind is float else (
        isinstance(v, int) and not isinstance(v, bool)) if kind is int else isinstance(v, kind)
    if not ok:
        raise ValueError(f"GGUF metadata: {key!r}: expected {kind.__name__}, got {type(v).__name__} {v!r}")
    return v


def _int(meta: dict[str, Any], key: str, lo: int, hi: int, default: Any = None) -> int:
    v = _get(meta, key, int, default)
    if not lo <= v <= hi:
        raise ValueError(f"GGUF metadata: {key!r}: expected an int in [{lo}, {hi}], got {v}")
    return int(v)


def _pos_float(meta: dict[str, Any], key: str, default: Any = None) -> float:
    v = float(_get(meta, key, float, default))
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"GGUF metadata: {key!r}: expected a finite float > 0, got {v}")
    return v


def hparams(f: GGUFFile) -> HParams:
    """The checked hyperparameters of f's decoder; ValueError for another architecture or values that
    do not fit together."""
    arch = f.architecture
    if arch not in ARCHITECTURES:
        raise ValueError(f"{f.path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    m = f.metadata
    p = arch + "."
    n_embd = _int(m, p + "embedding_length", 1, _MAX_WIDTH)
    n_layer = _int(m, p + "block_count", 1, _MAX_LAYERS)
    n_head = _int(m, p + "attention.head_count", 1, 4096)
    n_head_kv = _int(m, p + "attention.head_count_kv", 1, n_head, n_head)
    if n_head % n_head_kv:
        raise ValueError(f"GGUF metadata: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    default_dim = n_embd // n_head if n_embd % n_head == 0 else None
    head_dim = _int(m, p + "attention.key_length", 2, 4096, default_dim)
    if _int(m, p + "attention.value_length", 2, 4096, head_dim) != head_dim:
        raise ValueError("GGUF metadata: attention.value_length differs from key_length, which is not supported")
    n_ff = _int(m, p + "feed_forward_length", 1, 1 << 20)
    eps = _pos_float(m, p + "attention.layer_norm_rms_epsilon", 1e-6 if arch == "gemma3" else 1e-5)
    ctx = _int(m, p + "context_length", 1, _MAX_CONTEXT, 4096)
    rope_dims = _int(m, p + "rope.dimension_count", 2, head_dim, head_dim)
    if rope_dims % 2:
        raise ValueError(f"GGUF metadata: rope.dimension_count must be even, got {rope_dims}")
    rope_base = _pos_float(m, p + "rope.freq_base", 10000.0)
    scaling = m.get(p + "rope.scaling.type", "none" if p + "rope.scaling.factor" not in m else "linear")
    if scaling not in ("none", "linear"):
        raise ValueError(f"GGUF metadata: rope.scaling.type {scaling!r} is not supported (none, linear)")
    factor = _pos_float(m, p + "rope.scaling.factor", 1.0) if scaling == "linear" else 1.0
    tokens = m.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError("GGUF metadata: 'tokenizer.ggml.tokens' is missing or empty")
    common = dict(arch=arch, n_vocab=len(tokens), n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                  head_dim=head_dim, n_ff=n_ff, eps=eps, context_length=ctx, rope_dims=rope_dims, rope_base=rope_base,
                  rope_scale=1.0 / factor)
    if arch == "llama":
        return HParams(**common, rope_base_local=rope_base, window=0, local=(False,) * n_layer, neox=False, act="silu",
                       qk_norm=False, post_norms=False, embed_scale=None, attn_scale=1.0 / math.sqrt(head_dim))
    window = _int(m, p + "attention.sliding_window", 1, _MAX_CONTEXT, 4096)
    pattern = 6
    local = tuple((i + 1) % pattern != 0 for i in range(n_layer))
    scale_dim = n_embd / n_head if n_layer == 62 else head_dim
    return HParams(**common, rope_base_local=10000.0, window=window, local=local, neox=True, act="gelu_tanh",
                   qk_norm=True, post_norms=True, embed_scale=math.sqrt(n_embd), attn_scale=1.0 / math.sqrt(scale_dim))


def layer_tensors(hp: HParams, i: int) -> dict[str, tuple[int, ...]]:
    """The tensors of layer i and their numpy shapes."""
    d, q, kv, ff = hp.n_embd, hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_ff
    b = f"blk.{i}."
    t = {b + "attn_norm.weight": (d,), b + "attn_q.weight": (q, d), b + "attn_k.weight": (kv, d),
         b + "attn_v.weight": (kv, d), b + "attn_output.weight": (d, q), b + "ffn_norm.weight": (d,),
         b + "ffn_gate.weight": (ff, d), b + "ffn_up.weight": (ff, d), b + "ffn_down.weight": (d, ff)}
    if hp.qk_norm:
        t[b + "attn_q_norm.weight"] = (hp.head_dim,)
        t[b + "attn_k_norm.weight"] = (hp.head_dim,)
    if hp.post_norms:
        t[b + "post_attention_norm.weight"] = (d,)
        t[b + "post_ffw_norm.weight"] = (d,)
    return t


def inv_freq(hp: HParams, local: bool, factors: np.ndarray | None) -> np.ndarray:
    """The rotation frequencies (rope_dims / 2,) as float32: base^(-2j / rope_dims), times the
    position scale of global layers, divided by the file's ``rope_freqs`` factors when it has them."""
    base = hp.rope_base_local if local else hp.rope_base
    f = 1.0 / base ** (np.arange(0, hp.rope_dims, 2, dtype=np.float64) / hp.rope_dims)
    f = f.astype(np.float32)  # transformers computes inv_freq in float32
    if not local:
        f = (f * np.float32(hp.rope_scale)).astype(np.float32)
    if factors is not None:
        f = (f / factors.astype(np.float32)).astype(np.float32)
    return f
