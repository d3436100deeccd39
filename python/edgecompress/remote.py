"""Clients of ``edgecompress serve`` (and of any server speaking the same protocols), on the standard
library's HTTP client:

- ``RemoteProgram(url, name)``: a served program called like a local one, ``program(x=array, ...)``
  (Open Inference Protocol v2, JSON tensors);
- ``RemoteLLM(url, name=None)``: ``generate(prompt, ...)`` and ``chat(messages, ...)`` over the
  OpenAI-compatible endpoints, ``stream=True`` yielding the text as it arrives;
- ``Cascade(device_llm, remote_llm, threshold)``: answers on the device and asks the served (larger)
  model only when the device model's confidence in its answer is below ``threshold``.

A 4xx or 5xx answer raises ``RemoteError`` with the server's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["Cascade", "CascadeAnswer", "Link", "RemoteError", "RemoteLLM", "RemoteProgram", "SplitRunner"]

_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
              np.dtype(np.int32): "INT32", np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8",
              np.dtype(np.bool_): "BOOL"}
_NUMPY = {v: k for k, v in _DATATYPES.items()}


class RemoteError(RuntimeError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _post(url: str, body: dict[str, Any], timeout: float) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            detail = json.loads(text)
            text = str(detail.get("detail", detail.get("error", detail)))
        except ValueError:
            pass
        raise RemoteError(e.code, text) from None


class RemoteProgram:
    """A program served at ``url`` (e.g. http://127.0.0.1:8000) under ``name``."""

    def __init__(self, url: str, name: str, timeout: float = 60.0, binary: bool = True, link: Any = None) -> None:
        self.url, self.name, self.timeout, self.binary, self.link = url.rstrip("/"), name, timeout, binary, link

    def metadata(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{self.name}", timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RemoteError(e.code, e.read().decode(errors="replace")) from None

    def __call__(self, **inputs: np.ndarray) -> Any:
        """The outputs for ``inputs``, sent and received with the binary tensor extension (raw
        little-endian bytes after a JSON header), or as JSON values when ``binary`` is off."""
        outs, _ = self.infer(inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def infer(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None,
              wire: dict[str, bytes] | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
        """One request: ``inputs`` as tensors, ``wire`` as edgecompress wire messages (engine.encode,
        decoded by the server), ``parameters`` as the request's (``cut``: run the program's tail after
        those values). Returns the outputs and the response's JSON (``parameters.server_seconds``:
        the server's compute time). With a ``link``, the request is delayed as that link would."""
        tensors, blobs = [], []
        items = [(k, np.asarray(v), False) for k, v in inputs.items()]
        items += [(k, np.frombuffer(m, np.uint8), True) for k, m in (wire or {}).items()]
        for name, a, is_wire in items:
            if a.dtype not in _DATATYPES:
                raise TypeError(f"{name}: expected one of {', '.join(map(str, _DATATYPES))}, got {a.dtype}")
            t: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": _DATATYPES[a.dtype]}
            params: dict[str, Any] = {"wire": True} if is_wire else {}
            if self.binary or is_wire:
                blob = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                params["binary_data_size"] = len(blob)
                blobs.append(blob)
            else:
                t["data"] = a.ravel().tolist()
            if params:
                t["parameters"] = params
            tensors.append(t)
        request: dict[str, Any] = {"inputs": tensors, "parameters": dict(parameters or {})}
        if self.binary:
            request["parameters"]["binary_data_output"] = True
        header = json.dumps(request).encode()
        binary = bool(blobs)
        req = urllib.request.Request(f"{self.url}/v2/models/{self.name}/infer", data=header + b"".join(blobs),
                                     headers={"content-type": "application/octet-stream" if binary else "application/json",
                                              **({"Inference-Header-Content-Length": str(len(header))} if binary else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = r.read()
                n = r.headers.get("Inference-Header-Content-Length")
        except urllib.error.HTTPError as e:
            raise RemoteError(e.code, e.read().decode(errors="replace")) from None
        if self.link is not None:
            self.link.transfer(len(header) + sum(map(len, blobs)), len(body))
        meta = json.loads(body[:int(n)] if n else body)
        rest, offset, outs = body[int(n):] if n else b"", 0, []
        for o in meta["outputs"]:
            dtype = np.dtype(_NUMPY.get(o["datatype"], np.float32))
            size = (o.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                outs.append(np.frombuffer(rest[offset:offset + size], dtype=dtype.newbyteorder("<"))
                            .astype(dtype).reshape(o["shape"]))
                offset += size
            else:
                outs.append(np.asarray(o["data"], dtype=dtype).reshape(o["shape"]))
        return outs, meta


class Link:
    """An emulated network link for tests and benchmarks on loopback: each request also waits a round
    trip and its bytes over the bandwidth (bytes per second), as a shaper in the client's transport."""

    def __init__(self, bandwidth: float, rtt: float) -> None:
        if not (bandwidth > 0 and rtt >= 0):
            raise ValueError(f"expected bandwidth > 0 and rtt >= 0, got {bandwidth}, {rtt}")
        self.bandwidth, self.rtt = float(bandwidth), float(rtt)

    def transfer(self, up: int, down: int) -> None:
        time.sleep(self.rtt + (up + down) / self.bandwidth)


class SplitRunner:
    """A program run across a device and a server: the head here, the tail on the server that serves
    the whole program (``edgecompress serve``), cut where ``engine.plan`` predicts the lowest latency.

    The device's per-node times are profiled here; the server's are the device's scaled by how much
    faster the server ran the whole program (its reported ``server_seconds``); the round trip is
    measured with health pings and the bandwidth from the first requests. Each call measures the
    bandwidth again (bytes over the time not spent computing) and re-plans when it moved by more than
    ``replan_factor`` since the plan was made (the median of the last three requests' measurements).
    An edge-only plan sends nothing, so it measures nothing: call ``replan`` with a new bandwidth, or
    make a new runner, when the link may have become faster."""

    def __init__(self, program: Any, url: str, name: str, *example_inputs: np.ndarray, mode: str = "int8",
                 codec: str | None = None, link: Link | None = None, replan_factor: float = 2.0,
                 bandwidth: float | None = None, rtt: float | None = None) -> None:
        from .engine import node_seconds

        self.program, self.mode, self.codec, self.factor = program, mode, codec, replan_factor
        self.remote = RemoteProgram(url, name)
        self.remote.link = link
        self.names = [i.name for i in program.inputs]
        self.examples = list(example_inputs)
        self.device = node_seconds(program, *example_inputs)
        self.rtt = rtt if rtt is not None else self._ping()
        # the server's speed and the link's bandwidth, from a whole-program request
        t0 = time.perf_counter()
        _, meta = self.remote.infer(dict(zip(self.names, example_inputs)))
        elapsed = time.perf_counter() - t0
        server_total = float(meta["parameters"]["server_seconds"])
        scale = server_total / max(sum(self.device), 1e-9)
        self.server = [t * scale for t in self.device]
        up = sum(a.nbytes for a in example_inputs)
        self.bandwidth = bandwidth if bandwidth is not None else up / max(elapsed - server_total - self.rtt, 1e-4)
        self.replans = 0
        self._replan()

    def _ping(self) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"{self.remote.url}/v2/health/live", timeout=self.remote.timeout) as r:
                r.read()
            if self.remote.link is not None:
                self.remote.link.transfer(0, 0)
            best = min(best, time.perf_counter() - t0)
        return best

    def replan(self, bandwidth: float | None = None, rtt: float | None = None) -> None:
        """Plan again, for a new ``bandwidth`` (bytes/s) or ``rtt`` when given."""
        if bandwidth is not None:
            self.bandwidth, self._measured = float(bandwidth), []
        if rtt is not None:
            self.rtt = float(rtt)
        self._replan()

    def _replan(self) -> None:
        from .engine import plan, split

        self.plan = plan(self.program, self.examples, self.bandwidth, self.rtt, self.device, self.server,
                         self.mode, self.codec)
        self.planned_bandwidth = self.bandwidth
        best = self.plan.best
        self.head = self.tail_inputs = None
        if best.where == "split":
            self.head, tail = split(self.program, list(best.values), *self.examples)
            self.tail_inputs = [i.name for i in tail.inputs if i.name in self.names]

    def force(self, cut: list[str] | None = None, where: str | None = None) -> None:
        """Run a given way instead of the plan's choice: ``cut`` (a split at those values) or ``where``
        "edge" / "cloud". The next re-plan chooses again."""
        from .engine import split
        from .engine.split import Option

        if (cut is None) == (where is None) or where not in (None, "edge", "cloud"):
            raise ValueError("force: give either cut (value names) or where ('edge' or 'cloud')")
        if where is not None:
            option = self.plan.option(where)
        else:
            option = Option("split", -1, cut[-1], tuple(cut), 0, 0, 0.0)
            self.head, tail = split(self.program, list(cut), *self.examples)
            self.tail_inputs = [i.name for i in tail.inputs if i.name in self.names]
        self.plan.options = [option] + [o for o in self.plan.options if o is not option]
        self.plan.forced = option

    @property
    def where(self) -> str:
        b = self.plan.best
        return b.where if b.where != "split" else f"split after {b.node}"

    def __call__(self, *inputs: np.ndarray) -> Any:
        from .engine import encode

        named = dict(zip(self.names, inputs))
        best = self.plan.best
        if best.where == "edge":
            return self.program(*inputs)
        t0 = time.perf_counter()
        if best.where == "cloud":
            sent = sum(a.nbytes for a in inputs)
            outs, meta = self.remote.infer(named)
        else:
            mid = self.head(**{i.name: named[i.name] for i in self.head.inputs})
            mid = mid if isinstance(mid, tuple) else (mid,)
            t0 = time.perf_counter()  # the network and the server from here
            wire = {v: encode(m, self.mode, self.codec) for v, m in zip(best.values, mid)}
            extra = {k: named[k] for k in self.tail_inputs}
            sent = sum(map(len, wire.values())) + sum(a.nbytes for a in extra.values())
            outs, meta = self.remote.infer(extra, {"cut": list(best.values)}, wire)
        network = time.perf_counter() - t0 - float(meta["parameters"]["server_seconds"]) - self.rtt
        got = sum(o.nbytes for o in outs) + sent
        self._measured = (getattr(self, "_measured", []) + [got / max(network, 1e-4)])[-3:]
        self.bandwidth = float(np.median(self._measured))  # the last three requests' (one slow one does not flip the plan)
        ratio = self.bandwidth / self.planned_bandwidth
        if ratio > self.factor or ratio < 1 / self.factor:
            self.replans += 1
            self._replan()
        return outs[0] if len(outs) == 1 else tuple(outs)


class RemoteLLM:
    """A language model served at ``url`` through the OpenAI-compatible endpoints."""

    def __init__(self, url: str, name: str | None = None, timeout: float = 300.0) -> None:
        self.url, self.name, self.timeout = url.rstrip("/"), name, timeout

    def _run(self, path: str, body: dict[str, Any], stream: bool, chat: bool) -> Any:
        if self.name is not None:
            body["model"] = self.name
        body["stream"] = stream
        if not stream:
            with _post(self.url + path, body, self.timeout) as r:
                choice = json.loads(r.read())["choices"][0]
            return choice["message"]["content"] if chat else choice["text"]
        return self._events(path, body, chat)

    def _events(self, path: str, body: dict[str, Any], chat: bool) -> Iterator[str]:
        with _post(self.url + path, body, self.timeout) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise RemoteError(400, event["error"].get("message", str(event["error"])))
                choice = event["choices"][0]
                text = choice["delta"].get("content", "") if chat else choice["text"]
                if text:
                    yield text

    def generate(self, prompt: str, max_new_tokens: int = 128, stream: bool = False, **sampling: Any) -> Any:
        """The completion of ``prompt`` (options as ``edgecompress.llm.LLM.generate``)."""
        return self._run("/v1/completions", {"prompt": prompt, "max_tokens": max_new_tokens, **sampling}, stream, False)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256, stream: bool = False, **sampling: Any) -> Any:
        """The assistant's reply to ``messages``."""
        return self._run("/v1/chat/completions", {"messages": messages, "max_tokens": max_new_tokens, **sampling},
                         stream, True)


class CascadeAnswer:
    """A cascade's answer: the text, which side gave it ("device" or "server") and the device
    model's confidence in its own answer."""

    def __init__(self, text: str, where: str, confidence: float) -> None:
        self.text, self.where, self.confidence = text, where, confidence

    def __repr__(self) -> str:
        return f"CascadeAnswer(where={self.where!r}, confidence={self.confidence:.3f}, text={self.text[:40]!r})"


class Cascade:
    """A small model on the device, a larger one served: the device answers, and hands the prompt to
    the server when its confidence (the geometric mean of the probabilities of the tokens it chose)
    is below ``threshold``."""

    def __init__(self, device: Any, server: RemoteLLM, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a probability in [0, 1], got {threshold!r}")
        self.device, self.server, self.threshold = device, server, threshold

    def generate(self, prompt: str, max_new_tokens: int = 128, **sampling: Any) -> CascadeAnswer:
        text, confidence = self.device.generate_with_confidence(prompt, max_new_tokens, **sampling)
        if confidence >= self.threshold:
            return CascadeAnswer(text, "device", confidence)
        return CascadeAnswer(self.server.generate(prompt, max_new_tokens, **sampling), "server", confidence)
