"""Pruned-weight benchmark: writes benchmarks/results/<cpu>-sparse.md.

    python benchmarks/bench_sparse.py            # all shapes and sparsities, 1 thread and all threads
    python benchmarks/bench_sparse.py --quick    # smoke run
    python benchmarks/bench_sparse.py --section nm --shapes 1,4096,4096 --threads 1   # N:M only

Section "pruned": for each shape of bench_gemm.py and sparsity (50, 75, 90, 95%): our SparseWeight in
every layout (csr on an unstructured pruning, bsr4x1 / bsr8x1 / int8 bsr1x4 on a pruning by blocks of
that shape) and every SIMD tier, next to numpy fp32 dense, our dense int8, torch's CSR matmul and
scipy's CSR; then format="auto" against every layout of the same weight. Section "nm": for each
shape, the weight pruned by magnitude to 2:4, 1:4 and 4:8, our N:M kernels on every SIMD tier next to
our dense_f32 kernel and numpy fp32 dense on the unpruned weight. All in one run with the method of
bench_gemm.py. GB/s counts the stored bytes of the weight (indices + values);
for M <= 4 the read bandwidth at that size is timed in the same rounds, and for larger M the FMA peak
is quoted.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import warnings
from typing import Any, Callable

import numpy as np

import edgecompress as ec
from edgecompress import _core
from edgecompress.bench import (
    FP32_PROBE,
    int8_probe_for,
    _aligned_bytes,
    _command_line,
    _measure,
    blas_threads,
    common_arguments,
    cpu_slug,
    write_report,
)
from edgecompress.reference import linear_int8, linear_sparse
from edgecompress.runtime import LADDER, use_isa

SHAPES = [(1, 4096, 4096), (8, 4096, 4096), (128, 768, 3072), (128, 3072, 768), (1024, 1024, 1024)]
QUICK_SHAPES = [(1, 1024, 1024), (64, 512, 512)]
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
# layout label -> (format, dtype, pruning block (rows along N, columns along K))
LAYOUTS = {"csr": ("csr", "float32", (1, 1)), "bsr4x1": ("bsr4x1", "float32", (4, 1)),
           "bsr8x1": ("bsr8x1", "float32", (8, 1)), "int8 csr": ("csr", "int8", (1, 1)),
           "int8 bsr1x4": ("bsr1x4", "int8", (1, 4))}
READ = "read limit"
INT8_DENSE = "int8 dense (ours)"
DENSE_READ = "read limit, dense W"


def _pruned(rng: np.random.Generator, w: np.ndarray, sparsity: float, block: tuple[int, int]) -> np.ndarray:
    n, k = w.shape
    br, bc = block
    keep = rng.random((-(-n // br), -(-k // bc))) >= sparsity
    return (w * np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)[:n, :k]).astype(np.float32)


def _peers(x: np.ndarray, w: np.ndarray, threads: int) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    try:
        import scipy.sparse as sp

        ws = sp.csr_matrix(w)
        xt = np.ascontiguousarray(x.T)
        out["scipy CSR"] = lambda: (ws @ xt).T
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            wt = torch.from_numpy(w).to_sparse_csr()
        xt_t = torch.from_numpy(np.ascontiguousarray(x.T))
        out["torch CSR"] = lambda: torch.sparse.mm(wt, xt_t)
    except ImportError:
        pass
    return out


def _targets(summary: dict[tuple[Any, ...], float], top: str) -> list[str]:
    rows = []
    for fmt, shape, goals, peer in (("csr", (1, 4096, 4096), {0.5: 1.1, 0.75: 2.0, 0.9: 4.5}, "numpy fp32 dense"),
                                    ("bsr4x1", (128, 768, 3072), {0.75: 1.8, 0.9: 3.0}, "numpy fp32 dense"),
                                    ("int8 bsr1x4", (128, 768, 3072), {0.9: 3.0}, INT8_DENSE),
                                    ("int8 bsr1x4", (1, 4096, 4096), {0.9: 4.0}, INT8_DENSE)):
        for s, need in goals.items():
            ours, dense = summary.get((shape, s, fmt, 1, f"{fmt} {top}")), summary.get((shape, s, fmt, 1, peer))
            if ours and dense:
                r = dense / ours
                rows.append(f"| {fmt} {shape} at {s:.0%}: >= {need}x {peer} | {r:.2f}x | {'met' if r >= need else 'NOT met'} |")
    return rows


NM_PATTERNS = {"2:4": (2, 4), "1:4": (1, 4), "4:8": (4, 8)}


def _nm_pruned(w: np.ndarray, kept: int, group: int) -> np.ndarray:
    """w with all but the `kept` largest magnitudes of every `group` consecutive values along K zeroed."""
    n, k = w.shape
    g = w.reshape(n, k // group, group).copy()
    np.put_along_axis(g, np.argsort(np.abs(g), axis=-1)[..., : group - kept], 0, axis=-1)
    return g.reshape(n, k)


def _nm_section(emit: Callable[[str], None], shapes: list[tuple[int, ...]], threads: list[int], tiers: list[str],
                top: str, rounds: int, min_s: float, read_probe: str | None, fma_probe: str | None,
                fma_peak: float | None, summary: dict[tuple[Any, ...], float]) -> None:
    rng = np.random.default_rng(1)
    dense_kernel = _core.dense_f32_select(top)
    for m, k, n in shapes:
        if k % 8:
            emit(f"(N:M skipped for K = {k}: the benchmark prunes whole groups of 8)\n")
            continue
        w_full = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        wt = np.ascontiguousarray(w_full.T)
        pd = _core.pack_dense_f32(w_full, dense_kernel)
        for fmt, (kept, group) in NM_PATTERNS.items():
            w_dense = _nm_pruned(w_full, kept, group)
            w = ec.SparseWeight.from_float(w_dense, format=fmt)
            want = linear_sparse(x[:2], w_dense)
            tol = 1e-5 * (np.abs(x[:2]).astype(np.float64) @ np.abs(w_dense).T.astype(np.float64)) + 1e-30
            for tier in tiers:
                with use_isa(tier):
                    if not (np.abs(ec.linear(x[:2], w) - want) <= tol).all():
                        raise AssertionError(f"{fmt} {tier} differs from the oracle at {(m, k, n)}")
            for t in threads:
                ec.set_num_threads(t)
                cands: dict[str, Callable[[], Any]] = {}
                for tier in tiers:
                    def ours(tier: str = tier) -> Any:
                        with use_isa(tier):
                            return ec.linear(x, w)
                    cands[f"{fmt} {tier}"] = ours
                cands["dense_f32 (ours)"] = lambda: _core.linear_dense_f32(pd, x, None, 0)
                cands["numpy fp32 dense"] = lambda: x @ wt
                reads = {}
                if m <= 4 and read_probe and t == 1:
                    reads = {READ: _aligned_bytes(w.nbytes), DENSE_READ: _aligned_bytes(w_full.nbytes)}
                    for name, buf in reads.items():
                        cands[name] = lambda buf=buf: _core.read_once(read_probe, buf)
                with blas_threads(t):
                    res = _measure(cands, rounds, min_s)
                read_s = {name: res.pop(name) for name in reads}
                emit(f"## ({m}, {k}, {n}), {fmt} ({w.nbytes / 2**20:.1f} MiB; dense {w_full.nbytes / 2**20:.1f} MiB), "
                     f"{t} thread{'s' if t > 1 else ''}\n")
                emit("| implementation | ms | GFLOPS (dense-eq.) | weight GB/s | % of limit | vs numpy dense | vs dense_f32 |")
                emit("|---|---|---|---|---|---|---|")
                for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                    is_nm = c.startswith(fmt)
                    nbytes = w.nbytes if is_nm else w_full.nbytes
                    limit = read_s.get(READ if is_nm else DENSE_READ)
                    if limit:
                        pct = f"{100 * limit / sec:.0f}% of read bw"
                    elif fma_peak:
                        flops = 2 * m * (w.nnz if is_nm else w_full.size)
                        pct = f"{100 * flops / sec / (fma_peak * t):.0f}% of {fma_probe}"
                    else:
                        pct = ""
                    emit(f"| {c} | {sec * 1e3:.3f} | {2 * m * k * n / sec / 1e9:.1f} | {nbytes / sec / 1e9:.1f} | {pct} | "
                         f"{res['numpy fp32 dense'] / sec:.2f}x | {res['dense_f32 (ours)'] / sec:.2f}x |")
                    summary[((m, k, n), fmt, t, c)] = sec
                for name, nbytes in ((READ, w.nbytes), (DENSE_READ, w_full.nbytes)):
                    if name in read_s:
                        emit(f"| ({name}: one read of {nbytes / 2**20:.1f} MiB) | {read_s[name] * 1e3:.3f} | | "
                             f"{nbytes / read_s[name] / 1e9:.1f} | 100% | | |")
                emit("")


def _nm_targets(summary: dict[tuple[Any, ...], float], top: str) -> list[str]:
    rows = []
    shape = (1, 4096, 4096)
    ours = summary.get((shape, "2:4", 1, f"2:4 {top}"))
    for peer in ("dense_f32 (ours)", "numpy fp32 dense"):
        other = summary.get((shape, "2:4", 1, peer))
        if ours and other:
            r = other / ours
            rows.append(f"| fp32 2:4 {shape}: >= 1.6x {peer} | {r:.2f}x | {'met' if r >= 1.6 else 'NOT met'} |")
    return rows


def _auto_section(emit: Callable[[str], None], shapes: list[tuple[int, ...]], sparsities: list[float], rounds: int,
                  min_s: float) -> list[float]:
    """format='auto' against every layout of the same weight, timed together: auto's time / the best."""
    emit("## format='auto' against the best layout of the same weight (1 thread)\n")
    emit("Each weight is pruned unstructured and by 4 x 1 / 1 x 4 blocks; auto chose at pack time (its own short "
         "timing, rows = M); here every layout of the weight is timed again together (the fastest of the rounds, as "
         "auto itself decides: other work on the CPU only adds time), and auto's pick is compared with the fastest.\n")
    emit("| shape | dtype | pruning | sparsity | auto chose | auto ms | best layout | best ms | auto / best |")
    emit("|---|---|---|---|---|---|---|---|---|")
    ec.set_num_threads(1)
    ratios: list[float] = []
    noise: list[float] = []
    rng = np.random.default_rng(1)
    for m, k, n in shapes:
        w_full = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
        for s in sparsities:
            for dtype, prunings in (("float32", {"unstructured": (1, 1), "4x1 blocks": (4, 1)}),
                                    ("int8", {"unstructured": (1, 1), "1x4 blocks": (1, 4)})):
                for label, block in prunings.items():
                    w_dense = _pruned(rng, w_full, s, block)
                    auto = ec.SparseWeight.from_float(w_dense, format="auto", dtype=dtype, rows=m)
                    # auto's pick is that layout: the same object stands for it (two copies of one layout
                    # would only measure noise and cache placement)
                    same = auto.auto["same_blocks"]  # int8: the other layout, packed to the same blocks
                    layouts = list(auto.auto["seconds"]) + ([same] if same else [])
                    cands = {f: auto if f == auto.format else ec.SparseWeight.from_float(w_dense, format=f, dtype=dtype)
                             for f in layouts}
                    runs = {f: (lambda c=c: ec.linear(x, c)) for f, c in cands.items()}
                    with blas_threads(1):
                        res = _measure(runs, rounds, min_s, min)
                    t_auto = res[auto.format]
                    best = min(res, key=res.__getitem__)
                    ratio = f"{t_auto / res[best]:.3f}"
                    if same:
                        # Both run one kernel on the same packed bytes: their gap is this run's noise,
                        # not a choice auto could get wrong, so it is shown but not held to the target.
                        ratio += " (one kernel: noise)"
                        noise.append(max(res.values()) / min(res.values()))
                    else:
                        ratios.append(t_auto / res[best])
                    emit(f"| {(m, k, n)} | {dtype} | {label} | {s:.0%} | {auto.format} | {t_auto * 1e3:.3f} | {best} | "
                         f"{res[best] * 1e3:.3f} | {ratio} |")
    emit("")
    if noise:
        emit(f"int8 csr and bsr1x4 of one weight pack to the same 1 x 4 blocks (one kernel on the same bytes); "
             f"format='auto' times only the smaller. Their timed gap here, up to {100 * (max(noise) - 1):.1f}% "
             f"(median {100 * (float(np.median(noise)) - 1):.1f}%), is what noise alone does to two copies of one layout.\n")
    return ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    p.add_argument("--section", choices=["all", "pruned", "nm"], default="all",
                   help="pruned (csr/bsr, float32 and int8) weights, N:M weights, or both (default)")
    args = p.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    sparsities = [0.5, 0.9] if args.quick else SPARSITIES
    all_threads = _core.default_num_threads()
    threads = sorted({1, all_threads}) if not args.threads else [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (3 if args.quick else 5)
    min_s = 0.005 if args.quick else 0.02
    tiers = [t for t in LADDER[1:] if _core.tier_support(t)[0]]
    top = tiers[-1] if tiers else LADDER[0]
    read_probe = next((q["name"] for q in reversed(_core.peak_probes()) if q["runs_here"]), None)
    fma_probe = FP32_PROBE.get(_core.arch())
    fma_peak = _core.peak_ops(fma_probe, 0.3) if fma_probe else None
    int8_probe = int8_probe_for(top)
    int8_peak = _core.peak_ops(int8_probe, 0.3) if int8_probe else None
    if args.output is None and not args.quick:
        suffix = {"all": "sparse", "pruned": "sparse-pruned", "nm": "sparse-nm"}[args.section]
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-{suffix}.md")

    out: list[str] = []
    emit = out.append
    emit(f"# edgecompress sparse (pruned, N:M) weight benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- method: interleaved rounds, median of {rounds}; GFLOPS = 2 x M x K x N / time (dense-equivalent); "
         "numpy's BLAS capped at the row's thread count (threadpoolctl)")
    if fma_peak:
        emit(f"- {fma_probe} peak (one core): {fma_peak / 1e9:.1f} GFLOPS; useful FLOPs = 2 x M x stored values")
    if int8_peak:
        emit(f"- {int8_probe} peak (one core): {int8_peak / 1e9:.1f} GOPS (the int8 layouts' limit)")
    emit("")
    summary: dict[tuple[Any, ...], float] = {}
    auto_rows: list[float] = []
    if args.section in ("all", "pruned"):
        rng = np.random.default_rng(0)
        for m, k, n in shapes:
            w_full = rng.standard_normal((n, k)).astype(np.float32)
            x = rng.standard_normal((m, k)).astype(np.float32)
            w8 = ec.Int8Weight.from_float(w_full)
            for s in sparsities:
                for fmt, (layout, dtype, block) in LAYOUTS.items():
                    w_dense = _pruned(rng, w_full, s, block)
                    w = ec.SparseWeight.from_float(w_dense, format=layout, dtype=dtype)
                    for tier in tiers:
                        with use_isa(tier):
                            got = ec.linear(x[:2], w)
                        if dtype == "int8":
                            ok = np.array_equal(got, linear_int8(x[:2], w._dense_blocks(), w.scale))
                        else:
                            tol = 1e-5 * (np.abs(x[:2]).astype(np.float64) @ np.abs(w_dense).T.astype(np.float64)) + 1e-30
                            ok = (np.abs(got - linear_sparse(x[:2], w_dense)) <= tol).all()
                        if not ok:
                            raise AssertionError(f"sparse {fmt} {tier} differs from the oracle at {(m, k, n)}")
                    for t in threads:
                        ec.set_num_threads(t)
                        cands: dict[str, Callable[[], Any]] = {}
                        for tier in tiers:
                            def ours(tier: str = tier) -> Any:
                                with use_isa(tier):
                                    return ec.linear(x, w)
                            cands[f"{fmt} {tier}"] = ours
                        wt = np.ascontiguousarray(w_dense.T)
                        cands["numpy fp32 dense"] = lambda: x @ wt
                        cands[INT8_DENSE] = lambda: ec.linear(x, w8)
                        if fmt == "csr":
                            cands.update(_peers(x, w_dense, t))
                        if m <= 4 and read_probe and t == 1:
                            buf = _aligned_bytes(w.nbytes)
                            cands[READ] = lambda buf=buf: _core.read_once(read_probe, buf)
                        with blas_threads(t):
                            res = _measure(cands, rounds, min_s)
                        read_s = res.pop(READ, None)
                        emit(f"## ({m}, {k}, {n}), {fmt} at {s:.0%} (stored {w.sparsity:.1%} sparse, {w.nbytes / 2**20:.1f} MiB), "
                             f"{t} thread{'s' if t > 1 else ''}\n")
                        emit("| implementation | ms | GFLOPS (dense-eq.) | weight GB/s | % of limit | vs numpy dense | vs our int8 dense |")
                        emit("|---|---|---|---|---|---|---|")
                        dense, dense8 = res["numpy fp32 dense"], res[INT8_DENSE]
                        for c, sec in sorted(res.items(), key=lambda kv: kv[1]):
                            gbs = pct = ""
                            if c.startswith(fmt):
                                gbs = f"{w.nbytes / sec / 1e9:.1f}"
                                if read_s:
                                    pct = f"{100 * read_s / sec:.0f}% of read bw"
                                elif dtype == "int8" and int8_peak:
                                    pct = f"{100 * 2 * m * w.nnz / sec / (int8_peak * t):.0f}% of {int8_probe}"
                                elif dtype == "float32" and fma_peak:
                                    pct = f"{100 * 2 * m * w.nnz / sec / (fma_peak * t):.0f}% of {fma_probe}"
                            emit(f"| {c} | {sec * 1e3:.3f} | {2 * m * k * n / sec / 1e9:.1f} | {gbs} | {pct} | {dense / sec:.2f}x | "
                                 f"{dense8 / sec:.2f}x |")
                            summary[((m, k, n), s, fmt, t, c)] = sec
                        if read_s:
                            emit(f"| (limit: one read of the {w.nbytes / 2**20:.1f} MiB weight) | {read_s * 1e3:.3f} | | "
                                 f"{w.nbytes / read_s / 1e9:.1f} | 100% | |")
                        emit("")
        auto_rows = _auto_section(emit, shapes, sparsities, rounds, min_s)
    if args.section in ("all", "nm"):
        _nm_section(emit, shapes, threads, tiers, top, rounds, min_s, read_probe, fma_probe, fma_peak, summary)
    emit("## Targets (one thread, this run)\n")
    emit("| target | this run | |")
    emit("|---|---|---|")
    out.extend(_targets(summary, top))
    out.extend(_nm_targets(summary, top))
    worst = max(auto_rows, default=None)
    if worst is not None:
        emit(f"| format='auto' never > 5% slower than the best layout of its weight | worst {100 * (worst - 1):+.1f}% "
             f"over {len(auto_rows)} weights with distinct layouts | {'met' if worst <= 1.05 else 'NOT met'} |")
    emit("")
    write_report(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
