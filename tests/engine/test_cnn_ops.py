"""The engine's window ops (conv2d on every product format, depthwise_conv2d, pool2d) and the ops
around them (act, transpose, the per-batch channel scale of mul, add + activation) on every tier
that runs here, against their numpy specification (``Program.reference``), over a sweep of channels
1..129 (odd counts included), kernels 1/3/5/7, strides 1/2, padding (asymmetric too), dilation,
batch 1..9 and images 1..64 wide; and the oracle itself against torch.

The int8 and 4-bit products are bit-exact against the oracle's integer arithmetic (tests/test_gemm_s8.py);
the conv2d oracle is the product of the weight with the patch matrix of the image
(reference.engine.conv_patches), so a convolution agrees with it as closely as a linear node does.
"""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec
from edgecompress.engine.builder import GraphBuilder
from edgecompress import _core
from edgecompress.engine import ops as ecops
from edgecompress.engine.ops import winograd_tile
from edgecompress.reference import engine as eref

from test_ops import _check

# (batch, h, w, c, n, kernel, stride, padding (t, b, l, r), dilation)
CONVS = [
    (1, 1, 1, 1, 1, 1, 1, (0, 0, 0, 0), 1),
    (2, 5, 7, 3, 8, 3, 1, (1, 1, 1, 1), 1),
    (1, 17, 13, 7, 33, 3, 2, (1, 1, 1, 1), 1),
    (3, 9, 9, 16, 5, 5, 1, (2, 2, 2, 2), 1),
    (1, 32, 32, 3, 64, 7, 2, (3, 3, 3, 3), 1),   # a ResNet stem
    (2, 11, 6, 33, 17, 3, 1, (0, 2, 1, 0), 2),   # asymmetric padding, dilation 2
    (1, 8, 8, 129, 31, 1, 2, (0, 0, 0, 0), 1),   # 1x1 stride 2 (a downsample)
    (9, 4, 4, 20, 12, 1, 1, (0, 0, 0, 0), 1),    # 1x1: the product itself
    (1, 64, 64, 4, 8, 3, 1, (1, 1, 1, 1), 1),    # many tiles of patch rows
    (1, 3, 64, 9, 6, 3, 2, (1, 1, 1, 1), 1),
    (2, 11, 6, 3, 17, 3, 1, (0, 2, 1, 0), 2),    # 3 channels (float32: computed directly), odd outputs
    (1, 9, 20, 2, 40, 5, 2, (2, 1, 2, 1), 1),
    (3, 7, 7, 1, 3, 1, 1, (0, 0, 0, 0), 1),
]


def _conv_weights(n, k, seed=0):
    w = np.random.default_rng((n * 1000 + k, seed)).standard_normal((n, k)).astype(np.float32)
    out = [("float32", w, {}), ("int8", ec.Int8Weight.from_float(w), {}),
           ("int8-static", ec.Int8Weight.from_float(w), {"act_scale": 0.02, "act_zero_point": 128}),
           ("int8-static-sym", ec.Int8Weight.from_float(w), {"act_scale": 0.03})]
    if k % 32 == 0:
        out.append(("int4-g32", ec.Int4Weight.from_float(w, group_size=32), {}))
    keep = np.abs(w) >= np.quantile(np.abs(w), 0.75)
    out.append(("csr-int8", ec.SparseWeight.from_float(w * keep, "csr", "int8"), {}))
    return out


def _image(rng, b, h, w, c):
    return (rng.standard_normal((b, c, h, w)) * 2).astype(np.float32)


def _to_nhwc(g, x):
    return g.op("transpose", [x], "nhwc", perm=[0, 2, 3, 1])


@pytest.mark.parametrize("activation", [None, "relu", "hardswish"])
def test_conv2d_formats(tier, threads, rng, activation):
    for b, h, w, c, n, k, s, pad, d in CONVS:
        for name, wt, extra in _conv_weights(n, k * k * c):
            g = GraphBuilder()
            x = _to_nhwc(g, g.input("x", "float32", ("b", c, h, w)))
            bias = g.weight("bias", rng.standard_normal(n)) if n % 2 else ""
            attrs = {"kernel": [k, k], "stride": [s, s], "padding": list(pad), "dilation": [d, d]} | extra
            if activation:
                attrs["activation"] = activation
            y = g.op("conv2d", [x, bias], "conv", weight=g.weight("w", wt), **attrs)
            p = g.program([y], {})
            _check(p, _image(rng, b, h, w, c), atol=1e-5, what=f"conv2d {name} {activation} {(b, h, w, c, n, k, s, pad, d)}")


