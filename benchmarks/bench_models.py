"""Whole-model benchmark: writes benchmarks/results/<cpu>-models.md.

    python benchmarks/bench_models.py                      # BERT-base encoder and ResNet-18, batch 1 and 8
    python benchmarks/bench_models.py --quick              # smoke run: small models, one recipe
    python benchmarks/bench_models.py --models bert --recipes int8 --batches 1 --threads 1

A BERT-base-sized encoder (transformers' BertModel with its default config and random weights,
sequence 128) and a ResNet-18-sized CNN (random weights, 224 x 224), each run as torch fp32, after
``edgecompress.compress`` with each recipe, as torch's dynamic int8 (quantize_dynamic on the Linear
layers), and in onnxruntime (the torch model exported to ONNX, fp32 and quantize_dynamic int8), on
the same inputs in one run: interleaved rounds, median. The relative output error against torch
fp32 is listed next to each time. Needs torch, transformers, onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import warnings
from typing import Any, Callable

import torch
from torch import nn

import edgecompress as ec
from edgecompress import _core
from edgecompress.bench import _command_line, blas_threads, cpu_slug, write_report
from edgecompress.timing import interleaved_rounds, settle_pause

RECIPES = ["int8", "int8-static", "int4-g32", "nf4", "sparse-50", "2:4", "lowrank-0.5", "sparse-75+int8"]
FP32 = "torch fp32"
TORCH_INT8 = "torch dynamic int8"
ORT_FP32 = "onnxruntime fp32"
ORT_INT8 = "onnxruntime dynamic int8"


class Encoder(nn.Module):
    """transformers' BertModel (no pooler) called with input ids only, returning the hidden states."""

    def __init__(self, layers: int = 12) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(num_hidden_layers=layers), add_pooling_layer=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids).last_hidden_state


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """The ResNet-18 layer shapes (4 stages of 2 basic blocks, 64-512 channels), 1000 classes."""

    def __init__(self, width: int = 64, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def build(name: str, quick: bool) -> tuple[nn.Module, Callable[[int], torch.Tensor]]:
    torch.manual_seed(0)
    if name == "bert":
        model = Encoder(layers=2 if quick else 12)
        return model.eval(), lambda b: torch.randint(0, 30522, (b, 128), generator=torch.Generator().manual_seed(b))
    model = ResNet18(width=16 if quick else 64)
    side = 64 if quick else 224
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), lambda b: torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(b))


