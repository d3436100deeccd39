"""How long edgecompress.compress takes, per recipe, on a BERT-base-sized encoder and a ResNet-18-sized
CNN (random weights), and what it makes: whole-model bytes, file bytes, whole-model output error.

    python benchmarks/bench_compress.py [--quick] [--rounds N] [--output FILE]

Each round compresses a fresh copy of the model with every recipe, in turn (interleaved rounds, so that
drift on a shared machine hits every recipe alike), with compress()'s defaults (speed guard on) on one
thread; the table gives the fastest round. "weights s" is the part spent making the canonical weights
of every Linear / Conv2d layer (``from_float`` alone), the rest is capture, guard timing and the
whole-model check. Writes benchmarks/results/<cpu>-compress.md unless --output says otherwise.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import pathlib
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

import edgecompress as ec
from edgecompress.bench import _command_line, cpu_slug, write_report
from edgecompress.compress.recipes import parse_recipe
from edgecompress.timing import interleaved_rounds

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import build  # noqa: E402

RECIPES = ["int8", "int4-g32", "nf4"]
WEIGHT_CLASSES = {"int8": ec.Int8Weight, "int4": ec.Int4Weight}


def _weights_seconds(model: nn.Module, recipe: str) -> float:
    """Seconds to make the canonical weights of every Linear / Conv2d layer with the recipe's options."""
    r = parse_recipe(recipe)
    cls = WEIGHT_CLASSES[r.family]
    t0 = time.perf_counter()
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            cls.from_float(m.weight.detach().reshape(m.weight.shape[0], -1).numpy(), **r.options)
    return time.perf_counter() - t0


def _cpu() -> str:
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    tiers = [t for t, v in ec.cpu_info()["tiers"].items() if v["supported"]]
    return (f"{info.get('model name', 'cpu')} (family {info.get('cpu family')}, model {info.get('model')}); "
            f"tiers {', '.join(tiers)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small models, one round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    output = args.output or str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}-compress.md")
    torch.set_num_threads(1)
    ec.set_num_threads(1)
    lines = [f"# edgecompress.compress: time and result per recipe ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
             "", f"`{_command_line()}`", "", f"CPU: {_cpu()}. One thread (torch and edgecompress); guard on; "
             f"fastest of {1 if args.quick else args.rounds} interleaved round(s).", ""]
    rounds = 1 if args.quick else args.rounds
    for name, batch in (("bert", 1), ("resnet18", 1)):
        model, make_input = build(name, args.quick)
        x = make_input(batch)
        fresh: dict[str, nn.Module] = {}  # each timed call compresses an untouched copy, made untimed
        results = {}

        def fresh_copy(recipe: str) -> None:
            fresh[recipe] = copy.deepcopy(model)

        def run(recipe: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (the report below shows the error it would warn about)
                results[recipe] = ec.compress(fresh[recipe], recipe, example_inputs=x, progress=False)

        times = interleaved_rounds({r: functools.partial(run, r) for r in RECIPES}, rounds, warmup=0,
                                   before=fresh_copy)
        for recipe in RECIPES:  # saving fills the report's file size
            with tempfile.TemporaryDirectory() as tmp:
                ec.save(fresh[recipe], os.path.join(tmp, "m.safetensors"), report=results[recipe])
        weights = {r: _weights_seconds(model, r) for r in RECIPES}
        base = min(times["int8"])
        lines += [f"## {name} ({'quick' if args.quick else 'full size'}), input {tuple(x.shape)}", "",
                  "| recipe | compress s | vs int8 | weights s | swapped | model bytes | of fp32 | file bytes | output error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for recipe in RECIPES:
            rep, t = results[recipe], min(times[recipe])
            lines.append(f"| {recipe} | {t:.2f} | {t / base:.2f}x | {weights[recipe]:.2f} | "
                         f"{len(rep.swapped)}/{len(rep.layers)} | {rep.model_bytes_after} | "
                         f"{rep.model_bytes_after / rep.model_bytes_before:.1%} | {rep.file_bytes} | "
                         f"{rep.model_error:.3g} |")
        lines.append("")
    lines.append("Target (issue: int4-g32 compress time <= 2x int8's): see the 'vs int8' column.")
    write_report(lines, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
