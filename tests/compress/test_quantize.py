"""Quantizers, configs and convert: small cases by hand, exactness of the deployed formats, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress.compress.quantize import (  # noqa: E402
    FakeQuantize,
    QuantConfig,
    QuantSpec,
    calibrate,
    convert,
    fold_batchnorm,
    freeze_observers,
    prepare,
    prepare_qat,
    quantize_with_max_drop,
    sensitivity_report,
)

# NF4 levels as published with QLoRA (4 decimals), the table Int4Weight's "nf4" codebook holds
NF4 = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
       0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


def linear_with(weight, bias=None):
    w = torch.tensor(weight, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if bias is not None:
            m.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return nn.Sequential(m)


def quantize_one(model, spec, **config):
    return convert(prepare(model, QuantConfig(weight=spec, **config)))["0"]


def f32(v):
    return float(np.float32(v))


class Tiny(nn.Module):
    """conv -> bn -> relu -> linear, for the conversion checks (K = 9 and 2 * 6 * 6 = 72: padded groups)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(72, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.bn(self.conv(x)))))


@pytest.fixture
def tiny(torch_single_thread):
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


# --- uniform quantizers by hand --------------------------------------------------------------------


def test_int8_per_channel_and_per_tensor_by_hand():
    model = linear_with([[0.5, -2.0, 1.2], [0.1, 0.3, -0.4]], bias=[0.25, -1.0])
    q = quantize_one(model, QuantSpec())
    # row 0: s = 2/127: 0.5 -> 31.75 -> 32, 1.2 -> 76.2 -> 76; row 1: s = 0.4/127: 0.1 -> 31.75, 0.3 -> 95.25
    assert isinstance(q.weight, ec.Int8Weight)
    assert q.weight.qweight.tolist() == [[32, -127, 76], [32, 95, -127]]
    assert q.weight.scale.tolist() == [f32(2 / 127), f32(0.4 / 127)]
    assert q.bias.tolist() == [0.25, -1.0] and q.kind == "linear"
    t = quantize_one(model, QuantSpec(granularity="tensor"))
    # one s = 2/127: 0.1 -> 6.35, 0.3 -> 19.05, -0.4 -> -25.4
    assert t.weight.qweight.tolist() == [[32, -127, 76], [6, 19, -25]]
    assert t.weight.scale.tolist() == [f32(2 / 127)] and t.weight.granularity == "tensor"


def test_int8_per_channel_matches_int8weight_from_float():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(33, 70, generator=g)
    q = quantize_one(linear_with(w.tolist()), QuantSpec())
    want = ec.Int8Weight.from_float(w.numpy())
    np.testing.assert_array_equal(q.weight.qweight, want.qweight)
    np.testing.assert_array_equal(q.weight.scale, want.scale)


def test_int4_group_symmetric_and_asymmetric_by_hand():
    row = [0.0] * 64
    row[:3] = [0.7, -0.33, 0.04]  # group 0: max |w| 0.7 -> s = fp16(0.7/7) = fp16(0.1) = 0.0999755859375
    row[32] = -1.4  # group 1: s = fp16(0.2) = 0.199951171875
    q = quantize_one(linear_with([row]), QuantSpec(bits=4, granularity="group", group_size=32))
    w = q.weight
    assert isinstance(w, ec.Int4Weight) and w.group_size == 32 and w.symmetric
    assert w.scale.tolist() == [[0.0999755859375, 0.199951171875]]
    codes = np.stack([w.qweight & 15, w.qweight >> 4], -1).reshape(1, 64)
    # 0.7 / s = 7.0017 -> 7; -0.33 / s = -3.3 -> -3; 0.04 / s = 0.4 -> 0; -1.4 / s1 = -7.0017 -> -7; codes + 8
    assert codes[0, :3].tolist() == [15, 5, 8] and codes[0, 32] == 1 and codes[0, 3] == 8
    assert w.to_float()[0, :3].tolist() == [7 * 0.0999755859375, -3 * 0.0999755859375, 0.0]

    row = [0.0] * 32
    row[:2] = [-0.5, 1.0]  # [-0.5, 1.0]: s = fp16(1.5/15) = 0.0999755859375, zp = round(0.5 / s) = 5
    a = quantize_one(linear_with([row]), QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32)).weight
    assert not a.symmetric and a.zero_point.tolist() == [[5]]
    codes = np.stack([a.qweight & 15, a.qweight >> 4], -1).reshape(32)
    assert codes[:3].tolist() == [0, 15, 5]  # -0.5 -> -5 + 5; 1.0 -> 10.002 -> 10 + 5; 0 -> the zero point


