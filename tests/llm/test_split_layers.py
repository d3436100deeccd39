"""A decoder split by layers (llm/split.py): the first k layers and their KV caches on the device, the
rest on a server (in this process, and over HTTP in tests/serve): logits equal to the whole model's bit
for bit with float32 on the wire, greedy text equal with fp16, sessions that start over, bad requests
refused, and the planner's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_gguf  # noqa: E402

import edgecompress.llm as L  # noqa: E402
from edgecompress.llm.split import LayerServer, SessionError, layer_cut, plan_layers  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def gguf(request, tmp_path_factory):
    model = {"llama": lambda: hf_gguf.llama(layers=3), "gemma3": hf_gguf.gemma3}[request.param]()
    path = tmp_path_factory.mktemp("split") / f"{request.param}.gguf"
    hf_gguf.write(model, path, qtype="Q8_0")
    return path


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 400, n).astype(np.int64)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_split_logits_equal_the_whole_model(gguf, where):
    whole = L.load(gguf, n_ctx=64)
    total = whole.hparams.n_layer
    k = {"first": 1, "middle": total // 2, "last": total}[where]
    server = LayerServer(L.load(gguf, n_ctx=64))
    dev = L.load(gguf, n_ctx=64).offload(k, server, wire="fp32", top_k=400)  # every logit comes back
    ids = _ids(40)  # past the Gemma model's window of 8: the ring caches on both sides
    np.testing.assert_array_equal(dev.logits(ids), whole.logits(ids))
    # the KV cache is split: the device holds its k layers', the server the others'
    assert 0 < dev.kv_cache_bytes <= whole.kv_cache_bytes and (dev.kv_cache_bytes < whole.kv_cache_bytes or k == total)
    held = sum(a.nbytes for s in server._sessions.values() for a in s["caches"].values())
    assert dev.kv_cache_bytes + held == whole.kv_cache_bytes
    # decoding one token per call after a prompt, with the top 64 logits only: the same greedy text
    dev64 = L.load(gguf, n_ctx=64).offload(k, LayerServer(L.load(gguf, n_ctx=64)), wire="fp32")
    prompt = _ids(6, seed=1).tolist()
    want = whole.generate(prompt, max_new_tokens=12, temperature=0)
    assert dev64.generate(prompt, max_new_tokens=12, temperature=0) == want
    assert dev64.remote.stats["calls"] >= len(dev64.last_tokens) > 0  # one per token: the prompt, then each new one
    # a longer prompt that begins with the cached tokens reuses both sides' caches (pos > 0)
    more = prompt + dev64.last_tokens[:3] + [7, 8]
    assert dev64.generate(more, max_new_tokens=5, temperature=0) == whole.generate(more, max_new_tokens=5, temperature=0)


def test_fp16_and_int8_wire(gguf):
    """The wire's own error, with float32 weights (no int8 activations to hide it); with the file's Q8_0
    products it stays below what their int8 activations already cost."""
    ids = _ids(20, seed=2)
    ref = L.load(gguf, weights="float32", n_ctx=64).logits(ids)
    scale = np.abs(ref).max()
    n = L.load(gguf, n_ctx=64).hparams.n_embd
    for wire, tol, per_value in (("fp16", 1e-3, 2), ("int8", 2e-2, 1)):
        server = LayerServer(L.load(gguf, weights="float32", n_ctx=64))
        dev = L.load(gguf, weights="float32", n_ctx=64).offload(1, server, wire=wire, top_k=400)
        err = np.abs(dev.logits(ids) - ref).max() / scale
        assert 0 < err < tol, (wire, err)
        # two (tokens, n_embd) values cross per call, at per_value bytes each (plus headers and scales)
        calls = dev.remote.stats["calls"]
        assert 2 * ids.size * n * per_value < dev.remote.stats["up_bytes"] < 2 * ids.size * n * per_value + calls * 4096
    native = L.load(gguf, n_ctx=64).logits(ids)
    floor = np.abs(native - ref).max()
    dev = L.load(gguf, n_ctx=64).offload(1, LayerServer(L.load(gguf, n_ctx=64)), wire="fp16", top_k=400)
    assert np.abs(dev.logits(ids) - native).max() < floor


def test_a_lost_session_starts_over(gguf):
    whole = L.load(gguf, n_ctx=64)
    server = LayerServer(L.load(gguf, n_ctx=64), max_sessions=1)
    dev = L.load(gguf, n_ctx=64).offload(2, server, wire="fp32")
    prompt = _ids(5, seed=3).tolist()
    want = whole.generate(prompt, max_new_tokens=4, temperature=0)
    assert dev.generate(prompt, max_new_tokens=4, temperature=0) == want
    other = L.load(gguf, n_ctx=64).offload(2, server, wire="fp32")
    other.generate(prompt, max_new_tokens=2, temperature=0)  # evicts dev's session (one is kept)
    assert list(server._sessions) == [other.remote.session]
    more = prompt + dev.last_tokens + [9]
    calls = dev.remote.stats["calls"]
    # reuses the device's cache, finds the session gone, sends the context again: same text
    assert dev.generate(more, max_new_tokens=4, temperature=0) == whole.generate(more, max_new_tokens=4, temperature=0)
    assert dev.remote.stats["calls"] >= calls + 2


def test_bad_requests(gguf):
    llm = L.load(gguf, n_ctx=64)
    total = llm.hparams.n_layer
    server = LayerServer(llm)
    with pytest.raises(ValueError, match="layers"):
        layer_cut(llm.program, 0)
    with pytest.raises(ValueError, match="layers"):
        layer_cut(llm.program, total + 1)
    with pytest.raises(ValueError, match="layers"):
        L.load(gguf, n_ctx=64).offload(total + 1, server)
    with pytest.raises(TypeError, match="server"):
        L.load(gguf, n_ctx=64).offload(1, 3.5)
    with pytest.raises(ValueError, match="wire"):
        L.load(gguf, n_ctx=64).offload(1, server, wire="bf16")
    top = L.load(gguf, n_ctx=64).offload(1, server)  # the top 64 of 400 logits come back
    with pytest.raises(ValueError, match="top 64"):
        top.logits(_ids(4))
    with pytest.raises(ValueError, match="top 64"):
        top.perplexity("ab cd " * 40, n_ctx=16)
    with pytest.raises(ValueError, match="already split"):
        top.offload(1, server)
    cut = layer_cut(llm.program, 1)
    n = llm.hparams.n_embd
    good = {c: np.zeros((3, n), np.float32) for c in cut}
    good.update(pos=np.zeros(1, np.int64), rows=np.array([2], np.int64))
    server.run(1, "s", dict(good))
    for change, words in [({cut[0]: np.zeros((3, n + 1), np.float32)}, "float32"),
                          ({"rows": np.array([3], np.int64)}, "rows"),
                          ({"pos": np.array([70], np.int64)}, "context"),
                          ({"extra": np.zeros(1, np.int64)}, "inputs")]:
        with pytest.raises(ValueError, match=words):
            server.run(1, "s", dict(good, **change))
    with pytest.raises(SessionError, match="start over"):
        server.run(1, "s", dict(good, pos=np.array([9], np.int64)))  # the session holds 3 positions
    with pytest.raises(SessionError, match="start over"):
        server.run(1, "new", dict(good, pos=np.array([1], np.int64)))
    with pytest.raises(ValueError, match="top_k"):
        server.run(1, "s", dict(good), top_k=-1)
    with pytest.raises(ValueError, match="session"):
        server.run(1, "", dict(good))


def test_plan_layers_arithmetic():
    # 2 layers; device parts [embed, l0, l1, head] 1 s each per call; the server 10x faster
    dev = (np.ones(4), np.ones(4))
    srv = (np.full(4, 0.1), np.full(4, 0.1))
    p = plan_layers(dev, srv, n_embd=100, prompt=10, new=2, bandwidth=1e6, rtt=0.0, wire="fp16", top_k=10)
    assert p.seconds["edge"] == pytest.approx(4 + 2 * 4)
    # cloud-only: three calls of the server's 4 parts, ids up (8 bytes each + 16) and 120 bytes down
    assert p.seconds[0] == pytest.approx(3 * 0.4 + (8 * 10 + 16 + 2 * (8 + 16) + 3 * 120) / 1e6)
    # one layer on the device: embed + l0 there, l1 + head on the server, 2 fp16 values of 100 up
    up = (2 * (10 * 100 * 2 + 64) + 16) + 2 * (2 * (100 * 2 + 64) + 16)
    assert p.seconds[1] == pytest.approx(3 * (2 + 0.2) + (up + 3 * 120) / 1e6) and p.up_bytes[1] == up
    assert p.best == 0
    slow = plan_layers(dev, srv, 100, 10, 2, bandwidth=1e6, rtt=5.0)
    assert slow.best == "edge"  # a round trip of 5 s per call: all on the device
    with pytest.raises(ValueError):
        plan_layers(dev, srv, 100, 0, 2, 1e6, 0.0)


def test_the_split_command_on_a_gguf_model(gguf, capsys):
    from edgecompress.cli import main

    assert main(["split", str(gguf), "--bandwidth", "10Mbit", "--rtt", "1ms", "--prompt-tokens", "8",
                 "--new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    for words in ("0 (cloud-only)", "all (edge-only)", "is best", "edge-only", "cloud-only", "layers on the device"):
        assert words in out
    assert main(["split", str(gguf), "--bandwidth", "fast"]) == 1
    assert "--bandwidth" in capsys.readouterr().err