def test_conv2d_oracle_against_torch(rng):
    torch = pytest.importorskip("torch")
    for b, h, w, c, n, k, s, (pt, pb, pl, pr), d in CONVS:
        x = _image(rng, b, h, w, c)
        wt = rng.standard_normal((n, c, k, k)).astype(np.float32)
        xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
        want = torch.nn.functional.conv2d(xp, torch.from_numpy(wt), stride=s, dilation=d).numpy()
        g = GraphBuilder()
        y = g.op("conv2d", [_to_nhwc(g, g.input("x", "float32", ("b", c, h, w)))], "conv",
                 weight=g.weight("w", wt.transpose(0, 2, 3, 1).reshape(n, -1)), kernel=[k, k], stride=[s, s],
                 padding=[pt, pb, pl, pr], dilation=[d, d])
        back = g.op("transpose", [y], "nchw", perm=[0, 3, 1, 2])
        p = g.program([back], {})
        np.testing.assert_allclose(p.reference(x), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p(x), want, rtol=1e-4, atol=1e-4)


# Winograd: (batch, h, w, c, n, padding (t, b, l, r)) of float32 3x3 convolutions of stride 1; F(4x4, 3x3)
# up to 256 x 256 kernels (n c), F(2x2, 3x3) above
WINOGRAD = [
    (1, 1, 1, 8, 8, (1, 1, 1, 1)),        # one tile, most of its outputs outside the image
    (2, 5, 7, 9, 17, (1, 1, 1, 1)),       # odd sizes: the last tiles partly outside
    (3, 6, 5, 12, 9, (0, 2, 1, 0)),       # asymmetric padding
    (1, 4, 4, 129, 3, (0, 0, 0, 0)),      # no padding; channels past every vector width
    (1, 13, 11, 33, 31, (2, 2, 0, 2)),    # padding 2: outputs larger than the image
    (1, 40, 40, 8, 16, (1, 1, 1, 1)),     # several blocks of tiles
    (9, 3, 3, 16, 8, (1, 1, 1, 1)),
    (1, 7, 6, 257, 256, (1, 1, 1, 1)),    # F(2x2, 3x3)
    (2, 5, 9, 300, 300, (1, 0, 1, 1)),    # F(2x2, 3x3), odd sizes
]


def _winograd_program(rng_wt, c, n, pad, activation, wino, aq=None):
    wt, bias = rng_wt
    g = GraphBuilder()
    x = _to_nhwc(g, g.input("x", "float32", ("b", c, "h", "w")))
    attrs = {"kernel": [3, 3], "padding": list(pad), "winograd": wino} | ({"activation": activation} if activation else {})
    attrs |= aq or {}
    y = g.op("conv2d", [x, g.weight("bias", bias)], "conv", weight=g.weight("w", wt), **attrs)
    return g.program([y], {})


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_winograd_conv2d(tier, threads, rng, activation):
    """A float32 3x3 convolution of stride 1 (8 or more channels) runs as Winograd: against the oracle
    (the patch product: the same sums in another order) and against the same node with winograd=False
    (patches and the product), within float32 rounding: 1e-5 of the largest output for F(2x2, 3x3),
    5e-5 for F(4x4, 3x3), whose transforms (entries up to 8 and down to 1/24) round about ten times
    more than the direct sums."""
    for b, h, w, c, n, pad in WINOGRAD:
        wts = (rng.standard_normal((n, 9 * c)).astype(np.float32), rng.standard_normal(n).astype(np.float32))
        x = _image(rng, b, h, w, c)
        tile = winograd_tile(wts[0])
        assert tile == (4 if n * c <= 256 * 256 else 2)
        rtol = 1e-5 if tile == 2 else 5e-5
        what = f"winograd F({tile}x{tile}) conv2d {activation} {(b, h, w, c, n, pad)}"
        p = _winograd_program(wts, c, n, pad, activation, True)
        got = _check(p, x, rtol=rtol, atol=1e-5, what=what)
        assert [op for _, op, _ in p.profile(x, rounds=1)["nodes"]][-1] == "winograd", what
        patches = _winograd_program(wts, c, n, pad, activation, False)
        assert [op for _, op, _ in patches.profile(x, rounds=1)["nodes"]][-1] == "conv2d", what
        np.testing.assert_allclose(got, patches(x), rtol=0, atol=rtol * float(np.abs(got).max()) + 1e-5, err_msg=what)


