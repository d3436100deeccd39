"""Mutated saved files of every weight format: loading refuses them cleanly or gives the same model.

Two kinds of damage, each from fixed seeds:

- Changes made after saving (byte flips anywhere, truncation, edits of the safetensors header: dtypes,
  shapes, offsets, the manifest's values): ``load`` raises ValueError / TypeError / FileNotFoundError,
  or the model it loads gives the original outputs, bit for bit.
- Crafted files: the same header and manifest edits with the file's digest made to match again, as
  anyone can. Such a file may describe another valid model (another activation scale, say), so the
  requirement is what the format checks guarantee: only ValueError / TypeError, a loaded model runs,
  and ``edgecompress report`` prints a table or a one-line error (exit code 1), never a traceback.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors import SafetensorError  # noqa: E402
from safetensors.torch import load as load_bytes  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from edgecompress import reference as ref  # noqa: E402
from edgecompress import serialization  # noqa: E402
from edgecompress.cli import main  # noqa: E402
from nn_oracle import prune_  # noqa: E402

REFUSALS = (ValueError, TypeError, FileNotFoundError)
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "BOOL", "F8_E4M3", "X"]
K = 70  # not a multiple of 4 or of any int4 group: every format has padding past K

# (name, module class, from_float options, out_features) of the heads on the K features
HEADS = [
    ("int8_channel", enn.Int8Linear, {}, 6),
    ("int8_static", enn.Int8Linear, {"granularity": "tensor", "act_scale": 0.05, "act_zero_point": 120}, 5),
    ("int4_sym", enn.Int4Linear, {}, 5),
    ("int4_asym", enn.Int4Linear, {"group_size": 64, "symmetric": False}, 5),
    ("int4_kmeans_float", enn.Int4Linear, {"codebook": "kmeans", "compute": "float"}, 5),
    ("csr", enn.SparseLinear, {}, 5),
    ("bsr4x1", enn.SparseLinear, {"format": "bsr4x1"}, 6),
    ("bsr8x1", enn.SparseLinear, {"format": "bsr8x1"}, 5),
    ("nm24", enn.SparseLinear, {"format": "2:4"}, 5),
    ("int8_csr", enn.SparseLinear, {"dtype": "int8"}, 5),
    ("int8_bsr1x4", enn.SparseLinear, {"format": "bsr1x4", "dtype": "int8"}, 5),
    ("lowrank", enn.LowRankLinear, {"rank": 4}, 5),
    ("lowrank_int8", enn.LowRankLinear, {"rank": 4, "dtype": "int8"}, 5),
]


class Net(torch.nn.Module):
    """Convolutions of every family, float layers with buffers, and one head per linear variant."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1))
        self.features = torch.nn.Linear(64, K)
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(K, n) for name, _, _, n in HEADS})

    def forward(self, x):
        h = torch.relu(self.features(self.convs(x).flatten(1)))
        return torch.cat([head(h) for head in self.heads.values()], dim=1)


def _fresh():
    torch.manual_seed(1)
    return Net().eval()


def _two_of_four(linear):
    """Keep the 2 largest of every 4 consecutive weights along K (K padded to whole groups)."""
    w = linear.weight.data
    padded = torch.nn.functional.pad(w, (0, -K % 4)).view(w.shape[0], -1, 4)
    keep = torch.zeros_like(padded, dtype=torch.bool).scatter_(-1, padded.abs().topk(2, dim=-1).indices, True)
    w.mul_(keep.view(w.shape[0], -1)[:, :K])
    return linear


def _compressed():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.convs[1].running_mean.uniform_(-1, 1)
    net.convs[0] = enn.Int8Conv2d.from_float(net.convs[0], act_scale=0.02)
    net.convs[3] = enn.Int4Conv2d.from_float(net.convs[3], codebook="nf4")
    net.convs[4] = enn.SparseConv2d.from_float(prune_(net.convs[4]), dtype="int8")
    net.convs[5] = enn.LowRankConv2d.from_float(net.convs[5], rank=2)
    for name, cls, options, _ in HEADS:
        head = net.heads[name]
        if cls is enn.SparseLinear:
            head = _two_of_four(head) if options.get("format") == "2:4" else prune_(head)
        net.heads[name] = cls.from_float(head, **options)
    return net


