"""Low-rank weights (LowRankWeight): every tier against the numpy oracle, the SVD rules, and errors."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import ops
from edgecompress import reference as ref
from sweeps import GEMM_SHAPES


def _factors(rng, n, k, r):
    u = rng.standard_normal((n, r)).astype(np.float32)
    v = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
    return u, v


def _check(got, x, u, v, bias=None, act=None):
    want = ref.linear_lowrank(x, u, v, bias, act)
    tol = ref.lowrank_tolerance(x, u, v, bias)
    if act == "gelu":
        tol = tol + 1e-6 * np.abs(want)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert (np.abs(got.astype(np.float64) - want) <= tol).all()


def test_sweep_against_oracle(tier, threads, rng):
    # Rows 1-17 take the fused kernel (1-4 rows per call, row blocks); larger batches two products.
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        r = (1, 16, 37, 64)[i % 4]
        u, v = _factors(rng, n, k, r)
        w = ec.LowRankWeight(u, v)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if i % 2 else None
        act = (None, "relu", "gelu")[i % 3]
        _check(ec.linear(x, w, bias, act), x, u, v, bias, act)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 16, 17, 33, 200])
def test_fused_and_two_product_paths(tier, rng, m):
    u, v = _factors(rng, 70, 300, 48)
    w = ec.LowRankWeight(u, v)
    x = rng.standard_normal((m, 300)).astype(np.float32)
    bias = rng.standard_normal(70).astype(np.float32)
    for act in (None, "relu", "gelu"):
        _check(ec.linear(x, w, bias, act), x, u, v, bias, act)
    out = np.empty((m, 70), np.float32)
    assert ec.linear(x, w, bias, out=out) is out
    _check(out, x, u, v, bias)


def test_long_rank_uses_row_blocks(rng):
    # r = 2048: the intermediate of 16 rows would exceed the 64 KiB buffer, so rows go in blocks of 8.
    u, v = _factors(rng, 40, 64, 2048)
    x = rng.standard_normal((ops.LOWRANK_FUSED_MAX_ROWS, 64)).astype(np.float32)
    _check(ec.linear(x, ec.LowRankWeight(u, v)), x, u, v)


def test_int8_factors_bit_exact(tier, threads, rng):
    for i, (m, k, n) in enumerate(GEMM_SHAPES[::3]):
        W = rng.standard_normal((n, k)).astype(np.float32)
        w = ec.LowRankWeight.from_float(W, rank=min(n, k, 20), dtype="int8")
        assert isinstance(w.u, ec.Int8Weight) and isinstance(w.v, ec.Int8Weight) and w.dtype == "int8"
        x = rng.standard_normal((m, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        act = (None, "relu", "gelu")[i % 3]
        t = ref.linear_int8(x, w.v.qweight, w.v.scale)
        want = ref.linear_int8(t, w.u.qweight, w.u.scale, bias, act)
        _equal_or_gelu(ec.linear(x, w, bias, act), want, act)


def _equal_or_gelu(got, want, act):
    if act == "gelu":  # float32 erf in the kernels, float64 in the oracle (as in test_gemm_s8)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


def test_mixed_factors(rng):
    u, v = _factors(rng, 50, 80, 16)
    x = rng.standard_normal((3, 80)).astype(np.float32)
    # int8 u after float32 v: the float product as numpy computes it, then the exact int8 layer.
    w = ec.LowRankWeight(ec.Int8Weight.from_float(u), v)
    assert w.dtype == "mixed"
    for act in (None, "relu", "gelu"):
        want = ref.linear_int8(np.matmul(x, v.T), w.u.qweight, w.u.scale, None, act)
        _equal_or_gelu(ec.linear(x, w, activation=act), want, act)
    # float32 u after int8 v: the exact int8 layer, then a float product within the oracle's tolerance.
    w = ec.LowRankWeight(u, ec.Int8Weight.from_float(v))
    t = ref.linear_int8(x, w.v.qweight, w.v.scale)
    for act in (None, "relu", "gelu"):
        got = ec.linear(x, w, activation=act)
        want = ref.linear_sparse(t, u, None, act)
        tol = 1e-5 * (np.abs(t) @ np.abs(u).T) + 1e-6 * np.abs(want)
        assert (np.abs(got - want) <= tol).all()


def test_from_float_rank_rules(rng):
    # W with known singular values 8, 4, 2, 1 (energies 64, 16, 4, 1 of 85).
    q1, _ = np.linalg.qr(rng.standard_normal((40, 4)))
    q2, _ = np.linalg.qr(rng.standard_normal((30, 4)))
    W = (q1 * np.array([8.0, 4.0, 2.0, 1.0])) @ q2.T
    W = W.astype(np.float32)
    assert ec.LowRankWeight.from_float(W, energy=64 / 85, multiple=1).rank == 1
    assert ec.LowRankWeight.from_float(W, energy=0.80, multiple=1).rank == 2  # 80/85 > 64/85
    assert ec.LowRankWeight.from_float(W, energy=1.0, multiple=1).rank == 4
    assert ec.LowRankWeight.from_float(W, rank=3, multiple=1).rank == 3
    assert ec.LowRankWeight.from_float(W, rank=3).rank == 16  # rounded up to the SIMD width
    assert ec.LowRankWeight.from_float(W, rank=17).rank == 30  # capped at min(N, K)
    w4 = ec.LowRankWeight.from_float(W, rank=4, multiple=1)
    np.testing.assert_allclose(w4.to_float(), W, atol=1e-5)
    w1 = ec.LowRankWeight.from_float(W, rank=1, multiple=1)
    # The best rank-1 approximation leaves exactly the other singular values: ||E||_F^2 = 16+4+1.
    assert abs(np.linalg.norm(w1.to_float() - W) ** 2 - 21.0) < 1e-3
    # Balanced factors: both carry sqrt(8).
    assert abs(np.linalg.norm(w1.u) - np.sqrt(8)) < 1e-5 and abs(np.linalg.norm(w1.v) - np.sqrt(8)) < 1e-5


def test_full_rank_reconstructs(rng):
    W = rng.standard_normal((33, 20)).astype(np.float32)
    w = ec.LowRankWeight.from_float(W, rank=20)
    assert w.rank == 20 and w.shape == (33, 20) and w.nbytes == 4 * 20 * (33 + 20)
    np.testing.assert_allclose(w.to_float(), W, atol=1e-5)


def test_state_dict_copy_and_pickle_round_trip(rng):
    W = rng.standard_normal((48, 64)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    for dtype in ("float32", "int8"):
        w = ec.LowRankWeight.from_float(W, rank=16, dtype=dtype)
        d = w.state_dict()
        assert d["metadata"] == {"format": "lowrank", "version": 1, "dtypes": {"u": dtype, "v": dtype}}
        for w2 in (ec.LowRankWeight.from_state_dict(d), copy.deepcopy(w), pickle.loads(pickle.dumps(w))):
            assert w2.dtype == dtype and w2.rank == 16
            np.testing.assert_array_equal(w2.to_float(), w.to_float())
            np.testing.assert_array_equal(ec.linear(x, w2), ec.linear(x, w))
    assert "rank=16" in repr(w) and "int8" in repr(w)


def test_bad_inputs(rng):
    W = rng.standard_normal((20, 30)).astype(np.float32)
    u, v = _factors(rng, 20, 30, 8)
    with pytest.raises(ValueError, match="exactly one"):
        ec.LowRankWeight.from_float(W)
    with pytest.raises(ValueError, match="exactly one"):
        ec.LowRankWeight.from_float(W, rank=4, energy=0.9)
    with pytest.raises(ValueError, match="energy"):
        ec.LowRankWeight.from_float(W, energy=1.5)
    with pytest.raises(ValueError, match="rank"):
        ec.LowRankWeight.from_float(W, rank=0)
    with pytest.raises(ValueError, match="dtype"):
        ec.LowRankWeight.from_float(W, rank=4, dtype="int4")
    with pytest.raises(ValueError, match="multiple"):
        ec.LowRankWeight.from_float(W, rank=4, multiple=0)
    with pytest.raises(ValueError, match="share r"):
        ec.LowRankWeight(u, v[:5])
    with pytest.raises(TypeError, match="u: expected a float32"):
        ec.LowRankWeight(u.astype(np.float64), v)
    with pytest.raises(ValueError, match="finite"):
        ec.LowRankWeight(u, np.full_like(v, np.nan))
    w = ec.LowRankWeight(u, v)
    for m in (1, 40):
        x = np.ones((m, 30), np.float32)
        x[0, 3] = np.inf
        with pytest.raises(ValueError, match="finite"):
            ec.linear(x, w)
    with pytest.raises(ValueError, match="x: expected shape"):
        ec.linear(np.ones((2, 31), np.float32), w)
    with pytest.raises(ValueError, match="d: missing array 'v.scale'"):
        d = ec.LowRankWeight.from_float(W, rank=4, dtype="int8").state_dict()
        del d["v.scale"]
        ec.LowRankWeight.from_state_dict(d)
    with pytest.raises(ValueError, match="version"):
        d = w.state_dict()
        d["metadata"]["version"] = 99
        ec.LowRankWeight.from_state_dict(d)
