"""Conv2d layer benchmark: writes benchmarks/results/<cpu>-conv.md.

    python benchmarks/bench_conv.py                               # ResNet-18 layers, batch 1 and 8, 1 thread and all
    python benchmarks/bench_conv.py --quick                       # smoke run
    python benchmarks/bench_conv.py --formats int8 --batches 1 --threads 1

Each compressed Conv2d module (built by ``from_float``: int8 per channel, int4 in groups of 32, float32
sparse at 50% magnitude pruning in the layout timed fastest, low rank at half the parameters) next to
torch's fp32 nn.Conv2d on the same input, NCHW and channels last, on the conv layer shapes of ResNet-18
(random weights). Method: interleaved rounds; each round calls every implementation 3 times in a row
and keeps the last 2 (the first call pays for the page faults that the others' large allocations
leave behind), median. Every module's output is checked against torch's convolution of the weight
the module holds (dequantized): the error column is the largest of these relative errors.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import edgecompress as ec
from edgecompress import _core
from edgecompress import nn as enn
from edgecompress.bench import _command_line, blas_threads, cpu_slug, write_report
from edgecompress.timing import interleaved_rounds

# name, in, out, kernel, stride, padding, input side
SHAPES = [
    ("stem 7x7/2, 3->64, 224", 3, 64, 7, 2, 3, 224),
    ("3x3, 64, 56", 64, 64, 3, 1, 1, 56),
    ("3x3/2, 64->128, 56", 64, 128, 3, 2, 1, 56),
    ("3x3, 128, 28", 128, 128, 3, 1, 1, 28),
    ("3x3, 256, 14", 256, 256, 3, 1, 1, 14),
    ("3x3, 512, 7", 512, 512, 3, 1, 1, 7),
    ("1x1/2, 64->128, 56", 64, 128, 1, 2, 0, 56),
    ("1x1/2, 256->512, 14", 256, 512, 1, 2, 0, 14),
]
QUICK_SHAPES = [("3x3, 32, 16", 32, 32, 3, 1, 1, 16), ("1x1/2, 32->64, 16", 32, 64, 1, 2, 0, 16)]
FORMATS = ["int8", "int4-g32", "sparse-50", "lowrank-0.5"]
MAX_ERROR = 0.05  # int8 activations: ~1e-2; float32 formats: ~1e-6


def _pruned(conv: nn.Conv2d, fraction: float) -> nn.Conv2d:
    pruned = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        w = conv.weight.detach()
        pruned.weight.copy_(w * (w.abs() > w.abs().flatten().kthvalue(int(fraction * w.numel())).values))
    return pruned


def build(fmt: str, conv: nn.Conv2d, rows: int) -> enn.CompressedModule:
    """The compressed module of one format; ``rows``: the GEMM rows the layer sees (for the sparse layout choice)."""
    if fmt == "int8":
        return enn.Int8Conv2d.from_float(conv)
    if fmt == "int4-g32":
        return enn.Int4Conv2d.from_float(conv, group_size=32)
    if fmt == "sparse-50":
        return enn.SparseConv2d.from_float(_pruned(conv, 0.5), format="auto", rows=rows)
    n, k = conv.out_channels, conv.weight[0].numel()
    return enn.LowRankConv2d.from_float(conv, rank=max(1, n * k // (2 * (n + k))))


def held_weight(m: enn.CompressedModule) -> torch.Tensor:
    """The (O, C, kh, kw) float weight a compressed module (one group) stands for."""
    w = torch.from_numpy(m.weight.to_float())
    kh, kw = m.kernel_size
    if m.patch_order == "chw":
        return w.reshape(m.out_channels, m.in_channels, kh, kw)
    return w.reshape(m.out_channels, kh, kw, m.in_channels).permute(0, 3, 1, 2)


def _blocks_median(cands: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    # Each turn: one untimed call (the previous candidate's memory left behind), then two timed ones.
    times = interleaved_rounds(cands, rounds, warmup=0, samples=2, before=lambda k: cands[k]())
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated, of: " + ", ".join(FORMATS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="two small layers, batch 1, one thread")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    formats = args.formats.split(",")
    if set(formats) - set(FORMATS):
        p.error(f"--formats: unknown {sorted(set(formats) - set(FORMATS))}; expected some of {FORMATS}")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    all_threads = _core.default_num_threads()
    threads = [1] if args.quick else ([int(t) for t in args.threads.split(",")] if args.threads else sorted({1, all_threads}))
    rounds = 2 if args.quick else args.rounds
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-conv.md")

    out: list[str] = []
    emit = out.append
    emit(f"# edgecompress Conv2d benchmark: {_core.cpu_model()} ({_core.arch()})\n")
    emit(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    emit(f"- command: `{_command_line()}`")
    emit(f"- torch {torch.__version__}; method: interleaved rounds of 3 calls each, median of the last 2 of "
         f"{rounds} rounds; cells: ms (speed-up over torch fp32 on the same input layout)")
    emit("")
    for b in batches:
        for t in threads:
            torch.set_num_threads(t)
            ec.set_num_threads(t)
            emit(f"## batch {b}, {t} thread{'s' if t > 1 else ''}\n")
            emit("| layer | input | torch fp32 | " + " | ".join(formats) + " | max error |")
            emit("|---|---|---|" + "---|" * len(formats) + "---|")
            for name, cin, cout, k, s, pad, side in shapes:
                torch.manual_seed(0)
                conv = nn.Conv2d(cin, cout, k, s, pad, bias=False).eval()
                ho = (side + 2 * pad - k) // s + 1
                modules = {f: build(f, conv, b * ho * ho) for f in formats}
                x = torch.randn(b, cin, side, side)
                for layout, xin in (("NCHW", x), ("channels last", x.contiguous(memory_format=torch.channels_last))):
                    cands: dict[str, Callable[[], Any]] = {"torch": lambda xin=xin: conv(xin)}
                    cands.update({f: (lambda m=m, xin=xin: m(xin)) for f, m in modules.items()})
                    with torch.inference_mode(), blas_threads(t):
                        error = 0.0
                        for m in modules.values():
                            want = F.conv2d(xin, held_weight(m), None, m.stride, m.padding)
                            error = max(error, float((m(xin) - want).norm() / want.norm()))
                        if error > MAX_ERROR:
                            raise AssertionError(f"{name}: a module's relative error {error:.2e} > {MAX_ERROR}")
                        res = _blocks_median(cands, rounds)
                    cells = [f"{res[f] * 1e3:.2f} ({res['torch'] / res[f]:.2f}x)" for f in formats]
                    emit(f"| {name} | {layout} | {res['torch'] * 1e3:.2f} | " + " | ".join(cells) + f" | {error:.1e} |")
            emit("")
    write_report(out, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
