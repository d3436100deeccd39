"""2-D convolution on compressed weights: im2col (one strided gather) onto ``linear``, numpy only.

Each call gathers the input into rows of kh * kw * C/groups values, one row per output pixel, and
multiplies them by the compressed weight of each group (out_channels/groups, kh * kw * C/groups).

Why the patch order "hwc" (kh, kw, c) is the fast one: the gather copies the input kh * kw times, and
its speed is the speed of its innermost run. Read from a channels-last (NHWC) input, a patch row is
kh * kw runs of C/groups contiguous values; read from NCHW in torch's weight order (c, kh, kw) ("chw"),
the runs are kw values long (one value for 1x1 kernels), and the gather took 3 to 4 times the int8
GEMM's time on ResNet-18's 3x3 layers (batch 1, one thread). So for "hwc" and kernels larger than
1x1 the input is made channels last once (free when it already is; padding writes it so). A 1x1
kernel reads each pixel once, so it gathers from the input as it is; with stride 1, no padding, one
group and channels-last input there is no gather at all: the input is the (B * H * W, C) matrix.

The rows are gathered and multiplied a few MiB at a time (at least 4x the weight's bytes, so that
the weight is not streamed again for every small block): each block of rows is still in cache when
the GEMM reads it (ResNet-18's 3x3 layers at batch 8, one thread: up to 1.17x faster than gathering
the whole batch first), and the buffer stays small. It is a scratch buffer kept per thread and
reused by every call: a fresh allocation is fresh memory from the OS each call, and its page faults
cost more than the copy (9x the copy for a whole batch-8 im2col of ResNet-18's first 3x3 layer).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import numpy as np

from .. import reference as ref
from ..formats import Int8Weight
from . import _FORMATS, linear

__all__ = ["conv2d", "output_size"]

PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}  # as np.pad
PATCH_ORDERS = ("hwc", "chw")
_CHUNK_BYTES = 4 << 20  # im2col rows gathered and multiplied at a time (at least 4x the weight's bytes)
_SCRATCH = threading.local()


def pair(value: Any, name: str, minimum: int) -> list[int]:
    """An int or a pair of ints >= minimum, as a list [h, w]."""
    v = [value, value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= minimum for e in v)):
        raise ValueError(f"{name}: expected an int or a pair of ints >= {minimum}, got {value!r}")
    return [int(e) for e in v]


def output_size(h: int, w: int, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], name: str = "x") -> tuple[int, int]:
    """(Ho, Wo) of an h x w image with ``padding`` (top, bottom, left, right), or ValueError (naming
    ``name``) when the padded image is smaller than the dilated kernel."""
    top, bottom, left, right = padding
    h, w = h + top + bottom, w + left + right
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    ho = (h - dh * (kh - 1) - 1) // sh + 1
    wo = (w - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{name}: a {h}x{w} image (padded) is smaller than the dilated {kh}x{kw} kernel")
    return ho, wo


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialized float32 array of ``shape`` in this thread's reusable im2col buffer."""
    n = math.prod(shape)
    buf = getattr(_SCRATCH, "cols", None)
    if buf is None or buf.size < n:
        buf = _SCRATCH.cols = np.empty(n, np.float32)
    return buf[:n].reshape(shape)


def _channels_last(x: np.ndarray) -> bool:
    """Whether the (B, C, H, W) array x is laid out as (B, H, W, C) in memory."""
    return x.transpose(0, 2, 3, 1).flags.c_contiguous


def _pad(x: np.ndarray, padding: Sequence[int], mode: str, channels_last: bool) -> np.ndarray:
    """x padded by (top, bottom, left, right), its memory channels last when ``channels_last``."""
    top, bottom, left, right = padding
    h, w = x.shape[2:]
    if mode in ("reflect", "circular"):  # what torch allows, rather than np.pad's repeated reflection
        limit_h, limit_w = (h - 1, w - 1) if mode == "reflect" else (h, w)
        if max(top, bottom) > limit_h or max(left, right) > limit_w:
            raise ValueError(f"padding: {mode} padding needs pads <= {limit_h} (rows) and <= {limit_w} (columns) "
                             f"for a {h}x{w} image, got (top, bottom, left, right) = {tuple(padding)}")
    if not channels_last:
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), PADDING_MODES[mode]) if any(padding) else x
    nhwc = x.transpose(0, 2, 3, 1)
    if any(padding):
        nhwc = np.pad(nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)), PADDING_MODES[mode])
    return np.ascontiguousarray(nhwc).transpose(0, 3, 1, 2)