def test_int4_asymmetric_group_matches_int4weight_from_float():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 100, generator=g)  # K = 100: the last group of 32 is padded
    q = quantize_one(linear_with(w.tolist()), QuantSpec(bits=4, symmetric=False, granularity="group", group_size=32))
    want = ec.Int4Weight.from_float(w.numpy(), 32, symmetric=False)
    np.testing.assert_array_equal(q.weight.qweight, want.qweight)
    np.testing.assert_array_equal(q.weight.scale, want.scale)
    np.testing.assert_array_equal(q.weight.zero_point, want.zero_point)


def test_nf4_codebook_by_hand_and_against_int4weight():
    row = [0.0] * 32
    row[:4] = [1.0, -1.0, 0.0, 0.5]  # scale = max |w| = 1; 0.5 lies below the midpoint of 0.4407 and 0.5626
    q = quantize_one(linear_with([row]), QuantSpec(bits=4, granularity="group", group_size=32, codebook="nf4"))
    codes = np.stack([q.weight.qweight & 15, q.weight.qweight >> 4], -1).reshape(32)
    assert codes[:4].tolist() == [15, 0, 7, 12]
    np.testing.assert_allclose(q.weight.codebook, NF4, atol=1e-4)  # 4 decimals
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 96, generator=g)
    for codebook, observer, method in (("nf4", "minmax", "rtn"), ("nf4", "mse", "mse"), ("kmeans", "minmax", "rtn")):
        spec = QuantSpec(bits=4, granularity="group", group_size=32, codebook=codebook, observer=observer)
        got = quantize_one(linear_with(w.tolist()), spec).weight
        want = ec.Int4Weight.from_float(w.numpy(), 32, method=method, codebook=codebook)
        np.testing.assert_array_equal(got.to_float(), want.to_float())


def test_kmeans_by_hand():
    # one group, two values: -1 (x16) and 0.3 (x16); scale = max |w| = 1. Lloyd's starts at NF4: -1 sits
    # on level 0, 0.3 is nearest level 11 (0.3379; the midpoint to 0.2461 is 0.292), which moves to 0.3.
    row = [-1.0] * 16 + [0.3] * 16
    q = quantize_one(linear_with([row]), QuantSpec(bits=4, granularity="group", group_size=32, codebook="kmeans"))
    assert q.weight.codebook[0, 0] == -1.0 and q.weight.codebook[0, 11] == np.float32(0.3)
    assert q.weight_float.tolist() == [[-1.0] * 16 + [f32(0.3)] * 16]


def test_kmeans_fits_better_than_nf4():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 128, generator=g) ** 3  # heavy tails: far from NF4's normal quantiles
    err = {}
    for codebook in ("nf4", "kmeans"):
        q = quantize_one(linear_with(w.tolist()), QuantSpec(bits=4, granularity="group", group_size=64, codebook=codebook))
        err[codebook] = float(((q.weight_float - w) ** 2).sum())
    assert q.weight.codebook.shape == (8, 16)
    assert err["kmeans"] < err["nf4"]


def test_low_bits_are_simulated_only():
    model = linear_with([[0.3, -0.6, 0.9, 0.1]])
    q = quantize_one(model, QuantSpec(bits=2))
    # 2-bit symmetric: levels -s, 0, s with s = 0.9: 0.3 -> 0.33 -> 0, -0.6 -> -0.67 -> -1, 0.9 -> 1
    assert q.weight is None and q.format == "simulated"
    assert q.weight_float.tolist() == [[0.0, -f32(0.9), f32(0.9), 0.0]]
    assert QuantSpec(bits=8, symmetric=False).deploy_format is None
    assert QuantSpec(bits=8, granularity="group", group_size=32).deploy_format is None
    assert QuantSpec(bits=4, granularity="tensor").deploy_format == "int4"


# --- convert: bit-exact deployed weights -------------------------------------------------------------


SPECS = {
    "int8-channel": QuantSpec(),
    "int8-tensor": QuantSpec(granularity="tensor"),
    "int8-model": QuantSpec(granularity="model"),
    "int8-mse": QuantSpec(observer="mse"),
    "int4-g32": QuantSpec(bits=4, granularity="group", group_size=32),
    "int4-g64-asym": QuantSpec(bits=4, symmetric=False, granularity="group", group_size=64),
    "int4-g128-percentile": QuantSpec(bits=4, granularity="group", group_size=128, observer="percentile",
                                      observer_args={"percentile": 99.0}),
    "int4-channel": QuantSpec(bits=4),
    "int4-model-asym": QuantSpec(bits=4, symmetric=False, granularity="model"),
    "nf4-g32": QuantSpec(bits=4, granularity="group", group_size=32, codebook="nf4"),
    "kmeans-g64-mse": QuantSpec(bits=4, granularity="group", group_size=64, codebook="kmeans", observer="mse"),
    "int3-channel": QuantSpec(bits=3),
}


