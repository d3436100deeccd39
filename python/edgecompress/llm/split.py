"""A language model split by layers between a device and a server, with its KV cache split the same way.

The device runs the embedding and the first ``layers`` decoder layers (the head of the model's program,
``engine.split``) and holds those layers' KV caches; the residual stream after them (two (tokens,
n_embd) float32 values: the running sum and the last layer's output, which the next RMSNorm adds)
crosses the link as wire messages (``engine.encode``: fp16 by default, fp32 where a value is beyond
fp16's range); the server runs the other layers and the output head with its own caches for them, kept
per session, and answers with the ``top_k`` largest logits of each requested position (ids and
values) instead of the whole vocabulary (1 MB a token for Gemma 3). Sampling on the device then sees
those logits only (the others as -inf): exact for greedy decoding and for top-k sampling with
``top_k`` at most the server's.

- ``LLM.offload(layers, server)`` (llm/api.py) turns a loaded model into its device side;
  ``server`` is the URL of ``edgecompress serve MODEL.gguf`` (the same file) or a ``LayerServer``
  in this process (tests, the split command's measurements).
- ``LayerServer(llm)`` is the server side: ``serve.py`` answers ``POST /v2/models/{name}/infer`` with
  ``parameters`` {"layers": k, "session": id, "top_k": K} for a language model with it.
- ``plan_layers`` predicts the latency of a generation (a prompt, then tokens one at a time) at each
  split point from per-layer profiles on each side and the link, next to edge-only and cloud-only.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.split import decode, encode, split

__all__ = ["LayerPlan", "LayerServer", "RemoteLayers", "SessionError", "layer_cut", "layer_seconds", "n_layers", "plan_layers",
           "split_layers"]

MAX_TOP_K = 1024


class SessionError(ValueError):
    """The server holds fewer positions of a session than a request starts at (a new server, or the
    session evicted): the device sends the context again from position 0."""


def n_layers(program: Any) -> int:
    return sum(1 for n in program.nodes if n.name.startswith("blk.") and n.name.endswith(".attn_norm"))


def layer_cut(program: Any, layers: int) -> list[str]:
    """The values that carry the residual stream into decoder layer ``layers`` (into the output norm
    after the last): the cut of a split with ``layers`` layers on the device."""
    total = n_layers(program)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise ValueError(f"layers: expected an int in [1, {total}] (layers on the device), got {layers!r}")
    target = f"blk.{layers}.attn_norm" if layers < total else "output_norm"
    node = next(n for n in program.nodes if n.name == target)
    return [x for x in node.inputs[:2] if x]


def split_layers(program: Any, layers: int) -> tuple[Any, Any]:
    """(head, tail) of a decoder program (llm/model.py) with ``layers`` layers in the head."""
    cut = layer_cut(program, layers)
    return split(program, cut, specs={c: (2, "float32") for c in cut})


def _caches(llm: Any, first: int, last: int) -> dict[str, np.ndarray]:
    from .model import cache_slots

    kvw = llm.hparams.n_head_kv * llm.hparams.head_dim
    out = {}
    for i in range(first, last):
        slots, _ = cache_slots(llm.hparams, i, llm.n_ctx)
        out[f"k{i}"] = np.zeros((slots, kvw), np.float32)
        out[f"v{i}"] = np.zeros((slots, kvw), np.float32)
    return out


def _top(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest logits of each row, largest first: (ids int64, values float32)."""
    k = min(k, logits.shape[1])
    ids = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.int64), np.take_along_axis(vals, order, axis=1)


