"""Whole-encoder benchmark of the inference engine next to its peers: writes benchmarks/results/<cpu>-engine.md.

    python benchmarks/bench_engine.py                    # MiniLM- and BERT-base-sized, batch 1 and 8, 1 and 2 threads
    python benchmarks/bench_engine.py --quick            # smoke run: MiniLM-sized, batch 1, 1 thread, 2 rounds
    python benchmarks/bench_engine.py --models minilm --batches 1 --threads 1,2

Encoders: transformers' BertModel (no pooler) built from a config with seeded random weights (nothing
is downloaded), sequence 128. Batch 1 is one full row; batch 8 has row lengths from 128 down to 32
(the first row full), the rest padding that the attention mask hides. Each configuration (model, batch,
threads) times every engine in one loop of interleaved rounds (a pause, an untimed call, the timed
call; median over rounds):

- ours: ``edgecompress.engine.export(model, inputs, recipe=r)`` for r in float32, int8, sparse-75+int8
  and int4-g32, called as ``program(input_ids, attention_mask)``; skipped, with the reason printed,
  when ``edgecompress.engine`` cannot be imported;
- torch fp32 (eager, inference_mode) and torch dynamic int8 (``quantize_dynamic`` on nn.Linear);
- onnxruntime fp32 and dynamic int8 (``quantize_dynamic``, QInt8 weights), each on the graph exported
  from torch ("plain") and on the graph from onnxruntime's transformer optimizer (model_type "bert"),
  as its documentation recommends before quantizing ("optimized"). The targets use the faster of the
  two. Sessions: graph optimizations ALL, intra-op threads = the row's threads, inter-op 1.

The exporter: the legacy (TorchScript) one, with dynamic batch and sequence axes, opset 17, from a copy
of the model set to transformers' eager attention. Both exporters give correct graphs with
transformers 5 here, but only this graph is the one onnxruntime's BERT fusions recognise (embedding +
LayerNorm, Attention, SkipLayerNormalization, BiasGelu); in the dynamo exporter's graph (and in that of
the sdpa attention) the optimizer fuses no Attention, which would leave onnxruntime slower than it can
be. The fused operators are listed in the report's notes, so a graph that lost its fusions shows.

Error column: max |y - y_torch_fp32| / max |y_torch_fp32| over the unpadded tokens (the outputs at padded
positions are not defined, and an engine that skips them is not wrong). GOPS count 2 x the multiply-adds
of the linear layers and of attention at the rows' true lengths; "% of limit" divides by the peak of
the engine's arithmetic (int8 products or fp32 FMA, measured by edgecompress's peak probe in this run)
times the threads.

Per-op profiles (MiniLM-sized, batch 1, 1 thread): onnxruntime's own profiler (its per-node kernel
times summed by op type over the timed runs) for the faster onnxruntime dynamic int8 graph, and
``program.profile(...)`` for our int8 program. The Python overhead of a call is the time of a call on a
1-token input through the MiniLM-sized int8 program less the native time its profile reports.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import edgecompress as ec
from edgecompress import _core
from edgecompress.bench import FP32_PROBE, _command_line, cpu_slug, int8_probe_for, write_report
from edgecompress.runtime import LADDER
from edgecompress.timing import interleaved_rounds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import FP32, TORCH_INT8, _median_rounds  # noqa: E402

SEQ = 128
MODELS = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
# Our programs: label -> recipe of edgecompress.engine.export (None: float32).
OURS = {"ours float32": None, "ours int8": "int8", "ours sparse-75+int8": "sparse-75+int8",
        "ours int4-g32": "int4-g32"}
ORT_FP32 = ("onnxruntime fp32 (plain graph)", "onnxruntime fp32 (optimized graph)")
ORT_INT8 = ("onnxruntime dynamic int8 (plain graph)", "onnxruntime dynamic int8 (optimized graph)")
# Which peak bounds an engine: the int8 products or the fp32 FMA (others: no "% of limit").
INT8_ENGINES = ("ours int8", TORCH_INT8) + ORT_INT8
FP32_ENGINES = ("ours float32", FP32) + ORT_FP32


def build_model(config: dict[str, int], seed: int = 0) -> nn.Module:
    """A BertModel without pooler, random weights from `seed`, in eval mode."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(**config), add_pooling_layer=False).eval()


