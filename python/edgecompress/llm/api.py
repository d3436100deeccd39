"""``edgecompress.llm.load``: a GGUF model on the engine, with its tokenizer, chat template and
generation loop."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .chat import render
from .model import build_program, cache_slots, read
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer

__all__ = ["LLM", "Timings", "load"]

DEFAULT_N_CTX = 4096
N_BATCH = 512  # prompt tokens per native call
N_ROWS = 64  # tokens per native call when every position's logits are returned


@dataclass
class Timings:
    """Of the last generate call: prompt tokens and seconds, generated tokens and seconds."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


class LLM:
    """A decoder-only language model from a GGUF file, run by one engine program (model.py)."""

    def __init__(self, path: Any, weights: str = "native", n_ctx: int | None = None) -> None:
        t0 = time.perf_counter()
        self.file, self.hparams, w, self.report = read(path, weights)
        hp = self.hparams
        if n_ctx is None:
            n_ctx = min(hp.context_length, DEFAULT_N_CTX)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 1 <= n_ctx <= hp.context_length:
            raise ValueError(f"n_ctx: expected an int in [1, {hp.context_length}] (the model's context), got {n_ctx!r}")
        self.n_ctx = n_ctx
        self.weights = weights
        self.tokenizer = Tokenizer(self.file.metadata)
        if self.tokenizer.n_vocab != hp.n_vocab:
            raise ValueError(f"{path}: the vocabulary has {self.tokenizer.n_vocab} tokens, the embeddings {hp.n_vocab}")
        self.program = build_program(hp, w, n_ctx)
        del w
        # one copy of each weight in memory: the packed one (the program then runs at this tier)
        self.program.release_weights()
        kvw = hp.n_head_kv * hp.head_dim
        self._caches = []
        for i in range(hp.n_layer):
            slots, _ = cache_slots(hp, i, n_ctx)
            self._caches += [np.zeros((slots, kvw), np.float32), np.zeros((slots, kvw), np.float32)]
        self._cache_names = [n for i in range(hp.n_layer) for n in (f"k{i}", f"v{i}")]
        self._ids: list[int] = []  # the tokens whose keys and values the caches hold
        self.remote: Any = None  # the server's side of a layer split (offload)
        self.timings = Timings()
        self.last_tokens: list[int] = []
        self.last_probabilities: list[float] = []
        self._track_probabilities = False
        template = self.file.metadata.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) else None
        self.load_seconds = time.perf_counter() - t0

    # ---- text ----

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos, special)

    def detokenize(self, ids: Any, special: bool = False) -> str:
        return self.tokenizer.decode(ids, special)

    @property
    def kv_cache_bytes(self) -> int:
        held = self._caches if self.remote is None else list(self.remote.caches.values())
        return sum(c.nbytes for c in held)

    # ---- running ----

    def reset(self) -> None:
        self._ids = []

    def _check_ids(self, ids: Any) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim != 1 or a.size == 0 or not (np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"ids: expected a non-empty 1-D sequence of token ids, got {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        if a.min() < 0 or a.max() >= self.hparams.n_vocab:
            raise ValueError(f"ids: expected token ids in [0, {self.hparams.n_vocab}), got {int(a.min())}..{int(a.max())}")
        return a

    def _eval(self, ids: np.ndarray, all_rows: bool) -> np.ndarray:
        """Runs ids after the cached tokens; the logits of every position (all_rows) or of the last."""
        pos0 = len(self._ids)
        if pos0 + ids.size > self.n_ctx:
            raise ValueError(f"the context holds {self.n_ctx} tokens: {pos0} cached + {ids.size} new do not fit "
                             f"(load with a larger n_ctx)")
        outs = []
        # every position's logits: smaller calls (a row is n_vocab floats, and the head's halves each
        # hold one more row of them in the arena)
        step = N_ROWS if all_rows else N_BATCH
        for a in range(0, ids.size, step):
            chunk = np.ascontiguousarray(ids[a:a + step])
            last = a + step >= ids.size
            rows = np.arange(chunk.size, dtype=np.int64) if all_rows else np.array([chunk.size - 1], np.int64)
            pos = np.array([len(self._ids)], np.int64)
            out = self.program(chunk, pos, rows, *self._caches) if self.remote is None else self.remote(chunk, pos, rows)
            self._ids.extend(int(t) for t in chunk)
            if all_rows or last:
                outs.append(out)
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def logits(self, ids: Any) -> np.ndarray:
        """float32 logits (len(ids), n_vocab) of a fresh sequence: row t predicts the token after ids[t].
        (That is len(ids) * n_vocab * 4 bytes: for long texts, ``perplexity`` scores in pieces.)"""
        a = self._check_ids(ids)
        self._check_full_logits("logits")
        self.reset()
        return self._eval(a, True)

    def _check_full_logits(self, what: str) -> None:
        if self.remote is not None and self.remote.top_k < self.hparams.n_vocab:
            raise ValueError(f"{what}: this model is split (offload) and its server sends the top {self.remote.top_k} "
                             f"logits of {self.hparams.n_vocab}; {what} needs them all")

    def _start(self, prompt_ids: np.ndarray) -> np.ndarray:
        """Logits after the prompt, reusing the cached tokens when they begin it."""
        n = len(self._ids)
        if 0 < n < prompt_ids.size and list(prompt_ids[:n]) == self._ids:
            return self._eval(prompt_ids[n:], False)[-1]
        self.reset()
        return self._eval(prompt_ids, False)[-1]

    def generate(self, prompt: str | list[int], max_new_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
                 stop: list[str] | str | None = None, stream: bool = False) -> Any:
        """The text generated after ``prompt`` (a string, tokenized with BOS, or token ids), up to
        ``max_new_tokens`` tokens, an end-of-generation token or a ``stop`` string (left out of the
        text); greedy when ``temperature`` is 0. ``stream=True``: an iterator of text pieces instead."""
        params = SamplingParams(float(temperature), top_k, float(top_p), float(min_p), float(repeat_penalty), seed=seed)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            raise TypeError("stop: expected a non-empty string or a list of them")
        ids = self._check_ids(self.tokenize(prompt) if isinstance(prompt, str) else prompt)
        it = self._pieces(ids, max_new_tokens, Sampler(params), stops)
        return it if stream else "".join(it)

    def _pieces(self, ids: np.ndarray, max_new: int, sampler: Sampler, stops: list[str]) -> Iterator[str]:
        t = self.timings = Timings(prompt_tokens=ids.size)
        t0 = time.perf_counter()
        if max_new == 0:
            return
        logits = self._start(ids)
        t.prompt_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        out: list[int] = []
        self.last_tokens = out  # the generated ids (end-of-generation token left out)
        sent = ""  # text already yielded
        history = list(ids)
        probs = self.last_probabilities = []  # the model's probability of each token it chose
        while True:
            tok = sampler(logits, history)
            if self._track_probabilities:
                lg = logits.astype(np.float64)
                mx = lg.max()
                probs.append(float(np.exp(lg[tok] - mx) / np.exp(lg - mx).sum()))
            if tok in self.tokenizer.eog:
                break
            out.append(tok)
            history.append(tok)
            t.decode_tokens = len(out)
            text = self.tokenizer.decode(out)
            hit = min((i for i in (text.find(s, max(0, len(sent) - len(s))) for s in stops) if i >= 0), default=-1)
            if hit >= 0:
                if hit > len(sent):
                    yield text[len(sent):hit]
                break
            # hold back an unfinished UTF-8 character and what could still become a stop string
            hold = len(text) - (len(text.rstrip("\ufffd")))
            for s in stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
            if len(text) - hold > len(sent):
                yield text[len(sent):len(text) - hold]
                sent = text[:len(text) - hold]
            if len(out) >= max_new or len(self._ids) >= self.n_ctx:
                break
            logits = self._eval(np.array([tok], np.int64), False)[-1]
            t.decode_seconds = time.perf_counter() - t1
        t.decode_seconds = time.perf_counter() - t1
        text = self.tokenizer.decode(out)
        hit = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        end = hit if hit >= 0 else len(text)
        if end > len(sent):
            yield text[len(sent):end]

    def generate_with_confidence(self, prompt: str | list[int], max_new_tokens: int = 128, **kwargs: Any) -> tuple[str, float]:
        """``generate``'s text and the model's confidence in it: the geometric mean of the
        probabilities it gave the tokens it chose (the end-of-generation token included)."""
        self._track_probabilities = True
        try:
            text = self.generate(prompt, max_new_tokens, stream=False, **kwargs)
        finally:
            self._track_probabilities = False
        p = np.asarray(self.last_probabilities)
        return text, float(np.exp(np.log(np.maximum(p, 1e-300)).mean())) if p.size else 1.0

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256, **kwargs: Any) -> Any:
        """The assistant's reply to ``messages`` ([{"role": "user", "content": ...}, ...]), rendered
        with the file's chat template (or the architecture's); same options as ``generate``."""
        tk = self.tokenizer
        bos = tk.tokens[tk.bos_id] if tk.bos_id is not None else ""
        eos = tk.tokens[tk.eos_id] if tk.eos_id is not None else ""
        prompt = render(self.chat_template, self.hparams.arch, messages, bos, eos)
        ids = tk.encode(prompt, add_bos=False)
        if tk.add_bos and (not ids or ids[0] != tk.bos_id):
            ids = [tk.bos_id] + ids
        return self.generate(ids, max_new_tokens, **kwargs)

    def perplexity(self, text: str, n_ctx: int = 512) -> tuple[float, int, np.ndarray]:
        """llama.cpp's measure: the text's tokens in windows of ``n_ctx`` (the first a BOS), each scored
        on its second half. Returns (perplexity, tokens scored, the argmax prediction of each scored
        token followed by the true token: (scored, 2) int64)."""
        self._check_full_logits("perplexity")
        ids = self.tokenize(text, add_bos=False)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 16 <= n_ctx <= self.n_ctx:
            raise ValueError(f"n_ctx: expected an int in [16, {self.n_ctx}], got {n_ctx!r}")
        if len(ids) < n_ctx:
            raise ValueError(f"text: {len(ids)} tokens, fewer than one window of {n_ctx}")
        nll, count, pairs = 0.0, 0, []
        first = n_ctx // 2
        for start in range(0, len(ids) - n_ctx + 1, n_ctx):
            window = np.array(ids[start:start + n_ctx], np.int64)
            if self.tokenizer.bos_id is not None:
                window[0] = self.tokenizer.bos_id
            self.reset()
            self._eval(window[:first], False)
            for a in range(first, n_ctx - 1, N_ROWS):  # N_ROWS rows of logits at a time (n_vocab floats each)
                chunk = window[a:min(a + N_ROWS, n_ctx - 1)]
                lg = self._eval(chunk, True).astype(np.float64)
                target = window[a + 1:a + 1 + chunk.size]
                mx = lg.max(axis=1)
                lse = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
                nll += float((lse - lg[np.arange(chunk.size), target]).sum())
                count += chunk.size
                pairs.append(np.stack([lg.argmax(axis=1), target], axis=1))
        self.reset()
        return float(np.exp(nll / count)), count, np.concatenate(pairs)

    def offload(self, layers: int, server: Any, name: str | None = None, wire: str = "fp16", codec: str | None = None,
                top_k: int = 64, link: Any = None, timeout: float = 60.0) -> "LLM":
        """Keep the embedding and the first ``layers`` decoder layers on this device and run the rest on
        ``server``: the URL of ``edgecompress serve`` serving the same GGUF file (under ``name``, by
        default the file's stem), or an ``edgecompress.llm.split.LayerServer``. Each call sends the
        residual stream after those layers as ``wire`` messages (fp16, int8 or fp32, with ``codec``
        zstd or lz4) and gets back the server's ``top_k`` largest logits per position, so sampling sees
        those only: exact for greedy decoding and for ``top_k`` sampling up to the server's. The other
        layers' weights and caches are freed here; this cannot be undone. ``link``: an emulated link
        (``edgecompress.remote.Link``). ``self.remote.stats``: bytes and seconds on each side."""
        from .split import RemoteLayers, split_layers

        if self.remote is not None:
            raise ValueError("this model is already split (offload was called)")
        head, _ = split_layers(self.program, layers)
        if name is None:
            name = os.path.splitext(os.path.basename(str(self.file.path)))[0]
        self.remote = RemoteLayers(self, head, layers, server, name, wire, codec, top_k, link, timeout)
        self.program = head
        self._caches = []
        self.reset()
        return self

    def close(self) -> None:
        self.file.close()

    def __repr__(self) -> str:
        hp = self.hparams
        return (f"LLM({os.path.basename(str(self.file.path))!r}, arch={hp.arch}, layers={hp.n_layer}, "
                f"weights={self.weights!r}, memory={self.report.memory_bytes / 1e6:.1f} MB, n_ctx={self.n_ctx})")


def load(path: Any, weights: str = "native", n_ctx: int | None = None) -> LLM:
    """A GGUF model (architectures llama and gemma3) on the engine. ``weights``: "native" (each tensor
    in the engine format nearest its file type), "float32", "int8", "int4-g32" or "nf4"."""
    return LLM(path, weights, n_ctx)
