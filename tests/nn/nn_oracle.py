"""The numpy oracle of the edgecompress.nn tests: what a module must return, by format, and the
format variants the tests sweep. Independent of torch's unfold: im2col here is numpy's."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import edgecompress as ec
from edgecompress import reference as ref

# (id, module family, from_float options, max |y - y_float| / max |y_float| measured on the
# fidelity layers of test_nn_linear / test_nn_conv, rounded up)
VARIANTS = [
    ("int8-channel", "Int8", {}, 2e-2),
    ("int8-tensor", "Int8", {"granularity": "tensor"}, 2e-2),
    ("int4-sym", "Int4", {}, 0.15),
    ("int4-asym-g64-mse", "Int4", {"group_size": 64, "symmetric": False, "method": "mse"}, 0.15),
    ("int4-nf4", "Int4", {"codebook": "nf4"}, 0.15),
    ("int4-float", "Int4", {"compute": "float"}, 0.15),
    ("sparse-csr", "Sparse", {}, 1e-5),
    ("sparse-bsr4x1", "Sparse", {"format": "bsr4x1"}, 1e-5),
    ("sparse-bsr8x1", "Sparse", {"format": "bsr8x1"}, 1e-5),
    ("sparse-int8-csr", "Sparse", {"dtype": "int8"}, 2e-2),
    ("sparse-int8-bsr1x4", "Sparse", {"format": "bsr1x4", "dtype": "int8"}, 2e-2),
    ("lowrank-f32", "LowRank", {"energy": 1.0}, 1e-5),
    ("lowrank-int8", "LowRank", {"energy": 1.0, "dtype": "int8"}, 4e-2),
]
VARIANT_IDS = [v[0] for v in VARIANTS]


def prune_(module, fraction: float = 0.6):
    """Zero the smallest-magnitude ``fraction`` of ``module.weight`` in place, as a pruner leaves it."""
    w = module.weight.data
    threshold = w.abs().flatten().kthvalue(max(1, int(fraction * w.numel()))).values
    w.mul_(w.abs() > threshold)
    return module


def int8_activations(w) -> bool:
    """Whether the format quantizes activations to int8 (so a float conv on the dequantized weight
    differs from it by that rounding)."""
    if isinstance(w, ec.Int8Weight):
        return True
    if isinstance(w, ec.Int4Weight):
        return w.compute == "int8"
    if isinstance(w, ec.SparseWeight):
        return w.dtype == "int8"
    return w.dtype != "float32"


def expected(x2: np.ndarray, w, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(oracle output, allowed |error| per output or None for bit for bit) of linear(x2, w, bias)."""
    if isinstance(w, ec.Int8Weight):
        return ref.linear_int8(x2, w.qweight, w.scale, bias), None
    if isinstance(w, ec.Int4Weight):
        want = ref.linear_int4(x2, w.qweight, w.scale, w.zero_point, w.codebook, bias, compute=w.compute)
        if w.compute == "int8":
            return want, None
        return want, ref.int4_float_tolerance(x2, w.to_float()) + _bias_slack(want, bias)
    if isinstance(w, ec.SparseWeight):
        if w.dtype == "int8":
            return ref.linear_int8(x2, w._dense_blocks(), w.scale, bias), None
        dense = w.to_float()
        want = ref.linear_sparse(x2, dense, bias)
        return want, 1e-5 * (np.abs(x2.astype(np.float64)) @ np.abs(dense.astype(np.float64)).T) + _bias_slack(want, bias)
    if w.dtype == "int8":
        t = ref.linear_int8(x2, w.v.qweight, w.v.scale)
        return ref.linear_int8(t, w.u.qweight, w.u.scale, bias), None
    return ref.linear_lowrank(x2, w.u, w.v, bias), ref.lowrank_tolerance(x2, w.u, w.v, bias)


