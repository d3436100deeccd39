"""``edgecompress demo digits``: train a small CNN on scikit-learn's bundled digits, compress it with
each recipe, run every compressed model on the engine (``edgecompress.engine.export``: one native
program, BatchNorms folded, no torch at run time), and compare accuracy, size and latency with torch
fp32 and torch's dynamic int8. A recipe that loses accuracy badly in one shot (sparse-75) is shown
beside the recovery the algorithms offer: the same sparsity reached gradually while fine-tuning.

Needs the ``demo`` extra (torch, scikit-learn; matplotlib for the plot). Nothing is downloaded.
Latency is the median of warm forward passes of the whole model, timed in interleaved rounds (every
model once per round, so drift on a shared machine hits all alike) on ``--threads`` threads for
torch, edgecompress and the BLAS numpy uses (when threadpoolctl is installed). Sizes are the weight
bytes of the Linear and Conv2d layers (biases are float32 everywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

from .timing import interleaved_rounds

DEFAULT_RECIPES = ("int8", "int8-static", "int4-g32", "nf4", "sparse-50", "sparse-75+int8", "2:4", "lowrank-0.5")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                   help=f"comma-separated recipes (default: {','.join(DEFAULT_RECIPES)})")
    p.add_argument("--quick", action="store_true", help="train 1 epoch and time few rounds (a smoke run)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; 1 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="threads for torch, edgecompress and BLAS (default 1)")
    p.add_argument("--guard", action="store_true",
                   help="keep float32 the layers that run slower compressed: compress()'s speed guard at "
                        "batch 1 and the engine's own per-layer timing (export's faster=); off by default "
                        "so that every recipe's formats are shown as they are")
    p.add_argument("--plot", default="edgecompress-demo.png",
                   help="PNG of accuracy vs size and vs latency, written to this path (default: "
                        "edgecompress-demo.png in the current directory; needs matplotlib); '' to skip")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialization and training")


def _program_bytes(program: Any) -> int:
    """Weight bytes of an engine program's products and depthwise filters (biases excluded)."""
    names = {name for n in program.nodes for name in n.weight_names}
    names |= {n.inputs[1] for n in program.nodes if n.op == "depthwise_conv2d"}
    return sum(int(program.weights[k].nbytes) for k in names)


class _Engine:
    """An engine program called like the torch models here (a tensor in, a tensor out)."""

    def __init__(self, program: Any) -> None:
        self.program = program

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(self.program(x.numpy()))

    def eval(self) -> "_Engine":
        return self


def _gradual(model: Any, data: Any, sparsity: float, epochs: int, seed: int) -> Any:
    """A copy of model pruned to `sparsity` on the cubic schedule while fine-tuning on the training
    digits (edgecompress.compress.prune.GradualPruning), masks made permanent."""
    from .compress import digits
    from .compress.prune import GradualPruning

    m = copy.deepcopy(model)
    steps = epochs * ((len(data.y_train) + 63) // 64)  # digits.fit's batches of 64
    # blocks of 1 x 4 along K: the pattern of the sparse+int8 recipes, so compress keeps this mask
    pruner = GradualPruning(m, data.x_train[:1], sparsity, end_step=max(1, int(steps * 0.7)), frequency=5,
                            pattern="1x4")
    digits.fit(m, data, epochs=epochs, lr=1e-3, seed=seed, after_step=pruner.step)
    pruner.finalize()
    return m.eval()


def _weight_bytes(model: Any) -> int:
    """Weight bytes of the model's Linear / Conv2d layers, compressed or not."""
    import torch
    from torch import nn

    from .nn import CompressedModule

    total = 0
    for m in model.modules():
        if isinstance(m, CompressedModule):
            total += m.nbytes
        elif type(m) in (nn.Linear, nn.Conv2d):
            total += 4 * m.weight.numel()
        elif hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):  # torch dynamic int8
            w = m.weight()
            total += w.numel() + (8 if w.qscheme() == torch.per_tensor_affine else 8 * w.shape[0])
    return total


def _torch_dynamic_int8(model: Any) -> Any:
    import torch

    with warnings.catch_warnings():  # torch.ao.quantization announces its own deprecation
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def _latencies(models: dict[str, Any], x: Any, rounds: int) -> dict[str, float]:
    """Median seconds per forward pass of each model on ``x``, in interleaved rounds."""
    import torch

    calls: dict[str, Callable[[], Any]] = {name: (lambda m=m: m(x)) for name, m in models.items()}
    with torch.no_grad():
        times = interleaved_rounds(calls, rounds, number=5)
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def _threads(n: int):
    """torch, edgecompress and (with threadpoolctl) numpy's BLAS on ``n`` threads inside."""
    import torch

    from .runtime import get_num_threads, set_num_threads

    before = torch.get_num_threads(), get_num_threads()
    torch.set_num_threads(n)
    set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(n)
        with limits:
            yield
    finally:
        torch.set_num_threads(before[0])
        set_num_threads(before[1])


