"""Splitting a program between a device and a server: the planner's cut against every cut measured end
to end, edge-only and cloud-only: writes benchmarks/results/<cpu>-split.md.

    python benchmarks/bench_split.py                     # both models
    python benchmarks/bench_split.py --models resnet18   # ResNet-18 (static int8), one 224 x 224 image

Both sides run on this machine: the device on 1 thread, the server on 2 (a slow device, a faster
server). The link is emulated: 1, 10 and 100 Mbit/s with a 20 ms round trip; a request's time is the
head's measured time (encoding the cut tensors included), the round trip and the real encoded bytes
(up: the cut tensors and the program inputs the tail reads; down: the output as float32) over the
bandwidth, then the tail's measured time (decoding included). The planner predicts from per-node
profiles (``engine.node_seconds`` at each thread count) and the same byte counts.

Wire compression: the cut tensors as per-channel int8 + zstd against float32; the end output's
error is max |y_split - y| / max |y| over the whole program's output.

Models: the MiniLM-sized encoder (int8, 1 x 128 tokens) and ResNet-18 (random weights from
``engine.zoo``, static int8 calibrated on 4 random images, one 224 x 224 image per request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

import edgecompress as ec
from edgecompress import engine
from edgecompress.bench import cpu_slug, write_report
from edgecompress.engine.split_cli import measure_cut, timed

HERE = os.path.dirname(os.path.abspath(__file__))
BANDWIDTHS = {"1 Mbit/s": 1e6 / 8, "10 Mbit/s": 10e6 / 8, "100 Mbit/s": 100e6 / 8}
RTT = 0.020


def minilm():
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                           intermediate_size=1536, vocab_size=30522)).eval()
    ids = np.random.default_rng(0).integers(1000, 30000, (1, 128))
    mask = np.ones_like(ids)
    return engine.export(model, {"input_ids": ids, "attention_mask": mask}, recipe="int8"), [ids, mask]


def resnet18():
    import torch

    from edgecompress.engine import zoo

    model = zoo.build("resnet18")
    rng = np.random.default_rng(0)
    calib = [torch.from_numpy(rng.standard_normal((4, 3, 224, 224)).astype(np.float32))]
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    return engine.export(model, torch.from_numpy(x), "int8-static", calibration_data=calib), [x]


MODELS = {"minilm": ("a MiniLM-sized encoder (int8, 1 x 128 tokens)", minilm),
          "resnet18": ("ResNet-18 (static int8, 1 x 3 x 224 x 224)", resnet18)}


def section(key: str, rounds: int) -> list[str]:
    """One model's table: every cut measured, the planner's choice, edge-only and cloud-only."""
    title, build = MODELS[key]
    dev_t, srv_t = 1, 2
    program, examples = build()
    whole = program(*examples)
    down = len(engine.encode(whole, "fp32"))
    ec.set_num_threads(dev_t)
    device = engine.node_seconds(program, *examples)
    ec.set_num_threads(srv_t)
    server = engine.node_seconds(program, *examples)
    # every cut, measured: head (+ encode) on the device, tail (+ decode) on the server
    measured = {}
    ratio, err = {}, {}
    for c in engine.cuts(program, *examples):
        m = measure_cut(program, list(c.values), examples, dev_t, srv_t, "int8", "zstd", rounds)
        measured[c.after] = (m["head"], m["tail"], m["up"])
        fp32 = sum(len(engine.encode(engine.decode(msg), "fp32")) for msg in m["messages"])
        ratio[c.after] = fp32 / max(1, sum(map(len, m["messages"])))
        err[c.after] = float(np.abs(m["output"] - whole).max() / np.abs(whole).max())
    t_edge = timed(lambda: program(*examples), dev_t, rounds)
    t_cloud = timed(lambda: program(*examples), srv_t, rounds)
    up_cloud = sum(len(engine.encode(a, "int8", "zstd")) for a in examples)
    lines = [f"## {title}", "",
             "| link | planner's choice | predicted ms | measured ms | measured best | best ms | planner vs best "
             "| edge-only ms | cloud-only ms | best vs better of edge/cloud |", "|" + "---|" * 10]
    for label, bw in BANDWIDTHS.items():
        p = engine.plan(program, examples, bw, RTT, device, server, "int8", "zstd")
        total = {k: th + RTT + (up + down) / bw + tt for k, (th, tt, up) in measured.items()}
        edge = t_edge
        cloud = t_cloud + RTT + (up_cloud + down) / bw
        options = dict(total, edge=edge, cloud=cloud)
        best_key = min(options, key=options.get)
        choice = p.best
        key = choice.where if choice.where != "split" else choice.after
        if choice.where == "split" and choice.values not in {tuple(c.values) for c in engine.cuts(program, *examples)}:
            # the min-cut's choice (no cut of the order): measured the same way
            m = measure_cut(program, list(choice.values), examples, dev_t, srv_t, "int8", "zstd", rounds)
            key = "min-cut"
            options[key] = m["head"] + RTT + (m["up"] + down) / bw + m["tail"]
        got = options[key]
        name = lambda k: k if isinstance(k, str) else f"after {program.nodes[k].name}"
        lines.append(f"| {label} | {name(key)} | {choice.seconds * 1e3:.1f} | {got * 1e3:.1f} | {name(best_key)} | "
                     f"{options[best_key] * 1e3:.1f} | {got / options[best_key]:.3f}x | {edge * 1e3:.1f} | {cloud * 1e3:.1f} | "
                     f"{min(edge, cloud) / options[best_key]:.2f}x |")
    ks = sorted(ratio)
    lines += ["", f"Wire compression over the {len(ks)} cuts: int8 + zstd is {min(ratio.values()):.2f}x to "
              f"{max(ratio.values()):.2f}x smaller than float32 (median {statistics.median(ratio.values()):.2f}x); the "
              f"end output's error {min(err.values()):.2e} to {max(err.values()):.2e} of its magnitude (median "
              f"{statistics.median(err.values()):.2e})."]
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    keys = [k for k in args.models.split(",") if k]
    unknown = [k for k in keys if k not in MODELS]
    if unknown or not keys:
        ap.error(f"--models: expected some of {', '.join(MODELS)}, got {args.models!r}")
    lines = [f"# Splitting a model between a device and a server: {ec.cpu_info()['model']}", "",
             f"Device: 1 thread; server: 2 threads (this machine); link emulated with a {RTT * 1e3:.0f} ms round trip; "
             f"cut tensors as per-channel int8 + zstd; medians of {args.rounds} runs. The planner predicts from per-node "
             "profiles and the encoded bytes; every cut of the program's order is measured end to end.", ""]
    for k in keys:
        lines += section(k, args.rounds)
    write_report(lines, args.output or os.path.join(HERE, "results", f"{cpu_slug()}-split.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