def _bias_slack(want: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return 1e-6 * np.abs(want) + (0 if bias is None else 1e-6 * np.abs(bias)[None, :])


def assert_matches(got: np.ndarray, want: np.ndarray, tol: np.ndarray | None, what: str = "") -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, what
    if tol is None:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert (err <= tol).all(), f"{what}: max error {err.max()} over the tolerance"


_NUMPY_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv_pads(kernel, padding, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) as torch pads for ``padding`` (pair, "valid" or "same")."""
    pads = []
    for i in (0, 1):
        if padding == "same":
            total = dilation[i] * (kernel[i] - 1)
            pads.append((total // 2, total - total // 2))
        elif padding == "valid":
            pads.append((0, 0))
        else:
            pads.append((padding[i], padding[i]))
    return pads[0], pads[1]


def im2col(x: np.ndarray, kernel, stride, pads, dilation, padding_mode: str,
           patch_order: str = "chw") -> tuple[np.ndarray, int, int]:
    """(B, Ho * Wo, C * kh * kw) rows, Ho, Wo; a row runs over (channel, kernel row, kernel column)
    for patch_order "chw", over (kernel row, kernel column, channel) for "hwc"."""
    xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]), mode=_NUMPY_PAD[padding_mode])
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    win = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
    b, c, ho, wo = win.shape[:4]
    order = (0, 2, 3, 1, 4, 5) if patch_order == "chw" else (0, 2, 3, 4, 5, 1)
    return np.ascontiguousarray(win.transpose(order).reshape(b, ho * wo, c * kh * kw)), ho, wo


def conv_expected(x: np.ndarray, module) -> tuple[np.ndarray, np.ndarray | None]:
    """(oracle output (B, O, Ho, Wo), allowed |error| or None) of a compressed Conv2d module on x."""
    cfg = module.config()
    g = cfg["groups"]
    c_g = cfg["in_channels"] // g
    pads = conv_pads(cfg["kernel_size"], cfg["padding"], cfg["dilation"])
    bias = None if module.bias is None else module.bias.numpy()
    # int8 weights with dynamic activations quantize each image with its own scale (max |x| / 127 over
    # the image), but for a 1x1 kernel of stride 1 without padding (per pixel, as a linear layer)
    per_image = (isinstance(module.weights[0], ec.Int8Weight) and getattr(module, "input_quant", None) is None
                 and not (tuple(cfg["kernel_size"]) == (1, 1) and tuple(cfg["stride"]) == (1, 1) and pads == ((0, 0), (0, 0))))
    scales = ref.quantize_rows_symmetric(x.reshape(x.shape[0], -1))[1] if per_image else None
    wants, tols = [], []
    for i, w in enumerate(module.weights):
        cols, ho, wo = im2col(x[:, i * c_g:(i + 1) * c_g], cfg["kernel_size"], cfg["stride"], pads, cfg["dilation"],
                              cfg["padding_mode"], module.patch_order)
        n_g = w.shape[0]
        bias_g = None if bias is None else bias[i * n_g:(i + 1) * n_g]
        if per_image:
            want = np.stack([ref.linear_int8(cols[b], w.qweight, w.scale, bias_g, act_scale=float(scales[b]))
                             for b in range(x.shape[0])])
            wants.append(want)
            tols.append(None)
            continue
        want, tol = expected(cols.reshape(-1, cols.shape[-1]), w, bias_g)
        wants.append(want.reshape(x.shape[0], ho * wo, n_g))
        tols.append(None if tol is None else tol.reshape(x.shape[0], ho * wo, n_g))
    def nchw(parts):
        return np.concatenate(parts, axis=2).transpose(0, 2, 1).reshape(x.shape[0], -1, ho, wo)
    return nchw(wants), (None if tols[0] is None else nchw(tols))


def dequantized_conv_weight(module) -> np.ndarray:
    """The (O, C/groups, kh, kw) float weight a compressed Conv2d module stands for."""
    cfg = module.config()
    w = np.concatenate([wg.to_float() for wg in module.weights], axis=0)
    c_g = cfg["in_channels"] // cfg["groups"]
    if module.patch_order == "chw":
        return w.reshape(cfg["out_channels"], c_g, *cfg["kernel_size"])
    return np.ascontiguousarray(w.reshape(cfg["out_channels"], *cfg["kernel_size"], c_g).transpose(0, 3, 1, 2))
