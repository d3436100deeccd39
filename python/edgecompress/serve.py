"""``edgecompress serve``: one FastAPI app that serves a saved engine program or a GGUF language model
over HTTP (the ``serve`` extra: fastapi, uvicorn).

- Programs: the Open Inference Protocol v2: ``GET /v2/models/{name}`` (metadata),
  ``POST /v2/models/{name}/infer`` ({"inputs": [{"name", "shape", "datatype", "data"}]}), with the
  binary tensor extension (raw bytes after a JSON header of ``Inference-Header-Content-Length``
  bytes) both ways. A split's server side: request ``parameters.cut`` (value names) runs the
  program's tail after those values (edgecompress.engine.split, cached per cut), and inputs with
  ``parameters.wire`` are edgecompress wire messages (engine.encode) carried as UINT8 tensors. The
  response's ``parameters.server_seconds`` is the compute time.
- Language models: OpenAI-compatible ``POST /v1/completions`` and ``POST /v1/chat/completions``
  (``"stream": true`` sends server-sent events ending in ``data: [DONE]``), ``GET /v1/models``; and the
  server's side of a layer split (``LLM.offload``, llm/split.py): ``POST /v2/models/{name}/infer``
  with ``parameters`` {"layers", "session", "top_k"}, its KV caches kept per session (409 when a
  session is unknown or behind: the device starts over).
- Both: ``GET /v2/health/live`` and ``GET /v2/health/ready``.

On one machine it runs under uvicorn (``run``); ``run_ray`` / ``ray_application`` deploy the same app on
Ray Serve (``ray[serve]``) with replicas or autoscaling, so it scales out over a Ray cluster.

Bad requests get a 4xx with a message naming what was wrong (422: the JSON does not fit the schema;
400: values the model refuses; 404: another model name; 413: a body over ``max_request_bytes``);
nothing a client sends stops the server. A language model is stateful (its KV cache), so its requests
run one at a time; a program's calls run concurrently.
"""

# (no `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time, and
# the request models are local to create_app)
import json
import os
import queue
import threading
import time
import uuid
from typing import Any, Optional, Union

import numpy as np

__all__ = ["create_app", "ray_application", "run", "run_batch", "run_ray"]

MAX_REQUEST_BYTES = 64 << 20
_DTYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8,
           "BOOL": np.bool_, "FP64": np.float64}
