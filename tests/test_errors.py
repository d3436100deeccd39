"""Bad input raises TypeError/ValueError naming the argument, the expectation and what was given."""

from __future__ import annotations

import numpy as np
import pytest

import edgecompress as ec


@pytest.fixture
def w(rng):
    return ec.Int8Weight.from_float(rng.standard_normal((6, 8)).astype(np.float32))


X = np.ones((2, 8), np.float32)


@pytest.mark.parametrize(
    "call,exc,words",
    [
        (lambda w: ec.linear(X.astype(np.float64), w), TypeError, ["x: expected float32", "float64"]),
        (lambda w: ec.linear(X.astype(np.int8), w), TypeError, ["x: expected float32", "int8"]),
        (lambda w: ec.linear([[1.0] * 8], w), TypeError, ["x: expected float32"]),
        (lambda w: ec.linear(np.ones((2, 7), np.float32), w), ValueError, ["x: expected shape (..., 8)", "(2, 7)"]),
        (lambda w: ec.linear(np.float32(1.0), w), ValueError, ["x: expected shape"]),
        (lambda w: ec.linear(X, X), TypeError, ["w: expected an Int8Weight", "ndarray"]),
        (lambda w: ec.linear(X, w, np.ones(6)), TypeError, ["bias: expected a float32", "float64"]),
        (lambda w: ec.linear(X, w, np.ones(5, np.float32)), ValueError, ["bias: expected shape (6,)", "(5,)"]),
        (lambda w: ec.linear(X, w, activation="tanh"), ValueError, ["activation: expected None, 'relu' or 'gelu'", "tanh"]),
        (lambda w: ec.linear(X, w, act_scheme="int4"), ValueError, ["act_scheme: expected 'symmetric' or 'asymmetric'"]),
        (lambda w: ec.linear(X, w, act_scale=0.0), ValueError, ["act_scale: expected a finite value > 0"]),
        (lambda w: ec.linear(X, w, act_scale=float("nan")), ValueError, ["act_scale: expected a finite value > 0"]),
        (lambda w: ec.linear(X, w, act_scale="1"), TypeError, ["act_scale: expected a float", "str"]),
        (lambda w: ec.linear(X, w, act_scale=0.1, act_scheme="asymmetric"), ValueError, ["act_zero_point: required"]),
        (lambda w: ec.linear(X, w, act_scale=0.1, act_scheme="asymmetric", act_zero_point=300), ValueError, ["[0, 255]", "300"]),
        (lambda w: ec.linear(X, w, act_scale=0.1, act_zero_point=3), ValueError, ["zero point 0"]),
        (lambda w: ec.linear(X, w, act_zero_point=3), ValueError, ["only meaningful with act_scale"]),
        (lambda w: ec.linear(np.array([[np.nan] * 8], np.float32), w), ValueError, ["x: expected finite values"]),
        (lambda w: ec.linear(np.array([[np.inf] * 8], np.float32), w, act_scheme="asymmetric"), ValueError, ["x: expected finite"]),
        (lambda w: ec.ops.qgemm(X, np.ones((2, 8), np.int8)), TypeError, ["a: expected an int8 or uint8", "float32"]),
        (lambda w: ec.ops.qgemm(np.ones((2, 8), np.int8), np.ones((2, 8), np.int16)), TypeError, ["b: expected an int8", "int16"]),
        (lambda w: ec.ops.qgemm(np.ones(8, np.int8), np.ones((2, 8), np.int8)), ValueError, ["a: expected a 2-D", "(8,)"]),
        (lambda w: ec.ops.qgemm(np.ones((2, 7), np.int8), np.ones((2, 8), np.int8)), ValueError, ["a: expected K = 8", "(2, 7)"]),
        (lambda w: ec.ops.qgemm(np.ones((2, 8), np.int8), np.full((2, 8), -128, np.int8)), ValueError, ["b: expected values in [-127, 127]"]),
        (lambda w: ec.ops.qgemm(np.ones((2, 0), np.int8), np.ones((2, 0), np.int8)), ValueError, ["b: expected a non-empty"]),
        (lambda w: ec.ops.qgemm(np.ones((1, 70000), np.uint8), np.ones((1, 70000), np.int8)), ValueError, ["b: expected K <= 66311", "70000"]),
        (lambda w: ec.Int8Weight(np.ones((1, 132105), np.int8), np.ones(1, np.float32)), ValueError, ["qweight: expected K <= 132104"]),
        (lambda w: ec.linear(X, w, out=np.zeros((2, 6))), TypeError, ["out: expected a float32", "float64"]),
        (lambda w: ec.linear(X, w, out=np.zeros((2, 5), np.float32)), ValueError, ["out: expected shape (2, 6)", "(2, 5)"]),
        (lambda w: ec.linear(X, w, out=np.zeros((6, 2), np.float32).T), ValueError, ["out: expected a writeable, aligned, C-contiguous"]),
        (lambda w: ec.Int8Weight.from_float(np.ones((2, 3), np.int32)), TypeError, ["w: expected a float32/float64/float16", "int32"]),
        (lambda w: ec.Int8Weight.from_float(np.ones(3, np.float32)), ValueError, ["w: expected a 2-D", "(3,)"]),
        (lambda w: ec.Int8Weight.from_float(np.ones((0, 3), np.float32)), ValueError, ["w: expected non-empty", "(0, 3)"]),
        (lambda w: ec.Int8Weight.from_float(np.full((2, 3), np.nan, np.float32)), ValueError, ["w: expected finite values"]),
        (lambda w: ec.Int8Weight.from_float(np.ones((2, 3), np.float32), "group"), ValueError, ["granularity: expected 'channel' or 'tensor'"]),
        (lambda w: ec.Int8Weight(np.ones((2, 3), np.int8), np.ones(3, np.float32)), ValueError, ["scale: expected shape (2,) or (1,)", "(3,)"]),
        (lambda w: ec.Int8Weight(np.ones((2, 3), np.int8), np.array([1, np.nan], np.float32)), ValueError, ["scale: expected finite"]),
        (lambda w: ec.Int8Weight(np.ones((2, 3), np.int8), np.array([1, np.inf], np.float32)), ValueError, ["scale: expected finite"]),
        (lambda w: ec.Int8Weight(np.ones((2, 3), np.int8), np.ones(2)), TypeError, ["scale: expected a float32", "float64"]),
        (lambda w: ec.Int8Weight(np.ones((2, 3), np.uint8), np.ones(2, np.float32)), TypeError, ["qweight: expected an int8", "uint8"]),
        (lambda w: ec.Int8Weight(np.full((2, 3), -128, np.int8), np.ones(2, np.float32)), ValueError, ["qweight: expected values in [-127, 127]"]),
    ],
)
def test_bad_input_message(w, call, exc, words):
    with pytest.raises(exc) as info:
        call(w)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_beyond_exact_k_for_linear():
    k = (2**31 - 1) // (127 * 255) + 1
    w = ec.Int8Weight(np.ones((1, k), np.int8), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="w: expected K <= 66311 .* asymmetric activations, got K = 66312"):
        ec.linear(np.ones((1, k), np.float32), w, act_scheme="asymmetric")
    assert ec.linear(np.ones((1, k), np.float32), w).shape == (1, 1)  # int8 activations: still exact