X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "net.safetensors"
    ec.save(_compressed(), path, recipe={"default": "int8"})
    model = ec.load(path, _fresh())
    with torch.no_grad():
        return path.read_bytes(), model(X)


def _split(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) + -len(text) % 8) + text + b" " * (-len(text) % 8) + body


def _resigned(data):
    """The file with its digest computed again over its (changed) content, where it can be read."""
    try:
        header, body = _split(data)
        manifest = json.loads(header["__metadata__"]["edgecompress"])
        manifest["sha256"] = serialization._digest(manifest, load_bytes(data))
    except (ValueError, TypeError, KeyError, SafetensorError):
        return data
    header["__metadata__"]["edgecompress"] = json.dumps(manifest)
    return _join(header, body)


def _paths(value, path=()):
    """Every (path, value) inside a JSON value, containers included."""
    yield path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, v in items:
        yield from _paths(v, path + (key,))


def _replacement(rng, old):
    choices = [None, True, 0, -1, 1, 3, 2**31, 2**64, 1e308, float("inf"), float("nan"), 0.5, -0.0, "", "x",
               "hwc", "chw", "csr", "float", "int8", [], {}, [1], [0, 0], [2**40, 2], {"a": 1},
               json.loads("[" * 200 + "]" * 200)]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        choices += [old + 1, old - 1, old * 2, -old, float(old)]
    if isinstance(old, str):
        choices += [old + "x", old[:-1], old.upper()]
    return choices[rng.integers(len(choices))]


def _edit_manifest(rng, manifest):
    """One random change of a manifest: a value replaced, a key removed, renamed or added."""
    paths = [p for p, _ in _paths(manifest) if p]
    path = paths[rng.integers(len(paths))]
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    key, kind = path[-1], rng.integers(4)
    if kind == 0 or isinstance(parent, list):
        parent[key] = _replacement(rng, parent[key])
    elif kind == 1:
        del parent[key]
    elif kind == 2:
        parent[key + "_"] = parent.pop(key)
    else:
        parent["extra"] = parent[key]


def _edit_header(rng, header):
    """One random change of a tensor entry of the safetensors header: dtype, shape or offsets."""
    keys = [k for k in header if k != "__metadata__"]
    entry = header[keys[rng.integers(len(keys))]]
    kind = rng.integers(3)
    if kind == 0:
        entry["dtype"] = DTYPES[rng.integers(len(DTYPES))]
    elif kind == 1:
        shape = entry["shape"]
        options = [shape[::-1], shape + [1], shape[:-1], [int(np.prod(shape))], [0] + shape, [-1] + shape,
                   [2**63] + shape, [s + 1 for s in shape], [1.5] * len(shape), "x"]
        entry["shape"] = options[rng.integers(len(options))]
    else:
        other = header[keys[rng.integers(len(keys))]]["data_offsets"]
        options = [other, [entry["data_offsets"][0] + 1, entry["data_offsets"][1]],
                   [entry["data_offsets"][0], entry["data_offsets"][1] + 4], [0, 0], [-1, 4], [2**63, 2**64]]
        entry["data_offsets"] = options[rng.integers(len(options))]


def _check_kernels_follow_the_arrays(model):
    """Each weight of a loaded model computes what its canonical arrays say (its format's oracle):
    what a column listed twice, a value in the padding or an overflowing codebook would break."""
    rng = np.random.default_rng(5)
    for module in model.modules():
        for w in getattr(module, "weights", ()):
            x = rng.standard_normal((3, w.shape[1])).astype(np.float32)
            got = ec.linear(x, w)
            if isinstance(w, ec.Int4Weight) and w.compute == "int8":
                exact = ref.linear_int4(x, w.qweight, w.scale, w.zero_point, w.codebook)
            elif isinstance(w, ec.SparseWeight) and w.dtype == "int8":  # the dense int8 path, bit for bit
                exact = ec.linear(x, ec.Int8Weight(w._dense_blocks(), w.scale))
            elif isinstance(w, (ec.Int4Weight, ec.SparseWeight)):  # float arithmetic
                dense = w.to_float()
                want = ref.linear_sparse(x, dense).astype(np.float64)
                near = np.abs(got - want) <= ref.int4_float_tolerance(x, dense)
                assert (near | (got == want) | (np.isnan(got) & np.isnan(want))).all(), repr(w)
                continue
            else:
                continue
            np.testing.assert_array_equal(got, exact, err_msg=repr(w))


