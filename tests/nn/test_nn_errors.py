from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402


@pytest.fixture
def lin():
    return enn.Int8Linear.from_float(torch.nn.Linear(16, 4))


@pytest.fixture
def conv():
    return enn.SparseConv2d.from_float(torch.nn.Conv2d(3, 4, 3))


def test_a_cuda_tensor_is_refused_before_any_kernel_runs(lin, conv):
    # No GPU here: a stand-in that passes isinstance(x, torch.Tensor) and reports a CUDA device.
    fake = mock.Mock(spec=torch.Tensor, device=torch.device("cuda", 0), dtype=torch.float32, layout=torch.strided)
    for m in (lin, conv):
        with pytest.raises(ValueError, match=r"input: expected a CPU tensor .* got device cuda:0"):
            m(fake)


def test_a_tensor_on_another_device_is_refused(lin, conv):
    with pytest.raises(ValueError, match="input: expected a CPU tensor .* got device meta"):
        lin(torch.empty(2, 16, device="meta"))
    with pytest.raises(ValueError, match="got device meta"):
        conv(torch.empty(1, 3, 5, 5, device="meta"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_other_dtypes_are_refused_not_converted(lin, conv, dtype):
    # float64 would silently lose precision in the float32 kernels; half types lose nothing
    with pytest.raises(TypeError, match=f"input: expected a float32, float16 or bfloat16 tensor, got {dtype}"):
        lin(torch.zeros(2, 16, dtype=dtype))
    with pytest.raises(TypeError, match="expected a float32, float16 or bfloat16 tensor"):
        conv(torch.zeros(1, 3, 5, 5, dtype=dtype))


def test_inputs_that_are_not_dense_tensors_are_refused(lin):
    with pytest.raises(TypeError, match="input: expected a torch.Tensor, got ndarray"):
        lin(np.zeros((2, 16), np.float32))
    with pytest.raises(TypeError, match="input: expected a dense"):
        lin(torch.zeros(2, 16).to_sparse())


def test_wrong_shapes_are_refused(lin, conv):
    with pytest.raises(ValueError, match=r"input: expected shape \(\.\.\., 16\), got \(2, 15\)"):
        lin(torch.zeros(2, 15))
    with pytest.raises(ValueError, match=r"input: expected shape \(\.\.\., 16\), got \(\)"):
        lin(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"input: expected shape \(N, 3, H, W\) or \(3, H, W\), got \(1, 2, 5, 5\)"):
        conv(torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="expected shape"):
        conv(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="input: a 2x2 image .* smaller than the dilated 3x3 kernel"):
        conv(torch.zeros(1, 3, 2, 2))


def test_nan_inputs_are_refused(lin):
    with pytest.raises(ValueError, match="NaN or Inf"):
        lin(torch.full((1, 16), float("nan")))


def test_backward_raises_inference_only(lin, conv):
    x = torch.randn(2, 16, requires_grad=True)
    y = lin(x)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
    xc = torch.randn(1, 3, 5, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        conv(xc).sum().backward()
    # inside a model, behind float layers that do have gradients
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), lin)
    with pytest.raises(RuntimeError, match="inference-only"):
        model(torch.randn(2, 8)).sum().backward()


def test_constructors_name_the_bad_argument():
    w8 = ec.Int8Weight.from_float(np.ones((4, 16), np.float32))
    with pytest.raises(TypeError, match="weight: expected Int8Weight, got Int4Weight"):
        enn.Int8Linear(ec.Int4Weight.from_float(np.ones((4, 32), np.float32)))
    with pytest.raises(TypeError, match="weight: expected SparseWeight, got ndarray"):
        enn.SparseLinear(np.ones((4, 16), np.float32))
    with pytest.raises(ValueError, match=r"bias: expected shape \(4,\), got \(5,\)"):
        enn.Int8Linear(w8, torch.zeros(5))
    with pytest.raises(TypeError, match="bias: expected a float tensor, got torch.int64"):
        enn.Int8Linear(w8, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="bias: expected a torch.Tensor, a numpy array or None, got list"):
        enn.Int8Linear(w8, [0.0] * 4)
    with pytest.raises(TypeError, match="module: expected a torch.nn.Linear, got Conv2d"):
        enn.Int8Linear.from_float(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="module: expected a torch.nn.Conv2d, got Linear"):
        enn.Int8Conv2d.from_float(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="granularity: expected 'channel' or 'tensor'"):
        enn.Int8Linear.from_float(torch.nn.Linear(4, 4), granularity="row")
    with pytest.raises(ValueError, match="group_size: expected one of"):
        enn.Int4Conv2d.from_float(torch.nn.Conv2d(4, 4, 3), group_size=16)
    with pytest.raises(TypeError, match="unexpected keyword argument 'ranks'"):
        enn.LowRankLinear.from_float(torch.nn.Linear(4, 4), ranks=2)
    with pytest.raises(ValueError, match="patch_order: expected one of .*, got 'nhwc'"):
        enn.SparseConv2d.from_float(torch.nn.Conv2d(4, 4, 3), patch_order="nhwc")
    # an N:M pattern made along torch's flattened (c, kh, kw) is no N:M pattern along (kh, kw, c)
    conv = torch.nn.Conv2d(4, 4, 2, bias=False)
    with torch.no_grad():  # each channel keeps its 2x2 kernel's top row: 4 of 4 channels at a top-row tap
        conv.weight.copy_(torch.arange(1.0, 1 + 4 * 16).reshape(4, 4, 2, 2) * torch.tensor([[1.0], [0.0]]))
    assert enn.SparseConv2d.from_float(conv, format="2:4", patch_order="chw").weights[0].format == "2:4"
    with pytest.raises(ValueError, match="format '2:4' keeps at most 2 of every 4 consecutive values along K"):
        enn.SparseConv2d.from_float(conv, format="2:4", patch_order="hwc")
    m = enn.SparseConv2d.from_float(conv, format="2:4")  # no order asked for: the one the pattern holds in
    assert (m.patch_order, m.weights[0].format) == ("chw", "2:4")
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), conv(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a pattern in neither order: the error names the (kh, kw, c) one
        conv.weight.fill_(1.0)
    with pytest.raises(ValueError, match="format '2:4' keeps at most 2 of every 4 consecutive values along K"):
        enn.SparseConv2d.from_float(conv, format="2:4")


@pytest.mark.parametrize("kwargs, match", [
    ({"kernel_size": 0}, "kernel_size: expected an int or a pair of ints >= 1, got 0"),
    ({"kernel_size": (3, 3, 3)}, "kernel_size: expected an int or a pair"),
    ({"kernel_size": 5}, r"weight: expected every group's weight to be \(out_channels/groups, in_channels/groups \* 25\)"),
    ({"kernel_size": 3, "stride": 0}, "stride: expected an int or a pair of ints >= 1"),
    ({"kernel_size": 3, "padding": -1}, "padding: expected an int or a pair of ints >= 0"),
    ({"kernel_size": 3, "padding": "full"}, "padding: expected an int, a pair, 'valid' or 'same', got 'full'"),
    ({"kernel_size": 3, "padding": "same", "stride": 2}, "padding: 'same' needs stride 1"),
    ({"kernel_size": 3, "groups": 2}, "weight: expected 2 weights .one per group., got 1"),
    ({"kernel_size": 3, "groups": 0}, "groups: expected an int >= 1, got 0"),
    ({"kernel_size": 3, "padding_mode": "mirror"}, "padding_mode: expected one of"),
    ({"kernel_size": 3, "patch_order": "cwh"}, r"patch_order: expected one of \('hwc', 'chw'\), got 'cwh'"),
])
def test_conv_options_name_the_bad_argument(kwargs, match):
    w = ec.Int8Weight.from_float(np.ones((4, 2 * 9), np.float32))
    with pytest.raises(ValueError, match=match):
        enn.Int8Conv2d(w, **kwargs)
