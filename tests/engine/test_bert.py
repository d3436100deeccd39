"""Whole programs imported from Hugging Face encoders (random weights, small configurations) against
torch, and against their own numpy specification."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgecompress.engine as engine  # noqa: E402
from edgecompress import Int4Weight, Int8Weight, SparseWeight  # noqa: E402

VOCAB, PAD = 100, 1
# (family, hidden, heads): head_dim 32, 8 (12 heads), 32, 16; intermediate sizes not multiples of 16
CONFIGS = [("bert", 64, 2), ("bert", 96, 12), ("roberta", 96, 3), ("distilbert", 64, 4)]


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine shared with the kernels' pool
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _model(family, hidden, heads, hidden_act="gelu"):
    """A 2-layer encoder with random weights (built once per configuration; tests change copies)."""
    torch.manual_seed(hidden + heads)
    common = dict(vocab_size=VOCAB, pad_token_id=PAD)
    if family == "distilbert":
        config = transformers.DistilBertConfig(dim=hidden, n_layers=2, n_heads=heads, hidden_dim=hidden * 2 + 6,
                                               max_position_embeddings=64, activation=hidden_act, **common)
        model = transformers.DistilBertModel(config)
    else:
        cls = {"bert": (transformers.BertConfig, transformers.BertModel),
               "roberta": (transformers.RobertaConfig, transformers.RobertaModel)}[family]
        config = cls[0](hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads, hidden_act=hidden_act,
                        intermediate_size=hidden * 2 + 6, max_position_embeddings=64 + PAD + 1,
                        type_vocab_size=2, **common)
        model = cls[1](config, add_pooling_layer=False)
    return model.eval()


def _inputs(seq, seed=0):
    """Batch 3: a full row, a half-padded row (padding at the end, padding ids where masked) and an
    all-padding row."""
    rng = np.random.default_rng(seed + seq)
    ids = rng.integers(PAD + 1, VOCAB, (3, seq))
    mask = (np.arange(seq)[None, :] < np.array([seq, (seq + 1) // 2, 0])[:, None]).astype(np.int64)
    ids[mask == 0] = PAD
    return ids, mask


def _torch(model, ids, mask, attn="sdpa", **extra):
    """last_hidden_state of ``model`` with the attention implementation ``attn``."""
    before = model.config._attn_implementation
    model.config._attn_implementation = attn
    try:
        with torch.inference_mode():
            kw = {k: torch.from_numpy(v) for k, v in extra.items()}
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **kw)[0].numpy()
    finally:
        model.config._attn_implementation = before


def _rel(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _export(model, ids, mask, recipe=None, **kw):
    with warnings.catch_warnings():
        # compress warns about layers it keeps in float (e.g. too small to pay); not what is tested here
        warnings.simplefilter("ignore")
        return engine.export(model, {"input_ids": ids, "attention_mask": mask}, recipe, **kw)


@pytest.mark.parametrize("family,hidden,heads", CONFIGS, ids=[f"{f}-{h}-{n}" for f, h, n in CONFIGS])
@pytest.mark.parametrize("seq", [1, 7, 33])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_float_program_matches_torch(family, hidden, heads, seq, packed):
    """Within 1e-5 of torch's float32 output norm (measured: about 1e-7) on the tokens.
    Packed (the default): each sequence runs on its tokens alone, and padded positions are exactly 0.
    Padded (packed=False, the batch as transformers runs it): also on the padded positions of rows with
    at least one token; a row that is all padding matches transformers' eager attention (every key
    masked by the same additive minimum: uniform attention), which the engine follows, and not
    necessarily its sdpa path, which treats such a row its own way."""
    model = _model(family, hidden, heads)
    ids, mask = _inputs(seq)
    program = _export(model, ids, mask, packed=packed)
    assert program.info["packed"] is packed
    got = program(ids, mask)
    want = _torch(model, ids, mask)
    keep = mask != 0
    assert _rel(got[keep], want[keep]) < 1e-5
    if packed:
        assert not got[~keep].any()
    else:
        assert _rel(got[:2], want[:2]) < 1e-5  # rows 0 and 1, their padded positions included
        assert _rel(got, _torch(model, ids, mask, "eager")) < 1e-5  # all positions, the all-padding row too
    assert program.info["error"] < 1e-5 and program.report is None
    assert _rel(got, program.reference(ids, mask)) < 1e-6


@pytest.mark.parametrize("family,hidden,heads", CONFIGS, ids=[f"{f}-{h}-{n}" for f, h, n in CONFIGS])
@pytest.mark.parametrize("seq", [1, 7, 33])
def test_int8_program_within_one_percent(family, hidden, heads, seq):
    model = _model(family, hidden, heads)
    ids, mask = _inputs(seq)
    program = _export(model, ids, mask, "int8")
    assert any(isinstance(w, Int8Weight) for w in program.weights.values())
    got = program(ids, mask)
    want = _torch(model, ids, mask, "eager")
    keep = mask != 0
    assert _rel(got[keep], want[keep]) < 0.01
    assert not got[~keep].any()  # packed: padded positions are 0
    assert program.report is not None and program.info["error"] < 0.01
    # native against the specification: the quantization of the activations sees float32 values that
    # differ by rounding, so now and then an activation lands one int8 step away (error scale * |w| on
    # one product term), amplified through the layers; 1e-3 of the output's magnitude bounds it
    # (measured: up to about 1e-4)
    ref = program.reference(ids, mask)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


# recipe -> (weight check, bound of the error against torch's float output on the tokens). The bounds
# are about 3x the measured errors of these random 2-layer models (in parentheses): random weights are
# the worst case for pruning and low rank (no structure to keep), and the residual stream and the
# LayerNorms keep most of the output. 10% is where export itself warns.
RECIPES = {
    "int8-static": (lambda w: isinstance(w, Int8Weight), 0.01),  # (5e-4)
    "int4-g32": (lambda w: isinstance(w, Int4Weight) and w.codebook is None, 0.02),  # (4e-3)
    "nf4": (lambda w: isinstance(w, Int4Weight) and w.codebook is not None, 0.02),  # (4e-3)
    "sparse-75+int8": (lambda w: isinstance(w, SparseWeight) and w.dtype == "int8", 0.1),  # (3e-2)
    "2:4": (lambda w: isinstance(w, SparseWeight) and w.pattern == (2, 4), 0.1),  # (2e-2)
    "lowrank-0.5": (None, 0.1),  # (3e-2; low-rank factors are float32 arrays, two linear nodes each)
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipes(recipe):
    check, bound = RECIPES[recipe]
    model = _model("bert", 64, 2)
    ids, mask = _inputs(17)
    kw = {"calibration_data": [torch.from_numpy(_inputs(17, seed=1)[0])]} if recipe == "int8-static" else {}
    program = _export(model, ids, mask, recipe, **kw)
    linears = [n for n in program.nodes if n.op == "linear"]
    if check is None:  # 8 products of 2 layers, each now two
        assert len(linears) == 16 + 8
        assert all(n.attrs.get("layout") == "separate" for n in program.nodes if n.op == "attention")
    else:
        formats = [check(program.weights[n.attrs["weight"]]) for n in linears]
        # compress keeps in float32 what a format cannot hold (2:4 needs K a multiple of 4: not the
        # second FFN product, K = 134 here) and says so in its report
        assert all(f or isinstance(program.weights[n.attrs["weight"]], np.ndarray) for f, n in zip(formats, linears))
        assert sum(formats) >= 6
        if recipe == "int8-static":
            assert all("act_scale" in n.attrs for n in linears)
    got = program(ids, mask)
    ref = program.reference(ids, mask)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()  # as for int8 above
    keep = mask != 0
    want = _torch(model, ids, mask)
    assert _rel(got[keep], want[keep]) < bound
    assert program.report is not None


def test_token_type_ids():
    model = _model("bert", 64, 2)
    ids, mask = _inputs(7)
    types = (np.arange(7)[None, :] >= 3).repeat(3, axis=0).astype(np.int64)
    program = engine.export(model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    assert [i.name for i in program.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    got = program(ids, mask, types)
    want = _torch(model, ids, mask, "eager", token_type_ids=types)
    keep = mask != 0
    assert _rel(got[keep], want[keep]) < 1e-5
    assert _rel(program(ids, mask, np.zeros_like(types))[keep], want[keep]) > 1e-3  # the types are read
    with pytest.raises(ValueError, match="token_type_ids.*only BERT"):
        engine.export(_model("roberta", 96, 3), {"input_ids": ids, "token_type_ids": types})


@pytest.mark.parametrize("family,hidden,heads", CONFIGS[::2], ids=[f"{f}-{h}-{n}" for f, h, n in CONFIGS[::2]])
def test_mean_pooling(family, hidden, heads):
    model = _model(family, hidden, heads)
    ids, mask = _inputs(17)
    program = _export(model, ids, mask, pooling="mean")
    got = program(ids, mask)
    hidden_states = _torch(model, ids, mask)
    assert got.shape == (3, hidden)
    for row in range(2):
        keep = mask[row] != 0
        want = hidden_states[row][keep].mean(axis=0)
        assert _rel(got[row], want) < 1e-5
    np.testing.assert_array_equal(got[2], 0)  # no token: zeros, not NaN
    assert program.info["error"] < 1e-5


def test_export_argument_errors():
    model = _model("bert", 64, 2)
    ids, mask = _inputs(7)
    with pytest.raises(ValueError, match="model: expected a Hugging Face BertModel, RobertaModel or DistilBertModel .*Linear"):
        engine.export(torch.nn.Linear(3, 3), {"input_ids": ids})
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module, got dict"):
        engine.export({}, {"input_ids": ids})
    with pytest.raises(ValueError, match="pooling: expected None or 'mean', got 'max'"):
        engine.export(model, {"input_ids": ids}, pooling="max")
    with pytest.raises(TypeError, match="example_inputs: expected a dict with 'input_ids'"):
        engine.export(model, ids)
    with pytest.raises(ValueError, match=r"example_inputs\['input_ids'\]: expected an integer \(batch, seq\) array, got float64"):
        engine.export(model, {"input_ids": ids.astype(float)})
    with pytest.raises(ValueError, match="example_inputs: unknown key 'mask'"):
        engine.export(model, {"input_ids": ids, "mask": mask})


def test_model_with_pooler():
    """The pooler is not part of the program (nor compressed): the program gives last_hidden_state."""
    torch.manual_seed(3)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=40, max_position_embeddings=40)
    model = transformers.BertModel(config).eval()
    ids, mask = _inputs(7)
    program = _export(model, ids, mask, "int8")
    assert len([n for n in program.nodes if n.op == "linear"]) == 4  # qkv, out, ffn1, ffn2: no pooler
    assert isinstance(model.pooler.dense, torch.nn.Linear)  # the caller's model is left as it was
    keep = mask != 0
    assert _rel(program(ids, mask)[keep], _torch(model, ids, mask)[keep]) < 0.01


class _Swish(torch.nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def test_unknown_module_is_named():
    model = copy.deepcopy(_model("bert", 64, 2))
    model.encoder.layer[1].intermediate.intermediate_act_fn = _Swish()
    ids, mask = _inputs(7)
    with pytest.raises(ValueError, match=r"module encoder\.layer\.1\.intermediate\.intermediate_act_fn .*_Swish"):
        engine.export(model, {"input_ids": ids, "attention_mask": mask})


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_unsupported_activation_is_named(family):
    model = _model(family, 64, 2 if family == "bert" else 4, hidden_act="gelu_new")
    ids, mask = _inputs(7)
    with pytest.raises(ValueError, match="activation 'gelu_new' is not supported"):
        engine.export(model, {"input_ids": ids, "attention_mask": mask})


def test_profile():
    model = _model("bert", 96, 12)
    ids, mask = _inputs(33)
    program = _export(model, ids, mask)
    prof = program.profile(ids, mask, rounds=3)
    # one entry per native node: a node each, and a GELU pass of its own after a linear that has one
    names = []
    for n in program.nodes:
        if n.op != "reshape":
            names.append(n.name)
        if n.op == "linear" and n.attrs.get("activation") == "gelu":
            names.append(n.name + "/gelu")
    assert [name for name, _, _ in prof["nodes"]] == names
    assert set(prof["ops"]) == {n.op for n in program.nodes} | {"gelu"}
    times = [t for _, _, t in prof["nodes"]]
    assert all(t > 0 for t in times)
    cold = _export(model, ids, mask).profile(ids, mask, rounds=1, warmup=False)  # planned, then one timed run
    assert [name for name, _, _ in cold["nodes"]] == names and all(t > 0 for _, _, t in cold["nodes"])
    assert sum(times) == pytest.approx(prof["native"], rel=1e-9)
    assert sum(prof["ops"].values()) == pytest.approx(prof["native"], rel=1e-9)
    # the nodes' times are the native call's time: below the wall time of a whole call, and most of it
    # at this size (Python's part of a call is tens of microseconds; these nodes take milliseconds)
    assert prof["native"] <= prof["total"]
    assert prof["native"] >= 0.3 * prof["total"]


_PROFILE_SCRIPT = """
import numpy as np
from edgecompress.engine.builder import GraphBuilder
g = GraphBuilder()
x = g.input("x", "float32", ("batch", 5))
y = g.op("gelu", [x], "the_gelu")
p = g.program([g.op("softmax", [y], "the_softmax")], {})
print(p(np.ones((2, 5), np.float32)).sum())
"""


@pytest.mark.parametrize("value,prints", [("1", True), ("0", False), ("", False)])
def test_profile_environment_variable(value, prints):
    """EDGECOMPRESS_PROFILE is read once at import: set, every call prints its profile to stderr."""
    env = dict(os.environ, EDGECOMPRESS_PROFILE=value)
    done = subprocess.run([sys.executable, "-c", _PROFILE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(2.0)
    if prints:
        assert "edgecompress profile" in done.stderr
        assert "the_gelu" in done.stderr and "the_softmax" in done.stderr and "per op:" in done.stderr
    else:
        assert "edgecompress profile" not in done.stderr


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_int8_token_table(family):
    """embeddings="int8": the token table is int8 with one scale per row (a quarter of its bytes), the
    lookup dequantizes exactly as the oracle does, and the output stays within 1% of torch's."""
    model = _model(family, 64, 4)
    ids, mask = _inputs(7)
    full = _export(model, ids, mask, "int8")
    small = _export(model, ids, mask, "int8", embeddings="int8")
    table = small.weights["embeddings.word.table"]
    assert table.dtype == np.int8 and small.weights["embeddings.word.scale"].shape == (VOCAB,)
    assert full.nbytes - small.nbytes == VOCAB * 64 * 3 - VOCAB * 4
    got, want = small(ids, mask), _torch(model, ids, mask, attn="eager")
    keep = mask.astype(bool)
    assert _rel(got[keep], want[keep]) < 0.01
    np.testing.assert_allclose(got, small.reference(ids, mask), rtol=0, atol=1e-3 * np.abs(got).max())
    with pytest.raises(ValueError, match="embeddings: expected 'float32' or 'int8'"):
        _export(model, ids, mask, "int8", embeddings="int4")