@pytest.mark.parametrize("key", list(SPECS))
def test_convert_equals_the_fake_quantized_weights_bit_for_bit(tiny, key):
    prepared = freeze_observers(prepare(tiny, QuantConfig(weight=SPECS[key])))
    simulated = {}
    for name in ("conv", "fc"):
        layer = prepared.get_submodule(name)
        simulated[name] = layer.weight_quant(layer.weight).detach()
    q = convert(prepared)
    for name, w in simulated.items():
        layer = q[name]
        if layer.weight is not None:
            np.testing.assert_array_equal(layer.weight.to_float(), w.reshape(w.shape[0], -1).numpy())
        assert torch.equal(layer.weight_float, w)
        assert torch.equal(q.model.get_submodule(name).weight, w)
    if SPECS[key].granularity == "model":
        scales = {float(np.asarray(q[n].weight.scale).flat[0]) for n in ("conv", "fc")}
        assert len(scales) == 1  # one scale for every weight of the model


def test_convert_layer_info_and_simulation(tiny):
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    config = QuantConfig(activation=QuantSpec(granularity="tensor", symmetric=False), exclude=["conv"])
    q = convert(calibrate(prepare(tiny, config), [x]))
    assert q.float_layers == ["conv"] and list(q.layers) == ["fc"]
    fc = q["fc"]
    assert fc.input_scale > 0 and 0 <= fc.input_zero_point <= 255
    assert isinstance(tiny.bn, nn.BatchNorm2d)  # prepare worked on a copy
    assert isinstance(q.model.bn, nn.Identity)  # BatchNorm folded into conv
    # the kernels, given the deployed weight and the static input scale, compute what the simulation does
    with torch.no_grad():
        features = q.model.flatten(q.model.relu(q.model.bn(q.model.conv(x))))
        want = q.model.fc(features).numpy()
    got = ec.linear(features.numpy(), fc.weight, fc.bias, act_scheme="asymmetric",
                    act_scale=fc.input_scale, act_zero_point=fc.input_zero_point)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "fc" in q.summary() and "int8" in q.summary()


def test_conv_layer_info_and_int4_kernel(tiny):
    q = convert(prepare(tiny, QuantConfig(weight=QuantSpec(bits=4, granularity="group", group_size=32))))
    conv = q["conv"]
    assert conv.kind == "conv2d" and conv.weight.shape == (2, 9)
    assert conv.conv == {"kernel_size": (3, 3), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    x = torch.randn(4, 72, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = q.model.fc(x).numpy()
    got = ec.linear(x.numpy(), q["fc"].weight.with_compute("float"), q["fc"].bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- BatchNorm folding ------------------------------------------------------------------------------


@pytest.mark.parametrize("affine, bias", [(True, True), (False, False)])
def test_fold_batchnorm_matches_eval_mode(affine, bias):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4, affine=affine), nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.2, 3)
        if affine:
            model[1].weight.uniform_(0.5, 2)
            model[1].bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        want = model(x)
        assert fold_batchnorm(model) == [("0", "1")]
        got = model(x)
    assert isinstance(model[1], nn.Identity)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_errors():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="no running statistics"):
        fold_batchnorm(model)
    with pytest.raises(TypeError, match=r"expected \(Conv2d, BatchNorm2d\)"):
        fold_batchnorm(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm2d(2)), [("0", "1")])
    with pytest.raises(ValueError, match=r"pairs: \('0', 'bn'\) does not name two submodules"):
        fold_batchnorm(model, [("0", "bn")])
    with pytest.raises(TypeError, match="pairs: expected a list of"):
        fold_batchnorm(model, ["0", "1"])


# --- configs -------------------------------------------------------------------------------------------


def test_config_overrides_and_exclude_by_pattern():
    int4 = QuantSpec(bits=4, granularity="group", group_size=32)
    act = QuantSpec(granularity="tensor")
    config = QuantConfig(
        activation=act,
        overrides={"block.*": int4, "block.fc2": QuantSpec(granularity="tensor"), "head": {"activation": None}},
        exclude=["block.fc3"],
    )
    plan = config.resolve(["block.fc1", "block.fc2", "block.fc3", "head", "stem"])
    assert plan["block.fc1"] == (int4, act)  # the pattern
    assert plan["block.fc2"] == (QuantSpec(granularity="tensor"), act)  # the exact name wins over the pattern
    assert plan["block.fc3"] is None  # exclude wins over everything
    assert plan["head"] == (QuantSpec(), None)
    assert plan["stem"] == (QuantSpec(), act)
    moved = config.with_layer("block.fc1", QuantSpec())
    assert moved.lookup("block.fc1") == (QuantSpec(), act)
    assert config.with_layer("stem", None).lookup("stem") is None


