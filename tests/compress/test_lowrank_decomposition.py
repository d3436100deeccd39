"""Low-rank factorization: exact at full rank, the rank rules (energy, ratio, break-even, budget
search), activation-aware SVD, conv factorizations and the canonical u/v factors."""

import copy

import pytest

torch = pytest.importorskip("torch")
import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from edgecompress.compress.lowrank import (  # noqa: E402
    choose_rank,
    factorize,
    lowrank_factors,
    svd_factors,
    worth_factorizing,
)


def _with_singular_values(values, n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(values), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(k, len(values), generator=gen))
    return (u * torch.tensor(values)) @ v.t()


def test_full_rank_reconstructs_the_weight_exactly(torch_single_thread):
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    u, v = svd_factors(w, 24)
    assert u.shape == (24, 24) and v.shape == (24, 40)
    torch.testing.assert_close(u @ v, w, rtol=1e-5, atol=1e-5)
    layer = nn.Linear(40, 24)
    model = nn.Sequential(layer)
    x = torch.randn(5, 40)
    expected = model(x)
    report = factorize(model, x, rank=24, multiple=8, margin=10.0)  # a margin this large forces the factorization
    assert report.ranks == {"0": 24} and isinstance(model[0], nn.Sequential)
    assert (model[0][0].in_features, model[0][0].out_features, model[0][1].out_features) == (40, 24, 24)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_energy_rule_by_hand():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30: cumulated .533, .833, .967, 1
    assert choose_rank(s, (64, 64), energy=0.5, multiple=1) == 1
    assert choose_rank(s, (64, 64), energy=0.8, multiple=1) == 2
    assert choose_rank(s, (64, 64), energy=0.9, multiple=1) == 3
    assert choose_rank(s, (64, 64), energy=0.8, multiple=16) == 16  # rounded up to the SIMD width
    model = nn.Sequential(nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(_with_singular_values([4.0, 3.0, 2.0, 1.0], 64, 64))
    assert factorize(model, torch.zeros(1, 64), energy=0.8, multiple=2).ranks == {"0": 2}


def test_param_ratio_and_break_even_rules():
    assert choose_rank(torch.ones(64), (64, 64), param_ratio=0.5, multiple=16) == 16  # 0.5*64*64/128 = 16
    assert choose_rank(torch.ones(64), (64, 64), param_ratio=0.7, multiple=16) == 16  # 22.4 -> down to 16
    assert choose_rank(torch.ones(64), (64, 64), param_ratio=0.1, multiple=16) == 16  # never below one multiple
    assert worth_factorizing(16, (64, 64)) and not worth_factorizing(32, (64, 64))  # 32*128 = 64*64: break-even
    assert not worth_factorizing(16, (64, 64), margin=0.4)  # 2048 >= 0.4 * 4096
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    report = factorize(model, torch.zeros(1, 64), rank=20, multiple=16)  # 20 -> 32: not worth it, stays dense
    assert report.ranks == {"0": None, "2": None} and isinstance(model[0], nn.Linear)
    assert report.params_ratio == 1.0 and "dense" in str(report)


def test_activation_aware_has_lower_error_on_calibration_data(torch_single_thread):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(32, 48, generator=gen)
    x = torch.randn(256, 48, generator=gen) * torch.logspace(-2, 1, 48)  # very unequal input features
    gram = x.t() @ x
    plain_u, plain_v = svd_factors(w, 8)
    aware_u, aware_v = svd_factors(w, 8, gram=gram)
    plain = torch.linalg.norm(x @ (w - plain_u @ plain_v).t())
    aware = torch.linalg.norm(x @ (w - aware_u @ aware_v).t())
    assert aware < 0.8 * plain
    assert torch.linalg.norm(w - plain_u @ plain_v) < torch.linalg.norm(w - aware_u @ aware_v)  # plain wins on W
    model = nn.Sequential(nn.Linear(48, 32))
    reference = copy.deepcopy(model)
    factorize(model, x[:1], rank=8, multiple=8, activation_aware=True, data=x)
    out_error = torch.linalg.norm(model(x) - reference(x))
    assert out_error < 1.01 * torch.linalg.norm(x @ (reference[0].weight - aware_u @ aware_v).detach().t())


def test_factors_are_balanced_so_they_train_well(trained_cnn, digits):
    from torch.utils.data import DataLoader, TensorDataset

    from edgecompress.compress import digits as d
    from edgecompress.compress.distill import distill

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 48, generator=gen) * 30  # a large Gram matrix: whitened singular values are large
    u, v = svd_factors(torch.randn(32, 48, generator=gen), 8, gram=x.t() @ x)
    torch.testing.assert_close(u.norm(dim=0), v.norm(dim=1))
    # unbalanced whitened factors (|u| ~ 400, |v| ~ 0.004) dropped this model to 94.7% under distillation
    teacher = copy.deepcopy(trained_cnn)
    before = d.accuracy(teacher, digits.x_test, digits.y_test)  # 99.33
    factorize(trained_cnn, digits.x_test[:1], layers=["fc1"], param_ratio=0.25, activation_aware=True,
              data=digits.x_train[:512])
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    distill(trained_cnn, teacher, loader, epochs=3, progress=False)
    assert d.accuracy(trained_cnn, digits.x_test, digits.y_test) >= before - 1.0  # measured: 99.11


