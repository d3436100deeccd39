from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402
from edgecompress import ops  # noqa: E402
from nn_oracle import VARIANT_IDS, VARIANTS, assert_matches, expected, prune_  # noqa: E402

LINEAR = {"Int8": enn.Int8Linear, "Int4": enn.Int4Linear, "Sparse": enn.SparseLinear, "LowRank": enn.LowRankLinear}
# (in_features, out_features): odd sizes, a single feature, partial tiles and groups of K
SHAPES = [(1, 1), (3, 5), (17, 33), (33, 17), (64, 65), (100, 1), (129, 95)]
BATCHES = [(), (1,), (4,), (2, 3)]  # 1-D, 2-D and 3-D inputs


def _float_linear(k, n, family, seed, bias=True):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    return prune_(lin) if family == "Sparse" else lin


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_matches_the_format_oracle_for_every_shape_and_batch(variant, rng):
    _, family, options, _ = variant
    for i, (k, n) in enumerate(SHAPES):
        lin = _float_linear(k, n, family, seed=i, bias=i % 2 == 0)
        m = LINEAR[family].from_float(lin, **options)
        bias = None if lin.bias is None else lin.bias.detach().numpy()
        for batch in BATCHES:
            x = (rng.standard_normal(batch + (k,)) * rng.uniform(0.1, 10)).astype(np.float32)
            with torch.no_grad():
                got = m(torch.from_numpy(x))
            assert got.shape == batch + (n,) and got.dtype == torch.float32
            want, tol = expected(x.reshape(-1, k), m.weight, bias)
            assert_matches(got.numpy().reshape(-1, n), want, tol, f"{k}x{n} batch {batch}")


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_close_to_the_float_linear_it_replaces(variant):
    _, family, options, bound = variant
    lin = _float_linear(256, 128, family, seed=0)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lin(x)
        got = LINEAR[family].from_float(lin, **options)(x)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel <= bound


def test_lowrank_energy_trades_error_for_bytes():
    lin = _float_linear(256, 128, "LowRank", seed=0)
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    errors, sizes = [], []
    with torch.no_grad():
        want = lin(x)
        for energy in (0.5, 0.9, 1.0):
            m = enn.LowRankLinear.from_float(lin, energy=energy)
            errors.append(float((m(x) - want).abs().max() / want.abs().max()))
            sizes.append(m.nbytes)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5
    assert sizes[0] < sizes[1] < sizes[2]


def test_construct_from_a_canonical_weight_and_bias(rng):
    W = rng.standard_normal((7, 40)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    w = ec.Int4Weight.from_float(W, group_size=32, codebook="kmeans")
    for bias in (b, torch.from_numpy(b), None):
        m = enn.Int4Linear(w, bias)
        assert m.weight is w and m.in_features == 40 and m.out_features == 7
        x = rng.standard_normal((3, 40)).astype(np.float32)
        want, _ = expected(x, w, None if bias is None else b)
        np.testing.assert_array_equal(m(torch.from_numpy(x)).numpy(), want)
    b[0] = 100  # the module keeps its own copy of the bias
    assert float(enn.Int4Linear(w, b).bias[0]) == 100 and m.bias is None


def test_activations_pass_zero_copy_and_the_weight_is_never_copied(monkeypatch):
    m = enn.Int8Linear.from_float(torch.nn.Linear(32, 8))
    calls = []
    real = ops.linear

    def spy(x, w, bias=None, *args, **kwargs):
        calls.append((x, w, bias))
        return real(x, w, bias, *args, **kwargs)

    monkeypatch.setattr(ops, "linear", spy)
    x = torch.randn(5, 32)
    with torch.no_grad():
        y1 = m(x)
        y2 = m(x[:, :].t().contiguous().t())  # a non-contiguous input is copied once, same result
    assert np.shares_memory(calls[0][0], x.numpy())
    assert not np.shares_memory(calls[1][0], x.numpy())
    assert all(w is m.weight for _, w, _ in calls)
    assert np.shares_memory(calls[0][2], m.bias.numpy())
    assert torch.equal(y1, y2)


def test_works_under_inference_mode_and_with_grad_enabled_inputs():
    m = enn.Int8Linear.from_float(torch.nn.Linear(16, 4))
    x = torch.randn(3, 16)
    with torch.inference_mode():
        want = m(x)
    xg = x.clone().requires_grad_(True)
    got = m(xg)  # forward is fine; only backward is refused (test_nn_errors)
    assert got.requires_grad and torch.equal(got.detach(), want)


def test_sparse_from_a_torch_pruned_linear():
    lin = torch.nn.Linear(64, 32)
    from torch.nn.utils import prune

    prune.l1_unstructured(lin, "weight", amount=0.75)
    m = enn.SparseLinear.from_float(lin)
    assert abs(m.sparsity - 0.75) < 0.01
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), lin(x), rtol=1e-5, atol=1e-5)


def test_repr_shows_format_bits_sparsity_and_bytes():
    lin = prune_(torch.nn.Linear(64, 32))
    r = repr(enn.SparseLinear.from_float(lin, format="bsr4x1"))
    assert "in_features=64" in r and "format='sparse'" in r and "layout='bsr4x1'" in r
    assert "bits=32" in r and "sparsity=0." in r and "nbytes=" in r and "(float32: 8192)" in r
    r = repr(enn.Int4Linear.from_float(lin, group_size=64))
    assert "format='int4'" in r and "bits=4" in r and "group_size=64" in r and "sparsity=0.000" in r
    m = enn.LowRankLinear.from_float(lin, rank=16, dtype="int8")
    assert "rank=16" in repr(m) and "bits=8" in repr(m) and f"nbytes={m.nbytes}" in repr(m)


def test_empty_batches():
    m = enn.SparseLinear.from_float(prune_(torch.nn.Linear(8, 3)))
    assert m(torch.zeros(0, 8)).shape == (0, 3) and m(torch.zeros(2, 0, 8)).shape == (2, 0, 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_compute_in_float32_and_return_their_dtype(dtype):
    torch.manual_seed(0)
    lin, conv = torch.nn.Linear(32, 8).to(dtype), torch.nn.Conv2d(3, 4, 3, padding=1).to(dtype)
    # from_float of a half-precision module: the same weights as from its float32 copy
    modules = [enn.Int8Linear.from_float(lin), enn.Int4Linear.from_float(lin), enn.LowRankLinear.from_float(lin, energy=1.0),
               enn.Int8Conv2d.from_float(conv), enn.SparseConv2d.from_float(conv)]
    twins = [type(m).from_float(copy.deepcopy(f).float(), **o) for m, f, o in
             zip(modules, [lin, lin, lin, conv, conv], [{}, {}, {"energy": 1.0}, {}, {}])]
    for m, twin in zip(modules, twins):
        shape = (2, 5, 32) if hasattr(m, "in_features") else (2, 3, 6, 6)
        x = torch.randn(shape).to(dtype)
        with torch.no_grad():
            y = m(x)
            assert y.dtype == dtype
            assert torch.equal(y, twin(x.float()).to(dtype))
            m.to(dtype)  # model.half() / .to(bfloat16) after compressing converts the bias buffer too
            assert torch.equal(m(x), y)
