"""Parameters and MACs per layer, before and after a compression step.

``params`` counts the nonzero values of a layer's parameters (pruned zeros do not count) and ``macs``
the multiply-accumulates of one forward pass on ``example_inputs`` that involve a nonzero weight (a
dense layer's MACs times its weight density). MACs are counted for Linear and Conv layers only: the
products inside attention (q·kᵀ, softmax·v) and elementwise work are not included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._common import as_input_tuple, eval_mode

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class LayerStats:
    kind: str
    params: int
    macs: int


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters by name, a masked weight as the next forward will see it."""
    out = {n: p for n, p in module.named_parameters(recurse=False)}
    mask = getattr(module, "weight_mask", None)
    if isinstance(mask, torch.Tensor):
        out["weight"] = out["weight"] * mask
    return out


def measure(model: nn.Module, example_inputs: Any) -> dict[str, LayerStats]:
    """Nonzero parameters and nonzero-weight MACs of every module that holds parameters."""
    inputs = as_input_tuple(example_inputs)
    stats: dict[str, LayerStats] = {}
    hooks = []
    for name, module in model.named_modules():
        tensors = _tensors(module)
        if not tensors:
            continue
        with torch.no_grad():
            nonzero = sum(int(torch.count_nonzero(t)) for t in tensors.values())
        stats[name] = LayerStats(type(module).__name__, nonzero, 0)
        if isinstance(module, (nn.Linear, *_CONV)):
            hooks.append(module.register_forward_hook(_mac_counter(stats[name])))
    try:
        with eval_mode(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _mac_counter(entry: LayerStats):
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        w = _tensors(module)["weight"]
        density = float(torch.count_nonzero(w)) / w.numel()
        if isinstance(module, nn.Linear):
            dense = output.numel() * module.in_features
        else:
            dense = output.numel() * (module.in_channels // module.groups) * w[0, 0].numel()
        entry.macs += int(round(dense * density))

    return hook


@dataclass
class ReportRow:
    name: str
    kind: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    note: str = ""


@dataclass
class Report:
    """Per-layer parameters and MACs before/after; ``print(report)`` shows them as a table."""

    title: str
    rows: list[ReportRow] = field(default_factory=list)

    @classmethod
    def compare(cls, title: str, before: dict[str, LayerStats], after: dict[str, LayerStats],
                notes: dict[str, str] | None = None) -> Report:
        """Rows for the layers of ``before``; a layer replaced by submodules (``fc1`` by ``fc1.0``,
        ``fc1.1``) is summed over them, a removed one counts zero."""
        rows = []
        for name, b in before.items():
            parts = [s for n, s in after.items() if n == name or (name and n.startswith(name + "."))]
            if name == "":
                parts = [after[""]] if "" in after else []
            rows.append(ReportRow(name or "(model)", b.kind, b.params, sum(s.params for s in parts),
                                  b.macs, sum(s.macs for s in parts), (notes or {}).get(name, "")))
        return cls(title, rows)

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.rows)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.rows)

    @property
    def macs_before(self) -> int:
        return sum(r.macs_before for r in self.rows)

    @property
    def macs_after(self) -> int:
        return sum(r.macs_after for r in self.rows)

    @property
    def params_ratio(self) -> float:
        """Parameters after / before (1.0 = unchanged)."""
        return self.params_after / max(self.params_before, 1)

    @property
    def macs_ratio(self) -> float:
        """MACs after / before (1.0 = unchanged)."""
        return self.macs_after / max(self.macs_before, 1)

    def __str__(self) -> str:
        header = ("layer", "kind", "params before", "params after", "MACs before", "MACs after", "note")
        body = [(r.name, r.kind, f"{r.params_before:,}", f"{r.params_after:,}", f"{r.macs_before:,}",
                 f"{r.macs_after:,}", r.note) for r in self.rows]
        total = ("total", "", f"{self.params_before:,}", f"{self.params_after:,}", f"{self.macs_before:,}",
                 f"{self.macs_after:,}", f"params x{self.params_ratio:.3f}, MACs x{self.macs_ratio:.3f}")
        widths = [max(len(row[i]) for row in (header, *body, total)) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "  ".join(c.ljust(w) if i < 2 or i == 6 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(header))
        return "\n".join([self.title, line(header), rule, *map(line, body), rule, line(total)])
