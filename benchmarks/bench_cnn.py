"""Convolutional networks on the engine next to their peers: writes benchmarks/results/<cpu>-cnn.md.

    python benchmarks/bench_cnn.py                       # ResNet-18, MobileNetV3-Small, EfficientNet-B0; batch 1, 8; 1, 2 threads
    python benchmarks/bench_cnn.py --quick               # smoke run: MobileNetV3-Small, batch 1, 1 thread, 2 rounds
    python benchmarks/bench_cnn.py --models resnet18 --batches 1 --threads 1

Models: edgecompress.engine.zoo's torch.nn builds of the architectures (random weights, BatchNorm
statistics randomized), input 224 x 224, random images. Each configuration (model, batch, threads)
times every engine in one loop of interleaved rounds (a pause, an untimed call, the timed call;
median over rounds; a target's ratio is the median of the rounds' own ratios). The pause is
``edgecompress.timing.settle_pause``: with 2 or more threads long enough for onnxruntime's spinning
workers to go idle (on a 2-core machine they took a core from whichever engine ran next, onnxruntime's
own int8 session included, run right after its float32 one):

- ours: ``edgecompress.engine.export(model, x, recipe)`` for float32, int8 (dynamic per-row input
  scales), int8-static (per-layer input scales calibrated on CALIB random batches) and
  sparse-75+int8 (one-shot magnitude pruning: on random weights its accuracy means nothing; it is
  timed for speed); each compressed program keeps float32 the products the engine times slower
  compressed than in float32 on one image (export's default ``faster=True``);
- torch fp32 (eager, inference_mode) and torch int8 (FX graph mode post-training quantization with
  the "x86" backend's default qconfig, calibrated on the same batches);
- onnxruntime fp32 and static int8 (``quantize_static``, QDQ, per-channel int8 weights, uint8
  activations, MinMax calibration on the same batches), graph exported from torch (opset 17),
  optimizations ALL, intra-op threads = the row's threads;
- OpenVINO fp32 and int8 when installed: the same two ONNX graphs compiled for the CPU (the QDQ graph
  runs as int8), INFERENCE_NUM_THREADS = the row's threads, f32 precision hint for fp32.

Error column: |y - y_torch_fp32| / |y_torch_fp32| (norms over the batch's logits). GOPS counts 2 x the
multiply-adds of the convolutions and linear layers; "% of limit" divides by the peak of the
arithmetic the engine's products use (int8: the gemm_s8 kernel's instruction; fp32: FMA), measured
by edgecompress's peak probes in this run, times the threads. Our float32 3x3 convolutions of stride
1 run as Winograd F(4x4, 3x3) or F(2x2, 3x3), 4 or 2.25 times fewer multiply-adds than counted: there
the GOPS (and % of limit) are those of a direct convolution of the same speed, and may pass 100%.

Per-op profile (batch 1, 1 thread): ``program.profile`` of our float32 and int8-static programs by op
(alternating, each node's median), and every compressed product of the int8-static program slower
than the same node of the float32 program (the median of the alternations' own ratios).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import warnings
from typing import Any, Callable

import numpy as np
import torch

import edgecompress as ec
from edgecompress import _core
from edgecompress.bench import _command_line, cpu_slug, fp32_probe, int8_probe_for, write_report
from edgecompress.compress import CompressionWarning
from edgecompress.engine import export, zoo
from edgecompress.runtime import LADDER
from edgecompress.timing import interleaved_rounds, settle_pause

MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
RECIPES = ("float32", "int8", "int8-static", "sparse-75+int8")
CALIB = 4  # calibration batches (of 4 images) for every static int8 engine
FP32, TQ, ORT32, ORT8, OV32, OV8 = "torch fp32", "torch int8", "onnxruntime fp32", "onnxruntime int8", "openvino fp32", "openvino int8"


def ours(recipe: str) -> str:
    return f"ours {recipe}"


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32))


def calibration() -> list[torch.Tensor]:
    return [images(4, 100 + i) for i in range(CALIB)]


def conv_macs(model: Any, x: torch.Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers for input x."""
    total = 0

    def hook(m: Any, inp: Any, out: Any) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model(x)
    for h in hs:
        h.remove()
    return total


