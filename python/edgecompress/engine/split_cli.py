"""``edgecompress split MODEL --bandwidth 10Mbit --rtt 20ms``: the plan for a saved program, its
predicted latency and its latency measured over an emulated link, next to edge-only and cloud-only.

Both sides run on this machine: the device with ``--device-threads`` (1), the server with
``--server-threads`` (every CPU). The link is emulated: a measured latency is the head's measured
time, then the round trip and the encoded bytes over the bandwidth as computed delays, then the tail's
measured time; the bytes are those of the real encoded messages.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from typing import Any

import numpy as np

__all__ = ["measure", "measure_cut", "measure_generation", "parse_bandwidth", "parse_rtt", "run", "run_llm", "timed"]


def parse_bandwidth(text: str) -> float:
    """'10Mbit' -> bytes per second (kbit, Mbit, Gbit; kB, MB, GB)."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgG]?)(bit|b|B|Byte|byte)?(/s|ps)?\s*", str(text))
    if not m:
        raise ValueError(f"--bandwidth: expected a number with a unit such as 10Mbit or 5MB, got {text!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    per_bit = m.group(3) in (None, "bit", "b")
    value = float(m.group(1)) * scale / (8 if per_bit else 1)
    if value <= 0:
        raise ValueError(f"--bandwidth: expected more than 0, got {text!r}")
    return value


def parse_rtt(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|us)?\s*", str(text))
    if not m:
        raise ValueError(f"--rtt: expected a time such as 20ms or 0.1s, got {text!r}")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "us": 1e-6, None: 1e-3}[m.group(2)]


def _examples(program: Any, dims: str) -> list[np.ndarray]:
    sizes = {}
    for part in filter(None, dims.split(",")):
        key, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--dims: expected name=size pairs, got {part!r}")
        sizes[key.strip()] = int(value)
    rng = np.random.default_rng(0)
    out = []
    for i in program.inputs:
        shape = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in i.dims)
        if i.dtype == "float32":
            out.append(rng.standard_normal(shape).astype(np.float32))
        else:  # ids 0 and masks 1: valid for any embedding table
            out.append(np.ones(shape, np.int64) if "mask" in i.name else np.zeros(shape, np.int64))
    return out


def timed(fn: Any, threads: int, rounds: int = 7) -> float:
    """Median seconds of ``fn`` on ``threads`` threads, after one untimed call."""
    import edgecompress as ec

    before = ec.get_num_threads()
    ec.set_num_threads(threads)
    try:
        fn()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    finally:
        ec.set_num_threads(before)


def measure_cut(program: Any, values: list[str], examples: list[np.ndarray], device_threads: int,
                server_threads: int, mode: str, codec: Any, rounds: int = 7) -> dict[str, Any]:
    """A split at ``values``, measured: the head and the encoding of its cut tensors on the device's
    threads, the decoding and the tail on the server's; the bytes that go up (the cut tensors and the
    program inputs the tail reads); the output of the split run."""
    from .split import decode, encode, split

    head, tail = split(program, list(values), *examples)
    named = dict(zip((i.name for i in program.inputs), examples))
    hin = {i.name: named[i.name] for i in head.inputs}

    def run_head() -> list[bytes]:
        mid = head(**hin)
        return [encode(v, mode, codec) for v in (mid if isinstance(mid, tuple) else (mid,))]

    msgs = run_head()
    extra = {i.name: named[i.name] for i in tail.inputs if i.name in named}
    up = sum(map(len, msgs)) + sum(len(encode(a, mode, codec)) for a in extra.values())
    # program inputs the tail reads cross the link as well (float ones through the same encoding)
    tin = {k: decode(encode(a, mode, codec)) if a.dtype == np.float32 else a for k, a in extra.items()}

    def run_tail() -> Any:
        return tail(**tin, **{v: decode(m) for v, m in zip(values, msgs)})

    return {"head": timed(run_head, device_threads, rounds), "tail": timed(run_tail, server_threads, rounds),
            "up": up, "messages": msgs, "output": run_tail()}


def measure(program: Any, option: Any, examples: list[np.ndarray], device_threads: int, server_threads: int,
            bandwidth: float, rtt: float, mode: str, codec: Any) -> float:
    """End-to-end seconds of one option over the emulated link (see the module's description)."""
    from .split import decode, encode

    outs = program(*examples)
    down = sum(len(encode(o, "fp32")) for o in (outs if isinstance(outs, tuple) else (outs,)))
    if option.where == "edge":
        return timed(lambda: program(*examples), device_threads)
    if option.where == "cloud":
        msgs = [encode(a, mode, codec) for a in examples]
        wire = rtt + (sum(map(len, msgs)) + down) / bandwidth
        return timed(lambda: program(*[decode(m) if a.dtype == np.float32 else a for m, a in zip(msgs, examples)]),
                     server_threads) + wire
    m = measure_cut(program, list(option.values), examples, device_threads, server_threads, mode, codec)
    return m["head"] + rtt + (m["up"] + down) / bandwidth + m["tail"]


