"""4-bit weights (Int4Weight): every tier against the numpy oracle, formats, converters, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import reference as ref
from edgecompress.convert import from_gguf_q4_0, from_onnx_matmulnbits, to_gguf_q4_0, to_onnx_matmulnbits
from edgecompress.formats.quantize4 import nf4_table
from sweeps import GEMM_SHAPES

KINDS = ["symmetric", "asymmetric", "nf4", "table-per-tensor", "kmeans-per-channel"]


def _random_weight(rng, n, k, g, kind):
    """Random codes and scales (every code value occurs), so the kernels see the whole format."""
    groups = -(-k // g)
    qweight = rng.integers(0, 256, (n, groups, g // 2)).astype(np.uint8)
    scale = (rng.standard_normal((n, groups)) * 0.05).astype(np.float16)
    zp = codebook = None
    if kind == "asymmetric":
        zp = rng.integers(0, 256, (n, (groups + 1) // 2)).astype(np.uint8)
    elif kind == "nf4":
        codebook = nf4_table()
    elif kind == "table-per-tensor":
        codebook = rng.standard_normal(16).astype(np.float32)
    elif kind == "kmeans-per-channel":
        codebook = rng.standard_normal((n, 16)).astype(np.float32)
    return ec.Int4Weight(qweight, scale, zp, codebook, k=k)


def _oracle(x, w, **kw):
    return ref.linear_int4(x, w.qweight, w.scale, w.zero_point, w.codebook, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_int8_mode_sweep_bit_exact(tier, threads, rng, kind):
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        g = (32, 64, 128)[i % 3]
        w = _random_weight(rng, n, k, g, kind)
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if i % 2 else None
        act = (None, "relu", "gelu")[i % 3]
        got = ec.linear(x, w, bias, act)
        want = _oracle(x, w, bias=bias, activation=act)
        if act == "gelu":  # float32 erf in the kernels, float64 in the oracle
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max(initial=1)))
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{(m, k, n)} g={g}")


@pytest.mark.parametrize("kind", KINDS)
def test_float_mode_sweep_within_tolerance(tier, threads, rng, kind):
    for i, (m, k, n) in enumerate(GEMM_SHAPES):
        g = (32, 64, 128)[(i + 1) % 3]
        w = _random_weight(rng, n, k, g, kind).with_compute("float")
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        got = ec.linear(x, w)
        want = _oracle(x, w, compute="float")
        tol = ref.int4_float_tolerance(x, w.to_float())
        assert (np.abs(got.astype(np.float64) - want) <= tol).all(), f"{(m, k, n)} g={g}"


def test_every_tier_returns_the_same_bits(rng):
    w = _random_weight(rng, 70, 300, 32, "asymmetric")
    x = rng.standard_normal((6, 300)).astype(np.float32)
    results = {}
    for t in ec.runtime.LADDER:
        if ec._core.tier_support(t)[0]:
            with ec.use_isa(t):
                results[t] = ec.linear(x, w)
    first = next(iter(results.values()))
    for t, y in results.items():
        np.testing.assert_array_equal(y, first, err_msg=t)


def test_extreme_activations_take_the_float64_rows(tier, rng):
    # sx * max|scale| >= 2^64 on the big row: scaled in float64 (no inf/NaN), as the oracle says.
    w = _random_weight(rng, 20, 96, 32, "symmetric")
    x = rng.standard_normal((3, 96)).astype(np.float32)
    x[1] *= np.float32(3e37)
    x[2] = 0
    got = ec.linear(x, w)
    np.testing.assert_array_equal(got, _oracle(x, w))
    assert np.isfinite(got).all()


def test_zero_weight_and_zero_input(tier):
    w = ec.Int4Weight.from_float(np.zeros((17, 40), np.float32))
    np.testing.assert_array_equal(ec.linear(np.ones((2, 40), np.float32), w), np.zeros((2, 17), np.float32))
    w = ec.Int4Weight.from_float(np.ones((17, 40), np.float32))
    np.testing.assert_array_equal(ec.linear(np.zeros((2, 40), np.float32), w), np.zeros((2, 17), np.float32))


def test_nonfinite_input_is_refused(rng):
    w = _random_weight(rng, 8, 64, 32, "symmetric")
    x = np.ones((2, 64), np.float32)
    x[1, 5] = np.nan
    for mode in ("int8", "float"):
        with pytest.raises(ValueError, match="x: expected finite"):
            ec.linear(x, w.with_compute(mode))


def test_out_and_batch_shapes(rng):
    w = _random_weight(rng, 24, 70, 64, "nf4")
    x = rng.standard_normal((2, 3, 70)).astype(np.float32)
    out = np.empty((2, 3, 24), np.float32)
    assert ec.linear(x, w, out=out) is out
    np.testing.assert_array_equal(out.reshape(6, 24), _oracle(x.reshape(6, 70), w))


# --- quantization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_from_float_reconstruction_and_layout(rng, g, symmetric):
    w = rng.standard_normal((9, 200)).astype(np.float32)
    q = ec.Int4Weight.from_float(w, group_size=g, symmetric=symmetric)
    groups = -(-200 // g)
    assert q.qweight.shape == (9, groups, g // 2) and q.scale.dtype == np.float16
    assert (q.zero_point is None) == symmetric
    err = np.abs(q.to_float() - w)
    # Round to nearest: on average a quarter step; at most one step (the end of the range opposite
    # the largest magnitude may clip by up to half a step, as in GGUF Q4_0, and a rounded zero point
    # shifts the grid by up to half a step).
    step = np.repeat(np.abs(q.scale.astype(np.float32)), g, axis=1)[:, :200]
    assert (err <= step * 1.01 + 1e-6).all()
    assert err.mean() <= 0.3 * step.mean()


def _rel_err(w, q):
    return float(np.linalg.norm(q.to_float() - w) / np.linalg.norm(w))


def test_accuracy_mse_beats_rtn_and_nf4_beats_uniform():
    rng = np.random.default_rng(3)
    gauss = rng.standard_normal((256, 512)).astype(np.float32)
    heavy = rng.standard_t(3, (256, 512)).astype(np.float32)
    for w in (gauss, heavy):
        for sym in (True, False):
            rtn = _rel_err(w, ec.Int4Weight.from_float(w, symmetric=sym, method="rtn"))
            mse = _rel_err(w, ec.Int4Weight.from_float(w, symmetric=sym, method="mse"))
            assert mse < rtn
        for g in (32, 64):
            uniform = _rel_err(w, ec.Int4Weight.from_float(w, group_size=g, method="mse"))
            nf4 = _rel_err(w, ec.Int4Weight.from_float(w, group_size=g, method="mse", codebook="nf4"))
            kmeans = _rel_err(w, ec.Int4Weight.from_float(w, group_size=g, method="mse", codebook="kmeans"))
            assert kmeans < nf4 < uniform, g
    # With plain rounding NF4 wins at its usual block size, 64 (at 32 the symmetric uniform grid is
    # level with it: 0.0872 vs 0.0859 on this weight; see the benchmark report).
    uniform = _rel_err(gauss, ec.Int4Weight.from_float(gauss, group_size=64))
    assert _rel_err(gauss, ec.Int4Weight.from_float(gauss, group_size=64, codebook="nf4")) < uniform


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_clipping_search_matches_its_reference(g, threads):
    """The native search picks the reference's candidate for every group, bit for bit: random scales
    (some zero, some tiny enough to overflow w / s), symmetric and asymmetric code bounds, near ties."""
    from edgecompress import _core
    from edgecompress.reference.quantize4 import best_candidates
    rng = np.random.default_rng(g)
    groups, r = 997, 26
    w = rng.standard_t(3, (groups, g)).astype(np.float32)
    w[:5] = 0
    scale = (rng.random((groups, r)) * 2 - 1).astype(np.float32)
    scale[::7, 3] = 0
    scale[::11, 5] = 1e-38
    scale[13, :] = scale[13, 0]  # every candidate equal: the first wins
    zp = rng.integers(0, 16, (groups, r)).astype(np.float32)
    zp[::2] = 8
    zp[13] = 8
    want = best_candidates(w, scale, -zp, 15 - zp)
    got = _core.int4_best_candidates(w, scale, -zp, 15 - zp)
    assert got.dtype == np.int32 and np.array_equal(got, want)
    assert want[13] == 0


def test_mse_search_keeps_each_groups_best_ratio():
    """method="mse" keeps, per group, the ratio of least reconstruction error among all 26."""
    from edgecompress.formats.quantize4 import MSE_RATIOS, _groups, _uniform_at
    rng = np.random.default_rng(4)
    w = rng.standard_t(3, (64, 256)).astype(np.float32)
    for sym in (True, False):
        q = ec.Int4Weight.from_float(w, symmetric=sym, method="mse")
        wg = _groups(w, 32)
        errs = []
        for r in MSE_RATIOS.astype(np.float32):
            lo, hi = np.minimum(wg.min(-1), 0) * r, np.maximum(wg.max(-1), 0) * r
            codes, s, zp = _uniform_at(wg, lo, hi, sym)
            errs.append((((codes.astype(np.float64) - zp[..., None]) * s[..., None].astype(np.float64) - wg) ** 2).sum(-1))
        best = np.min(errs, axis=0)
        got = ((q.to_float().reshape(wg.shape).astype(np.float64) - wg) ** 2).sum(-1)
        assert np.all(got <= best * (1 + 1e-5) + 1e-12)


def test_clipping_search_rejects_bad_arrays():
    from edgecompress import _core
    w = np.zeros((4, 32), np.float32)
    s = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="multiple of 8"):
        _core.int4_best_candidates(np.zeros((4, 12), np.float32), s, s, s)
    with pytest.raises(ValueError, match="scale, lo, hi"):
        _core.int4_best_candidates(w, s, s[:3], s)
    with pytest.raises(ValueError, match="expected float32"):
        _core.int4_best_candidates(w.astype(np.float64), s, s, s)


def test_nf4_table_shape():
    t = nf4_table()
    assert t.shape == (16,) and t[0] == -1 and t[-1] == 1 and 0.0 in t
    assert (np.diff(t) > 0).all()


# --- formats and converters -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_and_copy_round_trip(rng, kind):
    w = _random_weight(rng, 10, 100, 32, kind)
    d = w.state_dict()
    import json

    json.dumps(d["metadata"])
    w2 = ec.Int4Weight.from_state_dict(d)
    x = rng.standard_normal((2, 100)).astype(np.float32)
    np.testing.assert_array_equal(ec.linear(x, w2), ec.linear(x, w))
    np.testing.assert_array_equal(ec.linear(x, copy.deepcopy(w)), ec.linear(x, w))
    assert w2.shape == (10, 100) and w2.nbytes == w.nbytes


def test_state_dict_from_newer_version_is_refused(rng):
    d = _random_weight(rng, 4, 32, 32, "symmetric").state_dict()
    d["metadata"] = dict(d["metadata"], version=99)
    with pytest.raises(ValueError, match="version"):
        ec.Int4Weight.from_state_dict(d)


def test_a_codebook_entry_times_scale_that_overflows_float32_is_refused(rng):
    # Float mode dequantizes the padding columns past K too, and multiplies them by zero inputs: an
    # entry x scale that overflows there (here: code 15, used only in the padding) made every output NaN.
    n, k = 3, 40
    codes = np.full((n, 64), 7, np.uint8)  # NF4 entry 7 is 0.0
    codes[:, k:] = 15
    qweight = ref.gemm_q4.pack_nibbles(codes, 32)
    table = nf4_table().copy()
    table[15] = 1e38
    scale = np.full((n, 2), 2.0, np.float16)
    d = ec.Int4Weight(qweight, scale, None, table, k=k, compute="float").state_dict()  # 2e38: finite
    x = rng.standard_normal((2, k)).astype(np.float32)
    ok = ec.Int4Weight.from_state_dict(d)
    np.testing.assert_array_equal(ec.linear(x, ok), np.zeros((2, n), np.float32))
    d["scale"] = np.full((n, 2), 4.0, np.float16)  # 4e38 overflows
    with pytest.raises(ValueError, match=r"codebook, scale: row 0: a codebook entry times a scale .*overflows float32"):
        ec.Int4Weight.from_state_dict(d)
    # Whatever the padding codes of a weight whose products stay finite, the outputs are the same.
    w = ec.Int4Weight.from_float(rng.standard_normal((n, k)).astype(np.float32), codebook="nf4", compute="float")
    codes = ref.gemm_q4.unpack_nibbles(w.qweight)
    codes[:, k:] = rng.integers(0, 16, (n, 64 - k))
    other = ec.Int4Weight(ref.gemm_q4.pack_nibbles(codes, 32), w.scale, None, w.codebook, k=k, compute="float")
    np.testing.assert_array_equal(ec.linear(x, other), ec.linear(x, w))


def test_state_dicts_with_unknown_missing_or_mistyped_entries_are_refused(rng):
    d = _random_weight(rng, 4, 40, 32, "asymmetric").state_dict()
    for change, exc, match in [
        (lambda d: d["metadata"].update(compte="float"), ValueError, r"metadata of format 'int4'.*unknown \['compte'\]"),
        (lambda d: d["metadata"].pop("compute"), ValueError, r"metadata of format 'int4'.*missing \['compute'\]"),
        (lambda d: d.update(zero_points=d.pop("zero_point")), ValueError, r"unknown arrays \['zero_points'\]"),
        (lambda d: d.update(qweight=np.array(3, np.uint8)), ValueError, r"qweight: expected a non-empty 3-D"),
        (lambda d: d["metadata"].update(group_size=32.0), ValueError, "metadata group_size 32.0 does not match"),
        (lambda d: d["metadata"].update(k=[[[[[[1]]]]]]), ValueError, r"expected an int 'k' in metadata, got \[\[\[\["),
        (lambda d: d["metadata"].update(version=True), ValueError, "format version True is not supported"),
    ]:
        bad = {**d, "metadata": dict(d["metadata"])}
        change(bad)
        with pytest.raises(exc, match=match):
            ec.Int4Weight.from_state_dict(bad)


def test_packed_size_stays_within_ten_percent(rng):
    for kind in KINDS:
        w = _random_weight(rng, 64, 4096, 32, kind)
        packed = ec.ops.packed(w)
        assert packed.nbytes <= 1.1 * w.nbytes, kind


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnx_matmulnbits_round_trip(rng, symmetric):
    w = ec.Int4Weight.from_float(rng.standard_normal((12, 100)).astype(np.float32), symmetric=symmetric)
    d = to_onnx_matmulnbits(w)
    back = from_onnx_matmulnbits(d["B"], d["scales"], d.get("zero_points"), **{
        k: v for k, v in d["attributes"].items()})
    for a, b in ((w.qweight, back.qweight), (w.scale, back.scale), (w.zero_point, back.zero_point)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnxruntime_matmulnbits_computes_our_weight(rng, symmetric):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    n, k, g = 24, 100, 32
    w = ec.Int4Weight.from_float(rng.standard_normal((n, k)).astype(np.float32), symmetric=symmetric, group_size=g)
    d = to_onnx_matmulnbits(w)
    inits = [numpy_helper.from_array(d["B"], "B"), numpy_helper.from_array(d["scales"], "scales")]
    inputs = ["x", "B", "scales"]
    if "zero_points" in d:
        inits.append(numpy_helper.from_array(d["zero_points"], "zp"))
        inputs.append("zp")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", **d["attributes"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, k)).astype(np.float32)
    y_ort = sess.run(None, {"x": x})[0]
    want = x.astype(np.float64) @ w.to_float().astype(np.float64).T
    np.testing.assert_allclose(y_ort, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ec.linear(x, w.with_compute("float")), want, rtol=1e-4, atol=1e-4)
    del onnx


def test_gguf_q4_0_round_trip(rng):
    gguf = pytest.importorskip("gguf")
    w = rng.standard_normal((8, 96)).astype(np.float32)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    ours = from_gguf_q4_0(blocks, (8, 96))
    np.testing.assert_array_equal(ours.to_float(), gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0))
    np.testing.assert_array_equal(to_gguf_q4_0(ours), blocks.reshape(8, -1))
    mine = ec.Int4Weight.from_float(w)
    np.testing.assert_array_equal(
        gguf.quants.dequantize(to_gguf_q4_0(mine), gguf.GGMLQuantizationType.Q4_0).reshape(8, 96), mine.to_float())


# --- errors ---------------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="group_size"):
        ec.Int4Weight.from_float(w, group_size=48)
    with pytest.raises(ValueError, match="method"):
        ec.Int4Weight.from_float(w, method="gptq")
    with pytest.raises(ValueError, match="codebook"):
        ec.Int4Weight.from_float(w, codebook="nf3")
    with pytest.raises(ValueError, match="finite"):
        ec.Int4Weight.from_float(np.full((2, 32), np.nan, np.float32))
    good = ec.Int4Weight.from_float(w)
    with pytest.raises(ValueError, match="scale: expected finite"):
        bad = np.array(good.scale)
        bad[0, 0] = np.nan
        ec.Int4Weight(good.qweight, bad, k=64)
    with pytest.raises(ValueError, match="k: expected"):
        ec.Int4Weight(good.qweight, good.scale, k=100)
    with pytest.raises(ValueError, match="group size"):
        ec.Int4Weight(np.zeros((4, 2, 8), np.uint8), np.zeros((4, 2), np.float16))
    with pytest.raises(TypeError, match="scale: expected a float16"):
        ec.Int4Weight(good.qweight, good.scale.astype(np.float32), k=64)
    with pytest.raises(ValueError, match="zero_point: expected shape"):
        ec.Int4Weight(good.qweight, good.scale, np.zeros((4, 3), np.uint8), k=64)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 64\)"):
        ec.linear(np.ones((2, 63), np.float32), good)
    with pytest.raises(TypeError, match="x: expected float32"):
        ec.linear(np.ones((2, 64), np.float64), good)
    with pytest.raises(ValueError, match="act_scheme"):
        ec.linear(np.ones((2, 64), np.float32), good, act_scheme="asymmetric")
    with pytest.raises(ValueError, match="compute"):
        good.with_compute("int4")
    with pytest.raises(ValueError, match="Q4_0"):
        to_gguf_q4_0(ec.Int4Weight.from_float(w, symmetric=False))
    with pytest.raises(ValueError, match="blocks"):
        from_gguf_q4_0(np.zeros(17, np.uint8), (4, 64))
