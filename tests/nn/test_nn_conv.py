from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from nn_oracle import (  # noqa: E402
    VARIANT_IDS,
    VARIANTS,
    assert_matches,
    conv_expected,
    dequantized_conv_weight,
    int8_activations,
    prune_,
)

CONV = {"Int8": enn.Int8Conv2d, "Int4": enn.Int4Conv2d, "Sparse": enn.SparseConv2d, "LowRank": enn.LowRankConv2d}
# in, out, kernel, stride, padding, dilation, groups, padding_mode, (H, W)
CASES = [
    (3, 5, 1, 1, 0, 1, 1, "zeros", (7, 6)),  # 1x1
    (4, 6, 1, 2, 0, 1, 2, "zeros", (9, 9)),  # 1x1, strided, grouped
    (3, 8, 3, 1, 1, 1, 1, "zeros", (8, 8)),  # 3x3
    (6, 9, 3, 2, 1, 1, 3, "zeros", (11, 7)),  # odd sizes, 3 groups
    (5, 7, (3, 2), (2, 1), (1, 0), (2, 1), 1, "zeros", (13, 10)),  # uneven kernel, stride, dilation
    (8, 8, 3, 1, 1, 1, 8, "zeros", (6, 6)),  # depthwise
    (4, 4, 3, 1, "same", 2, 1, "zeros", (9, 8)),
    (4, 6, 4, 1, "same", 1, 2, "zeros", (7, 7)),  # even kernel: uneven "same" padding
    (3, 4, 3, 1, "valid", 1, 1, "zeros", (5, 6)),
    (3, 5, 3, 2, 2, 1, 1, "reflect", (9, 9)),
    (2, 3, 3, 1, 1, 1, 1, "circular", (5, 4)),
    (2, 3, 3, 1, (1, 2), 1, 1, "replicate", (6, 5)),
]
CASE_IDS = [f"k{c[2]}-s{c[3]}-p{c[4]}-d{c[5]}-g{c[6]}-{c[7]}" for c in CASES]


def _float_conv(case, family, seed, bias=True):
    cin, cout, kernel, stride, padding, dilation, groups, mode, _ = case
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=bias, padding_mode=mode)
    return prune_(conv) if family == "Sparse" else conv


# torch warns about its own convolution (the reference here) for the even "same" kernel
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_matches_the_oracle_and_conv2d_on_the_dequantized_weight(variant, rng):
    _, family, options, _ = variant
    for i, case in enumerate(CASES):
        conv = _float_conv(case, family, seed=i, bias=i % 3 != 1)
        m = CONV[family].from_float(conv, **options)
        batch = 2 if i % 2 else 1
        x = (rng.standard_normal((batch, case[0]) + case[8]) * rng.uniform(0.1, 10)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            if i % 4 == 2:  # an unbatched (C, H, W) input gives a (O, Ho, Wo) output
                got = m(xt[0])
                assert got.ndim == 3
                got = got.unsqueeze(0)
            else:
                got = m(xt)
            deq = conv._conv_forward(xt, torch.from_numpy(dequantized_conv_weight(m)), conv.bias).numpy()
        want, tol = conv_expected(x, m)
        assert_matches(got.numpy(), want, tol, CASE_IDS[i])
        assert got.is_contiguous() and got.shape == deq.shape
        # torch's own convolution of the weight the module stands for: the same up to float
        # rounding, or up to the rounding of activations to int8 (<= half a step of max|row| / 127)
        bound = 2e-2 if int8_activations(m.weights[0]) else 1e-5
        assert np.abs(got.numpy() - deq).max() <= bound * max(np.abs(deq).max(), 1e-6), CASE_IDS[i]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_close_to_the_float_conv2d_it_replaces(variant):
    _, family, options, bound = variant
    conv = _float_conv((16, 32, 3, 1, 1, 1, 1, "zeros", None), family, seed=0)
    x = torch.randn(4, 16, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = conv(x)
        got = CONV[family].from_float(conv, **options)(x)
    assert float((got - want).abs().max() / want.abs().max()) <= bound


def test_grouped_conv_holds_one_weight_per_group():
    conv = torch.nn.Conv2d(6, 9, 3, groups=3)
    m = enn.Int8Conv2d.from_float(conv)
    assert len(m.weights) == 3 and all(w.shape == (3, 18) for w in m.weights)
    assert m.in_channels == 6 and m.out_channels == 9
    with pytest.raises(AttributeError):
        m.weight  # noqa: B018
    assert enn.Int8Conv2d.from_float(torch.nn.Conv2d(6, 9, 3)).weight.shape == (9, 54)


def test_construct_from_canonical_weights(rng):
    W = rng.standard_normal((4, 2 * 3 * 3)).astype(np.float32)
    w = ec.Int8Weight.from_float(W)
    m = enn.Int8Conv2d(w, torch.ones(4), kernel_size=3, padding=1)
    conv = torch.nn.Conv2d(2, 4, 3, padding=1)
    assert m.config() == enn.Int8Conv2d.float_config(conv)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        want = F.conv2d(x, torch.from_numpy(w.to_float()).reshape(4, 2, 3, 3), torch.ones(4), padding=1)
        torch.testing.assert_close(m(x), want, rtol=0, atol=2e-2 * float(want.abs().max()))


def test_empty_batches_and_channels_last_inputs():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    m = enn.LowRankConv2d.from_float(conv, energy=1.0)
    assert m(torch.zeros(0, 4, 5, 5)).shape == (0, 6, 5, 5)
    x = torch.randn(2, 4, 5, 5).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)
