"""Weight pruning: zero individual weights (or N:M groups, or blocks) of Linear and Conv layers.

A mask is a ``weight_mask`` buffer on the layer; the pruned weights are zeroed when it is set and again
before every forward (the optimizer may move them in between), so fine-tuning keeps them at zero.
``make_permanent`` removes the masks. (torch's parametrizations and torch.nn.utils.prune are not used:
a deep copy of a model masked by either cannot be finalized independently of the original.)

Scores: ``"magnitude"`` is |w|; ``"wanda"`` is |w| · ‖x_k‖₂ (Sun et al. 2023), where ‖x_k‖₂ is the norm
of input feature k over calibration inputs (for a conv, of column k of its im2col matrix), so weights that
see large activations are kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (as_input_tuple, calibration_batches, check_choice, check_fraction, check_module,
                      eval_mode, resolve_layers)
from .masks import Pattern, nm_mask, parse_pattern, thresholds
from .report import Report, measure

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCORES = ("magnitude", "wanda")
SCOPES = ("layer", "global")


class _ReapplyMask:
    """Forward pre-hook: zero the masked weights the optimizer moved since the last forward. Stateless
    (it reads the module's ``weight_mask`` buffer), so deep copies of a masked model stay independent."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        w, mask = module.weight, module.weight_mask
        with torch.no_grad():
            if torch.count_nonzero(w * (1 - mask)):  # skip when clean: an in-place edit would bump the
                w.mul_(mask)                         # version of a weight a second call already saved


def mask_of(module: nn.Module) -> torch.Tensor | None:
    """The weight mask of ``module`` (a bool tensor shaped like the weight), or None if unmasked."""
    mask = getattr(module, "weight_mask", None)
    return mask.bool() if isinstance(mask, torch.Tensor) else None


def set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Zero ``module.weight`` outside ``mask`` and keep it so (replacing any previous mask)."""
    mask = mask.to(module.weight.dtype)
    with torch.no_grad():
        module.weight.mul_(mask)
    if mask_of(module) is None:
        module.register_buffer("weight_mask", mask)
        module.register_forward_pre_hook(_ReapplyMask())
    else:
        module.weight_mask.copy_(mask)


def make_permanent(model: nn.Module) -> None:
    """Remove every weight mask of ``model``, leaving the pruned weights at zero."""
    for module in model.modules():
        remove_mask(module)


def remove_mask(module: nn.Module) -> None:
    """Remove the mask of ``module`` (if any), leaving its pruned weights at zero."""
    if mask_of(module) is None:
        return
    with torch.no_grad():
        module.weight.mul_(module.weight_mask)
    del module.weight_mask
    # torch has no public way to remove a hook without its handle, and handles do not survive deepcopy
    hooks = module._forward_pre_hooks
    for key in [k for k, h in hooks.items() if isinstance(h, _ReapplyMask)]:
        del hooks[key]


def input_norms(model: nn.Module, layers: list[str], calibration: Any) -> dict[str, torch.Tensor]:
    """‖x_k‖₂ over the calibration inputs for each input feature k of each layer (shaped (K,), or for a
    grouped conv (groups, K per group))."""
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            cols = input_columns(module, args[0].detach())
            sums[name] = sums.get(name, 0) + cols.pow(2).sum(dim=0)

        return record

    for name in layers:
        if not isinstance(modules[name], (nn.Linear, nn.Conv2d)):
            raise ValueError(f"layers: wanda scores need Linear or Conv2d layers, {name!r} is {type(modules[name]).__name__}")
    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layers]
    try:
        with eval_mode(model), torch.no_grad():
            for x in calibration_batches(calibration):
                model(x)
    finally:
        for h in handles:
            h.remove()
    if len(sums) != len(layers):
        missing = sorted(set(layers) - set(sums))
        raise ValueError(f"calibration: the layers {missing} saw no input during the calibration pass")
    out = {}
    for name in layers:
        m = modules[name]
        norms = sums[name].sqrt()
        out[name] = norms.reshape(m.groups, -1) if isinstance(m, nn.Conv2d) else norms
    return out


def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows of the matrix the layer multiplies by weight.reshape(N, -1).T: (rows, K)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module.padding, str):
        pads = []
        for k, d in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = 0 if module.padding == "valid" else d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        pads = [p for p in reversed(module.padding) for _ in (0, 1)]
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, pads, mode=mode)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def weight_scores(module: nn.Module, score: str, norms: torch.Tensor | None = None) -> torch.Tensor:
    """Score per weight (shaped like the weight): |w|, or |w| · ‖x_k‖₂ for ``"wanda"``."""
    w = module.weight.detach().abs()
    if score == "magnitude":
        return w
    rows = w.reshape(w.shape[0], -1)
    if norms.dim() == 2:  # grouped conv: output row o reads group o // (N / groups)
        norms = norms.repeat_interleave(w.shape[0] // norms.shape[0], dim=0)
    return (rows * norms).reshape(w.shape)


def compute_masks(modules: dict[str, nn.Module], scores: dict[str, torch.Tensor], sparsity: float,
                  pattern: Pattern, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks per layer for the pattern, per layer or over all layers (``scope``)."""
    if pattern.is_nm:
        masks = {}
        for name, s in scores.items():
            k = s[0].numel()
            if k % pattern.m:
                raise ValueError(f"layers: {name!r} has K={k} weights per row, not a multiple of "
                                 f"{pattern.m} as pattern {pattern.name!r} needs")
            masks[name] = nm_mask(s, pattern.n, pattern.m)
        return masks
    names = list(scores)
    if scope == "global":
        return dict(zip(names, thresholds([scores[n] for n in names], sparsity, pattern)))
    return {n: thresholds([scores[n]], sparsity, pattern)[0] for n in names}


def check_sparsity(sparsity: Any, pattern: Pattern) -> float:
    if pattern.is_nm:
        if sparsity is not None and abs(float(check_fraction(sparsity, "sparsity")) - pattern.fixed_sparsity) > 1e-9:
            raise ValueError(f"sparsity: pattern {pattern.name!r} fixes sparsity at {pattern.fixed_sparsity:g}, "
                             f"got {sparsity!r} (leave it None)")
        return pattern.fixed_sparsity
    if sparsity is None:
        raise ValueError(f"sparsity: pattern {pattern.name!r} needs a sparsity in [0, 1), got None")
    return check_fraction(sparsity, "sparsity")


def prune_weights(model: nn.Module, example_inputs: Any, sparsity: float | None = None, *,
                  pattern: str = "unstructured", scope: str = "layer", score: str = "magnitude",
                  calibration: Any = None, layers: list[str] | None = None) -> Report:
    """Mask the lowest-scoring weights of ``layers`` (default: every Linear and Conv) in place.

    ``sparsity`` in [0, 1) is the fraction of weights to zero (implied by N:M patterns). ``scope`` is
    ``"layer"`` (each layer to the sparsity) or ``"global"`` (one threshold over all layers; not for
    N:M). ``score="wanda"`` needs ``calibration`` inputs. The masks stay (see ``make_permanent``).
    Returns the report of nonzero parameters and MACs per layer, computed on ``example_inputs``.
    """
    check_module(model)
    as_input_tuple(example_inputs)
    pat = parse_pattern(pattern)
    sparsity = check_sparsity(sparsity, pat)
    check_choice(scope, "scope", SCOPES)
    check_choice(score, "score", SCORES)
    if pat.is_nm and scope == "global":
        raise ValueError(f"scope: pattern {pat.name!r} works inside groups of {pat.m} weights; use scope='layer'")
    names = resolve_layers(model, layers, PRUNABLE, "Linear or Conv layers")
    modules = {n: model.get_submodule(n) for n in names}
    norms = input_norms(model, names, calibration) if score == "wanda" else {}
    if score != "wanda" and calibration is not None:
        raise ValueError("calibration: only score='wanda' uses calibration inputs")

    before = measure(model, example_inputs)
    scores = {n: weight_scores(m, score, norms.get(n)) for n, m in modules.items()}
    masks = compute_masks(modules, scores, sparsity, pat, scope)
    with torch.no_grad():
        for name, mask in masks.items():
            set_mask(modules[name], mask)
    after = measure(model, example_inputs)
    notes = {n: f"{pat.name}, {1 - float(m.float().mean()):.1%} zero" for n, m in masks.items()}
    return Report.compare(f"prune_weights: {pat.name}, sparsity {sparsity:g}, {scope}, {score}",
                          before, after, notes)