def test_budget_search_spends_parameters_where_the_loss_needs_them(torch_single_thread):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128, bias=False), nn.Linear(128, 128, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(128, 16, generator=gen) @ torch.randn(16, 128, generator=gen) / 16)  # rank 16
        model[1].weight.copy_(torch.randn(128, 128, generator=gen) / 11)  # full rank
    x = torch.randn(64, 128, generator=gen)
    target = model(x).detach()
    data = [(x, target)]
    # candidates per layer: ranks 16, 32, 48 (64*256 = 128*128 is break-even) or dense; budget = 16384 params
    report = factorize(model, x[:1], budget=0.5, data=data, loss_fn=nn.functional.mse_loss)
    assert report.ranks == {"0": 16, "1": 48}
    assert report.params_after <= 0.5 * report.params_before


@pytest.mark.parametrize("conv", ["matrix", "separable"])
def test_conv_factorizations_are_exact_at_full_rank(conv, torch_single_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=(2, 1), padding=1, dilation=1))
    x = torch.randn(2, 3, 9, 7)
    expected = model(x)
    full = 8 if conv == "matrix" else 9  # min(8, 27) vs min(3*3, 8*3)
    report = factorize(model, x, rank=full, multiple=1, margin=10.0, conv=conv)
    assert report.ranks == {"0": full}
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    if conv == "separable":
        assert model[0][0].kernel_size == (3, 1) and model[0][1].kernel_size == (1, 3)


def test_lowrank_factors_are_the_canonical_float32_arrays():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    w = linear.weight.detach().clone()
    model = nn.Sequential(linear)
    factorize(model, torch.zeros(1, 40), rank=8, multiple=8)  # 8 * (24 + 40) < 24 * 40
    u, v = lowrank_factors(model[0])
    assert (u.shape, v.shape, u.dtype, v.dtype) == ((24, 8), (8, 40), np.float32, np.float32)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_allclose(x @ v.T @ u.T + linear.bias.detach().numpy(), model(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    ref_u, ref_v = svd_factors(w, 8)
    np.testing.assert_allclose(u @ v, (ref_u @ ref_v).numpy(), rtol=1e-4, atol=1e-5)
    conv = nn.Sequential(nn.Conv2d(4, 32, 3))
    factorize(conv, torch.zeros(1, 4, 5, 5), rank=16, multiple=16)
    cu, cv = lowrank_factors(conv[0])
    assert cu.shape == (32, 16) and cv.shape == (16, 36)
    with pytest.raises(ValueError, match="module: expected the nn.Sequential of two Linear layers"):
        lowrank_factors(nn.Linear(4, 4))


def test_digits_mlp_low_rank_keeps_accuracy(trained_mlp, digits):
    from edgecompress.compress import digits as d

    before = d.accuracy(trained_mlp, digits.x_test, digits.y_test)  # 97.55
    report = factorize(trained_mlp, digits.x_test[:1], param_ratio=0.3, activation_aware=True, data=digits.x_train[:512])
    after = d.accuracy(trained_mlp, digits.x_test, digits.y_test)  # measured: 97.55
    assert report.ranks == {"fc1": 16, "fc2": 16, "fc3": None} and report.params_ratio < 0.35
    assert after >= before - 1.5, (before, after)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(), ValueError, "expected exactly one rule, got none"),
        (dict(rank=8, energy=0.9), ValueError, "expected exactly one rule, got ['energy', 'rank']"),
        (dict(rank=0), ValueError, "rank: expected an int >= 1"),
        (dict(rank=2.5), TypeError, "rank"),
        (dict(energy=0.0), ValueError, "energy: expected a float in (0, 1]"),
        (dict(energy=1.5), ValueError, "energy"),
        (dict(param_ratio=1.0), ValueError, "param_ratio: expected a float in (0, 1)"),
        (dict(budget=0.5), ValueError, "data: budget search needs"),
        (dict(rank=8, multiple=0), ValueError, "multiple: expected an int >= 1"),
        (dict(rank=8, margin=0), ValueError, "margin: expected a float in (0, inf)"),
        (dict(rank=8, conv="cp"), ValueError, "conv: expected one of 'matrix', 'separable'"),
        (dict(rank=8, activation_aware=True), ValueError, "data: activation_aware=True needs"),
        (dict(rank=8, activation_aware=1, data=torch.zeros(1, 16)), TypeError, "activation_aware: expected a bool"),
        (dict(rank=8, layers=["1"]), ValueError, "layers: '1' is a ReLU"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(error) as info:
        factorize(model, torch.zeros(1, 16), **kwargs)
    assert words in str(info.value)


def test_bad_svd_arguments():
    with pytest.raises(ValueError, match="rank: expected at most min"):
        svd_factors(torch.zeros(4, 6), 5)
    with pytest.raises(ValueError, match="weight: expected a 2-D Tensor"):
        svd_factors(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="conv: activation_aware supports conv='matrix' only"):
        factorize(nn.Sequential(nn.Conv2d(2, 2, 3)), torch.zeros(1, 2, 4, 4), rank=1, conv="separable",
                  activation_aware=True, data=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="layers: '0' is a grouped Conv2d"):
        factorize(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), torch.zeros(1, 4, 4, 4), rank=1, layers=["0"])
