"""Argument checks and data conventions shared by pruning, low-rank and distillation.

Conventions: ``example_inputs`` is a Tensor or a tuple of Tensors, called as ``model(*example_inputs)``.
``data`` is a re-iterable of ``(inputs, targets)`` batches (a DataLoader, a list of tuples).
``calibration`` is a Tensor of inputs or an iterable of batches (a batch may be a Tensor or a tuple
whose first element is the inputs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from numbers import Real
from typing import Any, Callable

import torch
from torch import nn


def check_fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0,
                   low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float inside the interval (given by its ends and whether each is open)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a float in {interval}, got {value!r}")
    v = float(value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok or math.isnan(v):
        raise ValueError(f"{name}: expected a float in {interval}, got {value!r}")
    return v


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_module(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
    return model


def as_input_tuple(example_inputs: Any, name: str = "example_inputs") -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, tuple) and example_inputs and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return example_inputs
    raise TypeError(f"{name}: expected a Tensor or a tuple of Tensors, got {type(example_inputs).__name__}")


def calibration_batches(calibration: Any, name: str = "calibration") -> Iterator[torch.Tensor]:
    """The input Tensors of ``calibration`` (a Tensor, or an iterable of Tensors / tuples)."""
    if calibration is None:
        raise ValueError(f"{name}: expected calibration inputs (a Tensor or an iterable of batches), got None")
    if isinstance(calibration, torch.Tensor):
        yield calibration
        return
    if not isinstance(calibration, Iterable):
        raise TypeError(f"{name}: expected a Tensor or an iterable of batches, got {type(calibration).__name__}")
    for batch in calibration:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected batches of Tensors, got {type(x).__name__}")
        yield x


def labelled_batches(data: Any, name: str = "data") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(inputs, targets)`` batches of ``data``."""
    if data is None:
        raise ValueError(f"{name}: expected (inputs, targets) batches, got None")
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"{name}: expected an iterable of (inputs, targets) batches, got {type(data).__name__}")
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], torch.Tensor)):
            raise TypeError(f"{name}: expected (inputs, targets) pairs, got {type(batch).__name__}")
        yield batch[0], batch[1]


def mean_loss(model: nn.Module, data: Any, loss_fn: Callable | None) -> float:
    """Loss averaged over the batches of ``data`` (no gradients)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in labelled_batches(data):
            total += float(loss_fn(model(x), y))
            n += 1
    if n == 0:
        raise ValueError("data: expected at least one batch, got none")
    return total / n


def resolve_layers(model: nn.Module, layers: Any, kinds: tuple[type, ...], what: str) -> list[str]:
    """Names of the modules to work on: ``layers`` (checked) or, when None, every module of ``kinds``."""
    modules = dict(model.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if isinstance(m, kinds)]
        if not names:
            raise ValueError(f"model: has no {what} to work on")
        return names
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise TypeError(f"layers: expected a list of module names, got {layers!r}")
    names = list(layers)
    for n in names:
        if n not in modules:
            raise ValueError(f"layers: {n!r} is not a module of the model")
        if not isinstance(modules[n], kinds):
            raise ValueError(f"layers: {n!r} is a {type(modules[n]).__name__}, expected {what}")
    if not names:
        raise ValueError("layers: expected at least one module name, got an empty list")
    return names


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class eval_mode:
    """Context manager: ``model`` in eval mode inside, its previous mode restored after."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)
