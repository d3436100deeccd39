"""FakeQuantize: simulated quantization of a weight or an activation, and the layers that use it.

Forward values are exactly what the deployed formats hold: the same codes, the same float32 (or
float16-rounded) scales and the same dequantization ``(code - zero_point) * scale``, so ``convert``
reproduces the simulated weights bit for bit. Gradients follow the straight-through estimator:
rounding passes gradients unchanged and values clipped by the range get none. With
``learnable_scale`` the scale is a parameter trained as in LSQ (Esser et al., 2020), its gradient
scaled by 1 / sqrt(values per scale * qmax) (an input's values: one sample's features); the
observer only initializes it.

Weights are viewed as (N, K) matrices (a conv weight as (out, in/groups * kh * kw), the layout of
Int8Weight and Int4Weight) and carry one scale per tensor, per output channel or per group of K
(the last group zero-padded). A weight's observer sees only the current weight (it is reset before
each observation), except with granularity "model": one FakeQuantize is then shared by every such
layer and its observer accumulates all their weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...formats import quantize4
from ..observers import QParams, make_observer
from .config import DEFAULT_INT4_GROUP, QuantSpec

__all__ = ["FakeQuantize", "QuantConv2d", "QuantLinear"]

_F32_TINY = torch.finfo(torch.float32).tiny


class _STE(torch.autograd.Function):
    """y = fn(x) forward, dy/dx = 1 backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``factor`` (LSQ's scale-gradient scaling)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return _STE.apply(x, torch.round)


def weight_rows(spec: QuantSpec, shape: tuple[int, ...]) -> int:
    """How many scales a weight of ``shape`` has under ``spec``."""
    n, k = shape[0], int(np.prod(shape[1:]))
    if spec.granularity == "channel":
        return n
    if spec.granularity == "group":
        return n * -(-k // spec.group_size)
    return 1


def _nearest(v: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index of the nearest table entry per value (ties to the lower entry, as quantize4)."""
    t, order = torch.sort(table, dim=-1)
    mid = (t[..., 1:] + t[..., :-1]) / 2
    if table.ndim == 1:
        return order[torch.searchsorted(mid, v)]
    return torch.gather(order, 1, torch.searchsorted(mid.contiguous(), v.contiguous()))


class _CodebookObserver:
    """The 'observer' of a codebook spec: keeps the latest (N, K) weight; ``qparams()`` fits the group
    scales (max |w|, or MSE-searched) and the table (NF4, or k-means per channel) with the 4-bit
    quantizers of ``edgecompress.formats.quantize4``."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.weight: np.ndarray | None = None

    @property
    def observed(self) -> bool:
        return self.weight is not None

    def reset(self) -> None:
        self.weight = None

    def observe(self, w: torch.Tensor) -> None:
        self.weight = w.detach().float().numpy().copy()

    def qparams(self) -> QParams:
        method = "mse" if self.spec.observer == "mse" else "rtn"
        _, scale, table = quantize4.quantize_codebook(self.weight, self.spec.group_size, self.spec.codebook, method)
        scale = torch.from_numpy(scale.astype(np.float32)).flatten()
        return QParams(scale, torch.zeros(scale.shape, dtype=torch.int32), torch.from_numpy(np.asarray(table, np.float32)))


class FakeQuantize(nn.Module):
    """Observes and fake-quantizes one weight (``role="weight"``) or one layer input
    (``role="activation"``) per ``spec``.

    ``observing``: each forward (and ``observe``) feeds the observer; the next quantization then
    recomputes the scales from it. ``freeze()`` fixes the scales. ``rows``: the number of scales
    (``weight_rows``; 1 for activations).
    """

    def __init__(self, spec: QuantSpec, role: str, name: str = "", *, learnable_scale: bool = False,
                 rows: int = 1) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec: expected a QuantSpec, got {type(spec).__name__}")
        if role not in ("weight", "activation"):
            raise ValueError(f"role: expected 'weight' or 'activation', got {role!r}")
        if not isinstance(learnable_scale, bool):
            raise TypeError(f"learnable_scale: expected a bool, got {type(learnable_scale).__name__}")
        if learnable_scale and spec.codebook is not None:
            raise ValueError("learnable_scale: not available for codebook specs (their scales come from the codebook fit)")
        self.spec, self.role, self.name = spec, role, name
        self.scheme = spec.scheme(role)
        self.learnable_scale = learnable_scale
        self.accumulate = role == "activation" or spec.granularity == "model"
        if spec.codebook is not None:
            self.observer: Any = _CodebookObserver(spec)
        else:
            s = self.scheme
            self.observer = make_observer(spec.observer, s.bits, s.symmetric, 0 if role == "weight" else None,
                                          narrow_range=s.narrow_range, float16_scale=s.float16_scale,
                                          reciprocal=s.reciprocal, **dict(spec.observer_args))
        scale = torch.ones(rows)
        if learnable_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(rows, dtype=torch.int32))
        self.register_buffer("table", None)
        self.observing = True
        self.initialized = False
        self._stale = True

    # --- observing ------------------------------------------------------------------------------

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """Feed x to the observer (when observing); returns x unchanged."""
        if self.observing:
            if not self.accumulate:
                self.observer.reset()
            self.observer.observe(self._observer_view(x.detach()))
            self._stale = True
        return x

    def _observer_view(self, x: torch.Tensor) -> torch.Tensor:
        if self.role == "activation":
            return x
        m = x.reshape(x.shape[0], -1)
        g = self.spec.granularity
        if self.spec.codebook is not None or g == "channel":
            return m
        if g == "group":
            size = self.spec.group_size
            return F.pad(m, (0, -m.shape[1] % size)).reshape(-1, size)
        return m.reshape(1, -1)

    def update_qparams(self) -> None:
        """Scales and zero points from the observer (a learnable scale: only the first time)."""
        self._stale = False
        if self.learnable_scale and self.initialized:
            return
        if not self.observer.observed:
            what = f"{self.role} of {self.name!r}" if self.name else self.role
            raise RuntimeError(f"the observer of the {what} has seen no data: run calibration batches "
                               "through the prepared model (calibrate) before convert or freeze")
        qp = self.observer.qparams()
        if qp.scale.shape != self.scale.shape:
            raise ValueError(f"{self.name or self.role}: expected {self.scale.numel()} scales, the observer gave {qp.scale.numel()}")
        if self.learnable_scale:
            with torch.no_grad():
                self.scale.copy_(qp.scale)
        else:  # new tensors, not in place: a graph built by an earlier forward may still hold the old ones
            self.scale = qp.scale.clone()
        self.zero_point = qp.zero_point.clone()
        self.table = qp.table
        self.initialized = True
        if self.learnable_scale:
            self.observing = False  # LSQ: the observer only initializes the scale

    def freeze(self) -> None:
        """Stop observing and fix the scales at what the observer has seen so far."""
        if self.observing and self._stale:
            self.update_qparams()
        self.observing = False

    # --- quantizing -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.observe(x)
        return self.fake_quantize(x)

    def effective_scale(self, numel: int = 1) -> torch.Tensor:
        """The scales as used: a learnable one clamped positive (float16-rounded for Int4Weight), with
        LSQ's gradient factor for ``numel`` values (a weight's, or one sample's features)."""
        if self._stale:
            self.update_qparams()
        s = self.scale
        if not self.learnable_scale:
            return s
        s = _GradScale.apply(s, (numel / s.numel() * self.scheme.qmax) ** -0.5)
        s = torch.clamp(s, min=_F32_TINY)
        return _STE.apply(s, self.scheme.round_scale) if self.scheme.float16_scale else s

    def _expand(self, v: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """Per-row values (scales, zero points) broadcast against a weight matrix (n, k)."""
        g = self.spec.granularity
        if g == "channel":
            return v.reshape(n, 1)
        if g == "group":
            return v.reshape(n, -1).repeat_interleave(self.spec.group_size, dim=1)[:, :k]
        return v.reshape(1, 1)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        per_sample = self.role == "activation" and x.ndim > 1
        scale = self.effective_scale(x[0].numel() if per_sample else x.numel())
        if self.role == "activation":
            codes = self.scheme.quantize(x, scale, self.zero_point, _round_ste)
            return self.scheme.dequantize(codes, scale, self.zero_point)
        m = x.reshape(x.shape[0], -1)
        n, k = m.shape
        s, zp = self._expand(scale, n, k), self._expand(self.zero_point, n, k)
        if self.spec.codebook is not None:
            return _STE.apply(m, lambda w: self._codebook_values(w, s)).reshape(x.shape)
        return self.scheme.dequantize(self.scheme.quantize(m, s, zp, _round_ste), s, zp).reshape(x.shape)

    def _codebook_codes(self, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        v = torch.where(s != 0, m / torch.where(s != 0, s, 1.0), 0.0)
        return _nearest(v, self.table)

    def _codebook_values(self, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        codes = self._codebook_codes(m, s)
        levels = self.table[codes] if self.table.ndim == 1 else torch.gather(self.table, 1, codes)
        return levels * s

    @torch.no_grad()
    def weight_codes(self, w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A weight's codes (N, Kp) as int64, K zero-padded to whole groups of ``group_size``, with
        the scale and zero point per (N, Kp / group_size) group: what Int4Weight stores (group_size 1:
        no padding, for Int8Weight)."""
        m = w.detach().reshape(w.shape[0], -1)
        n, k = m.shape
        m = F.pad(m, (0, -k % group_size))
        kp = m.shape[1]
        scale = self.effective_scale()
        s, zp = self._expand(scale, n, kp), self._expand(self.zero_point, n, kp)
        if self.spec.codebook is not None:
            codes = self._codebook_codes(m, s)
        else:
            codes = self.scheme.quantize(m, s, zp).long()
        per_group = (slice(None), slice(None, None, group_size))
        return codes, s.expand(n, kp)[per_group], zp.expand(n, kp)[per_group]

    def extra_repr(self) -> str:
        sp = self.spec
        parts = [f"role={self.role}", f"bits={sp.bits}", f"symmetric={sp.symmetric}", f"granularity={sp.granularity}"]
        if sp.group_size:
            parts.append(f"group_size={sp.group_size}")
        if sp.codebook:
            parts.append(f"codebook={sp.codebook}")
        parts += [f"observer={sp.observer}", f"observing={self.observing}", f"learnable_scale={self.learnable_scale}"]
        return ", ".join(parts)


class _QuantLayer:
    """Shared by QuantLinear and QuantConv2d: the fake-quantized input and weight.

    ``fake_quant`` False (calibration): inputs only feed their observer, the float layer runs.
    True: the input and the weight are fake-quantized (``weight_quant`` None: the weight is used as is).
    """

    weight: nn.Parameter
    weight_quant: FakeQuantize | None
    input_quant: FakeQuantize | None
    fake_quant: bool

    def _attach(self, source: nn.Module, weight_quant: FakeQuantize | None, input_quant: FakeQuantize | None) -> None:
        self.weight = source.weight
        self.bias = source.bias
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.fake_quant = False
        self.train(source.training)

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_quant is not None:
            x = self.input_quant(x) if self.fake_quant else self.input_quant.observe(x)
        w = self.weight
        if self.fake_quant and self.weight_quant is not None:
            w = self.weight_quant(w)
        return x, w


class QuantLinear(_QuantLayer, nn.Linear):
    """nn.Linear with a fake-quantized weight and input (same parameters as the layer it replaces)."""

    @classmethod
    def from_float(cls, m: nn.Linear, weight_quant: FakeQuantize | None, input_quant: FakeQuantize | None) -> QuantLinear:
        q = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        q._attach(m, weight_quant, input_quant)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return F.linear(x, w, self.bias)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """nn.Conv2d with a fake-quantized weight and input (same parameters as the layer it replaces)."""

    @classmethod
    def from_float(cls, m: nn.Conv2d, weight_quant: FakeQuantize | None, input_quant: FakeQuantize | None) -> QuantConv2d:
        q = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                dilation=m.dilation, groups=m.groups, bias=m.bias is not None, padding_mode=m.padding_mode,
                device="meta")
        q._attach(m, weight_quant, input_quant)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return self._conv_forward(x, w, self.bias)


def int4_group_size(spec: QuantSpec) -> int:
    """The Int4Weight group size a 4-bit spec deploys with."""
    return spec.group_size if spec.granularity == "group" else DEFAULT_INT4_GROUP
