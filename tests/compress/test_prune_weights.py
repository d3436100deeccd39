"""Weight pruning: N:M and block masks, magnitude and Wanda scores, the cubic schedule, and the accuracy
of pruned + fine-tuned digits models. Expected masks are worked out by hand in each test."""

import copy
import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgecompress.compress.prune import GradualPruning, make_permanent, mask_of, prune_weights  # noqa: E402
from edgecompress.compress.prune.magnitude import input_norms, weight_scores  # noqa: E402
from edgecompress.compress.prune.masks import nm_mask, parse_pattern, thresholds  # noqa: E402


def _linear(weight, bias=False):
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


# -- masks ---------------------------------------------------------------------------------------------


def test_nm_masks_by_hand():
    row = torch.tensor([[0.1, -0.5, 0.3, 0.2, 4.0, -3.0, 2.0, 1.0]]).abs()
    assert nm_mask(row, 2, 4).int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert nm_mask(row, 1, 4).int().tolist() == [[0, 1, 0, 0, 1, 0, 0, 0]]
    assert nm_mask(row, 4, 8).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    # ties keep the first of the group
    assert nm_mask(torch.ones(1, 4), 2, 4).int().tolist() == [[1, 1, 0, 0]]


def test_nm_mask_groups_run_along_k_of_a_conv_weight():
    # conv weight (1, 2, 1, 4) (channels a, b; one row of 4 taps) is the row K in (kh, kw, c) order,
    # the conv modules' patch order: [a0, b0, a1, b1 | a2, b2, a3, b3]
    scores = torch.tensor([[[[9.0, 8.0, 1.0, 1.0]], [[1.0, 1.0, 1.0, 1.0]]]])
    mask = nm_mask(scores, 2, 4)
    assert mask[0, :, 0].int().tolist() == [[1, 1, 1, 0], [0, 0, 1, 0]]  # (torch's (c, kh, kw): a0 a1 | b0 b1)
    # 1x4 blocks too: tap 0 of both channels and tap 1 of both form the first block
    mask = thresholds([scores], 0.5, parse_pattern("1x4"))[0]
    assert mask[0, :, 0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


def test_conv_pruned_to_two_four_deploys_in_the_fast_patch_order(torch_single_thread):
    from edgecompress.nn import SparseConv2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    prune_weights(model, torch.randn(1, 8, 6, 6), pattern="2:4")
    m = SparseConv2d.from_float(model[0], format="2:4")
    assert m.patch_order == "hwc" and m.weights[0].format == "2:4"
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), model(x), rtol=1e-4, atol=1e-5)


def test_block_masks_by_hand():
    # 4x1 blocks of an (8, 2) weight; block means: rows 0-3 | 4-7 at k=0: 4, 1; at k=1: 2, 3
    w = torch.tensor([[4.0, 2.0]] * 4 + [[1.0, 3.0]] * 4)
    mask = thresholds([w], 0.5, parse_pattern("4x1"))[0]
    assert mask.int().tolist() == [[1, 0]] * 4 + [[0, 1]] * 4
    # 1x4 blocks of a (2, 8) weight: row 0 means 1, 5; row 1 means 2, 0.5
    w = torch.tensor([[1.0] * 4 + [5.0] * 4, [2.0] * 4 + [0.5] * 4])
    mask = thresholds([w], 0.5, parse_pattern("1x4"))[0]
    assert mask.int().tolist() == [[0] * 4 + [1] * 4, [1] * 4 + [0] * 4]


def test_partial_edge_block_counts_its_real_size():
    # 8x1 blocks over 10 rows: rows 8-9 are a block of 2 with mean 0.5, rows 0-7 a block of 8 with mean 1
    w = torch.tensor([[1.0]] * 8 + [[0.5]] * 2)
    assert thresholds([w], 0.2, parse_pattern("8x1"))[0].flatten().int().tolist() == [1] * 8 + [0] * 2
    # 50% = 5 weights: the small block (2) goes, the next one (8) would overshoot, so it stays
    assert thresholds([w], 0.5, parse_pattern("8x1"))[0].flatten().int().tolist() == [1] * 8 + [0] * 2


def test_unstructured_layer_and_global_thresholds():
    a, b = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    unstructured = parse_pattern("unstructured")
    assert [m.int().tolist() for m in thresholds([a, b], 0.5, unstructured)] == [[[0, 0, 0, 0]], [[1, 1, 1, 1]]]
    assert thresholds([a], 0.5, unstructured)[0].int().tolist() == [[0, 0, 1, 1]]
    assert thresholds([a], 0.25, unstructured)[0].int().tolist() == [[0, 1, 1, 1]]


# -- scores ---------------------------------------------------------------------------------------------