def test_winograd_conv2d_edges(rng, tmp_path):
    """Where Winograd does not apply (7 channels, stride 2, dilation 2, a sparse weight), the patches
    run; release_weights keeps the transformed weights it runs on; winograd=False survives save and
    load; NaN in the image is refused; winograd must be a bool."""
    wts = (rng.standard_normal((4, 9 * 8)).astype(np.float32), rng.standard_normal(4).astype(np.float32))
    for c, attrs, weight in [(7, {}, None), (8, {"stride": [2, 2]}, None), (8, {"dilation": [2, 2]}, None),
                             (8, {}, ec.SparseWeight.from_float(wts[0], "csr", "int8"))]:
        g = GraphBuilder()
        x = g.input("x", "float32", (1, 6, 6, c))
        w = weight if weight is not None else rng.standard_normal((4, 9 * c)).astype(np.float32)
        g.op("conv2d", [x], "conv", weight=g.weight("w", w), kernel=[3, 3], padding=[1, 1, 1, 1], **attrs)
        p = g.program(["conv"], {})
        xi = rng.standard_normal((1, 6, 6, c)).astype(np.float32)
        assert [op for _, op, _ in p.profile(xi, rounds=1)["nodes"]] == ["conv2d"], (c, attrs)
    p = _winograd_program(wts, 8, 4, (1, 1, 1, 1), "relu", True)
    p.release_weights()  # before any plan: it packs the transformed weights the node runs on
    x = _image(rng, 2, 6, 5, 8)
    np.testing.assert_array_equal(p(x), _winograd_program(wts, 8, 4, (1, 1, 1, 1), "relu", True)(x))
    patches = _winograd_program(wts, 8, 4, (1, 1, 1, 1), "relu", False)  # the choice is saved with the node
    patches.save(tmp_path / "patches")
    back = ec.engine.load(tmp_path / "patches")
    assert [op for _, op, _ in back.profile(x, rounds=1)["nodes"]][-1] == "conv2d"
    np.testing.assert_array_equal(back(x), patches(x))
    x[1, 3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        p(x)
    g = GraphBuilder()
    g.op("conv2d", [g.input("x", "float32", (1, 6, 6, 8))], "conv", weight=g.weight("w", wts[0]), kernel=[3, 3], winograd=1)
    with pytest.raises(ValueError, match="winograd"):
        g.program(["conv"], {})(np.zeros((1, 6, 6, 8), np.float32))


def test_winograd_tile_attribute(rng, tmp_path):
    """winograd=2 or 4 fixes the float32 tile, whatever the weight's size: the transformed weight has
    (m + 2)^2 products, the output agrees with the patches, the choice survives release_weights, save
    and load; other values are refused. winograd_tile_for takes F(2x2) on small images (few tiles of
    F(4x4), partly outside the image), F(4x4) on large ones or many images."""
    c, n, pad = 16, 12, (1, 1, 1, 1)
    wts = (rng.standard_normal((n, 9 * c)).astype(np.float32), rng.standard_normal(n).astype(np.float32))
    x = _image(rng, 2, 9, 7, c)
    want = _winograd_program(wts, c, n, pad, None, False)(x)
    assert winograd_tile(wts[0]) == 4  # the default: few kernels
    for m in (2, 4):
        p = _winograd_program(wts, c, n, pad, None, m)
        got = p(x)
        transformed = [v[0] for k, v in p._packed.items() if k[2].startswith("winograd")]
        assert [len(t) for t in transformed] == [(m + 2) ** 2], m
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(np.abs(want).max()), err_msg=f"F({m}x{m})")
        p.save(tmp_path / f"f{m}")
        back = ec.engine.load(tmp_path / f"f{m}")
        assert [nd.attrs["winograd"] for nd in back.nodes if nd.op == "conv2d"] == [m]
        np.testing.assert_array_equal(back(x), got)
        released = _winograd_program(wts, c, n, pad, None, m)
        released.release_weights()  # packs the form of the node's tile
        np.testing.assert_array_equal(released(x), got)
    for bad in (3, 1, 2.0):
        with pytest.raises(ValueError, match="winograd"):
            _winograd_program(wts, c, n, pad, None, bad)(x)
    tile_for = ecops.winograd_tile_for
    assert [tile_for(1, s, s) for s in (7, 14, 28, 56, 112)] == [2, 2, 4, 4, 4]
    assert tile_for(8, 14, 14) == 4 and tile_for(1, 1, 1) == 2


# integer Winograd: (batch, h, w, c, n, padding (t, b, l, r))
WINOGRAD_S8 = [
    (1, 4, 4, 129, 3, (0, 0, 0, 0)),      # no padding; an odd channel count (a channel pair half empty)
    (1, 13, 11, 33, 31, (2, 2, 0, 2)),    # padding 2: outputs larger than the image; a part-filled panel
    (1, 40, 40, 8, 16, (1, 1, 1, 1)),     # several blocks of tiles
    (9, 3, 3, 16, 8, (1, 1, 1, 1)),       # tiles across images
    (2, 5, 9, 300, 40, (1, 0, 1, 1)),     # odd output sizes
]


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_winograd_s8_conv2d(tier, threads, rng, activation):
    """An int8 3x3 convolution of stride 1 runs as integer Winograd F(2x2,
    3x3) where the tier's int8 products multiply 16-bit values (winograd_s8_pays), else as patches and
    the product: either way the same bits as the node with winograd=False (the integer sums are the
    same exactly, and the epilogue is the product's) and as the oracle's integer arithmetic. Asymmetric
    codes (zero points 128 and 0) and symmetric ones, whose extremes (255 - 0, -128) bound the
    transforms' ranges; and a dynamic scale, one per image."""
    pays = ecops.winograd_s8_pays()
    for b, h, w, c, n, pad in WINOGRAD_S8:
        for aq in ({"act_scale": 0.02, "act_zero_point": 128}, {"act_scale": 0.05, "act_zero_point": 0}, {"act_scale": 0.01},
                   {}):
            wt = ec.Int8Weight.from_float(rng.standard_normal((n, 9 * c)).astype(np.float32))
            bias = rng.standard_normal(n).astype(np.float32)
            x = _image(rng, b, h, w, c)
            x.flat[::7] = 40.0  # codes at the top of their range (255, 127)
            x.flat[3::11] = -40.0
            what = f"winograd_s8 conv2d {activation} {aq} {(b, h, w, c, n, pad)}"
            p = _winograd_program((wt, bias), c, n, pad, activation, True, aq)
            got = _check(p, x, rtol=0, atol=0, what=what) if activation != "silu" else p(x)
            want = "winograd_s8" if pays else "conv2d"
            assert [op for _, op, _ in p.profile(x, rounds=1)["nodes"]][-1] == want, what
            patches = _winograd_program((wt, bias), c, n, pad, activation, False, aq)
            np.testing.assert_array_equal(got, patches(x), err_msg=what)


