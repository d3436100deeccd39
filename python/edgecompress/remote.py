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
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["Cascade", "CascadeAnswer", "RemoteError", "RemoteLLM", "RemoteProgram"]

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

    def __init__(self, url: str, name: str, timeout: float = 60.0, binary: bool = True) -> None:
        self.url, self.name, self.timeout, self.binary = url.rstrip("/"), name, timeout, binary

    def metadata(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{self.name}", timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RemoteError(e.code, e.read().decode(errors="replace")) from None

    def __call__(self, **inputs: np.ndarray) -> Any:
        """The outputs for ``inputs``, sent and received with the binary tensor extension (raw
        little-endian bytes after a JSON header), or as JSON values when ``binary`` is off."""
        tensors, blobs = [], []
        for name, a in inputs.items():
            a = np.asarray(a)
            if a.dtype not in _DATATYPES:
                raise TypeError(f"{name}: expected one of {', '.join(map(str, _DATATYPES))}, got {a.dtype}")
            t: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": _DATATYPES[a.dtype]}
            if self.binary:
                blob = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                t["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                t["data"] = a.ravel().tolist()
            tensors.append(t)
        request: dict[str, Any] = {"inputs": tensors}
        if self.binary:
            request["parameters"] = {"binary_data_output": True}
        header = json.dumps(request).encode()
        req = urllib.request.Request(f"{self.url}/v2/models/{self.name}/infer", data=header + b"".join(blobs),
                                     headers={"content-type": "application/octet-stream" if self.binary else "application/json",
                                              **({"Inference-Header-Content-Length": str(len(header))} if self.binary else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = r.read()
                n = r.headers.get("Inference-Header-Content-Length")
        except urllib.error.HTTPError as e:
            raise RemoteError(e.code, e.read().decode(errors="replace")) from None
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
