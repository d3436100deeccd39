"""``edgecompress serve``: the Open Inference Protocol v2 endpoints for a saved program and the
OpenAI-compatible ones for a GGUF model, through FastAPI's test client; malformed requests get 4xx."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

import edgecompress as ec  # noqa: E402
from edgecompress.engine.builder import GraphBuilder  # noqa: E402
from edgecompress.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def program_client(tmp_path_factory):
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", 16))
    y = g.linear(x, ec.Int8Weight.from_float(rng.standard_normal((4, 16)).astype(np.float32)), None, "fc", activation="relu")
    prog = g.program([y], {})
    path = tmp_path_factory.mktemp("prog") / "tiny.safetensors"
    prog.save(path)
    return TestClient(create_app(str(path), max_request_bytes=1 << 16)), prog


def test_v2_infer_equals_the_program(program_client):
    client, prog = program_client
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/tiny").json()
    assert meta["name"] == "tiny" and meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    r = client.post("/v2/models/tiny/infer", json={"id": "a", "inputs": [
        {"name": "x", "shape": [3, 16], "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [3, 4] and out["datatype"] == "FP32" and r.json()["id"] == "a"
    np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(3, 4), prog(x))


BAD_TENSORS = [
    ({"name": "x", "shape": [2, 16], "datatype": "FP32", "data": [1.0] * 31}, 400, "holds 32 values"),
    ({"name": "x", "shape": [1, 16], "datatype": "FP16", "data": [1.0] * 16}, 400, "datatype"),
    ({"name": "x", "shape": [1, 16], "datatype": "FP32", "data": ["a"] * 16}, 400, "not FP32"),
    ({"name": "x", "shape": [1, 15], "datatype": "FP32", "data": [1.0] * 15}, 400, "expected shape"),
    ({"name": "y", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}, 400, "unknown input"),
    ({"name": "x", "shape": [1, -16], "datatype": "FP32", "data": [1.0] * 16}, 400, "shape"),
    ({"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1e39] * 16}, 400, "NaN or Inf"),
    ({"name": "x", "shape": [1, 16], "datatype": "FP32"}, 400, "neither data nor binary_data_size"),
    ({"name": "x", "shape": [1, 16], "datatype": "FP32", "data": 5}, 422, ""),
]


@pytest.mark.parametrize("tensor,status,words", BAD_TENSORS)
def test_v2_malformed_tensors_are_4xx(program_client, tensor, status, words):
    client, _ = program_client
    r = client.post("/v2/models/tiny/infer", json={"inputs": [tensor]})
    assert r.status_code == status, r.text
    assert words in r.text


def _binary_request(header: dict, blobs: list[bytes]) -> tuple[bytes, dict]:
    h = json.dumps(header).encode()
    return h + b"".join(blobs), {"Inference-Header-Content-Length": str(len(h)), "content-type": "application/octet-stream"}


def test_v2_binary_tensor_extension(program_client):
    client, prog = program_client
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    body, headers = _binary_request({"inputs": [{"name": "x", "shape": [5, 16], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": x.nbytes}}],
                                     "outputs": [{"name": prog.outputs[0], "parameters": {"binary_data": True}}]},
                                    [x.tobytes()])
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    out = meta["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 5 * 4 * 4 and "data" not in out
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f4").reshape(out["shape"]), prog(x))
    # JSON out for a binary request that does not ask for binary outputs
    body, headers = _binary_request({"inputs": [{"name": "x", "shape": [5, 16], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": x.nbytes}}]}, [x.tobytes()])
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    np.testing.assert_array_equal(np.array(r.json()["outputs"][0]["data"], np.float32).reshape(5, 4), prog(x))


@pytest.mark.parametrize("size,blob,header,words", [
    (320, b"\0" * 100, None, "runs past the body"),
    (100, b"\0" * 100, None, "takes 320 bytes"),
    (320, b"\0" * 330, None, "bytes after the inputs"),
    (320, b"\0" * 320, "99999", "does not fit"),
    (-1, b"", None, "binary_data_size"),
])
def test_v2_malformed_binary_requests(program_client, size, blob, header, words):
    client, _ = program_client
    body, headers = _binary_request({"inputs": [{"name": "x", "shape": [5, 16], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": size}}]}, [blob])
    if header is not None:
        headers["Inference-Header-Content-Length"] = header
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 400 and words in r.text, r.text


def test_v2_other_errors(program_client):
    client, _ = program_client
    assert client.post("/v2/models/other/infer", json={"inputs": []}).status_code == 404
    assert client.post("/v2/models/tiny/infer", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    big = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 20000}]}
    assert client.post("/v2/models/tiny/infer", json=big).status_code == 413
    assert client.post("/v2/models/tiny/infer", json={"inputs": []}).status_code == 400  # a missing input
    assert client.get("/v2/health/live").status_code == 200  # the server still answers


@pytest.fixture(scope="module")
def llm_client(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import sys
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "llm"))
    import hf_gguf

    path = tmp_path_factory.mktemp("llm") / "tiny-llama.gguf"
    hf_gguf.write(hf_gguf.llama(vocab=400), path)
    return TestClient(create_app(str(path)))


def test_openai_completions(llm_client):
    r = llm_client.post("/v1/completions", json={"prompt": "ab cd", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny-llama"
    assert body["usage"]["completion_tokens"] <= 6 and body["choices"][0]["finish_reason"] in ("stop", "length")
    text = body["choices"][0]["text"]
    # streamed: the same text in pieces, then [DONE]
    with llm_client.stream("POST", "/v1/completions", json={"prompt": "ab cd", "max_tokens": 6, "temperature": 0,
                                                            "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert llm_client.get("/v1/models").json()["data"][0]["id"] == "tiny-llama"


def test_openai_chat_completions(llm_client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    r = llm_client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    with llm_client.stream("POST", "/v1/chat/completions", json={"messages": msgs, "max_tokens": 4, "temperature": 0,
                                                                 "stream": True}) as s:
        lines = [line for line in s.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == message["content"]


@pytest.mark.parametrize("path,body,status", [
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 400),
    ("/v1/completions", {"prompt": "a", "max_tokens": -5}, 422),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404),
    ("/v1/completions", {"prompt": 5}, 422),
    ("/v1/completions", {"prompt": "a " * 5000, "stream": True}, 400),
    ("/v1/completions", {"prompt": "a " * 5000}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "root", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "root", "content": "x"}], "stream": True}, 400),
    ("/v1/chat/completions", {"messages": "hi"}, 422),
])
def test_openai_bad_requests_are_4xx(llm_client, path, body, status):
    r = llm_client.post(path, json=body)
    assert r.status_code == status, r.text
    assert llm_client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 1}).status_code == 200


def _saved_linear(tmp_path):
    """A one-product program (x (batch, 8) -> (batch, 2)) and the file it is saved in."""
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", 8))
    prog = g.program([g.linear(x, np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32), None, "fc")], {})
    path = tmp_path / "p.safetensors"
    prog.save(path)
    return prog, path


@contextlib.contextmanager
def _served(path, name):
    """`edgecompress serve` in a process of its own; yields its URL once it is ready."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgecompress.cli", "serve", str(path), "--port", str(port),
                             "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        else:
            pytest.fail("the server did not come up")
        if proc.poll() is not None:
            pytest.fail("the server exited: " + proc.stdout.read().decode(errors="replace"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_the_serve_command_and_the_program_client(tmp_path):
    """`edgecompress serve` over real HTTP, called through edgecompress.remote.RemoteProgram."""
    from edgecompress.remote import RemoteError, RemoteProgram

    rng = np.random.default_rng(0)
    prog, path = _saved_linear(tmp_path)
    with _served(path, "p") as url:
        remote = RemoteProgram(url, "p")
        assert remote.metadata()["inputs"][0]["name"] == "x"
        a = rng.standard_normal((3, 8)).astype(np.float32)
        np.testing.assert_array_equal(remote(x=a), prog(a))  # binary tensors both ways
        np.testing.assert_array_equal(RemoteProgram(url, "p", binary=False)(x=a), prog(a))  # JSON values
        with pytest.raises(RemoteError, match="400"):
            remote(x=a[:, :5])
        with pytest.raises(RemoteError, match="404"):
            RemoteProgram(url, "q")(x=a)


def test_the_llm_client(tmp_path):
    """A served GGUF model through edgecompress.remote.RemoteLLM: greedy text equal to the local model's,
    streamed and not."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "llm"))
    import hf_gguf

    import edgecompress.llm as L
    from edgecompress.remote import RemoteError, RemoteLLM

    path = tmp_path / "m.gguf"
    hf_gguf.write(hf_gguf.llama(vocab=400), path)
    local = L.load(path)
    want = local.generate("ab cd", max_new_tokens=8, temperature=0)
    reply = local.chat([{"role": "user", "content": "hi"}], max_new_tokens=5, temperature=0)
    with _served(path, "m") as url:
        remote = RemoteLLM(url, "m")
        assert remote.generate("ab cd", 8, temperature=0) == want
        assert "".join(remote.generate("ab cd", 8, temperature=0, stream=True)) == want
        assert remote.chat([{"role": "user", "content": "hi"}], 5, temperature=0) == reply
        assert "".join(remote.chat([{"role": "user", "content": "hi"}], 5, temperature=0, stream=True)) == reply
        with pytest.raises(RemoteError, match="400"):
            remote.generate("ab", 4, temperature=-1.0)
        # a cascade: another (device) model answers when confident enough, else the served one
        from edgecompress.remote import Cascade

        small_path = tmp_path / "small.gguf"
        hf_gguf.write(hf_gguf.llama(vocab=400, seed=5), small_path)
        small = L.load(small_path)
        text, conf = small.generate_with_confidence("ab cd", 8, temperature=0)
        assert len(small.last_probabilities) >= len(small.last_tokens) > 0
        assert 0.0 < conf <= 1.0 and text == small.generate("ab cd", 8, temperature=0)
        mine = Cascade(small, remote, threshold=0.0).generate("ab cd", 8, temperature=0)
        assert mine.where == "device" and mine.text == text
        theirs = Cascade(small, remote, threshold=1.0).generate("ab cd", 8, temperature=0)
        assert theirs.where == "server" and theirs.text == want and theirs.confidence == pytest.approx(conf)
        with pytest.raises(ValueError):
            Cascade(small, remote, threshold=2.0)


def test_a_layer_split_over_http(tmp_path, llm_client):
    """LLM.offload to a served GGUF model: the first layer on the device, the rest and their KV caches on
    the server (a session per device): greedy text equal to the local model's; bad layer requests are
    4xx; a session the server does not hold is a 409."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "llm"))
    import hf_gguf

    import edgecompress.llm as L
    from edgecompress.engine.split import encode
    from edgecompress.llm.split import layer_cut
    from edgecompress.remote import RemoteError, RemoteProgram

    path = tmp_path / "m.gguf"
    hf_gguf.write(hf_gguf.llama(vocab=400, layers=3), path, qtype="Q8_0")
    local = L.load(path)
    want = local.generate("ab cd ef", max_new_tokens=8, temperature=0)
    with _served(path, "m") as url:
        dev = L.load(path).offload(1, url, "m")
        assert dev.generate("ab cd ef", max_new_tokens=8, temperature=0) == want
        assert dev.remote.stats["server_seconds"] > 0 and dev.remote.stats["up_bytes"] > 0
        meta = RemoteProgram(url, "m").metadata()
        assert meta["parameters"]["layers"] == 3
        cut = layer_cut(local.program, 1)
        x = {c: encode(np.zeros((2, 64), np.float32), "fp16") for c in cut}
        pos, rows = np.zeros(1, np.int64), np.array([1], np.int64)
        remote = RemoteProgram(url, "m")
        outs, _ = remote.infer({"pos": pos, "rows": rows}, {"layers": 1, "session": "t", "top_k": 5}, wire=x)
        assert [o.shape for o in outs] == [(1, 5), (1, 5)]
        for params, status in [({"layers": 9, "session": "t"}, "400"), ({"session": "t"}, "400"),
                               ({"layers": 1, "session": "t", "top_k": "many"}, "400"),
                               ({"layers": 1, "session": "u"}, "409")]:
            p = np.array([5], np.int64) if status == "409" else pos
            with pytest.raises(RemoteError, match=status):
                remote.infer({"pos": p, "rows": rows}, params, wire=x)
    # the same endpoint in the test client: a JSON body that is not a v2 request is a 422
    assert llm_client.post("/v2/models/tiny-llama/infer", json={"inputs": 3}).status_code == 422


def test_run_batch_stacks_requests_along_the_batch_axis(program_client):
    """run_batch (what a batching replica calls): requests whose shapes agree past the batch axis run as
    one call and get their own rows back, bit for bit; a request that does not fit runs alone and
    gets its own error; the app reports each response's batch size."""
    from edgecompress.serve import run_batch

    client, prog = program_client
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (2, 1, 3)]
    got = run_batch(prog, [{"x": x} for x in xs] + [{"x": np.zeros((2, 5), np.float32)}])
    for x, (outs, seconds, size) in zip(xs, got):
        np.testing.assert_array_equal(outs[0], prog(x))
        assert size == 3 and seconds > 0
    assert isinstance(got[3][0], ValueError) and got[3][2] == 1
    # the app with a batcher (here one that runs each request as a list of one)
    from fastapi.testclient import TestClient

    def one_at_a_time(fn):
        async def call(item):
            return (await fn([item]))[0]
        return call

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        prog.save(d + "/p.safetensors")
        batched = TestClient(create_app(d + "/p.safetensors", "p", batcher=one_at_a_time))
        r = batched.post("/v2/models/p/infer", json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                                                  "data": xs[1].ravel().tolist()}]})
        assert r.status_code == 200 and r.json()["parameters"]["batch_size"] == 1
        np.testing.assert_array_equal(np.float32(r.json()["outputs"][0]["data"]), prog(xs[1]).ravel())
        bad = batched.post("/v2/models/p/infer", json={"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32",
                                                                    "data": [0.0] * 5}]})
        assert bad.status_code == 400


