from __future__ import annotations

import copy
import re

import pytest

torch = pytest.importorskip("torch")

import edgecompress as ec  # noqa: E402
from edgecompress.cli import main  # noqa: E402


@pytest.mark.parametrize("command", [[], ["bench"], ["demo"], ["demo", "digits"], ["report"], ["generate"], ["chat"],
                                     ["perplexity"]])
def test_help_works_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: edgecompress")
    if command == ["demo", "digits"]:
        assert "--recipes" in out and "--quick" in out and "--threads" in out and "--plot" in out
    if command == ["demo"]:
        assert "--weights" in out and "--quick" in out and "--model" in out and "digits" in out


def test_demo_quick_prints_the_table(capsys, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    plot = tmp_path / "demo.png"
    assert main(["demo", "digits", "--quick", "--recipes", "int8,sparse-75+int8", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    for word in ("accuracy %", "output err", "weights KB", "batch 1 ms", "batch 64 ms", "vs fp32 b1",
                 "vs torch int8 b64"):
        assert word in lines[header]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 2:header + 8]]
    assert [r[0] for r in rows] == ["torch fp32", "torch dynamic int8", "engine float32", "engine int8",
                                    "engine sparse-75+int8", "engine sparse-75+int8 (gradual, fine-tuned)"]
    # the engine's float32 program computes what torch does; its int8 program holds a quarter of the bytes
    assert rows[2][2] == rows[0][2] and float(rows[2][3]) < 1e-4
    int8 = rows[3]
    assert int8[1] == "4/4" and 80 < float(int8[2]) <= 100 and float(int8[3]) < 0.1 and int8[5] == "25.2%"
    # one-shot 75% pruning wrecks this model: the table flags its whole-model error instead of hiding it,
    # and the same sparsity reached gradually while fine-tuning recovers most of the accuracy
    assert rows[4][3].endswith("!") and float(rows[4][2]) < 60
    assert float(rows[5][2]) > float(rows[4][2]) + 20 and rows[5][5] == rows[4][5]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out and not plot.exists()
    else:
        assert f"plot written to {plot}" in out and plot.read_bytes()[:4] == b"\x89PNG"


def test_demo_refuses_an_unknown_recipe(capsys):
    assert main(["demo", "digits", "--quick", "--recipes", "int8,int7", "--plot", ""]) == 2
    assert "--recipes: unknown recipe 'int7'" in capsys.readouterr().err


def test_report_prints_the_layers_and_the_stored_compress_report(trained_cnn, digits_data, tmp_path, capsys):
    model = copy.deepcopy(trained_cnn)
    report = ec.compress(model, "int8", example_inputs=digits_data.x_test[:4], overrides={"fc1": "nf4"},
                         exclude=["conv1"], guard=False, progress=False)
    path = tmp_path / "m.safetensors"
    ec.save(model, path, recipe={"default": "int8"}, report=report)
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    fc1 = next(line for line in lines if line.startswith("fc1 "))
    assert "Int4Linear" in fc1 and "int4 g32" in fc1 and str(model.fc1.nbytes) in fc1
    conv2 = next(line for line in lines if line.startswith("conv2 "))
    assert "Int8Conv2d" in conv2 and "int8 channel" in conv2 and str(model.conv2.nbytes) in conv2
    assert "3 compressed modules" in out and "recipe: {'default': 'int8'}" in out
    assert str(report) in out  # the stored compress report, as printed at compress time


def test_report_of_a_file_without_a_stored_report_and_of_a_missing_file(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Linear(32, 8))
    ec.compress(model, "int8", guard=False, progress=False)
    path = tmp_path / "m.safetensors"
    ec.save(model, path)
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Int8Linear" in out and "edgecompress.compress: recipe" not in out
    assert main(["report", str(tmp_path / "missing.safetensors")]) == 1
    assert "no file at" in capsys.readouterr().err


@pytest.mark.parametrize("change", [
    lambda m: m["modules"]["0"].update(weights=[1]),
    lambda m: m["modules"]["0"].update(config=[1]),
    lambda m: m["modules"]["0"].update(module=["Int8Linear"]),
    lambda m: m["modules"]["0"]["weights"][0].update(format="lowrank", dtypes=[1]),
    lambda m: m.update(report={"layers": [{"name": "0", "bytes_before": "x", "error": "y"}]}),
    lambda m: m.update(modules={"0": {}}),
    lambda m: m.update(version=True),
])
def test_report_of_a_crafted_manifest_is_a_one_line_error(tmp_path, capsys, change):
    import json

    from safetensors.torch import load_file, save_file

    model = torch.nn.Sequential(torch.nn.Linear(32, 8))
    ec.compress(model, "int8", guard=False, progress=False)
    path = tmp_path / "m.safetensors"
    ec.save(model, path)
    manifest = ec.serialization.read_manifest(path)
    change(manifest)
    save_file(load_file(str(path)), str(path), metadata={"edgecompress": json.dumps(manifest)})
    assert main(["report", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("edgecompress report: ") and err.count("\n") == 1, err
