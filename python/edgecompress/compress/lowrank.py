"""Low-rank factorization of Linear and Conv2d layers by truncated SVD.

A weight W (N, K) becomes u (N, r) · v (r, K), the layer ``nn.Sequential(Linear(K, r, bias=False),
Linear(r, N, bias))`` — ``y = x @ v.T @ u.T + b``, the canonical LowRankWeight (``lowrank_factors``
returns u and v as float32 arrays). A Conv2d is factorized either as its im2col matrix (O, I·kh·kw)
(``conv="matrix"``: a kh×kw conv to r channels, then a 1×1 conv) or spatially (``conv="separable"``:
a kh×1 conv to r channels, then a 1×kw conv; the SVD is of W rearranged as (I·kh, O·kw)).

Rank, exactly one rule: ``rank``; ``energy`` (smallest r whose singular values keep that fraction of
Σσ²); ``param_ratio`` (largest r with r·(N+K) ≤ ratio·N·K); ``budget`` (a parameter ratio over all
chosen layers, spent greedily where a calibration loss gains most per parameter — each layer's loss is
measured with only that layer factorized). Ranks are rounded to a multiple of ``multiple`` (up for
``rank`` and ``energy``, down for ``param_ratio``), and a layer stays dense when r·(N+K) ≥ margin·N·K:
two products would then cost at least as much as one.

Activation-aware (SVD-LLM style): with the Gram matrix G = XᵀX of the layer's calibration inputs and
its Cholesky factor L (G = L·Lᵀ), the SVD is of W·L and v = V_rᵀ·L⁻¹. This minimizes ‖(W - u·v)·Xᵀ‖,
the error on the outputs, instead of ‖W - u·v‖.

Each rank-one term σᵢ·uᵢ·vᵢᵀ is split evenly (‖uᵢ‖ = ‖vᵢ‖) so the two layers train well afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .prune._common import (as_input_tuple, calibration_batches, check_choice, check_fraction, check_module,
                            check_positive_int, eval_mode, mean_loss, resolve_layers, set_submodule)
from .prune.magnitude import input_columns
from .prune.report import Report, measure

__all__ = ["LowRankReport", "choose_rank", "factorize", "lowrank_factors", "svd_factors"]


def svd_factors(weight: torch.Tensor, rank: int, gram: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """u (N, r) and v (r, K) with u·v the best rank-r approximation of ``weight`` (N, K): in the
    Frobenius norm, or with ``gram`` (K, K) = XᵀX in ‖(W - u·v)·Xᵀ‖."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D Tensor (N, K), got {getattr(weight, 'shape', type(weight).__name__)}")
    check_positive_int(rank, "rank")
    if rank > min(weight.shape):
        raise ValueError(f"rank: expected at most min(N, K) = {min(weight.shape)}, got {rank}")
    u_full, s, vh, chol = _decompose(weight, gram)
    return _truncate(u_full, s, vh, chol, rank, weight.dtype)


def _decompose(weight: torch.Tensor, gram: torch.Tensor | None):
    w = weight.detach().double()
    chol = None
    if gram is not None:
        g = gram.double()
        g = g + (1e-6 * g.diagonal().mean().clamp_min(1e-12)) * torch.eye(g.shape[0], dtype=g.dtype)
        chol = torch.linalg.cholesky(g)
        w = w @ chol
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u, s, vh, chol


