"""Every engine op on every tier that runs here: the native program against its numpy specification
(``Program.reference``) over a shape sweep (widths not multiples of 16, heads 1..16, seq 1..512,
batch 1..3, padding masks).

Tolerances are relative to the oracle's magnitude: the oracle computes in float64 and rounds once,
the kernels compute in float32 with their own summation order and the exp / erf approximations of
vmath.h, so an output element is off by a few float32 ulps of the largest value it was summed or
normalized from, never by more; ``_close`` checks |got - want| <= rtol * max|want| + atol.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

import edgecompress as ec
from edgecompress.engine.builder import GraphBuilder
from edgecompress.reference import engine as eref

# (batch, seq, width): widths 1, 7, 33, 100, 384 (no multiple of 16 but the last, a real hidden size),
# seq 1 ... 512 (512 once: it is the slow case of the oracle).
SHAPES = [(1, 1, 1), (2, 3, 7), (3, 17, 33), (1, 128, 100), (2, 17, 384), (3, 1, 100), (1, 512, 33)]
# past the executor's chunk of 16384 values, so element-wise ops split into several tasks (the `threads`
# fixture runs them on 1 and 2 threads); 20000 values per row of the (seq, width) operand of a broadcast
LARGE = [(3, 200, 100)]
# float32 rounding of sums of up to a few hundred terms, against a float64 oracle
RTOL = 1e-5


def _close(got, want, rtol=RTOL, atol=1e-6, what=""):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype)
    assert np.isfinite(got).all(), what
    bound = rtol * float(np.abs(want).max(initial=0.0)) + atol
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def _check(program, *inputs, rtol=RTOL, atol=1e-6, what=""):
    """The native outputs against the reference outputs; returns the native ones."""
    got, want = program(*inputs), program.reference(*inputs)
    if not isinstance(got, tuple):
        got, want = (got,), (want,)
    for k, (g, w) in enumerate(zip(got, want)):
        _close(g, w, rtol, atol, f"{what} output {k}")
    return got if len(got) > 1 else got[0]


def _x(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale + rng.uniform(-1, 1)).astype(np.float32)


def _mask(rng, b, s, all_padding_row=True):
    """A padding mask with random lengths 1..s per row; with ``all_padding_row`` (and b > 1) the last
    row is all padding."""
    lengths = rng.integers(1, s + 1, b)
    if all_padding_row and b > 1:
        lengths[-1] = 0
    return (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)


# ---- normalization ----


@pytest.mark.parametrize("op", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("beta", [False, True])
@pytest.mark.parametrize("sum_output", [False, True])
def test_norm(tier, threads, rng, op, residual, beta, sum_output):
    for b, s, w in SHAPES:
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", w))
        r = g.input("r", "float32", ("batch", "seq", w)) if residual else ""
        gamma = g.weight("gamma", rng.uniform(0.5, 1.5, w))
        bt = g.weight("beta", rng.standard_normal(w)) if beta else ""
        outs = g.op(op, [x, r, gamma, bt], "norm", n_outputs=2 if sum_output else 1, eps=1e-5)
        p = g.program(outs if sum_output else [outs], {})
        args = [_x(rng, b, s, w, scale=3)] + ([_x(rng, b, s, w)] if residual else [])
        got = _check(p, *args, what=f"{op} {(b, s, w)}")
        if sum_output:  # the sum is x + residual rounded to float32, exactly
            np.testing.assert_array_equal(got[1], args[0] + args[1] if residual else args[0])
        y = got[0] if sum_output else got
        if w > 1 and op == "layernorm" and not beta:  # normalized rows: mean 0 before gamma
            assert np.abs((y / p.weights["gamma"]).mean(axis=-1)).max() < 1e-4


# ---- element-wise ----


def test_softmax_and_gelu(tier, threads, rng):
    for b, s, w in SHAPES + LARGE:
        for op in ("softmax", "gelu"):
            g = GraphBuilder()
            x = g.input("x", "float32", ("batch", "seq", w))
            p = g.program([g.op(op, [x], op)], {})
            a = _x(rng, b, s, w, scale=4)
            got = _check(p, a, what=f"{op} {(b, s, w)}")
            if op == "softmax":
                np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_broadcast(tier, threads, rng, op):
    for b, s, w in SHAPES + LARGE:
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", w))
        y = g.input("y", "float32", ("batch", "seq", w))
        z = g.input("z", "float32", ("seq", w))
        t = g.op(op, [x, y], "same")  # same shape
        t = g.op(op, [t, z], "rows")  # (seq, width) over every batch
        t = g.op(op, [t, g.weight("c", rng.standard_normal(w))], "vector")  # (width,) over every row
        p = g.program([t], {})
        a, c, d = _x(rng, b, s, w), _x(rng, b, s, w), _x(rng, s, w)
        got = _check(p, a, c, d, what=f"{op} {(b, s, w)}")
        want = (a + c + d + p.weights["c"]) if op == "add" else (a * c * d * p.weights["c"])
        _close(got, want.astype(np.float32), what="against numpy")


# ---- embeddings and positions ----


@pytest.mark.parametrize("table_dtype", ["float32", "int8"])
def test_embedding(tier, rng, table_dtype):
    for b, s, w in SHAPES:
        rows = 50
        g = GraphBuilder()
        ids = g.input("ids", "int64", ("batch", "seq"))
        if table_dtype == "float32":
            table = g.weight("table", rng.standard_normal((rows, w)))
            ins = [ids, table]
        else:
            q = rng.integers(-127, 128, (rows, w)).astype(np.int8)
            ins = [ids, g.weight("table", q), g.weight("scale", rng.uniform(0.01, 0.1, rows))]
        p = g.program([g.op("embedding", ins, "emb")], {})
        i = rng.integers(0, rows, (b, s))
        i[0, 0], i[-1, -1] = 0, rows - 1  # both ends of the table
        got = _check(p, i, rtol=0, atol=0, what=f"embedding {table_dtype} {(b, s, w)}")
        if table_dtype == "float32":
            np.testing.assert_array_equal(got, p.weights["table"][i])
        else:
            np.testing.assert_array_equal(got, p.weights["table"][i] * p.weights["scale"][i][..., None])


@pytest.mark.parametrize("mode,base", [("arange", 0), ("arange", 2), ("padded", 1)])
def test_position_ids(tier, rng, mode, base):
    """Positions feed an embedding (a float output): arange counts base + s; padded (RoBERTa) counts
    the non-padding tokens from base + 1 and gives padding the padding id."""
    for b, s, _ in SHAPES:
        g = GraphBuilder()
        ids = g.input("ids", "int64", ("batch", "seq"))
        pos = g.op("position_ids", [ids], "pos", mode=mode, base=base)
        table = np.arange(600, dtype=np.float32)[:, None]  # row r holds r: the output is the position
        p = g.program([g.op("embedding", [pos, g.weight("table", table)], "emb")], {})
        i = rng.integers(0, 5, (b, s))  # padding id 1 at random places, as left or inner padding
        got = _check(p, i, rtol=0, atol=0, what=f"position_ids {mode} {(b, s)}")[..., 0]
        if mode == "arange":
            np.testing.assert_array_equal(got, np.broadcast_to(base + np.arange(s), (b, s)))
        else:
            keep = i != base
            np.testing.assert_array_equal(got, np.where(keep, base + np.cumsum(keep, axis=1), base))


@pytest.mark.parametrize("masked", [False, True])
def test_mean_pool(tier, rng, masked):
    for b, s, w in SHAPES:
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", w))
        m = g.input("m", "int64", ("batch", "seq")) if masked else ""
        p = g.program([g.op("mean_pool", [x, m] if masked else [x], "pool")], {})
        a = _x(rng, b, s, w)
        args = [a] + ([_mask(rng, b, s)] if masked else [])
        got = _check(p, *args, what=f"mean_pool {(b, s, w)}")
        keep = args[1] != 0 if masked else np.ones((b, s), bool)
        for row in range(b):
            if keep[row].any():
                _close(got[row], a[row][keep[row]].mean(axis=0), what="against numpy")
            else:  # an all-padding row pools to zeros, not NaN
                np.testing.assert_array_equal(got[row], 0)


def test_mean_pool_same_bits_on_any_thread_count(rng):
    # runs of positions summed on the threads, then in order: the thread count changes nothing
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", "seq", 100))
    m = g.input("m", "int64", ("batch", "seq"))
    p = g.program([g.op("mean_pool", [x, m], "pool")], {})
    a, mask = _x(rng, 3, 200, 100), _mask(rng, 3, 200)
    mask[0] = 1  # a full row: every run of positions counts
    before = ec.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # 3 threads on a 2-CPU machine
                ec.set_num_threads(t)
            outs.append(p(a, mask))
    finally:
        ec.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    _close(outs[0][0], a[0].mean(axis=0), what="against numpy")


# ---- attention ----

# (batch, seq, heads, kv_heads, head_dim): heads 1..16, grouped-query heads, head_dim not a multiple of 16
ATTENTION = [(1, 1, 1, 1, 1), (2, 3, 2, 1, 7), (3, 17, 4, 2, 8), (2, 17, 3, 3, 33), (1, 128, 16, 4, 24),
             (2, 33, 12, 12, 32), (3, 5, 8, 1, 13), (1, 512, 2, 2, 16)]


def _attention_program(layout, heads, kv_heads, head_dim, causal, masked):
    g = GraphBuilder()
    widths = [(heads + 2 * kv_heads) * head_dim] if layout == "fused" else [heads * head_dim, kv_heads * head_dim,
                                                                              kv_heads * head_dim]
    ins = [g.input(n, "float32", ("batch", "seq", wd)) for n, wd in zip("qkv" if layout != "fused" else ["qkv"], widths)]
    if masked:
        ins.append(g.input("mask", "int64", ("batch", "seq")))
    out = g.op("attention", ins, "attn", layout=layout, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
               causal=causal, scale=1.0 / np.sqrt(head_dim))
    return g.program([out], {}), widths


@pytest.mark.parametrize("layout", ["fused", "separate"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_attention(tier, threads, rng, layout, causal, masked):
    for b, s, h, kv, d in ATTENTION:
        p, widths = _attention_program(layout, h, kv, d, causal, masked)
        args = [_x(rng, b, s, wd, scale=2) for wd in widths] + ([_mask(rng, b, s)] if masked else [])
        _check(p, *args, what=f"attention {layout} causal={causal} {(b, s, h, kv, d)}")


def test_attention_against_numpy(rng):
    """The oracle itself against a direct per-head loop: grouped heads read kv head h // group, a padding
    key gets no weight, an all-padding row attends uniformly (as transformers' additive mask does)."""
    b, s, h, kv, d = 2, 6, 4, 2, 5
    p, (width,) = _attention_program("fused", h, kv, d, False, True)
    qkv = _x(rng, b, s, width)
    mask = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    got = p(qkv, mask)
    q = qkv[..., : h * d].reshape(b, s, h, d)
    k = qkv[..., h * d: (h + kv) * d].reshape(b, s, kv, d)
    v = qkv[..., (h + kv) * d:].reshape(b, s, kv, d)
    for bi in range(b):
        for hi in range(h):
            scores = q[bi, :, hi] @ k[bi, :, hi // 2].T / np.sqrt(d)
            if mask[bi].any():
                scores = np.where(mask[bi] != 0, scores, -np.inf)
            else:
                scores = np.zeros_like(scores)
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            want = (e / e.sum(axis=-1, keepdims=True)) @ v[bi, :, hi // 2]
            _close(got[bi, :, hi * d:(hi + 1) * d], want.astype(np.float32), what=f"batch {bi} head {hi}")


# ---- views ----


def test_reshape_view(tier, rng):
    """A reshape shares its input's buffer: (batch, seq, heads * d) -> (batch, seq, heads, d) then a softmax
    per head, and a -1 dimension."""
    for b, s, w in SHAPES:
        heads = 1 if w in (1, 7, 33) else 4
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", w))
        t = g.op("gelu", [x], "gelu")
        t = g.op("reshape", [t], "split", shape=[0, 0, heads, -1])
        t = g.op("softmax", [t], "softmax")
        t = g.op("reshape", [t], "merge", shape=[0, -1])
        p = g.program([g.op("add", [t, t], "twice")], {})
        a = _x(rng, b, s, w, scale=3)
        got = _check(p, a, what=f"reshape {(b, s, w)}")
        assert got.shape == (b, s * w)
        np.testing.assert_allclose(got.reshape(b, s, heads, -1).sum(axis=-1), 2.0, rtol=1e-5)


def test_view_outputs(tier, rng):
    """An output may be a view of a computed value (written into the output's buffer), next to other
    outputs, and the value it views may still be read by later nodes."""
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", 6))
    t = g.op("gelu", [x], "gelu")
    flat = g.op("reshape", [t], "flat", shape=[-1])
    twice = g.op("add", [t, t], "twice")
    p = g.program([flat, twice], {})
    a = _x(rng, 3, 6, scale=3)
    got_flat, got_twice = _check(p, a, what="view outputs")
    assert got_flat.shape == (18,) and got_twice.shape == (3, 6)
    np.testing.assert_array_equal(got_twice, 2 * got_flat.reshape(3, 6))


# ---- linear on every weight format ----


@functools.lru_cache(maxsize=None)
def _weights(n, k):
    """(name, weight, act attrs) for every linear weight format the engine runs (built once per shape:
    the low-rank SVDs are the slow part of these tests)."""
    rng = np.random.default_rng(n * 1000 + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    pruned = np.where(rng.random((n, k)) < 0.7, 0, w).astype(np.float32)
    k4 = k - k % 4
    nm = w[:, :k4].reshape(n, -1, 4).copy()
    order = np.argsort(np.abs(nm), axis=-1)
    np.put_along_axis(nm, order[..., :2], 0, axis=-1)  # keep the 2 largest of every 4
    nm = np.concatenate([nm.reshape(n, k4), np.zeros((n, k - k4), np.float32)], axis=1)
    out = [("float32", w, {}),
           ("int8", ec.Int8Weight.from_float(w), {}),
           ("int8-tensor", ec.Int8Weight.from_float(w, "tensor"), {}),
           ("int8-static", ec.Int8Weight.from_float(w), {"act_scale": 0.02}),
           ("int8-static-asym", ec.Int8Weight.from_float(w), {"act_scale": 0.03, "act_zero_point": 120}),
           ("int4-g32", ec.Int4Weight.from_float(w, 32), {}),
           ("int4-g32-asym", ec.Int4Weight.from_float(w, 32, symmetric=False), {}),
           ("nf4", ec.Int4Weight.from_float(w, 32, codebook="nf4"), {}),
           ("int4-f32", ec.Int4Weight.from_float(w, 32, compute="float"), {}),
           ("csr", ec.SparseWeight.from_float(pruned, "csr"), {}),
           ("bsr4x1", ec.SparseWeight.from_float(pruned, "bsr4x1"), {}),
           ("csr-int8", ec.SparseWeight.from_float(pruned, "csr", "int8"), {}),
           ("2:4", ec.SparseWeight.from_float(nm, "2:4"), {}),
           ("lowrank", ec.LowRankWeight.from_float(w, rank=max(1, min(n, k) // 2)), {}),
           ("lowrank-int8", ec.LowRankWeight.from_float(w, rank=max(1, min(n, k) // 2), dtype="int8"), {})]
    if k % 4 == 0:
        out.append(("bsr1x4-int8", ec.SparseWeight.from_float(pruned, "bsr1x4", "int8"), {}))
    return out


# (batch, seq, in, out): in and out not multiples of 16 but one pair; in a multiple of 4 for bsr1x4
LINEAR_SHAPES = [(1, 1, 4, 1), (2, 3, 36, 7), (3, 17, 100, 33), (1, 33, 384, 100), (2, 5, 64, 384)]


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
def test_linear_formats(tier, threads, rng, activation):
    """RTOL for the quantized formats too: their int8 / int4 products are bit-exact against the oracle's
    integer arithmetic (tests/test_gemm_s8.py), so only the float epilogue and the LayerNorm after it
    differ. A static act_scale saturates part of x here, which a dynamic scale would not."""
    for b, s, k, n in LINEAR_SHAPES:
        for name, w, act in _weights(n, k):
            g = GraphBuilder()
            x = g.input("x", "float32", ("batch", "seq", k))
            bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
            y = g.linear(x, w, bias, "fc", activation, **act)
            t = g.op("layernorm", [y, "", g.weight("gamma", np.ones(n, np.float32))], "ln", eps=1e-5) if n > 1 else y
            p = g.program([t], {})
            a = _x(rng, b, s, k)
            _check(p, a, atol=1e-5,
                   what=f"linear {name} {activation} {(b, s, k, n)}")
            if name == "float32" and n > 1:  # and the oracle against numpy
                want = a @ w.T + (0 if bias is None else bias)
                if activation == "relu":
                    want = np.maximum(want, 0)
                elif activation == "gelu":
                    want = eref.gelu(want.astype(np.float32))
                ln = (want - want.mean(-1, keepdims=True)) / np.sqrt(want.var(-1, keepdims=True) + 1e-5)
                _close(p.reference(a), ln.astype(np.float32), rtol=1e-4, what="reference against numpy")


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_float_linear_every_column_count(tier, threads, rng, activation):
    """A float32 weight's columns go in panels of 16 (dense_f32), each a whole number of the tier's
    vectors: every count of columns in the last panel (n = 1..40, whole vectors and a part of one), with
    and without a bias, over 13 and 5 rows (whole blocks of rows and the rest); and wider weights, whose
    panels go in groups of 4, 2 and 1 (AVX-512) ending in a part of a panel, in blocks of 4 panels
    (k = 300)."""
    for n in [*range(1, 41), 64, 72, 88, 96, 100, 120, 136, 200]:
        k = 3 + n % 5 if n <= 40 else (300 if n == 200 else 40 + n % 7)
        w = rng.standard_normal((n, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if n % 3 else None
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", k))
        p = g.program([g.linear(x, w, bias, "fc", activation)], {})
        for rows in (13, 5):
            _check(p, _x(rng, 1, rows, k), atol=1e-5, what=f"float32 linear {activation} n={n} rows={rows}")


def test_narrow_float_linear_splits_rows_across_threads(tier, rng):
    """A product of one or two panels (16 or 24 columns) over many rows gives each thread a part of the
    rows: the same bits as one thread."""
    import warnings

    import edgecompress as ec

    for n in (16, 24, 40):
        w = rng.standard_normal((n, 96)).astype(np.float32)
        g = GraphBuilder()
        x = g.input("x", "float32", ("batch", "seq", 96))
        p = g.program([g.linear(x, w, rng.standard_normal(n).astype(np.float32), "fc", "relu")], {})
        a = _x(rng, 1, 301, 96)
        before = ec.get_num_threads()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # 2 threads on a 1-CPU machine
                ec.set_num_threads(1)
                one = p(a)
                ec.set_num_threads(2)
                two = p(a)
        finally:
            ec.set_num_threads(before)
        np.testing.assert_array_equal(one, two)
        _check(p, a, atol=1e-5, what=f"narrow float32 linear n={n}")


def test_concurrent_calls(rng):
    """Python threads calling one program at once (the GIL is released during a run): every result is the
    one a lone call gives, for calls of the same shapes (one plan, one arena) and of different ones."""
    import threading

    p, (width,) = _attention_program("fused", 4, 2, 16, False, True)
    calls = [(_x(rng, 2, s, width), _mask(rng, 2, s)) for s in (33, 33, 64, 7)]
    want = [p(*c) for c in calls]
    wrong = []

    def work(first):
        for r in range(40):
            k = (first + r) % len(calls)
            if not np.array_equal(p(*calls[k]), want[k]):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_plans_are_kept_for_the_recent_shapes_only():
    from edgecompress.engine import program as program_module

    g = GraphBuilder()
    x = g.input("x", "float32", ("rows", 4))
    p = g.program([g.op("gelu", [x], "y")], {})
    for rows in range(1, program_module.MAX_PLANS + 6):
        y = p(np.full((rows, 4), 0.5, np.float32))
        assert y.shape == (rows, 4)
    assert len(p._plans) == program_module.MAX_PLANS
    assert ((program_module.MAX_PLANS + 5, 4) in [k[1] for k in p._plans])  # the newest stays


@pytest.mark.parametrize("heads,kv_heads,d", [(1, 1, 8), (4, 2, 16), (12, 12, 32)])
@pytest.mark.parametrize("lengths", [[5], [7, 0, 3, 12], [0, 0], [40, 1, 33]], ids=["one", "mixed", "empty", "long"])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences(tier, threads, heads, kv_heads, d, lengths, causal):
    """pack -> gather -> attention on packed rows -> scatter: each sequence on its own tokens (empty ones
    and an all-empty batch included), against the oracle, and equal on the tokens to the padded
    attention with its mask; padded positions are 0."""
    rng = np.random.default_rng(sum(lengths) + heads)
    b, s = len(lengths), max(max(lengths), 1)
    mask = (np.arange(s)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    width = (heads + 2 * kv_heads) * d
    qkv = _x(rng, b, s, width)
    attrs = dict(heads=heads, kv_heads=kv_heads, head_dim=d, causal=causal, scale=d ** -0.5)
    g = GraphBuilder()
    x = g.input("qkv", "float32", ("b", "s", width))
    m = g.input("mask", "int64", ("b", "s"))
    index, offsets = g.op("pack", [m], "tokens", n_outputs=2)
    rows = g.op("gather", [x, index], "rows")
    y = g.op("attention", [rows, offsets], "att", layout="packed", **attrs)
    out = g.op("scatter", [y, index, m], "out")
    program = g.program([out], {})
    got = _check(program, qkv, mask, what=f"packed {lengths}")
    keep = mask != 0
    assert not got[~keep].any()
    g2 = GraphBuilder()
    x2 = g2.input("qkv", "float32", ("b", "s", width))
    m2 = g2.input("mask", "int64", ("b", "s"))
    padded = g2.program([g2.op("attention", [x2, m2], "att", **attrs)], {})(qkv, mask)
    _close(got[keep], padded[keep], what="packed vs padded")


def test_gather_of_ids_and_an_index_out_of_its_rows():
    g = GraphBuilder()
    ids = g.input("ids", "int64", ("b", "s"))
    m = g.input("mask", "int64", ("b", "s"))
    index, _ = g.op("pack", [m], "tokens", n_outputs=2)
    program = g.program([g.op("gather", [ids, index], "picked")], {})
    ids_in = np.arange(12, dtype=np.int64).reshape(3, 4)
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    np.testing.assert_array_equal(program(ids_in, mask), [0, 1, 8, 10, 11])
    np.testing.assert_array_equal(program.reference(ids_in, mask), [0, 1, 8, 10, 11])
    with pytest.raises(ValueError, match="node 'tokens' \\(pack\\): expected an int64 program input"):
        g = GraphBuilder()
        x = g.input("x", "float32", ("b", "s"))
        g.op("pack", [x], "tokens", n_outputs=2)
        g.program(["tokens:0"], {})


# ---- decoder ops: rope, kv_attention (with its caches), glu, concat ----


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope(tier, threads, rng, neox, qk_norm):
    for t, h, kv, d, rd, pos in [(1, 1, 1, 2, 2, 0), (7, 4, 2, 16, 16, 5), (33, 3, 1, 64, 32, 1000), (2, 8, 8, 256, 256, 70000)]:
        g = GraphBuilder()
        x = g.input("x", "float32", ("t", (h + 2 * kv) * d))
        p = g.input("pos", "int64", (1,))
        freq = (1.0 / 10000.0 ** (np.arange(0, rd, 2) / rd)).astype(np.float32)
        ins = [x, p, g.weight("freq", freq)]
        attrs = {}
        if qk_norm:
            ins.append(g.weight("gamma", _x(rng, 2, d)))
            attrs["eps"] = 1e-6
        out = g.op("rope", ins, "rope", heads=h, kv_heads=kv, head_dim=d, rope_dims=rd, neox=neox, **attrs)
        prog = g.program([out], {})
        # angles up to 70000 rad: sin/cos of a float32 angle, against the oracle's float64 of the same angle
        _check(prog, _x(rng, t, (h + 2 * kv) * d), np.array([pos]), rtol=2e-5, what=f"rope {(t, h, kv, d, rd, pos)}")


def _kv_program(h, kv, d, slots, window):
    g = GraphBuilder()
    x = g.input("x", "float32", ("t", (h + 2 * kv) * d))
    kc = g.input("k", "float32", (slots, kv * d))
    vc = g.input("v", "float32", (slots, kv * d))
    p = g.input("pos", "int64", (1,))
    out = g.op("kv_attention", [x, kc, vc, p], "attn", heads=h, kv_heads=kv, head_dim=d, window=window,
               scale=1.0 / np.sqrt(d))
    return g.program([out], {})


@pytest.mark.parametrize("h,kv,d", [(1, 1, 8), (4, 2, 16), (4, 1, 64)])
@pytest.mark.parametrize("window", [0, 5])
def test_kv_attention_calls_in_sequence(tier, threads, rng, h, kv, d, window):
    """A sequence fed in uneven chunks (1 token, 3, 70: past the query chunk of 64; a window ring that
    wraps): each call's output and the caches it leaves equal the oracle's, which updates its own
    copies of the caches."""
    slots = 80 if window == 0 else window
    prog = _kv_program(h, kv, d, slots, window)
    kc, vc = np.zeros((slots, kv * d), np.float32), np.zeros((slots, kv * d), np.float32)
    kr, vr = kc.copy(), vc.copy()
    pos = 0
    for n in [1, 3, 70, 1, 2]:
        if window == 0 and pos + n > slots:
            break
        x = _x(rng, n, (h + 2 * kv) * d, scale=2)
        got = prog(x, kc, vc, np.array([pos]))
        want = prog.reference(x, kr, vr, np.array([pos]))
        _close(got, want, what=f"kv_attention pos={pos} n={n}")
        np.testing.assert_array_equal(kc, kr)
        np.testing.assert_array_equal(vc, vr)
        pos += n


def test_kv_attention_refuses_positions_past_its_cache(rng):
    prog = _kv_program(2, 1, 8, 16, 0)
    kc, vc = np.zeros((16, 8), np.float32), np.zeros((16, 8), np.float32)
    with pytest.raises(ValueError, match="kv_attention"):
        prog(_x(rng, 4, 32), kc, vc, np.array([13]))
    with pytest.raises(ValueError, match="kv_attention"):
        prog(_x(rng, 1, 32), kc, vc, np.array([-1]))
    with pytest.raises(TypeError, match="in place"):
        prog(_x(rng, 1, 32), kc[:, ::1].T.copy().T, vc, np.array([0]))
    ro = kc.copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="in place"):
        prog(_x(rng, 1, 32), ro, vc, np.array([0]))
    with pytest.raises(ValueError, match="window"):
        _kv_program(2, 1, 8, 4, 5)(_x(rng, 1, 32), kc[:4], vc[:4], np.array([0]))


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("joined", [False, True])
def test_glu(tier, threads, rng, act, joined):
    for rows, n in [(1, 1), (3, 7), (17, 100), (200, 300)]:
        g = GraphBuilder()
        if joined:
            out = g.op("glu", [g.input("x", "float32", ("r", 2 * n))], "glu", act=act)
            args = [_x(rng, rows, 2 * n, scale=4)]
        else:
            out = g.op("glu", [g.input("a", "float32", ("r", n)), g.input("b", "float32", ("r", n))], "glu", act=act)
            args = [_x(rng, rows, n, scale=4), _x(rng, rows, n)]
        _check(g.program([out], {}), *args, rtol=2e-6, atol=1e-6, what=f"glu {act} {(rows, n)}")


def test_concat(tier, rng):
    g = GraphBuilder()
    ins = [g.input(n, "float32", ("r", w)) for n, w in (("a", 3), ("b", 16), ("c", 1))]
    out = g.op("concat", ins, "cat")
    got = _check(g.program([out], {}), _x(rng, 5, 3), _x(rng, 5, 16), _x(rng, 5, 1), rtol=0, atol=0)
    assert got.shape == (5, 20)
