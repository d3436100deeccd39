"""int8 GEMM: every tier against the numpy oracle over the shared sweep."""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import reference as ref
from sweeps import GEMM_SHAPES


def _problem(rng, m, k, n, granularity="channel"):
    w = ec.Int8Weight.from_float(rng.standard_normal((n, k)).astype(np.float32), granularity)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return w, x, bias


def _oracle(x, w, **kw):
    return ref.linear_int8(x, w.qweight, w.scale, **kw)


def test_qgemm_sweep_exact(tier, threads, rng):
    for m, k, n in GEMM_SHAPES:
        b = rng.integers(-127, 128, (n, k)).astype(np.int8)
        a8 = rng.integers(-128, 128, (m, k)).astype(np.int8)
        au = rng.integers(0, 256, (m, k)).astype(np.uint8)
        np.testing.assert_array_equal(ec.ops.qgemm(a8, b), ref.qgemm(a8, b), err_msg=f"int8 {(m, k, n)}")
        np.testing.assert_array_equal(ec.ops.qgemm(au, b), ref.qgemm(au, b), err_msg=f"uint8 {(m, k, n)}")


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_linear_sweep_matches_oracle(tier, threads, rng, scheme):
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        w, x, bias = _problem(rng, m, k, n, "channel" if i % 2 else "tensor")
        b = bias if i % 3 else None
        got = ec.linear(x, w, b, act_scheme=scheme)
        np.testing.assert_array_equal(got, _oracle(x, w, bias=b, act_scheme=scheme), err_msg=f"{(m, k, n)}")


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_epilogues(tier, rng, activation, scheme, granularity):
    w, x, bias = _problem(rng, 37, 300, 75, granularity)
    got = ec.linear(x, w, bias, activation, act_scheme=scheme)
    want = _oracle(x, w, bias=bias, activation=activation, act_scheme=scheme)
    if activation == "gelu":  # float32 erf in the kernels, float64 in the oracle
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scheme,zero_point", [("symmetric", None), ("asymmetric", 0), ("asymmetric", 131)])
def test_static_activation_scale(tier, rng, scheme, zero_point):
    w, x, bias = _problem(rng, 21, 130, 40)
    scale = float(np.abs(x).max() / 100)  # some values saturate
    got = ec.linear(x, w, bias, act_scheme=scheme, act_scale=scale, act_zero_point=zero_point)
    want = _oracle(x, w, bias=bias, act_scheme=scheme, act_scale=np.float32(scale), act_zero_point=zero_point)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("a_value,w_value", [(-128, -127), (-128, 127), (127, -127), (127, 127)])
def test_extremes_deep_k_exact(tier, a_value, w_value):
    k = 8192
    a = np.full((3, k), a_value, np.int8)
    b = np.full((37, k), w_value, np.int8)
    np.testing.assert_array_equal(ec.ops.qgemm(a, b), np.full((3, 37), a_value * w_value * k, np.int32))
    au = np.full((3, k), 255 if a_value < 0 else 0, np.uint8)
    np.testing.assert_array_equal(ec.ops.qgemm(au, b), ref.qgemm(au, b))


def test_largest_exact_k(tier):
    # The longest K linear accepts for int8 activations, at full magnitude: still exact.
    k = (2**31 - 1) // (127 * 128)
    a = np.full((1, k), -128, np.int8)
    b = np.full((5, k), -127, np.int8)
    assert ec.ops.qgemm(a, b)[0, 0] == 128 * 127 * k


def test_tiers_agree_bit_for_bit(rng):
    w, x, bias = _problem(rng, 45, 513, 99)
    results = {}
    for t in ec.runtime.LADDER:
        if ec._core.tier_support(t)[0]:
            with ec.use_isa(t):
                results[t] = (ec.linear(x, w, bias, "gelu"), ec.ops.qgemm(w.qweight[:45], w.qweight))
    first = next(iter(results.values()))
    for t, (y, q) in results.items():
        np.testing.assert_array_equal(y, first[0], err_msg=t)
        np.testing.assert_array_equal(q, first[1], err_msg=t)


