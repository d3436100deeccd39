"""Structured pruning: the fx dependency graph, channel importance scores, physically smaller models
that compute what the masked model computes, and filter pruning + distillation on the digits CNN."""

import copy
import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from edgecompress.compress.prune import (  # noqa: E402
    DependencyGraph,
    block_importance,
    group_importance,
    prune_channels,
    prune_filters,
    prune_heads,
    prune_neurons,
    prune_weights,
    remove_blocks,
    select_channels,
)


def _randomize(model, seed=0):
    """Random weights and BatchNorm statistics, eval mode: masked vs pruned must agree on all of it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _group(graph, producer):
    (g,) = [g for g in graph.groups if any(u.module == producer and u.role == "out" for u in g.usages)]
    return g


def _roles(group):
    return {(u.module, u.role, u.offset, u.repeat) for u in group.usages}


def _check_pruned_equals_masked(model, x, keep_fraction=0.5, seed=0, skip=()):
    """Prune a random subset of every prunable group; the small model must equal the masked one."""
    graph = DependencyGraph(model, x)
    masked = copy.deepcopy(model)
    masked_graph = DependencyGraph(masked, x)
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for g in graph.groups:
        if not g.prunable or g.name in skip:
            continue
        per = max(1, int(g.size // g.divisions * keep_fraction))
        part = g.size // g.divisions
        kept = torch.cat([torch.randperm(part, generator=gen)[:per] + d * part for d in range(g.divisions)])
        keep[g.index] = torch.sort(kept).values
        dropped = torch.tensor(sorted(set(range(g.size)) - set(kept.tolist())))
        masked_graph.zero_channels(masked_graph.groups[g.index], dropped)
    assert keep, "nothing was prunable"
    graph.prune(keep)
    with torch.no_grad():
        expected, got = masked(x), model(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    return graph, keep


# -- models ---------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class ResNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c)
        self.block1, self.block2 = ResBlock(c), ResBlock(c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.block2(self.block1(F.relu(self.bn(self.stem(x)))))
        x = self.pool(F.relu(self.down(x)))
        return self.fc(x.view(x.size(0), -1))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(12 + 3, 6, 3, padding=1)

    def forward(self, x):
        return self.c(torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x)), x], dim=1)).mean(dim=(2, 3))


class Depthwise(nn.Module):
    def __init__(self, multiplier=1):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16 * multiplier, 3, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16 * multiplier)
        self.project = nn.Conv2d(16 * multiplier, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu6(self.bn1(self.expand(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        return self.head(F.relu(self.grouped(self.project(x))))


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape

        def heads(proj):
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        att = torch.softmax(heads(self.q_proj) @ heads(self.k_proj).transpose(-2, -1) / math.sqrt(self.head_dim), -1)
        return self.out_proj((att @ heads(self.v_proj)).transpose(1, 2).reshape(b, t, -1))


class Transformer(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


# -- the dependency graph -------------------------------------------------------------------------------


def test_resnet_residual_adds_couple_the_stem_and_both_blocks(torch_single_thread):
    model, x = _randomize(ResNet()), torch.randn(2, 3, 8, 8)
    graph = DependencyGraph(model, x)
    residual = _group(graph, "stem")
    assert residual.prunable and residual.size == 16
    assert {("stem", "out"), ("bn", "out"), ("block1.conv2", "out"), ("block1.bn2", "out"), ("block2.conv2", "out"), ("block2.bn2", "out"),
            ("block1.conv1", "in"), ("block2.conv1", "in"), ("down", "in")} == {(u.module, u.role) for u in residual.usages}
    assert _roles(_group(graph, "block1.conv1")) == {("block1.conv1", "out", 0, 1), ("block1.bn1", "out", 0, 1),
                                                     ("block1.conv2", "in", 0, 1)}
    assert _roles(_group(graph, "down")) == {("down", "out", 0, 1), ("fc", "in", 0, 1)}  # through the pool and view
    assert _group(graph, "fc").pinned == "reaches the model's output"
    _check_pruned_equals_masked(model, x)
    assert model.stem.out_channels == model.block1.conv2.out_channels == model.down.in_channels == 8


def test_concatenation_offsets_and_a_pinned_input_segment(torch_single_thread):
    model, x = _randomize(Concat()), torch.randn(2, 3, 6, 6)
    graph = DependencyGraph(model, x)
    assert _roles(_group(graph, "a")) == {("a", "out", 0, 1), ("c", "in", 0, 1)}
    assert _roles(_group(graph, "b")) == {("b", "out", 0, 1), ("c", "in", 8, 1)}
    (raw_input,) = [g for g in graph.groups if ("c", "in", 12, 1) in _roles(g)]
    assert not raw_input.prunable and "without channel info" in raw_input.pinned
    _check_pruned_equals_masked(model, x)
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (4, 2, 9)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_and_grouped_convolutions(multiplier, torch_single_thread):
    model, x = _randomize(Depthwise(multiplier)), torch.randn(2, 3, 6, 6)
    graph = DependencyGraph(model, x)
    expand = _group(graph, "expand")
    assert _roles(expand) == {("expand", "out", 0, 1), ("bn1", "out", 0, 1), ("dw", "out", 0, multiplier),
                              ("bn2", "out", 0, multiplier), ("project", "in", 0, multiplier)}
    project = _group(graph, "project")  # read by a conv with 2 groups: pruned evenly in both halves
    assert project.divisions == 2 and _group(graph, "grouped").divisions == 2
    _check_pruned_equals_masked(model, x)
    assert (model.dw.groups, model.dw.in_channels, model.dw.out_channels) == (8, 8, 8 * multiplier)
    assert model.grouped.weight.shape == (4, 2, 3, 3) and model.bn2.num_features == 8 * multiplier


def test_transformer_heads_keep_q_k_v_and_out_consistent(torch_single_thread):
    model, x = _randomize(Transformer()), torch.randn(2, 5, 6)
    graph = DependencyGraph(model, x)
    (heads,) = [g for g in graph.groups if g.attention == "attn"]
    assert heads.size == 4 and heads.prunable and heads.name == "attn.heads"
    assert _roles(heads) == {("attn.q_proj", "out", 0, 8), ("attn.k_proj", "out", 0, 8), ("attn.v_proj", "out", 0, 8),
                             ("attn.out_proj", "in", 0, 8)}
    stream = _group(graph, "embed")  # the residual stream: embed, out_proj, fc2 write it; LayerNorms follow
    assert {("attn.out_proj", "out"), ("fc2", "out"), ("ln1", "out"), ("ln2", "out"), ("attn.q_proj", "in"),
            ("attn.v_proj", "in"), ("fc1", "in"), ("head", "in")} <= {(u.module, u.role) for u in stream.usages}
    # LayerNorm statistics change when the stream narrows, so compare heads and MLP neurons only
    _check_pruned_equals_masked(model, x, skip={"embed"})
    assert model.attn.num_heads == 2 and model.attn.q_proj.out_features == model.attn.out_proj.in_features == 16
    assert model.fc1.out_features == model.fc2.in_features == 64


def test_resizing_and_pooling_keep_the_channels(torch_single_thread):
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
            self.up = nn.Upsample(scale_factor=2)

        def forward(self, x):
            y = F.interpolate(F.max_pool2d(self.a(x), 2), scale_factor=2.0)
            return self.b(self.up(F.silu(y))).amax(dim=(2, 3))

    model, x = _randomize(Decoder()), torch.randn(2, 3, 4, 4)
    assert _roles(_group(DependencyGraph(model, x), "a")) == {("a", "out", 0, 1), ("b", "in", 0, 1)}
    _check_pruned_equals_masked(model, x)
    assert model.b.in_channels == 4


def test_unknown_operations_and_outputs_pin_their_channels():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            rolled = torch.roll(self.a(x), 1, dims=1)  # mixes channel positions
            halves = torch.chunk(self.b(x), 2, dim=1)  # returns a tuple
            return self.c(rolled + halves[0].repeat(1, 2, 1, 1))

    graph = DependencyGraph(Odd(), torch.randn(1, 3, 4, 4))
    assert "roll" in _group(graph, "a").pinned
    assert "several tensors" in _group(graph, "b").pinned
    assert _group(graph, "c").pinned == "reaches the model's output"
    with pytest.raises(ValueError, match="model: no prunable Conv filters found"):
        prune_filters(Odd(), torch.randn(1, 3, 4, 4), 0.5)


def test_masked_model_and_untraceable_model_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    prune_weights(model, torch.zeros(1, 4), 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        DependencyGraph(model, torch.zeros(1, 4))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="model: torch.fx could not trace it"):
        DependencyGraph(Branchy(), torch.zeros(1, 4))


# -- importance scores ----------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 1.0]]))
            self.fc2.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def _sum_loss(out, target):
    return out.sum()


# Hidden activations a = relu(fc1 x): batch 1, x = (1, 0) and (0, 1): a = (1, .5, 0), (0, .5, 1), summed (1, 1, 1);
# batch 2, x = (2, 1): a = (0, 1.5, 0). With loss = sum of outputs, d_b = dL_b/dgate = fc2.w * sum of a:
# batch 1: (2, -1, .5), batch 2: (0, -1.5, 0).
_BATCHES = [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), None), (torch.tensor([[2.0, 1.0]]), None)]


@pytest.mark.parametrize(
    "importance, expected",
    [
        ("l1", [3.0, 1.0, 4.0]),  # row sums of |fc1.w|
        ("l2", [math.sqrt(5), math.sqrt(0.5), math.sqrt(10)]),
        ("taylor", [(2 + 0) / 2, (1 + 1.5) / 2, (0.5 + 0) / 2]),  # mean over batches of |d_b|
        ("fisher", [0.5 * (4 + 0) / 2, 0.5 * (1 + 2.25) / 2, 0.5 * (0.25 + 0) / 2]),  # half the mean of d_b^2
        ("montecarlo", [-(2 + 0) / 2, (1 + 1.5) / 2, -(0.5 + 0) / 2]),  # loss increase: -mean d_b (additive loss)
    ],
)
def test_neuron_scores_by_hand(importance, expected, torch_single_thread):
    model = TwoLayer()
    graph = DependencyGraph(model, _BATCHES[0][0])
    group = _group(graph, "fc1")
    data = None if importance in ("l1", "l2") else _BATCHES
    scores = group_importance(graph, [group], importance, data=data, loss_fn=_sum_loss, samples=16)[group.index]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_input_side_norms_score_the_reading_weights(torch_single_thread):
    model = TwoLayer()
    graph = DependencyGraph(model, _BATCHES[0][0])
    group = _group(graph, "fc1")
    torch.testing.assert_close(group_importance(graph, [group], "l1", side="in")[group.index], torch.tensor([2.0, 1.0, 0.5]))


def test_select_channels_rounds_and_splits_divisions():
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 0.0, 9.0, 8.0, 7.0])
    assert select_channels(scores, 0.5).tolist() == [0, 5, 6, 7]  # scores 5, 9, 8, 7
    assert select_channels(scores, 0.5, divisions=2).tolist() == [0, 2, 5, 6]  # two best of each half
    assert select_channels(scores, 0.75, divisions=2).tolist() == [0, 5]
    assert select_channels(scores, 0.7, round_to=4).tolist() == [0, 5, 6, 7]  # keep 3 -> rounded up to 4
    assert select_channels(scores, 0.5, round_to=16).tolist() == list(range(8))  # never above the size


# -- the public calls -----------------------------------------------------------------------------------


def test_prune_neurons_removes_the_lowest_norm_neurons(torch_single_thread):
    model = TwoLayer()
    report = prune_neurons(model, _BATCHES[0][0], 0.34, importance="l1")  # floor(0.34 * 3) = 1 goes
    assert model.fc1.weight.tolist() == [[1.0, -2.0], [-3.0, 1.0]]  # the neuron with L1 norm 1 is gone
    assert model.fc2.weight.tolist() == [[2.0, 0.5]]
    rows = {r.name: r for r in report.rows}
    assert (rows["fc1"].params_before, rows["fc1"].params_after) == (6, 4) and rows["fc1"].note == "channels 3 -> 2"


def test_prune_filters_with_round_to_and_gradient_scores(torch_single_thread):
    model = _randomize(ResNet(c=24))
    x = torch.randn(4, 3, 8, 8)
    data = [(x, torch.randint(0, 10, (4,)))]
    report = prune_filters(model, x[:1], 0.5, round_to=16, importance="taylor", data=data)
    assert model.stem.out_channels == 16 and model.block1.conv1.out_channels == 16  # 12 kept -> 16
    assert model.down.out_channels == 32 and model.fc.in_features == 32  # 24 -> 32 (48 kept of 48 - 24)
    assert report.macs_ratio < 0.7
    model(x)


def test_prune_channels_prunes_what_a_conv_reads(torch_single_thread):
    model = _randomize(Concat())
    prune_channels(model, torch.randn(1, 3, 6, 6), 0.5, layers=["c"])
    assert (model.a.out_channels, model.b.out_channels, model.c.in_channels) == (4, 2, 9)


def test_prune_heads_updates_the_head_count(torch_single_thread):
    model, x = _randomize(Transformer()), torch.randn(2, 5, 6)
    data = [(x, torch.randint(0, 3, (2,)))]
    report = prune_heads(model, x, 0.5, importance="fisher", data=data)
    assert model.attn.num_heads == 2 and model.attn.k_proj.out_features == 16
    assert "heads 4 -> 2" in str(report)
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="layers: 'fc1' is not an attention module"):
        prune_heads(model, x, 0.5, layers=["fc1"])
    with pytest.raises(ValueError, match="'attn.q_proj' cannot be pruned: it is an attention projection"):
        prune_neurons(model, x, 0.5, layers=["attn.q_proj"])


def test_remove_blocks_drops_the_least_influential_block(torch_single_thread):
    model, x = _randomize(ResNet()), torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        model.block2.bn2.weight.mul_(1e-3)  # block2 barely changes its input...
        model.block2.bn2.bias.zero_()
        model.block2.bn2.running_mean.zero_()
    scores = block_importance(model, ["block1", "block2"], x)
    assert scores["block2"] < scores["block1"]
    expected = model.fc(model.pool(F.relu(model.down(model.block1(F.relu(model.bn(model.stem(x))))))).flatten(1))
    report = remove_blocks(model, x[:1], ["block2"])
    assert isinstance(model.block2, nn.Identity)
    torch.testing.assert_close(model(x), expected)
    assert {r.name for r in report.rows if r.note == "removed"} == {"block2.conv1", "block2.bn1", "block2.conv2", "block2.bn2"}
    with pytest.raises(ValueError, match="names: 'down' must map one tensor to a tensor of the same shape"):
        remove_blocks(model, x[:1], ["down"])


@pytest.mark.parametrize(
    "call, kwargs, error, words",
    [
        (prune_filters, dict(amount=1.0), ValueError, "amount: expected a float in [0, 1)"),
        (prune_filters, dict(amount=None), TypeError, "amount"),
        (prune_filters, dict(amount=0.5, round_to=0), ValueError, "round_to: expected an int >= 1"),
        (prune_filters, dict(amount=0.5, importance="random"), ValueError, "importance: expected one of 'l1', 'l2'"),
        (prune_filters, dict(amount=0.5, importance="taylor"), ValueError, "data: importance='taylor' needs"),
        (prune_filters, dict(amount=0.5, importance="l2", data=[]), ValueError, "data: importance='l2' is a weight norm"),
        (prune_filters, dict(amount=0.5, layers=["fc"]), ValueError, "'fc' is a Linear, expected Conv filters"),
        (prune_neurons, dict(amount=0.5, layers=["fc"]), ValueError, "channels of 'fc' cannot be pruned: reaches the model's output"),
        (prune_channels, dict(amount=0.5, layers=["stem"]), ValueError, "inputs of 'stem' cannot be pruned: they come"),
        (prune_heads, dict(amount=0.5), ValueError, "model: no prunable attention heads found"),
        (prune_filters, dict(amount=0.5, importance="montecarlo", samples=0, data=[(torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.long))]),
         ValueError, "samples: expected an int >= 1"),
    ],
)
def test_bad_arguments(call, kwargs, error, words):
    with pytest.raises(error) as info:
        call(ResNet(), torch.zeros(1, 3, 8, 8), **kwargs)
    assert words in str(info.value)


# -- evidence on the digits CNN -------------------------------------------------------------------------


def test_digits_cnn_pruned_model_equals_masked_model(trained_cnn, digits):
    _, keep = _check_pruned_equals_masked(trained_cnn, digits.x_test[:64])
    assert trained_cnn.fc1.in_features == 16 * trained_cnn.conv2.out_channels  # flatten: each channel is 4x4


def test_half_the_filters_then_distillation_recovers(trained_cnn, digits):
    from torch.utils.data import DataLoader, TensorDataset

    from edgecompress.compress import digits as d
    from edgecompress.compress.distill import distill

    teacher = copy.deepcopy(trained_cnn)
    before = d.accuracy(teacher, digits.x_test, digits.y_test)  # 99.33
    report = prune_filters(trained_cnn, digits.x_test[:1], 0.5)
    assert (trained_cnn.conv1.out_channels, trained_cnn.conv2.out_channels) == (16, 32)
    assert report.macs_ratio <= 0.55  # measured: 0.279
    pruned = d.accuracy(trained_cnn, digits.x_test, digits.y_test)  # measured: 90.6
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    distill(trained_cnn, teacher, loader, epochs=3, progress=False)
    after = d.accuracy(trained_cnn, digits.x_test, digits.y_test)  # measured: 98.89
    assert after >= before - 1.5, (before, pruned, after)
