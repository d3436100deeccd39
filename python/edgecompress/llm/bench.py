"""Speed of a GGUF model on the engine, measured as llama-bench reports it, next to llama.cpp
(``llama-cpp-python``, the same file and thread count) when it is installed.

- prefill (pp): tokens per second of a 512-token prompt from an empty cache, one call per 512;
- decode (tg): tokens per second of 128 single-token calls after a 128-token prompt.

Every figure is the median of interleaved rounds (each contender once per round, after a warm-up), so
drift on a shared machine hits all alike. The prompt is random token ids, as llama-bench uses.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Contender", "LlamaCpp", "Ours", "llama_cpp_perplexity", "read_bandwidth", "run_rounds"]


@dataclass
class Contender:
    name: str
    prefill: Callable[[list[int]], None]  # runs a prompt from an empty cache
    decode: Callable[[list[int], list[int]], None]  # a prompt, then one call per token of the second list


class Ours:
    def __init__(self, llm: Any, threads: int) -> None:
        self.llm, self.threads = llm, threads

    @contextlib.contextmanager
    def _threads(self) -> Any:
        import edgecompress as ec

        before = ec.get_num_threads()
        ec.set_num_threads(self.threads)
        try:
            yield
        finally:
            ec.set_num_threads(before)

    def prefill(self, ids: list[int]) -> None:
        with self._threads():
            self.llm.reset()
            self.llm._eval(np.asarray(ids, np.int64), False)

    def decode(self, prompt: list[int], steps: list[int]) -> None:
        with self._threads():
            self.llm.reset()
            self.llm._eval(np.asarray(prompt, np.int64), False)
            for t in steps:
                self.llm._eval(np.array([t], np.int64), False)


class LlamaCpp:
    """llama.cpp through llama-cpp-python: eval of token ids, as llama-bench does."""

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        with contextlib.redirect_stderr(io.StringIO()):
            self.m = Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                           verbose=False)

    def prefill(self, ids: list[int]) -> None:
        self.m.reset()
        self.m.eval(ids)

    def decode(self, prompt: list[int], steps: list[int]) -> None:
        self.m.reset()
        self.m.eval(prompt)
        for t in steps:
            self.m.eval([t])


def llama_cpp_perplexity(m: Any, ids: list[int], window: int, bos: int | None) -> tuple[float, list[int]]:
    """``LLM.perplexity``'s measure run by llama.cpp (a Llama made with ``logits_all=True``): windows of
    ``window`` tokens (the first set to BOS), each scored on its second half. Returns the perplexity
    (NaN for no full window) and llama.cpp's argmax at each scored position."""
    nll, count, preds = 0.0, 0, []
    for start in range(0, len(ids) - window + 1, window):
        w = list(ids[start:start + window])
        if bos is not None:
            w[0] = bos
        m.reset()
        m.eval(w)
        lg = np.asarray(m.scores[window // 2:window - 1], np.float64)
        mx = lg.max(axis=1)
        lse = mx + np.log(np.exp(lg - mx[:, None]).sum(axis=1))
        nll += float((lse - lg[np.arange(len(lg)), w[window // 2 + 1:]]).sum())
        count += len(lg)
        preds += lg.argmax(axis=1).tolist()
    return (float(np.exp(nll / count)) if count else float("nan")), preds


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def run_rounds(contenders: dict[str, Any], n_vocab: int, bos: int | None, pp: int = 512, tg: int = 128,
               rounds: int = 3, seed: int = 0, prompt_len: int = 128) -> dict[str, dict[str, float]]:
    """{name: {"prefill": tok/s, "decode": tok/s}}, medians over interleaved rounds: pp prompt tokens,
    and tg tokens decoded after a prompt of prompt_len."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, n_vocab - 1), n_vocab, max(pp, prompt_len + tg)).tolist()
    if bos is not None:
        ids[0] = bos
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in contenders}
    for c in contenders.values():  # warm-up: packing, plans, thread pools
        c.prefill(ids[:pp])
        c.decode(ids[:8], ids[8:10])
    for _ in range(rounds):
        for name, c in contenders.items():
            t0 = time.perf_counter()
            c.prefill(ids[:pp])
            times[name]["prefill"].append(pp / (time.perf_counter() - t0))
        for name, c in contenders.items():
            prompt = ids[:prompt_len]
            c.decode(prompt, [])  # the prompt alone, so the decode time excludes it
            t_prompt = time.perf_counter()
            c.decode(prompt, [])
            t_prompt = time.perf_counter() - t_prompt
            t0 = time.perf_counter()
            c.decode(prompt, ids[prompt_len:prompt_len + tg])
            total = time.perf_counter() - t0
            times[name]["decode"].append(tg / max(total - t_prompt, 1e-9))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}


def read_bandwidth(threads: int = 1, mbytes: int = 512) -> float:
    """GB/s of reading a float32 matrix far larger than the caches once: a BLAS matrix-vector product
    (numpy's, capped at ``threads`` threads with threadpoolctl), the best of 5. The physical limit a
    decoded token's weight reads are measured against (a product streams its matrix at the rate the
    memory system delivers; numpy's own reductions run slower than that here)."""
    from threadpoolctl import threadpool_limits

    a = np.ones((mbytes << 8, 1024), np.float32)  # mbytes MiB
    v = np.ones(1024, np.float32)
    best = 0.0
    with threadpool_limits(threads):
        for _ in range(5):
            t0 = time.perf_counter()
            a @ v
            best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best / 1e9