def _onnx(model: nn.Module, x: torch.Tensor, threads: int, tmp: str) -> dict[str, Callable[[], Any]]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}
    path = os.path.join(tmp, f"{type(model).__name__}-{x.shape[0]}.onnx")
    qpath = path.replace(".onnx", ".int8.onnx")
    if not os.path.exists(qpath):  # exported once per model and batch, sessions made per thread count
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
        quantize_dynamic(path, qpath, weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    feed = {"x": x.numpy()}
    out = {}
    for label, p in ((ORT_FP32, path), (ORT_INT8, qpath)):
        s = ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
        out[label] = lambda s=s: torch.from_numpy(s.run(None, feed)[0])
    return out


def _median_rounds(cands: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    # Each turn: a pause (other thread pools go idle; the row's thread count is set for every engine),
    # once untimed (the previous candidate's memory -- freed buffers, caches -- is not this one's), then
    # the timed call.
    pause = settle_pause(ec.get_num_threads())
    times = interleaved_rounds(cands, rounds, pause=pause, before=lambda k: cands[k]())
    return {k: statistics.median(v) for k, v in times.items()}


def _int8_bound(report: Any, model_s: float, peer_s: float, peer_name: str) -> list[str]:
    """Rows that bound the int8 model's speed: its int8 products at the measured vpdpbusd (or, on
    other CPUs, the fastest integer dot-product) peak plus the rest of the model as measured (the
    model's time less its int8 layers' times from the report, timed at compress time on the same
    shapes). The rest runs in torch fp32 (attention, GELU, LayerNorm) whatever the recipe."""
    probes = [p["name"] for p in _core.peak_probes() if p["runs_here"] and ("dp" in p["name"] or "dot" in p["name"])]
    if not probes:
        return []
    peak_name, peak = max(((n, _core.peak_ops(n, 0.3)) for n in probes), key=lambda kv: kv[1])
    rows = [r for r in report.to_dict()["layers"] if r.get("format") == "int8" and r.get("latency_after_s")]
    ops = sum(2 * r["rows"] * (r["bytes_before"] // 4) for r in rows)  # 2 x rows x (in x out)
    layers_s = sum(r["latency_after_s"] for r in rows)
    rest_s = max(0.0, model_s - layers_s)
    floor_s = ops / peak + rest_s
    return [f"| bound: int8 products at the {peak_name} peak ({peak / 1e9:.0f} GOPS; ours run at "
            f"{ops / layers_s / 1e9:.0f}) + the rest as measured ({rest_s * 1e3:.1f} ms) = {floor_s * 1e3:.1f} ms | "
            f"at most {peer_s / floor_s:.2f}x {peer_name} | |"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert,resnet18", help="comma-separated: bert, resnet18")
    p.add_argument("--recipes", default=None, help=f"comma-separated (default: {','.join(RECIPES)})")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small models, one recipe, batch 1, one thread")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    all_threads = _core.default_num_threads()
    recipes = args.recipes.split(",") if args.recipes else (["int8"] if args.quick else RECIPES)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    threads = [1] if args.quick else ([int(t) for t in args.threads.split(",")] if args.threads else sorted({1, all_threads}))
    rounds = 2 if args.quick else args.rounds
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-models.md")

    out: list[str] = []
    emit = out.append
    emit(f"# edgecompress whole-model benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- torch {torch.__version__}; models compressed (and speed-guarded) at 1 thread; method: interleaved "
         f"rounds (a call, then the timed call), median of {rounds}, warm; error = "
         "||y - y_fp32|| / ||y_fp32|| on the benchmark input")
    emit("")
    targets: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, make_input = build(name, args.quick)
            calib = [make_input(2)]
            compressed: dict[str, tuple[nn.Module, Any]] = {}
            # The guard times layers at the thread count in force: that of the targets (one thread).
            torch.set_num_threads(1)
            ec.set_num_threads(1)
            for recipe in recipes:
                m = copy.deepcopy(model)
                report = ec.compress(m, recipe, calibration_data=calib, example_inputs=(make_input(batches[0]),),
                                     progress=False)
                compressed[recipe] = (m, report)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
            emit(f"## {name}\n")
            emit("| recipe | layers swapped | left dense by the guard | weight bytes of swapped layers (after / before) |")
            emit("|---|---|---|---|")
            for recipe, (_, report) in compressed.items():
                d = report.to_dict()
                rows = d["layers"]
                swapped = [r for r in rows if r.get("format") not in (None, "dense")]
                before = sum(r.get("bytes_before", 0) for r in swapped)
                after = sum(r.get("bytes_after", 0) for r in swapped)
                emit(f"| {recipe} | {len(swapped)} | {len(rows) - len(swapped)} | "
                     f"{after / max(before, 1):.3f} ({after / 2**20:.1f} / {before / 2**20:.1f} MiB) |")
            emit("")
            for b in batches:
                x = make_input(b)
                for t in threads:
                    torch.set_num_threads(t)
                    ec.set_num_threads(t)
                    cands: dict[str, Callable[[], Any]] = {FP32: lambda: model(x), TORCH_INT8: lambda: torch_int8(x)}
                    for recipe, (m, _) in compressed.items():
                        cands[f"edgecompress {recipe}"] = lambda m=m: m(x)
                    cands.update(_onnx(model, x, t, tmp))
                    with torch.inference_mode(), blas_threads(t):
                        ref = model(x)
                        errs = {k: float((fn() - ref).norm() / ref.norm()) for k, fn in cands.items()}
                        res = _median_rounds(cands, rounds)
                    emit(f"### {name}, batch {b}, {t} thread{'s' if t > 1 else ''}\n")
                    emit("| implementation | ms | vs torch fp32 | rel. error |")
                    emit("|---|---|---|---|")
                    for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                        emit(f"| {c} | {sec * 1e3:.1f} | {res[FP32] / sec:.2f}x | {errs[c]:.2e} |")
                    emit("")
                    if name == "bert" and b == 1 and t == 1 and "edgecompress int8" in res:
                        ours = res["edgecompress int8"]
                        peer_name = min((k for k in (TORCH_INT8, ORT_INT8) if k in res), key=res.__getitem__)
                        r_fp32, r_peer = res[FP32] / ours, res[peer_name] / ours
                        targets.append(f"| BERT-base batch 1, seq 128: int8 >= 2.5x torch fp32 | {r_fp32:.2f}x | "
                                       f"{'met' if r_fp32 >= 2.5 else 'NOT met'} |")
                        targets.append(f"| ... and >= 1.3x the faster dynamic int8 peer ({peer_name}) | {r_peer:.2f}x | "
                                       f"{'met' if r_peer >= 1.3 else 'NOT met'} |")
                        targets.extend(_int8_bound(compressed["int8"][1], ours, res[peer_name], peer_name))
    emit("## Targets (one thread, this run)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    out.extend(targets)
    emit("")
    write_report(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