@pytest.mark.parametrize("make, err, match", [
    (lambda: QuantSpec(bits=9), ValueError, "bits: expected 2..8"),
    (lambda: QuantSpec(bits=True), TypeError, "bits: expected an int"),
    (lambda: QuantSpec(granularity="row"), ValueError, "granularity: expected one of tensor, channel, group, model"),
    (lambda: QuantSpec(granularity="group", group_size=48), ValueError, r"group_size: expected one of \(32, 64, 128\)"),
    (lambda: QuantSpec(granularity="group"), ValueError, "group_size: expected one of"),
    (lambda: QuantSpec(group_size=32), ValueError, "group_size: only with granularity='group'"),
    (lambda: QuantSpec(observer="max"), ValueError, "observer: expected one of minmax"),
    (lambda: QuantSpec(observer_args=[1]), TypeError, "observer_args: expected a dict"),
    (lambda: QuantSpec(codebook="nf8"), ValueError, "codebook: expected None, 'nf4' or 'kmeans'"),
    (lambda: QuantSpec(bits=8, codebook="nf4"), ValueError, "codebook: needs bits=4"),
    (lambda: QuantSpec(bits=4, granularity="group", group_size=32, codebook="nf4", observer="entropy"),
     ValueError, "observer: a codebook takes"),
    (lambda: QuantConfig(weight=8), TypeError, "weight: expected a QuantSpec"),
    (lambda: QuantConfig(activation=QuantSpec()), ValueError, "activation: activations are quantized per tensor"),
    (lambda: QuantConfig(overrides={"fc": 4}), TypeError, r"overrides\['fc'\]: expected a QuantSpec"),
    (lambda: QuantConfig(overrides={"fc": {"bits": 4}}), ValueError, "expected keys 'weight' and/or 'activation'"),
    (lambda: QuantConfig(overrides=[("fc", None)]), TypeError, "overrides: expected a dict"),
    (lambda: QuantConfig(exclude="fc1"), TypeError, "exclude: expected a list of name patterns"),
    (lambda: QuantConfig(fold_batchnorm="yes"), TypeError, "fold_batchnorm: expected a bool"),
])
def test_config_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_pattern_matching_no_layer_is_an_error(tiny):
    with pytest.raises(ValueError, match=r"overrides: pattern 'fc9\*' matches no quantizable layer \(layers: conv, fc\)"):
        prepare(tiny, QuantConfig(overrides={"fc9*": None}))
    with pytest.raises(ValueError, match="exclude: pattern 'convv'"):
        prepare(tiny, QuantConfig(exclude=["convv"]))


# --- workflow errors --------------------------------------------------------------------------------------


def test_workflow_errors(tiny):
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got dict"):
        prepare({"fc": 1})
    with pytest.raises(TypeError, match="config: expected a QuantConfig or None, got QuantSpec"):
        prepare(tiny, QuantSpec())
    with pytest.raises(ValueError, match="model: has no nn.Linear or nn.Conv2d"):
        prepare(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="model: not prepared for quantization"):
        convert(tiny)
    static = prepare(tiny, QuantConfig(activation=QuantSpec(granularity="tensor")))
    with pytest.raises(ValueError, match="model: already prepared"):
        prepare(static)
    with pytest.raises(RuntimeError, match="observer of the activation of 'conv' has seen no data: run calibration"):
        convert(static)
    with pytest.raises(ValueError, match="batches: expected at least one calibration batch"):
        calibrate(static, [])
    with pytest.raises(TypeError, match="batches: expected an iterable of input batches"):
        calibrate(static, torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="batches: expected tensors or"):
        calibrate(static, [np.zeros((2, 1, 8, 8), np.float32)])
    codebook = QuantConfig(weight=QuantSpec(bits=4, granularity="group", group_size=32, codebook="nf4"))
    with pytest.raises(ValueError, match="learnable_scale: not available for codebook"):
        prepare_qat(tiny, codebook, learnable_scale=True)
    with pytest.raises(TypeError, match="learnable_scale: expected a bool"):
        prepare_qat(tiny, learnable_scale=1)
    with pytest.raises(ValueError, match="role: expected 'weight' or 'activation'"):
        FakeQuantize(QuantSpec(), "bias")
    converted = convert(prepare(tiny)).model
    with pytest.raises(ValueError, match="cannot be converted again"):
        convert(converted)


def test_sensitivity_and_max_drop_errors(tiny):
    x = [torch.randn(2, 1, 8, 8)]
    with pytest.raises(TypeError, match="eval_fn: expected a callable"):
        sensitivity_report(tiny, None, x, eval_fn=3)
    with pytest.raises(ValueError, match="max_drop: expected a finite number >= 0"):
        quantize_with_max_drop(tiny, None, x, lambda m: 0.0, -1)
    with pytest.raises(ValueError, match="fallback: expected 'auto'"):
        quantize_with_max_drop(tiny, None, x, lambda m: 0.0, 1.0, fallback="int8")
