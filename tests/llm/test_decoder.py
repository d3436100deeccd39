"""The decoder on the engine against transformers: small random-weight Llama and Gemma 3 models written
to GGUF (hf_gguf.py), float32 logits within 1e-4 of the logit scale, identical greedy generations, the
KV cache (sliding-window rings included) equal to a full-sequence forward, and quantized files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_gguf  # noqa: E402

import edgecompress.llm as L  # noqa: E402

ARCHS = {"llama": hf_gguf.llama, "gemma3": hf_gguf.gemma3}


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None]).logits[0].float().numpy()


def _hf_greedy(model, ids: np.ndarray, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids)[None], max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             eos_token_id=None, pad_token_id=0)
    return out[0, ids.size:].tolist()


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def f32_model(request, tmp_path_factory):
    model = ARCHS[request.param]()
    path = tmp_path_factory.mktemp("gguf") / f"{request.param}-f32.gguf"
    hf_gguf.write(model, path)
    return request.param, model, path


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(4, 400, n).astype(np.int64)


def test_float32_logits_match_transformers(f32_model):
    arch, model, path = f32_model
    ids = _ids(40)  # longer than the Gemma model's window of 8: local layers mask, the global one does not
    ref = _hf_logits(model, ids)
    llm = L.load(path, n_ctx=64)
    got = llm.logits(ids)
    assert got.dtype == np.float32 and got.shape == (40, 400)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_greedy_generation_matches_transformers(f32_model):
    arch, model, path = f32_model
    prompt = _ids(6, seed=1)
    want = _hf_greedy(model, prompt, 20)
    llm = L.load(path, n_ctx=64)
    llm.generate(prompt.tolist(), max_new_tokens=20, temperature=0)
    assert llm.last_tokens == want


@pytest.mark.parametrize("n_ctx", [64, 24])
def test_cache_decoding_equals_full_forward(f32_model, n_ctx):
    """Token by token, and in uneven chunks, through the caches (n_ctx 24: Gemma's global cache is
    the whole context; its rings wrap many times) equals one forward of the whole sequence."""
    arch, model, path = f32_model
    ids = _ids(n_ctx)
    llm = L.load(path, n_ctx=n_ctx)
    full = llm.logits(ids)
    llm.reset()
    steps = np.concatenate([llm._eval(ids[t:t + 1], True) for t in range(ids.size)])
    np.testing.assert_allclose(steps, full, rtol=0, atol=2e-6 * np.abs(full).max())
    llm.reset()
    cuts = [0, 5, 6, 17, n_ctx]
    chunks = np.concatenate([llm._eval(ids[a:b], True) for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_allclose(chunks, full, rtol=0, atol=2e-6 * np.abs(full).max())


def test_context_overflow_is_a_clear_error(f32_model):
    _, _, path = f32_model
    llm = L.load(path, n_ctx=16)
    llm.logits(_ids(16))
    with pytest.raises(ValueError, match="context holds 16"):
        llm._eval(_ids(1), False)
    with pytest.raises(ValueError, match="n_ctx"):
        L.load(path, n_ctx=10**9)
    with pytest.raises(ValueError, match="token ids"):
        llm.logits([5, 400])


@pytest.mark.parametrize("qtype,form,exact", [("Q8_0", "int8-g32", True), ("Q5_0", "int8-g32", True),
                                              ("Q4_0", "int4", True), ("Q4_1", "int8-g32", False)])
def test_quantized_files(tmp_path, qtype, form, exact):
    """weights="float32" equals transformers on the file's dequantized values within 1e-4; "native"
    holds Q8_0, Q5_0 and Q4_0 exactly (only its activations are quantized, per group of 32) and
    Q4_1 requantized, and says which per tensor."""
    model = hf_gguf.llama(vocab=320)
    path = tmp_path / f"llama-{qtype}.gguf"
    hf_gguf.write(model, path, qtype)
    ref_model = hf_gguf.dequantized_copy(model, path)
    ids = _ids(24) % 320
    ref = _hf_logits(ref_model, ids)
    f32 = L.load(path, weights="float32", n_ctx=32)
    np.testing.assert_allclose(f32.logits(ids), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    native = L.load(path, n_ctx=32)
    got = native.logits(ids)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 0.03, rel
    # the products' weights (the untied embedding table is int8 rows for every type but float)
    mats = [t for t in native.report.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    assert all(t.exact == exact and t.form == form for t in mats), [(t.name, t.form, t.exact) for t in mats]
    assert all((t.max_error == 0) == exact for t in mats)
    assert native.report.file_bytes == sum(t.file_bytes for t in native.report.tensors)


def test_split_int8_is_exact_and_its_embedding_rows_too(tmp_path):
    """A tied Q8_0 table: the head's two 4-bit halves equal d * q, and the embedding op's rows read
    from them equal gguf's dequantization bit for bit."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model = hf_gguf.gemma3(vocab=300)
    path = tmp_path / "gemma-q8.gguf"
    hf_gguf.write(model, path, "Q8_0")
    t = {x.name: x for x in GGUFReader(str(path)).tensors}["token_embd.weight"]
    want = dequantize(t.data, t.tensor_type).reshape(300, 64)
    from edgecompress.llm.model import read

    _, _, weights, _ = read(path, "native")
    np.testing.assert_array_equal(weights["head"].to_float(), want)
    llm = L.load(path, n_ctx=16)
    with pytest.raises(ValueError, match="released"):  # the program keeps only the packed products
        llm.program.reference(np.array([1]), np.array([0]), np.array([0]), *llm._caches)
    from edgecompress.engine.builder import GraphBuilder

    # the embedding rows the model looks up: read from the packed halves of the head (mode 3)
    head = weights["head"]
    g = GraphBuilder()
    ids = g.input("ids", "int64", ("n",))
    g.weight("hi", head.hi)
    g.weight("lo", head.lo)
    out = g.op("embedding", [ids], "embed", halves=["hi", "lo"])
    prog = g.program([out], {})
    sel = np.array([0, 5, 299, 17, 5], np.int64)
    np.testing.assert_array_equal(prog(sel), want[sel])  # native, from the packed layout
    np.testing.assert_array_equal(prog.reference(sel), want[sel])  # oracle
    with pytest.raises(ValueError, match="ids"):
        prog(np.array([300]))
    # the 4-bit-tables form (an untied table) too
    g = GraphBuilder()
    ids = g.input("ids", "int64", ("n",))
    tables = [g.weight("h", head.hi.qweight), g.weight("l", head.lo.qweight), g.weight("d", head.lo.scale)]
    prog = g.program([g.op("embedding", [ids] + tables, "embed")], {})
    np.testing.assert_array_equal(prog(sel), want[sel])
    np.testing.assert_array_equal(prog.reference(sel), want[sel])
    assert not any(k.startswith("embd.") for k in llm.program.weights)  # the model holds no table of its own