def test_out_overlapping_x_is_refused(rng):
    w = ec.Int8Weight.from_float(rng.standard_normal((8, 8)).astype(np.float32))
    buf = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="out: must not overlap x"):
        ec.linear(buf, w, out=buf)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bias_with_nan_or_inf_is_refused_for_every_format(rng, bad):
    w_float = rng.standard_normal((8, 16)).astype(np.float32)
    bias = np.zeros(8, np.float32)
    bias[5] = bad
    for w in (ec.Int8Weight.from_float(w_float), ec.Int4Weight.from_float(w_float), ec.SparseWeight.from_float(w_float),
              ec.LowRankWeight.from_float(w_float, rank=2)):
        with pytest.raises(ValueError, match="bias: expected finite values, got NaN or Inf"):
            ec.linear(np.ones((2, 16), np.float32), w, bias)


@pytest.mark.parametrize("make", [
    lambda w: ec.Int8Weight.from_float(w),
    lambda w: ec.Int4Weight.from_float(w),
    lambda w: ec.SparseWeight.from_float(w, format="csr"),
    lambda w: ec.SparseWeight.from_float(w * np.tile([1, 0, 0, 1], 16), format="2:4"),
    lambda w: ec.LowRankWeight.from_float(w, rank=8),
], ids=["int8", "int4", "csr", "2:4", "lowrank"])
def test_out_overlapping_bias_is_refused(make, rng):
    w = make(rng.standard_normal((8, 64)).astype(np.float32))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    buf = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match="out: must not overlap bias"):
        ec.linear(x, w, buf[1], out=buf)
    assert not buf.any()  # refused before any native code wrote into it
