"""Structured pruning: a physically smaller model, an ordinary nn.Module of the same classes.

``prune_filters`` (Conv output channels), ``prune_channels`` (Conv input channels), ``prune_neurons``
(Linear outputs) and ``prune_heads`` (attention heads) each pick channel groups from the dependency
graph (``graph.py``), score their channels (``importance.py``), keep the best ``1 - amount`` of each
group (rounded up to a multiple of ``round_to``, e.g. 16 for SIMD widths) and slice every coupled layer.
``remove_blocks`` replaces whole blocks by identities. All edit the model in place and return a Report.
Optimizers built on the old parameters must be rebuilt.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ._common import (as_input_tuple, calibration_batches, check_fraction, check_module, check_positive_int,
                      eval_mode, resolve_layers, set_submodule)
from .graph import AttentionSpec, ChannelGroup, DependencyGraph
from .importance import group_importance
from .report import Report, measure

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def select_channels(scores: torch.Tensor, amount: float, divisions: int = 1, round_to: int = 1) -> torch.Tensor:
    """Sorted indices of the channels to keep: the highest scores, ``floor(amount·size)`` removed, the
    count rounded up to a multiple of lcm(round_to, divisions) and split evenly over the divisions."""
    size = scores.numel()
    step = math.lcm(round_to, divisions)
    keep = size - math.floor(amount * size + 1e-9)
    keep = min(size, -(-keep // step) * step)
    part, per = size // divisions, keep // divisions
    kept = [torch.sort(scores[d * part : (d + 1) * part], descending=True, stable=True).indices[:per] + d * part
            for d in range(divisions)]
    return torch.sort(torch.cat(kept)).values


def _pick_groups(graph: DependencyGraph, layers: Any, kinds: tuple[type, ...], role: str, what: str,
                 heads: bool = False) -> list[ChannelGroup]:
    """The prunable groups that ``layers`` write (role "out") or read (role "in"); a layer named
    explicitly must have at least one."""
    if heads:
        names = list(graph.attention) if layers is None else list(layers)
        for n in names:
            if n not in graph.attention:
                raise ValueError(f"layers: {n!r} is not an attention module with q/k/v/out projections "
                                 f"(found: {sorted(graph.attention)})")
        picked = {g.index: g for g in graph.groups if g.attention in names and g.prunable}
    else:
        picked = {}
        for name in resolve_layers(graph.model, layers, kinds, what):
            groups = graph.groups_of(name, role)
            ok = [g for g in groups if g.prunable and g.attention is None]
            if layers is not None and not ok:
                side = "inputs" if role == "in" else "channels"
                why = next((g.pinned for g in groups if g.pinned), None)
                if any(g.attention for g in groups):
                    why = "it is an attention projection; prune its heads with prune_heads"
                raise ValueError(f"layers: the {side} of {name!r} cannot be pruned: "
                                 f"{why or 'they come from outside any prunable layer'}")
            picked.update((g.index, g) for g in ok)
    if not picked:
        raise ValueError(f"model: no prunable {what} found")
    return list(picked.values())


def _prune(model: nn.Module, example_inputs: Any, amount: float, layers: Any, kinds: tuple[type, ...], role: str,
           what: str, importance: str, data: Any, loss_fn: Callable | None, round_to: int, samples: int, seed: int,
           attention: dict[str, AttentionSpec] | None = None, heads: bool = False) -> Report:
    check_module(model)
    amount = check_fraction(amount, "amount")
    round_to = check_positive_int(round_to, "round_to")
    graph = DependencyGraph(model, example_inputs, attention)
    groups = _pick_groups(graph, layers, kinds, role, what, heads)
    scores = group_importance(graph, groups, importance, side=role, data=data, loss_fn=loss_fn, samples=samples,
                              drop_prob=max(amount, 0.05), seed=seed)
    keep = {g.index: select_channels(scores[g.index], amount, g.divisions, round_to) for g in groups}
    before = measure(model, example_inputs)
    graph.prune(keep)
    after = measure(model, example_inputs)
    notes = {}
    for g in groups:
        owner = next(u.module for u in g.usages if u.role == "out")
        notes[owner] = f"{'heads' if g.attention else 'channels'} {g.size} -> {len(keep[g.index])}"
    return Report.compare(f"{what}: amount {amount:g}, importance {importance}, round_to {round_to}",
                          before, after, notes)


def prune_filters(model: nn.Module, example_inputs: Any, amount: float, *, layers: list[str] | None = None,
                  importance: str = "l2", data: Any = None, loss_fn: Callable | None = None, round_to: int = 1,
                  samples: int = 64, seed: int = 0) -> Report:
    """Remove ``amount`` of the output channels (filters) of each Conv in ``layers`` (default: every Conv
    whose outputs can be pruned), with every layer coupled to them. Scores: see ``importance.py``."""
    return _prune(model, example_inputs, amount, layers, _CONV, "out", "Conv filters", importance, data, loss_fn,
                  round_to, samples, seed)


def prune_channels(model: nn.Module, example_inputs: Any, amount: float, *, layers: list[str] | None = None,
                   importance: str = "l2", data: Any = None, loss_fn: Callable | None = None, round_to: int = 1,
                   samples: int = 64, seed: int = 0) -> Report:
    """Remove ``amount`` of the input channels of each Conv in ``layers`` (and the layers that produce
    them); norms are taken over the Conv's own input-channel weights."""
    return _prune(model, example_inputs, amount, layers, _CONV, "in", "Conv input channels", importance, data,
                  loss_fn, round_to, samples, seed)