_NAMES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def _load(path: str) -> tuple[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if path.endswith(".gguf"):
        from .llm import load

        return "llm", load(path)
    from .engine import load as load_program

    return "program", load_program(path)


def create_app(path: str, name: Optional[str] = None, max_request_bytes: int = MAX_REQUEST_BYTES,
               batcher: Any = None) -> Any:
    """The FastAPI app serving the model at ``path`` (a .gguf file or a saved program) as ``name``
    (default: the file's stem). ``batcher``: a decorator that turns an async function of a list of
    requests into one of a request (Ray Serve's ``serve.batch(max_batch_size=..., ...)``): a program's
    whole-model requests then run together where their inputs stack along the batch axis
    (``run_batch``); the response's ``parameters.batch_size`` says how many ran in the call."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, Field, ValidationError

    from .engine.split import decode, split

    kind, model = _load(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    app = FastAPI(title=f"edgecompress: {name}")
    lock = threading.Lock()  # one generation at a time (the KV cache is the model's state)

    @app.middleware("http")
    async def limit_size(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > max_request_bytes):
            return JSONResponse({"error": f"request body over {max_request_bytes} bytes"}, status_code=413)
        if size is None and request.method == "POST":
            body = await request.body()
            if len(body) > max_request_bytes:
                return JSONResponse({"error": f"request body over {max_request_bytes} bytes"}, status_code=413)
        return await call_next(request)

    def check_name(model_name: str) -> None:
        if model_name != name:
            raise HTTPException(404, f"no model {model_name!r} here (this server serves {name!r})")

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    class Tensor(BaseModel):
        name: str
        shape: list[int]
        datatype: str
        data: Optional[list[Any]] = None
        parameters: Optional[dict[str, Any]] = None

    class Output(BaseModel):
        name: str
        parameters: Optional[dict[str, Any]] = None

    class InferRequest(BaseModel):
        id: Optional[str] = None
        inputs: list[Tensor]
        outputs: Optional[list[Output]] = None
        parameters: Optional[dict[str, Any]] = None

    async def read_infer(request: Request) -> tuple[Any, dict[str, np.ndarray]]:
        """A v2 infer request's JSON and its inputs as arrays: JSON tensors, or the binary tensor
        extension (an ``Inference-Header-Content-Length`` header, that many bytes of JSON, then the raw
        little-endian bytes of each input whose parameters give ``binary_data_size``, in order);
        inputs with ``parameters.wire`` are edgecompress wire messages (engine.encode), decoded."""
        body = await request.body()
        head = request.headers.get("inference-header-content-length")
        if head is not None:
            if not head.isdigit() or int(head) > len(body):
                raise HTTPException(400, f"Inference-Header-Content-Length {head!r} does not fit a body of {len(body)} bytes")
            raw, rest = body[:int(head)], body[int(head):]
        else:
            raw, rest = body, b""
        try:
            req = InferRequest.model_validate_json(raw)
        except ValidationError as e:
            raise HTTPException(422, json.loads(e.json(include_url=False))) from None
        arrays = {}
        offset = 0
        for t in req.inputs:
            size = (t.parameters or {}).get("binary_data_size")
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(rest):
                    raise HTTPException(400, f"input {t.name!r}: binary_data_size {size!r} runs past the body")
                arrays[t.name] = _tensor(t.name, t.shape, t.datatype, None, rest[offset:offset + size])
                offset += size
            elif t.data is None:
                raise HTTPException(400, f"input {t.name!r}: neither data nor binary_data_size")
            else:
                arrays[t.name] = _tensor(t.name, t.shape, t.datatype, t.data)
        if offset != len(rest):
            raise HTTPException(400, f"{len(rest) - offset} bytes after the inputs' binary data")
        for t in req.inputs:  # edgecompress wire messages (engine.encode) carried as UINT8 tensors
            if (t.parameters or {}).get("wire"):
                try:
                    arrays[t.name] = decode(arrays[t.name].astype(np.uint8, copy=False).tobytes())
                except (TypeError, ValueError) as e:
                    raise HTTPException(400, f"input {t.name!r}: {e}") from None
        return req, arrays

    def infer_response(req: Any, names: list[str], outs: Any, seconds: float,
                       extra: Optional[dict[str, Any]] = None) -> Any:
        """The v2 response: each output as JSON values, or as binary data where the request asks
        (``binary_data`` per output or ``binary_data_output``); ``parameters.server_seconds``."""
        binary_all = bool((req.parameters or {}).get("binary_data_output", False))
        asked = {o.name: bool((o.parameters or {}).get("binary_data", binary_all)) for o in (req.outputs or [])}
        response: dict[str, Any] = {"model_name": name, "model_version": "1", "id": req.id or str(uuid.uuid4()),
                                    "outputs": [], "parameters": {"server_seconds": seconds, **(extra or {})}}
        blobs = []
        for o, a in zip(names, outs):
            entry: dict[str, Any] = {"name": o, "shape": list(a.shape), "datatype": _NAMES.get(a.dtype, str(a.dtype))}
            if asked.get(o, binary_all):
                blob = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = a.ravel().tolist()
            response["outputs"].append(entry)
        if not blobs:
            return response
        header = json.dumps(response).encode()
        return Response(header + b"".join(blobs), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})

    if kind == "program":
        def metadata() -> dict[str, Any]:
            return {"name": name, "platform": "edgecompress", "versions": ["1"],
                    "inputs": [{"name": i.name, "datatype": "FP32" if i.dtype == "float32" else "INT64",
                                "shape": [d if isinstance(d, int) else -1 for d in i.dims]} for i in model.inputs],
                    "outputs": [{"name": o, "datatype": "FP32", "shape": []} for o in model.outputs]}

        @app.get("/v2/models/{model_name}")
        def model_metadata(model_name: str) -> dict[str, Any]:
            check_name(model_name)
            return metadata()

        @app.get("/v2/models/{model_name}/ready")
        def model_ready(model_name: str) -> dict[str, Any]:
            check_name(model_name)
            return {"name": name, "ready": True}

        tails: dict[tuple[str, ...], Any] = {}

        def tail_for(cut: Any, arrays: dict[str, np.ndarray]) -> Any:
            if not isinstance(cut, list) or not cut or not all(isinstance(c, str) for c in cut) or len(cut) > 4096:
                raise HTTPException(400, "parameters.cut: expected a list of value names")
            key = tuple(cut)
            if key not in tails:
                missing = [c for c in cut if c not in arrays]
                if missing:
                    raise HTTPException(400, f"parameters.cut: no input for the cut values {missing}")
                try:
                    _, tails[key] = split(model, cut, specs={c: (arrays[c].ndim, str(arrays[c].dtype)) for c in cut})
                except (TypeError, ValueError) as e:
                    raise HTTPException(400, f"parameters.cut: {e}") from None
                if len(tails) > 64:  # a bounded cache: the oldest cut goes
                    del tails[next(iter(tails))]
            return tails[key]

        @app.post("/v2/models/{model_name}/infer")
        async def infer(model_name: str, request: Request) -> Any:
            """The program's outputs (``parameters.cut``: its tail's) for the request's inputs
            (read_infer), answered by infer_response."""
            check_name(model_name)
            req, arrays = await read_infer(request)
            cut = (req.parameters or {}).get("cut")
            if cut is None and batched is not None:
                outs, seconds, size = await batched(arrays)
                if isinstance(outs, Exception):
                    raise HTTPException(400, str(outs))
                return infer_response(req, model.outputs, outs, seconds, {"batch_size": size})
            target = model
            if cut is not None:  # the tail of the program after these values (a split's server side)
                target = tail_for(cut, arrays)
            t0 = time.perf_counter()
            try:
                out = await run_in_threadpool(lambda: target(**arrays))
            except (TypeError, ValueError) as e:
                raise HTTPException(400, str(e)) from None
            seconds = time.perf_counter() - t0
            return infer_response(req, model.outputs, out if isinstance(out, tuple) else (out,), seconds)

        async def run_items(items: list[dict[str, np.ndarray]]) -> list[Any]:
            return await run_in_threadpool(lambda: run_batch(model, items))

        batched = batcher(run_items) if batcher is not None else None

        return app

    class Sampling(BaseModel):
        model: Optional[str] = None
        max_tokens: int = Field(128, ge=0, le=1 << 20)
        temperature: float = 0.8
        top_p: float = 0.95
        top_k: int = 40
        min_p: float = 0.05
        repeat_penalty: float = 1.0
        seed: Optional[int] = None
        stop: Union[str, list[str], None] = None
        stream: bool = False

    class CompletionRequest(Sampling):
        prompt: str

    class Message(BaseModel):
        role: str
        content: str

    class ChatRequest(Sampling):
        messages: list[Message]

    def options(req: Sampling) -> dict[str, Any]:
        if req.model not in (None, name):
            raise HTTPException(404, f"no model {req.model!r} here (this server serves {name!r})")
        return dict(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
                    repeat_penalty=req.repeat_penalty, seed=req.seed, stop=req.stop)

    def respond(req: Sampling, pieces: Any, chat: bool) -> Any:
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def finish() -> str:
            return "length" if model.timings.decode_tokens >= req.max_tokens else "stop"

        def usage() -> dict[str, int]:
            t = model.timings
            return {"prompt_tokens": t.prompt_tokens, "completion_tokens": t.decode_tokens,
                    "total_tokens": t.prompt_tokens + t.decode_tokens}

        def choice(text: str, done: Optional[str], delta: bool) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": done}
            body = {"role": "assistant", "content": text}
            return {"index": 0, ("delta" if delta else "message"): body, "finish_reason": done}

        if not req.stream:
            with lock:
                try:
                    text = "".join(pieces())
                except (TypeError, ValueError) as e:
                    raise HTTPException(400, str(e)) from None
                return {"id": rid, "object": obj, "created": created, "model": name,
                        "choices": [choice(text, finish(), False)], "usage": usage()}

        def produce(out: "queue.Queue[Any]", stop: threading.Event) -> None:
            # The generation holds the model's lock on a thread of its own and hands its events over a
            # queue. Held inside the response's generator instead, a client that went away left the
            # lock held until the abandoned generator was garbage-collected: every later request waited
            # (seen as a hung test). Here the lock goes when the generation ends, or at the next piece
            # after the client is gone.
            try:
                with lock:
                    try:
                        for piece in pieces():
                            if stop.is_set():
                                return
                            chunk = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                                     "model": name, "choices": [choice(piece, None, True)]}
                            out.put(f"data: {json.dumps(chunk)}\n\n")
                        chunk = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                                 "model": name, "choices": [choice("", finish(), True)], "usage": usage()}
                        out.put(f"data: {json.dumps(chunk)}\n\n")
                    except (TypeError, ValueError) as e:  # after the headers: an error event, then the end
                        out.put(f"data: {json.dumps({'error': {'message': str(e), 'type': 'invalid_request_error'}})}\n\n")
                    out.put("data: [DONE]\n\n")
            except BaseException as e:  # noqa: BLE001 - raised again on the response's side
                out.put(e)
            finally:
                out.put(None)

        def events() -> Any:
            out: "queue.Queue[Any]" = queue.Queue()
            stop = threading.Event()
            threading.Thread(target=produce, args=(out, stop), daemon=True).start()
            try:
                while (item := out.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                stop.set()

        # a request the model refuses before the first token (a prompt past the context) is a 400 here
        first_check(req, chat)
        return StreamingResponse(events(), media_type="text/event-stream")

    def first_check(req: Sampling, chat: bool) -> None:
        """What a streamed request would fail on, checked before the response starts."""
        try:
            from .llm.sampling import SamplingParams

            SamplingParams(req.temperature, req.top_k, req.top_p, req.min_p, req.repeat_penalty, seed=req.seed)
            if chat:
                from .llm.chat import render

                tk = model.tokenizer
                prompt = render(model.chat_template, model.hparams.arch, [m.model_dump() for m in req.messages],
                                tk.tokens[tk.bos_id] if tk.bos_id is not None else "", "")
                n = len(tk.encode(prompt, add_bos=False)) + 1
            else:
                n = len(model.tokenize(req.prompt))
        except (TypeError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        if n > model.n_ctx:
            raise HTTPException(400, f"the prompt takes {n} tokens, more than the context of {model.n_ctx}")

    from .llm.split import LayerServer, SessionError

    layer_server = LayerServer(model)

    @app.get("/v2/models/{model_name}")
    def llm_metadata(model_name: str) -> dict[str, Any]:
        check_name(model_name)
        hp = model.hparams
        return {"name": name, "platform": "edgecompress", "versions": ["1"],
                "parameters": {"kind": "language model", "arch": hp.arch, "layers": hp.n_layer, "n_embd": hp.n_embd,
                               "n_vocab": hp.n_vocab, "n_ctx": model.n_ctx}}

    @app.post("/v2/models/{model_name}/infer")
    async def infer_layers(model_name: str, request: Request) -> Any:
        """The server's side of a layer split (llm/split.py): ``parameters`` {"layers": k, "session":
        id, "top_k": K}; inputs the residual stream after the device's k layers (wire messages), ``pos``
        and ``rows``; outputs ``top_ids`` and ``top_logits`` (``logits`` when K is 0)."""
        check_name(model_name)
        req, arrays = await read_infer(request)
        params = req.parameters or {}
        if "layers" not in params or "session" not in params:
            raise HTTPException(400, "parameters: a language model's infer runs a layer split: expected 'layers' "
                                     "(layers on the device) and 'session'")
        t0 = time.perf_counter()
        try:
            out = await run_in_threadpool(lambda: layer_server.run(params["layers"], params["session"], arrays,
                                                                   params.get("top_k", 64)))
        except SessionError as e:
            raise HTTPException(409, str(e)) from None
        except (TypeError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        return infer_response(req, list(out), list(out.values()), time.perf_counter() - t0)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "edgecompress"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        opts = options(req)
        return respond(req, lambda: model.generate(req.prompt, req.max_tokens, stream=True, **opts), chat=False)

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest) -> Any:
        opts = options(req)
        messages = [m.model_dump() for m in req.messages]
        return respond(req, lambda: model.chat(messages, req.max_tokens, stream=True, **opts), chat=True)

    return app


def run_batch(program: Any, items: list[dict[str, np.ndarray]]) -> list[tuple[Any, float, int]]:
    """Several requests' inputs to ``program`` in as few calls as the batch axis allows: requests whose
    inputs have the same names, dtypes and shapes past the first axis, for a program whose inputs all
    lead with one named (batch) dimension, are stacked along it and run as one call, and the outputs
    split back (each must lead with the stacked size; else each request runs alone). Returns per
    request (outputs, seconds of its call, requests in that call); outputs is the exception a request
    alone raised (TypeError, ValueError) instead."""
    first = {i.dims[0] if i.dims else None for i in program.inputs}
    stackable = len(first) == 1 and isinstance(next(iter(first)), str)
    groups: dict[Any, list[int]] = {}
    for k, arrays in enumerate(items):
        key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(arrays.items())) if stackable and all(
            a.ndim >= 1 for a in arrays.values()) else ("alone", k)
        groups.setdefault(key, []).append(k)
    results: list[Any] = [None] * len(items)

    def alone(k: int) -> None:
        t0 = time.perf_counter()
        try:
            out = program(**items[k])
            results[k] = (out if isinstance(out, tuple) else (out,), time.perf_counter() - t0, 1)
        except (TypeError, ValueError) as e:
            results[k] = (e, time.perf_counter() - t0, 1)

    for ks in groups.values():
        if len(ks) == 1:
            alone(ks[0])
            continue
        sizes = [next(iter(items[k].values())).shape[0] for k in ks]
        t0 = time.perf_counter()
        try:
            out = program(**{n: np.concatenate([items[k][n] for k in ks]) for n in items[ks[0]]})
        except (TypeError, ValueError):
            out = None  # one request's fault: each runs alone and gets its own error
        seconds = time.perf_counter() - t0
        outs = out if isinstance(out, tuple) else (out,)
        if out is None or not all(o.ndim >= 1 and o.shape[0] == sum(sizes) for o in outs):
            for k in ks:
                alone(k)
            continue
        bounds = np.cumsum([0] + sizes)
        for j, k in enumerate(ks):
            results[k] = (tuple(o[bounds[j]:bounds[j + 1]] for o in outs), seconds, len(ks))
    return results


def _tensor(name: str, shape: list[int], datatype: str, data: Optional[list[Any]], raw: Optional[bytes] = None) -> np.ndarray:
    """A v2 tensor (JSON values, or ``raw`` little-endian bytes) as a numpy array; HTTPException(400)
    naming the tensor for anything off."""
    from fastapi import HTTPException

    if datatype not in _DTYPES:
        raise HTTPException(400, f"input {name!r}: datatype {datatype!r} is not one of {', '.join(_DTYPES)}")
    if len(shape) > 8 or any(d < 0 for d in shape):
        raise HTTPException(400, f"input {name!r}: expected a shape of at most 8 dimensions >= 0, got {shape}")
    count = 1
    for d in shape:
        count *= d
    if raw is not None:
        dt = np.dtype(_DTYPES[datatype]).newbyteorder("<")
        if len(raw) != count * dt.itemsize:
            raise HTTPException(400, f"input {name!r}: shape {shape} of {datatype} takes {count * dt.itemsize} bytes, "
                                     f"binary data has {len(raw)}")
        a = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="))
        if datatype in ("FP32", "FP64") and not np.isfinite(a).all():
            raise HTTPException(400, f"input {name!r}: NaN or Inf values")
        return a.reshape(shape).astype(np.float32 if datatype in ("FP32", "FP64") else a.dtype, copy=False)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range floats become Inf, refused below
            a = np.asarray(data, dtype=_DTYPES[datatype])
    except (TypeError, ValueError, OverflowError) as e:
        raise HTTPException(400, f"input {name!r}: data is not {datatype} values ({e})") from None
    if a.size != count:
        raise HTTPException(400, f"input {name!r}: shape {shape} holds {count} values, data has {a.size}")
    if datatype in ("FP32", "FP64") and not np.isfinite(a).all():
        raise HTTPException(400, f"input {name!r}: NaN or Inf values")
    return a.reshape(shape).astype(np.float32 if datatype in ("FP32", "FP64") else a.dtype, copy=False)


def run(path: str, host: str = "127.0.0.1", port: int = 8000, name: Optional[str] = None,
        max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
    import uvicorn

    uvicorn.run(create_app(path, name, max_request_bytes), host=host, port=port, log_level="info")


def ray_application(path: str, name: Optional[str] = None, max_request_bytes: int = MAX_REQUEST_BYTES,
                    replicas: int = 1, max_replicas: Optional[int] = None, max_ongoing_requests: int = 8,
                    threads: int = 1, max_batch_size: int = 1, batch_wait_timeout_s: float = 0.005) -> Any:
    """The same app as a Ray Serve application (``ray[serve]``): each replica builds it on its own
    (loads the model) from this builder and runs it on ``threads`` threads (the CPUs Ray reserves for
    it). ``max_replicas`` > ``replicas`` turns on autoscaling between the two. Run it with
    ``ray.serve.run(application)``. ``max_batch_size`` > 1: Ray Serve's dynamic batching
    (``serve.batch``) gathers up to that many of a replica's program requests, waiting at most
    ``batch_wait_timeout_s`` for them, into one call where their inputs stack (``run_batch``)."""
    from ray import serve

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size: expected an int >= 1, got {max_batch_size!r}")
    if not batch_wait_timeout_s >= 0:
        raise ValueError(f"batch_wait_timeout_s: expected >= 0, got {batch_wait_timeout_s!r}")
    path = os.path.abspath(path)  # the replicas may start elsewhere

    def builder() -> Any:  # (a function: Ray Serve calls it on each replica for its app)
        batcher = None
        if max_batch_size > 1:
            batcher = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        return create_app(path, name, max_request_bytes, batcher)

    options: dict[str, Any] = {"name": "edgecompress", "max_ongoing_requests": max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": threads, "runtime_env": {
                                   "env_vars": {"EDGECOMPRESS_NUM_THREADS": str(threads)}}}}
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas}
    else:
        options["num_replicas"] = replicas
    return serve.deployment(serve.ingress(builder)(), **options).bind()


def run_ray(path: str, host: str = "127.0.0.1", port: int = 8000, name: Optional[str] = None,
            max_request_bytes: int = MAX_REQUEST_BYTES, replicas: int = 1, max_replicas: Optional[int] = None,
            max_batch_size: int = 1, batch_wait_timeout_s: float = 0.005) -> None:
    """Serve on Ray Serve: joins the Ray cluster of ``RAY_ADDRESS`` (or starts a local one) and blocks."""
    import ray
    from ray import serve

    ray.init(ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    serve.run(ray_application(path, name, max_request_bytes, replicas, max_replicas,
                              max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s), name="edgecompress",
              route_prefix="/", blocking=True)
