"""Cutting a program between a device and a server, and the cut tensors on the wire.

``split(program, cut, *example_inputs)`` cuts at a set of values (any cut of the graph, not only
between layers): the head computes them from the program's inputs, the tail computes the program's
outputs from them (and from any program input it reads itself). ``head(...)`` then ``tail(...)``
equals the whole program bit for bit. ``cuts(program, *example_inputs)`` lists the cuts after each node
of the program's order, with the bytes that cross at each.

``encode(array, mode, codec)`` / ``decode(data)``: a cut tensor as bytes: float32 values as they are
("fp32"), as float16 ("fp16"), or as int8 with one float32 scale per channel of the last axis, max|x| / 127
("int8": each value within scale / 2 of the original); int64 values (ids, masks) always exactly;
optionally compressed with zstd (``zstandard``) or lz4 (``lz4``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .ops import OPS
from .program import Input, Program

__all__ = ["Cut", "Option", "SplitPlan", "cuts", "decode", "encode", "min_cut", "node_seconds", "plan", "split"]

_MAGIC = b"ECW1"
MODES = ("fp32", "fp16", "int8")
CODECS = (None, "zstd", "lz4")
MAX_HEADER = 1 << 16


def _node_weights(n: Any) -> set[str]:
    names = {x for x in n.inputs if x}
    names.update(n.weight_names)
    names.update(n.attrs.get("halves", []))
    return names


def split(program: Program, cut: Any, *example_args: Any, specs: dict[str, tuple[int, str]] | None = None,
          **example_kwargs: Any) -> tuple[Program, Program]:
    """(head, tail) of ``program`` cut at the values named in ``cut``; the example inputs (or ``specs``:
    name -> (rank, dtype) of each cut value) fix the cut values' ranks and dtypes (their sizes stay
    free: the tail takes any)."""
    if isinstance(cut, str) or not all(isinstance(c, str) for c in cut) or not cut:
        raise TypeError("cut: expected a non-empty list of value names")
    cut = list(dict.fromkeys(cut))
    producer = {o: n for n in program.nodes for o in n.outputs}
    views = _views(program)
    for c in cut:
        if c not in producer:
            raise ValueError(f"cut: {c!r} is not a value computed by a node (values: {', '.join(list(producer)[:8])}, ...)")
        if c in views:
            raise ValueError(f"cut: {c!r} is a view (reshape) of another value; cut at that value instead")
    head_ids: set[int] = set()
    stack = list(cut)
    while stack:  # the ancestors of the cut values
        n = producer.get(stack.pop())
        if n is not None and id(n) not in head_ids:
            head_ids.add(id(n))
            stack.extend(x for x in n.inputs if x)
    head_nodes = [n for n in program.nodes if id(n) in head_ids]
    tail_nodes = [n for n in program.nodes if id(n) not in head_ids]
    tail_defined = {o for n in tail_nodes for o in n.outputs}
    inputs = {i.name: i for i in program.inputs}
    needed = {x for n in tail_nodes for x in n.inputs if x and x not in tail_defined and x not in program.weights}
    missing = sorted(needed - set(cut) - set(inputs))
    if missing:
        raise ValueError(f"cut: the tail also needs {', '.join(missing)}, computed before the cut; add them to the cut")
    lost = [o for o in program.outputs if o not in tail_defined and o not in cut]
    if lost:
        raise ValueError(f"cut: the program outputs {', '.join(lost)} are computed before the cut; add them to the cut")
    for o in program.outputs:
        if o in views and _base(o, views) in cut:  # the tail would return a view of its own input
            raise ValueError(f"cut: the program output {o!r} is a view (reshape) of {_base(o, views)!r}, which "
                             "the cut sends to the tail; cut before the node that computes it")
    if specs is not None:
        if set(specs) != set(cut):
            raise ValueError(f"specs: expected the rank and dtype of each cut value {cut}, got {sorted(specs)}")
        shapes = {c: ((0,) * int(r), str(d)) for c, (r, d) in specs.items()}
    else:
        shapes = program.shapes(*example_args, **example_kwargs)
    for c in cut:
        if shapes[c][1] not in ("float32", "int64"):
            raise ValueError(f"cut: {c!r} is {shapes[c][1]}, not float32 or int64")

    def used(nodes: list[Any]) -> set[str]:
        return set().union(*(_node_weights(n) for n in nodes)) if nodes else set()

    head_used = used(head_nodes)
    head = Program([i for i in program.inputs if i.name in head_used], cut, head_nodes,
                   {k: w for k, w in program.weights.items() if k in head_used}, dict(program.info, split="head"))
    tail_used = used(tail_nodes)
    tail_inputs = [Input(c, shapes[c][1], tuple(f"{c}:{d}" for d in range(len(shapes[c][0])))) for c in cut]
    tail_inputs += [i for i in program.inputs if i.name in tail_used and i.name not in cut]
    # a cut value the tail itself does not read but the program returns passes through untouched
    passthrough = [o for o in program.outputs if o in cut]
    if passthrough:
        raise ValueError(f"cut: program outputs {', '.join(passthrough)} would be tail inputs; cut after them")
    tail = Program(tail_inputs, program.outputs, tail_nodes,
                   {k: w for k, w in program.weights.items() if k in tail_used}, dict(program.info, split="tail"))
    for part in (head, tail):  # the packed weights made so far are shared (a released program's are all it has)
        part._packed.update({key: p for key, p in program._packed.items() if key[0] in part.weights})
    return head, tail


def _views(program: Program) -> dict[str, str]:
    """{view: the value it reads} for the program's views (nodes that lower to nothing: reshapes)."""
    return {n.outputs[0]: n.inputs[0] for n in program.nodes if OPS[n.op].lower is None}


