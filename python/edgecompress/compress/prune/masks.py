"""Sparsity patterns and the masks they allow, computed from a score per weight.

A weight is seen as the matrix (N, K) of the canonical sparse formats: a Linear weight as it is, a
Conv2d weight (out, in/groups, kh, kw) with K in (kh, kw, c) order, the patch order of edgecompress's
conv modules (``rows`` / ``unrows``), so that N:M groups and 1x4 blocks run along what the kernels
see as K. Patterns:

- ``"unstructured"``: any weight may go.
- N:M (``"2:4"``, ``"1:4"``, ``"4:8"``): in every group of M consecutive weights along K, the N with
  the highest scores stay. The sparsity is fixed at 1 - N/M.
- blocks ``"4x1"``, ``"8x1"`` (4 or 8 consecutive rows at one k) and ``"1x4"`` (4 consecutive k in one
  row): a block stays or goes as a whole, ranked by its mean score. Edge blocks may be partial.

For unstructured and block patterns the lowest-ranked units go until ``round(sparsity · numel)``
weights are pruned (fewer when the next block would overshoot); ``thresholds`` does it per tensor or over
several tensors at once (a global threshold).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

N_M = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}
BLOCKS = {"4x1": (4, 1), "8x1": (8, 1), "1x4": (1, 4)}
PATTERNS = ("unstructured", *N_M, *BLOCKS)


@dataclass(frozen=True)
class Pattern:
    name: str
    n: int = 0  # N:M only
    m: int = 0
    block: tuple[int, int] = (1, 1)  # (rows along N, columns along K)

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def fixed_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m if self.is_nm else None


def parse_pattern(pattern: object) -> Pattern:
    if not isinstance(pattern, str):
        raise TypeError(f"pattern: expected a str, one of {', '.join(map(repr, PATTERNS))}; got {pattern!r}")
    if pattern in N_M:
        n, m = N_M[pattern]
        return Pattern(pattern, n=n, m=m)
    if pattern in BLOCKS:
        return Pattern(pattern, block=BLOCKS[pattern])
    if pattern == "unstructured":
        return Pattern(pattern)
    if re.fullmatch(r"\d+:\d+", pattern):
        raise ValueError(f"pattern: N:M sparsity supports {', '.join(map(repr, N_M))}; got {pattern!r}")
    if re.fullmatch(r"\d+x\d+", pattern):
        raise ValueError(f"pattern: block sparsity supports {', '.join(map(repr, BLOCKS))}; got {pattern!r}")
    raise ValueError(f"pattern: expected one of {', '.join(map(repr, PATTERNS))}; got {pattern!r}")


def rows(t: torch.Tensor) -> torch.Tensor:
    """The (N, K) matrix of a weight-shaped tensor: 4-D (conv) tensors with K in (kh, kw, c) order."""
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def unrows(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of ``rows``: the (N, K) matrix back in the weight's ``shape``."""
    if len(shape) == 4:
        o, c, kh, kw = shape
        return matrix.reshape(o, kh, kw, c).permute(0, 3, 1, 2)
    return matrix.reshape(shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores of every ``m`` consecutive values along K (ties: the first)."""
    matrix = rows(scores)
    if matrix.shape[1] % m:
        raise ValueError(f"K={matrix.shape[1]} is not a multiple of {m}")
    groups = matrix.reshape(matrix.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return unrows(mask.reshape(matrix.shape), scores.shape)


def _block_view(scores: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean score and element count of each block of the (N, K) matrix (zero-padded at the edges)."""
    rows_ = rows(scores).float()
    (n, k), (r, c) = rows_.shape, block
    nb, kb = -(-n // r), -(-k // c)
    padded = rows_.new_zeros(nb * r, kb * c)
    padded[:n, :k] = rows_
    count = rows_.new_zeros(nb * r, kb * c)
    count[:n, :k] = 1
    total = padded.reshape(nb, r, kb, c).sum(dim=(1, 3))
    sizes = count.reshape(nb, r, kb, c).sum(dim=(1, 3))
    return total / sizes, sizes


def _expand_blocks(keep: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    r, c = block
    full = keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
    return unrows(full[: shape[0], : math.prod(shape[1:])], shape)


def thresholds(scores: list[torch.Tensor], sparsity: float, pattern: Pattern) -> list[torch.Tensor]:
    """Boolean keep-masks for ``scores`` (one tensor each), pruning as one pool: ranking over all of
    them (pass one tensor for a per-layer threshold). ``pattern`` is unstructured or a block."""
    views = [_block_view(s, pattern.block) for s in scores]
    unit_scores = torch.cat([v.flatten() for v, _ in views])
    unit_sizes = torch.cat([c.flatten() for _, c in views])
    target = round(sparsity * float(unit_sizes.sum()))
    order = torch.sort(unit_scores, stable=True).indices
    pruned_count = torch.cumsum(unit_sizes[order], 0)
    keep = torch.ones_like(unit_scores, dtype=torch.bool)
    keep[order[pruned_count <= target]] = False
    masks, start = [], 0
    for s, (v, _) in zip(scores, views):
        part = keep[start : start + v.numel()].reshape(v.shape)
        start += v.numel()
        masks.append(_expand_blocks(part, pattern.block, s.shape))
    return masks