@pytest.mark.parametrize("mode", ["int8", "int4-g32", "nf4"])
def test_recompressed_weights(f32_model, mode):
    arch, model, path = f32_model
    ids = _ids(16)
    ref = _hf_logits(model, ids)
    llm = L.load(path, weights=mode, n_ctx=32)
    got = llm.logits(ids)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > (0.99 if mode == "int8" else 0.9)
    assert {t.form for t in llm.report.tensors if t.name.startswith("blk.") and len(t.shape) == 2} == {mode[:4]}


def test_unknown_weights_mode(f32_model):
    with pytest.raises(ValueError, match="weights"):
        L.load(f32_model[2], weights="int3")


def test_mutated_model_files_give_value_errors_only(tmp_path):
    """A small Gemma file (its metadata, tensor table and data) with random bytes overwritten, cut
    short or values swapped, 1500 times through ``load``: each load succeeds or raises ValueError,
    nothing crashes or hangs. Mutations aim at the header, where the hyperparameters, vocabulary and
    tensor table lie."""
    import signal
    import time

    model = hf_gguf.gemma3(vocab=300, layers=2)
    path = tmp_path / "base.gguf"
    hf_gguf.write(model, path, "Q8_0")
    base = path.read_bytes()
    with L.GGUFFile(path) as f:
        header_end = f.data_offset
    rng = np.random.default_rng(11)
    bad = tmp_path / "mutated.gguf"
    counts = {"ok": 0, "ValueError": 0}

    def too_slow(signum, frame):
        raise TimeoutError("a mutated file's load ran past its time bound")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(600)
    start = time.perf_counter()
    try:
        for i in range(1500):
            data = bytearray(base)
            kind = i % 4
            if kind == 0:  # a few random bytes in the header
                for _ in range(rng.integers(1, 4)):
                    data[rng.integers(0, header_end)] = rng.integers(0, 256)
            elif kind == 1:  # a 4- or 8-byte integer set to an extreme (counts, dims, offsets, ids)
                at = int(rng.integers(0, header_end - 8))
                width = int(rng.choice([4, 8]))
                value = [0, 1, 2**31 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1][int(rng.integers(0, 6))]
                data[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
            elif kind == 2:  # cut short
                data = data[: int(rng.integers(0, len(data)))]
            else:  # bytes in the tensor data (scales may become NaN or Inf)
                for _ in range(8):
                    data[rng.integers(header_end, len(data))] = rng.integers(0, 256)
            bad.write_bytes(bytes(data))
            try:
                llm = L.load(bad, n_ctx=16)
                llm.generate([2, 5, 6], max_new_tokens=2, temperature=0)
                counts["ok"] += 1
            except ValueError:
                counts["ValueError"] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert counts["ValueError"] > 500, counts
    assert time.perf_counter() - start < 600


def test_an_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    """blk.0.ffn_up relabelled IQ4_NL (a type edgecompress does not load; its blocks are smaller than
    Q8_0's, so the data still fits): load refuses it by name."""
    import struct

    model = hf_gguf.llama(vocab=320, layers=1)
    path = tmp_path / "q8.gguf"
    hf_gguf.write(model, path, "Q8_0")
    data = bytearray(path.read_bytes())
    name = b"blk.0.ffn_up.weight"
    at = data.find(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    assert struct.unpack_from("<I", data, type_at)[0] == 8  # Q8_0
    struct.pack_into("<I", data, type_at, 20)  # IQ4_NL
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"'blk\.0\.ffn_up\.weight' has GGML type IQ4_NL"):
        L.load(path, n_ctx=16)