def test_ray_serve_deployment(tmp_path):
    """The same app on Ray Serve (a local single-node Ray, 2 replicas): infer over HTTP through Serve's
    proxy, requests spread over the replicas."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    import socket
    import time
    import urllib.request

    from edgecompress.remote import RemoteProgram
    from edgecompress.serve import ray_application

    rng = np.random.default_rng(0)
    prog, path = _saved_linear(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_application(str(path), "p", replicas=2, max_batch_size=4, batch_wait_timeout_s=0.05),
                  name="edgecompress", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        remote = RemoteProgram(url, "p")
        a = rng.standard_normal((4, 8)).astype(np.float32)
        for _ in range(8):
            np.testing.assert_array_equal(remote(x=a), prog(a))
        # concurrent requests: a replica batches them (serve.batch), each gets its own rows back
        import concurrent.futures

        xs = [rng.standard_normal((1 + k % 3, 8)).astype(np.float32) for k in range(12)]
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda x: remote.infer({"x": x}), xs))
        for x, (outs, meta) in zip(xs, got):
            np.testing.assert_array_equal(outs[0], prog(x))
        assert max(meta["parameters"]["batch_size"] for _, meta in got) > 1
        status = serve.status().applications["edgecompress"]
        assert status.status == "RUNNING"
        assert sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values()) == 2
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_stream_abandoned_midway_does_not_block_the_next_request(llm_client):
    import concurrent.futures
    import threading

    with llm_client.stream("POST", "/v1/completions", json={"prompt": "ab cd", "max_tokens": 40, "temperature": 0.9,
                                                            "min_p": 0.0, "stream": True}) as s:
        first = next(line for line in s.iter_lines() if line)
        assert first.startswith("data: ")
    # the generator was dropped with the model's lock held inside it: the next request must still run.
    # It runs on a daemon thread: were it blocked for good, the test fails after 60 s instead of the
    # executor's exit (and the interpreter's) waiting on it forever.
    done: concurrent.futures.Future = concurrent.futures.Future()

    def post() -> None:
        try:
            done.set_result(llm_client.post("/v1/completions", json={"prompt": "ab", "max_tokens": 2, "temperature": 0}))
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            done.set_exception(e)

    threading.Thread(target=post, daemon=True).start()
    assert done.result(timeout=60).status_code == 200


def test_split_runner_over_a_served_program(tmp_path):
    """The head on this side, the tail on `edgecompress serve` (which serves the whole program and cuts
    it on request): outputs equal the program's (float32 wire: bit for bit; int8: within the
    quantization's effect); a link that turns out slower than planned triggers a re-plan."""
    from edgecompress.engine.split import cuts
    from edgecompress.remote import Link, SplitRunner

    rng = np.random.default_rng(7)
    g = GraphBuilder()
    x = g.input("x", "float32", ("batch", 64))
    h = g.linear(x, rng.standard_normal((256, 64)).astype(np.float32), None, "up", activation="relu")
    h2 = g.linear(h, rng.standard_normal((16, 256)).astype(np.float32), None, "down")
    y = g.linear(h2, rng.standard_normal((8, 16)).astype(np.float32), None, "out")
    prog = g.program([y], {})
    path = tmp_path / "chain.safetensors"
    prog.save(path)
    a = rng.standard_normal((4, 64)).astype(np.float32)
    want = prog(a)
    with _served(path, "chain") as url:
        runner = SplitRunner(prog, url, "chain", a, mode="fp32", bandwidth=1e9, rtt=0.0)
        for c in cuts(prog, a):
            runner.force(cut=list(c.values))
            np.testing.assert_array_equal(runner(a), want)  # tail on the server, bit for bit
        runner.force(where="cloud")
        np.testing.assert_array_equal(runner(a), want)
        pytest.importorskip("zstandard")
        q = SplitRunner(prog, url, "chain", a, mode="int8", codec="zstd", bandwidth=1e9, rtt=0.0)
        q.force(cut=["down"])
        assert np.abs(q(a) - want).max() <= 0.02 * np.abs(want).max()
        # planned for a fast link; the emulated one is slow (20 KB/s, 50 ms): the runner measures it,
        # re-plans, and keeps the edge (all local) from then on
        slow = SplitRunner(prog, url, "chain", a, link=Link(20e3, 0.05), bandwidth=1e9, rtt=0.0)
        slow.force(where="cloud")
        for _ in range(3):
            np.testing.assert_array_equal(slow(a), want)
        assert slow.replans >= 1 and slow.where == "edge" and slow.bandwidth < 1e6
