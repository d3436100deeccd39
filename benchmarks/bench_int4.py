"""4-bit weight benchmark: writes benchmarks/results/<cpu>-int4.md.

    python benchmarks/bench_int4.py            # all shapes, 1 thread and all threads
    python benchmarks/bench_int4.py --quick    # smoke run

Ours (each SIMD tier; int8 and float compute; group sizes 32/64/128; NF4 and asymmetric at g = 32)
next to onnxruntime's MatMulNBits (accuracy_level 0 and 4, on the very same 4-bit weight), our int8
path and numpy fp32, all in one run with the method of bench_gemm.py (interleaved rounds, median,
pauses between batches). GB/s counts the bytes of the packed weight a call streams; for M <= 4 the
read bandwidth at that working-set size is timed in the same rounds and each figure is quoted as a
share of it. Also reports the reconstruction error of the quantizers (the accuracy targets).
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
from typing import Any, Callable

import numpy as np

import edgecompress as ec
from edgecompress import _core
from edgecompress.bench import (
    TIER_PROBE,
    _aligned_bytes,
    amx_skip_note,
    _command_line,
    _measure,
    blas_threads,
    common_arguments,
    cpu_slug,
    int8_probe_for,
    write_report,
)
from edgecompress.convert import to_onnx_matmulnbits
from edgecompress.reference import linear_int4
from edgecompress.runtime import LADDER, use_isa

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 768, 3072), (128, 3072, 768), (1024, 1024, 1024),
          (1, 4096, 11008), (1, 11008, 4096)]
QUICK_SHAPES = [(1, 1024, 1024), (64, 512, 512)]
GROUPS = (32, 64, 128)
READ = "read limit"


def _ort_matmulnbits(w4: ec.Int4Weight, level: int, threads: int) -> Callable[[np.ndarray], Any] | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    d = to_onnx_matmulnbits(w4)
    n, k = w4.shape
    inits = [numpy_helper.from_array(d["B"], "B"), numpy_helper.from_array(d["scales"], "scales")]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft",
                            accuracy_level=level, **d["attributes"])
    graph = helper.make_graph([node], "q4", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {"A": x})[0]


def _accuracy_table() -> list[str]:
    rng = np.random.default_rng(3)
    weights = {"Gaussian": rng.standard_normal((256, 512)).astype(np.float32),
               "Student-t (3 dof)": rng.standard_t(3, (256, 512)).astype(np.float32)}
    rows = ["| weights | g | uniform sym RTN | uniform sym MSE | uniform asym RTN | uniform asym MSE | NF4 RTN | NF4 MSE | k-means RTN | k-means MSE |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, w in weights.items():
        for g in (32, 64, 128):
            cells = []
            for kw in ({}, {"symmetric": False}, {"codebook": "nf4"}, {"codebook": "kmeans"}):
                for method in ("rtn", "mse"):
                    q = ec.Int4Weight.from_float(w, group_size=g, method=method, **kw)
                    cells.append(f"{np.linalg.norm(q.to_float() - w) / np.linalg.norm(w):.4f}")
            rows.append(f"| {name} | {g} | " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    args = p.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    all_threads = _core.default_num_threads()
    threads = sorted({1, all_threads}) if not args.threads else [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (3 if args.quick else 7)
    min_s = 0.005 if args.quick else 0.03
    # Tiers with a gemm_q4 kernel of their own (a tier without one would time the one below again).
    own = {kern["tier"] for kern in _core.gemm_q4_kernels()}
    tiers = [t for t in LADDER[1:] if _core.tier_support(t)[0] and t in own]
    if "amx" in tiers and not args.quick and not args.shapes:
        # the batch sizes the amx tiles are for, at the int4 shape
        shapes = shapes + [(m, 3072, 768) for m in (16, 32, 64, 128, 512, 1024) if (m, 3072, 768) not in shapes]
    top = tiers[-1] if tiers else LADDER[0]
    read_probe = next((q["name"] for q in reversed(_core.peak_probes()) if q["runs_here"]), None)
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-int4.md")

    out: list[str] = []
    emit = out.append
    emit(f"# edgecompress 4-bit weight benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- method: interleaved rounds, median of {rounds}; GOPS = 2 x M x K x N / time; GB/s = packed weight bytes / time")
    emit("- ours: `q4 <tier> <compute> g<group>` (symmetric unless marked); peers on the same g = 32 symmetric weight")
    if amx_skip_note() is not None:
        emit(f"- {amx_skip_note()}")
    elif "amx" in tiers:
        emit("- amx: 4-bit weights on tiles (int8 mode) for M > 4; M <= 4 runs avx512vnni's kernel")
    emit("")

    emit("## Limits measured in this run (one core)\n")
    peaks: dict[str, float] = {}
    for q in _core.peak_probes():
        if q["runs_here"] and q["name"] in TIER_PROBE.values():
            peaks[q["name"]] = _core.peak_ops(q["name"], 0.1 if args.quick else 0.3)
            emit(f"- {q['name']} ({q['tier']}): {peaks[q['name']] / 1e9:.1f} GOPS")
    emit("- read bandwidth: timed with each GEMV shape below (one read of the g = 32 packed weight)\n")

    summary: dict[tuple[Any, ...], float] = {}
    nbytes_of: dict[str, int] = {}
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        w_float = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        weights: dict[str, ec.Int4Weight] = {}
        for g in GROUPS:
            weights[f"g{g}"] = ec.Int4Weight.from_float(w_float, group_size=g)
        weights["g32 asym"] = ec.Int4Weight.from_float(w_float, symmetric=False)
        weights["g32 nf4"] = ec.Int4Weight.from_float(w_float, codebook="nf4")
        w8 = ec.Int8Weight.from_float(w_float)
        # Every tier must give the oracle's bits (first rows) before anything is timed.
        for name, w in weights.items():
            want = linear_int4(x[:2], w.qweight, w.scale, w.zero_point, w.codebook)
            for tier in tiers:
                with use_isa(tier):
                    if not np.array_equal(ec.linear(x[:2], w), want):
                        raise AssertionError(f"q4 {tier} {name} differs from the oracle at {(m, k, n)}")
        packed_bytes = ec.ops.packed(weights["g32"]).nbytes
        ops = 2.0 * m * k * n
        for t in threads:
            ec.set_num_threads(t)
            cands: dict[str, Callable[[], Any]] = {}
            for tier in tiers:
                for name, w in weights.items():
                    for compute in ("int8", "float"):
                        if compute == "float" and (tier != top or name not in ("g32", "g32 nf4")):
                            continue
                        wc = w.with_compute(compute) if compute != w.compute else w
                        label = f"q4 {tier} {compute} {name}"
                        nbytes_of[label] = ec.ops.packed(wc).nbytes

                        def ours(tier: str = tier, wc: ec.Int4Weight = wc) -> Any:
                            with use_isa(tier):
                                return ec.linear(x, wc)
                        cands[label] = ours
            cands[f"int8 {top} (ours)"] = lambda: ec.linear(x, w8)
            nbytes_of[f"int8 {top} (ours)"] = ec.ops.packed(w8).nbytes
            wt = np.ascontiguousarray(w_float.T)
            cands["numpy fp32"] = lambda: x @ wt
            for level in (0, 4):
                f = _ort_matmulnbits(weights["g32"], level, t)
                if f is not None:
                    cands[f"onnxruntime MatMulNBits acc{level}"] = lambda f=f: f(x)
            if m <= 4 and read_probe and t == 1:
                buf = _aligned_bytes(packed_bytes)
                cands[READ] = lambda buf=buf: _core.read_once(read_probe, buf)
            with blas_threads(t):
                res = _measure(cands, rounds, min_s)
            read_s = res.pop(READ, None)
            emit(f"## (M, K, N) = ({m}, {k}, {n}), {t} thread{'s' if t > 1 else ''}\n")
            emit("| implementation | ms | GOPS | weight GB/s | % of limit |")
            emit("|---|---|---|---|---|")
            for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                nb = nbytes_of.get(c)
                gbs = f"{nb / sec / 1e9:.1f}" if nb else ""
                pct = ""
                if nb and read_s:
                    pct = f"{100 * read_s / sec * nb / packed_bytes:.0f}% of read bw"
                elif m > 4 and c.split()[0] in ("q4", "int8") and " int8 " in f" {c} ":
                    probe = int8_probe_for(c.split()[1])
                    if probe in peaks:
                        pct = f"{100 * ops / sec / (peaks[probe] * t):.0f}% of {probe}"
                emit(f"| {c} | {sec * 1e3:.3f} | {ops / sec / 1e9:.1f} | {gbs} | {pct} |")
                summary[((m, k, n), t, c)] = sec
            if read_s:
                emit(f"| (limit: one read of {packed_bytes / 2**20:.2f} MiB, the g32 packed weight) | {read_s * 1e3:.3f} | | "
                     f"{packed_bytes / read_s / 1e9:.1f} | 100% |")
                summary[((m, k, n), t, READ)] = read_s
            emit("")

    emit("## Targets (one thread, this run)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    for row in _targets(summary, top):
        emit(row)
    emit("")
    emit("## Accuracy: relative reconstruction error ||W_q - W|| / ||W|| (256 x 512 weights)\n")
    out.extend(_accuracy_table())
    emit("")
    write_report(out, args.output)
    return 0


def _targets(summary: dict[tuple[Any, ...], float], top: str) -> list[str]:
    rows = []

    def get(shape, impl):
        return summary.get((shape, 1, impl))

    gemv = (1, 4096, 4096)
    ours = get(gemv, f"q4 {top} int8 g32")
    if ours:
        read_s = get(gemv, READ)
        ort4 = get(gemv, "onnxruntime MatMulNBits acc4")
        i8 = get(gemv, f"int8 {top} (ours)")
        if read_s:
            pct = 100 * read_s / ours
            rows.append(f"| GEMV {gemv} g32 sym int8 >= 85% of read bandwidth | {pct:.0f}% | {'met' if pct >= 85 else 'NOT met'} |")
        if ort4:
            rows.append(f"| ... >= 1.5x onnxruntime MatMulNBits acc4 | {ort4 / ours:.2f}x | {'met' if ort4 / ours >= 1.5 else 'NOT met'} |")
        if i8:
            rows.append(f"| ... >= 1.7x our int8 GEMV | {i8 / ours:.2f}x | {'met' if i8 / ours >= 1.7 else 'NOT met'} |")
        nf4 = get(gemv, f"q4 {top} int8 g32 nf4")
        if nf4:
            rows.append(f"| codebook (NF4) GEMV >= 0.85x the uniform GEMV | {ours / nf4:.2f}x | {'met' if ours / nf4 >= 0.85 else 'NOT met'} |")
    gemm = (128, 3072, 768)
    ours = get(gemm, f"q4 {top} int8 g32")
    if ours:
        orts = [v for v in (get(gemm, "onnxruntime MatMulNBits acc0"), get(gemm, "onnxruntime MatMulNBits acc4")) if v]
        if orts:
            r = min(orts) / ours
            rows.append(f"| GEMM {gemm} g32 >= 4x onnxruntime MatMulNBits (faster level) | {r:.2f}x | {'met' if r >= 4 else 'NOT met'} |")
        i8 = get(gemm, f"int8 {top} (ours)")
        if i8:
            r = i8 / ours
            rows.append(f"| ... >= 0.8x our int8 GEMM throughput | {r:.2f}x | {'met' if r >= 0.8 else 'NOT met'} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
