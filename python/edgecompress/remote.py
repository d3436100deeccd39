"""Clients of ``edgecompress serve`` (and of any server speaking the same protocols), on the standard
library's HTTP client:

- ``RemoteProgram(url, name)``: a served program called like a local one, ``program(x=array, ...)``
  (Open Inference Protocol v2, JSON tensors);
- ``RemoteLLM(url, name=None)``: ``generate(prompt, ...)`` and ``chat(messages, ...)`` over the
  OpenAI-compatible endpoints, ``stream=True`` yielding the text as it arrives.

A 4xx or 5xx answer raises ``RemoteError`` with the server's message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["RemoteError", "RemoteLLM", "RemoteProgram"]

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

    def __init__(self, url: str, name: str, timeout: float = 60.0) -> None:
        self.url, self.name, self.timeout = url.rstrip("/"), name, timeout

    def metadata(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/models/{self.name}", timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RemoteError(e.code, e.read().decode(errors="replace")) from None

    def __call__(self, **inputs: np.ndarray) -> Any:
        tensors = []
        for name, a in inputs.items():
            a = np.asarray(a)
            if a.dtype not in _DATATYPES:
                raise TypeError(f"{name}: expected one of {', '.join(map(str, _DATATYPES))}, got {a.dtype}")
            tensors.append({"name": name, "shape": list(a.shape), "datatype": _DATATYPES[a.dtype], "data": a.ravel().tolist()})
        with _post(f"{self.url}/v2/models/{self.name}/infer", {"inputs": tensors}, self.timeout) as r:
            body = json.loads(r.read())
        outs = [np.asarray(o["data"], dtype=_NUMPY.get(o["datatype"], np.float32)).reshape(o["shape"])
                for o in body["outputs"]]
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