def run(args: argparse.Namespace) -> int:
    try:
        import torch

        from .compress import digits
        from .compress.one_call import CompressionWarning
        from .compress.recipes import parse_recipe
    except ImportError as e:
        print(f"edgecompress demo digits needs torch and scikit-learn: pip install \"edgecompress[digits]\" ({e})",
              file=sys.stderr)
        return 1
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    try:
        for r in recipes:
            parse_recipe(r, "--recipes")
    except ValueError as e:
        print(f"edgecompress demo: {e}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"edgecompress demo: --threads: expected an int >= 1, got {args.threads}", file=sys.stderr)
        return 2
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 8)
    rounds = 3 if args.quick else 11

    with _threads(args.threads):
        data = digits.load()
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        model = digits.fit(digits.DigitsCNN(), data, epochs=epochs, seed=args.seed)
        print(f"trained DigitsCNN on {len(data.y_train)} digits for {epochs} epochs in "
              f"{time.perf_counter() - t0:.1f} s; test set: {len(data.y_test)} images; {args.threads} thread(s)")
        from .engine import export

        calibration = [data.x_train[i:i + 64] for i in range(0, 256, 64)]
        models: dict[str, Any] = {"torch fp32": model, "torch dynamic int8": _torch_dynamic_int8(model)}
        swapped = {"torch fp32": "-", "torch dynamic int8": "fc*"}
        errors: dict[str, float | None] = {}
        sizes = {"torch fp32": _weight_bytes(model), "torch dynamic int8": _weight_bytes(models["torch dynamic int8"])}
        builds = [("engine float32", model, None)] + [(f"engine {r}", model, r) for r in recipes]
        if "sparse-75+int8" in recipes:
            builds.append(("engine sparse-75+int8 (gradual, fine-tuned)",
                           _gradual(model, data, 0.75, 2 if args.quick else max(2, epochs // 2), args.seed),
                           "sparse-75+int8"))
        for name, source, recipe in builds:
            with warnings.catch_warnings():  # the table shows the error compress() warns about
                warnings.simplefilter("ignore", CompressionWarning)
                program = export(source, data.x_test[:1], recipe, calibration_data=calibration, guard=args.guard,
                                 faster=args.guard)
            models[name] = _Engine(program)
            report = program.report
            swapped[name] = "-" if report is None else f"{len(report.swapped)}/{len(report.layers)}"
            with torch.inference_mode():  # the program's output against the float model's
                want = model(data.x_test[:1]).numpy()
            errors[name] = float(np.linalg.norm(program(data.x_test[:1].numpy()) - want) / np.linalg.norm(want))
            sizes[name] = _program_bytes(program)
        b1 = _latencies(models, data.x_test[:1], rounds)
        b64 = _latencies(models, data.x_test[:64], rounds)
        rows = []
        for name, m in models.items():
            rows.append({"model": name, "swapped": swapped[name], "error": errors.get(name),
                         "accuracy": digits.accuracy(m, data.x_test, data.y_test), "bytes": sizes[name],
                         "b1": b1[name], "b64": b64[name]})
    print(_table(rows, args))
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    from .compress.one_call import WARN_ERROR

    fp32, tq = rows[0], rows[1]
    head = ["model", "layers", "accuracy %", "output err", "weights KB", "size", "batch 1 ms", "batch 64 ms",
            "vs fp32 b1", "vs fp32 b64", "vs torch int8 b1", "vs torch int8 b64"]
    out = [head]
    for r in rows:
        err = "-" if r["error"] is None else f"{r['error']:.3f}" + ("!" if r["error"] > WARN_ERROR else "")
        out.append([r["model"], r["swapped"], f"{r['accuracy']:.2f}", err, f"{r['bytes'] / 1024:.1f}",
                    f"{r['bytes'] / fp32['bytes']:.1%}", f"{r['b1'] * 1e3:.3f}", f"{r['b64'] * 1e3:.3f}",
                    f"{fp32['b1'] / r['b1']:.2f}x", f"{fp32['b64'] / r['b64']:.2f}x",
                    f"{tq['b1'] / r['b1']:.2f}x", f"{tq['b64'] / r['b64']:.2f}x"])
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in out]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = (f"layers: Linear/Conv2d layers swapped; speed guard {'on (batch 1)' if args.guard else 'off'}; "
            "output err: ||y - y_fp32|| / ||y_fp32|| of the logits on the example image ('!': above "
            f"{WARN_ERROR:g}, where compress() warns); 'vs' columns: speedup (> 1 is faster)")
    return "\n".join(lines + [note])


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "bytes", "weight KB"), (axes[1], "b1", "latency at batch 1 (ms)")):
        for r in rows:
            value = r[key] / 1024 if key == "bytes" else r[key] * 1e3
            ax.scatter(value, r["accuracy"])
            ax.annotate(r["model"], (value, r["accuracy"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs size")
    axes[1].set_title("accuracy vs latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot written to {os.path.abspath(path)}")
