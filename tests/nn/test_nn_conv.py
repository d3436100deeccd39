from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from edgecompress.ops import conv as ops_conv  # noqa: E402
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
        # an NCHW input gives a contiguous NCHW output, as torch's convolution does
        assert got.shape == deq.shape and got.is_contiguous()
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


def _chw_twin(m, conv):
    """The module ``m`` (built by from_float in the "hwc" patch order) built in torch's (c, kh, kw) order."""
    return type(m).from_float(conv, patch_order="chw")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "unbatched", "strided"])
def test_int8_hwc_gathers_the_same_rows_as_torchs_order(layout, rng):
    # Per-row int8 activations and exact integer sums do not depend on the order of a row's values:
    # any value the hwc gather puts in the wrong row (or leaves out) changes the result's bits.
    for i, case in enumerate(CASES):
        conv = _float_conv(case, "Int8", seed=i)
        m = enn.Int8Conv2d.from_float(conv)
        twin = _chw_twin(m, conv)
        assert (m.patch_order, twin.patch_order) == ("hwc", "chw")
        if case[2] != 1 and case[0] != case[6]:  # the same weight, its columns moved (the orders coincide
            # for 1x1 kernels and one channel per group)
            assert not np.array_equal(m.weights[0].qweight, twin.weights[0].qweight), CASE_IDS[i]
        x = torch.from_numpy(rng.standard_normal((2, case[0]) + case[8]).astype(np.float32))
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "unbatched":
            x = x[1]
        elif layout == "strided":  # every other column of a wider image
            x = torch.from_numpy(rng.standard_normal((2, case[0], case[8][0], 2 * case[8][1])).astype(np.float32))[..., ::2]
        with torch.no_grad():
            got, want = m(x), twin(x)
            ref = conv(x)
        assert got.shape == want.shape == ref.shape, CASE_IDS[i]
        assert torch.equal(got, want), f"{CASE_IDS[i]} {layout}"
        assert float((got - ref).abs().max()) <= 2e-2 * float(ref.abs().max()), CASE_IDS[i]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("family", ["Sparse", "LowRank"])
def test_float_formats_in_hwc_order_match_torchs_conv(family, rng):
    options = {"Sparse": {}, "LowRank": {"energy": 1.0}}[family]
    for i, case in enumerate(CASES):
        conv = _float_conv(case, family, seed=i)
        m = CONV[family].from_float(conv, **options)
        x = torch.from_numpy(rng.standard_normal((2, case[0]) + case[8]).astype(np.float32))
        for xin in (x, x.contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                torch.testing.assert_close(m(xin), conv(xin), rtol=1e-4, atol=1e-4 * float(conv(xin).abs().max()))


def test_int4_groups_run_along_kh_kw_c():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 8, 3, padding=1, bias=False)
    m = enn.Int4Conv2d.from_float(conv, group_size=32)
    w = conv.weight.detach()
    step = float(w.abs().max()) / 7  # at most one int4 step of the largest group scale
    np.testing.assert_allclose(m.weights[0].to_float(), w.permute(0, 2, 3, 1).reshape(8, -1).numpy(), atol=step)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        want = conv(x)
        assert float((m(x) - want).norm() / want.norm()) < 0.15
    # group j of a row is kernel tap j's 32 channels: scaling tap (0, 0) of every channel moves group 0's
    # scales alone; in torch's order every group of 32 holds some channel's tap (0, 0)
    scaled = copy.deepcopy(conv)
    with torch.no_grad():
        scaled.weight[:, :, 0, 0] *= 100
    for order, moved in (("hwc", [0]), ("chw", list(range(9)))):
        before, after = (np.abs(enn.Int4Conv2d.from_float(c, group_size=32, patch_order=order).weights[0].scale)
                         for c in (conv, scaled))  # (signed scales: symmetric int4 uses -8 for the largest |w|)
        assert np.flatnonzero((after > 10 * before).all(axis=0)).tolist() == moved, order
        np.testing.assert_array_equal(np.delete(after, moved, axis=1), np.delete(before, moved, axis=1))