class LayerServer:
    """The server's side of layer splits of ``llm`` (a loaded ``edgecompress.llm.LLM``): the tail for
    each split point (made once, sharing the model's packed weights) and, per session, the KV caches of
    the tail's layers and how many positions they hold. At most ``max_sessions`` sessions are kept
    (the least recently used goes); requests run one at a time."""

    def __init__(self, llm: Any, max_sessions: int = 8) -> None:
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions: expected an int >= 1, got {max_sessions!r}")
        self.llm, self.max_sessions = llm, max_sessions
        self.total = n_layers(llm.program)
        self._tails: dict[int, tuple[Any, list[str]]] = {}
        self._sessions: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.lock = threading.Lock()

    def tail(self, layers: int) -> tuple[Any, list[str]]:
        if layers not in self._tails:
            cut = layer_cut(self.llm.program, layers)
            self._tails[layers] = (split_layers(self.llm.program, layers)[1], cut)
        return self._tails[layers]

    def run(self, layers: Any, session: Any, arrays: dict[str, np.ndarray], top_k: Any = 64) -> dict[str, np.ndarray]:
        """The tail after ``layers`` layers on ``arrays`` (the cut values, ``pos`` and ``rows``) with
        ``session``'s caches: {"top_ids", "top_logits"} (``top_k`` > 0) or {"logits"} (0). ValueError
        for anything off; a session that holds fewer positions than ``pos`` is a ValueError that says
        so (the device starts over)."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k: expected an int in [0, {MAX_TOP_K}] (0: every logit), got {top_k!r}")
        if not isinstance(session, str) or not 0 < len(session) <= 128:
            raise ValueError(f"session: expected a string of 1 to 128 characters, got {session!r}")
        tail, cut = self.tail(layers)
        expected = set(cut) | {"pos", "rows"}
        if set(arrays) != expected:
            raise ValueError(f"inputs: expected {sorted(expected)}, got {sorted(arrays)}")
        n_embd = self.llm.hparams.n_embd
        tokens = arrays[cut[0]].shape[0] if arrays[cut[0]].ndim == 2 else -1
        for c in cut:
            a = arrays[c]
            if a.dtype != np.float32 or a.shape != (tokens, n_embd) or tokens < 1:
                raise ValueError(f"input {c!r}: expected float32 (tokens, {n_embd}) like the other cut values, "
                                 f"got {a.dtype} {a.shape}")
        pos, rows = arrays["pos"], arrays["rows"]
        if pos.dtype != np.int64 or pos.shape != (1,) or rows.dtype != np.int64 or rows.ndim != 1:
            raise ValueError("inputs: expected pos int64 (1,) and rows int64 (rows,)")
        p = int(pos[0])
        if not 0 <= p <= self.llm.n_ctx - tokens:
            raise ValueError(f"pos: {p} + {tokens} tokens do not fit the context of {self.llm.n_ctx}")
        if rows.size == 0 or rows.min() < 0 or rows.max() >= tokens:
            raise ValueError(f"rows: expected positions in [0, {tokens})")
        with self.lock:
            state = self._sessions.get(session)
            if state is None or state["layers"] != layers:
                if p != 0:
                    have = 0 if state is None else "another split's"
                    raise SessionError(f"session {session!r}: the server holds {have} positions for it, the request "
                                     f"starts at {p}; start over from position 0")
                state = {"layers": layers, "caches": _caches(self.llm, layers, self.total), "tokens": 0}
                self._sessions[session] = state
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session)
            if p > state["tokens"]:
                raise SessionError(f"session {session!r}: the server holds {state['tokens']} positions, the request "
                                 f"starts at {p}; start over from position 0")
            given = dict(arrays, **state["caches"])
            logits = tail(**{i.name: given[i.name] for i in tail.inputs})  # (after the last layer: no pos)
            state["tokens"] = p + tokens
        if top_k == 0:
            return {"logits": logits}
        ids, vals = _top(logits, top_k)
        return {"top_ids": ids, "top_logits": vals}


class RemoteLayers:
    """The device's side of a layer split (made by ``LLM.offload``): the head program with the first
    ``layers`` layers' caches, and the server (a URL or a ``LayerServer``). Called like the whole
    program: (ids, pos, rows) -> logits (rows, n_vocab), -inf outside the server's top ``top_k``.
    ``stats`` counts calls, bytes each way and seconds on each side."""

    def __init__(self, llm: Any, head: Any, layers: int, server: Any, name: str | None, wire: str = "fp16",
                 codec: str | None = None, top_k: int = 64, link: Any = None, timeout: float = 60.0,
                 server_threads: int | None = None) -> None:
        from ..remote import RemoteProgram

        if wire not in ("fp32", "fp16", "int8"):
            raise ValueError(f"wire: expected fp32, fp16 or int8, got {wire!r}")
        encode(np.zeros((1, 1), np.float32), wire, codec)  # an unknown codec or a missing package: now
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k: expected an int in [1, {MAX_TOP_K}], got {top_k!r}")
        self.llm, self.head, self.layers = llm, head, layers
        self.cut = layer_cut(llm.program, layers)
        self.wire, self.codec, self.top_k, self.link = wire, codec, top_k, link
        self.server_threads = server_threads
        if isinstance(server, str):
            self.server: Any = RemoteProgram(server, name or "", timeout=timeout, link=link)
        elif isinstance(server, LayerServer):
            self.server = server
        else:
            raise TypeError(f"server: expected a URL or a LayerServer, got {type(server).__name__}")
        self.caches = _caches(llm, 0, layers)
        self.session = uuid.uuid4().hex
        self.stats = {"calls": 0, "up_bytes": 0, "down_bytes": 0, "device_seconds": 0.0, "server_seconds": 0.0}

    def _message(self, a: np.ndarray) -> bytes:
        try:
            return encode(a, self.wire, self.codec)
        except ValueError:  # beyond fp16's range: this message goes as float32
            return encode(a, "fp32", self.codec)

    def __call__(self, ids: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> np.ndarray:
        from ..remote import RemoteError

        try:
            return self._call(ids, pos, rows)
        except (SessionError, RemoteError) as e:
            if int(pos[0]) == 0 or (isinstance(e, RemoteError) and e.status != 409):
                raise
        # the server lost this session: the context again from position 0 (the head's caches are
        # rewritten with the same values), then this call
        before = np.asarray(self.llm._ids[:int(pos[0])], np.int64)
        self._call(before, np.zeros(1, np.int64), np.array([before.size - 1], np.int64))
        return self._call(ids, pos, rows)

    def _call(self, ids: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        mid = self.head(ids=ids, pos=pos, **self.caches)
        msgs = {c: self._message(v) for c, v in zip(self.cut, mid if isinstance(mid, tuple) else (mid,))}
        self.stats["device_seconds"] += time.perf_counter() - t0
        params = {"layers": self.layers, "session": self.session, "top_k": self.top_k}
        up = sum(map(len, msgs.values())) + pos.nbytes + rows.nbytes
        if isinstance(self.server, LayerServer):
            from .. import get_num_threads, set_num_threads

            arrays = {c: decode(m) for c, m in msgs.items()}
            arrays.update(pos=pos, rows=rows)
            before = get_num_threads()
            t1 = time.perf_counter()
            try:
                if self.server_threads:
                    set_num_threads(self.server_threads)
                out = self.server.run(self.layers, self.session, arrays, self.top_k)
            finally:
                set_num_threads(before)
            self.stats["server_seconds"] += time.perf_counter() - t1
            ids_out, vals = out["top_ids"], out["top_logits"]
            if self.link is not None:
                self.link.transfer(up, ids_out.nbytes + vals.nbytes)
        else:
            outs, meta = self.server.infer({"pos": pos, "rows": rows}, params, wire=msgs)
            got = {o["name"]: a for o, a in zip(meta["outputs"], outs)}
            if "top_ids" not in got or "top_logits" not in got:
                raise ValueError(f"server: expected outputs top_ids and top_logits, got {sorted(got)}")
            ids_out, vals = got["top_ids"], got["top_logits"]
            self.stats["server_seconds"] += float((meta.get("parameters") or {}).get("server_seconds", 0.0))
        self.stats["calls"] += 1
        self.stats["up_bytes"] += up
        self.stats["down_bytes"] += ids_out.nbytes + vals.nbytes
        n_vocab = self.llm.hparams.n_vocab
        if ids_out.shape != (rows.size, min(self.top_k, n_vocab)) or ids_out.min() < 0 or ids_out.max() >= n_vocab:
            raise ValueError(f"server: top_ids of shape {ids_out.shape} do not fit {rows.size} rows of {n_vocab} tokens")
        logits = np.full((rows.size, n_vocab), -np.inf, np.float32)
        np.put_along_axis(logits, ids_out, vals.astype(np.float32), axis=1)
        return logits


# ---- choosing the split point ----

def layer_seconds(program: Any, tokens: int, pos: int, rounds: int = 5) -> np.ndarray:
    """Seconds of each part of a decoder program for a call of ``tokens`` tokens at position ``pos``:
    [embedding, layer 0, ..., layer L-1, output norm + head] (from ``Program.profile``)."""
    from ..engine.split import node_seconds

    total = n_layers(program)
    args: dict[str, np.ndarray] = {"ids": np.zeros(tokens, np.int64), "pos": np.array([pos], np.int64),
                                   "rows": np.array([tokens - 1], np.int64)}
    for spec in program.inputs:  # the caches: (slots, kv width)
        if spec.name not in args:
            args[spec.name] = np.zeros(spec.dims, np.float32)
    per = node_seconds(program, *(args[i.name] for i in program.inputs), rounds=rounds)
    out = np.zeros(total + 2)
    for n, t in zip(program.nodes, per):
        if n.name.startswith("blk."):
            out[1 + int(n.name.split(".")[1])] += t
        elif n.name.startswith("embed"):
            out[0] += t
        else:
            out[-1] += t
    return out


@dataclass(frozen=True)
class LayerPlan:
    """Predicted seconds of one generation (``prompt`` tokens, then ``new`` tokens one at a time) for
    each number of layers on the device: 0 = cloud-only, L = every layer on the device and the head on
    the server, "edge" = all on the device."""

    seconds: dict[Any, float]
    up_bytes: dict[Any, int]
    best: Any

    def table(self) -> str:
        lines = [f"{'layers on the device':22s} {'up KB':>9s} {'predicted s':>12s}"]
        for k, t in self.seconds.items():
            label = {0: "0 (cloud-only)", "edge": "all (edge-only)"}.get(k, str(k))
            lines.append(f"{label:22s} {self.up_bytes[k] / 1e3:9.1f} {t:12.3f}")
        verdict = {0: "cloud-only is best", "edge": "edge-only is best"}.get(self.best, f"{self.best} layers on the "
                                                                                        f"device is best")
        return "\n".join(lines + [verdict])


def plan_layers(device: tuple[np.ndarray, np.ndarray], server: tuple[np.ndarray, np.ndarray], n_embd: int,
                prompt: int, new: int, bandwidth: float, rtt: float, wire: str = "fp16", top_k: int = 64) -> LayerPlan:
    """The prediction: ``device`` / ``server`` are (prompt call, one-token call) ``layer_seconds`` on
    each side; every call of the split crosses the link once (a round trip, the two cut values up as
    ``wire`` messages, the top ``top_k`` ids and logits down); cloud-only sends token ids up instead.
    The prompt is one call and each new token one more."""
    if not (bandwidth > 0 and rtt >= 0) or prompt < 1 or new < 0:
        raise ValueError(f"expected bandwidth > 0, rtt >= 0, prompt >= 1 and new >= 0, got {bandwidth}, {rtt}, "
                         f"{prompt}, {new}")
    total = len(device[0]) - 2
    per_value = {"fp32": 4, "fp16": 2, "int8": 1}[wire]
    down = top_k * 12  # int64 ids and float32 logits of one row

    def call_bytes(tokens: int, k: int) -> int:
        if k == 0:
            return 8 * tokens + 16
        return 2 * (tokens * n_embd * per_value + (4 * n_embd if wire == "int8" else 0) + 64) + 16

    seconds: dict[Any, float] = {"edge": float(device[0].sum() + new * device[1].sum())}
    up_bytes: dict[Any, int] = {"edge": 0}
    for k in range(0, total + 1):
        cut = 1 + k if k else 0  # parts on the device: the embedding and k layers (none for cloud-only)
        t = 0.0
        up = 0
        for tokens, part in ((prompt, 0), (1, 1)):
            calls = 1 if part == 0 else new
            b = call_bytes(tokens, k)
            t += calls * (float(device[part][:cut].sum()) + rtt + (b + down) / bandwidth + float(server[part][cut:].sum()))
            up += calls * b
        seconds[k], up_bytes[k] = t, up
    best = min(seconds, key=seconds.get)
    return LayerPlan(seconds, up_bytes, best)