def torch_int8(model: Any, calib: list[torch.Tensor]) -> Any:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.inference_mode():
            for x in calib:
                prepared(x)
        return convert_fx(prepared)


class Onnx:
    """The model's ONNX graph and its static int8 QDQ form, once per model; sessions per thread count."""

    def __init__(self, model: Any, calib: list[torch.Tensor], tmp: str, name: str, notes: list[str]) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.path = os.path.join(tmp, f"{name}.onnx")
        pre = os.path.join(tmp, f"{name}.pre.onnx")
        self.qpath = os.path.join(tmp, f"{name}.int8.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (calib[0][:1],), self.path, dynamo=False, input_names=["x"], output_names=["y"],
                              opset_version=17, dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
            quant_pre_process(self.path, pre)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{"x": x.numpy()} for x in calib])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.it, None)

        quantize_static(pre, self.qpath, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        notes.append(f"- {name}: onnxruntime static int8 = quantize_static(QDQ, per-channel QInt8 weights, QUInt8 "
                     "activations, MinMax) after quant_pre_process")

    def runners(self, threads: int, x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        out: dict[str, Callable[[], np.ndarray]] = {}
        for label, p in ((ORT32, self.path), (ORT8, self.qpath)):
            s = ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
            out[label] = lambda s=s: s.run(None, {"x": x})[0]
        try:
            import openvino as ov
        except ImportError:
            return out
        core = ov.Core()
        for label, p, hint in ((OV32, self.path, {"INFERENCE_PRECISION_HINT": "f32"}), (OV8, self.qpath, {})):
            compiled = core.compile_model(p, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, **hint})
            req = compiled.create_infer_request()
            out[label] = lambda req=req: next(iter(req.infer({0: x}).values()))
        return out


@contextlib.contextmanager
def thread_count(n: int) -> Any:
    before_t, before_e = torch.get_num_threads(), ec.get_num_threads()
    torch.set_num_threads(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ec.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before_t)
        ec.set_num_threads(before_e)


def limits(seconds: float) -> tuple[dict[str, float], str]:
    tiers = [t for t in LADDER[1:] if _core.tier_support(t)[0]]
    running = {p["name"] for p in _core.peak_probes() if p["runs_here"]}
    peaks, parts = {}, []
    for kind, probe in (("int8", int8_probe_for(tiers[-1]) if tiers else None), ("fp32", fp32_probe())):
        if probe in running:
            peaks[kind] = _core.peak_ops(probe, seconds)
            parts.append(f"{kind} {probe} {peaks[kind] / 1e9:.1f} G{'OPS' if kind == 'int8' else 'FLOPS'}")
    return peaks, "- limits measured in this run (one core, warm): " + "; ".join(parts)


def median_profile(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One profile from several of the same program: each node's median time, each op's sum of its
    nodes' medians, the median native total."""
    nodes = [(n, op, float(np.median([r["nodes"][i][2] for r in runs]))) for i, (n, op, _) in enumerate(runs[0]["nodes"])]
    ops: dict[str, float] = {}
    for _, op, t in nodes:
        ops[op] = ops.get(op, 0.0) + t
    return {"nodes": nodes, "ops": ops, "native": float(np.median([r["native"] for r in runs]))}


def profile_rows(name: str, progs: dict[str, Any], x: np.ndarray, turns: int = 7) -> list[str]:
    # the two programs' profiles alternate (`turns` of 2 runs each), so that a change of the machine's
    # speed between them does not show as layers slower in one program (it did: 26 of EfficientNet's)
    recipes = ("float32", "int8-static")
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in recipes}
    with thread_count(1):
        for _ in range(turns):
            for r in recipes:
                runs[r].append(progs[r].profile(x, rounds=2))
    prof = {r: median_profile(runs[r]) for r in recipes}
    lines = ["", f"#### {name}, batch 1, 1 thread: ms per op", "", "| op | ours float32 | ours int8-static |", "|---|---|---|"]
    for op in sorted(set(prof["float32"]["ops"]) | set(prof["int8-static"]["ops"]),
                     key=lambda o: -prof["float32"]["ops"].get(o, 0.0)):
        lines.append(f"| {op} | {prof['float32']['ops'].get(op, 0.0) * 1e3:.3f} | "
                     f"{prof['int8-static']['ops'].get(op, 0.0) * 1e3:.3f} |")
    lines.append(f"| total (native) | {prof['float32']['native'] * 1e3:.3f} | {prof['int8-static']['native'] * 1e3:.3f} |")
    lines += slower_products(progs["int8-static"], runs)
    return lines


PRODUCT_OPS = ("conv2d", "linear", "winograd", "winograd_s8")


def slower_products(compressed: Any, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The compressed products of the int8-static program slower than the same layer of the float32
    program. A layer is the program node its native nodes are named after (a 3x3 convolution runs as
    "<layer>/winograd" in float32 and "<layer>/winograd_s8" in int8); its ratio is the median of the
    turns' own ratios (a slower spell of the machine slows both programs of a turn alike). The products
    export put back to float32 (keep_faster) run the same float32 code in both programs and are listed
    apart: comparing them would only measure the machine's noise (0.164 -> 0.189 ms for one of
    ResNet-18's)."""
    kept = set(compressed.info.get("float32_products") or ())

    def by_layer(run: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, op, t in run["nodes"]:
            if op in PRODUCT_OPS:
                layer = n.split("/")[0]
                out[layer] = out.get(layer, 0.0) + t
        return out

    ratios: dict[str, list[float]] = {}
    f32_times: dict[str, list[float]] = {}
    for a, b in zip(runs["float32"], runs["int8-static"]):
        f32, q = by_layer(a), by_layer(b)
        for layer, t in q.items():
            if layer not in kept and f32.get(layer, 0.0) > 0.0:
                ratios.setdefault(layer, []).append(t / f32[layer])
                f32_times.setdefault(layer, []).append(f32[layer])
    slower = []
    for layer, r in ratios.items():
        ratio, base = float(np.median(r)), float(np.median(f32_times[layer]))
        if ratio > 1.05 and base * (ratio - 1) > 2e-5:
            slower.append((layer, ratio, base))
    lines = [""]
    if slower:
        lines.append("Compressed products slower than in the float32 program (> 5% and > 0.02 ms, median of the "
                     "turns' ratios): " + ", ".join(f"{n} {a * 1e3:.3f} ms x {r:.2f}" for n, r, a in slower))
    else:
        lines.append(f"No compressed product of the int8-static program is slower than in the float32 program "
                     f"(> 5% and > 0.02 ms, median of the turns' ratios; {len(ratios)} products compared).")
    if kept:
        lines.append(f"Kept float32 by export (timed not faster compressed): {', '.join(sorted(kept))}.")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", default=None, help="default: benchmarks/results/<cpu>-cnn.md (none with --quick)")
    args = p.parse_args()
    models = ["mobilenet_v3_small"] if args.quick else args.models.split(",")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    rounds = 2 if args.quick else args.rounds
    for m in models:
        if m not in zoo.MODELS:
            p.error(f"--models: unknown {m!r}")
    peaks, limit_line = limits(0.1 if args.quick else 0.3)
    notes: list[str] = []
    calib = calibration()
    rows, targets, profiles = [], [], []
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    samples: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model = zoo.build(name)
            progs: dict[str, Any] = {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CompressionWarning)  # sparse-75 of random weights
                for r in RECIPES:
                    progs[r] = export(model, calib[0][:1], None if r == "float32" else r,
                                      calibration_data=calib if r == "int8-static" else None)
            try:
                tq = torch_int8(model, calib)
            except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                tq = None
                notes.append(f"- {name}: torch int8 unavailable: {type(e).__name__}: {e}")
            try:
                onnx = Onnx(model, calib, tmp, name, notes)
            except Exception as e:  # noqa: BLE001
                onnx = None
                notes.append(f"- {name}: onnxruntime / OpenVINO unavailable: {type(e).__name__}: {e}")
            for b in batches:
                x = images(b, 7)
                xn = x.numpy()
                macs = conv_macs(model, x)
                with torch.inference_mode():
                    ref = model(x).numpy()
                for t in threads:
                    with thread_count(t):
                        cands: dict[str, Callable[[], Any]] = {ours(r): (lambda pr=progs[r]: pr(xn)) for r in RECIPES}

                        def run_torch(mod: Any) -> Callable[[], Any]:
                            def f() -> Any:
                                with torch.inference_mode():
                                    return mod(x).numpy()
                            return f

                        cands[FP32] = run_torch(model)
                        if tq is not None:
                            cands[TQ] = run_torch(tq)
                        if onnx is not None:
                            cands.update(onnx.runners(t, xn))
                        errs = {k: float(np.linalg.norm(np.asarray(f()) - ref) / np.linalg.norm(ref)) for k, f in cands.items()}
                        times = interleaved_rounds(cands, rounds, pause=settle_pause(t), before=lambda k: cands[k]())
                        med = {k: statistics.median(v) for k, v in times.items()}
                    results[(name, b, t)] = med
                    samples[(name, b, t)] = times
                    for k in cands:
                        kind = "int8" if "int8" in k else "fp32"
                        limit = peaks.get(kind, 0.0) * t
                        gops = 2 * macs / med[k] / 1e9
                        pct = f"{100 * gops * 1e9 / limit:.0f}%" if k.startswith("ours") and limit else ""
                        rows.append(f"| {name} | {b} | {t} | {k} | {med[k] * 1e3:.2f} | {med[FP32] / med[k]:.2f}x | "
                                    f"{gops:.1f} | {pct} | {errs[k]:.2%} |")
                    print(f"{name} b{b} t{t}: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in med.items()), flush=True)
            profiles += profile_rows(name, progs, images(1, 7).numpy())

    def ratio(key: tuple[str, int, int], a: str, bname: str) -> str:
        # the median of the rounds' own ratios: a slower phase of a shared machine that spans a round
        # slows both sides of its ratio alike
        m = samples.get(key, {})
        if a not in m or bname not in m:
            return "n/a"
        return f"{statistics.median(pb / pa for pa, pb in zip(m[a], m[bname])):.2f}x"

    for (name, b, t) in results:
        if b != 1:
            continue
        key = (name, b, t)
        if name == "resnet18":
            targets.append(f"| int8-static >= 1.5x onnxruntime static int8, {name} b1 t{t} | {ratio(key, ours('int8-static'), ORT8)} |")
            targets.append(f"| int8-static >= 3x torch fp32, {name} b1 t{t} | {ratio(key, ours('int8-static'), FP32)} |")
        else:
            targets.append(f"| int8-static >= 1.3x onnxruntime static int8, {name} b1 t{t} | {ratio(key, ours('int8-static'), ORT8)} |")
        targets.append(f"| float32 >= 1.1x onnxruntime fp32, {name} b1 t{t} | {ratio(key, ours('float32'), ORT32)} |")
    cpu = ec.cpu_info()
    lines = [f"# CNNs on the engine: {cpu.get('model', cpu_slug())}", "",
             f"- {datetime.date.today()}, `{_command_line()}`",
             f"- CPU tiers: {', '.join(t for t in LADDER if _core.tier_support(t)[0])}; engine kernels at the top tier",
             limit_line, f"- {rounds} interleaved rounds, median; a pause of {settle_pause(1)} s (1 thread) or "
             f"{settle_pause(2)} s (2 and more) before each engine's turn; input 224 x 224", "",
             "## Targets (batch 1; ratio = peer time / our time, the median of the rounds' ratios)", "", "| target | measured |", "|---|---|", *targets, "",
             "## All engines", "", "| model | batch | threads | engine | ms | vs torch fp32 | GOPS | % of limit | error |",
             "|---|---|---|---|---|---|---|---|---|", *rows, "", "## Per-op profiles", *profiles, "", "## Notes", "", *notes]
    out = args.output or (None if args.quick else str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-cnn.md"))
    write_report(lines, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