def _truncate(u, s, vh, chol, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    u, v = u[:, :rank] * s[:rank], vh[:rank]
    if chol is not None:
        v = torch.linalg.solve_triangular(chol, v, upper=False, left=False)
    # balance each rank-one term between u and v (same product): whitened factors otherwise differ in
    # scale by orders of magnitude, and a fine-tuning optimizer's steps would wreck the small one
    scale = (v.norm(dim=1) / u.norm(dim=0).clamp_min(1e-30)).sqrt().clamp_min(1e-30)
    return (u * scale).to(dtype), (v / scale[:, None]).to(dtype)


def choose_rank(singular_values: torch.Tensor, shape: tuple[int, int], *, rank: int | None = None,
                energy: float | None = None, param_ratio: float | None = None, multiple: int = 16) -> int:
    """The rank one rule gives for a (N, K) matrix with these singular values, rounded to ``multiple``."""
    n, k = shape
    full = min(n, k)
    if param_ratio is not None:
        r = math.floor(param_ratio * n * k / (n + k))
        return min(full, max(multiple, r // multiple * multiple))
    if energy is not None:
        kept = torch.cumsum(singular_values.double() ** 2, 0) / (singular_values.double() ** 2).sum()
        r = int((kept < energy - 1e-12).sum()) + 1
    else:
        r = rank
    return min(full, -(-r // multiple) * multiple)


def worth_factorizing(rank: int, shape: tuple[int, int], margin: float = 1.0) -> bool:
    """True when two products of rank ``rank`` cost less than ``margin`` times the dense one."""
    n, k = shape
    return rank * (n + k) < margin * n * k


@dataclass
class _Layer:
    name: str
    module: nn.Module
    matrix: torch.Tensor  # the (N, K) matrix that gets factorized
    conv: str
    gram: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)


def _matrix(module: nn.Module, conv: str) -> torch.Tensor:
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w
    if conv == "matrix":
        return w.reshape(w.shape[0], -1)
    o, i, kh, kw = w.shape  # separable: M[(i, y), (o, x)] = W[o, i, y, x]
    return w.permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def _weight_from_matrix(module: nn.Module, m: torch.Tensor, conv: str) -> torch.Tensor:
    w = module.weight
    if isinstance(module, nn.Linear) or conv == "matrix":
        return m.reshape(w.shape)
    o, i, kh, kw = w.shape
    return m.reshape(i, kh, o, kw).permute(2, 0, 1, 3)


def _factorized(module: nn.Module, u: torch.Tensor, v: torch.Tensor, conv: str) -> nn.Sequential:
    """The two-layer replacement of ``module`` whose weights are the factors."""
    r = u.shape[1]
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        first, second = nn.Linear(module.in_features, r, bias=False), nn.Linear(r, module.out_features, bias=bias)
        w1, w2 = v, u
    elif conv == "matrix":
        first = nn.Conv2d(module.in_channels, r, module.kernel_size, module.stride, module.padding, module.dilation,
                          bias=False, padding_mode=module.padding_mode)
        second = nn.Conv2d(r, module.out_channels, 1, bias=bias)
        w1, w2 = v.reshape(first.weight.shape), u.reshape(second.weight.shape)
    else:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
        first = nn.Conv2d(module.in_channels, r, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        second = nn.Conv2d(r, module.out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias)
        w1 = u.t().reshape(r, module.in_channels, kh, 1)
        w2 = v.reshape(r, module.out_channels, kw).permute(1, 0, 2).unsqueeze(2)
    with torch.no_grad():
        first.weight.copy_(w1)
        second.weight.copy_(w2)
        if bias:
            second.bias.copy_(module.bias)
    seq = nn.Sequential(first, second)
    return seq.train(module.training)


def lowrank_factors(module: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """u (N, r) and v (r, K) as float32 arrays from a layer made by ``factorize`` (Linear, or Conv2d as
    an im2col matrix), for the canonical LowRankWeight: y = x @ v.T @ u.T (+ bias, kept by the layer)."""
    pair = isinstance(module, nn.Sequential) and len(module) == 2
    linear = pair and all(isinstance(m, nn.Linear) for m in module)
    conv = pair and all(isinstance(m, nn.Conv2d) for m in module) and module[1].kernel_size == (1, 1)
    if not (linear or conv):
        raise ValueError("module: expected the nn.Sequential of two Linear layers (or a kxk and a 1x1 Conv2d) "
                         f"that factorize() makes, got {type(module).__name__}")
    first, second = module
    v = first.weight.detach().reshape(first.weight.shape[0], -1)
    u = second.weight.detach().reshape(second.weight.shape[0], -1)
    return u.numpy().astype(np.float32), v.numpy().astype(np.float32)


@dataclass
class LowRankReport(Report):
    """A Report plus the rank given to each layer (None: left dense)."""

    ranks: dict[str, int | None] = field(default_factory=dict)


def _grams(model: nn.Module, layers: list[_Layer], data: Any) -> None:
    """Fill each layer's Gram matrix XᵀX of the inputs it sees on the calibration data."""
    def hook(layer: _Layer):
        def record(module: nn.Module, args: tuple) -> None:
            cols = input_columns(module, args[0].detach()).double()
            g = cols.t() @ cols
            layer.gram = g if layer.gram is None else layer.gram + g

        return record

    handles = [layer.module.register_forward_pre_hook(hook(layer)) for layer in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for x in calibration_batches(data, "data"):
                model(x)
    finally:
        for h in handles:
            h.remove()
    for layer in layers:
        if layer.gram is None:
            raise ValueError(f"data: layer {layer.name!r} saw no input during the calibration pass")


def _layer_losses(model: nn.Module, layer: _Layer, spectrum: tuple, data: Any, loss_fn: Callable | None,
                  multiple: int, margin: float) -> dict[int | None, float]:
    """Calibration loss with only ``layer`` factorized, for each rank below break-even (None: dense),
    in increasing cost."""
    n, k = layer.shape
    ranks = [r for r in range(multiple, min(n, k) + 1, multiple) if worth_factorizing(r, (n, k), margin)]
    losses: dict[int | None, float] = {}
    original = layer.module.weight.detach().clone()
    try:
        for r in ranks:
            u, v = _truncate(*spectrum, r, original.dtype)
            with torch.no_grad():
                layer.module.weight.copy_(_weight_from_matrix(layer.module, u @ v, layer.conv))
            losses[r] = mean_loss(model, data, loss_fn)
    finally:
        with torch.no_grad():
            layer.module.weight.copy_(original)
    losses[None] = mean_loss(model, data, loss_fn)
    return losses


def _budget_ranks(model: nn.Module, layers: list[_Layer], spectra: dict, budget: float, data: Any,
                  loss_fn: Callable | None, multiple: int, margin: float) -> dict[str, int | None]:
    """Greedy allocation: start every layer at its smallest rank, then repeatedly raise the rank (or go
    dense) where the calibration loss drops most per added parameter, while the total stays in budget."""
    with eval_mode(model):
        table = {layer.name: _layer_losses(model, layer, spectra[layer.name], data, loss_fn, multiple, margin)
                 for layer in layers}
    options = {name: list(losses) for name, losses in table.items()}

    def cost(layer: _Layer, r: int | None) -> int:
        n, k = layer.shape
        return n * k if r is None else r * (n + k)

    choice = {layer.name: 0 for layer in layers}
    dense = sum(cost(layer, None) for layer in layers)
    spent = sum(cost(layer, options[layer.name][0]) for layer in layers)
    if spent > budget * dense:
        raise ValueError(f"budget: even the smallest ranks need {spent / dense:.3f} of the parameters, "
                         f"more than the budget {budget:g}")
    while True:
        best, best_gain, best_extra = None, 0.0, 0
        for layer in layers:
            opts, i = options[layer.name], choice[layer.name]
            if i + 1 == len(opts):
                continue
            extra = cost(layer, opts[i + 1]) - cost(layer, opts[i])
            gain = (table[layer.name][opts[i]] - table[layer.name][opts[i + 1]]) / extra
            if spent + extra <= budget * dense and gain > best_gain:
                best, best_gain, best_extra = layer, gain, extra
        if best is None:
            return {layer.name: options[layer.name][choice[layer.name]] for layer in layers}
        choice[best.name] += 1
        spent += best_extra


def factorize(model: nn.Module, example_inputs: Any, *, layers: list[str] | None = None, rank: int | None = None,
              energy: float | None = None, param_ratio: float | None = None, budget: float | None = None,
              data: Any = None, loss_fn: Callable | None = None, activation_aware: bool = False,
              multiple: int = 16, margin: float = 1.0, conv: str = "matrix") -> LowRankReport:
    """Replace ``layers`` (default: every Linear and ungrouped Conv2d) in place by their low-rank
    factorization, under exactly one of the rules ``rank``, ``energy``, ``param_ratio``, ``budget``.

    ``data``: calibration batches, inputs for ``activation_aware`` and ``(inputs, targets)`` for
    ``budget`` (with ``loss_fn``, default cross-entropy). Returns a report with each layer's rank.
    """
    check_module(model)
    as_input_tuple(example_inputs)
    rules = {k: v for k, v in dict(rank=rank, energy=energy, param_ratio=param_ratio, budget=budget).items()
             if v is not None}
    if len(rules) != 1:
        raise ValueError(f"rank, energy, param_ratio, budget: expected exactly one rule, got {sorted(rules) or 'none'}")
    if rank is not None:
        check_positive_int(rank, "rank")
    if energy is not None:
        check_fraction(energy, "energy", low_open=True, high_open=False)
    if param_ratio is not None:
        check_fraction(param_ratio, "param_ratio", low_open=True)
    if budget is not None:
        check_fraction(budget, "budget", low_open=True)
        if data is None:
            raise ValueError("data: budget search needs (inputs, targets) batches, got None")
    multiple = check_positive_int(multiple, "multiple")
    margin = check_fraction(margin, "margin", low_open=True, high=math.inf)
    check_choice(conv, "conv", ("matrix", "separable"))
    if not isinstance(activation_aware, bool):
        raise TypeError(f"activation_aware: expected a bool, got {activation_aware!r}")
    if activation_aware and data is None:
        raise ValueError("data: activation_aware=True needs calibration inputs, got None")
    if activation_aware and conv == "separable":
        raise ValueError("conv: activation_aware supports conv='matrix' only, got 'separable'")

    names = resolve_layers(model, layers, (nn.Linear, nn.Conv2d), "Linear or Conv2d layers")
    chosen = []
    for name in names:
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                if layers is None:
                    continue
                raise ValueError(f"layers: {name!r} is a grouped Conv2d (groups={m.groups}); only groups=1 is factorized")
            if conv == "separable" and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
                raise ValueError(f"layers: {name!r} needs numeric zero padding for conv='separable'")
        chosen.append(_Layer(name, m, _matrix(m, conv), conv))
    if activation_aware:
        _grams(model, chosen, data)
    spectra = {layer.name: _decompose(layer.matrix, layer.gram) for layer in chosen}

    if budget is not None:
        ranks = _budget_ranks(model, chosen, spectra, budget, data, loss_fn, multiple, margin)
    else:
        ranks = {}
        for layer in chosen:
            r = choose_rank(spectra[layer.name][1], layer.shape, multiple=multiple, **rules)
            ranks[layer.name] = r if worth_factorizing(r, layer.shape, margin) else None

    before = measure(model, example_inputs)
    notes = {}
    for layer in chosen:
        r = ranks[layer.name]
        if r is None:
            notes[layer.name] = "dense (rank above break-even)"
            continue
        u, v = _truncate(*spectra[layer.name], r, layer.matrix.dtype)
        set_submodule(model, layer.name, _factorized(layer.module, u, v, conv))
        notes[layer.name] = f"rank {r}"
    after = measure(model, example_inputs)
    report = LowRankReport.compare(f"factorize: {', '.join(f'{k}={v}' for k, v in rules.items())}, multiple {multiple}, "
                                   f"margin {margin:g}{', activation-aware' if activation_aware else ''}",
                                   before, after, notes)
    report.ranks = ranks
    return report