def _base(v: str, views: dict[str, str]) -> str:
    """The value a view (or a view of a view, ...) reads."""
    while v in views:
        v = views[v]
    return v


@dataclass(frozen=True)
class Cut:
    """The cut after node ``after`` (its index in program order): the values that cross and their bytes
    as float32 / int64."""

    after: int
    node: str
    values: tuple[str, ...]
    nbytes: int


def cuts(program: Program, *example_args: Any, **example_kwargs: Any) -> list[Cut]:
    """Every cut between consecutive nodes of the program's order: the values computed so far that a
    later node or the outputs read (program inputs are available on both sides). Left out: a cut after
    which a program output would be a view of a value that crosses (the tail would only reshape its
    input: a model returning a flattened feature map, cut before the flatten)."""
    shapes = program.shapes(*example_args, **example_kwargs)
    views = _views(program)
    last_read: dict[str, int] = {}
    for k, n in enumerate(program.nodes):
        for x in n.inputs:
            if x:
                last_read[x] = k
    for o in program.outputs:
        last_read[o] = len(program.nodes)
    out = []
    defined: list[str] = []
    for k, n in enumerate(program.nodes[:-1]):
        defined.extend(n.outputs)
        live = []
        for v in defined:
            if last_read.get(v, -1) > k:
                live.append(_base(v, views))  # a view crosses as the value it views
        live = list(dict.fromkeys(live))
        if any(o in views and _base(o, views) in live for o in program.outputs):
            continue  # an output is a view of a value that would cross: the tail could only return its input
        nbytes = sum(int(np.prod(shapes[v][0])) * np.dtype(shapes[v][1]).itemsize for v in live)
        out.append(Cut(k, n.name, tuple(live), nbytes))
    return out


