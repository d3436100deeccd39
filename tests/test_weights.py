"""Int8Weight: quantization, round trips, state dicts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import reference as ref


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_from_float_matches_oracle_and_error_bound(rng, granularity):
    w = rng.standard_normal((33, 70)).astype(np.float32)
    q = ec.Int8Weight.from_float(w, granularity)
    want_q, want_s = ref.quantize_weight_int8(w, granularity)
    np.testing.assert_array_equal(q.qweight, want_q)
    np.testing.assert_array_equal(q.scale, want_s)
    assert q.shape == (33, 70) and q.granularity == granularity
    assert q.scale.shape == ((33,) if granularity == "channel" else (1,))
    s = q.scale[:, None] if granularity == "channel" else q.scale
    assert np.all(np.abs(q.to_float() - w) <= s / 2 + 1e-7)
    assert q.nbytes == 33 * 70 + q.scale.nbytes
    assert q.qweight.min() >= -127


def test_zero_rows_and_float64_input():
    w = np.zeros((3, 5))
    w[1] = [1, -2, 3, 0.5, 0]
    q = ec.Int8Weight.from_float(w)
    assert q.scale[0] == 1 and q.scale[2] == 1
    np.testing.assert_array_equal(q.qweight[0], 0)
    assert q.qweight[1, 2] == 127


def test_state_dict_round_trip(rng):
    q = ec.Int8Weight.from_float(rng.standard_normal((8, 16)).astype(np.float32), "tensor")
    d = q.state_dict()
    json.dumps(d["metadata"])
    assert d["metadata"] == {"format": "int8", "version": 1, "granularity": "tensor"}
    q2 = ec.Int8Weight.from_state_dict(d)
    np.testing.assert_array_equal(q2.qweight, q.qweight)
    np.testing.assert_array_equal(q2.scale, q.scale)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    np.testing.assert_array_equal(ec.linear(x, q2), ec.linear(x, q))


def test_state_dict_errors(rng):
    d = ec.Int8Weight.from_float(rng.standard_normal((4, 4)).astype(np.float32)).state_dict()
    with pytest.raises(ValueError, match="version 2 is not supported"):
        ec.Int8Weight.from_state_dict({**d, "metadata": {**d["metadata"], "version": 2}})
    with pytest.raises(ValueError, match="format 'int8'"):
        ec.Int8Weight.from_state_dict({**d, "metadata": {"format": "int4", "version": 1}})
    with pytest.raises(ValueError, match="missing array 'scale'"):
        ec.Int8Weight.from_state_dict({"qweight": d["qweight"], "metadata": d["metadata"]})
    with pytest.raises(TypeError, match="expected a dict"):
        ec.Int8Weight.from_state_dict([1, 2])


def test_arrays_are_read_only_and_packing_cached(rng):
    q = ec.Int8Weight.from_float(rng.standard_normal((4, 8)).astype(np.float32))
    with pytest.raises(ValueError):
        q.qweight[0, 0] = 1
    p1 = ec.ops.packed(q)
    assert p1.kernel == ec.cpu_info()["families"]["gemm_s8"]["kernel"] and ec.ops.packed(q) is p1
    assert "Int8Weight(shape=(4, 8)" in repr(q)


def test_state_dicts_with_unknown_or_mismatched_metadata_are_refused(rng):
    d = ec.Int8Weight.from_float(rng.standard_normal((8, 16)).astype(np.float32)).state_dict()
    with pytest.raises(ValueError, match=r"unknown \['granulrity'\]"):
        ec.Int8Weight.from_state_dict({**d, "metadata": {**d["metadata"], "granulrity": "tensor"}})
    with pytest.raises(ValueError, match=r"metadata granularity 'tensor' does not match the scale of shape \(8,\)"):
        ec.Int8Weight.from_state_dict({**d, "metadata": {**d["metadata"], "granularity": "tensor"}})
    with pytest.raises(ValueError, match=r"unknown arrays \['zero_point'\]"):
        ec.Int8Weight.from_state_dict({**d, "zero_point": np.zeros(8, np.int8)})
    s = ec.SparseWeight.from_float(np.eye(4, dtype=np.float32)).state_dict()
    for shape in ([4, float("inf")], [4, 4.0], [4, True], [[[[[[[4]]]]]]]):
        with pytest.raises(ValueError, match=r"expected a 'shape' \[N, K\] of ints in metadata"):
            ec.SparseWeight.from_state_dict({**s, "metadata": {**s["metadata"], "shape": shape}})
    with pytest.raises(ValueError, match=r"expected a 'layout' in metadata, one of csr, .*got 'cs'"):
        ec.SparseWeight.from_state_dict({**s, "metadata": {**s["metadata"], "layout": "cs"}})
    with pytest.raises(ValueError, match=r"missing \['layout'\]"):
        ec.SparseWeight.from_state_dict({**s, "metadata": {k: v for k, v in s["metadata"].items() if k != "layout"}})
    lr = ec.LowRankWeight.from_float(rng.standard_normal((8, 16)).astype(np.float32), rank=2).state_dict()
    with pytest.raises(ValueError, match="expected metadata 'dtypes'"):
        ec.LowRankWeight.from_state_dict({**lr, "metadata": {**lr["metadata"], "dtypes": {"u": "float32", "v": "float32", "w": "int8"}}})
