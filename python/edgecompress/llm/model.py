"""A decoder from a GGUF file as one engine program, and its state (the KV cache).

The program (``build_program``) takes ``ids`` (tokens,), ``pos`` (1,: the position of the first),
``rows`` (which positions to return logits for) and one key and one value cache per layer, and
returns the logits (rows, n_vocab). Per layer: RMSNorm (fused with the residual add), one product
for [q | k | v], ``rope`` (with Gemma's per-head norms), ``kv_attention`` (reads earlier positions
from the caches, stores the new ones), the output product, RMSNorm, one product for [gate | up],
``glu``, the down product. A prompt runs as one call per chunk of up to ``n_batch`` tokens (the
products see them as one batch); each decoded token is one call. Python does nothing per layer.

The caches are float32 program inputs the executor updates in place: (n_ctx, kv_heads * head_dim)
for global layers, a ring of ``window`` slots for sliding-window layers.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.builder import GraphBuilder, concat_rows
from ..engine.program import Program
from ..formats import Int8Weight
from .arch import HParams, hparams, inv_freq, layer_tensors
from .gguf_file import GGUFFile
from .weights import MODES, SplitInt8Weight, TensorReport, load_matrix, load_vector

__all__ = ["LoadReport", "build_program", "load_weights"]


@dataclass
class LoadReport:
    path: str
    weights: str
    file_bytes: int
    tensors: list[TensorReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def memory_bytes(self) -> int:
        return sum(t.memory_bytes for t in self.tensors)

    def table(self) -> str:
        lines = [f"{'tensor':32s} {'file type':9s} {'file MB':>9s} {'memory MB':>10s} {'form':8s} {'exact':5s} max |error|"]
        for t in self.tensors:
            lines.append(f"{t.name:32s} {t.file_type:9s} {t.file_bytes / 1e6:9.3f} {t.memory_bytes / 1e6:10.3f} "
                         f"{t.form:8s} {'yes' if t.exact else 'no':5s} {t.max_error:.3g}")
        lines.append(f"{'total':32s} {'':9s} {sum(t.file_bytes for t in self.tensors) / 1e6:9.3f} "
                     f"{self.memory_bytes / 1e6:10.3f}")
        return "\n".join(lines)


def load_weights(f: GGUFFile, hp: HParams, mode: str) -> tuple[dict[str, Any], LoadReport]:
    """Every tensor the decoder reads, checked and converted (weights.py); the embedding table is the
    output head's arrays when they are tied and int8 or float32 (one copy in memory)."""
    if mode not in MODES:
        raise ValueError(f"weights: expected one of {', '.join(MODES)}, got {mode!r}")
    report = LoadReport(str(f.path), mode, 0)
    t0 = time.perf_counter()
    w: dict[str, Any] = {}

    def matrix(name: str, shape: tuple[int, int]) -> Any:
        m, r = load_matrix(f, name, shape, mode)
        report.tensors.append(r)
        return m

    def vector(name: str, shape: tuple[int, ...]) -> np.ndarray:
        v = load_vector(f, name, shape)
        report.tensors.append(TensorReport(name, f.tensors[name].type_name, shape, f.tensors[name].nbytes, v.nbytes,
                                           "float32", True, 0.0))
        return v

    vocab_shape = (hp.n_vocab, hp.n_embd)
    tied = "output.weight" not in f.tensors
    head = matrix("token_embd.weight" if tied else "output.weight", vocab_shape)
    w["head"] = head
    if tied and isinstance(head, (np.ndarray, Int8Weight, SplitInt8Weight)):
        w["embd"] = head
    else:  # a table of its own, int8 rows (float32 when the file's is float)
        m, r = load_matrix(f, "token_embd.weight", vocab_shape, mode if mode in ("native", "float32") else "int8")
        if not isinstance(m, (np.ndarray, Int8Weight, SplitInt8Weight)):
            m, r = load_matrix(f, "token_embd.weight", vocab_shape, "int8")
        if tied:  # the file's one table, held a second time for the lookups
            r = dataclasses.replace(r, name="token_embd.weight (rows)", file_bytes=0)
        report.tensors.append(r)
        w["embd"] = m
    w["output_norm"] = vector("output_norm.weight", (hp.n_embd,))
    if "rope_freqs.weight" in f.tensors:
        w["rope_freqs"] = vector("rope_freqs.weight", (hp.rope_dims // 2,))
        if not (w["rope_freqs"] > 0).all():
            raise ValueError(f"{f.path}: tensor 'rope_freqs.weight' must hold factors > 0")
    for i in range(hp.n_layer):
        for name, shape in layer_tensors(hp, i).items():
            w[name] = matrix(name, shape) if len(shape) == 2 else vector(name, shape)
    report.file_bytes = sum(t.file_bytes for t in report.tensors)
    report.seconds = time.perf_counter() - t0
    return w, report


def cache_slots(hp: HParams, layer: int, n_ctx: int) -> tuple[int, int]:
    """(slots, window) of a layer's cache: a sliding-window layer keeps only its window."""
    if hp.local[layer] and hp.window < n_ctx:
        return hp.window, hp.window
    return n_ctx, 0


def _linear(b: GraphBuilder, x: str, w: Any, name: str) -> str:
    """x @ w.T; a SplitInt8Weight is two 4-bit products added."""
    if isinstance(w, SplitInt8Weight):
        hi = b.linear(x, w.hi, None, name + ".hi")
        return b.op("add", [hi, b.linear(x, w.lo, None, name + ".lo")], name)
    return b.linear(x, w, None, name)


def _concat(ws: list[Any]) -> Any:
    if all(isinstance(w, SplitInt8Weight) for w in ws):
        return SplitInt8Weight.concat(ws)
    if any(isinstance(w, SplitInt8Weight) for w in ws):
        return None
    return concat_rows(ws)


def _joined(b: GraphBuilder, x: str, ws: list[Any], name: str) -> str:
    """One product over the rows of ws together when their formats join, else one each and a concat."""
    w = _concat(ws)
    if w is not None:
        return _linear(b, x, w, name)
    parts = [_linear(b, x, p, f"{name}.{k}") for k, p in enumerate(ws)]
    return b.op("concat", parts, name)


def build_program(hp: HParams, w: dict[str, Any], n_ctx: int) -> Program:
    b = GraphBuilder()
    ids = b.input("ids", "int64", ("tokens",))
    pos = b.input("pos", "int64", (1,))
    rows = b.input("rows", "int64", ("rows",))
    kvw = hp.n_head_kv * hp.head_dim
    caches = []
    for i in range(hp.n_layer):
        slots, _ = cache_slots(hp, i, n_ctx)
        caches.append((b.input(f"k{i}", "float32", (slots, kvw)), b.input(f"v{i}", "float32", (slots, kvw))))
    embd = w["embd"]
    if isinstance(embd, Int8Weight):
        table = [b.weight("embd.q", embd.qweight), b.weight("embd.scale", embd.scale)]
    elif isinstance(embd, SplitInt8Weight) and embd is w["head"]:
        table = []  # rows read from the head's own packed halves (its weights are added below)
    elif isinstance(embd, SplitInt8Weight):
        table = [b.weight("embd.hi", embd.hi.qweight), b.weight("embd.lo", embd.lo.qweight),
                 b.weight("embd.d", embd.lo.scale)]
    else:
        table = [b.weight("embd.table", embd)]
    if table:
        x = b.op("embedding", [ids] + table, "embed")
    else:
        x = b.op("embedding", [ids], "embed", halves=["output.hi.weight", "output.lo.weight"])
    if hp.embed_scale is not None:
        x = b.op("mul", [x, b.weight("embed.scale", np.full(hp.n_embd, hp.embed_scale, np.float32))], "embed.scaled")
    factors = w.get("rope_freqs")
    freqs = {loc: b.weight(f"rope.{'local' if loc else 'global'}", inv_freq(hp, loc, factors))
             for loc in sorted(set(hp.local))}
    delta = ""
    rope_attrs = dict(heads=hp.n_head, kv_heads=hp.n_head_kv, head_dim=hp.head_dim, rope_dims=hp.rope_dims,
                      neox=hp.neox)
    for i in range(hp.n_layer):
        p = f"blk.{i}."
        gamma = b.weight(p + "attn_norm.weight", w[p + "attn_norm.weight"])
        if delta:
            h, x = b.op("rmsnorm", [x, delta, gamma], p + "attn_norm", n_outputs=2, eps=hp.eps)
        else:
            h = b.op("rmsnorm", [x, "", gamma], p + "attn_norm", eps=hp.eps)
        qkv = _joined(b, h, [w[p + "attn_q.weight"], w[p + "attn_k.weight"], w[p + "attn_v.weight"]], p + "qkv")
        rope_in = [qkv, pos, freqs[hp.local[i]]]
        extra: dict[str, Any] = {}
        if hp.qk_norm:
            qk = np.stack([w[p + "attn_q_norm.weight"], w[p + "attn_k_norm.weight"]])
            rope_in.append(b.weight(p + "qk_norm.weight", qk))
            extra["eps"] = hp.eps
        qkv = b.op("rope", rope_in, p + "rope", **rope_attrs, **extra)
        _, window = cache_slots(hp, i, n_ctx)
        a = b.op("kv_attention", [qkv, caches[i][0], caches[i][1], pos], p + "attn", heads=hp.n_head,
                 kv_heads=hp.n_head_kv, head_dim=hp.head_dim, window=window, scale=hp.attn_scale)
        a = _linear(b, a, w[p + "attn_output.weight"], p + "attn_output")
        if hp.post_norms:
            a = b.op("rmsnorm", [a, "", b.weight(p + "post_attention_norm.weight", w[p + "post_attention_norm.weight"])],
                     p + "post_attention_norm", eps=hp.eps)
        h, x = b.op("rmsnorm", [x, a, b.weight(p + "ffn_norm.weight", w[p + "ffn_norm.weight"])], p + "ffn_norm",
                    n_outputs=2, eps=hp.eps)
        gu = _joined(b, h, [w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"]], p + "gate_up")
        g = b.op("glu", [gu], p + "glu", act=hp.act)
        f = _linear(b, g, w[p + "ffn_down.weight"], p + "ffn_down")
        if hp.post_norms:
            f = b.op("rmsnorm", [f, "", b.weight(p + "post_ffw_norm.weight", w[p + "post_ffw_norm.weight"])],
                     p + "post_ffw_norm", eps=hp.eps)
        delta = f
    y = b.op("rmsnorm", [x, delta, b.weight("output_norm.weight", w["output_norm"])], "output_norm", eps=hp.eps)
    y = b.op("reshape", [y], "output_norm.batch", shape=[1, -1, hp.n_embd])
    y = b.op("gather", [y, rows], "last")
    logits = _linear(b, y, w["head"], "output")
    return b.program([logits], {"arch": hp.arch})


def read(path: Any, mode: str) -> tuple[GGUFFile, HParams, dict[str, Any], LoadReport]:
    f = GGUFFile(path)
    try:
        hp = hparams(f)
        w, report = load_weights(f, hp, mode)
    except BaseException:
        f.close()
        raise
    return f, hp, w, report
