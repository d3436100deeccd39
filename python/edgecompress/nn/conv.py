"""Drop-in replacements for torch.nn.Conv2d: im2col (torch's unfold) onto the linear kernels.

Each call unfolds the input into rows of C/groups * kh * kw values, one row per output pixel, and
multiplies them by the compressed weight of each group (out_channels/groups, C/groups * kh * kw), the
conv weight (O, C/groups, kh, kw) flattened as torch stores it. A grouped convolution holds one
canonical weight per group (a depthwise convolution runs, but its one-row weights gain nothing from
compression). Padding modes other than "zeros", and the uneven padding of "same" with even kernels,
pad the input with torch first. im2col copies the input kh * kw times: memory, not arithmetic, is the
price for small kernels; 1x1 convolutions with stride 1 pay only a transpose.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..weights import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from ._common import CompressedModule, StaticInput, Weight, as_numpy, check_input, inference_only

__all__ = ["Int4Conv2d", "Int8Conv2d", "LowRankConv2d", "SparseConv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value: Any, name: str, minimum: int) -> list[int]:
    """An int or a pair of ints >= minimum, as a list [h, w]."""
    v = [value, value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= minimum for e in v)):
        raise ValueError(f"{name}: expected an int or a pair of ints >= {minimum}, got {value!r}")
    return [int(e) for e in v]


class _CompressedConv2d(CompressedModule):
    """A 2-D convolution on NCHW float32 CPU tensors (or unbatched CHW), as torch.nn.Conv2d.

    ``weight``: one canonical weight (out_channels, in_channels * kh * kw) for groups=1, or a
    sequence of ``groups`` weights (out_channels/groups, in_channels/groups * kh * kw), the torch
    weight's rows and columns in torch's order. ``stride``, ``padding`` (ints, pairs, "valid" or
    "same"), ``dilation``, ``groups`` and ``padding_mode`` mean what they mean in torch. The output
    is a contiguous NCHW tensor.
    """

    FLOAT_CLASS = nn.Conv2d
    CONFIG_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                   "padding_mode", "bias")

    def __init__(self, weight: Weight | Sequence[Weight], bias: torch.Tensor | np.ndarray | None = None, *,
                 kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1, groups: int = 1,
                 padding_mode: str = "zeros") -> None:
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight]
        super().__init__(weights, bias)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups: expected an int >= 1, got {groups!r}")
        self.groups = int(groups)
        if len(self.weights) != self.groups:
            raise ValueError(f"weight: expected {self.groups} weights (one per group), got {len(self.weights)}")
        shapes = {w.shape for w in self.weights}
        kk = self.kernel_size[0] * self.kernel_size[1]
        if len(shapes) != 1 or next(iter(shapes))[1] % kk:
            raise ValueError(f"weight: expected every group's weight to be (out_channels/groups, "
                             f"in_channels/groups * {kk}), got shapes {sorted(shapes)}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {_PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding: list[int] | str = padding if isinstance(padding, str) else _pair(padding, "padding", 0)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != [1, 1]:
                raise ValueError("padding: 'same' needs stride 1 (as in torch)")
        # (left, right, top, bottom), F.pad's order for the last two dimensions
        pads = []
        for i in (1, 0):
            if self.padding == "same":
                total = self.dilation[i] * (self.kernel_size[i] - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [0, 0] if self.padding == "valid" else [self.padding[i]] * 2
        self._pads = tuple(pads)

    @property
    def weight(self) -> Weight:
        """The canonical compressed weight of a convolution with groups=1 (else see ``weights``)."""
        if self.groups != 1:
            raise AttributeError(f"weight: this convolution has {self.groups} groups; use .weights (one per group)")
        return self.weights[0]

    @property
    def out_channels(self) -> int:
        return self.weights[0].shape[0] * self.groups

    @property
    def in_channels(self) -> int:
        return self.weights[0].shape[1] // (self.kernel_size[0] * self.kernel_size[1]) * self.groups

    @classmethod
    def from_float(cls, module: nn.Conv2d, **options: Any) -> _CompressedConv2d:
        """Compress ``module``'s weight, per group, with ``WEIGHT_CLASS.from_float(w, **options)``
        on the (out_channels/groups, in_channels/groups * kh * kw) rows of that group; the bias is
        kept in float32."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module: expected a torch.nn.Conv2d, got {type(module).__name__}")
        w = module.weight.detach().to("cpu", torch.float32).numpy()
        rows = w.reshape(module.groups, w.shape[0] // module.groups, -1)
        weights = [cls.WEIGHT_CLASS.from_float(np.ascontiguousarray(r), **options) for r in rows]
        return cls(weights, module.bias, kernel_size=module.kernel_size, stride=module.stride,
                   padding=module.padding, dilation=module.dilation, groups=module.groups,
                   padding_mode=module.padding_mode)

    def config(self) -> dict[str, Any]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "padding_mode": self.padding_mode,
                "bias": self.bias is not None}

    @classmethod
    def float_config(cls, module: nn.Module) -> dict[str, Any]:
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "padding_mode": module.padding_mode,
                "bias": module.bias is not None}

    @classmethod
    def _build(cls, weights: list[Weight], bias: np.ndarray | None, config: dict[str, Any]) -> _CompressedConv2d:
        return cls(weights, bias, kernel_size=config["kernel_size"], stride=config["stride"],
                   padding=config["padding"], dilation=config["dilation"], groups=config["groups"],
                   padding_mode=config["padding_mode"])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = check_input(input)
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected shape (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.ndim == 3:
            return inference_only(x.unsqueeze(0), self._run).squeeze(0)
        return inference_only(x, self._run)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if any(self._pads):  # explicit padding, as torch's own Conv2d does for the non-zero modes
            x = F.pad(x, self._pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (h - dh * (kh - 1) - 1) // sh + 1
        wo = (w - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"input: a {h}x{w} image (padded) is smaller than the dilated {kh}x{kw} kernel")
        g = self.groups
        n_g, k_g = self.weights[0].shape
        c_g = k_g // (kh * kw)
        # im2col as one strided gather: cols[g, b, oh, ow, c, i, j] = x[b, g c_g + c, oh sh + i dh, ow sw + j dw]
        # (twice as fast as unfold followed by the transposing copy it needs).
        sb, sc, sh_, sw_ = x.stride()
        view = x.as_strided((g, b, ho, wo, c_g, kh, kw), (c_g * sc, sb, sh_ * sh, sw_ * sw, sc, sh_ * dh, sw_ * dw))
        cols = as_numpy(view.reshape(g, b * ho * wo, k_g)).reshape(g, b, ho * wo, k_g)  # (g, B, L, k_g), one copy
        out = np.empty((g, b, ho * wo, n_g), np.float32)
        bias, act = self._bias_numpy(), self._act_args()
        for i, weight in enumerate(self.weights):
            ops.linear(cols[i], weight, None if bias is None else bias[i * n_g:(i + 1) * n_g], out=out[i], **act)
        y = torch.from_numpy(out).permute(1, 0, 3, 2)  # (B, g, n_g, L)
        return y.reshape(b, g * n_g, ho, wo).contiguous()


class Int8Conv2d(StaticInput, _CompressedConv2d):
    """nn.Conv2d with Int8Weight(s): ``Int8Conv2d.from_float(conv, granularity="channel" | "tensor",
    act_scale=None, act_zero_point=None)`` ("tensor": one scale per group; act_*: static input
    quantization, as Int8Linear)."""

    WEIGHT_CLASS = Int8Weight


class Int4Conv2d(_CompressedConv2d):
    """nn.Conv2d with Int4Weight(s), groups of 32/64/128 along in_channels/groups * kh * kw:
    ``Int4Conv2d.from_float(conv, group_size=32, symmetric=True, method=..., codebook=..., compute=...)``."""

    WEIGHT_CLASS = Int4Weight


class SparseConv2d(_CompressedConv2d):
    """nn.Conv2d with SparseWeight(s) holding what pruning left:
    ``SparseConv2d.from_float(conv, format="csr" | ..., dtype="float32" | "int8")``."""

    WEIGHT_CLASS = SparseWeight


class LowRankConv2d(_CompressedConv2d):
    """nn.Conv2d with LowRankWeight(s) u (out_channels, r) @ v (r, in_channels * kh * kw):
    ``LowRankConv2d.from_float(conv, rank=None, energy=None, dtype="float32" | "int8")``."""

    WEIGHT_CLASS = LowRankWeight
