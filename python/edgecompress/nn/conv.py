"""Drop-in replacements for torch.nn.Conv2d on the compressed convolution of the ops layer
(``edgecompress.ops.conv2d``: im2col, one strided gather, onto the linear kernels; its notes say why
the gather works as it does).

A grouped convolution holds one canonical weight per group (a depthwise convolution runs, but its
one-row weights gain nothing from compression). Padding follows ``padding_mode``, and "same" pads
even kernels unevenly, as torch does.

The patch order: ``from_float`` permutes the float weight (O, C/groups, kh, kw) to (O, kh, kw,
C/groups) before compressing it ("hwc"), the order whose gather is fast (see ops/conv.py). Modules
built from weights in torch's order, and state saved before the patch order existed, keep the order
(c, kh, kw) ("chw"; see ``patch_order``).

The output's memory format follows the input's, as torch's convolution does: a channels-last input
gives a channels-last output, which is the GEMM's (B, Ho, Wo, O) result itself seen as (B, O, Ho,
Wo), no copy; any other input gives a contiguous NCHW output (so ``y.view(n, -1)`` works), at the
cost of one transposing copy, and for kernels larger than 1x1 a channels-last copy of the input.
For speed, pass channels-last input (``x.to(memory_format=torch.channels_last)``): torch's
elementwise ops, norms and pools keep that format, so each following convolution gets channels-last
input too; ResNet-18 with int8 convolutions (one thread) ran in two thirds of the time it took with
NCHW copies around each convolution (22 against 32 ms at batch 1, 196 against 293 ms at batch 8).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import ops
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from ..ops.conv import PADDING_MODES, PATCH_ORDERS, pair
from . import _library
from ._common import _EXTRA, CompressedModule, StaticInput, Weight, check_input, run_op

__all__ = ["Int4Conv2d", "Int8Conv2d", "LowRankConv2d", "SparseConv2d"]

class _CompressedConv2d(CompressedModule):
    """A 2-D convolution on NCHW CPU tensors (or unbatched CHW), as torch.nn.Conv2d.

    ``weight``: one canonical weight (out_channels, in_channels * kh * kw) for groups=1, or a
    sequence of ``groups`` weights (out_channels/groups, in_channels/groups * kh * kw). Their
    columns run in ``patch_order``: "chw" (the default here) is the torch weight (O, C/groups, kh,
    kw) flattened as torch stores it; "hwc" is the weight permuted to (O, kh, kw, C/groups) first,
    what ``from_float`` builds and the faster order (see the module notes). ``stride``, ``padding``
    (ints, pairs, "valid" or "same"), ``dilation``, ``groups`` and ``padding_mode`` mean what they
    mean in torch. Inputs are float32, float16 or bfloat16 (computed in float32, returned in the
    input's dtype). The output's memory format follows the input's (see the module notes).
    """

    FLOAT_CLASS = nn.Conv2d
    CONFIG_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                   "padding_mode", "bias")
    VERSION = 2  # 2: the extra state names the weight's "patch_order" (version 1 states have none: "chw")

    def __init__(self, weight: Weight | Sequence[Weight], bias: torch.Tensor | np.ndarray | None = None, *,
                 kernel_size: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] | str = 0, dilation: int | Sequence[int] = 1, groups: int = 1,
                 padding_mode: str = "zeros", patch_order: str = "chw") -> None:
        weights = list(weight) if isinstance(weight, (list, tuple)) else [weight]
        super().__init__(weights, bias)
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.dilation = pair(dilation, "dilation", 1)
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
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode: expected one of {tuple(PADDING_MODES)}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.patch_order = _check_patch_order(patch_order)
        self.padding: list[int] | str = padding if isinstance(padding, str) else pair(padding, "padding", 0)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
            if padding == "same" and self.stride != [1, 1]:
                raise ValueError("padding: 'same' needs stride 1 (as in torch)")
        # (top, bottom, left, right), ops.conv2d's padding
        pads = []
        for i in (0, 1):
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
    def from_float(cls, module: nn.Conv2d, *, patch_order: str = "hwc", **options: Any) -> _CompressedConv2d:
        """Compress ``module``'s weight, per group, with ``WEIGHT_CLASS.from_float(w, **options)``
        on the (out_channels/groups, in_channels/groups * kh * kw) rows of that group, their columns
        in ``patch_order`` ("hwc": (kh, kw, c), the fast order; "chw": torch's (c, kh, kw), for a
        weight whose structure along K was made in torch's order, such as an N:M pattern from a
        pruner that flattens the torch weight); the bias is kept in float32."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module: expected a torch.nn.Conv2d, got {type(module).__name__}")
        patch_order = _check_patch_order(patch_order)
        w = module.weight.detach().to("cpu", torch.float32)
        if patch_order == "hwc":
            w = w.permute(0, 2, 3, 1)
        rows = w.numpy().reshape(module.groups, w.shape[0] // module.groups, -1)  # (copies when permuted)
        weights = [cls.WEIGHT_CLASS.from_float(np.ascontiguousarray(r), **options) for r in rows]
        return cls(weights, module.bias, kernel_size=module.kernel_size, stride=module.stride,
                   padding=module.padding, dilation=module.dilation, groups=module.groups,
                   padding_mode=module.padding_mode, patch_order=patch_order)

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

    # The patch order describes the weight's columns, not the torch-level configuration a float module
    # shares (config()), so it travels next to the config in the extra state, like the weights' metadata.
    def get_extra_state(self) -> dict[str, Any]:
        return dict(super().get_extra_state(), patch_order=self.patch_order)

    @classmethod
    def _extra_keys(cls, version: int) -> dict[str, bool]:
        keys = super()._extra_keys(version)
        return dict(keys, patch_order=True) if version >= 2 else keys

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> tuple[CompressedModule, set[str]]:
        module, used = super()._from_state(state)
        module.patch_order = _check_patch_order(state[_EXTRA].get("patch_order", "chw"))
        return module, used

    def assign(self, other: CompressedModule) -> None:
        super().assign(other)
        self.patch_order = other.patch_order

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, patch_order={self.patch_order!r}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = check_input(input)
        if x.ndim not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"input: expected shape (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if x.ndim == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        self.output_size(x.shape)  # (a clear error for too small an image before the op runs)
        return run_op(_library.conv2d, x, self)

    def output_size(self, shape: Sequence[int]) -> tuple[int, int]:
        """(Ho, Wo) of an (N, C, H, W) input, or ValueError when the image is smaller than the kernel."""
        return ops.conv.output_size(shape[-2], shape[-1], self.kernel_size, self.stride, self._pads, self.dilation,
                                    "input")

    @staticmethod
    def output_memory_format(x: torch.Tensor) -> torch.memory_format:
        """The output's memory format for input x, as torch's convolution picks it: channels last for
        a channels-last input (one that is not also contiguous), else contiguous."""
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return torch.channels_last
        return torch.contiguous_format

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of a float32 (N, C, H, W) input (the body of the custom op edgecompress::conv2d)."""
        x = x.detach()
        y = ops.conv2d(x.numpy(), self.weights, self._bias_numpy(), kernel_size=self.kernel_size, stride=self.stride,
                       padding=self._pads, dilation=self.dilation, padding_mode=self.padding_mode,
                       patch_order=self.patch_order, **self._act_args())
        # (B, Ho, Wo, O) as (B, O, Ho, Wo): channels last is that memory itself; contiguous, one transposing copy
        return torch.from_numpy(y).permute(0, 3, 1, 2).contiguous(memory_format=self.output_memory_format(x))


def _check_patch_order(patch_order: Any) -> str:
    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch_order: expected one of {PATCH_ORDERS}, got {patch_order!r}")
    return patch_order


class Int8Conv2d(StaticInput, _CompressedConv2d):
    """nn.Conv2d with Int8Weight(s): ``Int8Conv2d.from_float(conv, granularity="channel" | "tensor",
    act_scale=None, act_zero_point=None)`` ("tensor": one scale per group; act_*: static input
    quantization, as Int8Linear)."""

    WEIGHT_CLASS = Int8Weight
    VERSION = INPUT_QUANT_SINCE = 3  # 3: the extra state always holds "input_quant" (None: dynamic)


class Int4Conv2d(_CompressedConv2d):
    """nn.Conv2d with Int4Weight(s), groups of 32/64/128 along kh * kw * in_channels/groups:
    ``Int4Conv2d.from_float(conv, group_size=32, symmetric=True, method=..., codebook=..., compute=...)``.

    With the "hwc" patch order of ``from_float`` each quantization group (and, for compute="int8",
    each group of activations quantized together) runs along the channels of one kernel tap, then on
    to the next tap (the HWC layout other int4 conv runtimes use too); with "chw" it runs along
    torch's flattened (c, kh, kw). The two orders round the same weight differently."""

    WEIGHT_CLASS = Int4Weight


class SparseConv2d(_CompressedConv2d):
    """nn.Conv2d with SparseWeight(s) holding what pruning left:
    ``SparseConv2d.from_float(conv, format="csr" | ..., dtype="float32" | "int8")``.

    Structure along K (N:M groups, 1x4 blocks) lies along the module's patch order. edgecompress's
    pruners make it along (kh, kw, c), the default; a weight pruned to N:M along torch's flattened
    (c, kh, kw) by another tool keeps its pattern there, so without an explicit ``patch_order`` an
    N:M format that only holds in that order builds with ``patch_order="chw"``."""

    WEIGHT_CLASS = SparseWeight

    @classmethod
    def from_float(cls, module: nn.Conv2d, *, patch_order: str | None = None, **options: Any) -> SparseConv2d:
        if patch_order is not None:
            return super().from_float(module, patch_order=patch_order, **options)
        try:
            return super().from_float(module, patch_order="hwc", **options)
        except ValueError as along_hwc:
            if options.get("format") not in ("2:4", "1:4", "4:8"):
                raise
            try:
                return super().from_float(module, patch_order="chw", **options)
            except ValueError:
                raise along_hwc from None


class LowRankConv2d(_CompressedConv2d):
    """nn.Conv2d with LowRankWeight(s) u (out_channels, r) @ v (r, kh * kw * in_channels):
    ``LowRankConv2d.from_float(conv, rank=None, energy=None, dtype="float32" | "int8")``."""

    WEIGHT_CLASS = LowRankWeight
