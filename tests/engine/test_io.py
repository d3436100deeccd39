"""Saving and loading programs: identical outputs after a round trip, loading without torch, and
damaged or crafted files refused with ValueError (FileNotFoundError for a missing path), never a
crash.

Damage comes from fixed seeds, in two kinds (as tests/nn/test_fuzz_files.py does for modules):
- bytes changed after saving (truncation, flips in the header or the data): load refuses the file,
  or (a flip in the header's padding, say) the program it loads gives the original outputs bit for bit;
- crafted files: the program description edited and the digest made to match again, as anyone can;
  the checks behind the digest must refuse them.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import edgecompress as ec
import edgecompress.engine as engine
from edgecompress.engine import io as eio
from edgecompress.engine.builder import GraphBuilder

pytest.importorskip("safetensors")
from safetensors.numpy import load_file, save_file  # noqa: E402

VOCAB = 40


def _every_format_program(seed=0):
    """A small encoder-like program (torch-free) with a weight of every format the engine stores:
    float and int8 embedding tables, float32 / Int8Weight (static input scale) / Int4Weight (uniform
    and nf4) / SparseWeight (csr int8, bsr4x1 float, 2:4) / low-rank linears, attention and pooling."""
    rng = np.random.default_rng(seed)
    h, heads = 24, 3

    def w(n, k):
        return rng.standard_normal((n, k)).astype(np.float32) / np.sqrt(k)

    def pruned(n, k):
        return np.where(rng.random((n, k)) < 0.6, 0, w(n, k)).astype(np.float32)

    two_four = w(h, h)
    two_four.reshape(h, -1, 4)[..., :2] = 0
    g = GraphBuilder()
    ids = g.input("input_ids", "int64", ("batch", "seq"))
    mask = g.input("attention_mask", "int64", ("batch", "seq"))
    q8 = rng.integers(-127, 128, (VOCAB, h)).astype(np.int8)
    x = g.op("embedding", [ids, g.weight("emb.table", q8), g.weight("emb.scale", rng.uniform(0.01, 0.02, VOCAB))], "emb")
    pos = g.op("position_ids", [ids], "pos", mode="padded", base=1)
    x = g.op("add", [x, g.op("embedding", [pos, g.weight("pos.table", w(64, h))], "pos_emb")], "add_pos")
    x = g.op("layernorm", [x, "", g.weight("ln0.g", np.ones(h)), g.weight("ln0.b", np.zeros(h))], "ln0", eps=1e-12)
    qkv = g.linear(x, ec.Int8Weight.from_float(w(3 * h, h)), rng.standard_normal(3 * h), "qkv", act_scale=0.05,
                   act_zero_point=3)
    ctx = g.op("attention", [qkv, mask], "attn", heads=heads, kv_heads=heads, head_dim=h // heads, causal=False,
               scale=0.3)
    a = g.linear(ctx, ec.Int4Weight.from_float(w(h, h), 32), None, "out")
    x = g.op("layernorm", [a, x, g.weight("ln1.g", np.ones(h))], "ln1", eps=1e-5)
    f = g.linear(x, ec.SparseWeight.from_float(pruned(40, h), "csr", "int8"), rng.standard_normal(40), "ffn1", "gelu")
    f = g.linear(f, ec.SparseWeight.from_float(pruned(h, 40), "bsr4x1"), None, "ffn2")
    f = g.linear(f, ec.SparseWeight.from_float(two_four, "2:4"), None, "ffn3", "relu")
    f = g.linear(f, ec.LowRankWeight.from_float(w(h, h), rank=4, dtype="int8"), None, "ffn4")
    f = g.linear(f, ec.Int4Weight.from_float(w(h, h), 32, codebook="nf4", compute="float"), None, "ffn5")
    f = g.linear(f, w(h, h), rng.standard_normal(h), "ffn6")
    x = g.op("rmsnorm", [f, x, g.weight("ln2.g", np.ones(h))], "ln2", eps=1e-6)
    return g.program([g.op("mean_pool", [x, mask], "pool"), g.op("softmax", [x], "probs")], {"name": "every format"})


def _inputs(seed=0, batch=2, seq=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, (batch, seq))
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq // 2:] = 0
    ids[mask == 0] = 1
    return ids, mask


def _same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, program, inputs, outputs) of the every-format program saved once."""
    program = _every_format_program()
    path = tmp_path_factory.mktemp("io") / "program.safetensors"
    program.save(path)
    inputs = _inputs()
    return path, program, inputs, program(*inputs)