def prune_neurons(model: nn.Module, example_inputs: Any, amount: float, *, layers: list[str] | None = None,
                  importance: str = "l2", data: Any = None, loss_fn: Callable | None = None, round_to: int = 1,
                  samples: int = 64, seed: int = 0) -> Report:
    """Remove ``amount`` of the output neurons of each Linear in ``layers`` (default: every Linear whose
    outputs can be pruned) and the matching inputs of the layers that read them."""
    return _prune(model, example_inputs, amount, layers, (nn.Linear,), "out", "Linear neurons", importance, data,
                  loss_fn, round_to, samples, seed)


def prune_heads(model: nn.Module, example_inputs: Any, amount: float, *, layers: list[str] | None = None,
                attention: dict[str, AttentionSpec] | None = None, importance: str = "l2", data: Any = None,
                loss_fn: Callable | None = None, samples: int = 64, seed: int = 0) -> Report:
    """Remove ``amount`` of the heads of each attention module in ``layers`` (default: all found; see
    ``graph.py`` for what an attention module must look like)."""
    return _prune(model, example_inputs, amount, layers, (nn.Module,), "out", "attention heads", importance, data,
                  loss_fn, 1, samples, seed, attention, heads=True)


def block_importance(model: nn.Module, names: list[str], calibration: Any) -> dict[str, float]:
    """How much each block changes its input: 1 - cos(input, output) per example, averaged over the
    calibration inputs (the block influence of Men et al. 2024). Blocks near 0 are candidates to remove."""
    check_module(model)
    names = _names(model, names)
    sums = {n: [0.0, 0] for n in names}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            a, b = args[0].flatten(1), output.flatten(1)
            sums[name][0] += float((1 - nn.functional.cosine_similarity(a, b, dim=1)).sum())
            sums[name][1] += a.shape[0]

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            for x in calibration_batches(calibration):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: s / max(c, 1) for n, (s, c) in sums.items()}


def remove_blocks(model: nn.Module, example_inputs: Any, names: list[str]) -> Report:
    """Replace each named module by ``nn.Identity``; each must map one tensor to a tensor of the same
    shape (a residual block as a whole drops to its skip connection)."""
    check_module(model)
    names = _names(model, names)
    seen: dict[str, list] = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen[n].append((args, out))) for n in names]
    try:
        with eval_mode(model), torch.no_grad():
            model(*as_input_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
    for n, calls in seen.items():
        if not calls:
            raise ValueError(f"names: {n!r} is not called by the model's forward")
        for args, out in calls:
            if len(args) != 1 or not isinstance(out, torch.Tensor) or args[0].shape != out.shape:
                raise ValueError(f"names: {n!r} must map one tensor to a tensor of the same shape to be removed")
    before = measure(model, example_inputs)
    for n in names:
        set_submodule(model, n, nn.Identity())
    after = measure(model, example_inputs)
    notes = {k: "removed" for k in before for n in names if k == n or k.startswith(n + ".")}
    return Report.compare(f"remove_blocks: {', '.join(names)}", before, after, notes)


def _names(model: nn.Module, names: Any) -> list[str]:
    if names is None:
        raise TypeError("names: expected a list of module names, got None")
    return resolve_layers(model, names, (nn.Module,), "modules")
