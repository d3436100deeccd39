"""The tokenizer a GGUF file describes in its metadata, built on the ``tokenizers`` package.

- ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE over scores, as llama.cpp runs it:
  spaces become U+2581, optionally one is prepended, and adjacent pieces merge highest-scoring result
  first, with unknown characters falling back to their UTF-8 bytes (``<0xXX>`` tokens). The merge list
  the ``tokenizers`` BPE model needs is derived from the scores: every split of a vocabulary piece into
  two pieces, ranked by the piece's score.
- ``"gpt2"``: byte-level BPE with the file's merges and the pre-tokenizer regex named by
  ``tokenizer.ggml.pre``.

Control tokens (type 3) are special tokens; user-defined ones (type 4, e.g. Gemma's whitespace runs)
are matched in the text before the model runs, as llama.cpp does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Tokenizer"]

_SPACE = "\u2581"
_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# pre-tokenizer regexes of byte-level BPE vocabularies, by tokenizer.ggml.pre
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
_QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
          r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
PRE_TOKENIZERS = {"default": _GPT2, "gpt2": _GPT2, "llama-bpe": _LLAMA3, "llama3": _LLAMA3, "qwen2": _QWEN2,
                  "smollm": _GPT2}


def _list(meta: dict[str, Any], key: str, kind: type, n: int | None) -> list[Any]:
    v = meta.get(key)
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise ValueError(f"GGUF metadata: {key!r}: expected a list" + (f" of {n} entries" if n is not None else ""))
    if kind is float:
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    else:
        ok = all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
    if not ok:
        raise ValueError(f"GGUF metadata: {key!r}: expected {kind.__name__} entries")
    return v


def _token_id(meta: dict[str, Any], key: str, n: int) -> int | None:
    v = meta.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n:
        raise ValueError(f"GGUF metadata: {key!r}: expected a token id in [0, {n}), got {v!r}")
    return v


def _flag(meta: dict[str, Any], key: str, default: bool) -> bool:
    v = meta.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"GGUF metadata: {key!r}: expected a bool, got {v!r}")
    return v


class Tokenizer:
    """Text <-> token ids for one GGUF file's vocabulary."""

    def __init__(self, meta: dict[str, Any]) -> None:
        from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import BPE

        kind = meta.get("tokenizer.ggml.model")
        if kind not in ("llama", "gpt2"):
            raise ValueError(f"GGUF metadata: tokenizer.ggml.model {kind!r} is not supported (llama, gpt2)")
        tokens = _list(meta, "tokenizer.ggml.tokens", str, None)
        n = len(tokens)
        types = _list(meta, "tokenizer.ggml.token_type", int, n) if "tokenizer.ggml.token_type" in meta else [_NORMAL] * n
        self.tokens = tokens
        self.types = types
        self.n_vocab = n
        self.bos_id = _token_id(meta, "tokenizer.ggml.bos_token_id", n)
        self.eos_id = _token_id(meta, "tokenizer.ggml.eos_token_id", n)
        unk_id = _token_id(meta, "tokenizer.ggml.unknown_token_id", n)
        self.add_bos = _flag(meta, "tokenizer.ggml.add_bos_token", kind == "llama") and self.bos_id is not None
        self.add_eos = _flag(meta, "tokenizer.ggml.add_eos_token", False) and self.eos_id is not None
        vocab = {t: i for i, t in enumerate(tokens)}
        if kind == "llama":
            scores = _list(meta, "tokenizer.ggml.scores", float, n)
            merges = []
            for i, t in enumerate(tokens):
                if types[i] != _NORMAL or len(t) < 2:
                    continue
                for cut in range(1, len(t)):
                    left, right = t[:cut], t[cut:]
                    if left in vocab and right in vocab:
                        merges.append((-float(scores[i]), vocab[left], vocab[right], left, right))
            merges.sort(key=lambda m: m[:3])
            unk = tokens[unk_id] if unk_id is not None else None
            model = BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=True)
            tok = HFTokenizer(model)
            prefix = _flag(meta, "tokenizer.ggml.add_space_prefix", True)
            steps = ([normalizers.Prepend(_SPACE)] if prefix else []) + [normalizers.Replace(" ", _SPACE)]
            tok.normalizer = normalizers.Sequence(steps)
            dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
            tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
        else:
            pre = meta.get("tokenizer.ggml.pre", "default")
            if pre not in PRE_TOKENIZERS:
                raise ValueError(f"GGUF metadata: tokenizer.ggml.pre {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
            merges_s = _list(meta, "tokenizer.ggml.merges", str, None)
            pairs = []
            for m in merges_s:
                parts = m.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"GGUF metadata: tokenizer.ggml.merges: expected 'left right', got {m[:80]!r}")
                pairs.append((parts[0], parts[1]))
            tok = HFTokenizer(BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(PRE_TOKENIZERS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
            tok.decoder = decoders.ByteLevel()
        added = [AddedToken(t, special=types[i] == _CONTROL, normalized=False)
                 for i, t in enumerate(tokens) if types[i] in (_CONTROL, _USER) and t]
        tok.add_tokens(added)
        self._tok = tok
        self.control = {i for i, t in enumerate(types) if t == _CONTROL}
        # end-of-generation tokens: EOS and the end-of-turn markers of chat templates
        eog_text = {"<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>", "</s>", "<|end_of_text|>"}
        self.eog = {i for i in self.control if tokens[i] in eog_text}
        eot = _token_id(meta, "tokenizer.ggml.eot_token_id", n)
        self.eog |= {x for x in (self.eos_id, eot) if x is not None}

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids of text; BOS first when the vocabulary asks for it (``add_bos=None``). With
        ``special`` control tokens written in the text (``<start_of_turn>``) are parsed as such."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        self._tok.encode_special_tokens = not special
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.add_eos and add_bos is None:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Any, special: bool = False) -> str:
        """The text of ids; control tokens are left out unless ``special``."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"ids: expected token ids in [0, {self.n_vocab}), got {i}")
        if not special:
            ids = [i for i in ids if i not in self.control]
        return self._tok.decode(ids, skip_special_tokens=False)
