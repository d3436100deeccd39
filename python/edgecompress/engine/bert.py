"""Import of Hugging Face BERT-family encoders (BERT, MiniLM and other BertModel checkpoints, RoBERTa,
DistilBERT) into a Program.

Why a builder per model family rather than torch.export / torch.fx: the engine's ops are coarse (one
attention, one fused QKV product, LayerNorm with its residual), and a family's modules map onto them
one to one, with the configuration (heads, eps, activation, position scheme) read from the model's
config. A traced graph would give ATen ops (view, permute, baddbmm, masked_fill...) that would have to
be pattern-matched back into the same coarse ops, and tracing fixes shapes or needs guards for the
dynamic sequence length. The builder instead checks every module of the model against the set it
knows and names the first one it does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..formats import Int8Weight
from .builder import GraphBuilder, concat_rows

__all__ = ["build"]

_ACT = {"gelu": "gelu", "relu": "relu"}


def _np(t: Any) -> np.ndarray:
    return t.detach().to(dtype=__import__("torch").float32).cpu().numpy().copy()


def _linear_parts(m: Any) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
    """(weight, bias, static input quantization) of a torch Linear or a compressed linear module."""
    from torch import nn

    from ..nn import Int4Linear, Int8Linear, LowRankLinear, SparseLinear

    bias = None if getattr(m, "bias", None) is None else _np(m.bias)
    if type(m) is nn.Linear:
        return _np(m.weight), bias, {}
    if isinstance(m, (Int8Linear, Int4Linear, SparseLinear, LowRankLinear)):
        q = getattr(m, "input_quant", None)
        act = {} if q is None else {"act_scale": q["scale"], "act_zero_point": q["zero_point"]}
        return m.weight, bias, act
    raise ValueError(f"module {type(m).__name__}: the engine maps torch.nn.Linear and edgecompress linear modules, "
                     f"not {type(m).__module__}.{type(m).__name__}")


def _family(model: Any) -> str:
    name = type(model).__name__
    if name in ("BertModel", "RobertaModel", "XLMRobertaModel", "CamembertModel"):
        return "roberta" if "Roberta" in name or name == "CamembertModel" else "bert"
    if name == "DistilBertModel":
        return "distilbert"
    raise ValueError(f"model: expected a Hugging Face BertModel, RobertaModel or DistilBertModel (the encoder, "
                     f"without a task head), got {type(model).__module__}.{name}")


_KNOWN = {"Linear", "Int8Linear", "Int4Linear", "SparseLinear", "LowRankLinear", "Embedding", "LayerNorm", "Dropout",
          "ModuleList", "GELUActivation", "ReLU", "Tanh",
          "BertModel", "BertEmbeddings", "BertEncoder", "BertLayer", "BertAttention", "BertSelfAttention",
          "BertSdpaSelfAttention", "BertSelfOutput", "BertIntermediate", "BertOutput", "BertPooler",
          "RobertaModel", "RobertaEmbeddings", "RobertaEncoder", "RobertaLayer", "RobertaAttention",
          "RobertaSelfAttention", "RobertaSdpaSelfAttention", "RobertaSelfOutput", "RobertaIntermediate",
          "RobertaOutput", "RobertaPooler",
          "DistilBertModel", "Embeddings", "Transformer", "TransformerBlock", "MultiHeadSelfAttention",
          "DistilBertSdpaAttention", "DistilBertFlashAttention2", "FFN",
          # transformers >= 5: one attention class for every implementation (same q/k/v/out_lin)
          "DistilBertSelfAttention"}


def _check_modules(model: Any) -> None:
    for path, m in model.named_modules():
        name = type(m).__name__
        if name not in _KNOWN:
            raise ValueError(f"module {path or '<model>'} ({type(m).__module__}.{name}): the BERT importer does not "
                             f"know this module, so it cannot map it to engine ops")


def _activation(config: Any) -> str:
    act = getattr(config, "hidden_act", None) or getattr(config, "activation", None)
    if act not in _ACT:
        raise ValueError(f"model config: hidden activation {act!r} is not supported by the engine (supported: "
                         f"{', '.join(_ACT)}; 'gelu' is the erf form)")
    return _ACT[act]


def _layer_modules(family: str, layer: Any) -> tuple[Any, ...]:
    """((query, key, value), attention output, LayerNorm 1, FFN in, FFN out, LayerNorm 2) of a layer."""
    if family == "distilbert":
        at = layer.attention
        return ((at.q_lin, at.k_lin, at.v_lin), at.out_lin, layer.sa_layer_norm, layer.ffn.lin1, layer.ffn.lin2,
                layer.output_layer_norm)
    sa = layer.attention.self
    return ((sa.query, sa.key, sa.value), layer.attention.output.dense, layer.attention.output.LayerNorm,
            layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)


def build(model: Any, *, pooling: str | None = None, token_type_ids: bool = False, embeddings: str = "float32",
          packed: bool = True) -> Any:
    """The Program of a (possibly compressed) BERT-family encoder: inputs input_ids and attention_mask
    (and token_type_ids when asked, BERT only), output last_hidden_state (batch, seq, hidden), or the
    masked mean over the sequence with ``pooling="mean"``.

    packed: the tokens of every sequence (the positions whose mask is not 0) are gathered into one
    (tokens, hidden) matrix right after the lookups, every layer runs on them alone (attention within
    each sequence), and the output is scattered back, zero at padding. A batch of sequences of
    different lengths then costs the sum of their lengths, not batch x longest. Needs one fused QKV
    product per layer; a model whose Q, K, V weights cannot be joined is built unpacked."""
    family = _family(model)
    config = model.config
    # the configuration's activation first: an unsupported one also has a module the importer does not
    # know (e.g. NewGELUActivation), and the configuration's name is the one the user can act on
    act = _activation(config)
    _check_modules(model)
    pos_type = getattr(config, "position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(f"model config: position_embedding_type {pos_type!r} is not supported (only 'absolute')")
    if getattr(config, "is_decoder", False):
        raise ValueError("model config: is_decoder models are not supported by the encoder importer")
    layers = model.encoder.layer if family != "distilbert" else model.transformer.layer
    modules = [_layer_modules(family, layer) for layer in layers]
    qkv_parts = [[_linear_parts(m) for m in mods[0]] for mods in modules]
    fused = [concat_rows([w for w, _, _ in parts]) if all(q == parts[0][2] for _, _, q in parts) else None
             for parts in qkv_parts]
    packed = packed and all(f is not None for f in fused)
    g = GraphBuilder()
    ids = g.input("input_ids", "int64", ("batch", "seq"))
    mask = g.input("attention_mask", "int64", ("batch", "seq"))
    if packed:
        index, offsets = g.op("pack", [mask], "tokens", n_outputs=2)

    def tokens(v: str, name: str) -> str:  # a (batch, seq) value's entries at the tokens, when packed
        return g.op("gather", [v, index], name) if packed else v

    emb = model.embeddings
    hidden = emb.word_embeddings.embedding_dim
    table = _np(emb.word_embeddings.weight)
    token_ids = tokens(ids, "embeddings.token_ids")
    if embeddings == "int8":  # one scale per token's row: the lookup dequantizes the rows it reads
        q = Int8Weight.from_float(table)
        x = g.op("embedding", [token_ids, g.weight("embeddings.word.table", np.asarray(q.qweight)),
                               g.weight("embeddings.word.scale", np.asarray(q.scale))], "embeddings.word")
    else:
        x = g.op("embedding", [token_ids, g.weight("embeddings.word.table", table)], "embeddings.word")
    if family == "roberta":
        pos = g.op("position_ids", [ids], "embeddings.position_ids", mode="padded", base=int(emb.padding_idx))
    else:
        pos = g.op("position_ids", [ids], "embeddings.position_ids", mode="arange", base=0)
    pos = tokens(pos, "embeddings.token_positions")
    p = g.op("embedding", [pos, g.weight("embeddings.position.table", _np(emb.position_embeddings.weight))], "embeddings.position")
    x = g.op("add", [x, p], "embeddings.add_position")
    if family != "distilbert":
        types = _np(emb.token_type_embeddings.weight)
        if token_type_ids:
            if family != "bert":
                raise ValueError("token_type_ids: only BERT models take token type ids")
            tt = tokens(g.input("token_type_ids", "int64", ("batch", "seq")), "embeddings.token_types")
            t = g.op("embedding", [tt, g.weight("embeddings.token_type.table", types)], "embeddings.token_type")
        else:
            t = g.weight("embeddings.token_type0", types[0])  # every token of type 0, as transformers does without ids
        x = g.op("add", [x, t], "embeddings.add_token_type")
    x = g.op("layernorm", [x, "", g.weight("embeddings.ln.gamma", _np(emb.LayerNorm.weight)),
                           g.weight("embeddings.ln.beta", _np(emb.LayerNorm.bias))], "embeddings.ln",
             eps=float(emb.LayerNorm.eps))
    heads = config.num_attention_heads if family != "distilbert" else config.n_heads
    d = hidden // heads
    for i, ((qkv_mods, out_mod, ln1, ffn1, ffn2, ln2), parts) in enumerate(zip(modules, qkv_parts)):
        pre = f"layer{i}"
        attn = dict(heads=heads, kv_heads=heads, head_dim=d, causal=False, scale=1.0 / float(np.sqrt(d)))
        if packed:
            bias = None if parts[0][1] is None else np.concatenate([b for _, b, _ in parts])
            qkv = g.linear(x, fused[i], bias, f"{pre}.qkv", **parts[0][2])
            ctx = g.op("attention", [qkv, offsets], f"{pre}.attention", layout="packed", **attn)
        elif fused[i] is not None:
            bias = None if parts[0][1] is None else np.concatenate([b for _, b, _ in parts])
            qkv = g.linear(x, fused[i], bias, f"{pre}.qkv", **parts[0][2])
            ctx = g.op("attention", [qkv, mask], f"{pre}.attention", **attn)
        else:
            qkv3 = [g.linear(x, w, b, f"{pre}.{n}", **q) for (w, b, q), n in zip(parts, "qkv")]
            ctx = g.op("attention", qkv3 + [mask], f"{pre}.attention", layout="separate", **attn)
        w, b, q = _linear_parts(out_mod)
        a = g.linear(ctx, w, b, f"{pre}.attention_out", **q)
        x = g.op("layernorm", [a, x, g.weight(f"{pre}.ln1.gamma", _np(ln1.weight)), g.weight(f"{pre}.ln1.beta", _np(ln1.bias))],
                 f"{pre}.ln1", eps=float(ln1.eps))
        w, b, q = _linear_parts(ffn1)
        h = g.linear(x, w, b, f"{pre}.ffn1", activation=act, **q)
        w, b, q = _linear_parts(ffn2)
        o = g.linear(h, w, b, f"{pre}.ffn2", **q)
        x = g.op("layernorm", [o, x, g.weight(f"{pre}.ln2.gamma", _np(ln2.weight)), g.weight(f"{pre}.ln2.beta", _np(ln2.bias))],
                 f"{pre}.ln2", eps=float(ln2.eps))
    if packed:
        x = g.op("scatter", [x, index, mask], "last_hidden_state")
    out = x
    if pooling == "mean":
        out = g.op("mean_pool", [x, mask], "mean_pool")
    elif pooling is not None:
        raise ValueError(f"pooling: expected None or 'mean', got {pooling!r}")
    info = {"family": family, "model": type(model).__name__, "hidden": hidden, "heads": heads, "layers": len(layers),
            "pooling": pooling, "packed": packed}
    return g.program([out], info)
