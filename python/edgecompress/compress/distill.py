"""Knowledge distillation: train a student to match a teacher (the recovery step after pruning, low-rank
factorization or quantization-aware training).

- ``hinton_loss``: α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 - α) · CE(s, labels) (Hinton et al.
  2015; the T² keeps the soft-target gradients at the scale of the hard-label ones).
- ``FeatureLoss``: mean squared error between outputs of named student and teacher layers, through a
  learned projection (a Linear, or a 1×1 conv for conv maps) where the student's width differs.
- ``distill``: the training loop, with a progress bar (tqdm when installed, else a line on stderr).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .prune._common import as_input_tuple, check_fraction, check_module, check_positive_int, eval_mode

__all__ = ["FeatureLoss", "distill", "hinton_loss"]


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None,
                *, temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """The distillation loss over the last dimension (classes); ``targets`` needed when ``alpha`` < 1."""
    temperature = check_fraction(temperature, "temperature", low_open=True, high=float("inf"))
    alpha = check_fraction(alpha, "alpha", high_open=False)
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("student_logits, teacher_logits: expected Tensors")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes) / temperature
    t = teacher_logits.detach().reshape(-1, classes) / temperature
    soft = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
    loss = alpha * temperature**2 * soft
    if alpha < 1:
        if targets is None:
            raise ValueError(f"targets: alpha={alpha:g} mixes in the hard-label loss, which needs targets, got None")
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits.reshape(-1, classes), targets.reshape(-1))
    return loss


def _capture(module: nn.Module, store: dict, key: str):
    def hook(m: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"features: layer {key!r} returns {type(output).__name__}, expected a Tensor")
        store[key] = output

    return module.register_forward_hook(hook)


class FeatureLoss(nn.Module):
    """Σ over ``pairs`` {student layer: teacher layer} of MSE(projection(student output), teacher output).

    One forward of both models on ``example_inputs`` finds the widths (dim 1 of 4-D conv maps, else the
    last dim); the projections are this module's parameters, to be trained with the student. Call ``forward``
    after a forward of both models; ``remove()`` detaches the hooks.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str], example_inputs: Any):
        super().__init__()
        if not isinstance(pairs, dict) or not pairs:
            raise TypeError(f"features: expected a non-empty dict of student layer -> teacher layer, got {pairs!r}")
        self.pairs = dict(pairs)
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in self.pairs.items():
            if s_name not in s_modules:
                raise ValueError(f"features: {s_name!r} is not a module of the student")
            if t_name not in t_modules:
                raise ValueError(f"features: {t_name!r} is not a module of the teacher")
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}
        self._handles = [_capture(s_modules[s], self.student_out, s) for s in self.pairs]
        self._handles += [_capture(t_modules[t], self.teacher_out, t) for t in set(self.pairs.values())]
        inputs = as_input_tuple(example_inputs)
        with torch.no_grad(), eval_mode(student), eval_mode(teacher):
            student(*inputs)
            teacher(*inputs)
        self.projections = nn.ModuleDict()
        for s_name, t_name in self.pairs.items():
            s, t = self.student_out[s_name], self.teacher_out[t_name]
            dim = 1 if s.dim() == 4 else s.dim() - 1  # conv maps (B, C, H, W), else features last
            rest_s, rest_t = list(s.shape), list(t.shape)
            if s.dim() == t.dim():
                del rest_s[dim], rest_t[dim]
            if rest_s != rest_t:
                raise ValueError(f"features: {s_name!r} {tuple(s.shape)} and {t_name!r} {tuple(t.shape)} differ "
                                 "in more than the width")
            if s.shape[dim] != t.shape[dim]:
                self.projections[self._key(s_name)] = (
                    nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False) if dim == 1 and s.dim() == 4
                    else nn.Linear(s.shape[dim], t.shape[dim], bias=False))
        self.student_out.clear()
        self.teacher_out.clear()

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def forward(self) -> torch.Tensor:
        total = torch.zeros(())
        for s_name, t_name in self.pairs.items():
            s, t = self.student_out[s_name], self.teacher_out[t_name].detach()
            proj = self.projections[self._key(s_name)] if self._key(s_name) in self.projections else None
            total = total + F.mse_loss(proj(s) if proj is not None else s, t)
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _Progress:
    """tqdm when installed, else a line on stderr rewritten every ``every`` steps."""

    def __init__(self, total: int | None, enabled: bool):
        self.bar = None
        self.enabled = enabled
        self.total = total
        self.count = 0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc="distill", leave=False)

    def update(self, loss: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled and (self.count % 10 == 0 or self.count == self.total):
            of = f"/{self.total}" if self.total else ""
            print(f"\rdistill: step {self.count}{of} loss {loss:.4f}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.count:
            print(file=sys.stderr)


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"loader: expected batches of inputs or (inputs, targets), got {type(batch).__name__}")


def distill(student: nn.Module, teacher: nn.Module, loader: Any, *, epochs: int = 1,
            optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, temperature: float = 4.0,
            alpha: float = 0.9, features: dict[str, str] | None = None, feature_weight: float = 1.0,
            progress: bool = True) -> nn.Module:
    """Train ``student`` on ``loader`` (re-iterable batches of inputs or (inputs, targets)) to match
    ``teacher`` with ``hinton_loss`` (+ ``feature_weight`` · ``FeatureLoss`` on ``features``).

    ``optimizer`` defaults to Adam(lr) over the student's parameters; a given one also receives the
    feature projections. Returns the student in eval mode.
    """
    check_module(student, "student")
    check_module(teacher, "teacher")
    epochs = check_positive_int(epochs, "epochs")
    lr = check_fraction(lr, "lr", low_open=True, high=float("inf"))
    check_fraction(temperature, "temperature", low_open=True, high=float("inf"))
    check_fraction(alpha, "alpha", high_open=False)
    feature_weight = check_fraction(feature_weight, "feature_weight", high=float("inf"))
    if isinstance(loader, torch.Tensor) or not hasattr(loader, "__iter__"):
        raise TypeError(f"loader: expected a re-iterable of batches (a DataLoader, a list), got {type(loader).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    feature_loss = None
    if features is not None:
        first = next(iter(loader), None)
        if first is None:
            raise ValueError("loader: expected at least one batch, got none")
        feature_loss = FeatureLoss(student, teacher, features, _split(first)[0])
    extra = list(feature_loss.parameters()) if feature_loss is not None else []
    if optimizer is None:
        optimizer = torch.optim.Adam([*student.parameters(), *extra], lr=lr)
    elif extra:
        optimizer.add_param_group({"params": extra})
    try:
        total = epochs * len(loader)
    except TypeError:
        total = None
    bar = _Progress(total, progress)
    teacher_was_training = teacher.training
    teacher.eval()
    try:
        for _ in range(epochs):
            student.train()
            for batch in loader:
                x, y = _split(batch)
                with torch.no_grad():
                    t = teacher(x)
                s = student(x)
                loss = hinton_loss(s, t, y, temperature=temperature, alpha=alpha)
                if feature_loss is not None:
                    loss = loss + feature_weight * feature_loss()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(loss.detach().item())
    finally:
        bar.close()
        teacher.train(teacher_was_training)
        if feature_loss is not None:
            feature_loss.remove()
    return student.eval()
