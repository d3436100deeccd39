"""torch.export, torch.compile and torch.jit.trace of compressed models (the custom ops of nn/_library)."""

from __future__ import annotations

import copy
import gc

import pytest

torch = pytest.importorskip("torch")

from edgecompress import nn as enn  # noqa: E402
from edgecompress.nn import _library  # noqa: E402


class _Model(torch.nn.Module):
    """Convolutions and linears of several formats around float layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = enn.Int8Conv2d.from_float(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.grouped = enn.Int4Conv2d.from_float(torch.nn.Conv2d(8, 8, 3, stride=2, groups=2))
        self.norm = torch.nn.BatchNorm2d(8).eval()
        self.fc = enn.Int4Linear.from_float(torch.nn.Linear(8 * 3 * 3, 32))
        self.head = enn.SparseLinear.from_float(torch.nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.grouped(torch.relu(self.conv(x))))
        return self.head(torch.relu(self.fc(y.flatten(1))))


@pytest.fixture(scope="module")
def model():
    return _Model().eval()


def test_export_gives_eager_outputs_with_one_custom_op_per_layer(model):
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.edgecompress.conv2d.default) == 2
    assert targets.count(torch.ops.edgecompress.linear.default) == 2
    assert torch.equal(ep.module()(x), want)
    x5 = torch.randn(5, 3, 8, 8)  # another batch size
    with torch.no_grad():
        assert torch.equal(ep.module()(x5), model(x5))


# (inductor's own import of torch.jit warns)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_with_fullgraph_gives_eager_outputs(model):
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


# the shape checks in forward become constants of the trace, as in any traced torch module; torch
# 2.13 deprecates torch.jit.trace itself
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
def test_jit_trace_calls_the_custom_ops(model):
    x = torch.randn(2, 3, 8, 8)
    traced = torch.jit.trace(model, (x,))
    assert "edgecompress::linear" in str(traced.inlined_graph) and "edgecompress::conv2d" in str(traced.inlined_graph)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_a_copy_has_its_own_handle_and_a_dead_one_is_a_clear_error():
    lin = enn.Int8Linear.from_float(torch.nn.Linear(16, 4))
    x = torch.randn(3, 16)
    with torch.no_grad():
        want = lin(x)
    ep = torch.export.export(lin, (x,))
    twin = copy.deepcopy(lin)
    assert twin.op_handle != lin.op_handle
    del lin
    gc.collect()
    assert torch.equal(torch.export.export(twin, (x,)).module()(x), want)
    with pytest.raises(ValueError, match="handle: no live edgecompress.nn module has handle"):
        ep.module()(x)


def test_the_ops_keep_the_inference_only_guard(model):
    x = torch.randn(2, 16, requires_grad=True)
    lin = enn.Int8Linear.from_float(torch.nn.Linear(16, 4))
    y = torch.ops.edgecompress.linear(x, lin.op_handle)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
