"""Sparse float32 weights (SparseWeight): every format and tier against the numpy oracle."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import reference as ref
from sweeps import GEMM_SHAPES

FORMATS = ["csr", "bsr4x1", "bsr8x1"]
SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def _pruned(rng, n, k, sparsity, block=1):
    """A weight with `sparsity` of its blocks (block x 1 along N) zeroed, and an all-zero row."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    rows = -(-n // block)
    keep = rng.random((rows, k)) >= sparsity
    mask = np.repeat(keep, block, axis=0)[:n]
    w *= mask
    w[n // 2] = 0  # an all-zero output row
    return w


def _check(got, x, w_dense, bias=None, act=None):
    want = ref.linear_sparse(x, w_dense, bias, act)
    tol = 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w_dense.astype(np.float64)).T) + 1e-30
    if bias is not None:
        tol = tol + 1e-6 * np.abs(bias)[None, :]
    if act == "gelu":
        tol = tol + 1e-6 * np.abs(want)
    assert (np.abs(got.astype(np.float64) - want) <= tol).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_sweep_against_oracle(tier, threads, rng, fmt):
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        sparsity = SPARSITIES[i % len(SPARSITIES)]
        w_dense = _pruned(rng, n, k, sparsity, {"csr": 1, "bsr4x1": 4, "bsr8x1": 8}[fmt] if i % 2 else 1)
        w = ec.SparseWeight.from_float(w_dense, format=fmt)
        np.testing.assert_array_equal(w.to_float(), w_dense)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if i % 3 == 0 else None
        act = (None, "relu", "gelu")[i % 3]
        _check(ec.linear(x, w, bias, act), x, w_dense, bias, act)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 17, 64, 130])
def test_spmv_and_spmm_paths(tier, rng, fmt, m):
    for sparsity in SPARSITIES:
        w_dense = _pruned(rng, 45, 300, sparsity, 4)
        w = ec.SparseWeight.from_float(w_dense, format=fmt)
        x = rng.standard_normal((m, 300)).astype(np.float32)
        _check(ec.linear(x, w), x, w_dense)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_csr_gemv_rows_of_very_different_lengths(tier, rng, m):
    # Packed GEMV layouts that put 16 rows side by side must pad the short rows and let the busiest
    # ones spill: rows range from empty to dense in every group of 16, the last group is partial and
    # K ends inside a slice.
    n, k = 45, 301
    density = np.tile(np.array([0.0, 1.0, 0.02, 0.5, 0.9, 0.1, 1.0, 0.0, 0.3, 0.05, 0.7, 1.0, 0.01, 0.2, 0.95, 0.6]), 3)[:n]
    w_dense = (rng.standard_normal((n, k)) * (rng.random((n, k)) < density[:, None])).astype(np.float32)
    w = ec.SparseWeight.from_float(w_dense, format="csr")
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for act in (None, "relu", "gelu"):
        _check(ec.linear(x, w, bias, act), x, w_dense, bias, act)


def test_tiers_agree_within_tolerance(rng):
    # Tiers with FMA round differently from those without; all stay within the oracle's tolerance.
    w_dense = _pruned(rng, 70, 500, 0.75)
    x = rng.standard_normal((6, 500)).astype(np.float32)
    for fmt in FORMATS:
        w = ec.SparseWeight.from_float(w_dense, format=fmt)
        for t in ec.runtime.LADDER:
            if ec._core.tier_support(t)[0]:
                with ec.use_isa(t):
                    _check(ec.linear(x, w), x, w_dense)
                    _check(ec.linear(x[:2], w), x[:2], w_dense)


def test_all_zero_weight_and_wide_k(rng):
    w = ec.SparseWeight.from_float(np.zeros((9, 70000), np.float32))
    assert w.nnz == 0 and w.sparsity == 1.0 and w.indices.dtype == np.int32
    np.testing.assert_array_equal(ec.linear(np.ones((2, 70000), np.float32), w), np.zeros((2, 9), np.float32))
    w_dense = _pruned(rng, 5, 70000, 0.99)
    w = ec.SparseWeight.from_float(w_dense)
    x = rng.standard_normal((2, 70000)).astype(np.float32)
    _check(ec.linear(x, w), x, w_dense)


