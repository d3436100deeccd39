"""N:M sparse float32 weights (SparseWeight "2:4", "1:4", "4:8"): layout, every tier against the oracle."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import _core
from edgecompress import reference as ref
from sweeps import GEMM_SHAPES

PATTERNS = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}


def _nm_dense(rng, n, k, fmt, density=1.0):
    """A random (N, K) weight with the pattern: per group, up to n nonzeros at random positions (each
    kept slot nonzero with probability `density`, so some groups have fewer), and an all-zero row."""
    kept, group = PATTERNS[fmt]
    groups = -(-k // group)
    w = rng.standard_normal((n, groups, group)).astype(np.float32)
    drop = np.argsort(rng.random((n, groups, group)), axis=-1)[..., kept:]
    np.put_along_axis(w, drop, 0, axis=-1)
    w *= rng.random(w.shape) < density
    w = w.reshape(n, groups * group)[:, :k].copy()
    w[n // 2] = 0
    return w


def _check(got, x, w_dense, bias=None, act=None):
    """The sparse family's oracle: float64 product, within 1e-5 * (|x| @ |W|.T) (+ bias and gelu
    rounding)."""
    want = ref.linear_sparse(x, w_dense, bias, act)
    tol = 1e-5 * (np.abs(x.astype(np.float64)) @ np.abs(w_dense.astype(np.float64)).T) + 1e-30
    if bias is not None:
        tol = tol + 1e-6 * np.abs(bias)[None, :]
    if act == "gelu":
        tol = tol + 1e-6 * np.abs(want)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert (np.abs(got.astype(np.float64) - want) <= tol).all()


@pytest.mark.parametrize("fmt", PATTERNS)
def test_sweep_against_oracle(tier, threads, rng, fmt):
    densities = (1.0, 0.6, 0.2, 0.0)
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        w_dense = _nm_dense(rng, n, k, fmt, densities[i % len(densities)])
        w = ec.SparseWeight.from_float(w_dense, format=fmt)
        np.testing.assert_array_equal(w.to_float(), w_dense)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if i % 3 == 0 else None
        act = (None, "relu", "gelu")[i % 3]
        _check(ec.linear(x, w, bias, act), x, w_dense, bias, act)


@pytest.mark.parametrize("fmt", PATTERNS)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 17, 130])
def test_row_blocks_and_tiles(tier, rng, fmt, m):
    # Rows of x in blocks of 4 and, above 4 rows, tiles of W rows reused across blocks: N spans
    # several tiles, K is not a multiple of the chunk span, N not a multiple of the panel.
    w_dense = _nm_dense(rng, 301, 1001, fmt, 0.8)
    w = ec.SparseWeight.from_float(w_dense, format=fmt)
    x = rng.standard_normal((m, 1001)).astype(np.float32)
    bias = rng.standard_normal(301).astype(np.float32)
    _check(ec.linear(x, w, bias, "relu"), x, w_dense, bias, "relu")


@pytest.mark.parametrize("fmt", PATTERNS)
def test_tiers_agree_within_tolerance(rng, fmt):
    # Tiers with FMA round differently from those without; all stay within the oracle's tolerance
    # and each repeats its own result exactly.
    w_dense = _nm_dense(rng, 70, 500, fmt)
    w = ec.SparseWeight.from_float(w_dense, format=fmt)
    x = rng.standard_normal((6, 500)).astype(np.float32)
    kernels = set()
    for t in ec.runtime.LADDER:
        if _core.tier_support(t)[0]:
            with ec.use_isa(t):
                kernels.add(ec.runtime.sparse_nm_f32_kernel())
                y = ec.linear(x, w)
                _check(y, x, w_dense)
                np.testing.assert_array_equal(ec.linear(x, w), y)
                _check(ec.linear(x[:1], w), x[:1], w_dense)
    assert len(kernels) == sum(k["runs_here"] for k in _core.sparse_nm_f32_kernels())


def test_layout_of_the_arrays():
    # 2:4, 2 bits per position, little-endian within each byte.
    w = np.array([[0, 1.5, 0, -2, 3, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    s = ec.SparseWeight.from_float(w, format="2:4")
    np.testing.assert_array_equal(s.values, [[1.5, -2, 3, 0, 0, 0]])
    # positions 1, 3 | 0, 1 (a lone nonzero keeps the first free slot) | 0, 1 (an empty group)
    assert s.meta.tolist() == [[1 | 3 << 2 | 0 << 4 | 1 << 6, 0 | 1 << 2]]
    assert s.indptr is None and s.indices is None and s.pattern == (2, 4) and s.block == (1, 1)
    # 1:4: four positions per byte.
    s = ec.SparseWeight.from_float(np.array([[0, 0, 0, 7, 0, 5, 0, 0, 0, 0, 0, 0]], np.float32), format="1:4")
    np.testing.assert_array_equal(s.values, [[7, 5, 0]])
    assert s.meta.tolist() == [[3 | 1 << 2 | 0 << 4]]
    # 4:8: one nibble per position, low nibble first.
    w = np.array([[1, 0, 2, 0, 0, 0, 3, 4, 0, 0, 0, 0, 0, 0, 0, 9]], np.float32)
    s = ec.SparseWeight.from_float(w, format="4:8")
    np.testing.assert_array_equal(s.values, [[1, 2, 3, 4, 0, 0, 0, 9]])  # group 1 keeps 9 and 3 free slots
    assert s.meta.tolist() == [[0 | 2 << 4, 6 | 7 << 4, 0 | 1 << 4, 2 | 7 << 4]]
    assert s.nbytes == s.values.nbytes + s.meta.nbytes == 8 * 4 + 4


@pytest.mark.parametrize("fmt", PATTERNS)
@pytest.mark.parametrize("k", [1, 3, 5, 6, 7, 9, 13, 31, 33, 63, 65])
def test_k_not_a_multiple_of_the_group(rng, fmt, k):
    kept, group = PATTERNS[fmt]
    w_dense = _nm_dense(rng, 9, k, fmt)
    w = ec.SparseWeight.from_float(w_dense, format=fmt)
    kp = -(-k // group) * group
    assert w.values.shape == (9, kp * kept // group)
    assert w.meta.shape == (9, -(-w.values.shape[1] * (2 if group == 4 else 4) // 8))
    np.testing.assert_array_equal(w.to_float(), w_dense)
    assert w.sparsity == pytest.approx(1 - w.values.size / (9 * k))
    for m in (1, 6):
        x = rng.standard_normal((m, k)).astype(np.float32)
        _check(ec.linear(x, w), x, w_dense)


@pytest.mark.parametrize("fmt", PATTERNS)
def test_all_zero_weight(rng, fmt):
    w = ec.SparseWeight.from_float(np.zeros((9, 70), np.float32), format=fmt)
    kept, group = PATTERNS[fmt]
    assert not w.values.any() and w.sparsity == pytest.approx(1 - kept / group * 72 / 70)
    x = rng.standard_normal((5, 70)).astype(np.float32)
    np.testing.assert_array_equal(ec.linear(x, w), np.zeros((5, 9), np.float32))
    b = rng.standard_normal(9).astype(np.float32)
    np.testing.assert_array_equal(ec.linear(x, w, b, "relu"), np.broadcast_to(np.maximum(b, 0), (5, 9)))


def test_pattern_violations_are_rejected_with_the_place():
    w = np.zeros((4, 16), np.float32)
    w[2, 4:7] = [1, 2, 3]  # three nonzeros in group 1 of row 2
    with pytest.raises(ValueError, match=r"w: row 2, group 1 \(columns 4\.\.7\) has 3 nonzeros; format '2:4' keeps at most 2"):
        ec.SparseWeight.from_float(w, format="2:4")
    assert ec.SparseWeight.from_float(w, format="4:8").pattern == (4, 8)
    with pytest.raises(ValueError, match=r"row 2, group 1 .* format '1:4' keeps at most 1 of every 4"):
        ec.SparseWeight.from_float(w, format="1:4")
    w[0, 0:5] = 1  # five in group 0 of row 0: the first violation is reported
    with pytest.raises(ValueError, match=r"row 0, group 0 \(columns 0\.\.7\) has 5 nonzeros; format '4:8'"):
        ec.SparseWeight.from_float(w, format="4:8")
    # A partial last group: K = 6, group 1 covers columns 4..5.
    w = np.zeros((1, 6), np.float32)
    w[0, 3:6] = 1
    with pytest.raises(ValueError, match=r"row 0, group 1 \(columns 4\.\.5\) has 2 nonzeros; format '1:4'"):
        ec.SparseWeight.from_float(w, format="1:4")


@pytest.mark.parametrize("fmt", PATTERNS)
def test_state_dict_pickle_and_copy_round_trip(rng, fmt):
    w_dense = _nm_dense(rng, 13, 50, fmt, 0.7)
    w = ec.SparseWeight.from_float(w_dense, format=fmt)
    d = w.state_dict()
    assert set(d) == {"values", "meta", "metadata"}
    assert d["metadata"] == {"format": "sparse", "version": 2, "layout": fmt, "shape": [13, 50]}
    json.dumps(d["metadata"])
    x = rng.standard_normal((3, 50)).astype(np.float32)
    for w2 in (ec.SparseWeight.from_state_dict(d), copy.deepcopy(w), pickle.loads(pickle.dumps(w))):
        assert w2.format == fmt and w2.shape == (13, 50)
        np.testing.assert_array_equal(w2.to_float(), w_dense)
        np.testing.assert_array_equal(w2.meta, w.meta)
        np.testing.assert_array_equal(ec.linear(x, w2), ec.linear(x, w))


def test_state_dict_versions_stay_compatible(rng):
    w_dense = _nm_dense(rng, 8, 32, "2:4")
    csr = ec.SparseWeight.from_float(w_dense)
    d = csr.state_dict()
    assert d["metadata"]["version"] == 1  # csr/bsr files stay readable by releases before n:m
    np.testing.assert_array_equal(ec.SparseWeight.from_state_dict(d).to_float(), w_dense)
    nm = ec.SparseWeight.from_float(w_dense, format="2:4").state_dict()
    with pytest.raises(ValueError, match="layout '2:4' needs format version 2"):
        ec.SparseWeight.from_state_dict({**nm, "metadata": {**nm["metadata"], "version": 1}})
    with pytest.raises(ValueError, match="version 3 is not supported"):
        ec.SparseWeight.from_state_dict({**nm, "metadata": {**nm["metadata"], "version": 3}})
    with pytest.raises(ValueError, match="missing array 'meta'"):
        ec.SparseWeight.from_state_dict({"values": nm["values"], "metadata": nm["metadata"]})


def test_bad_arrays_are_clear_errors(rng):
    w = ec.SparseWeight.from_float(_nm_dense(rng, 4, 16, "2:4"), format="2:4")
    v, m = np.array(w.values), np.array(w.meta)
    with pytest.raises(ValueError, match="indptr, indices: a 2:4 weight has none"):
        ec.SparseWeight(np.zeros(5, np.int64), None, v, (4, 16), "2:4", meta=m)
    with pytest.raises(ValueError, match="meta: only the n:m formats"):
        ec.SparseWeight(np.zeros(5, np.int64), np.zeros(0, np.uint16), np.zeros((0, 1), np.float32), (4, 16), meta=m)
    with pytest.raises(ValueError, match=r"values: expected float32 of shape \(4, 8\) for 2:4 with K = 16"):
        ec.SparseWeight(None, None, v[:, :6], (4, 16), "2:4", meta=m)
    with pytest.raises(ValueError, match="values: expected float32"):
        ec.SparseWeight(None, None, v.astype(np.float64), (4, 16), "2:4", meta=m)
    with pytest.raises(ValueError, match=r"meta: expected uint8 of shape \(4, 2\)"):
        ec.SparseWeight(None, None, v, (4, 16), "2:4", meta=None)
    with pytest.raises(ValueError, match="meta: expected strictly increasing positions"):
        ec.SparseWeight(None, None, v, (4, 16), "2:4", meta=np.full_like(m, 0b00010001 * 0b11))  # positions 3, 0
    bad = np.array(v)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="values: expected finite"):
        ec.SparseWeight(None, None, bad, (4, 16), "2:4", meta=m)
    # 4:8 positions are 0..7: a nibble with its high bit set is refused, as are unused bits.
    w8 = ec.SparseWeight.from_float(_nm_dense(rng, 2, 8, "4:8"), format="4:8")
    with pytest.raises(ValueError, match=r"meta: expected 4-bit positions in 0\.\.7"):
        ec.SparseWeight(None, None, np.array(w8.values), (2, 8), "4:8", meta=np.array(w8.meta) | 0x80)
    w1 = ec.SparseWeight.from_float(np.zeros((1, 4), np.float32), format="1:4")  # one position: 6 unused bits
    with pytest.raises(ValueError, match="unused bits 0"):
        ec.SparseWeight(None, None, np.array(w1.values), (1, 4), "1:4", meta=np.array([[0b100]], np.uint8))
    # The padding columns past K hold zeros.
    w5 = ec.SparseWeight.from_float(np.zeros((1, 5), np.float32), format="2:4")  # group 1: columns 4..7
    vals = np.array(w5.values)
    vals[0, 3] = 1.0  # position 1 of group 1 = column 5 >= K
    with pytest.raises(ValueError, match=r"values: expected zeros at the padding columns 5\.\.7"):
        ec.SparseWeight(None, None, vals, (1, 5), "2:4", meta=np.array(w5.meta))
    with pytest.raises(ValueError, match="format: expected one of csr, bsr4x1, bsr8x1, 2:4, 1:4, 4:8"):
        ec.SparseWeight.from_float(np.zeros((4, 4), np.float32), format="2:8")


def test_bad_inputs_to_linear(rng):
    w = ec.SparseWeight.from_float(_nm_dense(rng, 8, 32, "2:4"), format="2:4")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 32), np.float32)
        x[1, 31] = bad
        with pytest.raises(ValueError, match="x: expected finite"):
            ec.linear(x, w)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 32\)"):
        ec.linear(np.ones((2, 31), np.float32), w)
    with pytest.raises(TypeError, match="x: expected float32"):
        ec.linear(np.ones((2, 32), np.float64), w)
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        ec.linear(np.ones((2, 32), np.float32), w, np.ones(7, np.float32))
    with pytest.raises(ValueError, match="act_scheme"):
        ec.linear(np.ones((2, 32), np.float32), w, act_scale=0.1)


def test_linear_out_batch_dims_and_strides(rng):
    w_dense = _nm_dense(rng, 20, 64, "4:8")
    w = ec.SparseWeight.from_float(w_dense, format="4:8")
    x = rng.standard_normal((2, 3, 128)).astype(np.float32)[..., ::2]  # strided: copied
    out = np.empty((2, 3, 20), np.float32)
    assert ec.linear(x, w, out=out) is out
    _check(out.reshape(6, 20), np.ascontiguousarray(x).reshape(6, 64), w_dense)


def test_auto_considers_the_patterns_the_weight_has(rng):
    w_dense = _nm_dense(rng, 96, 256, "2:4")  # also 4:8 (at most 4 of 8), not 1:4
    w = ec.SparseWeight.from_float(w_dense, format="auto", rows=1)
    assert set(w.auto["seconds"]) == {"csr", "bsr4x1", "bsr8x1", "2:4", "4:8"}
    assert w.auto["seconds"][w.format] == min(w.auto["seconds"].values())
    np.testing.assert_array_equal(w.to_float(), w_dense)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    _check(ec.linear(x, w), x, w_dense)


def test_packing_and_kernel_listing(rng):
    w = ec.SparseWeight.from_float(_nm_dense(rng, 6, 40, "1:4"), format="1:4")
    kernel = ec.cpu_info()["families"]["sparse_nm_f32"]["kernel"]
    p = ec.ops.packed(w)
    assert ec.ops.packed(w) is p and p.kernel == kernel
    # 2 panels x 1 chunk x 4 rows x (16 values + one 4-byte word)
    assert p.nbytes == 2 * 4 * (16 * 4 + 4)
    names = [k["name"] for k in _core.sparse_nm_f32_kernels()]
    assert names[0] == "sparse_nm_f32_scalar" and _core.sparse_nm_f32_select("scalar") == names[0]
    with pytest.raises(ValueError, match="unknown kernel"):
        _core.pack_sparse_nm_f32(6, 40, 1, 4, w.values, w.meta, "sparse_f32_scalar")
    with pytest.raises(ValueError, match="kept, group"):
        _core.pack_sparse_nm_f32(6, 40, 3, 4, w.values, w.meta, names[0])
    with pytest.raises(ValueError, match="meta: expected uint8"):
        _core.pack_sparse_nm_f32(6, 40, 1, 4, w.values, w.meta[:, :1].copy(), names[0])
