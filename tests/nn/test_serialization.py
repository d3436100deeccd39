from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from edgecompress import serialization  # noqa: E402
from nn_oracle import prune_  # noqa: E402


class Net(torch.nn.Module):
    """Every module type at some depth, between float layers with parameters and buffers."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.convs = torch.nn.ModuleList([
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=2),
            torch.nn.Conv2d(8, 8, 1),
            torch.nn.Conv2d(8, 6, 3, stride=2, padding="valid", bias=False),
        ])
        self.norm = torch.nn.LayerNorm(6 * 3 * 3)
        self.head = torch.nn.Sequential(torch.nn.Linear(6 * 3 * 3, 40), torch.nn.ReLU(), torch.nn.Linear(40, 33),
                                        torch.nn.Linear(33, 20), torch.nn.Linear(20, 10, bias=False))

    def forward(self, x):
        x = self.stem(x)
        for c in self.convs:
            x = torch.relu(c(x))
        return self.head(self.norm(x.flatten(1)))


def _fresh(seed=1):
    torch.manual_seed(seed)
    return Net().eval()


def _compressed(seed=0, patch_order="hwc"):
    net = _fresh(seed)
    with torch.no_grad():  # non-default float state, so loading it is visible
        net.stem[1].running_mean.uniform_(-1, 1)
        net.stem[1].running_var.uniform_(0.5, 2)
        net.norm.weight.uniform_(0.5, 2)
    net.stem[0] = enn.Int8Conv2d.from_float(net.stem[0], patch_order=patch_order)
    net.convs[0] = enn.Int4Conv2d.from_float(net.convs[0], codebook="nf4", patch_order=patch_order)
    net.convs[1] = enn.SparseConv2d.from_float(prune_(net.convs[1]), dtype="int8", patch_order=patch_order)
    net.convs[2] = enn.LowRankConv2d.from_float(net.convs[2], rank=4, patch_order=patch_order)
    net.head[0] = enn.Int8Linear.from_float(net.head[0], granularity="tensor")
    net.head[2] = enn.Int4Linear.from_float(net.head[2], group_size=64, symmetric=False)
    net.head[3] = enn.SparseLinear.from_float(prune_(net.head[3]), format="bsr4x1")
    net.head[4] = enn.LowRankLinear.from_float(net.head[4], energy=0.9, dtype="int8")
    return net


COMPRESSED_PATHS = ["stem.0", "convs.0", "convs.1", "convs.2", "head.0", "head.2", "head.3", "head.4"]
CONV_PATHS = COMPRESSED_PATHS[:4]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    net = _compressed()
    path = tmp_path_factory.mktemp("ser") / "net.safetensors"
    ec.save(net, path, recipe={"quantize": {"stem.0": "int8"}, "note": "test"})
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x)
    return path, x, y


def _rewrite(src, dst, change_manifest=None, change_tensors=None):
    """Copy a saved file with its manifest and/or tensors changed, and its digest made to match (as
    anyone can: the digest catches damage, the checks behind it catch crafted content)."""
    tensors = load_file(str(src))
    with open(src, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    manifest = json.loads(header["__metadata__"]["edgecompress"])
    if change_manifest:
        change_manifest(manifest)
    if change_tensors:
        change_tensors(tensors)
    if "sha256" in manifest:
        manifest["sha256"] = serialization._digest(manifest, tensors)
    save_file(tensors, str(dst), metadata={"edgecompress": json.dumps(manifest)})
    return dst


def test_save_then_load_into_a_fresh_model_gives_identical_outputs(saved):
    path, x, y = saved
    model = _fresh()
    assert ec.load(path, model) is model
    with torch.no_grad():
        assert torch.equal(model(x), y)
    for p in COMPRESSED_PATHS:
        assert isinstance(model.get_submodule(p), enn.CompressedModule)
    assert type(model.head[1]) is torch.nn.ReLU and type(model.norm) is torch.nn.LayerNorm


def test_loading_into_an_already_compressed_model_replaces_its_weights(saved):
    path, x, y = saved
    model = _compressed(seed=5)
    ec.load(path, model)
    with torch.no_grad():
        assert torch.equal(model(x), y)


def test_the_manifest_records_modules_formats_versions_and_recipe(saved):
    path, _, _ = saved
    manifest = serialization.read_manifest(path)
    assert manifest["format"] == "edgecompress" and manifest["version"] == serialization.FILE_VERSION
    assert manifest["edgecompress_version"] == ec.__version__
    assert list(manifest["modules"]) == COMPRESSED_PATHS
    head4 = manifest["modules"]["head.4"]
    assert head4["module"] == "LowRankLinear" and head4["weights"][0]["format"] == "lowrank"
    assert head4["weights"][0]["version"] == ec.LowRankWeight.VERSION
    assert [m["format"] for m in manifest["modules"]["convs.0"]["weights"]] == ["int4", "int4"]  # 2 groups
    for p in CONV_PATHS:
        assert manifest["modules"][p]["version"] == (3 if p == "stem.0" else 2)  # stem.0: Int8Conv2d
        assert manifest["modules"][p]["patch_order"] == "hwc"
    assert "patch_order" not in manifest["modules"]["head.0"] and manifest["modules"]["head.0"]["version"] == 2
    assert manifest["modules"]["head.0"]["input_quant"] is None and "input_quant" not in manifest["modules"]["head.2"]
    assert manifest["recipe"] == {"quantize": {"stem.0": "int8"}, "note": "test"}


def _as_version_1(manifest):
    """A manifest as edgecompress wrote it before conv states named their patch order (file version 1,
    without a digest)."""
    del manifest["sha256"], manifest["report"], manifest["tied"]  # (the first version 1 files had no report either)
    manifest["version"] = 1
    for p in CONV_PATHS:
        del manifest["modules"][p]["patch_order"]
        manifest["modules"][p]["version"] = 1
    del manifest["modules"]["stem.0"]["input_quant"]  # (then left out when the input was quantized dynamically)


def test_a_file_from_before_patch_orders_loads_in_torchs_order(tmp_path):
    net = _compressed(patch_order="chw")
    ec.save(net, tmp_path / "chw.safetensors")
    old = _rewrite(tmp_path / "chw.safetensors", tmp_path / "old.safetensors", change_manifest=_as_version_1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
    for model in (_fresh(), _compressed(seed=5)):  # float layers to swap, or hwc modules to take the weights
        ec.load(old, model)
        assert [model.get_submodule(p).patch_order for p in CONV_PATHS] == ["chw"] * 4
        with torch.no_grad():
            assert torch.equal(model(x), want)
    bad = _rewrite(tmp_path / "chw.safetensors", tmp_path / "bad.safetensors",
                   change_manifest=lambda m: m["modules"]["convs.2"].update(patch_order="hcw"))
    with pytest.raises(ValueError, match="'convs.2': patch_order: expected one of .*, got 'hcw'"):
        ec.load(bad, _fresh())


def test_the_file_is_safetensors_not_pickle(saved):
    path, _, _ = saved
    data = path.read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    assert set(header["__metadata__"]) == {"edgecompress"}
    assert header["head.0.weight.qweight"]["dtype"] == "I8" and header["stem.1.running_var"]["dtype"] == "F32"
    assert "convs.1.weight.indices" in header and header["convs.1.weight.indices"]["dtype"] == "U16"


def test_a_model_without_compressed_modules_and_tied_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied: safetensors would refuse shared memory without a copy
    ec.save(model, tmp_path / "m.safetensors")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    ec.load(tmp_path / "m.safetensors", fresh)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    manifest = serialization.read_manifest(tmp_path / "m.safetensors")
    assert manifest["modules"] == {}
    # the tied weight is stored once (a language model's head and embedding were stored twice)
    assert manifest["tied"] == {"1.weight": "0.weight"}
    with safe_open(tmp_path / "m.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == ["0.bias", "0.weight", "1.bias"]


def test_import_edgecompress_does_not_import_torch():
    code = "import sys, edgecompress; assert 'torch' not in sys.modules; edgecompress.save; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert ec.save is serialization.save and ec.load is serialization.load
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ec.nothing  # noqa: B018


def test_save_refuses_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got dict"):
        ec.save({}, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike, got int"):
        ec.save(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="recipe: expected a JSON-able value, got set"):
        ec.save(torch.nn.Linear(2, 2), tmp_path / "m.safetensors", recipe={1, 2})

    class WithExtraState(torch.nn.Module):
        def get_extra_state(self):
            return {"anything": object()}

        def set_extra_state(self, state):
            pass

    with pytest.raises(ValueError, match=r"'_extra_state' is a dict, not a tensor; .* \(no pickle\)"):
        ec.save(WithExtraState(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_load_refuses_missing_truncated_and_foreign_files(saved, tmp_path):
    path, _, _ = saved
    with pytest.raises(FileNotFoundError, match="path: no file at"):
        ec.load(tmp_path / "absent.safetensors", _fresh())
    with pytest.raises(FileNotFoundError, match="path: no file at"):
        ec.load(tmp_path, _fresh())  # a directory
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        ec.load(path, None)
    data = path.read_bytes()
    for n in (len(data) - 1, len(data) // 2, 7):
        (tmp_path / "cut.safetensors").write_bytes(data[:n])
        with pytest.raises(ValueError, match="not a complete safetensors file"):
            ec.load(tmp_path / "cut.safetensors", _fresh())
    save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="has no edgecompress manifest"):
        ec.load(tmp_path / "plain.safetensors", _fresh())
    save_file({"a": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={"edgecompress": "{"})
    with pytest.raises(ValueError, match="not valid JSON"):
        ec.load(tmp_path / "bad.safetensors", _fresh())


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(version=3), "file version 3, newer than this edgecompress reads"),
    (lambda m: m["modules"]["head.0"].update(version=9), "'head.0': Int8Linear state version 9 is newer"),
    (lambda m: m["modules"]["convs.0"]["weights"][1].update(version=3),
     "'convs.0': weight format 'int4' version 3 is newer"),
    (lambda m: m["modules"]["convs.1"]["weights"][0].update(version=3),
     "'convs.1': weight format 'sparse' version 3 is newer"),
    (lambda m: m["modules"]["head.2"].update(module="Int9Linear"), "'head.2': unknown module type 'Int9Linear'"),
    (lambda m: m["modules"]["head.2"]["config"].update(out_features=34),
     "'head.2': the weights make .* the saved configuration says"),
    (lambda m: m["modules"].update({"head.9": m["modules"]["head.0"]}),
     "'head.9': saved as Int8Linear, but the model has no module there"),
    (lambda m: m["modules"].update({"norm": m["modules"]["head.0"]}),
     "'norm': saved as Int8Linear; expected the model to have Int8Linear or the Linear it replaces there, got LayerNorm"),
    (lambda m: m.update(modules=[]), "no valid 'modules' table"),
])
def test_load_refuses_newer_versions_and_manifests_that_do_not_match(saved, tmp_path, change, match):
    path, _, _ = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", change_manifest=change)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        ec.load(bad, model)
    # nothing changed: the model is checked against the whole file first
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.head[0]) is torch.nn.Linear


def test_load_refuses_a_model_of_another_architecture(saved, tmp_path):
    path, _, _ = saved
    model = _fresh()
    model.head[0] = torch.nn.Linear(6 * 3 * 3, 41)
    with pytest.raises(ValueError, match="'head.0': saved Int8Linear .*'out_features': 40.* does not match .*'out_features': 41"):
        ec.load(path, model)
    model = _fresh()
    model.norm = torch.nn.LayerNorm(6 * 3 * 3, elementwise_affine=False)
    with pytest.raises(ValueError, match=r"does not match the model: missing \[\], unexpected \['norm.bias', 'norm.weight'\]"):
        ec.load(path, model)
    model = _fresh()
    model.stem[1] = torch.nn.BatchNorm2d(9)
    model.stem[0] = torch.nn.Conv2d(3, 9, 3, padding=1)
    with pytest.raises(ValueError, match="'stem.0': saved Int8Conv2d"):
        ec.load(path, model)
    model = _fresh()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"missing \['extra.bias', 'extra.weight'\]"):
        ec.load(path, model)
    bad = _rewrite(path, tmp_path / "t.safetensors", change_tensors=lambda t: t.update({"head.0.weight.other": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"'head.0': d: unknown arrays \['other'\] for format 'int8'"):
        ec.load(bad, _fresh())
    bad = _rewrite(path, tmp_path / "t.safetensors", change_tensors=lambda t: t.update({"head.0.other": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"'head.0': unexpected tensors \['other'\]"):
        ec.load(bad, _fresh())
    bad = _rewrite(path, tmp_path / "t.safetensors", change_tensors=lambda t: t.pop("head.3.weight.values"))
    with pytest.raises(ValueError, match="'head.3': d: missing array 'values'"):
        ec.load(bad, _fresh())
    bad = _rewrite(path, tmp_path / "t.safetensors", change_tensors=lambda t: t.update({"norm.weight": torch.zeros(5)}))
    with pytest.raises(ValueError, match=r"'norm.weight' has shape \(5,\) in the file, \(54,\) in the model"):
        ec.load(bad, _fresh())


def test_a_compressed_root_module_round_trips_in_place(tmp_path):
    m = enn.Int4Linear.from_float(torch.nn.Linear(40, 6), codebook="nf4")
    ec.save(m, tmp_path / "m.safetensors")
    fresh = enn.Int4Linear.from_float(torch.nn.Linear(40, 6))
    assert ec.load(tmp_path / "m.safetensors", fresh) is fresh
    x = torch.randn(3, 40)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    with pytest.raises(ValueError, match=r"'': saved as Int4Linear; .*Int4Linear \(the root module is not swapped\)"):
        ec.load(tmp_path / "m.safetensors", torch.nn.Linear(40, 6))


def _with_header(src, dst, change):
    """Copy a saved file with its safetensors header JSON changed by ``change`` (the data as it is)."""
    data = src.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return dst


def _manifest_text(header):
    return header["__metadata__"]["edgecompress"]


@pytest.mark.parametrize("change, match", [
    (None, None),  # a value nested 100,000 deep: json raised RecursionError
    (lambda m: m["modules"]["head.3"]["weights"][0].update(shape=[20, float("inf")]),  # OverflowError before
     r"'head.3': d: expected a 'shape' \[N, K\] of ints in metadata, got \[20, inf\]"),
    (lambda m: m.update(recpe=None), r"has the keys \[.*'recpe'.*\], expected"),
    (lambda m: m["modules"]["convs.1"].pop("patch_order"),
     r"'convs.1': SparseConv2d state version 2: expected the keys .* missing \['patch_order'\]"),
    (lambda m: m["modules"]["convs.1"].update(patch_ordr=m["modules"]["convs.1"].pop("patch_order")),
     r"'convs.1': SparseConv2d state version 2: .* unknown \['patch_ordr'\]"),
    (lambda m: m["modules"]["stem.0"].pop("input_quant"),
     r"'stem.0': Int8Conv2d state version 3: .* missing \['input_quant'\]"),
    (lambda m: m["modules"]["head.2"]["weights"][0].update(compte="float"),
     r"'head.2': d: metadata of format 'int4': .*unknown \['compte'\]"),
])
def test_manifests_that_loaded_silently_wrong_or_crashed_are_refused(saved, tmp_path, change, match):
    path, _, _ = saved
    if change is None:
        bad = _with_header(path, tmp_path / "deep.safetensors", lambda h: h["__metadata__"].update(
            edgecompress=_manifest_text(h)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"))
        match = "the manifest of .* is not valid JSON"
    else:
        bad = _rewrite(path, tmp_path / "bad.safetensors", change_manifest=change)
    with pytest.raises(ValueError, match=match):
        ec.load(bad, _fresh())


def test_a_float_tensor_relabelled_as_int32_is_refused(saved, tmp_path):
    path, _, _ = saved
    for key in ("norm.weight", "head.0.bias"):  # a float tensor of the rest, and a compressed module's bias
        bad = _rewrite(path, tmp_path / "i32.safetensors", change_tensors=lambda t: t.update({key: t[key].view(torch.int32)}))
        with pytest.raises(ValueError, match="has dtype torch.int32 in the file, torch.float32 in the model|"
                                             "'head.0': bias: expected a float32 tensor, got int32"):
            ec.load(bad, _fresh())


def test_any_change_to_the_content_of_a_saved_file_is_refused(saved, tmp_path):
    path, x, y = saved
    data = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    offsets = json.loads(data[8:header_end])["norm.weight"]["data_offsets"]
    data[header_end + offsets[0] + 2] ^= 0x01  # a float of the rest: still a valid file, another model
    (tmp_path / "flip.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its sha256 digest"):
        ec.load(tmp_path / "flip.safetensors", _fresh())
    digit = _with_header(path, tmp_path / "digit.safetensors", lambda h: h["__metadata__"].update(
        edgecompress=_manifest_text(h).replace('"k": 40', '"k": 39')))  # head.2's int4 K, a valid value
    with pytest.raises(ValueError, match="does not match its sha256 digest"):
        ec.load(digit, _fresh())
    model = _fresh()
    ec.load(_with_header(path, tmp_path / "spaces.safetensors", lambda h: h["__metadata__"].update(
        edgecompress=_manifest_text(h).replace(", ", ",  "))), model)  # the same content
    with torch.no_grad():
        assert torch.equal(model(x), y)