def test_formats_store_what_they_say(rng):
    w_dense = _pruned(rng, 16, 40, 0.5, 4)
    csr = ec.SparseWeight.from_float(w_dense)
    assert csr.nnz == np.count_nonzero(w_dense) and csr.indices.dtype == np.uint16
    bsr = ec.SparseWeight.from_float(w_dense, format="bsr4x1")
    assert bsr.values.shape[1] == 4 and bsr.nnz >= csr.nnz
    assert abs(bsr.sparsity - (1 - bsr.nnz / w_dense.size)) < 1e-12


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_and_copy_round_trip(rng, fmt):
    w_dense = _pruned(rng, 13, 50, 0.7)
    w = ec.SparseWeight.from_float(w_dense, format=fmt)
    w2 = ec.SparseWeight.from_state_dict(w.state_dict())
    np.testing.assert_array_equal(w2.to_float(), w_dense)
    np.testing.assert_array_equal(copy.deepcopy(w).to_float(), w_dense)
    assert w2.format == fmt and w2.shape == (13, 50)


def test_bad_inputs_are_clear_errors(rng):
    w = ec.SparseWeight.from_float(_pruned(rng, 8, 32, 0.5))
    with pytest.raises(ValueError, match="format"):
        ec.SparseWeight.from_float(np.ones((4, 4), np.float32), format="coo")
    with pytest.raises(ValueError, match="dtype"):
        ec.SparseWeight.from_float(np.ones((4, 4), np.float32), dtype="int4")
    with pytest.raises(ValueError, match="format"):
        ec.SparseWeight.from_float(np.ones((4, 4), np.float32), format="bsr1x4")  # an int8 layout
    with pytest.raises(ValueError, match="format"):
        ec.SparseWeight.from_float(np.ones((4, 4), np.float32), format="bsr4x1", dtype="int8")
    with pytest.raises(ValueError, match="finite"):
        ec.SparseWeight.from_float(np.full((4, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="indices"):
        ec.SparseWeight(w.indptr, np.full_like(w.indices, 40), w.values, (8, 32))
    with pytest.raises(ValueError, match="indptr"):
        ec.SparseWeight(w.indptr[::-1].copy(), w.indices, w.values, (8, 32))
    with pytest.raises(ValueError, match="values"):
        ec.SparseWeight(w.indptr, w.indices, w.values.astype(np.float64), (8, 32))
    x = np.ones((2, 32), np.float32)
    x[1, 3] = np.inf
    with pytest.raises(ValueError, match="x: expected finite"):
        ec.linear(x, w)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 32\)"):
        ec.linear(np.ones((2, 31), np.float32), w)
    with pytest.raises(ValueError, match="act_scheme"):
        ec.linear(np.ones((2, 32), np.float32), w, act_scale=0.1)


@pytest.mark.parametrize("rows", [1, 64])
def test_auto_picks_a_measured_format_and_stays_correct(rng, rows):
    for sparsity, block in ((0.5, 1), (0.9, 4)):
        w_dense = _pruned(rng, 96, 256, sparsity, block)
        w = ec.SparseWeight.from_float(w_dense, format="auto", rows=rows)
        assert w.auto is not None and w.auto["chosen"] == w.format
        # The n:m formats compete too where the pruning happens to have their pattern.
        fits = set()
        for fmt in ("2:4", "1:4", "4:8"):
            try:
                ec.SparseWeight.from_float(w_dense, format=fmt)
                fits.add(fmt)
            except ValueError:
                pass
        assert set(w.auto["seconds"]) == set(FORMATS) | fits and w.auto["rows"] == rows
        assert w.auto["seconds"][w.format] == min(w.auto["seconds"].values())
        assert isinstance(w.auto["dense_faster"], bool)
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        _check(ec.linear(x, w), x, w_dense)
        np.testing.assert_array_equal(w.to_float(), w_dense)
    with pytest.raises(ValueError, match="rows"):
        ec.SparseWeight.from_float(w_dense, format="auto", rows=0)


# --- int8 values (csr and 1 x 4 blocks along K) ------------------------------------------------

INT8_FORMATS = ["csr", "bsr1x4"]


def _pruned_k(rng, n, k, sparsity, block=1):
    """A weight with `sparsity` of its 1 x block groups along K zeroed, and an all-zero row."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    keep = rng.random((n, -(-k // block))) >= sparsity
    w *= np.repeat(keep, block, axis=1)[:, :k]
    w[n // 2] = 0
    return w


def _check_int8(got, x, w, bias=None, act=None):
    """Bit for bit the dense int8 oracle on the stored weight (gelu: float32 erf vs float64)."""
    want = ref.linear_int8(x, w._dense_blocks(), w.scale, bias, act)
    if act == "gelu":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_int8_sweep_bit_exact(tier, threads, rng, fmt):
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        sparsity = SPARSITIES[i % len(SPARSITIES)]
        w_dense = _pruned_k(rng, n, k, sparsity, 4 if (fmt == "bsr1x4" and i % 2) else 1)
        w = ec.SparseWeight.from_float(w_dense, format=fmt, dtype="int8")
        assert w.dtype == "int8" and w.values.dtype == np.int8 and w.scale.shape == (n,)
        q, scale = ref.quantize_weight_int8(w_dense)
        np.testing.assert_array_equal(w._dense_blocks(), q)
        np.testing.assert_array_equal(w.scale, scale)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if i % 3 == 0 else None
        act = (None, "relu", "gelu")[i % 3]
        got = ec.linear(x, w, bias, act)
        _check_int8(got, x, w, bias, act)
        # ... and the very bits of our dense int8 kernel on the same weight (same epilogue code path).
        np.testing.assert_array_equal(got, ec.linear(x, ec.Int8Weight(q, scale), bias, act))


@pytest.mark.parametrize("fmt", INT8_FORMATS)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 17, 64, 130])
def test_int8_spmv_and_spmm_paths(tier, rng, fmt, m):
    for sparsity in SPARSITIES:
        w_dense = _pruned_k(rng, 45, 301, sparsity, 4)
        w = ec.SparseWeight.from_float(w_dense, format=fmt, dtype="int8")
        x = rng.standard_normal((m, 301)).astype(np.float32)
        x[0] *= 1e4  # one loud row: per-row scales differ widely
        _check_int8(ec.linear(x, w), x, w)


def test_int8_layouts_store_what_they_should(rng):
    w_dense = np.zeros((3, 10), np.float32)
    w_dense[0, [1, 2, 9]] = [1.0, -2.0, 0.5]
    w_dense[2, 4] = 3.0
    csr = ec.SparseWeight.from_float(w_dense, format="csr", dtype="int8")
    assert csr.indptr.tolist() == [0, 3, 3, 4] and csr.indices.tolist() == [1, 2, 9, 4]
    assert csr.values.ravel().tolist() == [64, -127, 32, 127]  # round(w / (max|row| / 127))
    b = ec.SparseWeight.from_float(w_dense, format="bsr1x4", dtype="int8")
    assert b.indptr.tolist() == [0, 2, 2, 3] and b.indices.tolist() == [0, 2, 1]  # blocks of k / 4
    assert b.values.tolist() == [[0, 64, -127, 0], [0, 32, 0, 0], [127, 0, 0, 0]]
    assert b.nbytes == 4 * 8 + 3 * 2 + 3 * 4 + 3 * 4 and abs(b.sparsity - (1 - 12 / 30)) < 1e-12
    np.testing.assert_allclose(b.to_float(), w_dense, atol=2.0 / 127)
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    np.testing.assert_array_equal(ec.linear(x, csr), ec.linear(x, b))


def test_int8_all_zero_and_wide_k(rng):
    w = ec.SparseWeight.from_float(np.zeros((9, 70000), np.float32), dtype="int8")
    assert w.nnz == 0 and w.indices.dtype == np.int32  # csr: K > 65536
    np.testing.assert_array_equal(ec.linear(np.ones((2, 70000), np.float32), w), np.zeros((2, 9), np.float32))
    w_dense = _pruned_k(rng, 5, 70000, 0.99)
    for fmt in INT8_FORMATS:
        w = ec.SparseWeight.from_float(w_dense, format=fmt, dtype="int8")
        x = rng.standard_normal((3, 70000)).astype(np.float32)
        _check_int8(ec.linear(x, w), x, w)


def test_int8_state_dict_and_copy(rng):
    w_dense = _pruned_k(rng, 13, 50, 0.7, 4)
    for fmt in INT8_FORMATS:
        w = ec.SparseWeight.from_float(w_dense, format=fmt, dtype="int8")
        d = w.state_dict()
        assert d["scale"] is w.scale and d["metadata"]["layout"] == fmt
        for w2 in (ec.SparseWeight.from_state_dict(d), copy.deepcopy(w)):
            assert w2.dtype == "int8" and w2.format == fmt
            np.testing.assert_array_equal(w2.to_float(), w.to_float())


def test_int8_bad_inputs(rng):
    w = ec.SparseWeight.from_float(_pruned_k(rng, 8, 32, 0.5), dtype="int8")
    with pytest.raises(ValueError, match="scale: expected float32"):
        ec.SparseWeight(w.indptr, w.indices, w.values, (8, 32))
    with pytest.raises(ValueError, match="-128"):
        ec.SparseWeight(w.indptr, w.indices, np.full_like(w.values, -128), (8, 32), scale=w.scale)
    with pytest.raises(ValueError, match="scale: expected finite"):
        ec.SparseWeight(w.indptr, w.indices, w.values, (8, 32), scale=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="scale: only int8"):
        ec.SparseWeight(w.indptr, w.indices, w.values.astype(np.float32), (8, 32), scale=w.scale)
    with pytest.raises(ValueError, match="act_scheme"):
        ec.linear(np.ones((2, 32), np.float32), w, act_scheme="asymmetric")
    x = np.ones((2, 32), np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="x: expected finite"):
        ec.linear(x, w)


@pytest.mark.parametrize("rows", [1, 64])
def test_int8_auto(rng, rows):
    w_dense = _pruned_k(rng, 96, 256, 0.9, 4)
    w = ec.SparseWeight.from_float(w_dense, format="auto", dtype="int8", rows=rows)
    # csr and bsr1x4 run one kernel on the same blocks: only the smaller is timed and kept
    other = ec.SparseWeight.from_float(w_dense, format=w.auto["same_blocks"], dtype="int8")
    assert w.dtype == "int8" and set(w.auto["seconds"]) | {other.format} == set(INT8_FORMATS)
    assert w.format != other.format and w.nbytes <= other.nbytes
    assert w.auto["seconds"][w.format] == min(w.auto["seconds"].values())
    x = rng.standard_normal((rows, 256)).astype(np.float32)
    _check_int8(ec.linear(x, w), x, w)


@pytest.mark.parametrize("block", [1, 4])
def test_int8_csr_packs_to_the_blocks_of_bsr1x4(rng, block):
    # What lets format="auto" time only one of the two int8 layouts: the same kernel input.
    from edgecompress.ops.packing import csr_to_1x4

    w_dense = _pruned_k(rng, 40, 300, 0.7, block)
    w_dense[3, 7] = 1e-7  # quantizes to zero: neither layout may keep it (or a block for it)
    csr = ec.SparseWeight.from_float(w_dense, format="csr", dtype="int8")
    bsr = ec.SparseWeight.from_float(w_dense, format="bsr1x4", dtype="int8")
    indptr, indices, values = csr_to_1x4(csr.indptr, csr.indices, csr.values.reshape(-1), 40, 300)
    np.testing.assert_array_equal(indptr, bsr.indptr)
    np.testing.assert_array_equal(indices, bsr.indices)
    np.testing.assert_array_equal(values.reshape(-1), bsr.values.reshape(-1))
    np.testing.assert_array_equal(csr.scale, bsr.scale)


@pytest.mark.parametrize("fmt, dtype", [("csr", "float32"), ("bsr4x1", "float32"), ("csr", "int8"), ("bsr1x4", "int8")])
def test_columns_out_of_order_or_listed_twice_in_a_row_are_refused(rng, fmt, dtype):
    # The kernels add every copy of a column that to_float() keeps once; for int8 bsr1x4 enough
    # copies of one block would wrap the int32 accumulator. The canonical arrays list each row's
    # columns once, in increasing order.
    w = ec.SparseWeight.from_float(_pruned_k(rng, 12, 64, 0.5, 4), format=fmt, dtype=dtype)
    row = 2 if fmt != "bsr4x1" else 1
    a, b = int(w.indptr[row]), int(w.indptr[row + 1])
    assert b - a >= 2
    order = np.arange(len(w.indices))
    order[a], order[a + 1] = a + 1, a
    what = "block row" if fmt == "bsr4x1" else "row"
    with pytest.raises(ValueError, match=rf"indices: expected strictly increasing columns within each {re.escape(what)}, "
                                         rf"{re.escape(what)} {row} has {w.indices[a]} after {w.indices[a + 1]}"):
        ec.SparseWeight(w.indptr, w.indices[order], w.values[order], w.shape, fmt, w.scale)
    # the same block 1000 times in one row, through a state dict (as a crafted file would hold it)
    d = w.state_dict()
    d["indptr"] = np.array([0] + [1000] * w.indptr.size, np.int64)[:w.indptr.size]
    d["indices"] = np.full(1000, w.indices[0], w.indices.dtype)
    d["values"] = np.repeat(w.values[:1], 1000, axis=0)
    with pytest.raises(ValueError, match=f"{what} 0 has {w.indices[0]} after {w.indices[0]}"):
        ec.SparseWeight.from_state_dict(d)


def test_values_past_k_or_n_in_the_last_blocks_are_refused(rng):
    # bsr1x4 with K % 4 != 0: some tiers read the padding columns of the last block, others do not.
    w = ec.SparseWeight.from_float(_pruned_k(rng, 6, 30, 0.3), format="bsr1x4", dtype="int8")
    last = np.flatnonzero(w.indices == 7)  # columns 28..31 of K = 30
    assert last.size
    values = w.values.copy()
    values[last[0], 3] = 90
    with pytest.raises(ValueError, match=r"values: expected zeros at the padding columns 30\.\.31 \(past K = 30\)"):
        ec.SparseWeight(w.indptr, w.indices, values, w.shape, "bsr1x4", w.scale)
    f = ec.SparseWeight.from_float(_pruned(rng, 10, 16, 0.3), format="bsr8x1")  # rows 10..15 pad the last block row
    values = f.values.copy()
    values[-1, 5] = 1.0
    with pytest.raises(ValueError, match=r"values: expected zeros at the padding rows 10\.\.15 \(past N = 10\)"):
        ec.SparseWeight(f.indptr, f.indices, values, f.shape, "bsr8x1")


@pytest.mark.parametrize("kind", ["csr", "2:4", "lowrank", "int4-float"])
def test_float_error_within_the_bound_at_long_k(tier, kind):
    # The documented float32 bound grows with K: one large term followed by many below half its ulp
    # comes close to it (every term lost in the large term's chain), far past any fixed 1e-5.
    k = 2**20
    x = np.full((1, k), 2.0**-25, np.float32)
    x[0, 0] = 1.0
    w_dense = np.ones((1, k), np.float32)
    if kind == "lowrank":
        u = np.ones((1, 1), np.float32)
        w = ec.LowRankWeight(u, w_dense)
        tol = ref.lowrank_tolerance(x, u, w_dense)
    else:
        if kind == "2:4":
            w_dense[0, 1::2] = 0
            w = ec.SparseWeight.from_float(w_dense, format="2:4")
        elif kind == "csr":
            w = ec.SparseWeight.from_float(w_dense, format="csr")
        else:
            w = ec.Int4Weight.from_float(w_dense, compute="float")
            w_dense = w.to_float()
        tol = ref.sparse_tolerance(x, w_dense)
    want = x.astype(np.float64) @ w_dense.astype(np.float64).T
    err = np.abs(ec.linear(x, w).astype(np.float64) - want)
    assert (err <= tol).all(), f"error {err.max() / want.max():.2e} of the magnitude, bound {tol.max() / want.max():.2e}"
    assert tol.max() / want.max() < 0.07  # gamma(2^20 + 5): the bound stays a useful one