def run(args: argparse.Namespace) -> int:
    import edgecompress as ec
    from edgecompress import engine

    from .split import node_seconds, plan

    try:
        bandwidth, rtt = parse_bandwidth(args.bandwidth), parse_rtt(args.rtt)
        args.wire = args.wire or "int8"
        program = engine.load(args.model)
        examples = _examples(program, args.dims)
        server_threads = args.server_threads or ec.get_num_threads()
        before = ec.get_num_threads()
        ec.set_num_threads(args.device_threads)
        device = node_seconds(program, *examples)
        ec.set_num_threads(server_threads)
        server = node_seconds(program, *examples)
        ec.set_num_threads(before)
        p = plan(program, examples, bandwidth, rtt, device, server, args.wire, args.codec)
    except (ValueError, TypeError, OSError) as e:
        print(f"edgecompress split: {e}", file=sys.stderr)
        return 1
    print(f"{args.model}: {len(program.nodes)} nodes; device {args.device_threads} thread(s), server {server_threads}; "
          f"cut tensors as {args.wire}{' + ' + args.codec if args.codec else ''}")
    print(p.table())
    shown = [p.option("edge"), p.option("cloud")] + ([p.best] if p.best.where == "split" else [])
    print(f"\n{'':24s} {'predicted ms':>13s} {'measured ms':>12s}")
    for o in shown:
        got = measure(program, o, examples, args.device_threads, server_threads, bandwidth, rtt, args.wire, args.codec)
        label = o.where if o.where != "split" else f"split after {o.node}"
        print(f"{label[:24]:24s} {o.seconds * 1e3:13.2f} {got * 1e3:12.2f}")
    print("(measured: both sides on this machine, the link emulated: round trip and bytes / bandwidth as delays)")
    return 0


# ---- language models: split by layers ----

def measure_generation(llm: Any, prompt: np.ndarray, new: int, threads: int, link: Any = None) -> float:
    """Seconds of one generation on ``llm`` (a whole model, or the device's side of a split): the
    prompt as one call, then ``new`` tokens one call each (greedy, no stop), on ``threads`` threads;
    ``link`` (remote.Link): each call also waits what the link would (cloud-only: ids up, the top
    logits down)."""
    import edgecompress as ec

    before = ec.get_num_threads()
    ec.set_num_threads(threads)
    try:
        llm.reset()
        t0 = time.perf_counter()
        logits = llm._eval(prompt, False)[-1]
        if link is not None:
            link.transfer(prompt.nbytes + 16, 64 * 12)
        for _ in range(new):
            logits = llm._eval(np.array([int(np.argmax(logits))], np.int64), False)[-1]
            if link is not None:
                link.transfer(8 + 16, 64 * 12)
        return time.perf_counter() - t0
    finally:
        ec.set_num_threads(before)
        llm.reset()


def run_llm(args: argparse.Namespace) -> int:
    """The split command for a GGUF model: how many decoder layers to keep on the device for one
    generation of ``--prompt-tokens`` then ``--new-tokens``, predicted from per-layer profiles on each
    side, and the plan's choice measured with edge-only and cloud-only (both sides on this machine,
    the link emulated by ``remote.Link``)."""
    import edgecompress as ec

    from ..llm import load
    from ..llm.split import LayerServer, layer_seconds, plan_layers
    from ..remote import Link

    wire = args.wire or "fp16"
    try:
        bandwidth, rtt = parse_bandwidth(args.bandwidth), parse_rtt(args.rtt)
        if args.prompt_tokens < 1 or args.new_tokens < 0:
            raise ValueError("--prompt-tokens: expected >= 1 and --new-tokens >= 0")
        n_ctx = args.prompt_tokens + args.new_tokens + 1
        llm = load(args.model, n_ctx=n_ctx)
        server_threads = args.server_threads or ec.get_num_threads()
        before = ec.get_num_threads()
        sides = []
        for threads in (args.device_threads, server_threads):
            ec.set_num_threads(threads)
            sides.append((layer_seconds(llm.program, args.prompt_tokens, 0),
                          layer_seconds(llm.program, 1, args.prompt_tokens)))
        ec.set_num_threads(before)
        p = plan_layers(sides[0], sides[1], llm.hparams.n_embd, args.prompt_tokens, args.new_tokens, bandwidth, rtt,
                        wire)
    except (ValueError, TypeError, OSError) as e:
        print(f"edgecompress split: {e}", file=sys.stderr)
        return 1
    print(f"{args.model}: {llm.hparams.n_layer} layers; device {args.device_threads} thread(s), server {server_threads}; "
          f"a generation of {args.prompt_tokens} prompt tokens then {args.new_tokens} new ones; the residual stream as "
          f"{wire}, the top 64 logits back")
    print(p.table())
    prompt = np.random.default_rng(0).integers(4, llm.hparams.n_vocab, args.prompt_tokens).astype(np.int64)
    link = Link(bandwidth, rtt)
    got = {"edge": measure_generation(llm, prompt, args.new_tokens, args.device_threads),
           0: measure_generation(llm, prompt, args.new_tokens, server_threads, link)}
    best_split = min((k for k in p.seconds if isinstance(k, int) and k > 0), key=p.seconds.get)
    dev = load(args.model, n_ctx=n_ctx).offload(best_split, LayerServer(llm), wire=wire, link=link)
    dev.remote.server_threads = server_threads
    got[best_split] = measure_generation(dev, prompt, args.new_tokens, args.device_threads)
    print(f"\n{'':24s} {'predicted s':>12s} {'measured s':>11s}")
    for k, t in got.items():
        label = {0: "cloud-only", "edge": "edge-only"}.get(k, f"{k} layers on the device")
        print(f"{label:24s} {p.seconds[k]:12.3f} {t:11.3f}" + ("  (the plan's choice)" if k == p.best else ""))
    print("(measured: both sides on this machine, the link emulated: round trip and bytes / bandwidth as delays)")
    return 0
