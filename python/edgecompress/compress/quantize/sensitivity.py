"""Which layers suffer from quantization, and keeping the worst of them in higher precision.

``sensitivity_report`` calibrates once and then quantizes one layer at a time (weight and input),
measuring the relative output error on the calibration batches and, given ``eval_fn`` (a score,
higher is better, e.g. accuracy), the drop of that score. ``quantize_with_max_drop`` quantizes the
whole model and, while the drop exceeds ``max_drop``, moves the most sensitive layer still quantized
to the fallback precision (8-bit for layers below 8 bits), then, if that is not enough, to float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .config import QuantConfig, QuantSpec
from .fake_quantize import QuantConv2d, QuantLinear
from .ptq import QuantizedModel, _batches, _check_model, calibrate, convert, freeze_observers, prepare, run_batches

__all__ = ["LayerSensitivity", "MaxDropResult", "SensitivityReport", "quantize_with_max_drop", "sensitivity_report"]

EvalFn = Callable[[nn.Module], float]


@dataclass
class LayerSensitivity:
    """``relative_error``: ||y_q - y|| / ||y|| of the model's outputs on the calibration batches with
    only this layer quantized; ``drop``: eval_fn(float model) - eval_fn(only this layer quantized),
    None without eval_fn."""

    name: str
    relative_error: float
    drop: float | None = None


@dataclass
class SensitivityReport:
    """``layers`` most sensitive first (by drop when measured, ties and otherwise by relative error);
    ``baseline``: eval_fn of the float model (None without eval_fn)."""

    layers: list[LayerSensitivity]
    baseline: float | None = None

    def names(self) -> list[str]:
        return [s.name for s in self.layers]

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'rel. error':>11} {'drop':>8}"]
        for s in self.layers:
            drop = "-" if s.drop is None else f"{s.drop:.3f}"
            lines.append(f"{s.name:<24} {s.relative_error:>11.4g} {drop:>8}")
        return "\n".join(lines)


def _check_eval_fn(eval_fn: Any, required: bool) -> None:
    if eval_fn is None and not required:
        return
    if not callable(eval_fn):
        raise TypeError(f"eval_fn: expected a callable model -> score (higher is better), got {type(eval_fn).__name__}")


def sensitivity_report(model: nn.Module, config: QuantConfig | None, batches: Iterable[Any],
                       eval_fn: EvalFn | None = None) -> SensitivityReport:
    """Per quantized layer of ``config``, the error when only that layer is quantized (see the module
    notes). ``batches``: calibration inputs (tensors or (x, y) pairs)."""
    _check_model(model)
    _check_eval_fn(eval_fn, required=False)
    xs = _batches(batches)
    prepared = freeze_observers(calibrate(prepare(model, config), xs))
    reference = run_batches(prepared, xs)  # nothing fake-quantized yet: the (BatchNorm-folded) float model
    baseline = None if eval_fn is None else float(eval_fn(prepared))
    rows = []
    for name, layer in prepared.named_modules():
        if not isinstance(layer, (QuantLinear, QuantConv2d)):
            continue
        layer.fake_quant = True
        out = run_batches(prepared, xs)
        err = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference).clamp(min=1e-30))
        drop = None if eval_fn is None else baseline - float(eval_fn(prepared))
        layer.fake_quant = False
        rows.append(LayerSensitivity(name, err, drop))
    rows.sort(key=lambda s: (-(s.drop or 0.0), -s.relative_error))
    return SensitivityReport(rows, baseline)


@dataclass
class MaxDropResult:
    """``quantized``: the converted model that met ``max_drop`` (or the last one tried, all layers
    moved, when ``met`` is False); ``kept``: layer -> the weight spec it was kept at, None for float;
    ``config``: the config that produced it; ``baseline`` / ``score`` / ``drop``: eval_fn of the float
    model, of the quantized one, and their difference."""

    quantized: QuantizedModel
    config: QuantConfig
    baseline: float
    score: float
    drop: float
    met: bool
    kept: dict[str, QuantSpec | None] = field(default_factory=dict)
    report: SensitivityReport | None = None


def quantize_with_max_drop(model: nn.Module, config: QuantConfig | None, batches: Iterable[Any], eval_fn: EvalFn,
                           max_drop: float, *, fallback: QuantSpec | str | None = "auto") -> MaxDropResult:
    """Quantize per ``config``, keeping the most sensitive layers in higher precision until
    eval_fn(float) - eval_fn(quantized) <= ``max_drop``.

    ``fallback``: "auto" (int8 per channel for layers quantized below 8 bits, else float), a QuantSpec,
    or None (float). Layers move in the order of ``sensitivity_report`` (with ``eval_fn``), first to
    the fallback, then, if all moved and the drop is still too large, to float.
    """
    _check_eval_fn(eval_fn, required=True)
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0 or math.isinf(max_drop):
        raise ValueError(f"max_drop: expected a finite number >= 0, got {max_drop!r}")
    if not (fallback is None or fallback == "auto" or isinstance(fallback, QuantSpec)):
        raise ValueError(f"fallback: expected 'auto', a QuantSpec or None, got {fallback!r}")
    config = QuantConfig() if config is None else config
    xs = _batches(batches)
    report = sensitivity_report(model, config, xs, eval_fn)
    baseline = float(report.baseline)
    moves: list[tuple[str, QuantSpec | None]] = []
    for name in report.names():
        spec = config.lookup(name)[0]
        step = (QuantSpec() if spec.bits < 8 else None) if fallback == "auto" else fallback
        if step is not None:
            moves.append((name, step))
    moves += [(name, None) for name in report.names()]
    kept: dict[str, QuantSpec | None] = {}
    current = config
    while True:
        quantized = convert(calibrate(prepare(model, current), xs))
        score = float(eval_fn(quantized.model))
        drop = baseline - score
        if drop <= max_drop or not moves:
            break
        name, spec = moves.pop(0)
        current = current.with_layer(name, spec)
        kept[name] = spec
    return MaxDropResult(quantized, current, baseline, score, drop, drop <= max_drop, kept, report)
