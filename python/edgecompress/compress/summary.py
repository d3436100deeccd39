"""The report ``edgecompress.compress`` returns: one row per Linear / Conv2d layer, with totals.

Pure data and formatting (no torch), so that ``edgecompress report`` can rebuild it from a file's
manifest with ``CompressReport.from_dict``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

__all__ = ["CompressReport", "LayerReport"]


@dataclass
class LayerReport:
    """One layer. ``format``: what the layer is now ("dense" when left as it was); ``module``: its
    type. ``bytes_before`` / ``bytes_after``: weight bytes (float32, then the canonical arrays; the
    bias is float32 in both). ``error``: ||y_c - y_f|| / ||y_f|| on the layer's captured input.
    ``latency_before_s`` / ``latency_after_s``: seconds per call on that input (``rows`` rows), the
    fastest of interleaved warm calls.
    ``note``: why the layer is dense or fell back. Unmeasured values are None."""

    name: str
    kind: str
    recipe: Optional[str]
    format: str
    module: str
    bytes_before: int
    bytes_after: int
    error: Optional[float] = None
    latency_before_s: Optional[float] = None
    latency_after_s: Optional[float] = None
    rows: Optional[int] = None
    note: str = ""

    @property
    def swapped(self) -> bool:
        return self.format != "dense"

    @property
    def speedup(self) -> Optional[float]:
        if self.latency_before_s is None or not self.latency_after_s:
            return None
        return self.latency_before_s / self.latency_after_s


@dataclass
class CompressReport:
    """Per-layer results of ``edgecompress.compress``. ``str(report)`` is a table; ``to_dict()``,
    ``to_json()`` and ``to_markdown()`` export it; ``totals()`` sums the swapped layers.

    Whole model: ``model_bytes_before`` / ``model_bytes_after``: the bytes of all parameters and
    buffers (tied weights counted once) and of the compressed arrays, what a saved file holds as
    tensors; ``model_error``: ||y_c - y_f|| / ||y_f|| of the whole model's outputs on the example
    inputs; ``top1_agreement``: the share of positions of its first output whose argmax over the
    last axis is unchanged; ``file_bytes``: the size of the file ``edgecompress.save`` last wrote
    with this report. Unmeasured values are None."""

    recipe: str
    guard: bool
    layers: list[LayerReport] = field(default_factory=list)
    model_bytes_before: Optional[int] = None
    model_bytes_after: Optional[int] = None
    model_error: Optional[float] = None
    top1_agreement: Optional[float] = None
    file_bytes: Optional[int] = None

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the report (layers: {', '.join(r.name for r in self.layers)})")

    @property
    def swapped(self) -> list[str]:
        """Names of the layers that were replaced by a compressed module."""
        return [r.name for r in self.layers if r.swapped]

    def totals(self) -> dict[str, Any]:
        """Layer counts, and the weight bytes and summed latencies of the swapped layers."""
        done = [r for r in self.layers if r.swapped]
        timed = [r for r in done if r.latency_before_s is not None and r.latency_after_s is not None]
        before, after = sum(r.bytes_before for r in done), sum(r.bytes_after for r in done)
        return {"layers": len(self.layers), "swapped": len(done), "bytes_before": before, "bytes_after": after,
                "size_ratio": after / before if before else None,
                "latency_before_s": sum(r.latency_before_s for r in timed) if timed else None,
                "latency_after_s": sum(r.latency_after_s for r in timed) if timed else None}

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "guard": self.guard, "layers": [asdict(r) for r in self.layers],
                "totals": self.totals(), "model": self._model()}

    def _model(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in _MODEL_KEYS}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Any) -> CompressReport:
        """The report of a ``to_dict()`` (e.g. from a saved file's manifest)."""
        if not isinstance(d, dict) or not isinstance(d.get("layers"), list):
            raise ValueError(f"report: expected the dict of CompressReport.to_dict(), got {type(d).__name__}")
        names = {f.name for f in fields(LayerReport)}
        try:
            layers = [LayerReport(**{k: v for k, v in r.items() if k in names}) for r in d["layers"]]
        except (TypeError, AttributeError) as e:
            raise ValueError(f"report: a layer entry is not a LayerReport ({e})") from e
        model = d.get("model") or {}
        if not isinstance(model, dict):
            raise ValueError(f"report: expected 'model' to be a dict, got {type(model).__name__}")
        return cls(str(d.get("recipe")), bool(d.get("guard")), layers,
                   **{k: model[k] for k in _MODEL_KEYS if isinstance(model.get(k), (int, float))})

    def _rows(self) -> list[list[str]]:
        rows = [["layer", "kind", "format", "bytes before", "bytes after", "error", "fp32 ms", "ms", "speedup", "note"]]
        for r in self.layers:
            rows.append([r.name, r.kind, r.format, str(r.bytes_before), str(r.bytes_after), _num(r.error, ".2e"),
                         _ms(r.latency_before_s), _ms(r.latency_after_s), _num(r.speedup, ".2f", "x"), r.note])
        t = self.totals()
        ratio = "" if t["size_ratio"] is None else f" ({t['size_ratio']:.1%})"
        rows.append([f"total ({t['swapped']} of {t['layers']} swapped)", "", "", str(t["bytes_before"]),
                     f"{t['bytes_after']}{ratio}", "", _ms(t["latency_before_s"]), _ms(t["latency_after_s"]), "", ""])
        return rows

    def summary_lines(self) -> list[str]:
        """The whole-model figures, one line each (those measured)."""
        out = []
        before, after = self.model_bytes_before, self.model_bytes_after
        if before is not None and after is not None:
            out.append(f"whole model: {after} bytes of {before} ({after / before:.1%}; all parameters and buffers, "
                       "tied weights once)" if before else f"whole model: {after} bytes")
        if self.file_bytes is not None:
            out.append(f"file: {self.file_bytes} bytes")
        if self.model_error is not None:
            top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.1%}"
            out.append(f"whole-model output error on the example inputs: {self.model_error:.3g}{top1}")
        return out

    def __str__(self) -> str:
        rows = self._rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        head = f"edgecompress.compress: recipe {self.recipe}, speed guard {'on' if self.guard else 'off'}"
        return "\n".join([head, lines[0], "  ".join("-" * w for w in widths), *lines[1:], *self.summary_lines()])

    def to_markdown(self) -> str:
        rows = self._rows()
        lines = [f"recipe `{self.recipe}`, speed guard {'on' if self.guard else 'off'}", "",
                 "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
        summary = self.summary_lines()
        lines += [""] + [f"- {line}" for line in summary] if summary else []
        return "\n".join(lines) + "\n"


_MODEL_KEYS = ("model_bytes_before", "model_bytes_after", "model_error", "top1_agreement", "file_bytes")


def _num(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"