def test_a_one_group_1x1_stride_1_conv_multiplies_channels_last_input_in_place(monkeypatch, rng):
    conv = torch.nn.Conv2d(16, 8, 1)
    m = enn.Int8Conv2d.from_float(conv)
    seen = []
    linear = ops_conv.linear

    def spy(x, *args, **kwargs):
        seen.append(x)
        return linear(x, *args, **kwargs)

    monkeypatch.setattr(ops_conv, "linear", spy)
    x = torch.from_numpy(rng.standard_normal((2, 16, 5, 7)).astype(np.float32))
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got_cl, got = m(xcl), m(x)
        torch.testing.assert_close(got_cl, conv(x), rtol=0, atol=2e-2 * float(conv(x).abs().max()))
    assert torch.equal(got_cl, got)
    assert len(seen) == 2 and all(s.shape == (2 * 5 * 7, 16) and s.flags.c_contiguous for s in seen)
    assert np.shares_memory(seen[0], xcl.numpy())  # the channels-last input is the GEMM's x: no gather
    assert not np.shares_memory(seen[1], x.numpy())  # an NCHW input is gathered (transposed) first


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_the_output_memory_format_follows_the_input_as_in_torch(variant):
    _, family, options, _ = variant
    torch.manual_seed(0)
    float_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                      torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.MaxPool2d(2),
                                      torch.nn.Conv2d(8, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).eval()
    if family == "Sparse":
        for m in float_model:
            if isinstance(m, torch.nn.Conv2d):
                prune_(m)
    model = torch.nn.Sequential(*[CONV[family].from_float(m, **options) if isinstance(m, torch.nn.Conv2d) else m
                                  for m in float_model])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert model(x).shape == float_model(x).shape  # (values: the oracle tests)
        for conv in (model[0], model[3], model[5]):
            xin = torch.randn(2, conv.in_channels, 4, 4)
            y = conv(xin)
            assert y.is_contiguous()
            assert y.view(2, -1).shape == (2, conv.out_channels * 16)  # the common flatten before a Linear
            y_cl = conv(xin.contiguous(memory_format=torch.channels_last))
            assert y_cl.is_contiguous(memory_format=torch.channels_last) and not y_cl.is_contiguous()
            assert torch.equal(y, y_cl)
        # a contiguous unbatched input gives a contiguous output
        assert model[0](x[0]).is_contiguous()


@pytest.mark.parametrize("rows_per_block", [1, 3, 7, 20])
def test_blocks_of_rows_across_images_give_the_bits_of_one_block(rows_per_block, monkeypatch, rng):
    # 2 images of 5 output rows: blocks of 3 rows cross the first image's end, 7 cover one image and
    # part of the next, 20 hold both. Int8 activations quantized per image (a dynamic scale of each
    # image's own) make every block size give the same bits: a block's rows go to the product image
    # by image, each with its image's scale.
    conv = torch.nn.Conv2d(6, 8, 3, stride=(2, 1), padding=1, groups=2)
    m = enn.Int8Conv2d.from_float(conv)
    x = torch.from_numpy(rng.standard_normal((2, 6, 9, 7)).astype(np.float32))
    with torch.no_grad():
        whole = m(x)
        row_bytes = 4 * 7 * m.weights[0].shape[1]  # one output row of 7 pixels
        assert 4 * m.weights[0].nbytes < row_bytes  # (so the block size is _CHUNK_BYTES's alone)
        monkeypatch.setattr(ops_conv, "_CHUNK_BYTES", rows_per_block * row_bytes)
        calls = []
        linear = ops_conv.linear
        monkeypatch.setattr(ops_conv, "linear", lambda x, *a, **k: calls.append(x.shape[0]) or linear(x, *a, **k))
        got = m(x)
    assert torch.equal(got, whole)
    parts = [(min(r0 + rows_per_block, 10, 5 * j + 5) - max(r0, 5 * j)) * 7 for r0 in range(0, 10, rows_per_block)
             for j in (0, 1) if max(r0, 5 * j) < min(r0 + rows_per_block, 10, 5 * j + 5)]
    assert calls == parts * 2  # each group's rows, block after block, image by image


def test_a_call_under_inference_mode_leaves_later_calls_in_any_mode_working(rng):
    # The im2col scratch buffer outlives calls; made as a tensor under inference_mode() (here by a
    # larger input, so that it grows there), it refused every later in-place gather outside it.
    torch.manual_seed(0)
    first, other = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(3, 4, 3, stride=2)
    a, b = enn.Int8Conv2d.from_float(first), enn.LowRankConv2d.from_float(other, energy=1.0)
    with torch.inference_mode():
        a(torch.randn(2, 3, 48, 48))
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        want_a, want_b = first(x), other(x)
        torch.testing.assert_close(a(x), want_a, rtol=0, atol=2e-2 * float(want_a.abs().max()))
        torch.testing.assert_close(b(x), want_b, rtol=1e-5, atol=1e-5)
    assert b(x.requires_grad_()).requires_grad  # grad mode too
    ec.compress(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), "int8", example_inputs=x.detach(), guard=False,
                progress=False)
