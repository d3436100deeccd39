"""Small random-weight transformers models (LlamaForCausalLM, Gemma3ForCausalLM) written to GGUF the
way llama.cpp's converter writes them, for comparing edgecompress.llm with transformers.

The vocabulary is SentencePiece-style: the four special tokens, the 256 byte tokens, then pieces
"▁" + letters, scored so that longer pieces merge first."""

from __future__ import annotations

import itertools
import string

import numpy as np

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]


def vocabulary(n: int) -> tuple[list[str], list[float], list[int]]:
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
    types = [3, 3, 3, 2] + [6] * 256
    pieces = ["\u2581"] + list(string.ascii_lowercase)
    pieces += ["\u2581" + c for c in string.ascii_lowercase]
    pieces += ["".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2)]
    pieces += ["\u2581" + "".join(p) for p in itertools.product(string.ascii_lowercase, repeat=2)]
    extra = n - len(tokens)
    assert extra <= len(pieces), "vocabulary too large for the piece list"
    tokens += pieces[:extra]
    types += [1] * extra
    scores = [0.0] * 260 + [-float(i) / 10 + len(t) for i, t in enumerate(pieces[:extra])]
    return tokens, scores, types


def llama(vocab: int = 400, layers: int = 2, seed: int = 0, tie: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                      tie_word_embeddings=tie, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    cfg.rope_parameters = {"rope_theta": 10000.0, "rope_type": "default"}
    model = LlamaForCausalLM(cfg).eval()
    _randomize(model, seed)
    return model


def gemma3(vocab: int = 400, layers: int = 7, window: int = 8, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=window,
                           max_position_embeddings=512, query_pre_attn_scalar=32, bos_token_id=2, eos_token_id=1,
                           pad_token_id=0)
    model = Gemma3ForCausalLM(cfg).eval()
    _randomize(model, seed)
    return model


def _randomize(model, seed: int) -> None:
    """Norm weights away from their initial constant, so a wrong offset or a missing norm shows."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: Q and K rows reordered so that rotating adjacent pairs equals the
    checkpoint's rotation of halves."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write(model, path, qtype: str = "F32", chat_template: str | None = None) -> None:
    """model as a GGUF file; 2-D weights in ``qtype`` (F32, F16, Q8_0, Q4_0, ...), norms in F32."""
    import gguf

    cfg = model.config
    arch = "gemma3" if cfg.model_type.startswith("gemma3") else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
    else:
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_rope_dimension_count(hd)
    tokens, scores, types = vocabulary(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(arch == "llama")
    if chat_template is not None:
        w.add_chat_template(chat_template)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    qt = getattr(gguf.GGMLQuantizationType, qtype)

    def put(name: str, a: np.ndarray, quantize: bool) -> None:
        a = np.ascontiguousarray(a, np.float32)
        if quantize and qtype != "F32":
            data = gguf.quants.quantize(a, qt)
            w.add_tensor(name, data, raw_dtype=qt)
        else:
            w.add_tensor(name, a)

    norm = (lambda a: a + 1.0) if arch == "gemma3" else (lambda a: a)  # Gemma's 1 + w, as the converter stores it
    put("token_embd.weight", sd["model.embed_tokens.weight"], True)
    put("output_norm.weight", norm(sd["model.norm.weight"]), False)
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"], True)
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = _permute(q, cfg.num_attention_heads), _permute(k, cfg.num_key_value_heads)
        put(b + "attn_q.weight", q, True)
        put(b + "attn_k.weight", k, True)
        put(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"], True)
        put(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"], True)
        put(b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"], True)
        put(b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"], True)
        put(b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"], True)
        put(b + "attn_norm.weight", norm(sd[p + "input_layernorm.weight"]), False)
        if arch == "gemma3":
            put(b + "attn_q_norm.weight", norm(sd[p + "self_attn.q_norm.weight"]), False)
            put(b + "attn_k_norm.weight", norm(sd[p + "self_attn.k_norm.weight"]), False)
            put(b + "post_attention_norm.weight", norm(sd[p + "post_attention_layernorm.weight"]), False)
            put(b + "ffn_norm.weight", norm(sd[p + "pre_feedforward_layernorm.weight"]), False)
            put(b + "post_ffw_norm.weight", norm(sd[p + "post_feedforward_layernorm.weight"]), False)
        else:
            put(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantized_copy(model, path):
    """A copy of model whose weights are the GGUF file's values (gguf's dequantization): the
    transformers reference for a quantized file."""
    import copy

    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(str(path))
    vals = {t.name: dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)]) for t in r.tensors}
    m = copy.deepcopy(model)
    cfg = m.config
    arch = "gemma3" if cfg.model_type.startswith("gemma3") else "llama"
    names = {"model.embed_tokens.weight": "token_embd.weight"}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(cfg.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        names.update({p + "self_attn.q_proj.weight": b + "attn_q.weight", p + "self_attn.k_proj.weight": b + "attn_k.weight",
                      p + "self_attn.v_proj.weight": b + "attn_v.weight", p + "self_attn.o_proj.weight": b + "attn_output.weight",
                      p + "mlp.gate_proj.weight": b + "ffn_gate.weight", p + "mlp.up_proj.weight": b + "ffn_up.weight",
                      p + "mlp.down_proj.weight": b + "ffn_down.weight"})
    sd = m.state_dict()
    with torch.no_grad():
        for hf, g in names.items():
            v = vals[g]
            if arch == "llama" and g.endswith(("attn_q.weight", "attn_k.weight")):
                heads = cfg.num_attention_heads if "attn_q" in g else cfg.num_key_value_heads
                # undo the permutation
                v = v.reshape(heads, v.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(v.shape)
            sd[hf].copy_(torch.from_numpy(np.ascontiguousarray(v)))
    return m
