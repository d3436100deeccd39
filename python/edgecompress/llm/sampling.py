"""Choosing the next token from a row of logits, in llama.cpp's default order: repetition penalty,
top-k, top-p, min-p, temperature, then a draw (or the largest logit when temperature <= 0)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Sampler", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [("temperature", self.temperature, lambda v: np.isfinite(v) and v >= 0, "a finite float >= 0"),
                  ("top_k", self.top_k, lambda v: isinstance(v, int) and v >= 0, "an int >= 0 (0: off)"),
                  ("top_p", self.top_p, lambda v: 0 < v <= 1, "a float in (0, 1]"),
                  ("min_p", self.min_p, lambda v: 0 <= v < 1, "a float in [0, 1)"),
                  ("repeat_penalty", self.repeat_penalty, lambda v: np.isfinite(v) and v > 0, "a finite float > 0"),
                  ("repeat_last_n", self.repeat_last_n, lambda v: isinstance(v, int) and v >= 0, "an int >= 0")]
        for name, v, ok, what in checks:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"{name}: expected {what}, got {v!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed: expected an int >= 0 or None, got {self.seed!r}")


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Any) -> int:
        p = self.p
        x = logits.astype(np.float64, copy=True)
        if p.repeat_penalty != 1.0 and p.repeat_last_n > 0 and len(history):
            seen = np.unique(np.asarray(history[-p.repeat_last_n:], dtype=np.int64))
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if p.temperature <= 0:
            return int(np.argmax(x))
        ids = np.arange(x.size)
        if p.top_k > 0 and p.top_k < x.size:
            ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]
        order = ids[np.argsort(-x[ids], kind="stable")]
        v = x[order]
        probs = np.exp(v - v[0])
        probs /= probs.sum()
        if p.top_p < 1.0:  # the fewest tokens whose probability reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            order, v, probs = order[:keep], v[:keep], probs[:keep]
        if p.min_p > 0.0:
            keep = probs >= p.min_p * probs[0]
            order, v = order[keep], v[keep]
        w = np.exp((v - v[0]) / p.temperature)
        return int(order[self.rng.choice(len(order), p=w / w.sum())])
