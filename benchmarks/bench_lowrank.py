"""Low-rank (factorized) weight benchmark: writes benchmarks/results/<cpu>-lowrank.md.

    python benchmarks/bench_lowrank.py            # all shapes, ranks 1/4 and 1/8 of min(N, K)
    python benchmarks/bench_lowrank.py --quick    # smoke run

For each shape of bench_gemm.py and rank: our LowRankWeight (float32 factors on every SIMD tier, and
int8 factors on the top tier) next to numpy fp32 dense, numpy's two products, our dense int8 and,
when installed, torch's dense and two-layer products, in one run with the method of bench_gemm.py.
The FLOP ratio (dense / factorized) is the speedup the factorization allows; "of FLOP ratio" says how
much of it a row reaches. For M <= 4 the read bandwidth for the factors' bytes is timed in the same
rounds; for larger M the fp32 FMA peak is quoted.
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
    FP32_PROBE,
    _aligned_bytes,
    _command_line,
    _measure,
    blas_threads,
    common_arguments,
    cpu_slug,
    write_report,
)
from edgecompress.reference import linear_lowrank, lowrank_tolerance
from edgecompress.runtime import LADDER, use_isa

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 768, 3072), (128, 3072, 768), (1024, 1024, 1024)]
QUICK_SHAPES = [(1, 1024, 1024), (64, 512, 512)]
RANK_FRACTIONS = [4, 8]  # r = min(N, K) / fraction
READ = "read limit"
DENSE = "numpy fp32 dense"


def _torch_rows(x: np.ndarray, w: np.ndarray, u: np.ndarray, v: np.ndarray, threads: int) -> dict[str, Callable[[], Any]]:
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(threads)
    xt, wt, ut, vt = (torch.from_numpy(a) for a in (x, w, u, v))
    f = torch.nn.functional.linear

    def dense() -> Any:
        with torch.inference_mode():
            return f(xt, wt)

    def two() -> Any:
        with torch.inference_mode():
            return f(f(xt, vt), ut)
    return {"torch fp32 dense": dense, "torch fp32 two linears": two}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    args = p.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    fractions = RANK_FRACTIONS[:1] if args.quick else RANK_FRACTIONS
    all_threads = _core.default_num_threads()
    threads = sorted({1, all_threads}) if not args.threads else [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (3 if args.quick else 5)
    min_s = 0.005 if args.quick else 0.02
    tiers = [t for t in LADDER[1:] if _core.tier_support(t)[0]]
    top = tiers[-1] if tiers else LADDER[0]
    read_probe = next((q["name"] for q in reversed(_core.peak_probes()) if q["runs_here"]), None)
    fma_probe = FP32_PROBE.get(_core.arch())
    fma_peak = _core.peak_ops(fma_probe, 0.3) if fma_probe else None
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-lowrank.md")

    out: list[str] = []
    emit = out.append
    emit(f"# edgecompress low-rank weight benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- method: interleaved rounds, median of {rounds}; numpy's BLAS capped at the row's thread count; "
         f"float32 factors run fused up to {ec.ops.LOWRANK_FUSED_MAX_ROWS} rows, as two BLAS products above")
    if fma_peak:
        emit(f"- {fma_probe} peak (one core): {fma_peak / 1e9:.1f} GFLOPS")
    emit("")
    targets: list[str] = []
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w_full = rng.standard_normal((n, k)).astype(np.float32)
        w8 = ec.Int8Weight.from_float(w_full)
        wt = np.ascontiguousarray(w_full.T)
        for frac in fractions:
            r = min(n, k) // frac
            u = rng.standard_normal((n, r)).astype(np.float32)
            v = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
            lr = ec.LowRankWeight(u, v)
            lr8 = ec.LowRankWeight(ec.Int8Weight.from_float(u), ec.Int8Weight.from_float(v))
            want, tol = linear_lowrank(x[:2], u, v), lowrank_tolerance(x[:2], u, v)
            for tier in tiers:
                with use_isa(tier):
                    if not (np.abs(ec.linear(x[:2], lr) - want) <= tol).all():
                        raise AssertionError(f"low-rank {tier} differs from the oracle at {(m, k, n)} r={r}")
            flop_ratio = (k * n) / (r * (k + n))
            for t in threads:
                ec.set_num_threads(t)
                cands: dict[str, Callable[[], Any]] = {}
                for tier in tiers:
                    def ours(tier: str = tier) -> Any:
                        with use_isa(tier):
                            return ec.linear(x, lr)
                    cands[f"low-rank fp32 {tier}"] = ours
                cands[f"low-rank int8 {top}"] = lambda: ec.linear(x, lr8)
                cands[DENSE] = lambda: x @ wt
                cands["numpy fp32 two products"] = lambda: (x @ v.T) @ u.T
                cands[f"int8 dense {top} (ours)"] = lambda: ec.linear(x, w8)
                cands.update(_torch_rows(x, w_full, u, v, t))
                if m <= 4 and read_probe and t == 1:
                    buf = _aligned_bytes(lr.nbytes)
                    cands[READ] = lambda buf=buf: _core.read_once(read_probe, buf)
                with blas_threads(t):
                    res = _measure(cands, rounds, min_s)
                read_s = res.pop(READ, None)
                emit(f"## ({m}, {k}, {n}), rank {r} (FLOP ratio {flop_ratio:.2f}x, factors {lr.nbytes / 2**20:.1f} MiB), "
                     f"{t} thread{'s' if t > 1 else ''}\n")
                emit("| implementation | ms | vs numpy dense | of FLOP ratio | factor GB/s | % of limit |")
                emit("|---|---|---|---|---|---|")
                dense = res[DENSE]
                for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                    gbs = pct = share = ""
                    if c.startswith("low-rank") or c.startswith("numpy fp32 two") or c.startswith("torch fp32 two"):
                        share = f"{100 * dense / sec / flop_ratio:.0f}%"
                        if c.startswith("low-rank fp32"):
                            gbs = f"{lr.nbytes / sec / 1e9:.1f}"
                            if read_s:
                                pct = f"{100 * read_s / sec:.0f}% of read bw"
                            elif fma_peak:
                                pct = f"{100 * 2 * m * r * (k + n) / sec / (fma_peak * t):.0f}% of {fma_probe}"
                    emit(f"| {c} | {sec * 1e3:.3f} | {dense / sec:.2f}x | {share} | {gbs} | {pct} |")
                if read_s:
                    emit(f"| (limit: one read of the {lr.nbytes / 2**20:.1f} MiB of factors) | {read_s * 1e3:.3f} | | | "
                         f"{lr.nbytes / read_s / 1e9:.1f} | 100% |")
                emit("")
                if (m, k, n) == (1, 4096, 4096) and r == 1024 and t == 1:
                    sp = dense / res[f"low-rank fp32 {top}"]
                    need = 0.8 * flop_ratio
                    targets.append(f"| fused (1, 4096, 4096) r = 1024: >= 0.8 x FLOP ratio = {need:.2f}x numpy dense | "
                                   f"{sp:.2f}x ({100 * sp / flop_ratio:.0f}% of the ratio) | {'met' if sp >= need else 'NOT met'} |")
    emit("## Targets (one thread, this run)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    out.extend(targets)
    emit("")
    write_report(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