# conv2d with a residual: (batch, h, w, c, n, kernel, stride, padding, weight kind, the native op it runs as)
RESIDUAL = [
    (2, 9, 7, 3, 8, 3, 1, (1, 1, 1, 1), "float32", "conv2d"),       # 3 channels: computed directly
    (1, 8, 8, 16, 24, 1, 1, (0, 0, 0, 0), "float32", "conv2d"),     # 1x1 (no residual: a linear node)
    (3, 11, 9, 10, 17, 3, 2, (1, 1, 1, 1), "float32", "conv2d"),    # patches
    (2, 13, 11, 16, 20, 3, 1, (1, 1, 1, 1), "float32", "winograd"),
    (1, 40, 40, 8, 16, 3, 1, (1, 1, 1, 1), "float32", "winograd"),  # several blocks of tiles
    (2, 13, 11, 33, 31, 3, 1, (1, 1, 1, 1), "int8-static", None),   # winograd_s8 where it pays
    (1, 9, 12, 16, 40, 3, 2, (1, 1, 1, 1), "int8-static", "conv2d"),
    (2, 6, 6, 40, 24, 1, 1, (0, 0, 0, 0), "int8", "conv2d"),        # dynamic scale, 1x1
    (1, 10, 10, 12, 18, 3, 1, (1, 1, 1, 1), "int8", None),          # dynamic scale per image
    (2, 7, 7, 12, 12, 3, 1, (1, 1, 1, 1), "grouped", "conv2d"),     # 3 groups
]


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_conv2d_residual(tier, threads, rng, activation):
    """conv2d's third input, a residual: activation(conv(x) + bias + residual), on every path a
    convolution runs (direct, patches, 1x1, Winograd float32 and int8, grouped), the same bits as
    the convolution followed by an add node with the activation, and as the oracle."""
    for b, h, w, c, n, k, s, pad, kind, native in RESIDUAL:
        wf = rng.standard_normal((n, k * k * c // (3 if kind == "grouped" else 1))).astype(np.float32)
        extra = {"act_scale": 0.02, "act_zero_point": 128} if kind == "int8-static" else {}
        ho, wo = eref.window_size(h, w, (k, k), (s, s), pad, (1, 1))
        bias = rng.standard_normal(n).astype(np.float32)

        def program(fused):
            g = GraphBuilder()
            x = _to_nhwc(g, g.input("x", "float32", (b, c, h, w)))
            r = g.input("r", "float32", (b, ho, wo, n))
            if kind == "grouped":
                wt = [g.weight(f"w{j}", part) for j, part in enumerate(np.split(wf, 3))]
            else:
                wt = g.weight("w", wf if kind == "float32" else ec.Int8Weight.from_float(wf))
            attrs = {"kernel": [k, k], "stride": [s, s], "padding": list(pad)} | extra
            act = {"activation": activation} if activation else {}
            if fused:
                y = g.op("conv2d", [x, g.weight("bias", bias), r], "conv", weight=wt, **attrs, **act)
            else:
                t = g.op("conv2d", [x, g.weight("bias", bias)], "conv", weight=wt, **attrs)
                y = g.op("add", [t, r], "add", **act)
            return g.program([y], {})

        what = f"conv2d + residual {kind} {activation} {(b, h, w, c, n, k, s, pad)}"
        x, res = _image(rng, b, h, w, c), rng.standard_normal((b, ho, wo, n)).astype(np.float32)
        x.flat[::5] = 0.0
        res.flat[::3] *= 20  # sums of either sign after the add, so ReLU cuts some
        fused = program(True)
        got = _check(fused, x, res, atol=1e-5, what=what)
        np.testing.assert_array_equal(got, program(False)(x, res), err_msg=what)
        ops = [op for _, op, _ in fused.profile(x, res, rounds=1)["nodes"]]
        want = native or ("winograd_s8" if ecops.winograd_s8_pays() else "conv2d")
        assert ops[-1] == want and "add" not in ops, (what, ops)


def test_conv2d_residual_is_checked(rng):
    g = GraphBuilder()
    x = g.input("x", "float32", (1, 6, 6, 4))
    r = g.input("r", "float32", (1, 6, 6, 5))
    y = g.op("conv2d", [x, "", r], "conv", weight=g.weight("w", rng.standard_normal((8, 36)).astype(np.float32)),
             kernel=[3, 3], padding=[1, 1, 1, 1])
    p = g.program([y], {})
    with pytest.raises(ValueError, match="conv.*residual of the output's shape"):
        p(np.zeros((1, 6, 6, 4), np.float32), np.zeros((1, 6, 6, 5), np.float32))


def test_winograd_s8_edges(rng, tmp_path):
    """A dynamic input scale (one per image) runs as integer Winograd too; where it does not apply
    (more than WINOGRAD_S8_MAX_CHANNELS channels), the patches run; release_weights keeps the forms
    the node runs on; winograd=False survives save and load; NaN in the image is refused; scale
    products too small for float32 take the float64 epilogue, as the product does; a malformed
    native node is a clear error."""
    # on a CPU whose top gemm_s8 kernel has an 8-bit dot product (VNNI, AMX), at the highest tier
    # where integer Winograd runs
    ladder = ec.runtime.LADDER
    now = ladder.index(ec.current_tier())
    top = [t for t in ecops.WINOGRAD_S8_TIERS if t in ladder and ladder.index(t) <= now and _core.tier_support(t)[0]][-1]
    with ec.use_isa(top):
        assert ecops.winograd_s8_pays(), ec.runtime.gemm_s8_kernel()
        _winograd_s8_edges(rng, tmp_path)


def _winograd_s8_edges(rng, tmp_path):
    aq = {"act_scale": 0.02, "act_zero_point": 128}
    for c, attrs, want in [(8, {}, "winograd_s8"), (ecops.WINOGRAD_S8_MAX_CHANNELS + 1, aq, "conv2d")]:
        wt = ec.Int8Weight.from_float(rng.standard_normal((4, 9 * c)).astype(np.float32))
        p = _winograd_program((wt, np.zeros(4, np.float32)), c, 4, (1, 1, 1, 1), None, True, attrs)
        x = _image(rng, 1, 4, 4, c)
        assert [op for _, op, _ in p.profile(x, rounds=1)["nodes"]][-1] == want, c
    wts = (ec.Int8Weight.from_float(rng.standard_normal((12, 9 * 8)).astype(np.float32)), rng.standard_normal(12).astype(np.float32))
    x = _image(rng, 2, 6, 5, 8)
    p = _winograd_program(wts, 8, 12, (1, 1, 1, 1), "relu", True, aq)
    p.release_weights()  # before any plan: it packs the transformed weights the node runs on
    assert [op for _, op, _ in p.profile(x, rounds=1)["nodes"]][-1] == "winograd_s8"
    np.testing.assert_array_equal(p(x), _winograd_program(wts, 8, 12, (1, 1, 1, 1), "relu", True, aq)(x))
    patches = _winograd_program(wts, 8, 12, (1, 1, 1, 1), "relu", False, aq)
    patches.save(tmp_path / "patches")
    back = ec.engine.load(tmp_path / "patches")
    assert [op for _, op, _ in back.profile(x, rounds=1)["nodes"]][-1] == "conv2d"
    np.testing.assert_array_equal(back(x), p(x))
    x[1, 3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        p(x)
    # scale products below the smallest normal float (1e-30 x ~1e-11): gemm_s8's float64 epilogue
    tiny = (ec.Int8Weight.from_float(rng.standard_normal((12, 9 * 8)).astype(np.float32) * 1e-9), wts[1] * 1e-36)
    xt = _image(rng, 2, 6, 5, 8) * np.float32(1e-29)
    p = _winograd_program(tiny, 8, 12, (1, 1, 1, 1), None, True, {"act_scale": 1e-30})
    assert [op for _, op, _ in p.profile(xt, rounds=1)["nodes"]][-1] == "winograd_s8"
    got = p(xt)
    assert np.abs(got).max() > 0
    np.testing.assert_array_equal(got, _winograd_program(tiny, 8, 12, (1, 1, 1, 1), None, False, {"act_scale": 1e-30})(xt))
    np.testing.assert_array_equal(got, p.reference(xt))
    # the native boundary: the node's weights must match its shape
    packed = ec.ops.packed(wts[0])
    u = ecops.winograd_s8_weights(wts[0].qweight)
    ints = [1, 6, 6, 8, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 0, 12]
    ref = [(1, 0, 0), (0, 0, 0)]
    for weight, what in [((packed, u[:-1]), "do not match"), ((packed, u.astype(np.int32)), "int16"),
                         (packed, "expected \\(packed int8 weight")]:
        node = (ecops.NATIVE_OP["winograd_s8"], ref, [(2, 0, 0)], ints, [], weight, 3, (0.02, 128), 0)
        with pytest.raises(ValueError, match=what):
            _core.EnginePlan([node], 0, [], [6 * 6 * 8 * 4], [6 * 6 * 12 * 4], "engine_f32_scalar")
    node = (ecops.NATIVE_OP["winograd_s8"], ref, [(2, 0, 0)], ints, [], (packed, u), 1, (0.02, 128), 0)
    with pytest.raises(ValueError, match="dynamic symmetric or static activation scale"):
        _core.EnginePlan([node], 0, [], [6 * 6 * 8 * 4], [6 * 6 * 12 * 4], "engine_f32_scalar")


# grouped: (batch, h, w, c, n, groups, kernel, stride, padding, dilation)
GROUPED = [
    (2, 9, 7, 8, 12, 2, 3, 1, (1, 1, 1, 1), 1),
    (1, 8, 8, 64, 64, 32, 3, 2, (1, 1, 1, 1), 1),    # a ResNeXt 32x4d block's 3x3
    (1, 5, 5, 6, 12, 6, 3, 1, (1, 1, 1, 1), 1),      # one channel a group, two filters each
    (3, 6, 6, 12, 9, 3, 1, 1, (0, 0, 0, 0), 1),      # 1x1: the groups read x's rows in place
    (1, 11, 9, 10, 20, 5, 5, 2, (2, 1, 0, 2), 2),    # asymmetric padding, dilation
    (9, 4, 4, 128, 64, 4, 1, 2, (0, 0, 0, 0), 1),    # 1x1 stride 2, K = 32 a group
]


def _grouped(g, x, wts, bias, attrs):
    names = [g.weight(f"w{i}", w) for i, w in enumerate(wts)]
    return g.op("conv2d", [x, bias], "conv", weight=names, **attrs)


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_grouped_conv2d(tier, threads, rng, activation):
    for b, h, w, c, n, groups, k, s, pad, d in GROUPED:
        per = [_conv_weights(n // groups, k * k * c // groups, seed) for seed in range(groups)]  # each group its own
        for f, (name, _, extra) in enumerate(per[0]):
            g = GraphBuilder()
            x = _to_nhwc(g, g.input("x", "float32", ("b", c, h, w)))
            bias = g.weight("bias", rng.standard_normal(n)) if n % 3 else ""
            attrs = {"kernel": [k, k], "stride": [s, s], "padding": list(pad), "dilation": [d, d]} | extra
            if activation:
                attrs["activation"] = activation
            p = g.program([_grouped(g, x, [grp[f][1] for grp in per], bias, attrs)], {})
            _check(p, _image(rng, b, h, w, c), atol=1e-5, what=f"grouped conv2d {name} {activation} "
                   f"{(b, h, w, c, n, groups, k, s, pad, d)}")


def test_grouped_conv2d_oracle_against_torch(rng):
    torch = pytest.importorskip("torch")
    for b, h, w, c, n, groups, k, s, (pt, pb, pl, pr), d in GROUPED:
        x = _image(rng, b, h, w, c)
        wt = rng.standard_normal((n, c // groups, k, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
        want = torch.nn.functional.conv2d(xp, torch.from_numpy(wt), torch.from_numpy(bias), stride=s, dilation=d,
                                          groups=groups).numpy()
        g = GraphBuilder()
        rows = np.split(wt.transpose(0, 2, 3, 1).reshape(n, -1), groups)
        y = _grouped(g, _to_nhwc(g, g.input("x", "float32", ("b", c, h, w))), [np.ascontiguousarray(r) for r in rows],
                     g.weight("bias", bias), {"kernel": [k, k], "stride": [s, s], "padding": [pt, pb, pl, pr],
                                              "dilation": [d, d]})
        p = g.program([g.op("transpose", [y], "nchw", perm=[0, 3, 1, 2])], {})
        np.testing.assert_allclose(p.reference(x), want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(p(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights, match", [
    ([(3, 24)] * 3, "divide into the 3 groups"),
    ([(4, 36), (3, 36)], "share one format and shape"),
    ([(4, 36), "int8"], "share one format and shape"),
    ([(4, 36)], "a list of one per group"),
    ([(4, 27), (4, 27)], "K = kh"),
])
def test_grouped_conv2d_errors(rng, weights, match):
    g = GraphBuilder()
    x = g.input("x", "float32", (1, 8, 8, 8))
    ws = [rng.standard_normal((4, 36)).astype(np.float32) if w == "int8" else rng.standard_normal(w).astype(np.float32)
          for w in weights]
    ws = [ec.Int8Weight.from_float(w) if spec == "int8" else w for w, spec in zip(ws, weights)]
    g.op("conv2d", [x], "node", weight=[g.weight(f"w{i}", w) for i, w in enumerate(ws)], kernel=[3, 3])
    with pytest.raises(ValueError, match=match):
        p = g.program(["node"], {})
        p(np.zeros((1, 8, 8, 8), np.float32))


# (batch, h, w, c, kernel, stride, padding, dilation)
WINDOWS = [(1, 1, 1, 1, 1, 1, (0, 0, 0, 0), 1), (2, 7, 9, 5, 3, 1, (1, 1, 1, 1), 1),
           (1, 16, 16, 17, 3, 2, (1, 1, 1, 1), 1), (3, 10, 12, 32, 5, 1, (2, 2, 2, 2), 1),
           (1, 14, 14, 129, 5, 2, (2, 2, 2, 2), 1), (9, 5, 5, 8, 3, 1, (1, 0, 1, 0), 2),
           (1, 64, 5, 33, 7, 2, (3, 3, 2, 2), 1), (2, 9, 9, 100, 3, 2, (0, 0, 0, 0), 1),
           (1, 4, 30, 61, 3, 1, (1, 1, 1, 1), 1),
           (1, 6, 41, 19, 5, 2, (2, 2, 2, 2), 1), (2, 5, 40, 24, 3, 2, (1, 1, 1, 1), 1)]


@pytest.mark.parametrize("activation", [None, "relu6", "silu"])
@pytest.mark.parametrize("bias", [False, True])
def test_depthwise(tier, threads, rng, activation, bias):
    for b, h, w, c, k, s, pad, d in WINDOWS:
        g = GraphBuilder()
        x = _to_nhwc(g, g.input("x", "float32", ("b", c, h, w)))
        ins = [x, g.weight("w", rng.standard_normal((k, k, c)))]
        if bias:
            ins.append(g.weight("bias", rng.standard_normal(c)))
        attrs = {"stride": [s, s], "padding": list(pad), "dilation": [d, d]}
        if activation:
            attrs["activation"] = activation
        p = g.program([g.op("depthwise_conv2d", ins, "dw", **attrs)], {})
        _check(p, _image(rng, b, h, w, c), atol=1e-5, what=f"depthwise {activation} {(b, h, w, c, k, s, pad, d)}")


def test_depthwise_oracle_against_torch(rng):
    torch = pytest.importorskip("torch")
    for b, h, w, c, k, s, (pt, pb, pl, pr), d in WINDOWS:
        x = _image(rng, b, h, w, c)
        wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
        xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
        want = torch.nn.functional.conv2d(xp, torch.from_numpy(wt), stride=s, dilation=d, groups=c).numpy()
        got = eref.depthwise(x.transpose(0, 2, 3, 1), wt[:, 0].transpose(1, 2, 0), None, (s, s), (pt, pb, pl, pr), (d, d))
        np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["max", "avg", "avg-exclude-pad"])
def test_pool(tier, threads, rng, mode):
    torch = pytest.importorskip("torch")
    for b, h, w, c, k, s, pad, d in WINDOWS:
        pad = (min(pad[0], k // 2),) * 2 + (min(pad[2], k // 2),) * 2  # at most half the kernel, as torch
        if mode != "max":
            d = 1
        g = GraphBuilder()
        x = _to_nhwc(g, g.input("x", "float32", ("b", c, h, w)))
        attrs = {"mode": mode[:3], "kernel": [k, k], "stride": [s, s], "padding": list(pad)}
        if mode == "max":
            attrs["dilation"] = [d, d]
        if mode == "avg-exclude-pad":
            attrs["count_include_pad"] = False
        y = g.op("pool2d", [x], "pool", **attrs)
        p = g.program([g.op("transpose", [y], "nchw", perm=[0, 3, 1, 2])], {})
        a = _image(rng, b, h, w, c)
        got = _check(p, a, what=f"pool {mode} {(b, h, w, c, k, s, pad, d)}")
        t = torch.from_numpy(a)
        if mode == "max":
            want = torch.nn.functional.max_pool2d(t, k, s, pad[0], dilation=d) if pad[0] == pad[2] else None
        else:
            want = torch.nn.functional.avg_pool2d(t, k, s, pad[0], count_include_pad=mode == "avg") if pad[0] == pad[2] else None
        if want is not None:
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", sorted(["relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid"]))
def test_act(tier, threads, rng, act):
    torch = pytest.importorskip("torch")
    fn = {"relu": torch.relu, "relu6": torch.nn.functional.relu6, "silu": torch.nn.functional.silu,
          "hardswish": torch.nn.functional.hardswish, "hardsigmoid": torch.nn.functional.hardsigmoid,
          "sigmoid": torch.sigmoid}[act]
    for shape in [(1,), (7,), (3, 17, 33), (40000,)]:
        g = GraphBuilder()
        p = g.program([g.op("act", [g.input("x", "float32", shape)], "a", act=act)], {})
        x = (rng.standard_normal(shape) * 5).astype(np.float32)
        got = _check(p, x, atol=1e-6, what=f"{act} {shape}")
        np.testing.assert_allclose(got, fn(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", ["silu", "sigmoid"])
def test_logistic_acts_over_the_whole_exponent_range(tier, act):
    # every integer part of t = -x log2(e) the exponent bits take (|t| <= 126), the clamps past it
    # (|x| > 87.3), the largest floats, and NaN
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional.silu if act == "silu" else torch.sigmoid
    grid = np.arange(-110.0, 110.0, 1.0 / 64, dtype=np.float32)
    x = np.concatenate([grid, grid + np.float32(1 / 3), [0.0, -0.0, 1e-30, -1e-30, 87.3, -87.3, 88.7, -88.7,
                                                         1e4, -1e4, 3.4e38, -3.4e38, np.nan]]).astype(np.float32)
    g = GraphBuilder()
    p = g.program([g.op("act", [g.input("x", "float32", x.shape)], "a", act=act)], {})
    got, want = p(x).astype(np.float64), fn(torch.from_numpy(x.astype(np.float64))).numpy()
    assert np.isnan(got[-1])
    # relative 2e-6; past |x| = 16, where rounding t costs about 6e-8 |x| of relative error, the
    # logistic value within 1e-7 of 0 or 1 (silu: 1e-7 |x|)
    bound = np.where(np.abs(x) < 16, 2e-6 * np.abs(want), 1e-7 * np.maximum(np.abs(x), 1) if act == "silu" else 1e-7)
    err = np.abs(got - want)
    assert (err[:-1] <= bound[:-1]).all(), x[:-1][err[:-1] > bound[:-1]][:5]

def test_channel_scale_and_add_relu(tier, threads, rng):
    """mul by (batch, 1, 1, c): each image by its own channel factors; add + relu as one node."""
    for b, h, w, c in [(1, 1, 1, 1), (2, 5, 7, 3), (3, 16, 16, 40), (2, 64, 64, 17)]:
        g = GraphBuilder()
        x = g.input("x", "float32", (b, h, w, c))
        s = g.input("s", "float32", (b, 1, 1, c))
        r = g.input("r", "float32", (b, h, w, c))
        y = g.op("mul", [x, s], "scale")
        z = g.op("add", [y, r], "res", activation="relu")
        p = g.program([z], {})
        a, f, res = _image(rng, b, h, w, c).reshape(b, h, w, c), rng.standard_normal((b, 1, 1, c)).astype(np.float32), \
            rng.standard_normal((b, h, w, c)).astype(np.float32)
        got = _check(p, a, f, res, what=f"channel scale {(b, h, w, c)}")
        np.testing.assert_allclose(got, np.maximum(a * f + res, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], [0, 2, 1]])
def test_transpose(tier, threads, rng, perm):
    # rows of x (r1) below 8 (each count 1-7: a kernel each), a multiple of 8, and whole strips of 8
    # plus a partial one; columns (r2) below 8, and whole squares of 8 plus a tail
    for shape in [(1, 1, 1, 1), (2, 3, 17, 5), (1, 64, 56, 56), (3, 33, 1, 20), (2, 13, 9, 7), (1, 8, 8, 8),
                  (1, 2, 5, 5), (1, 4, 4, 4), (2, 5, 4, 5), (1, 6, 3, 3), (2, 7, 3, 9)]:
        shape = shape[:len(perm)]
        for dtype in ("float32", "int64"):
            g = GraphBuilder()
            p = g.program([g.op("transpose", [g.input("x", dtype, shape)], "t", perm=perm)], {})
            x = rng.integers(-1000, 1000, shape).astype(dtype)
            np.testing.assert_array_equal(p(x), x.transpose(perm))


@pytest.mark.parametrize("bad, match", [
    ({"op": "conv2d", "attrs": {"kernel": [3, 3], "stride": [0, 1]}}, "stride"),
    ({"op": "conv2d", "attrs": {"kernel": [3]}}, "kernel"),
    ({"op": "conv2d", "attrs": {"kernel": [2, 2]}}, "K = kh"),
    ({"op": "conv2d", "attrs": {"kernel": [3, 3], "dilation": [9, 9]}}, "does not fit"),
    ({"op": "conv2d", "attrs": {"kernel": [3, 3], "activation": "tanh"}}, "activation"),
    ({"op": "pool2d", "attrs": {"mode": "max", "kernel": [3, 3], "padding": [2, 2, 2, 2]}}, "half the kernel"),
    ({"op": "pool2d", "attrs": {"mode": "min", "kernel": [3, 3]}}, "mode"),
    ({"op": "transpose", "attrs": {"perm": [1, 0, 2, 3]}}, "perm"),
])
def test_window_op_errors(rng, bad, match):
    g = GraphBuilder()
    x = g.input("x", "float32", (1, 8, 8, 3))
    attrs = dict(bad["attrs"])
    if bad["op"] == "conv2d":
        attrs["weight"] = g.weight("w", rng.standard_normal((4, 27)))
    g.op(bad["op"], [x], "node", **attrs)
    with pytest.raises(ValueError, match=match):
        p = g.program(["node"], {})
        p(np.zeros((1, 8, 8, 3), np.float32))
