"""Bad inputs to a program: a TypeError (wrong type or dtype, wrong number of inputs, as for any Python
call) or a ValueError (wrong shape, size or value) that names the input, before any kernel runs; and
bad graphs refused when the program is built."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.engine import Program
from edgecompress.engine.builder import GraphBuilder

VOCAB, POSITIONS, WIDTH = 30, 16, 8


def _encoder():
    """input_ids, attention_mask -> word + position embeddings, LayerNorm, masked mean (torch-free)."""
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    ids = g.input("input_ids", "int64", ("batch", "seq"))
    mask = g.input("attention_mask", "int64", ("batch", "seq"))
    x = g.op("embedding", [ids, g.weight("word.table", rng.standard_normal((VOCAB, WIDTH)))], "word")
    pos = g.op("position_ids", [ids], "pos", mode="arange", base=0)
    x = g.op("add", [x, g.op("embedding", [pos, g.weight("position.table", rng.standard_normal((POSITIONS, WIDTH)))],
                             "position")], "add")
    x = g.op("layernorm", [x, "", g.weight("gamma", np.ones(WIDTH))], "ln", eps=1e-5)
    return g.program([g.op("mean_pool", [x, mask], "pool")], {})


def _float_program():
    g = GraphBuilder()
    x = g.input("x", "float32", ("rows", WIDTH))
    return g.program([g.op("gelu", [x], "gelu")], {})


@pytest.fixture(scope="module")
def program():
    return _encoder()


IDS = np.array([[3, 4, 5], [6, 7, 8]])
MASK = np.array([[1, 1, 1], [1, 1, 0]])


def test_valid_calls_agree(program):
    """Positional or by name, any integer or bool mask, non-contiguous arrays: the same result."""
    want = program(IDS, MASK)
    assert want.shape == (2, WIDTH) and np.isfinite(want).all()
    np.testing.assert_array_equal(program(attention_mask=MASK, input_ids=IDS), want)
    for mask in (MASK.astype(np.int32), MASK.astype(np.uint8), MASK.astype(bool), MASK * 7):
        np.testing.assert_array_equal(program(IDS, mask), want)
    np.testing.assert_array_equal(program(IDS.astype(np.int32), MASK), want)
    wide = np.zeros((2, 6), np.int64)
    wide[:, ::2] = IDS
    np.testing.assert_array_equal(program(wide[:, ::2], np.asfortranarray(MASK)), want)
    np.testing.assert_array_equal(program(IDS[::-1], MASK[::-1])[::-1], want)
    np.testing.assert_allclose(program.reference(IDS, MASK), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,kwargs,words", [
    ((IDS,), {}, "missing input 'attention_mask'"),
    ((), {}, "missing input 'input_ids'"),
    ((IDS, MASK, MASK), {}, "expected at most 2 inputs \\(input_ids, attention_mask\\), got 3"),
    ((IDS,), {"mask": MASK}, "unknown input 'mask'"),
    ((IDS, MASK), {"input_ids": IDS}, "input 'input_ids' given twice"),
])
def test_wrong_number_of_inputs(program, args, kwargs, words):
    """TypeError, as Python raises for a call with missing or extra arguments."""
    with pytest.raises(TypeError, match=words):
        program(*args, **kwargs)


@pytest.mark.parametrize("ids,mask,error,words", [
    (IDS.astype(np.float32), MASK, TypeError, "input_ids: expected an integer array, got float32"),
    (IDS, MASK.astype(np.float64), TypeError, "attention_mask: expected an integer array, got float64"),
    (IDS.tolist(), MASK, TypeError, "input_ids: expected a numpy array, got list"),
    (IDS, 1, TypeError, "attention_mask: expected a numpy array, got int"),
    (IDS.astype(str), MASK, TypeError, "input_ids: expected an integer array, got <U"),
    (IDS[0], MASK, ValueError, r"input_ids: expected 2 dimensions \('batch', 'seq'\), got shape \(3,\)"),
    (IDS[None], MASK, ValueError, r"input_ids: expected 2 dimensions .*got shape \(1, 2, 3\)"),
    (IDS, MASK[:1], ValueError, "attention_mask: dimension 'batch' is 1, but input_ids has 2"),
    (IDS, MASK[:, :2], ValueError, "attention_mask: dimension 'seq' is 2, but input_ids has 3"),
    (IDS[:, :0], MASK[:, :0], ValueError, r"input_ids: expected no empty dimension, got shape \(2, 0\)"),
    (IDS[:0], MASK[:0], ValueError, r"input_ids: expected no empty dimension, got shape \(0, 3\)"),
    (IDS + VOCAB - 5, MASK, ValueError, rf"input_ids: expected ids in \[0, {VOCAB}\) \(the table of node 'word'"),
    (-IDS, MASK, ValueError, rf"input_ids: expected ids in \[0, {VOCAB}\)"),
    (np.full((1, 1), 2**40), MASK[:1, :1], ValueError, "input_ids: expected ids in"),
])
def test_bad_inputs(program, ids, mask, error, words):
    with pytest.raises(error, match=words):
        program(ids, mask)
    if error is ValueError and "ids in" in words:  # the oracle refuses them too
        with pytest.raises(ValueError, match="ids: expected values in"):
            program.reference(ids, mask)


def test_sequence_longer_than_the_position_table(program):
    ids = np.ones((1, POSITIONS + 1), np.int64)
    with pytest.raises(ValueError, match=f"node 'position' \\(embedding\\).*'pos'.*table of {POSITIONS} rows"):
        program(ids, np.ones_like(ids))
    assert program(ids[:, :POSITIONS], np.ones_like(ids[:, :POSITIONS])).shape == (1, WIDTH)


def test_float_inputs():
    program = _float_program()
    x = np.linspace(-3, 3, 3 * WIDTH, dtype=np.float32).reshape(3, WIDTH)
    assert program(x).shape == (3, WIDTH)
    with pytest.raises(TypeError, match="x: expected float32, got float64"):
        program(x.astype(np.float64))
    with pytest.raises(TypeError, match="x: expected float32, got int64"):
        program(np.ones((3, WIDTH), np.int64))
    with pytest.raises(ValueError, match=rf"x: expected shape \('rows', {WIDTH}\), got \(3, 7\)"):
        program(x[:, :7])


def test_the_program_still_runs_after_errors(program):
    want = program(IDS, MASK)
    for bad in (IDS + 100, IDS[:, :0]):
        with pytest.raises(ValueError):
            program(bad, MASK[:, : bad.shape[1]])
    np.testing.assert_array_equal(program(IDS, MASK), want)


# ---- graphs refused when built ----


def _graph(edit):
    g = GraphBuilder()
    x = g.input("x", "float32", ("rows", WIDTH))
    edit(g, x)
    return g


@pytest.mark.parametrize("op,inputs,attrs,words", [
    ("conv", ["x"], {}, "unknown op 'conv'"),
    ("gelu", [], {}, "expected 1..1 inputs, got 0"),
    ("layernorm", ["x", "", "g"], {}, r"missing attributes \['eps'\]"),
    ("layernorm", ["x", "", "g"], {"eps": "1e-5"}, "attribute 'eps': expected a finite float >= 0, got '1e-5'"),
    ("layernorm", ["x", "", "g"], {"eps": float("nan")}, "attribute 'eps'"),
    ("layernorm", ["x", "", "g"], {"eps": 10**400}, "attribute 'eps'"),  # no float holds it
    ("layernorm", ["x", "", "g"], {"eps": True}, "attribute 'eps'"),
    ("layernorm", ["x", "", "g"], {"eps": 1e-5, "elementwise": True}, "unknown attribute 'elementwise'"),
    ("layernorm", ["x", "", ""], {"eps": 1e-5}, "input 2 is required"),
    ("reshape", ["x"], {"shape": [-1, -1]}, "attribute 'shape'"),
    ("reshape", ["x"], {"shape": [2.0, -1]}, "attribute 'shape'"),
    ("reshape", ["x"], {"shape": []}, "attribute 'shape'"),
    ("attention", ["x"], {"heads": 2, "kv_heads": 1, "head_dim": 2, "causal": 0, "scale": 1.0}, "attribute 'causal'"),
    ("attention", ["x"], {"heads": 2, "kv_heads": 1, "head_dim": 2, "causal": False, "scale": float("inf")},
     "attribute 'scale'"),
    ("position_ids", ["x"], {"mode": "arange", "base": -1}, "attribute 'base'"),
    ("add", ["x", "nothing"], {}, "input 'nothing' is not defined before it"),
])
def test_bad_graphs(op, inputs, attrs, words):
    def edit(g, x):
        g.weight("g", np.ones(WIDTH))
        g.op(op, inputs, "node", **attrs)

    g = _graph(edit)
    with pytest.raises(ValueError, match=words):
        g.program(["node"], {})


def test_bad_linear_graphs():
    rng = np.random.default_rng(1)
    g = _graph(lambda g, x: None)
    g.weight("w", rng.standard_normal((4, WIDTH)))
    g.op("linear", ["x"], "fc", weight="w", activation="tanh")
    with pytest.raises(ValueError, match="attribute 'activation': expected one of None, 'relu', 'gelu', got 'tanh'"):
        g.program(["fc"], {})
    g = _graph(lambda g, x: None)
    g.weight("w", rng.standard_normal((4, WIDTH)))
    g.op("linear", ["x"], "fc", weight="w", act_scale=0.1)
    with pytest.raises(ValueError, match="act_scale applies to an Int8Weight, not a ndarray"):
        g.program(["fc"], {})
    g = _graph(lambda g, x: None)
    g.op("linear", ["x"], "fc", weight="x")
    with pytest.raises(ValueError, match="weight 'x' is not a float32 matrix"):
        g.program(["fc"], {})


def test_shape_errors_name_the_node():
    """Shapes are checked when a call plans them: the node and what it expected."""
    g = _graph(lambda g, x: g.op("add", [x, g.weight("b", np.ones(WIDTH + 1))], "bias"))
    program = g.program(["bias"], {})
    with pytest.raises(ValueError, match=r"node 'bias' \(add\): expected float32 operands where b's shape \(9,\) ends"):
        program(np.ones((2, WIDTH), np.float32))
    g = _graph(lambda g, x: g.op("reshape", [x], "r", shape=[5, -1]))
    g.op("gelu", ["r"], "out")
    program = g.program(["out"], {})
    with pytest.raises(ValueError, match=r"node 'r' \(reshape\): cannot reshape \(3, 8\) to \[5, -1\]"):
        program(np.ones((3, WIDTH), np.float32))
    assert program(np.ones((5, WIDTH), np.float32)).shape == (5, WIDTH)
    g = _graph(lambda g, x: g.op("reshape", [x], "r", shape=[0, 0, 0]))  # keeps a third dimension of a 2-D x
    g.op("gelu", ["r"], "out")
    with pytest.raises(ValueError, match=r"node 'r' \(reshape\): cannot reshape \(3, 8\) to \[0, 0, 0\] \(a 0 keeps"):
        g.program(["out"], {})(np.ones((3, WIDTH), np.float32))


def test_program_structure_errors():
    with pytest.raises(ValueError, match="program input 'x': expected dtype float32 or int64, got 'int8'"):
        Program([_float_program().inputs[0].__class__("x", "int8", (2,))], [], [], {})
    g = _graph(lambda g, x: g.op("reshape", [x], "view", shape=[0, -1]))
    with pytest.raises(ValueError, match="program output 'view': a view of the program's input or weight 'x' "
                                         "cannot be an output"):
        g.program(["view"], {})(np.ones((1, WIDTH), np.float32))
    g = _graph(lambda g, x: g.op("gelu", [x], "y"))
    g.op("reshape", ["y"], "view", shape=[-1])
    with pytest.raises(ValueError, match="program output 'view': a view of 'y', whose buffer output 'y' already is"):
        g.program(["y", "view"], {})(np.ones((1, WIDTH), np.float32))
    with pytest.raises(ValueError, match="program output 'x': expected a value computed by a node"):
        _graph(lambda g, x: None).program(["x"], {})
    g = _graph(lambda g, x: g.op("gelu", [x], "y"))
    with pytest.raises(ValueError, match="program output 'y': listed twice"):
        g.program(["y", "y"], {})


def test_uint8_inputs_too_deep_for_exact_int32_sums_are_refused():
    """Static asymmetric inputs are uint8 (|x - zero point| <= 255): a K that int8 inputs allow can
    overflow their int32 sums, so the program refuses it as ops.linear does."""
    import edgecompress as ec
    from edgecompress.ops import MAX_K_UINT8

    k = MAX_K_UINT8 + 1
    w = ec.Int8Weight(np.ones((1, k), np.int8), np.ones(1, np.float32))
    g = GraphBuilder()
    x = g.input("x", "float32", ("rows", k))
    g.linear(x, w, None, "deep", act_scale=0.1, act_zero_point=128)
    with pytest.raises(ValueError, match=f"K = {k}, above {MAX_K_UINT8}, the longest K"):
        g.program(["deep"], {})
    g = GraphBuilder()
    x = g.input("x", "float32", ("rows", k))
    g.linear(x, w, None, "deep", act_scale=0.1)  # int8 inputs: allowed
    assert g.program(["deep"], {}).weights["deep.weight"].shape == (1, k)


def test_packed_attention_refuses_offsets_outside_its_rows():
    """Offsets that are a program input rather than a pack node's: the native run checks them against
    the rows before it reads any (ValueError, never a read outside q, k, v)."""
    g = GraphBuilder()
    qkv = g.input("qkv", "float32", ("t", 24))
    off = g.input("offsets", "int64", ("b1",))
    y = g.op("attention", [qkv, off], "att", layout="packed", heads=2, kv_heads=2, head_dim=4, causal=False, scale=0.5)
    program = g.program([y], {})
    x = np.ones((5, 24), np.float32)
    assert program(x, np.array([0, 2, 5])).shape == (5, 8)
    for bad in ([0, 2, 6], [0, 3, 2], [-1, 2, 5], [0, 1000000, 5]):
        with pytest.raises(ValueError, match="offsets or a token count that do not fit"):
            program(x, np.array(bad))


def test_release_weights_keeps_the_packed_products_only():
    import edgecompress as ec
    from edgecompress.engine.builder import GraphBuilder

    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input("x", "float32", ("n", 32))
    y = g.linear(x, ec.Int8Weight.from_float(rng.standard_normal((8, 32)).astype(np.float32)), None, "fc")
    prog = g.program([y], {})
    a = rng.standard_normal((3, 32)).astype(np.float32)
    before = prog(a)
    prog.release_weights()
    assert np.array_equal(prog(a), before)
    assert np.array_equal(prog(a[:1]), before[:1])  # a new plan (another shape) packs nothing again
    with pytest.raises(ValueError, match="released"):
        prog.reference(a)
    if ec.current_tier() != "scalar":
        with ec.use_isa("scalar"), pytest.raises(ValueError, match="released after packing"):
            prog(a)
