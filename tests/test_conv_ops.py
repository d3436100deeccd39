"""ops.conv2d, the numpy-level convolution the torch modules call: values against a direct numpy
convolution, layouts, and errors."""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import ops

_NUMPY_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _direct(x, w, stride, padding, dilation, groups, mode):
    """Convolution of x (B, C, H, W) by w (O, C/groups, kh, kw) in float64, one kernel tap at a time."""
    top, bottom, left, right = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)), _NUMPY_PAD[mode])
    o, c_g, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    n_g = o // groups
    y = np.zeros((x.shape[0], o, ho, wo))
    for g in range(groups):
        xg = xp[:, g * c_g:(g + 1) * c_g]
        for p in range(kh):
            for q in range(kw):
                tap = xg[:, :, p * dh:p * dh + sh * (ho - 1) + 1:sh, q * dw:q * dw + sw * (wo - 1) + 1:sw]
                y[:, g * n_g:(g + 1) * n_g] += np.einsum("bchw,oc->bohw", tap, w[g * n_g:(g + 1) * n_g, :, p, q])
    return y


CASES = [  # B, C, O, kernel, stride, padding (top, bottom, left, right), dilation, groups, mode
    (2, 5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "zeros"),
    (1, 4, 4, (3, 2), (2, 1), (0, 1, 2, 0), (1, 2), 2, "reflect"),
    (2, 3, 6, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, "zeros"),
    (1, 6, 3, (2, 2), (1, 2), (1, 1, 1, 1), (2, 1), 3, "circular"),
    (1, 2, 4, (3, 3), (1, 1), (2, 0, 1, 1), (1, 1), 1, "replicate"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("patch_order", ["hwc", "chw"])
def test_matches_a_direct_convolution_in_either_layout(rng, case, patch_order):
    b, c, o, kernel, stride, padding, dilation, groups, mode = case
    w = rng.standard_normal((o, c // groups) + kernel).astype(np.float32)
    rows = (w.transpose(0, 2, 3, 1) if patch_order == "hwc" else w).reshape(groups, o // groups, -1)
    weights = [ec.SparseWeight.from_float(np.ascontiguousarray(r)) for r in rows]
    bias = rng.standard_normal(o).astype(np.float32)
    x = rng.standard_normal((b, c, 7, 8)).astype(np.float32)
    want = _direct(x, w, stride, padding, dilation, groups, mode) + bias[:, None, None]
    ys = [ops.conv2d(xin, weights, bias, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                     padding_mode=mode, patch_order=patch_order)
          for xin in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))]  # NCHW, channels last
    assert ys[0].shape == (b,) + want.shape[2:] + (o,) and ys[0].flags.c_contiguous
    np.testing.assert_allclose(ys[0].transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ys[0], ys[1])


def test_a_single_weight_an_int_padding_and_static_input_quantization(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    q = ec.Int8Weight.from_float(w.transpose(0, 2, 3, 1).reshape(4, -1))
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    y = ops.conv2d(x, q, kernel_size=3, padding=1, act_scale=0.05)
    want = _direct(x, q.to_float().reshape(4, 3, 3, 3).transpose(0, 3, 1, 2), (1, 1), (1, 1, 1, 1), (1, 1), 1, "zeros")
    assert y.shape == (1, 6, 6, 4)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2), want, atol=0.05 * 27 * 4)
    assert not np.array_equal(y, ops.conv2d(x, q, kernel_size=3, padding=1))  # the static scale was used


def test_bad_arguments_are_clear_errors(rng):
    w = ec.Int8Weight.from_float(rng.standard_normal((4, 18)).astype(np.float32))
    x = np.zeros((1, 2, 5, 5), np.float32)
    ok = {"kernel_size": 3}
    with pytest.raises(TypeError, match="x: expected a float32 numpy array, got float64"):
        ops.conv2d(x.astype(np.float64), w, **ok)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, C, H, W\), got \(2, 5, 5\)"):
        ops.conv2d(x[0], w, **ok)
    with pytest.raises(ValueError, match=r"x: expected 2 channels \(1 groups of 2\) for these weights, got shape \(1, 3, 5, 5\)"):
        ops.conv2d(np.zeros((1, 3, 5, 5), np.float32), w, **ok)
    with pytest.raises(TypeError, match=r"weights: expected a compressed weight or a non-empty sequence of them, got \['ndarray'\]"):
        ops.conv2d(x, np.zeros((4, 18), np.float32), **ok)
    with pytest.raises(ValueError, match=r"weights: expected every group's weight to be \(O/groups, C/groups \* 4\)"):
        ops.conv2d(x, w, kernel_size=2)
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\), got \(3,\)"):
        ops.conv2d(x, w, np.zeros(3, np.float32), **ok)
    with pytest.raises(TypeError, match="bias: expected a float32 numpy array or None, got float64"):
        ops.conv2d(x, w, np.zeros(4), **ok)
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        ops.conv2d(x, w, padding_mode="mirror", **ok)
    with pytest.raises(ValueError, match="patch_order: expected one of"):
        ops.conv2d(x, w, patch_order="cwh", **ok)
    with pytest.raises(ValueError, match=r"padding: expected an int or a pair of ints >= 0, got -1"):
        ops.conv2d(x, w, padding=-1, **ok)
    with pytest.raises(ValueError, match="x: a 2x2 image .padded. is smaller than the dilated 3x3 kernel"):
        ops.conv2d(x[:, :, :2, :2], w, **ok)
    # torch's limits for reflect (pad < size) and circular (pad <= size), not np.pad's repeated reflection
    with pytest.raises(ValueError, match=r"padding: reflect padding needs pads <= 4 \(rows\)"):
        ops.conv2d(x, w, padding=5, padding_mode="reflect", **ok)
    with pytest.raises(ValueError, match=r"padding: circular padding needs pads <= 5 \(rows\)"):
        ops.conv2d(x, w, padding=6, padding_mode="circular", **ok)
    assert ops.conv2d(x, w, padding=4, padding_mode="reflect", **ok).shape == (1, 11, 11, 4)