def test_batch_shapes_and_zero_rows(rng):
    w, x, bias = _problem(rng, 24, 64, 10)
    x3 = x.reshape(2, 3, 4, 64)
    y = ec.linear(x3, w, bias)
    assert y.shape == (2, 3, 4, 10)
    np.testing.assert_array_equal(y.reshape(24, 10), ec.linear(x, w, bias))
    np.testing.assert_array_equal(ec.linear(x[0], w, bias), ec.linear(x[:1], w, bias)[0])
    assert ec.linear(np.zeros((0, 64), np.float32), w).shape == (0, 10)
    zeros = np.zeros((2, 64), np.float32)
    np.testing.assert_array_equal(ec.linear(zeros, w, bias), np.tile(bias, (2, 1)))


def test_non_contiguous_and_unaligned_inputs_are_copied(rng):
    w, x, bias = _problem(rng, 8, 64, 16)
    want = ec.linear(x, w, bias)
    strided = np.zeros((8, 128), np.float32)
    strided[:, ::2] = x
    np.testing.assert_array_equal(ec.linear(strided[:, ::2], w, bias), want)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(x.shape)
    unaligned[...] = x
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(ec.linear(unaligned, w, bias), want)
    np.testing.assert_array_equal(ec.linear(np.asfortranarray(x), w, bias), want)


def test_inputs_are_not_modified(rng):
    w, x, bias = _problem(rng, 9, 70, 33)
    x0, b0, q0 = x.copy(), bias.copy(), w.qweight.copy()
    ec.linear(x, w, bias, "relu")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(bias, b0)
    np.testing.assert_array_equal(w.qweight, q0)


def test_out_parameter_writes_only_the_result(tier, threads, rng):
    # The result lands in a view of a larger buffer; the guard regions around it keep their sentinel.
    for m, k, n in [(1, 64, 65), (7, 33, 17), (130, 128, 200)]:
        w, x, bias = _problem(rng, m, k, n)
        buf = np.full(m * n + 64, np.float32(-7.25), np.float32)
        out = buf[32 : 32 + m * n].reshape(m, n)
        y = ec.linear(x, w, bias, "relu", out=out)
        assert y is out
        np.testing.assert_array_equal(out, _oracle(x, w, bias=bias, activation="relu"))
        assert (buf[:32] == np.float32(-7.25)).all() and (buf[32 + m * n :] == np.float32(-7.25)).all()
    x3 = x.reshape(2, 65, 128)
    out3 = np.empty((2, 65, 200), np.float32)
    np.testing.assert_array_equal(ec.linear(x3, w, bias, out=out3).reshape(130, 200), ec.linear(x, w, bias))


def test_copies_repack_and_agree(rng):
    import copy
    import pickle

    w, x, bias = _problem(rng, 5, 40, 9)
    y = ec.linear(x, w, bias)
    for clone in (copy.deepcopy(w), pickle.loads(pickle.dumps(w))):
        np.testing.assert_array_equal(clone.qweight, w.qweight)
        np.testing.assert_array_equal(ec.linear(x, clone, bias), y)


def test_scale_products_beyond_float32(tier):
    # x near FLT_MAX: x_scale * w_scale overflows float32, so the row is scaled in float64; a zero
    # accumulator still gives 0 (not NaN) and the finite result stays finite.
    w = ec.Int8Weight.from_float(np.array([[18295.0, 0.0], [0.0, 1e-3]], np.float32))
    x = np.array([[0.0, 3.3e38], [1.0, 2.0]], np.float32)
    y = ec.linear(x, w)
    np.testing.assert_array_equal(y, _oracle(x, w))
    assert y[0, 0] == 0 and np.isfinite(y).all()
    np.testing.assert_allclose(y[0, 1], 3.3e35, rtol=1e-2)
    np.testing.assert_allclose(y[1], [18295.0, 2e-3], rtol=1e-2)
