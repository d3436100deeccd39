"""Importance of the channels (neurons, filters, heads) of channel groups: which ones to prune.

- ``"l1"`` / ``"l2"``: norm of the weights the channel owns: by default the rows that produce it (a
  filter, a neuron's incoming weights, a head's q/k/v rows), with ``side="in"`` the columns that read it.
- ``"taylor"``: first order (Molchanov et al. 2017/2019). Each channel gets a gate g = 1 where its
  consumers read it; per batch b, d_b = ∂L_b/∂g = Σ activation · gradient over that batch. Score:
  mean over batches of |d_b|.
- ``"fisher"``: second order with the diagonal empirical Fisher as Hessian (OBD, Theis et al. 2018):
  removing the channel (g: 1 → 0) costs about ½ F g² with F = E_b[d_b²]. Score: ½ · mean over batches
  of d_b².
- ``"montecarlo"``: ``samples`` random ablations, each dropping every channel with probability
  ``drop_prob``; the loss increase of each is regressed (least squares with an intercept) on which
  channels were dropped. Score: the fitted loss increase for dropping the channel. Exact when the loss
  is additive in the channels; use more samples than channels.

A low score means the channel can go. Gates sit where the channels are read (the inputs of the Linear and
Conv layers that consume them), so ablating a channel is exactly pruning it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ._common import check_choice, check_fraction, check_positive_int, eval_mode, labelled_batches, mean_loss
from .graph import ChannelGroup, DependencyGraph

IMPORTANCE = ("l1", "l2", "taylor", "fisher", "montecarlo")


def group_importance(graph: DependencyGraph, groups: list[ChannelGroup], importance: str = "l2", *,
                     side: str = "out", data: Any = None, loss_fn: Callable | None = None, samples: int = 64,
                     drop_prob: float = 0.5, seed: int = 0) -> dict[int, torch.Tensor]:
    """A score per channel for each group (keyed by ``group.index``); higher = more important.

    ``data`` (``(inputs, targets)`` batches) and ``loss_fn`` (default cross-entropy) are needed by the
    gradient and Monte Carlo scores.
    """
    check_choice(importance, "importance", IMPORTANCE)
    check_choice(side, "side", ("out", "in"))
    if importance in ("l1", "l2"):
        if data is not None:
            raise ValueError(f"data: importance={importance!r} is a weight norm and uses no data")
        p = 1 if importance == "l1" else 2
        return {g.index: _norms(graph, g, side, p) for g in groups}
    if data is None:
        raise ValueError(f"data: importance={importance!r} needs (inputs, targets) batches, got None")
    loss_fn = loss_fn or nn.functional.cross_entropy
    with _Gates(graph, groups) as gates, eval_mode(graph.model):
        if importance == "montecarlo":
            return _monte_carlo(graph.model, gates, data, loss_fn, check_positive_int(samples, "samples"),
                                check_fraction(drop_prob, "drop_prob", low_open=True), seed)
        return _gradient_scores(graph.model, gates, data, loss_fn, importance)


def _norms(graph: DependencyGraph, group: ChannelGroup, side: str, p: int) -> torch.Tensor:
    total = torch.zeros(group.size)
    channels = torch.arange(group.size)
    for u in group.usages_of(side):
        m = graph.model.get_submodule(u.module)
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue  # BatchNorm / LayerNorm vectors are not a channel's weights
        idx = u.indices(channels)
        w = m.weight.detach()
        if side == "out":
            slices = w.reshape(w.shape[0], -1)[idx]
        elif isinstance(m, nn.Linear) or m.groups == 1:
            slices = w.transpose(0, 1)[idx].reshape(len(idx), -1)
        else:  # grouped conv: input channel c is column c % per_group of the rows of group c // per_group
            per_group = m.in_channels // m.groups
            rows = w.view(m.groups, -1, *w.shape[1:])
            slices = torch.stack([rows[c // per_group, :, c % per_group].flatten() for c in idx.tolist()])
        total += slices.abs().pow(p).reshape(group.size, -1).sum(dim=1)
    return total if p == 1 else total.sqrt()


class _Gates:
    """Multiplies every channel of ``groups`` by a gate (1 by default) where its consumers read it."""

    def __init__(self, graph: DependencyGraph, groups: list[ChannelGroup]):
        self.graph = graph
        self.groups = groups
        self.values = {g.index: torch.ones(g.size, requires_grad=True) for g in groups}
        self.readers: dict[str, list[tuple[ChannelGroup, Any]]] = {}
        for g in groups:
            if not g.usages_of("in"):
                raise ValueError(f"layers: the channels of {g.name!r} are read by no Linear or Conv layer")
            for u in g.usages_of("in"):
                self.readers.setdefault(u.module, []).append((g, u))

    def _hook(self, entries: list) -> Callable:
        def gate(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            dim = x.dim() - 1 if isinstance(module, nn.Linear) else 1
            full = torch.ones(x.shape[dim], dtype=x.dtype)
            for g, u in entries:
                full = full.scatter(0, u.indices(torch.arange(g.size)), self.values[g.index].to(x.dtype).repeat_interleave(u.repeat))
            shape = [1] * x.dim()
            shape[dim] = -1
            return (x * full.view(shape), *args[1:])

        return gate

    def __enter__(self) -> _Gates:
        self.handles = [self.graph.model.get_submodule(name).register_forward_pre_hook(self._hook(entries))
                        for name, entries in self.readers.items()]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def _gradient_scores(model: nn.Module, gates: _Gates, data: Any, loss_fn: Callable, kind: str) -> dict[int, torch.Tensor]:
    keys = list(gates.values)
    sums = {k: torch.zeros_like(gates.values[k]) for k in keys}
    n = 0
    for x, y in labelled_batches(data):
        grads = torch.autograd.grad(loss_fn(model(x), y), [gates.values[k] for k in keys], allow_unused=True)
        for k, d in zip(keys, grads):
            if d is not None:  # None: no consumer of this group ran on this batch
                sums[k] += d.abs() if kind == "taylor" else d.pow(2)
        n += 1
    if n == 0:
        raise ValueError("data: expected at least one batch, got none")
    scale = 1.0 / n if kind == "taylor" else 0.5 / n
    return {k: s * scale for k, s in sums.items()}


def _monte_carlo(model: nn.Module, gates: _Gates, data: Any, loss_fn: Callable, samples: int,
                 drop_prob: float, seed: int) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keys = list(gates.values)
    base = mean_loss(model, data, loss_fn)
    dropped, increase = [], []
    with torch.no_grad():
        for _ in range(samples):
            z = {k: (torch.rand(gates.values[k].shape, generator=gen) < drop_prob) for k in keys}
            for k in keys:
                gates.values[k].copy_((~z[k]).float())
            increase.append(mean_loss(model, data, loss_fn) - base)
            dropped.append(torch.cat([z[k] for k in keys]))
        for k in keys:
            gates.values[k].fill_(1.0)
    design = torch.cat([torch.ones(samples, 1, dtype=torch.float64), torch.stack(dropped).double()], dim=1)
    fit = torch.linalg.lstsq(design, torch.tensor(increase, dtype=torch.float64)[:, None]).solution[1:, 0]
    out, start = {}, 0
    for k in keys:
        size = gates.values[k].numel()
        out[k] = fit[start : start + size].float()
        start += size
    return out
