"""Smoke test of benchmarks/bench_engine.py on a tiny encoder: every peer is built and gives the torch
output, onnxruntime's optimizer fuses the graph the benchmark exports, the profiles parse, and the
targets table says met / NOT met / not measured from the figures. No timing target is checked."""

from __future__ import annotations

import pathlib
import sys
import types

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402

import edgecompress as ec  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_engine as be  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=500)


@pytest.fixture(scope="module")
def tiny_model():
    return be.build_model(TINY)


@pytest.fixture(scope="module")
def ort_peers(tiny_model, tmp_path_factory):
    return be.OrtPeers(tiny_model, str(tmp_path_factory.mktemp("onnx")))


class _FakeProgram:
    """Stands for an engine program: the documented call and profile, computed by torch."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask):
        with torch.inference_mode():
            return self.model(input_ids=torch.from_numpy(input_ids),
                              attention_mask=torch.from_numpy(attention_mask)).last_hidden_state.numpy()

    def profile(self, input_ids, attention_mask, rounds=10):
        self(input_ids, attention_mask)
        return {"ops": {"linear": 2e-4, "attention": 1e-4}, "nodes": [("layer0.qkv", "linear", 5e-5)],
                "native": 3e-4, "total": 3.5e-4}


def _fake_engine(exported: list):
    def export(model, example_inputs, recipe=None):
        assert sorted(example_inputs) == ["attention_mask", "input_ids"]
        assert all(a.dtype == np.int64 and a.ndim == 2 for a in example_inputs.values())
        exported.append(recipe)
        if recipe == "int4-g32":
            raise ValueError("recipe 'int4-g32' is not supported yet")
        return _FakeProgram(model)

    return types.SimpleNamespace(export=export)


def test_make_inputs_pads_rows_after_their_length():
    feed = be.make_inputs(8, 128, 1000, seed=3)
    mask, ids = feed["attention_mask"], feed["input_ids"]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (8, 128)
    lengths = mask.sum(axis=1)
    assert lengths[0] == 128 and lengths[-1] == 32 and np.all(np.diff(lengths) < 0)
    assert np.all((ids == 0) == (mask == 0)) and ids.max() < 1000
    assert be.make_inputs(1, 128, 1000)["attention_mask"].all()


def test_onnxruntime_optimizer_fuses_the_exported_graph(ort_peers):
    # The reason for the exporter's settings: without these fusions onnxruntime is not at its best.
    assert ort_peers.fused.get("Attention") == TINY["num_hidden_layers"]
    assert ort_peers.fused.get("SkipLayerNormalization", 0) >= TINY["num_hidden_layers"]


def test_every_engine_gives_the_torch_output(tiny_model, ort_peers, monkeypatch):
    exported: list = []
    fake = _fake_engine(exported)
    # both ways in: the import system (a fresh import) and the package's attribute (once the real
    # engine was imported by another test, `from edgecompress import engine` reads the attribute)
    monkeypatch.setitem(sys.modules, "edgecompress.engine", fake)
    monkeypatch.setattr(ec, "engine", fake, raising=False)
    notes: list[str] = []
    feed = be.make_inputs(3, 16, TINY["vocab_size"], seed=1)
    programs = be.export_ours(tiny_model, feed, notes)
    assert exported == list(be.OURS.values())
    assert sorted(programs) == ["ours float32", "ours int8", "ours sparse-75+int8"]
    assert len(notes) == 1 and "ours int4-g32" in notes[0] and "not supported yet" in notes[0]
    cands = be.engines(tiny_model, be.torch_int8(tiny_model), programs, ort_peers.candidates(1), feed)
    assert set(cands) == {be.FP32, be.TORCH_INT8, *be.ORT_FP32, *be.ORT_INT8, *programs}
    with torch.inference_mode():
        errs = be.errors(cands, feed["attention_mask"])
        times = be._median_rounds(cands, 1)
    for label in (*be.ORT_FP32, "ours float32"):
        assert errs[label] < 1e-5, label
    for label in (be.TORCH_INT8, *be.ORT_INT8):
        assert 0 < errs[label] < 0.1, label
    assert set(times) == set(cands) and all(t > 0 for t in times.values())


def test_error_ignores_padded_positions():
    ref = np.ones((2, 4, 3), np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    y = ref.copy()
    y[1, 3] = 100.0  # a padded position
    y[0, 0, 0] = 1.5
    assert be.rel_error(y, ref, mask) == pytest.approx(0.5)


def test_ort_profile_sums_kernel_times_by_op_type(ort_peers, tmp_path):
    feed = be.make_inputs(1, 16, TINY["vocab_size"])
    by_op = be.ort_profile(ort_peers, be.ORT_INT8[1], feed, 3, str(tmp_path))
    assert "QAttention" in by_op or "Attention" in by_op, sorted(by_op)
    assert all(v > 0 for v in by_op.values()) and sum(by_op.values()) < 1.0


def test_ours_profile_reads_the_ops_table(tiny_model):
    prog = _FakeProgram(tiny_model)
    feed = be.make_inputs(1, 16, TINY["vocab_size"])
    assert be.ours_profile(prog, feed, 2) == pytest.approx({"linear": 2e-4, "attention": 1e-4})


def test_python_overhead_times_a_call_and_its_native_run(tiny_model):
    from edgecompress import engine

    feed = be.make_inputs(1, 16, TINY["vocab_size"])
    prog = engine.export(tiny_model, feed)
    call, native = be.python_overhead(prog, 1)
    assert 0 < native < call < 0.05  # the call holds the native run, and Python's part is small


def test_targets_met_not_met_and_not_measured():
    figs = {"ours int8": 0.010, be.ORT_INT8[0]: 0.030, be.ORT_INT8[1]: 0.019, be.FP32: 0.049,
            "ours float32": 0.02, be.ORT_FP32[0]: 0.03}
    rows = be.target_rows({("minilm", 1, 1): figs}, (40e-6, 5e-6))
    by_text = {r.split(" | ")[0][2:]: r for r in rows}
    row = by_text["minilm, batch 1, seq 128, 1 thread: int8 >= 2.0x the faster onnxruntime dynamic int8"]
    assert "1.90x (onnxruntime dynamic int8 (optimized graph))" in row and row.endswith("| NOT met |")
    assert by_text["minilm, batch 1, seq 128, 1 thread: int8 >= 5.0x torch fp32"].endswith("| NOT met |")
    assert by_text["minilm, batch 1, seq 128, 1 thread: float32 program >= 1.2x the faster onnxruntime fp32"].endswith(
        "1.50x (onnxruntime fp32 (plain graph)) | met |")
    assert by_text["bert-base, batch 8, seq 128, 2 threads: int8 >= 1.3x the faster onnxruntime dynamic int8"].endswith(
        "| | not measured |")
    assert rows[-2].endswith("35.0 us (40.0 - 5.0) | NOT met |")
    assert rows[-1].endswith("| | not measured |")  # the load-memory row, without a measurement
    assert len(rows) == 22
    memory_row = be.target_rows({}, None, (130 * 2**20, 2 * 2**20, 100 * 2**20))[-1]
    assert memory_row.endswith("1.28x (130.0 MiB peak, 2.0 MiB activations, 100.0 MiB file) | met |")
    assert be.target_rows({}, None, (140 * 2**20, 2 * 2**20, 100 * 2**20))[-1].endswith("| NOT met |")
    assert be.target_rows({}, None)[-1].endswith("| | not measured |")