def make_inputs(batch: int, seq: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids and an attention mask: row lengths from `seq` (first row) down to seq // 4,
    ids 0 (BERT's padding id) after each row's length."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(seq, max(1, seq // 4), batch).round().astype(np.int64) if batch > 1 else np.array([seq])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab_size, (batch, seq), dtype=np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}


class LastHidden(nn.Module):
    """model(input_ids, attention_mask).last_hidden_state, the positional signature the exporter needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@contextlib.contextmanager
def _quiet() -> Any:
    """The peers as users build them: their deprecation warnings and log lines (the TorchScript
    exporter, torch.ao.quantization, onnxruntime's quantizer advice) are not this benchmark's news."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def torch_int8(model: nn.Module) -> nn.Module:
    with _quiet():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


class OrtPeers:
    """The onnxruntime graphs of one model, exported and quantized once; sessions made per thread count.

    `fused` lists the operators onnxruntime's optimizer fused (its own statistics), for the notes."""

    def __init__(self, model: nn.Module, tmp: str) -> None:
        from onnx import TensorProto
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = model.config
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")  # the attention graph the optimizer's fusions match
        wrapper = LastHidden(eager).eval()  # the exporter restores this mode afterwards, recursively
        # A padded example, so that no shortcut for an all-ones mask is traced into the graph.
        example = make_inputs(2, 16, cfg.vocab_size)
        plain = os.path.join(tmp, f"bert-{cfg.hidden_size}x{cfg.num_hidden_layers}.onnx")
        optimized = plain.replace(".onnx", ".opt.onnx")
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                "last_hidden_state": {0: "batch", 1: "seq"}}
        with _quiet():
            torch.onnx.export(wrapper, (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
                              plain, dynamo=False, opset_version=17, input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state"], dynamic_axes=axes)
            opt = optimize_model(plain, model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
            self.fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(optimized)
            self.paths = {ORT_FP32[0]: plain, ORT_FP32[1]: optimized}
            for label, src in zip(ORT_INT8, (plain, optimized)):
                self.paths[label] = src.replace(".onnx", ".int8.onnx")
                # Shape inference stops at the optimizer's com.microsoft ops (Attention): the quantizer
                # then needs to be told that the tensors it cannot type are float (its own advice).
                quantize_dynamic(src, self.paths[label], weight_type=QuantType.QInt8,
                                 extra_options={"DefaultTensorType": TensorProto.FLOAT})

    def session(self, label: str, threads: int, profile_prefix: str | None = None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if profile_prefix:
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        return ort.InferenceSession(self.paths[label], opts, providers=["CPUExecutionProvider"])

    def candidates(self, threads: int) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
        return {label: _ort_runner(self.session(label, threads)) for label in self.paths}


def _ort_runner(sess: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    names = [i.name for i in sess.get_inputs()]
    return lambda feed: sess.run(None, {k: feed[k] for k in names})[0]


def export_ours(model: nn.Module, example: dict[str, np.ndarray], notes: list[str]) -> dict[str, Any]:
    """Our programs, one per recipe; none (and a note) when the engine cannot be imported, and a note
    for a recipe the engine refuses."""
    try:
        import edgecompress.engine as engine
    except ImportError as e:
        msg = f"edgecompress.engine cannot be imported ({type(e).__name__}: {e}): no 'ours' rows"
        print(f"bench_engine: {msg}", file=sys.stderr)
        if msg not in notes:
            notes.append(msg)
        return {}
    programs = {}
    for label, recipe in OURS.items():
        try:
            programs[label] = engine.export(model, example, recipe=recipe)
        except Exception as e:  # an engine in development: report the recipe it refuses, run the rest
            notes.append(f"{label}: export failed ({type(e).__name__}: {e})")
    return programs


def engines(model: nn.Module, tq: nn.Module, programs: dict[str, Any],
            ort_cands: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]],
            feed: dict[str, np.ndarray]) -> dict[str, Callable[[], Any]]:
    """Every engine of one configuration as a call without arguments on `feed`, giving (B, S, H)."""
    ids, mask = torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])
    out: dict[str, Callable[[], Any]] = {
        FP32: lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state,
        TORCH_INT8: lambda: tq(input_ids=ids, attention_mask=mask).last_hidden_state,
    }
    for label, prog in programs.items():
        out[label] = lambda prog=prog: prog(feed["input_ids"], feed["attention_mask"])
    for label, run in ort_cands.items():
        out[label] = lambda run=run: run(feed)
    return out


def errors(cands: dict[str, Callable[[], Any]], mask: np.ndarray) -> dict[str, float]:
    """Each engine's error against torch fp32 (see rel_error); call under torch.inference_mode."""
    ref = np.asarray(cands[FP32]())
    return {k: rel_error(np.asarray(fn()), ref, mask) for k, fn in cands.items()}


def rel_error(y: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """max |y - ref| / max |ref| over the unpadded tokens."""
    keep = mask.astype(bool)
    return float(np.abs(np.asarray(y, np.float32)[keep] - ref[keep]).max() / np.abs(ref[keep]).max())


def useful_ops(config: dict[str, int], mask: np.ndarray) -> float:
    """2 x multiply-adds of the linear layers and attention (QK^T and PV) at the rows' true lengths."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    lengths = mask.sum(axis=1).astype(np.float64)
    per_layer = lengths.sum() * (4 * h * h + 2 * h * i) + 2 * (lengths**2).sum() * h
    return 2.0 * layers * per_layer


def int8_weight_bytes(config: dict[str, int]) -> int:
    """Bytes of the encoder's linear weights in int8: the working set an int8 call streams."""
    h, i = config["hidden_size"], config["intermediate_size"]
    return config["num_hidden_layers"] * (4 * h * h + 2 * h * i)


def ort_profile(peers: OrtPeers, label: str, feed: dict[str, np.ndarray], runs: int, tmp: str) -> dict[str, float]:
    """Seconds per run by op type from onnxruntime's profiler: its per-node kernel times, summed over
    `runs` timed runs after 2 warm-up runs (the events of the warm-up runs are left out)."""
    sess = peers.session(label, 1, profile_prefix=os.path.join(tmp, "ort-profile"))
    run = _ort_runner(sess)
    warmup = 2
    for _ in range(warmup + runs):
        run(feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) != warmup + runs:
        raise RuntimeError(f"onnxruntime profile: expected {warmup + runs} model_run events, found {len(starts)}")
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= starts[warmup]:
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] * 1e-6 / runs
    return by_op


def ours_profile(program: Any, feed: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    """Seconds per run by op type from program.profile() (its "ops" table), averaged over `runs`."""
    return dict(program.profile(feed["input_ids"], feed["attention_mask"], rounds=runs)["ops"])


def python_overhead(program: Any, runs: int) -> tuple[float, float]:
    """(seconds of a call, seconds of its native call alone) for a 1-token input: the program called as
    a user calls it, and the same plan's native run on the same arrays (the pybind11 boundary and the
    run, without the Python around it), in interleaved rounds, the minimum of each over `runs` rounds
    of 50 ms (the noise of a shared machine is larger than the difference; its least-disturbed samples
    are the ones to compare)."""
    ids, mask = np.array([[101]], np.int64), np.ones((1, 1), np.int64)
    program(ids, mask)
    arrays = program._arrays((ids, mask), {})
    plan = program._get_plan(arrays)
    outs = [np.empty(s, dtype=d) for s, d in plan.outputs]
    times = interleaved_rounds({"call": lambda: program(ids, mask),
                                "native": lambda: plan.native.run(arrays, outs, False)},
                               runs, min_seconds=0.05)
    return min(times["call"]), min(times["native"])


_MEMORY_PROBE = r"""
import sys, numpy as np
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
from edgecompress import engine
base = kb("VmRSS")
program = engine.load(sys.argv[1])
ids, mask = np.load(sys.argv[2])["ids"], np.load(sys.argv[2])["mask"]
y = program(ids, mask)
plan = next(iter(program._plans.values()))
print(kb("VmHWM") - base, plan.native.arena_bytes + y.nbytes)
"""


def load_memory(program: Any, feed: dict[str, np.ndarray], tmp: str) -> tuple[int, int, int] | None:
    """(peak memory of loading and running the saved program once on `feed`, over the process's memory
    before the load; its activations (arena and output); the file's size), measured in a fresh process
    (Linux /proc), or None where that cannot be read."""
    if not os.path.exists("/proc/self/status"):
        return None
    path, inputs = os.path.join(tmp, "program.safetensors"), os.path.join(tmp, "inputs.npz")
    program.save(path)
    np.savez(inputs, ids=feed["input_ids"], mask=feed["attention_mask"])
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, path, inputs], capture_output=True, text=True, check=True)
    peak, act = (int(v) for v in out.stdout.split())
    return peak, act, os.path.getsize(path)


def _best(figs: dict[str, float] | None, labels: tuple[str, ...]) -> tuple[str, float] | None:
    """The fastest of `labels` in `figs`, as (label, seconds)."""
    have = [(k, figs[k]) for k in labels if figs and k in figs]
    return min(have, key=lambda kv: kv[1]) if have else None


def _target(text: str, figs: dict[str, float] | None, ours: str, peers: tuple[str, ...], need: float) -> str:
    mine, peer = (figs or {}).get(ours), _best(figs, peers)
    if mine is None or peer is None:
        return f"| {text} | | not measured |"
    r = peer[1] / mine
    return f"| {text} | {r:.2f}x ({peer[0]}) | {'met' if r >= need else 'NOT met'} |"


def _where(model: str, batch: int, threads: int) -> str:
    return f"{model}, batch {batch}, seq {SEQ}, {threads} thread{'s' if threads > 1 else ''}"


def target_rows(results: dict[tuple[str, int, int], dict[str, float]],
                overhead: tuple[float, float] | None, memory: tuple[int, int, int] | None = None) -> list[str]:
    """The issue's targets from this run's medians, keyed (model, batch, threads) -> engine -> seconds.
    A target whose figures this run lacks is listed as not measured."""
    ort8 = "the faster onnxruntime dynamic int8"
    wanted = []  # (configuration, target, our engine, peers (the fastest counts), factor)
    for model, vs_ort, vs_fp32 in (("minilm", 2.0, 5.0), ("bert-base", 1.5, 4.0)):
        for t in (1, 2):
            wanted += [((model, 1, t), f"int8 >= {vs_ort}x {ort8}", "ours int8", ORT_INT8, vs_ort),
                       ((model, 1, t), f"int8 >= {vs_fp32}x torch fp32", "ours int8", (FP32,), vs_fp32)]
    wanted += [((m, 8, t), f"int8 >= 1.3x {ort8}", "ours int8", ORT_INT8, 1.3) for m in MODELS for t in (1, 2)]
    wanted += [((m, b, t), "float32 program >= 1.2x the faster onnxruntime fp32", "ours float32", ORT_FP32, 1.2)
               for m in MODELS for b in (1, 8) for t in (1, 2)]
    rows = [_target(f"{_where(*key)}: {what}", results.get(key), ours, peers, need)
            for key, what, ours, peers, need in wanted]
    text = ("Python overhead of a call (1 token through the 6-layer MiniLM-sized int8 program, less its native "
            "call) <= 30 us")
    if overhead is None:
        rows.append(f"| {text} | | not measured |")
    else:
        call, native = overhead
        us = (call - native) * 1e6
        rows.append(f"| {text} | {us:.1f} us ({call * 1e6:.1f} - {native * 1e6:.1f}) | "
                    f"{'met' if us <= 30 else 'NOT met'} |")
    text = ("Loading the saved MiniLM-sized int8 program (and one call, batch 1, seq 128): peak memory <= 1.3x "
            "its file size plus the activations")
    if memory is None:
        rows.append(f"| {text} | | not measured |")
    else:
        peak, act, size = memory
        ratio = (peak - act) / size
        rows.append(f"| {text} | {ratio:.2f}x ({peak / 2**20:.1f} MiB peak, {act / 2**20:.1f} MiB activations, "
                    f"{size / 2**20:.1f} MiB file) | {'met' if ratio <= 1.3 else 'NOT met'} |")
    return rows


def _profile_table(title: str, by_op: dict[str, float]) -> list[str]:
    total = sum(by_op.values())
    rows = [f"### {title}: {total * 1e3:.2f} ms per run in kernels\n", "| op type | ms per run | share |", "|---|---|---|"]
    for op, sec in sorted(by_op.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {op} | {sec * 1e3:.3f} | {100 * sec / total:.1f}% |")
    return rows + [""]


def _limits(models: list[str], quick: bool) -> tuple[dict[str, tuple[str, float]], str]:
    """The peaks (int8 products, fp32 FMA) and read bandwidths measured now, and the report's line."""
    seconds = 0.1 if quick else 0.3
    tiers = [t for t in LADDER[1:] if _core.tier_support(t)[0]]
    running = {p["name"] for p in _core.peak_probes() if p["runs_here"]}
    peaks: dict[str, tuple[str, float]] = {}
    int8_probe = int8_probe_for(tiers[-1]) if tiers else None
    fp32_probe = FP32_PROBE.get(_core.arch())
    for kind, probe in (("int8", int8_probe), ("fp32", fp32_probe)):
        if probe in running:
            peaks[kind] = (probe, _core.peak_ops(probe, seconds))
    parts = [f"{kind} {probe} {peak / 1e9:.1f} G{'OPS' if kind == 'int8' else 'FLOPS'}"
             for kind, (probe, peak) in peaks.items()]
    read_probe = next((p["name"] for p in reversed(_core.peak_probes()) if p["runs_here"]), None)
    if read_probe:
        for name in models:
            nbytes = int8_weight_bytes(MODELS[name])
            bw = _core.read_bandwidth(read_probe, nbytes, seconds)
            parts.append(f"read {bw / 1e9:.1f} GB/s at {nbytes / 2**20:.1f} MiB ({name} int8 weights)")
    return peaks, f"- limits measured in this run (one core, warm): {'; '.join(parts)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts, set for every engine")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="MiniLM-sized only, batch 1, 1 thread, 2 rounds")
    p.add_argument("--output", default=None, help="default: benchmarks/results/<cpu>-engine.md (none with --quick)")
    args = p.parse_args()
    models = ["minilm"] if args.quick else args.models.split(",")
    for name in models:
        if name not in MODELS:
            p.error(f"--models: unknown model {name!r}; expected some of {', '.join(MODELS)}")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    threads = [1] if args.quick else [int(t) for t in args.threads.split(",")]
    rounds = 2 if args.quick else args.rounds
    profile_runs = 5 if args.quick else 20
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-engine.md")

    import onnxruntime
    import transformers

    out: list[str] = []
    emit = out.append
    tiers = [t for t, v in ec.cpu_info()["tiers"].items() if v["supported"]]
    emit(f"# edgecompress engine benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- machine: {_core.cpu_model()} ({_core.arch()}); features: {' '.join(_core.cpu_features())}; "
         f"CPUs: {_core.default_num_threads()}; tiers: {', '.join(tiers)}")
    emit(f"- torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}")
    peaks, limit_line = _limits(models, args.quick)
    emit(limit_line)
    emit(f"- sequence {SEQ}; batch 8 row lengths {make_inputs(8, SEQ, 2)['attention_mask'].sum(1).tolist()}; method: "
         f"interleaved rounds (a pause, an untimed call, the timed call), median of {rounds}, warm")
    emit("- error: max |y - y_torch_fp32| / max |y_torch_fp32| over unpadded tokens; GOPS: 2 x multiply-adds of "
         "the linear layers and attention at the true lengths / time; % of limit: of the int8 or fp32 peak x threads")
    emit("")

    notes: list[str] = []
    results: dict[tuple[str, int, int], dict[str, float]] = {}
    profiles: list[str] = []
    overhead = None
    memory = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            config = MODELS[name]
            model = build_model(config)
            inputs = {b: make_inputs(b, SEQ, model.config.vocab_size, seed=b) for b in batches}
            # Compression's speed guard times layers at the thread count in force: that of the targets.
            torch.set_num_threads(1)
            ec.set_num_threads(1)
            programs = export_ours(model, inputs[batches[0]], notes)
            tq = torch_int8(model)
            ort_peers = OrtPeers(model, tmp)
            notes.append(f"{name}: onnxruntime's optimizer fused {ort_peers.fused}")
            for t in threads:
                torch.set_num_threads(t)
                ec.set_num_threads(t)
                ort_cands = ort_peers.candidates(t)
                for b in batches:
                    feed = inputs[b]
                    cands = engines(model, tq, programs, ort_cands, feed)
                    with torch.inference_mode():
                        errs = errors(cands, feed["attention_mask"])
                        res = _median_rounds(cands, rounds)
                    del cands
                    results[(name, b, t)] = res
                    ops = useful_ops(config, feed["attention_mask"])
                    ort8 = _best(res, ORT_INT8)
                    emit(f"## {_where(name, b, t)}\n")
                    emit("| engine | ms | vs torch fp32 | vs faster onnxruntime int8 | GOPS | % of limit | error |")
                    emit("|---|---|---|---|---|---|---|")
                    for label, sec in sorted(res.items(), key=lambda kv: kv[1]):
                        kind = "int8" if label in INT8_ENGINES else "fp32" if label in FP32_ENGINES else None
                        pct = f"{100 * ops / sec / (peaks[kind][1] * t):.0f}% of {peaks[kind][0]}" if kind in peaks else ""
                        vs8 = f"{ort8[1] / sec:.2f}x" if ort8 else ""
                        emit(f"| {label} | {sec * 1e3:.2f} | {res[FP32] / sec:.2f}x | {vs8} | {ops / sec / 1e9:.1f} | "
                             f"{pct} | {errs[label]:.1e} |")
                    emit("")
                    if name == "minilm" and b == 1 and t == 1:
                        if ort8:
                            by_op = ort_profile(ort_peers, ort8[0], feed, profile_runs, tmp)
                            profiles += _profile_table(f"{ort8[0]} (onnxruntime's profiler)", by_op)
                        if "ours int8" in programs:
                            by_op = ours_profile(programs["ours int8"], feed, profile_runs)
                            profiles += _profile_table("ours int8 (program.profile)", by_op)
                del ort_cands
            if name == "minilm" and "ours int8" in programs:
                torch.set_num_threads(1)
                ec.set_num_threads(1)
                overhead = python_overhead(programs["ours int8"], 7)
                memory = load_memory(programs["ours int8"], make_inputs(1, SEQ, model.config.vocab_size), tmp)
    emit("## Targets (this run)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    out.extend(target_rows(results, overhead, memory))
    emit("")
    if profiles:
        emit(f"## Per-op profiles: {_where('minilm', 1, 1)}\n")
        out.extend(profiles)
    emit("## Notes\n")
    out.extend(f"- {n}" for n in notes)
    emit("")
    write_report(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