def test_magnitude_and_wanda_scores_by_hand(torch_single_thread):
    layer = _linear([[1.0, -2.0], [3.0, 0.5]])
    model = nn.Sequential(layer)
    x = torch.tensor([[0.0, 0.1], [3.0, 0.0]])  # input feature norms: 3 and 0.1
    norms = input_norms(model, ["0"], x)["0"]
    assert torch.allclose(norms, torch.tensor([3.0, 0.1]))
    assert weight_scores(layer, "magnitude").tolist() == [[1.0, 2.0], [3.0, 0.5]]
    assert torch.allclose(weight_scores(layer, "wanda", norms), torch.tensor([[3.0, 0.2], [9.0, 0.05]]))

    magnitude = copy.deepcopy(model)
    prune_weights(magnitude, x, 0.5)
    assert mask_of(magnitude[0]).int().tolist() == [[0, 1], [1, 0]]
    prune_weights(model, x, 0.5, score="wanda", calibration=x)
    assert mask_of(model[0]).int().tolist() == [[1, 0], [1, 0]]


def test_wanda_norms_of_a_conv_are_its_im2col_columns(torch_single_thread):
    conv = nn.Conv2d(1, 1, 2, bias=False)
    x = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]]])  # one output position: the columns are the 4 pixels
    assert torch.allclose(input_norms(nn.Sequential(conv), ["0"], x)["0"], torch.tensor([[1.0, 2.0, 0.0, 3.0]]))
    # a 1x1 image with padding 1: each of the 4 kernel taps sees the pixel once (norm 5)
    padded = nn.Conv2d(1, 1, 2, padding=1, bias=False)
    norms = input_norms(nn.Sequential(padded), ["0"], torch.full((1, 1, 1, 1), 5.0))["0"]
    assert torch.allclose(norms, torch.full((1, 4), 5.0))


# -- prune_weights -------------------------------------------------------------------------------------


def test_masks_survive_training_and_make_permanent(torch_single_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(32, 16)
    prune_weights(model, x, 0.75)
    mask = mask_of(model[0])
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model(x)  # the forward re-applies the mask the optimizer disturbed
    assert not model[0].weight[~mask].any()
    copied = copy.deepcopy(model)
    make_permanent(copied)  # finalizing a copy leaves the original masked and working
    assert mask_of(copied[0]) is None and mask_of(model[0]) is not None
    assert float((copied[0].weight == 0).float().mean()) == 0.75
    assert torch.equal(copied(x), model(x))
    assert set(copied.state_dict()) == set(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).state_dict())


def test_report_counts_nonzero_params_and_macs(torch_single_thread):
    model = nn.Sequential(nn.Linear(8, 4, bias=False), nn.Linear(4, 2, bias=False))
    report = prune_weights(model, torch.zeros(3, 8), 0.5, layers=["0"])
    rows = {r.name: r for r in report.rows}
    assert (rows["0"].params_before, rows["0"].params_after) == (32, 16)
    assert (rows["0"].macs_before, rows["0"].macs_after) == (3 * 32, 3 * 16)  # 3 rows of input
    assert rows["1"].params_after == rows["1"].params_before == 8
    text = str(report)
    assert "params before" in text and "MACs after" in text and "total" in text