class _Loader:
    """Loads files into a fresh model, reused while load refuses them (a refusal leaves the model as
    it was, which the tests of load check): the model loaded, or None when load refused the file."""

    def __init__(self):
        self.model = _fresh()

    def __call__(self, path):
        try:
            ec.load(path, self.model)
        except REFUSALS:
            return None
        model, self.model = self.model, _fresh()
        return model


def _outputs(model):
    with torch.no_grad():
        return model(X)


def test_damaged_files_are_refused_or_give_the_original_outputs(original, tmp_path):
    data, want = original
    rng = np.random.default_rng(0)
    header, body = _split(data)
    path = tmp_path / "m.safetensors"
    cases = []
    for _ in range(1200):  # byte flips anywhere (the header is about a third of this small file)
        b = bytearray(data)
        b[rng.integers(len(b))] ^= int(rng.integers(1, 256))
        cases.append(("flip", bytes(b)))
    for n in rng.integers(0, len(data), 100):
        cases.append(("cut", data[:n]))
    for _ in range(300):
        h = json.loads(json.dumps(header))
        _edit_header(rng, h)
        cases.append(("header", _join(h, body)))
    for _ in range(300):
        h = json.loads(json.dumps(header))
        manifest = json.loads(h["__metadata__"]["edgecompress"])
        _edit_manifest(rng, manifest)
        h["__metadata__"]["edgecompress"] = json.dumps(manifest)
        cases.append(("manifest", _join(h, body)))
    loaded, load = 0, _Loader()
    for i, (kind, case) in enumerate(cases):
        path.write_bytes(case)
        try:
            model = load(path)
            got = None if model is None else _outputs(model)
        except Exception as e:  # noqa: BLE001 (the failure names the case)
            raise AssertionError(f"case {i} ({kind}): {type(e).__name__}: {e}") from e
        if got is not None:
            loaded += 1
            assert torch.equal(got, want), f"case {i} ({kind}) loads another model"
    assert 0 < loaded < len(cases) // 4  # some flips hit nothing that matters (JSON whitespace, padding)


def test_crafted_files_are_refused_cleanly_or_load_a_model_that_runs(original, tmp_path, capsys):
    data, want = original
    rng = np.random.default_rng(1)
    header, body = _split(data)
    path = tmp_path / "m.safetensors"
    outcomes, load = {"refused": 0, "loaded": 0, "same": 0}, _Loader()
    for i in range(1000):
        h, b = json.loads(json.dumps(header)), bytearray(body)
        if i % 3 == 0:
            _edit_header(rng, h)
        elif i % 3 == 1:
            manifest = json.loads(h["__metadata__"]["edgecompress"])
            _edit_manifest(rng, manifest)
            h["__metadata__"]["edgecompress"] = json.dumps(manifest)
        else:  # the arrays' bytes: indices, offsets, codes, scales
            for pos in rng.integers(len(b), size=int(rng.integers(1, 4))):
                b[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(_resigned(_join(h, bytes(b))))
        try:
            model = load(path)
            got = None if model is None else _outputs(model)
            if model is not None:
                _check_kernels_follow_the_arrays(model)
            code = main(["report", str(path)])
        except Exception as e:  # noqa: BLE001 (the failure names the case)
            raise AssertionError(f"case {i}: {type(e).__name__}: {e}") from e
        out, err = capsys.readouterr()
        assert code in (0, 1) and (code == 0 or (err.startswith("edgecompress report: ") and err.count("\n") == 1)), (i, err)
        outcomes["refused" if got is None else "same" if torch.equal(got, want) else "loaded"] += 1
        if i % 3 == 0 and got is not None:  # dtypes, shapes and offsets are all checked
            assert torch.equal(got, want), f"case {i}: a header edit loads another model"
    # most edits are refused; the rest are harmless (the recipe) or another valid model (a scale)
    assert outcomes["refused"] > 600 and outcomes["same"] > 0, outcomes
