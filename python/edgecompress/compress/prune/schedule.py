"""Gradual magnitude pruning during fine-tuning with the cubic schedule of Zhu & Gupta (2017).

Sparsity rises from ``initial_sparsity`` at ``start_step`` to ``final_sparsity`` at ``end_step``::

    s(t) = s_f + (s_i - s_f) · (1 - (t - t_0) / (t_end - t_0))³

and the masks are recomputed every ``frequency`` steps in between. Scores are the magnitudes of the
*masked* weights, so a pruned weight scores 0 and stays pruned: the mask only ever loses entries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._common import as_input_tuple, check_choice, check_fraction, check_module, check_positive_int, resolve_layers
from .magnitude import PRUNABLE, SCOPES, compute_masks, remove_mask, set_mask, weight_scores
from .masks import parse_pattern
from .report import Report, measure


class GradualPruning:
    """Masks that follow the cubic schedule; call ``step()`` after every optimizer step (or ``attach``
    the pruner to the optimizer), then ``finalize()`` to make the masks permanent.

    N:M patterns are not scheduled (their sparsity is fixed): prune them once with ``prune_weights``
    and fine-tune.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, final_sparsity: float, *, end_step: int,
                 start_step: int = 0, frequency: int = 1, initial_sparsity: float = 0.0,
                 pattern: str = "unstructured", scope: str = "layer", layers: list[str] | None = None):
        check_module(model)
        self.example_inputs = as_input_tuple(example_inputs)
        self.final_sparsity = check_fraction(final_sparsity, "final_sparsity")
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity: expected <= final_sparsity ({self.final_sparsity:g}), got {initial_sparsity!r}")
        self.start_step = check_positive_int(start_step, "start_step", minimum=0)
        self.end_step = check_positive_int(end_step, "end_step", minimum=self.start_step + 1)
        self.frequency = check_positive_int(frequency, "frequency")
        self.pattern = parse_pattern(pattern)
        if self.pattern.is_nm:
            raise ValueError(f"pattern: N:M fixes the sparsity, it cannot follow a schedule; prune with "
                             f"prune_weights(pattern={pattern!r}) and fine-tune; got {pattern!r}")
        self.scope = check_choice(scope, "scope", SCOPES)
        self.model = model
        self.modules = {n: model.get_submodule(n) for n in resolve_layers(model, layers, PRUNABLE, "Linear or Conv layers")}
        self._before = measure(model, self.example_inputs)
        self.step_count = 0
        self._apply(self.sparsity_at(0))

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after ``step`` optimizer steps."""
        if step <= self.start_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1 - progress) ** 3

    def _apply(self, sparsity: float) -> None:
        self.current_sparsity = sparsity
        scores = {n: weight_scores(m, "magnitude") for n, m in self.modules.items()}
        masks = compute_masks(self.modules, scores, sparsity, self.pattern, self.scope)
        with torch.no_grad():
            for name, mask in masks.items():
                set_mask(self.modules[name], mask)

    def step(self) -> None:
        """Count one optimizer step; update the masks when the schedule says so."""
        self.step_count += 1
        t = self.step_count
        due = (t - self.start_step) % self.frequency == 0 or t == self.end_step
        if self.start_step < t <= self.end_step and due:
            self._apply(self.sparsity_at(t))

    def attach(self, optimizer: torch.optim.Optimizer):
        """Call ``step()`` after every ``optimizer.step()``; returns the hook handle (``.remove()``)."""
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step())

    def finalize(self) -> Report:
        """Prune to the final sparsity if the schedule has not reached it, make the masks permanent, and
        report against the model as it was when the pruner was created."""
        if self.current_sparsity != self.final_sparsity:
            self._apply(self.final_sparsity)
        for module in self.modules.values():
            remove_mask(module)
        after = measure(self.model, self.example_inputs)
        return Report.compare(f"gradual pruning: {self.pattern.name}, {self.initial_sparsity:g} -> "
                              f"{self.final_sparsity:g} over steps {self.start_step}..{self.end_step}",
                              self._before, after)