def test_global_scope_and_blocks_on_a_model(torch_single_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 8))
    with torch.no_grad():
        model[1].weight.mul_(100)  # layer 1 dominates a global ranking
    prune_weights(model, torch.zeros(1, 16), 0.4, scope="global")
    total = model[0].weight.numel() + model[1].weight.numel()
    zeros = int((model[0].weight == 0).sum() + (model[1].weight == 0).sum())
    assert zeros == round(0.4 * total) and int((model[1].weight == 0).sum()) == 0
    prune_weights(model, torch.zeros(1, 16), 0.5, pattern="4x1", layers=["1"])
    blocks = (model[1].weight != 0).reshape(2, 4, 16).any(dim=1)
    assert torch.equal((model[1].weight != 0).reshape(2, 4, 16), blocks[:, None, :].expand(2, 4, 16))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(sparsity=1.0), ValueError, "sparsity: expected a float in [0, 1)"),
        (dict(sparsity=-0.1), ValueError, "sparsity"),
        (dict(sparsity="half"), TypeError, "sparsity"),
        (dict(), ValueError, "sparsity: pattern 'unstructured' needs"),
        (dict(pattern="3:4"), ValueError, "pattern: N:M sparsity supports '2:4', '1:4', '4:8'"),
        (dict(pattern="2x2", sparsity=0.5), ValueError, "pattern: block sparsity supports"),
        (dict(pattern="random", sparsity=0.5), ValueError, "pattern: expected one of"),
        (dict(pattern=4), TypeError, "pattern"),
        (dict(pattern="2:4", sparsity=0.7), ValueError, "fixes sparsity at 0.5"),
        (dict(pattern="2:4", scope="global"), ValueError, "scope"),
        (dict(sparsity=0.5, scope="model"), ValueError, "scope: expected one of 'layer', 'global'"),
        (dict(sparsity=0.5, score="random"), ValueError, "score: expected one of 'magnitude', 'wanda'"),
        (dict(sparsity=0.5, score="wanda"), ValueError, "calibration"),
        (dict(sparsity=0.5, calibration=torch.zeros(1, 12)), ValueError, "calibration: only score='wanda'"),
        (dict(sparsity=0.5, layers=["nope"]), ValueError, "layers: 'nope' is not a module"),
        (dict(sparsity=0.5, layers=["1"]), ValueError, "layers: '1' is a ReLU"),
        (dict(sparsity=0.5, layers="0"), TypeError, "layers"),
        (dict(pattern="2:4", layers=["0"]), ValueError, "'0' has K=6 weights per row, not a multiple of 4"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(error) as info:
        prune_weights(model, torch.zeros(1, 6), **kwargs)
    assert words in str(info.value)


def test_bad_model_and_inputs():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        prune_weights("model", torch.zeros(1), 0.5)
    with pytest.raises(TypeError, match="example_inputs: expected a Tensor"):
        prune_weights(nn.Linear(2, 2), [1, 2], 0.5)


# -- gradual schedule -----------------------------------------------------------------------------------


def test_cubic_schedule_by_hand():
    pruner = GradualPruning(nn.Linear(4, 4), torch.zeros(1, 4), 0.8, start_step=10, end_step=20,
                            initial_sparsity=0.1)
    # s(t) = 0.8 + (0.1 - 0.8) * (1 - (t - 10) / 10) ** 3
    assert pruner.sparsity_at(0) == pytest.approx(0.1)
    assert pruner.sparsity_at(15) == pytest.approx(0.8 - 0.7 * 0.125)
    assert pruner.sparsity_at(18) == pytest.approx(0.8 - 0.7 * 0.008)
    assert pruner.sparsity_at(25) == pytest.approx(0.8)


def test_schedule_masks_only_grow_and_finalize(torch_single_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    pruner = GradualPruning(model, x[:1], 0.9, end_step=8, frequency=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = pruner.attach(opt)
    previous = mask_of(model[0])
    seen = []
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        mask = mask_of(model[0])
        assert not (mask & ~previous).any()  # nothing pruned comes back
        previous = mask
        seen.append(round(1 - float(mask.float().mean()), 4))
    handle.remove()
    def fraction(sparsity):  # what 1024 weights can hold
        return round(round(sparsity * 1024) / 1024, 4)

    assert seen[0] == 0.0 and seen[1] == fraction(0.9 * (1 - (1 - 2 / 8) ** 3))  # updated at step 2
    assert seen[2] == seen[1] and seen[3] == fraction(0.9 * (1 - (1 - 4 / 8) ** 3))
    assert seen[-1] == fraction(0.9) and pruner.step_count == 10
    report = pruner.finalize()
    assert mask_of(model[0]) is None
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.9, abs=1 / 1024)
    assert report.params_ratio < 0.2


def test_schedule_rejects_nm_and_bad_steps():
    with pytest.raises(ValueError, match="pattern: N:M fixes the sparsity"):
        GradualPruning(nn.Linear(4, 4), torch.zeros(1, 4), 0.5, end_step=10, pattern="2:4")
    with pytest.raises(ValueError, match="end_step: expected an int >= 6"):
        GradualPruning(nn.Linear(4, 4), torch.zeros(1, 4), 0.5, start_step=5, end_step=5)
    with pytest.raises(ValueError, match="initial_sparsity: expected <= final_sparsity"):
        GradualPruning(nn.Linear(4, 4), torch.zeros(1, 4), 0.5, end_step=10, initial_sparsity=0.6)


# -- evidence on the digits models ---------------------------------------------------------------------


def _fine_tune(model, digits, epochs):
    from edgecompress.compress import digits as d

    d.fit(model, digits, epochs=epochs, lr=1e-3)
    make_permanent(model)
    return d.accuracy(model, digits.x_test, digits.y_test)


def test_half_unstructured_then_fine_tune_loses_at_most_one_point(trained_mlp, digits):
    from edgecompress.compress import digits as d

    before = d.accuracy(trained_mlp, digits.x_test, digits.y_test)  # 97.55
    report = prune_weights(trained_mlp, digits.x_test[:1], 0.5)
    after = _fine_tune(trained_mlp, digits, epochs=3)  # measured: 95.77 after pruning, 97.10 after
    assert after >= before - 1.0, (before, after)
    for layer in (trained_mlp.fc1, trained_mlp.fc2, trained_mlp.fc3):
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    assert report.macs_ratio == pytest.approx(0.5, abs=1e-3)


def test_two_four_then_fine_tune_loses_at_most_one_and_a_half_points(trained_mlp, digits):
    from edgecompress.compress import digits as d

    before = d.accuracy(trained_mlp, digits.x_test, digits.y_test)  # 97.55
    prune_weights(trained_mlp, digits.x_test[:1], pattern="2:4")
    after = _fine_tune(trained_mlp, digits, epochs=5)  # measured: 93.10 after pruning, 97.33 after
    assert after >= before - 1.5, (before, after)
    for layer in (trained_mlp.fc1, trained_mlp.fc2, trained_mlp.fc3):
        groups = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(dim=-1)
        assert int(groups.max()) <= 2
    assert math.isclose(float((trained_mlp.fc2.weight == 0).float().mean()), 0.5)
