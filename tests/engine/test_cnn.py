"""Convolutional networks imported from torch (edgecompress.engine.export / export_cnn): the
architectures of ResNet-18/50, MobileNetV2/V3-Small, EfficientNet-B0 and EfficientNet-Lite0 against
torch (float within 1e-4 of the output norm, int8 within 2%), top-1 agreement on scikit-learn's
bundled photographs, every compression recipe, save / load, and clear errors for what the engine
does not run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress.engine import export, export_cnn, load, zoo  # noqa: E402


def _x(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("name", zoo.MODELS)
def test_float_programs_match_torch(name):
    model = zoo.build(name)
    x = _x((2, 3, 64, 64))
    p = export(model, x)
    with torch.inference_mode():
        want = model(x).numpy()
    y = _x((3, 3, 64, 64), seed=1)  # another batch: a plan of its own
    with torch.inference_mode():
        want_y = model(y).numpy()
    assert _err(p(x.numpy()), want) < 1e-4
    assert _err(p(y.numpy()), want_y) < 1e-4
    assert p.info["error"] < 1e-4


def test_export_fixes_each_winograd_tile_on_the_example_input():
    """Every 3x3 convolution of stride 1 gets the tile winograd_tile_for chooses for its output on the
    example input: on ResNet-18 at 64 x 64, F(4x4) for the 16 x 16 layers, F(2x2) for the smaller."""
    from edgecompress.engine.ops import winograd_tile_for

    x = _x((2, 3, 64, 64))
    p = export(zoo.build("resnet18"), x)
    shapes = p.shapes(x.numpy())
    tiles = {}
    for n in p.nodes:
        if n.op == "conv2d" and n.attrs["kernel"] == [3, 3] and n.attrs.get("stride", [1, 1]) == [1, 1]:
            b, ho, wo, _ = shapes[n.outputs[0]][0]
            assert n.attrs["winograd"] == winograd_tile_for(b, ho, wo), n.name
            tiles[ho] = n.attrs["winograd"]
    assert tiles == {16: 4, 8: 2, 4: 2, 2: 2}


def _photos():
    """scikit-learn's two sample photographs, center 224 x 224 crops, normalized as ImageNet models expect."""
    datasets = pytest.importorskip("sklearn.datasets")
    imgs = []
    for img in datasets.load_sample_images().images:
        h, w, _ = img.shape
        crop = img[(h - 224) // 2:(h + 224) // 2, (w - 224) // 2:(w + 224) // 2].astype(np.float32) / 255
        imgs.append(((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(imgs).astype(np.float32))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
@pytest.mark.parametrize("recipe", ["int8", "int8-static"])
def test_int8_programs_on_photographs(name, recipe):
    model = zoo.build(name)
    x = _photos()
    p = export(model, x, recipe)
    with torch.inference_mode():
        want = model(x).numpy()
    got = p(x.numpy())
    assert _err(got, want) < 0.02
    assert (got.argmax(1) == want.argmax(1)).all()
    # compressed: every convolution but the depthwise ones holds an int8 weight
    formats = {type(w).__name__ for k, w in p.weights.items() if k.endswith(".weight") and not isinstance(w, np.ndarray)}
    assert formats == {"Int8Weight"}
    static = [n for n in p.nodes if n.op in ("conv2d", "linear") and "act_scale" in n.attrs]
    assert bool(static) == (recipe == "int8-static")


@pytest.mark.parametrize("recipe", ["int4-g32", "sparse-75+int8", "2:4", "lowrank-0.5", "nf4"])
def test_other_recipes_run_as_compress_made_them(recipe):
    """The program computes what the compressed torch model computes (whatever that costs in accuracy:
    one-shot pruning of random weights warns, which is not this test's subject)."""
    from edgecompress.compress import CompressionWarning, compress
    from edgecompress.engine.cnn import trace

    model = zoo.build("resnet18")
    x = _x((1, 3, 64, 64))
    gm = trace(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        p = export(model, x, recipe, faster=False)  # every product as compress made it
        compress(gm, recipe, example_inputs=(x,), guard=False, progress=False)
    with torch.inference_mode():
        want = gm(x).numpy()
    assert _err(p(x.numpy()), want) < 1e-3


def test_save_and_load(tmp_path):
    model = zoo.build("mobilenet_v3_small")
    x = _x((1, 3, 64, 64))
    p = export(model, x, "int8-static")
    p.save(tmp_path / "m.safetensors")
    q = load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(q(x.numpy()), p(x.numpy()))


@pytest.mark.parametrize("recipe", [None, "int8-static"])
@pytest.mark.parametrize("name, blocks", [("resnet18", 8), ("mobilenet_v2", 10), ("efficientnet_b0", 9)])
def test_residual_adds_run_in_the_convolution(name, blocks, recipe):
    """Each residual block's add (and the ReLU after it) is the epilogue of the convolution before
    it: no add node is left."""
    model = zoo.build(name)
    x = _x((2, 3, 64, 64))
    p = export(model, x, recipe, faster=False)
    assert "add" not in {n.op for n in p.nodes}
    assert sum(n.op == "conv2d" and len(n.inputs) == 3 for n in p.nodes) == blocks
    with torch.inference_mode():
        want = model(x).numpy()
    assert _err(p(x.numpy()), want) < (1e-5 if recipe is None else 0.02)


class _Adds(nn.Module):
    """Adds that must stay add nodes, and two that fuse."""

    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(6))

    def forward(self, x):
        a = self.c[0](x)
        kept_two_readers = a + x  # a is read again below
        b = self.c[1](a).relu()
        kept_activation = b + x  # the convolution has its ReLU already
        d = self.c[2](x)
        kept_not_last = d + x.sigmoid()  # the sigmoid node came after the convolution
        fused_last = self.c[3](kept_not_last) + kept_activation  # the convolution just before the add
        fused_relu = (kept_two_readers + self.c[4](fused_last)).relu()  # either operand, ReLU after
        return fused_relu + self.c[5](a)


def test_which_adds_become_residuals():
    model = _Adds().eval()
    x = _x((2, 4, 9, 7))
    p = export(model, x)
    with torch.inference_mode():
        want = model(x).numpy()
    assert _err(p(x.numpy()), want) < 1e-5
    residual = {n.name: n for n in p.nodes if n.op == "conv2d" and len(n.inputs) == 3}
    assert sorted(residual) == ["c_3", "c_4", "c_5"]
    assert residual["c_4"].attrs.get("activation") == "relu"
    assert sum(n.op == "add" for n in p.nodes) == 3


class _Odd(nn.Module):
    """A BatchNorm after an add (not foldable), a flatten of a 3x3 map by view, cat, avg pool."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = self.bn(y + y.sigmoid())
        y = self.pool(torch.nn.functional.hardswish(y))
        y = nn.functional.adaptive_avg_pool2d(y, 4)
        return self.fc(y.view(y.size(0), -1)).relu()


def test_layers_around_the_convolutions():
    model = _Odd().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    x = _x((2, 3, 16, 16))
    p = export(model, x)
    with torch.inference_mode():
        want = model(x).numpy()
    assert _err(p(x.numpy()), want) < 1e-5
    ops = {n.op for n in p.nodes}
    assert {"concat", "mul", "add", "act", "pool2d", "transpose"} <= ops


@pytest.mark.parametrize("recipe", [None, "int8-static"])
@pytest.mark.parametrize("head", ["image", "flatten", "pooled"])
def test_outputs_that_are_images_or_flattened_images(recipe, head):
    """A backbone's feature map (channels first, as torch gives it), the same flattened in torch's
    (c, h, w) order, and a pooled vector flattened: each comes back with torch's shape and values."""
    layers = [nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 1)]
    layers += {"image": [], "flatten": [nn.Flatten()], "pooled": [nn.AdaptiveAvgPool2d(1), nn.Flatten()]}[head]
    model = nn.Sequential(*layers).eval()
    x = _x((2, 3, 10, 12))
    p = export(model, x, recipe)
    with torch.inference_mode():
        want = model(x).numpy()
    got = p(x.numpy())
    assert got.shape == want.shape
    assert _err(got, want) < (1e-5 if recipe is None else 0.02)


class _ResNeXtBlock(nn.Module):
    """A ResNeXt bottleneck (1x1, a 3x3 of 8 groups with stride 2, 1x1, projection shortcut) before
    global pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 128, 1, bias=False), nn.BatchNorm2d(128))
        self.short = nn.Sequential(nn.Conv2d(32, 128, 1, 2, bias=False), nn.BatchNorm2d(128))
        self.head = nn.Sequential(nn.Conv2d(128, 64, 3, padding=1, groups=4), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(self.body(x) + self.short(x)))


@pytest.mark.parametrize("recipe", [None, "int8", "int8-static", "sparse-75+int8", "int4-g32"])
def test_grouped_convolutions(recipe, tmp_path):
    """A model with grouped convolutions: float and int8 against the float model (1e-4, 2%), the
    pruned and 4-bit ones against the model compress made; every group's weight compressed."""
    from edgecompress.compress import CompressionWarning, compress
    from edgecompress.engine.cnn import trace

    torch.manual_seed(0)
    model = _ResNeXtBlock().eval()
    for m in model.modules():  # BatchNorm statistics of a trained model, not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    x = _x((2, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        p = export(model, x, recipe, faster=False)
        gm = trace(model)
        if recipe is not None:
            compress(gm, recipe, example_inputs=(x,), calibration_data=x, guard=False, progress=False)
    grouped = [n for n in p.nodes if n.op == "conv2d" and len(n.weight_names) > 1]
    assert [len(n.weight_names) for n in grouped] == [8, 4]
    kinds = {type(p.weights[name]).__name__ for n in grouped for name in n.weight_names}
    assert kinds == ({"ndarray"} if recipe is None else {"Int4Weight"} if recipe == "int4-g32" else
                     {"SparseWeight"} if recipe.startswith("sparse") else {"Int8Weight"})
    with torch.inference_mode():
        want_float, want = model(x).numpy(), gm(x).numpy()
    got = p(x.numpy())
    if recipe in (None, "int8", "int8-static"):
        assert _err(got, want_float) < (1e-4 if recipe is None else 0.02)
    else:
        assert _err(got, want) < 1e-3
    p.save(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(load(tmp_path / "m.safetensors")(x.numpy()), got)


class _Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.t = nn.Tanh()

    def forward(self, x):
        return self.t(self.c(x))


@pytest.mark.parametrize("model, x, match", [
    (_Tanh(), (1, 3, 8, 8), r"module Tanh \(module 't'\) is not supported"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2, ceil_mode=True)), (1, 3, 9, 9), "ceil_mode"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")), (1, 3, 8, 8), "padding_mode"),
])
def test_unsupported_layers_are_named(model, x, match):
    with pytest.raises(ValueError, match=match):
        export(model.eval(), _x(x))


def test_bad_example_input():
    with pytest.raises(ValueError, match="example_input"):
        export_cnn(zoo.build("resnet18"), np.zeros((3, 224, 224), np.float32))
    with pytest.raises(TypeError, match="model"):
        export_cnn("resnet18", np.zeros((1, 3, 8, 8), np.float32))


def test_threads_agree():
    model = zoo.build("efficientnet_lite0")
    x = _x((1, 3, 96, 96))
    p = export(model, x, "int8")
    before = ec.get_num_threads()
    try:
        ec.set_num_threads(1)
        one = p(x.numpy())
        ec.set_num_threads(2)
        np.testing.assert_array_equal(p(x.numpy()), one)
    finally:
        ec.set_num_threads(before)


def test_the_readme_cnn_example_runs_verbatim():
    import pathlib

    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Convolutional networks"):]
    start = section.index("```python\n") + len("```python\n")
    namespace: dict = {}
    exec(compile(section[start:section.index("```\n", start)], "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (1, 1000) and namespace["program"].info["error"] < 0.02


def test_profile_by_node_sums_a_program_node_s_native_nodes():
    """A 1x1 convolution runs as a native linear node ("name/linear" in the profile's nodes); by_node
    gives every product under its program node's name, which keep_faster judges."""
    model = zoo.build("mobilenet_v3_small")
    x = _x((1, 3, 64, 64))
    prof = export(model, x, "int8-static", faster=False).profile(x.numpy(), rounds=1)
    lowered = [name for name, op, _ in prof["nodes"] if name.endswith("/linear")]
    assert lowered and all(name.split("/")[0] in prof["by_node"] for name in lowered)
    assert sum(prof["by_node"].values()) == pytest.approx(prof["native"], rel=1e-9)


def test_keep_faster_is_not_fooled_by_a_slow_phase_of_the_machine(monkeypatch):
    """Every node ties, but the machine runs 3x slower during the first profile of the compressed
    program: a verdict from one profile of each program would put every product back."""
    from edgecompress.engine.cnn import keep_faster

    model = zoo.build("mobilenet_v3_small")
    x = _x((1, 3, 64, 64))
    dense = export(model, x)
    prog = export(model, x, "int8-static", faster=False)
    names = [n.name for n in prog.nodes]
    calls = {"prog": 0}

    def slow_once(*a, **k):
        calls["prog"] += 1
        return {"by_node": {n: 3.0 if calls["prog"] == 1 else 1.0 for n in names}}

    monkeypatch.setattr(prog, "profile", slow_once)
    monkeypatch.setattr(dense, "profile", lambda *a, **k: {"by_node": {n: 1.0 for n in names}})
    assert keep_faster(prog, dense, x.numpy()) == []
    assert calls["prog"] == 10  # one profile a round, in turns with the float program's


def test_keep_faster_puts_back_the_float_weight_of_slower_products(monkeypatch):
    from edgecompress.engine.cnn import keep_faster

    model = zoo.build("mobilenet_v3_small")
    x = _x((1, 3, 64, 64))
    dense = export(model, x)
    prog = export(model, x, "int8-static", faster=False)
    assert "float32_products" not in prog.info
    slow = next(n for n in prog.nodes if n.op == "conv2d")
    fast = next(n for n in prog.nodes if n.op == "linear" and "act_scale" in n.attrs)
    times = {n.name: 1.0 for n in prog.nodes}
    times[slow.name] = 2.0  # the compressed stem "measures" twice the float one; the rest ties
    monkeypatch.setattr(prog, "profile", lambda *a, **k: {"by_node": dict(times)})
    monkeypatch.setattr(dense, "profile", lambda *a, **k: {"by_node": {n: 1.0 for n in times}})
    before = prog(x.numpy())
    assert keep_faster(prog, dense, x.numpy()) == [slow.name]
    assert isinstance(prog.weights[slow.attrs["weight"]], np.ndarray) and "act_scale" not in slow.attrs
    assert isinstance(prog.weights[fast.attrs["weight"]], ec.Int8Weight) and "act_scale" in fast.attrs
    after = prog(x.numpy())  # planned again: the stem now runs in float32
    assert not np.array_equal(after, before) and _err(after, dense(x.numpy())) < 0.02
