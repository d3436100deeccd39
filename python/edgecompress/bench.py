"""int8 GEMM microbenchmarks: every available tier next to the peers, in one run, with the limits.

Method: weights packed once, inputs fixed, every candidate warmed up, then timed in interleaved
rounds (each round times every candidate once, so drift on a shared machine hits all alike), with a
pause before each batch so that no library's spinning workers steal cores from the next; the
figure is the median over rounds. Every tier's output is checked against the oracle first. GOPS counts a multiply-add as 2 operations. Each figure is quoted
next to the physical limit measured in the same run: the instruction peak of the tier (times the
threads) and, for the memory-bound GEMV shapes, the read bandwidth at the weights' working-set size.

Peers, when installed: numpy fp32 matmul (OpenBLAS, also held to its Haswell/AVX2 kernels in a
subprocess), torch's dynamic int8 Linear (fbgemm/oneDNN), torch._int_mm, and onnxruntime's
DynamicQuantizeMatMul.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import warnings
from typing import Any, Callable

import numpy as np

from . import _core
from .ops import linear
from .reference import linear_int8, quantize_weight_int8
from .runtime import LADDER, get_num_threads, set_num_threads, use_isa
from .timing import interleaved_rounds, settle_pause, time_call
from .formats import Int8Weight

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 768, 3072), (128, 3072, 768), (1024, 1024, 1024)]
QUICK_SHAPES = [(1, 1024, 1024), (64, 512, 512)]
# The instruction each tier's gemm_s8 kernel is built on, for the "% of peak" column (int8_probe_for
# resolves a tier cap to the kernel that serves it).
TIER_PROBE = {"scalar": None, "avx2": "vpmaddwd_ymm", "avxvnni": "vpdpbusd_ymm", "avx512vnni": "vpdpbusd_zmm",
              "amx": "tdpbusd_tile", "neon": "smlal_q", "dotprod": "sdot_q", "i8mm": "smmla_q"}
# Where the amx tier runs, the batch sizes its tiles are for (issue: M = 16 ... 1024 at BERT-base sizes).
AMX_SHAPES = [(m, k, n) for m in (16, 32, 64, 128, 512, 1024) for k, n in ((768, 3072), (3072, 768))]
FP32_PROBE = {"x86_64": "fma_f32_ymm", "aarch64": "fmla_f32_q"}


def fp32_probe() -> str | None:
    """The FMA probe of the float32 kernel in use (dense_f32, which also runs the engine's convolutions):
    fma_f32_zmm under its avx512 kernel, else the architecture's FP32_PROBE (an AVX-512 CPU's float32
    limit was quoted at half its zmm peak, and the engine's float32 rows read over 100% of it)."""
    from .runtime import dense_f32_kernel

    return "fma_f32_zmm" if dense_f32_kernel().endswith("_avx512") else FP32_PROBE.get(_core.arch())


def int8_probe_for(cap: str) -> str | None:
    """The instruction of the gemm_s8 kernel that serves the tier cap `cap` on this CPU: a tier
    without a gemm_s8 kernel of its own (avx512 has only float kernels) runs the one below."""
    name = _core.gemm_s8_select(cap)
    return TIER_PROBE.get(next(k["tier"] for k in _core.gemm_s8_kernels() if k["name"] == name))


def gemm_s8_tiers() -> list[str]:
    """The SIMD tiers this CPU runs that have a gemm_s8 kernel of their own (the others would time
    the kernel of the tier below again)."""
    own = {k["tier"] for k in _core.gemm_s8_kernels()}
    return [t for t in LADDER[1:] if t in own and _core.tier_support(t)[0]]


def amx_skip_note() -> str | None:
    """Why the amx tier has no rows here (None where it runs, or off x86)."""
    if "amx" not in LADDER:
        return None
    ok, reason = _core.tier_support("amx")
    return None if ok else f"amx tier skipped: {reason}"


def common_arguments(p: argparse.ArgumentParser) -> None:
    """The options every benchmark script shares."""
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats (a smoke run)")
    p.add_argument("--shapes", help="M,K,N;M,K,N;... instead of the standard shapes")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per candidate (median is reported)")
    p.add_argument("--output", help="also write the Markdown report to this file")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common_arguments(p)
    p.add_argument("--tiers", help="comma-separated tiers (default: every SIMD tier this CPU runs)")
    p.add_argument("--no-peers", action="store_true", help="skip numpy/torch/onnxruntime")


def write_report(lines: list[str], output: str | None) -> None:
    """Prints the Markdown report and, when asked, writes it to `output`."""
    report = "\n".join(lines)
    print(report)
    if output:
        with open(output, "w") as f:
            f.write(report + "\n")


def _measure(cands: dict[str, Callable[[], Any]], rounds: int, min_seconds: float,
             reduce: Callable[[list[float]], float] = statistics.median,
             threads: int | None = None) -> dict[str, float]:
    """Each candidate's time in interleaved rounds, reduced over the rounds. threads: the thread count
    the candidates run at (default: the engine's), which sets the pause before each turn."""
    # Two warm-up calls (packing, caches, thread pools); the pause lets spinning thread pools go idle.
    pause = settle_pause(get_num_threads() if threads is None else threads)
    times = interleaved_rounds(cands, rounds, warmup=2, min_seconds=min_seconds, pause=pause)
    return {k: reduce(v) for k, v in times.items()}


def blas_threads(n: int) -> Any:
    """Caps numpy's BLAS at n threads for a block (threadpoolctl, from the bench extra), so that a
    one-thread row of a table is one thread for numpy too. Without threadpoolctl: no cap."""
    try:
        import threadpoolctl
    except ImportError:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


class _Peers:
    """Peer implementations on the same inputs; each is skipped (with the reason) when unavailable."""

    def __init__(self, enabled: bool) -> None:
        self.notes: list[str] = []
        self.torch = self.ort = self.tpc = None
        if not enabled:
            return
        for name in ("torch", "onnxruntime", "threadpoolctl"):
            try:
                mod = __import__(name)
            except ImportError:
                self.notes.append(f"{name} not installed: its rows are missing")
                continue
            setattr(self, {"torch": "torch", "onnxruntime": "ort", "threadpoolctl": "tpc"}[name], mod)

    def numpy_threads(self, n: int) -> Any:
        if self.tpc is None:
            return contextlib.nullcontext()
        return self.tpc.threadpool_limits(limits=n, user_api="blas")

    def make(self, x: np.ndarray, w_float: np.ndarray, threads: int) -> dict[str, Callable[[], Any]]:
        out: dict[str, Callable[[], Any]] = {}
        wt = np.ascontiguousarray(w_float.T)
        out["numpy fp32"] = lambda: x @ wt
        if self.torch is not None:
            torch = self.torch
            torch.set_num_threads(threads)
            m, k = x.shape
            n = w_float.shape[0]
            lin = torch.nn.Linear(k, n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w_float))
            with warnings.catch_warnings():  # the peer as users build it; torch announces its deprecation
                warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
                warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization", category=DeprecationWarning)
                qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                              dtype=torch.qint8)
            xt = torch.from_numpy(x)

            def torch_dynamic() -> Any:
                with torch.inference_mode():
                    return qlin(xt)

            out["torch dynamic int8 Linear"] = torch_dynamic
            a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8)
            b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8)
            try:
                torch._int_mm(a8, b8)
                out["torch._int_mm"] = lambda: torch._int_mm(a8, b8)
            except RuntimeError as e:  # shape limits of the op on some builds
                self.notes.append(f"torch._int_mm {x.shape}: {str(e).splitlines()[0]}")
        if self.ort is not None:
            sess = self._ort_session(w_float, threads)
            if sess is not None:
                feed = {"A": x}
                out["onnxruntime DynamicQuantizeMatMul"] = lambda: sess.run(None, feed)
        return out

    def _ort_session(self, w_float: np.ndarray, threads: int) -> Any:
        try:
            from onnx import TensorProto, helper, numpy_helper
        except ImportError:
            self.notes.append("onnx not installed: no onnxruntime rows (the graph is built with onnx)")
            self.ort = None
            return None
        n, k = w_float.shape
        q, scale = quantize_weight_int8(w_float)  # the same int8 weight as ours
        qb = np.ascontiguousarray(q.T)  # (K, N)
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "b_scale", "b_zp"], ["Y"], domain="com.microsoft")
        graph = helper.make_graph(
            [node], "dqmm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
            initializer=[numpy_helper.from_array(qb, "B"), numpy_helper.from_array(scale, "b_scale"),
                         numpy_helper.from_array(np.zeros(n, np.int8), "b_zp")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return self.ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


_HASWELL_SCRIPT = r"""
import json, sys, numpy as np
from threadpoolctl import threadpool_limits, threadpool_info
from edgecompress.bench import _measure
shapes, threads, rounds, min_s = json.loads(sys.argv[1])
out = {"corename": [i.get("architecture") for i in threadpool_info() if i.get("internal_api") == "openblas"]}
rng = np.random.default_rng(0)
for m, k, n in shapes:
    x = rng.standard_normal((m, k)).astype(np.float32); wt = rng.standard_normal((k, n)).astype(np.float32)
    for t in threads:
        with threadpool_limits(limits=t, user_api="blas"):
            out[f"{m},{k},{n},{t}"] = _measure({"numpy": lambda: x @ wt}, rounds, min_s, threads=t)["numpy"]
print(json.dumps(out))
"""


def _numpy_haswell(shapes, threads, rounds, min_s) -> tuple[dict[str, float], str]:
    """numpy fp32 with OpenBLAS held to its AVX2 (Haswell) kernels: the edge-class x86 baseline."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["OPENBLAS_CORETYPE"] = "Haswell"
    try:
        r = subprocess.run([sys.executable, "-c", _HASWELL_SCRIPT, json.dumps([shapes, threads, rounds, min_s])],
                           env=env, capture_output=True, text=True, timeout=1800)
        data = json.loads(r.stdout)
    except (subprocess.SubprocessError, json.JSONDecodeError, OSError):
        return {}, "numpy (OPENBLAS_CORETYPE=Haswell) run failed"
    core = data.pop("corename")
    return data, f"numpy fp32 held to OpenBLAS Haswell kernels (OpenBLAS reports {core})"


READ_LIMIT = "read limit"


def _aligned_bytes(n: int) -> np.ndarray:
    """n bytes (rounded up to 256) at a 64-byte aligned address, touched once."""
    n = (n + 255) // 256 * 256
    raw = np.ones(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + n]


def _command_line() -> str:
    argv = sys.argv
    if argv and argv[0].endswith(".py"):
        return " ".join(["python", os.path.relpath(argv[0])] + argv[1:])
    return " ".join(["edgecompress"] + argv[1:])


def _call_overhead() -> float:
    """Seconds from Python call to result for a (1, 64) x (64, 64) linear (one thread)."""
    rng = np.random.default_rng(1)
    w = Int8Weight.from_float(rng.standard_normal((64, 64)).astype(np.float32))
    x = rng.standard_normal((1, 64)).astype(np.float32)
    set_num_threads(1)
    linear(x, w)
    return min(time_call(lambda: linear(x, w), min_seconds=0.02) for _ in range(7))


def _targets(summary: list[dict[str, Any]], peaks: dict[str, float]) -> list[str]:
    """The issue's single-thread targets, from this run's figures."""
    fig = {(tuple(r["shape"]), r["impl"]): r for r in summary if r["threads"] == 1}

    def ratio(shape, ours, peer):
        a, b = fig.get((shape, ours)), fig.get((shape, peer))
        return None if a is None or b is None else b["seconds"] / a["seconds"]

    rows = []
    for shape in [(128, 768, 3072), (128, 3072, 768), (1024, 1024, 1024)]:
        r = fig.get((shape, "edgecompress avx512vnni"))
        if r and "vpdpbusd_zmm" in peaks:
            pct = 100 * r["gops"] * 1e9 / peaks["vpdpbusd_zmm"]
            vs = ratio(shape, "edgecompress avx512vnni", "torch dynamic int8 Linear")
            rows.append(f"| avx512vnni {shape} >= 75% of vpdpbusd peak, ahead of torch dynamic int8 Linear | "
                        f"{pct:.0f}%; {vs:.2f}x torch | {'met' if pct >= 75 and (vs or 0) >= 1 else 'NOT met'} |"
                        if vs else f"| avx512vnni {shape} >= 75% of vpdpbusd peak | {pct:.0f}% | {'met' if pct >= 75 else 'NOT met'} |")
    g = (1, 4096, 4096)
    best = min((r for (s, i), r in fig.items() if s == g and i.startswith("edgecompress")), key=lambda r: r["seconds"], default=None)
    limit = fig.get((g, READ_LIMIT))
    if best and limit:
        pct = 100 * limit["seconds"] / best["seconds"]
        vs = ratio(g, best["impl"], "onnxruntime DynamicQuantizeMatMul")
        ok = pct >= 90 and (vs is None or vs >= 1)
        rows.append(f"| GEMV {g} ({best['impl']}) >= 90% of read bandwidth, >= onnxruntime | {pct:.0f}%"
                    f"{f'; {vs:.2f}x onnxruntime' if vs else ''} | {'met' if ok else 'NOT met'} |")
    for tier, need in (("avx2", 1.8), ("avxvnni", 3.0)):
        for shape in [(128, 768, 3072), (128, 3072, 768)]:
            v = ratio(shape, f"edgecompress {tier}", "numpy fp32 (OpenBLAS Haswell)")
            if v:
                rows.append(f"| {tier} {shape} >= {need}x numpy fp32 (OpenBLAS Haswell) | {v:.2f}x | {'met' if v >= need else 'NOT met'} |")
    return rows


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:.3f}"


def run(args: argparse.Namespace) -> int:
    quick = args.quick
    shapes = QUICK_SHAPES if quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    all_threads = _core.default_num_threads()
    threads = sorted({1, all_threads}) if not args.threads else [int(t) for t in args.threads.split(",")]
    # The scalar tier is the specification, not a contender: only on request.
    tiers = gemm_s8_tiers() if not args.tiers else args.tiers.split(",")
    if "amx" in tiers and not quick and not args.shapes:
        shapes = shapes + [s for s in AMX_SHAPES if s not in shapes]
    rounds = args.rounds or (3 if quick else 7)
    min_s = 0.005 if quick else 0.03
    peers = _Peers(not args.no_peers)
    if amx_skip_note() is not None:
        peers.notes.append(str(amx_skip_note()))
    arch = _core.arch()
    saved_threads = get_num_threads()

    lines: list[str] = []
    emit = lines.append
    model = _core.cpu_model() or platform.processor() or arch
    emit(f"# edgecompress int8 GEMM benchmark: {model} ({arch})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- features: {' '.join(_core.cpu_features())}; threads available: {all_threads}")
    emit(f"- method: interleaved rounds, median of {rounds}; GOPS = 2 x M x K x N / time; time in ms\n")

    # Physical limits measured now.
    emit("## Limits measured in this run (one core)\n")
    emit("| probe | tier | GOPS |")
    emit("|---|---|---|")
    peaks: dict[str, float] = {}
    for p in _core.peak_probes():
        if p["runs_here"]:
            peaks[p["name"]] = _core.peak_ops(p["name"], 0.1 if quick else 0.3)
            emit(f"| {p['name']} | {p['tier']} | {peaks[p['name']] / 1e9:.1f} |")
    read_probe = next((p["name"] for p in reversed(_core.peak_probes()) if p["runs_here"] and "zmm" in p["name"]), None)
    read_probe = read_probe or next((p["name"] for p in _core.peak_probes() if p["runs_here"]), None)
    bandwidth: dict[int, float] = {}
    for m, k, n in shapes:
        nbytes = n * k
        if read_probe and nbytes not in bandwidth:
            bandwidth[nbytes] = _core.read_bandwidth(read_probe, nbytes, 0.1 if quick else 0.4)
    emit("")
    emit("| read working set | GB/s (one core, warm) |")
    emit("|---|---|")
    for nbytes, bw in sorted(bandwidth.items()):
        emit(f"| {nbytes / 2**20:.1f} MiB | {bw / 1e9:.1f} |")
    emit("")

    haswell: dict[str, float] = {}
    if not args.no_peers and arch == "x86_64" and peers.tpc is not None:
        haswell, note = _numpy_haswell(shapes, threads, rounds, min_s)
        peers.notes.append(note)

    summary: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        w_float = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = Int8Weight.from_float(w_float)
        ops = 2.0 * m * k * n
        # Every tier must give the oracle's answer (rows are independent, so four rows suffice).
        want = linear_int8(x[:4], w.qweight, w.scale)
        for tier in tiers:
            with use_isa(tier):
                if not np.array_equal(linear(x, w)[:4], want):
                    raise AssertionError(f"tier {tier} differs from the oracle at {(m, k, n)}")
        for t in threads:
            set_num_threads(t)
            cands: dict[str, Callable[[], Any]] = {}
            for tier in tiers:
                def ours(tier: str = tier) -> Any:
                    with use_isa(tier):
                        return linear(x, w)
                cands[f"edgecompress {tier}"] = ours
            if m <= 4 and read_probe and t == 1:
                # The limit of a memory-bound GEMV, timed in the same rounds: one read of a buffer
                # as large as the weights.
                buf = _aligned_bytes(n * k)
                cands[READ_LIMIT] = lambda buf=buf: _core.read_once(read_probe, buf)
            with peers.numpy_threads(t):
                if not args.no_peers:
                    cands.update(peers.make(x, w_float, t))
                res = _measure(cands, rounds, min_s)
            read_seconds = res.pop(READ_LIMIT, None)
            if f"{m},{k},{n},{t}" in haswell:
                res["numpy fp32 (OpenBLAS Haswell)"] = haswell[f"{m},{k},{n},{t}"]
            best_peer = min((v for c, v in res.items() if not c.startswith("edgecompress")), default=None)
            emit(f"## (M, K, N) = ({m}, {k}, {n}), {t} thread{'s' if t > 1 else ''}\n")
            emit("| implementation | ms | GOPS | % of limit | vs fastest peer |")
            emit("|---|---|---|---|---|")
            for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                gops = ops / sec / 1e9
                limit_txt = ""
                if c.startswith("edgecompress"):
                    tier = c.split()[-1]
                    probe = int8_probe_for(tier)
                    if m <= 4 and read_seconds:
                        limit_txt = f"{n * k / sec / 1e9:.1f} GB/s = {100 * read_seconds / sec:.0f}% of read bw"
                    elif m <= 4:
                        limit_txt = f"{n * k / sec / 1e9:.1f} GB/s"
                    elif probe in peaks:
                        limit_txt = f"{100 * ops / sec / (peaks[probe] * t):.0f}% of {probe}"
                elif c.startswith("numpy") and FP32_PROBE.get(arch) in peaks:
                    limit_txt = f"{100 * ops / sec / (peaks[FP32_PROBE[arch]] * t):.0f}% of {FP32_PROBE[arch]}"
                vs = f"{best_peer / sec:.2f}x" if best_peer else ""
                emit(f"| {c} | {_fmt_ms(sec)} | {gops:.1f} | {limit_txt} | {vs} |")
                summary.append({"shape": (m, k, n), "threads": t, "impl": c, "seconds": sec, "gops": gops})
            if read_seconds:
                emit(f"| (limit: one read of {n * k / 2**20:.1f} MiB, same rounds) | {_fmt_ms(read_seconds)} | "
                     f"{n * k / read_seconds / 1e9:.1f} GB/s | | |")
                summary.append({"shape": (m, k, n), "threads": t, "impl": READ_LIMIT, "seconds": read_seconds, "gops": 0.0})
            emit("")
    overhead = _call_overhead()
    set_num_threads(saved_threads)
    emit("## Targets (one thread)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    for row in _targets(summary, peaks):
        emit(row)
    emit(f"| Python-to-result overhead of a (1, 64) x (64, 64) linear <= 5 us | {overhead * 1e6:.2f} us | "
         f"{'met' if overhead <= 5e-6 else 'NOT met'} |")
    emit("")
    if peers.notes:
        emit("## Notes\n")
        for note in peers.notes:
            emit(f"- {note}")
        emit("")
    write_report(lines, args.output)
    return 0


def cpu_slug() -> str:
    """File name for results/: the CPU model, its best kernel tier and the architecture, lower case.

    The tier is the best one the CPU supports (not an EDGECOMPRESS_ISA cap). Without it, CPUs that
    report the same model name (an "AMD EPYC" may be a Zen 3 with AVX2 only or a Zen 4 with
    AVX-512 VNNI) would write the same file, one machine's results over the other's.
    """
    # trademark marks and the filler words of Intel's names ("Intel(R) Xeon(R) Processor",
    # "Intel(R) Core(TM) i7-1165G7 CPU @ 2.80GHz") are no part of the model
    model = _core.cpu_model() or platform.processor() or "cpu"
    model = re.sub(r"\((r|tm|c)\)|\b(processor|cpu)\b|@.*$", " ", model, flags=re.IGNORECASE).strip() or "cpu"
    best = [tier for tier in LADDER if _core.tier_support(tier)[0]][-1]
    return re.sub(r"[^a-z0-9]+", "-", f"{model} {best} {_core.arch()}".lower()).strip("-")
