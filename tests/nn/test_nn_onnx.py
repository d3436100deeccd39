"""ONNX export of Int8Linear / Int4Linear models (edgecompress.nn.onnx), run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from edgecompress import nn as enn  # noqa: E402
from edgecompress.nn import onnx as ec_onnx  # noqa: E402

# torch's exporter warns about its own pytree use
pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
                                        "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:DeprecationWarning")


def _run(model, x, batch_dim=True):
    kwargs = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if batch_dim else {}
    program = ec_onnx.export(model.eval(), (x,), verbose=False, **kwargs)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in program.model_proto.graph.node]
    return ops, lambda xin: session.run(None, {session.get_inputs()[0].name: xin.numpy()})[0]


def _relative_error(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


# (name, layers, nodes the graph must hold, tolerance against our output relative to max |output|)
CASES = [
    ("int8-dynamic", lambda a: enn.Int8Linear.from_float(a), {"DynamicQuantizeLinear", "MatMulInteger"}, 2e-2),
    ("int8-tensor", lambda a: enn.Int8Linear.from_float(a, granularity="tensor"), {"MatMulInteger"}, 2e-2),
    ("int8-static", lambda a: enn.Int8Linear.from_float(a, act_scale=0.05), {"QuantizeLinear", "DequantizeLinear"}, 2e-2),
    ("int8-static-uint8", lambda a: enn.Int8Linear.from_float(a, act_scale=0.05, act_zero_point=128),
     {"QuantizeLinear"}, 2e-2),
    ("int4-int8-compute", lambda a: enn.Int4Linear.from_float(a), {"MatMulNBits"}, 2e-2),
    ("int4-asym-g64", lambda a: enn.Int4Linear.from_float(a, group_size=64, symmetric=False), {"MatMulNBits"}, 2e-2),
    # float compute: the same dequantized weight in float32 on both sides
    ("int4-float", lambda a: enn.Int4Linear.from_float(a, compute="float"), {"MatMulNBits"}, 1e-5),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_onnxruntime_runs_the_export_within_the_formats_tolerance(case):
    _, make, nodes, tol = case
    torch.manual_seed(0)
    first, second = torch.nn.Linear(96, 64), torch.nn.Linear(64, 10, bias=False)
    model = torch.nn.Sequential(make(first), torch.nn.GELU(), second)  # (a float layer after it)
    ops, run = _run(model, torch.randn(3, 96))
    assert nodes <= set(ops) and "edgecompress" not in " ".join(ops)
    for batch in (1, 5):  # the batch size is dynamic
        x = torch.randn(batch, 96) * 2
        with torch.no_grad():
            want = model(x).numpy()
        assert _relative_error(run(x), want) <= tol


def test_int4_export_holds_the_weight_exactly():
    torch.manual_seed(0)
    m = enn.Int4Linear.from_float(torch.nn.Linear(128, 16), compute="float")
    program = ec_onnx.export(m.eval(), (torch.randn(2, 128),), verbose=False)
    node = next(n for n in program.model_proto.graph.node if n.op_type == "MatMulNBits")
    assert node.domain == "com.microsoft"
    assert {a.name: a.i for a in node.attribute} == {"K": 128, "N": 16, "bits": 4, "block_size": 32, "accuracy_level": 0}


@pytest.mark.parametrize("layer, words", [
    (lambda: enn.SparseLinear.from_float(torch.nn.Linear(32, 8)), "got SparseLinear at '0'"),
    (lambda: enn.Int4Linear.from_float(torch.nn.Linear(32, 8), codebook="nf4"), "got an Int4Linear with a codebook at '0'"),
    (lambda: enn.Int8Conv2d.from_float(torch.nn.Conv2d(32, 8, 1)), "got Int8Conv2d at '0'"),
])
def test_formats_without_a_standard_onnx_form_are_refused_by_name(layer, words):
    model = torch.nn.Sequential(layer())
    x = torch.randn(1, 32, 2, 2) if "Conv" in words else torch.randn(2, 32)
    with pytest.raises(ValueError, match=f"ONNX export supports Int8Linear and Int4Linear.*{words}"):
        ec_onnx.export(model, (x,), verbose=False)