def encode(a: np.ndarray, mode: str = "int8", codec: str | None = None) -> bytes:
    """``a`` (float32 or int64) as bytes for the wire; see the module's description."""
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.int64):
        raise TypeError(f"a: expected a float32 or int64 array, got {getattr(a, 'dtype', type(a).__name__)}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if codec not in CODECS:
        raise ValueError(f"codec: expected one of {', '.join(map(str, CODECS))}, got {codec!r}")
    a = np.ascontiguousarray(a)
    head: dict[str, Any] = {"dtype": str(a.dtype), "shape": list(a.shape), "mode": mode, "codec": codec}
    if a.dtype == np.int64 or mode == "fp32":
        head["mode"] = "raw"
        payload = a.tobytes()
    elif mode == "fp16":
        if np.abs(a).max(initial=0.0) > 65504:
            raise ValueError("a: values beyond float16's range (65504); use mode 'int8' or 'fp32'")
        payload = a.astype(np.float16).tobytes()
    else:
        if not np.isfinite(a).all():
            raise ValueError("a: NaN or Inf values cannot be sent as int8")
        rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
        scale = (np.abs(rows).max(axis=0) / 127).astype(np.float32)
        safe = np.where(scale > 0, scale, 1).astype(np.float32)
        q = np.clip(np.rint(rows / safe), -127, 127).astype(np.int8)
        payload = scale.tobytes() + q.tobytes()
    payload = _compress(payload, codec)
    h = json.dumps(head).encode()
    return _MAGIC + struct.pack("<I", len(h)) + h + payload


def decode(data: bytes) -> np.ndarray:
    """The array ``encode`` wrote (int8 and fp16 values dequantized to float32); ValueError for bytes
    that are not a well-formed message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8 or data[:4] != _MAGIC:
        raise ValueError("data: not an edgecompress wire message")
    (n,) = struct.unpack_from("<I", data, 4)
    if n > MAX_HEADER or 8 + n > len(data):
        raise ValueError("data: header length out of range")
    try:
        head = json.loads(data[8:8 + n])
        dtype, shape, mode, codec = head["dtype"], [int(d) for d in head["shape"]], head["mode"], head["codec"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"data: unreadable header ({e})") from None
    if dtype not in ("float32", "int64") or mode not in ("raw", "fp16", "int8") or codec not in CODECS \
            or len(shape) > 8 or any(d < 0 for d in shape):
        raise ValueError(f"data: header fields out of range: {head}")
    count = int(np.prod(shape, dtype=object))
    width = shape[-1] if shape else 1
    expect = {"raw": count * np.dtype(dtype).itemsize, "fp16": 2 * count, "int8": 4 * width + count}[mode]
    payload = _decompress(data[8 + n:], codec, expect)
    if len(payload) != expect:
        raise ValueError(f"data: expected {expect} payload bytes, got {len(payload)}")
    if mode == "raw":
        return np.frombuffer(payload, dtype=dtype).reshape(shape).copy()
    if mode == "fp16":
        return np.frombuffer(payload, dtype=np.float16).astype(np.float32).reshape(shape)
    scale = np.frombuffer(payload[:4 * width], dtype=np.float32)
    q = np.frombuffer(payload[4 * width:], dtype=np.int8).reshape(-1, width)
    return (q.astype(np.float32) * scale).reshape(shape)


def _compress(payload: bytes, codec: str | None) -> bytes:
    if codec is None:
        return payload
    if codec == "zstd":
        try:
            import zstandard
        except ImportError:
            raise ValueError("codec 'zstd' needs the zstandard package: pip install zstandard") from None
        return zstandard.ZstdCompressor(level=3).compress(payload)
    try:
        import lz4.frame
    except ImportError:
        raise ValueError("codec 'lz4' needs the lz4 package: pip install lz4") from None
    return lz4.frame.compress(payload)


def _decompress(payload: bytes, codec: str | None, expect: int) -> bytes:
    """At most ``expect`` + 1 bytes come out, whatever the input claims (a decompression bomb stops)."""
    if codec is None:
        return payload
    try:
        if codec == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=expect + 1)
        import lz4.frame

        d = lz4.frame.LZ4FrameDecompressor()
        out = d.decompress(payload, max_length=expect + 1)
        if not d.eof:
            raise ValueError("the lz4 frame is incomplete")
        return out
    except ImportError:
        raise ValueError(f"codec {codec!r}: its package is not installed") from None
    except Exception as e:  # noqa: BLE001 -- the codecs raise their own error types for corrupt data
        raise ValueError(f"data: corrupt {codec} payload ({type(e).__name__}: {e})") from None


# ---- choosing the cut ----

@dataclass(frozen=True)
class Option:
    """One way to run the program: ``where`` "edge" (all on the device), "cloud" (all on the server)
    or "split" after node ``after``; its predicted seconds and the bytes it sends each way."""

    where: str
    after: int
    node: str
    values: tuple[str, ...]
    up_bytes: int
    down_bytes: int
    seconds: float


@dataclass
class SplitPlan:
    options: list[Option]
    bandwidth: float  # bytes per second
    rtt: float
    forced: Option | None = None  # an option chosen by hand (SplitRunner.force)

    @property
    def best(self) -> Option:
        return self.forced if self.forced is not None else min(self.options, key=lambda o: o.seconds)

    def option(self, where: str) -> Option:
        return next(o for o in self.options if o.where == where)

    def table(self, top: int = 8) -> str:
        edge, cloud, best = self.option("edge"), self.option("cloud"), self.best
        lines = [f"link: {self.bandwidth * 8 / 1e6:g} Mbit/s, round trip {self.rtt * 1e3:g} ms",
                 f"{'where':24s} {'up KB':>9s} {'down KB':>8s} {'predicted ms':>13s}"]
        ranked = sorted(self.options, key=lambda o: o.seconds)[:top]
        for o in [edge, cloud] + [o for o in ranked if o.where == "split"]:
            label = o.where if o.where != "split" else f"split after {o.node}"
            lines.append(f"{label[:24]:24s} {o.up_bytes / 1e3:9.1f} {o.down_bytes / 1e3:8.1f} {o.seconds * 1e3:13.2f}")
        verdict = {"edge": "edge-only is best", "cloud": "cloud-only is best"}.get(
            best.where, f"split after {best.node} is best: {min(edge.seconds, cloud.seconds) / best.seconds:.2f}x the better "
                        f"of edge-only and cloud-only")
        return "\n".join(lines + [verdict])


def node_seconds(program: Program, *example_args: Any, rounds: int = 10) -> list[float]:
    """Seconds per program node (its native nodes summed; a view costs nothing), from ``profile``."""
    per = program.profile(*example_args, rounds=rounds)["by_node"]
    return [per.get(n.name, 0.0) for n in program.nodes]


def plan(program: Program, example_inputs: list[np.ndarray], bandwidth: float, rtt: float, device: list[float],
         server: list[float], mode: str = "int8", codec: str | None = None) -> SplitPlan:
    """Predicted latency of edge-only, cloud-only and a split after each node: device seconds of the
    nodes up to the cut, the round trip, the cut values' encoded bytes over ``bandwidth`` (bytes/s),
    server seconds of the rest and the outputs' bytes back. ``device`` / ``server``: seconds per node
    (``node_seconds`` on each side, or given)."""
    if not (bandwidth > 0 and rtt >= 0):
        raise ValueError(f"expected bandwidth > 0 and rtt >= 0, got {bandwidth}, {rtt}")
    if len(device) != len(program.nodes) or len(server) != len(program.nodes):
        raise ValueError(f"expected one time per node ({len(program.nodes)}) on each side")
    env = _values(program, example_inputs)
    outs = [env[o] for o in program.outputs]
    down = sum(len(encode(o, "fp32")) for o in outs)
    up_in = sum(len(encode(a, mode, codec)) for a in example_inputs)  # cloud-only sends every input
    total_dev, total_srv = float(sum(device)), float(sum(server))
    opts = [Option("edge", -1, "", (), 0, 0, total_dev),
            Option("cloud", -1, "", (), up_in, down, rtt + (up_in + down) / bandwidth + total_srv)]
    dev_prefix = np.cumsum(device)
    srv_suffix = total_srv - np.cumsum(server)
    inputs = dict(zip((i.name for i in program.inputs), example_inputs))
    input_bytes = {k: len(encode(a, mode, codec)) for k, a in inputs.items()}
    read_after: list[set[str]] = [set() for _ in program.nodes]  # program inputs read after node k
    for k in range(len(program.nodes) - 2, -1, -1):
        read_after[k] = read_after[k + 1] | {x for x in program.nodes[k + 1].inputs if x in inputs}
    for c in cuts(program, *example_inputs):
        # the cut values, and the program inputs the tail reads (they start on the device too)
        up = sum(len(encode(env[v], mode, codec)) for v in c.values) + sum(input_bytes[x] for x in read_after[c.after])
        t = float(dev_prefix[c.after]) + rtt + (up + down) / bandwidth + float(srv_suffix[c.after])
        opts.append(Option("split", c.after, c.node, c.values, up, down, t))
    # the best cut of the whole graph (it may keep branches on both sides that no cut of the order does)
    sizes = {x: len(encode(env[x], mode, codec)) for x in env}
    sizes.update(input_bytes)
    cost, on_device = min_cut(program, device, server, {x: b / bandwidth for x, b in sizes.items()},
                              {o: len(encode(env[o], "fp32")) / bandwidth for o in program.outputs})
    if 0 < len(on_device) < len(program.nodes):
        producer = {o: k for k, n in enumerate(program.nodes) for o in n.outputs}
        crossing = sorted({x for k, n in enumerate(program.nodes) if k not in on_device for x in n.inputs
                           if x in producer and producer[x] in on_device})
        views = _views(program)
        crossing = list(dict.fromkeys(_base(x, views) for x in crossing))
        tail_nodes = [k for k in range(len(program.nodes)) if k not in on_device]
        inputs_read = {x for k in tail_nodes for x in program.nodes[k].inputs if x in inputs}
        up = sum(sizes[x] for x in crossing) + sum(input_bytes[x] for x in inputs_read)
        t = (sum(device[k] for k in on_device) + rtt + (up + down) / bandwidth + sum(server[k] for k in tail_nodes))
        key = tuple(crossing)
        if all(o.values != key for o in opts) and crossing:
            last = max(on_device)
            opts.append(Option("split", last, program.nodes[last].name + " (min-cut)", key, up, down, t))
    return SplitPlan(opts, bandwidth, rtt)


def _values(program: Program, example_inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of the program on the example inputs, computed natively: a program whose outputs
    are all of its values (views are returned as the values they view)."""
    views = _views(program)
    names = [o for n in program.nodes for o in n.outputs if o not in views]
    probe = Program(program.inputs, names, program.nodes, program.weights, program.info)
    got = probe(*example_inputs)
    env = dict(zip(names, got if isinstance(got, tuple) else (got,)))
    for n in program.nodes:
        if n.outputs[0] in views:
            env[n.outputs[0]] = env[n.inputs[0]]
    return env


# ---- the best cut of a DAG: a minimum s-t cut (DADS) ----

def min_cut(program: Program, device: list[float], server: list[float], transfer: dict[str, float],
            back: dict[str, float]) -> tuple[float, set[int]]:
    """The split of least predicted latency (the round trip left out) over every cut of the graph,
    not only those between consecutive nodes: the nodes that run on the device (indices), and its
    cost. A minimum s-t cut on the graph of DADS (Hu et al., INFOCOM 2019): source = device, sink =
    server; node v costs ``server[v]`` when cut from the source and ``device[v]`` when cut from the
    sink; each value x costs ``transfer[x]`` once when its producer is on the device and a reader on
    the server (an auxiliary node per value); ``back[x]`` when an output x is computed on the server;
    infinite reverse edges forbid a value flowing from the server back to the device. Program inputs
    start on the device."""
    n = len(program.nodes)
    inf = float("inf")
    producer = {o: k for k, node in enumerate(program.nodes) for o in node.outputs}
    readers: dict[str, list[int]] = {}
    for k, node in enumerate(program.nodes):
        for x in node.inputs:
            if x and (x in producer or x in {i.name for i in program.inputs}):
                readers.setdefault(x, []).append(k)
    values = sorted(readers)
    # graph nodes: 0 = source, 1 = sink, 2 + k program nodes, 2 + n + j the value nodes
    size = 2 + n + len(values)
    cap: dict[tuple[int, int], float] = {}

    def add(a: int, b: int, c: float) -> None:
        cap[(a, b)] = cap.get((a, b), 0.0) + c
        cap.setdefault((b, a), 0.0)

    for k in range(n):
        add(0, 2 + k, server[k])
        add(2 + k, 1, device[k])
    for o, c in back.items():
        if o in producer:
            add(0, 2 + producer[o], c)
    for j, x in enumerate(values):
        a = 2 + n + j
        src = 2 + producer[x] if x in producer else 0
        add(src, a, transfer.get(x, 0.0))
        for w in readers[x]:
            add(a, 2 + w, inf)
            if x in producer:
                add(2 + w, 2 + producer[x], inf)  # a reader on the device forces its producer there
    adj: list[list[int]] = [[] for _ in range(size)]
    for (a, b) in cap:
        adj[a].append(b)
    flow = 0.0
    while True:  # Edmonds-Karp: shortest augmenting paths
        parent = [-1] * size
        parent[0] = 0
        queue = [0]
        for u in queue:
            for v in adj[u]:
                if parent[v] < 0 and cap[(u, v)] > 1e-15:
                    parent[v] = u
                    queue.append(v)
        if parent[1] < 0:
            break
        push, v = inf, 1
        while v != 0:
            push = min(push, cap[(parent[v], v)])
            v = parent[v]
        if push == inf:
            raise ValueError("min_cut: an infinite path (a program input read on both sides?)")
        v = 1
        while v != 0:
            cap[(parent[v], v)] -= push
            cap[(v, parent[v])] += push
            v = parent[v]
        flow += push
    seen = {0}
    queue = [0]
    for u in queue:
        for v in adj[u]:
            if v not in seen and cap[(u, v)] > 1e-15:
                seen.add(v)
                queue.append(v)
    return flow, {k for k in range(n) if 2 + k in seen}
