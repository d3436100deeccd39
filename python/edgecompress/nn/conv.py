"""Drop-in replacements for torch.nn.Conv2d: im2col (one strided gather) onto the linear kernels.

Each call gathers the input into rows of kh * kw * C/groups values, one row per output pixel, and
multiplies them by the compressed weight of each group (out_channels/groups, kh * kw * C/groups). A
grouped convolution holds one canonical weight per group (a depthwise convolution runs, but its
one-row weights gain nothing from compression). Padding modes other than "zeros", and the uneven
padding of "same" with even kernels, pad the input with torch first.

Why the patch order is (kh, kw, c) ("hwc"): the gather copies the input kh * kw times, and its speed
is the speed of its innermost run. Read from a channels-last (NHWC) input, a patch row is kh * kw runs
of C/groups contiguous values; read from NCHW in torch's weight order (c, kh, kw), the runs are kw
values long (one value for 1x1 kernels), and the gather took 3 to 4 times the int8 GEMM's time on
ResNet-18's 3x3 layers (batch 1, one thread). So ``from_float`` permutes the float weight (O,
C/groups, kh, kw) to (O, kh, kw, C/groups) before compressing it, and each call converts an NCHW
input to channels last once (free when it already is). A 1x1 kernel reads each pixel once, so it
gathers from the input as it is; with stride 1, no padding, one group and channels-last input there
is no gather at all: the input is the (B * H * W, C) matrix. Modules built from weights in torch's
order, and state saved before the patch order existed, keep the order (c, kh, kw) ("chw"; see
``patch_order``).

The output's memory format follows the input's, as torch's convolution does: a channels-last input
gives a channels-last output, which is the GEMM's (B, Ho, Wo, O) result itself seen as (B, O, Ho,
Wo), no copy; any other input gives a contiguous NCHW output (so ``y.view(n, -1)`` works), at the
cost of one transposing copy, and for kernels larger than 1x1 a channels-last copy of the input.
For speed, pass channels-last input (``x.to(memory_format=torch.channels_last)``): torch's
elementwise ops, norms and pools keep that format, so each following convolution gets channels-last
input too; ResNet-18 with int8 convolutions (one thread) ran in two thirds of the time it took with
NCHW copies around each convolution (22 against 32 ms at batch 1, 196 against 293 ms at batch 8).

The rows are gathered and multiplied a few MiB at a time (at least 4x the weight's bytes, so that
the weight is not streamed again for every small block): each block of rows is still in cache when
the GEMM reads it (ResNet-18's 3x3 layers at batch 8, one thread: up to 1.17x faster than gathering
the whole batch first), and the buffer stays small. It is a scratch buffer kept per thread and
reused by every call: a fresh allocation is fresh memory from the OS each call, and its page faults
cost more than the copy (9x the copy for a whole batch-8 im2col of ResNet-18's first 3x3 layer).
The buffer is numpy memory that each call wraps in a tensor of its own, so no tensor (with the
autograd mode of the call that made it) outlives a call.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from . import _library
from ._common import _EXTRA, CompressedModule, StaticInput, Weight, check_input, run_op

__all__ = ["Int4Conv2d", "Int8Conv2d", "LowRankConv2d", "SparseConv2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PATCH_ORDERS = ("hwc", "chw")
_CHUNK_BYTES = 4 << 20  # im2col rows gathered and multiplied at a time (at least 4x the weight's bytes)
_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialized float32 tensor of ``shape`` in this thread's reusable im2col buffer.

    The buffer is numpy memory, and each call wraps it in a new tensor: a tensor kept between calls
    would carry the autograd mode of the call that made it (one made under torch.inference_mode()
    refuses the in-place gather outside it)."""
    n = math.prod(shape)
    buf = getattr(_SCRATCH, "cols", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.cols = np.empty(n, np.float32)
    return torch.from_numpy(buf[:n]).view(shape)


def _pair(value: Any, name: str, minimum: int) -> list[int]:
    """An int or a pair of ints >= minimum, as a list [h, w]."""
    v = [value, value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= minimum for e in v)):
        raise ValueError(f"{name}: expected an int or a pair of ints >= {minimum}, got {value!r}")
    return [int(e) for e in v]


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
        self.patch_order = _check_patch_order(patch_order)
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
        left, right, top, bottom = self._pads
        h, w = shape[-2] + top + bottom, shape[-1] + left + right
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (h - dh * (kh - 1) - 1) // sh + 1
        wo = (w - dw * (kw - 1) - 1) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"input: a {h}x{w} image (padded) is smaller than the dilated {kh}x{kw} kernel")
        return ho, wo

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
        memory_format = self.output_memory_format(x)
        ho, wo = self.output_size(x.shape)
        if any(self._pads):  # explicit padding, as torch's own Conv2d does for the non-zero modes
            x = F.pad(x, self._pads, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
        hwc = self.patch_order == "hwc"
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if hwc and kh * kw > 1:  # (free for channels-last input: F.pad keeps that layout, except "circular")
            # A 1x1 kernel reads each pixel once: its gather is the transposing copy this would make.
            x = x.contiguous(memory_format=torch.channels_last)
        b = x.shape[0]
        g = self.groups
        n_g, k_g = self.weights[0].shape
        c_g = k_g // (kh * kw)
        # im2col as one strided view: cols[g, b, oh, ow, <patch>] = x[b, g c_g + c, oh sh + i dh, ow sw + j dw]
        # with <patch> = (i, j, c) or (c, i, j)
        sb, sc, sy, sx = x.stride()
        patch = ((kh, kw, c_g), (sy * dh, sx * dw, sc)) if hwc else ((c_g, kh, kw), (sc, sy * dh, sx * dw))
        view = x.as_strided((g, b, ho, wo) + patch[0], (c_g * sc, sb, sy * sh, sx * sw) + patch[1])
        out = np.empty((g, b * ho * wo, n_g), np.float32)
        bias, act = self._bias_numpy(), self._act_args()
        if g == 1 and view.is_contiguous():  # 1x1, stride 1, channels-last input: the (B * H * W, C) matrix
            ops.linear(view.reshape(-1, k_g).numpy(), self.weights[0], bias, out=out[0], **act)
            return self._nchw(out, b, ho, wo, memory_format)
        rows = b * ho  # output rows of wo pixels, image after image
        step = max(1, max(_CHUNK_BYTES, 4 * self.weights[0].nbytes) // (4 * wo * k_g))  # rows per gather
        for i, weight in enumerate(self.weights):
            for r0 in range(0, rows, step):
                r1 = min(rows, r0 + step)
                cols = _scratch(((r1 - r0) * wo, k_g))
                for j in range(r0 // ho, (r1 - 1) // ho + 1):  # the images these rows come from
                    lo, hi = max(r0, j * ho), min(r1, (j + 1) * ho)
                    cols[(lo - r0) * wo:(hi - r0) * wo].view((hi - lo, wo) + patch[0]).copy_(
                        view[i, j, lo - j * ho:hi - j * ho])
                ops.linear(cols.numpy(), weight, None if bias is None else bias[i * n_g:(i + 1) * n_g],
                           out=out[i, r0 * wo:r1 * wo], **act)
        return self._nchw(out, b, ho, wo, memory_format)

    @staticmethod
    def _nchw(out: np.ndarray, b: int, ho: int, wo: int, memory_format: torch.memory_format) -> torch.Tensor:
        """The GEMMs' (groups, B * Ho * Wo, O/groups) output as (B, O, Ho, Wo) in ``memory_format``."""
        g, _, n_g = out.shape
        # (B, Ho, Wo, O) memory, the groups' channels side by side (a copy only for several groups)
        y = torch.from_numpy(out).view(g, b, ho, wo, n_g).permute(1, 2, 3, 0, 4).reshape(b, ho, wo, g * n_g)
        # channels last: no copy (except when n_g = 1 < g); contiguous: one transposing copy
        return y.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)


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