def conv2d(x: np.ndarray, weights: Any, bias: np.ndarray | None = None, *, kernel_size: Any, stride: Any = 1,
           padding: Any = 0, dilation: Any = 1, padding_mode: str = "zeros", patch_order: str = "hwc",
           **act_args: Any) -> np.ndarray:
    """The 2-D convolution of x (B, C, H, W) float32 (any strides; channels-last memory is fastest).

    ``weights``: one compressed weight (O, C * kh * kw) or a sequence of ``groups`` of them, each
    (O/groups, C/groups * kh * kw), their columns in ``patch_order`` ("hwc": (kh, kw, c), the fast
    order; "chw": torch's (c, kh, kw)). ``stride`` and ``dilation``: an int or a pair; ``padding``:
    an int, a pair (rows, columns) or (top, bottom, left, right); ``padding_mode`` "zeros", "reflect",
    "replicate" or "circular"; ``bias`` float32 (O,) or None; ``act_args`` (act_scheme, act_scale,
    act_zero_point) go to ``linear`` for each group; Int8Weights without a static scale quantize each
    image with one dynamic scale of its own (max |x| / 127 over the image; per row for a 1x1 kernel of
    stride 1 without padding), as the engine's conv2d. Returns float32 (B, Ho, Wo, O), C-contiguous:
    ``.transpose(0, 3, 1, 2)`` is the (B, O, Ho, Wo) result in channels-last memory.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x: expected a float32 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4:
        raise ValueError(f"x: expected shape (B, C, H, W), got {x.shape}")
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if not weights or not all(isinstance(w, tuple(_FORMATS)) for w in weights):
        raise TypeError(f"weights: expected a compressed weight or a non-empty sequence of them, got "
                        f"{[type(w).__name__ for w in weights]}")
    kh, kw = kernel_size = pair(kernel_size, "kernel_size", 1)
    stride, dilation = pair(stride, "stride", 1), pair(dilation, "dilation", 1)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) and p >= 0 for p in padding):
            raise ValueError(f"padding: expected ints >= 0, got {padding!r}")
        padding = tuple(int(p) for p in padding)
    else:
        ph, pw = pair(padding, "padding", 0)
        padding = (ph, ph, pw, pw)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {tuple(PADDING_MODES)}, got {padding_mode!r}")
    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch_order: expected one of {PATCH_ORDERS}, got {patch_order!r}")
    g = len(weights)
    shapes = {w.shape for w in weights}
    n_g, k_g = weights[0].shape
    if len(shapes) != 1 or k_g % (kh * kw):
        raise ValueError(f"weights: expected every group's weight to be (O/groups, C/groups * {kh * kw}), got shapes "
                         f"{sorted(shapes)}")
    c_g = k_g // (kh * kw)
    if x.shape[1] != g * c_g:
        raise ValueError(f"x: expected {g * c_g} channels ({g} groups of {c_g}) for these weights, got shape {x.shape}")
    if bias is not None:  # (linear checks its values, group by group)
        if not isinstance(bias, np.ndarray) or bias.dtype != np.float32:
            raise TypeError(f"bias: expected a float32 numpy array or None, got {getattr(bias, 'dtype', type(bias).__name__)}")
        if bias.shape != (g * n_g,):
            raise ValueError(f"bias: expected shape ({g * n_g},), got {bias.shape}")
    ho, wo = output_size(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation)

    # An int8 weight with dynamic symmetric activations: each image quantized with its own scale (as
    # the engine's conv2d does), max |x| / 127 over the image, so its patches hold its pixels' codes;
    # a 1x1 kernel of stride 1 without padding (its patches are its pixels) per pixel, as a product.
    scales = None
    if (all(isinstance(w, Int8Weight) for w in weights) and act_args.get("act_scale") is None
            and act_args.get("act_scheme", "symmetric") == "symmetric"
            and not (list(kernel_size) == [1, 1] and list(stride) == [1, 1] and tuple(padding) == (0, 0, 0, 0))):
        scales = ref.quantize_rows_symmetric(x.reshape(x.shape[0], -1))[1]
    hwc = patch_order == "hwc"
    # A 1x1 kernel reads each pixel once: its gather is the transposing copy channels last would make.
    x = _pad(x, padding, padding_mode, (hwc and kh * kw > 1) or _channels_last(x))
    b = x.shape[0]
    (sh, sw), (dh, dw) = stride, dilation
    # im2col as one strided view: cols[g, b, oh, ow, <patch>] = x[b, g c_g + c, oh sh + i dh, ow sw + j dw]
    # with <patch> = (i, j, c) or (c, i, j) (strides in bytes)
    sb, sc, sy, sx = x.strides
    patch = ((kh, kw, c_g), (sy * dh, sx * dw, sc)) if hwc else ((c_g, kh, kw), (sc, sy * dh, sx * dw))
    view = np.lib.stride_tricks.as_strided(x, (g, b, ho, wo) + patch[0], (c_g * sc, sb, sy * sh, sx * sw) + patch[1],
                                           writeable=False)
    out = np.empty((g, b * ho * wo, n_g), np.float32)
    if g == 1 and view.flags.c_contiguous:  # 1x1, stride 1, channels-last input: the (B * H * W, C) matrix
        linear(view.reshape(-1, k_g), weights[0], bias, out=out[0], **act_args)
        return out[0].reshape(b, ho, wo, n_g)
    rows = b * ho  # output rows of wo pixels, image after image
    step = max(1, max(_CHUNK_BYTES, 4 * weights[0].nbytes) // (4 * wo * k_g))  # rows per gather
    for i, weight in enumerate(weights):
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            cols = _scratch(((r1 - r0) * wo, k_g))
            bias_i = None if bias is None else bias[i * n_g:(i + 1) * n_g]
            for j in range(r0 // ho, (r1 - 1) // ho + 1):  # the images these rows come from
                lo, hi = max(r0, j * ho), min(r1, (j + 1) * ho)
                np.copyto(cols[(lo - r0) * wo:(hi - r0) * wo].reshape((hi - lo, wo) + patch[0]),
                          view[i, j, lo - j * ho:hi - j * ho])
                if scales is not None:  # this image's rows, with its scale
                    linear(cols[(lo - r0) * wo:(hi - r0) * wo], weight, bias_i, out=out[i, lo * wo:hi * wo],
                           act_scheme="symmetric", act_scale=float(scales[j]))
            if scales is None:
                linear(cols, weight, bias_i, out=out[i, r0 * wo:r1 * wo], **act_args)
    # (B, Ho, Wo, O), the groups' channels side by side (a copy only for several groups)
    return np.ascontiguousarray(out.reshape(g, b, ho, wo, n_g).transpose(1, 2, 3, 0, 4).reshape(b, ho, wo, g * n_g))
