"""Sparse float32 weights (SparseWeight): every format and tier against the numpy oracle."""

from __future__ import annotations

import copy

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
        ec.SparseWeight.from_float(np.ones((4, 4), np.float32), dtype="int8")
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