def test_round_trip_every_format(saved, tmp_path):
    path, program, inputs, want = saved
    loaded = engine.load(path)
    _same(loaded(*inputs), want)
    _same(loaded.reference(*inputs), program.reference(*inputs))
    assert [n.to_json() for n in loaded.nodes] == [json.loads(json.dumps(n.to_json())) for n in program.nodes]
    assert loaded.info == program.info and loaded.outputs == program.outputs
    # the weights are the file's memory: read-only views, not copies
    assert not loaded.weights["ln0.g"].flags.writeable and loaded.weights["ln0.g"].base is not None
    # and saved again, the same file
    loaded.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_round_trip_other_shapes(saved):
    """A loaded program plans for other input shapes too (the plan is per shape, not in the file)."""
    path, program, _, _ = saved
    loaded = engine.load(path)
    for batch, seq in ((1, 1), (3, 17), (1, 64)):
        inputs = _inputs(batch, batch, seq)
        _same(loaded(*inputs), program(*inputs))


@pytest.mark.parametrize("recipe", [None, "int8", "sparse-75+int8"])
def test_round_trip_exported_bert(tmp_path, recipe):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import warnings

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids, mask = _inputs(3, 2, 11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compress's notes about layers it keeps in float
        program = engine.export(model, {"input_ids": ids, "attention_mask": mask}, recipe)
    program.save(tmp_path / "bert.safetensors")
    loaded = engine.load(tmp_path / "bert.safetensors")
    _same([loaded(ids, mask)], [program(ids, mask)])
    assert sorted(type(w).__name__ for w in loaded.weights.values()) == sorted(
        type(w).__name__ for w in program.weights.values())


_TORCH_FREE = """
import sys
sys.modules["torch"] = None  # import torch fails from here on
import numpy as np
import edgecompress.engine
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("import torch worked")
program = edgecompress.engine.load(sys.argv[1])
ids, mask = np.load(sys.argv[2])
np.save(sys.argv[3], program(ids, mask)[0])
assert sys.modules["torch"] is None
"""


def test_load_and_run_without_torch(saved, tmp_path):
    path, _, inputs, want = saved
    np.save(tmp_path / "inputs.npy", np.stack(inputs))
    done = subprocess.run([sys.executable, "-c", _TORCH_FREE, str(path), str(tmp_path / "inputs.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want[0])


# ---- damaged files ----


def _load_refused_or_same(path, inputs, want):
    """load refuses the file with ValueError, or what it loads gives ``want``; returns True if refused."""
    try:
        program = engine.load(path)
    except ValueError:
        return True
    _same(program(*inputs), want)
    return False


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        engine.load(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="no file at"):
        engine.load(tmp_path)  # a directory
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        engine.load(tmp_path / "empty")
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike, got int"):
        engine.load(3)


def test_truncated_files(saved, tmp_path):
    path, _, _, _ = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    rng = np.random.default_rng(1)
    # every byte of the first 16 and around the header's end, then spread over the data
    cuts = set(range(17)) | set(range(8 + n - 8, 8 + n + 9)) | set(rng.integers(0, len(data), 60).tolist())
    cuts |= {len(data) - 1, len(data) - 4}
    target = tmp_path / "cut.safetensors"
    for cut in sorted(cuts):
        if cut == 0:
            continue  # an empty file: test_missing_and_empty_paths
        target.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            engine.load(target)


@pytest.mark.parametrize("where", ["header", "data"])
def test_byte_flips(saved, tmp_path, where):
    path, _, inputs, want = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    lo, hi = (0, 8 + n) if where == "header" else (8 + n, len(data))
    rng = np.random.default_rng(2 if where == "header" else 3)
    target = tmp_path / "flipped.safetensors"
    refused = 0
    for _ in range(80):
        damaged = bytearray(data)
        for pos in rng.integers(lo, hi, rng.integers(1, 4)):
            damaged[pos] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(damaged))
        refused += _load_refused_or_same(target, inputs, want)
    assert refused >= 60  # most flips land on something the checks see (the digest covers all of it)
    if where == "data":
        assert refused == 80  # every data byte is under the digest


# ---- crafted files: the description edited, the digest recomputed ----


def _craft(src, dst, edit=None, edit_tensors=None):
    """A copy of the program file ``src`` at ``dst`` with ``edit(doc)`` / ``edit_tensors(tensors)``
    applied and the digest recomputed so that it matches again."""
    from safetensors import safe_open

    with safe_open(str(src), framework="numpy") as f:
        doc = json.loads(f.metadata()[eio.KEY])
    tensors = load_file(str(src))
    if edit is not None:
        edit(doc)
    if edit_tensors is not None:
        edit_tensors(tensors)
    doc["sha256"] = eio._digest(doc, tensors)
    save_file(tensors, str(dst), metadata={eio.KEY: json.dumps(doc)})


def _node(doc, name):
    return next(n for n in doc["nodes"] if n["name"] == name)


def _set(path, value):
    """An edit that sets doc[path...] = value (path: keys and indices; a str key naming a node by name
    after "nodes")."""

    def edit(doc):
        obj = doc
        for k in path[:-1]:
            obj = _node(doc, k) if obj is doc["nodes"] and isinstance(k, str) else obj[k]
        obj[path[-1]] = value

    return edit


def _delete(path):
    def edit(doc):
        obj = doc
        for k in path[:-1]:
            obj = _node(doc, k) if obj is doc["nodes"] and isinstance(k, str) else obj[k]
        del obj[path[-1]]

    return edit


# (id, edit of the description, words of the message)
CRAFTED = [
    ("unknown-op", _set(["nodes", "ln1", "op"], "conv3d"), "unknown op 'conv3d'"),
    ("newer-version", _set(["version"], 2), "version 2, newer"),
    ("bool-version", _set(["version"], True), "no valid program version"),
    ("other-format", _set(["format"], "onnx"), "not an edgecompress program"),
    ("missing-key", _delete(["nodes"]), "has keys"),
    ("extra-key", _set(["extra"], 1), "has keys"),
    ("missing-attr", _delete(["nodes", "ln1", "attrs", "eps"]), "missing attributes ['eps']"),
    ("attrs-not-table", _set(["nodes", "ln1", "attrs"], [1, 2]), "malformed"),
    ("input-not-defined", _set(["nodes", "ln1", "inputs", 0], "nowhere"), "'nowhere' is not defined"),
    ("input-not-str", _set(["nodes", "ln1", "inputs", 0], 3), "malformed"),
    ("too-many-inputs", _set(["nodes", "probs", "inputs"], ["ln2", "ln2"]), "expected 1..1 inputs"),
    ("output-twice", _set(["nodes", "ln1", "outputs"], ["ln0"]), "defined twice"),
    ("program-output-unknown", _set(["outputs"], ["nothing"]), "program output 'nothing'"),
    ("program-output-twice", _set(["outputs"], ["pool", "pool"]), "program output 'pool': listed twice"),
    ("program-output-not-str", _set(["outputs"], [["pool"]]), "malformed"),
    ("input-dtype", _set(["inputs", 0, "dtype"], "int8"), "expected dtype float32 or int64"),
    ("input-dims", _set(["inputs", 0, "dims"], [1.5, "seq"]), "malformed"),
    ("linear-weight-missing", _set(["nodes", "ffn6", "attrs", "weight"], "nothing"), "is not a float32 matrix"),
    ("linear-weight-vector", _set(["nodes", "ffn6", "attrs", "weight"], "ln1.g"), "is not a float32 matrix"),
    ("weights-not-table", _set(["weights"], []), "'weights' is not a table"),
    ("weight-unknown-format", _set(["weights", "qkv.weight", "format"], "int3"), "unknown format"),
    ("weight-format-version", _set(["weights", "qkv.weight", "version"], 99), "version 99 is not supported"),
    ("weight-missing-tensor", _set(["weights", "nothing"], None), "weight 'nothing': no tensor"),
    ("weight-table-drops-tensor", _delete(["weights", "ln1.g"]), "tensors no weight uses"),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_descriptions(saved, tmp_path, edit, words):
    path, _, _, _ = saved
    _craft(path, tmp_path / "crafted.safetensors", edit)
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        engine.load(tmp_path / "crafted.safetensors")


def test_crafting_without_change_loads(saved, tmp_path):
    """The crafting itself is faithful: with no edit the file loads and runs as the original."""
    path, _, inputs, want = saved
    _craft(path, tmp_path / "crafted.safetensors")
    _same(engine.load(tmp_path / "crafted.safetensors")(*inputs), want)


def _tensor_edit(name, change):
    def edit(tensors):
        tensors[name] = change(tensors[name].copy())

    return edit


def _bump(a, index, value):
    a.reshape(-1)[index] = value
    return a


# (id, tensor edit, words): index arrays out of their bounds and other array damage the formats check
CRAFTED_TENSORS = [
    ("csr-index-past-k", _tensor_edit("ffn1.weight/indices", lambda a: _bump(a, -1, 60000)), "indices"),
    ("csr-indptr-decreasing", _tensor_edit("ffn1.weight/indptr", lambda a: _bump(a, 1, 10**6)), "indptr"),
    ("csr-indptr-negative", _tensor_edit("ffn1.weight/indptr", lambda a: _bump(a, 1, -5)), "indptr"),
    ("bsr-index-past-k", _tensor_edit("ffn2.weight/indices", lambda a: _bump(a, 0, 1000)), "indices"),
    ("nm-meta-bad-position", _tensor_edit("ffn3.weight/meta", lambda a: _bump(a, 0, 0b00000000)), "meta"),
    ("int8-qweight-minus-128", _tensor_edit("qkv.weight/qweight", lambda a: _bump(a, 0, -128)), "-128"),
    ("int8-scale-nan", _tensor_edit("qkv.weight/scale", lambda a: _bump(a, 0, np.nan)), "finite"),
    ("int4-wrong-shape", _tensor_edit("out.weight/scale", lambda a: a[:-1]), "scale"),
    ("float-weight-wrong-dtype", _tensor_edit("ffn6.weight", lambda a: a.astype(np.float16)), "float32 matrix"),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in CRAFTED_TENSORS], ids=[c[0] for c in CRAFTED_TENSORS])
def test_crafted_tensors(saved, tmp_path, edit, words):
    path, _, _, _ = saved
    _craft(path, tmp_path / "crafted.safetensors", edit_tensors=edit)
    with pytest.raises(ValueError, match=words):
        engine.load(tmp_path / "crafted.safetensors")


# (id, edit, words) of attributes of the wrong type or range: refused when the file is loaded
BAD_ATTRS = [
    ("eps-str", _set(["nodes", "ln1", "attrs", "eps"], "small"), "eps"),
    ("eps-negative", _set(["nodes", "ln1", "attrs", "eps"], -1.0), "eps"),
    ("heads-str", _set(["nodes", "attn", "attrs", "heads"], "3"), "heads"),
    ("heads-zero", _set(["nodes", "attn", "attrs", "heads"], 0), "heads"),
    ("causal-str", _set(["nodes", "attn", "attrs", "causal"], "no"), "causal"),
    ("scale-str", _set(["nodes", "attn", "attrs", "scale"], "0.3"), "scale"),
    ("layout-unknown", _set(["nodes", "attn", "attrs", "layout"], "split"), "layout"),
    ("activation-unknown", _set(["nodes", "ffn1", "attrs", "activation"], "swish"), "activation"),
    ("act-scale-str", _set(["nodes", "qkv", "attrs", "act_scale"], "0.05"), "act_scale"),
    ("act-scale-zero", _set(["nodes", "qkv", "attrs", "act_scale"], 0.0), "act_scale"),
    ("act-zero-point-range", _set(["nodes", "qkv", "attrs", "act_zero_point"], 300), "act_zero_point"),
    ("mode-unknown", _set(["nodes", "pos", "attrs", "mode"], "rotary"), "mode"),
    ("base-huge", _set(["nodes", "pos", "attrs", "base"], 2**70), "base"),
    ("unknown-attribute", _set(["nodes", "ln1", "attrs", "epsilon"], 1e-5), "unknown attribute 'epsilon'"),
    ("act-scale-on-int4", _set(["nodes", "out", "attrs", "act_scale"], 0.1), "act_scale applies to an Int8Weight"),
    ("zero-point-alone", _delete(["nodes", "qkv", "attrs", "act_scale"]), "act_zero_point needs act_scale"),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in BAD_ATTRS], ids=[c[0] for c in BAD_ATTRS])
def test_crafted_attributes(saved, tmp_path, edit, words):
    path, _, _, _ = saved
    _craft(path, tmp_path / "crafted.safetensors", edit)
    with pytest.raises(ValueError, match=words):
        engine.load(tmp_path / "crafted.safetensors")


def test_crafted_constant_of_a_format_as_an_operand(saved, tmp_path):
    """A node reading a compressed weight as a value (only linear reads those): refused."""
    path, _, inputs, _ = saved
    _craft(path, tmp_path / "crafted.safetensors", _set(["nodes", "add_pos", "inputs", 1], "out.weight"))
    with pytest.raises(ValueError, match="out.weight"):
        program = engine.load(tmp_path / "crafted.safetensors")
        program(*inputs)


def test_header_edits_without_digest(saved, tmp_path):
    """Edits of the safetensors header itself (not re-digested): offsets, dtypes, shapes, JSON."""
    path, _, _, _ = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = "ffn6.weight"
    edits = [
        lambda h: h[name].update(data_offsets=[h[name]["data_offsets"][0], h[name]["data_offsets"][1] + 4]),
        lambda h: h[name].update(data_offsets=[10**12, 10**12 + 4]),
        lambda h: h[name].update(data_offsets=[-4, 0]),
        lambda h: h[name].update(dtype="F64"),
        lambda h: h[name].update(dtype="BF16"),
        lambda h: h[name].update(shape=[24, 25]),
        lambda h: h[name].update(shape=[-1, 24]),
        lambda h: h.update({name: "not a table"}),
        lambda h: h.update({"__metadata__": {"edgecompress.program": "{not json"}}),
        lambda h: h.update({"__metadata__": {}}),
        lambda h: h.update({"__metadata__": {"edgecompress.program": json.dumps([1, 2])}}),
    ]
    target = tmp_path / "edited.safetensors"
    for k, edit in enumerate(edits):
        h = json.loads(json.dumps(header))
        edit(h)
        text = json.dumps(h).encode()
        text += b" " * (-len(text) % 8)
        target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
        with pytest.raises(ValueError):
            engine.load(target)
    # a header length past the file, and a non-object header
    target.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(ValueError, match="does not fit"):
        engine.load(target)
    target.write_bytes(struct.pack("<Q", 8) + b"[1, 2]  " + data[8 + n:])
    with pytest.raises(ValueError, match="not a JSON object"):
        engine.load(target)
    assert os.path.getsize(path) == len(data)  # the original untouched


def test_save_into_a_missing_directory_names_it(tmp_path):
    program = _every_format_program()
    with pytest.raises(FileNotFoundError, match="no directory"):
        program.save(tmp_path / "missing" / "p.safetensors")
