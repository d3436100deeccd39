"""The LLM commands of ``edgecompress``: ``generate``, ``chat``, ``perplexity`` and ``bench MODEL.gguf``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_commands", "bench_model"]


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.gguf", help="a GGUF file (architectures llama, gemma3)")
    p.add_argument("--weights", default="native", help="native (default), float32, int8, int4-g32 or nf4")
    p.add_argument("--ctx", type=int, default=None, help="context length (default: the model's, at most 4096)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: every CPU)")


def _sampling_arguments(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--temp", type=float, default=temperature, help=f"temperature (0: greedy; default {temperature})")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def add_commands(sub: Any) -> None:
    g = sub.add_parser("generate", help="generate text after a prompt with a GGUF model (streams it)")
    _model_arguments(g)
    g.add_argument("-p", "--prompt", required=True, help="the prompt text")
    g.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    _sampling_arguments(g, 0.8)
    c = sub.add_parser("chat", help="chat with a GGUF model in the terminal (its chat template)")
    _model_arguments(c)
    c.add_argument("-n", "--n-predict", type=int, default=256, help="tokens per reply at most (default 256)")
    c.add_argument("--system", default=None, help="a system message")
    _sampling_arguments(c, 0.8)
    pp = sub.add_parser("perplexity", help="perplexity of a GGUF model on a text file (llama.cpp's windows)")
    _model_arguments(pp)
    pp.add_argument("text_file", metavar="TEXTFILE")
    pp.add_argument("--window", type=int, default=512, help="tokens per window (default 512)")


def _load(args: argparse.Namespace) -> Any:
    import edgecompress as ec

    from . import load

    if args.threads is not None:
        ec.set_num_threads(args.threads)
    return load(args.model, weights=args.weights, n_ctx=args.ctx)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repeat_penalty=args.repeat_penalty, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    try:
        llm = _load(args)
        if args.command == "generate":
            print(args.prompt, end="", flush=True)
            for piece in llm.generate(args.prompt, args.n_predict, stream=True, **_sampling(args)):
                print(piece, end="", flush=True)
            t = llm.timings
            print(f"\n\nprompt: {t.prompt_tokens} tokens, {t.prompt_tps:.1f} tokens/s; "
                  f"decode: {t.decode_tokens} tokens, {t.decode_tps:.1f} tokens/s", file=sys.stderr)
            return 0
        if args.command == "chat":
            return _chat(llm, args)
        with open(args.text_file, encoding="utf-8") as f:
            text = f.read()
        ppl, n, pairs = llm.perplexity(text, args.window)
        print(f"perplexity {ppl:.4f} over {n} tokens (windows of {args.window}, each scored on its second half)")
        return 0
    except (ValueError, TypeError, OSError) as e:
        print(f"edgecompress {args.command}: {e}", file=sys.stderr)
        return 1


def _chat(llm: Any, args: argparse.Namespace) -> int:
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("(an empty line or end of input ends the chat)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        reply = []
        for piece in llm.chat(messages, args.n_predict, stream=True, **_sampling(args)):
            print(piece, end="", flush=True)
            reply.append(piece)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def bench_model(args: argparse.Namespace) -> int:
    """``edgecompress bench MODEL.gguf``: prefill 512 and decode 128 at each thread count, next to
    llama.cpp when llama-cpp-python is installed."""
    from . import GGUFFile, load
    from .arch import hparams
    from .bench import LlamaCpp, Ours, llama_cpp_available, run_rounds

    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, _cpus()})
    weights = args.weights.split(",") if getattr(args, "weights", None) else ["native"]
    peer = llama_cpp_available() and not args.no_peers
    rows = ["| weights | threads | prefill 512 tok/s | decode 128 tok/s | llama.cpp prefill | llama.cpp decode |",
            "|---|---|---|---|---|---|"]
    try:
        for w in weights:
            with GGUFFile(args.model) as f:
                n_ctx = min(1024, hparams(f).context_length)
            llm = load(args.model, weights=w, n_ctx=n_ctx)
            # llama-bench's sizes, smaller where the model's context is shorter
            pp, prompt_len = min(512, n_ctx), min(128, n_ctx // 4)
            tg = min(32 if args.quick else 128, n_ctx - prompt_len)
            for t in threads:
                cont: dict[str, Any] = {"ours": Ours(llm, t)}
                if peer and w == weights[0]:
                    cont["llama.cpp"] = LlamaCpp(args.model, t, n_ctx)
                r = run_rounds(cont, llm.hparams.n_vocab, llm.tokenizer.bos_id, pp=pp, tg=tg, rounds=args.rounds or 3,
                               prompt_len=prompt_len)
                lc = r.get("llama.cpp")
                rows.append(f"| {w} | {t} | {r['ours']['prefill']:.1f} | {r['ours']['decode']:.1f} | "
                            f"{lc['prefill']:.1f} | {lc['decode']:.1f} |" if lc else
                            f"| {w} | {t} | {r['ours']['prefill']:.1f} | {r['ours']['decode']:.1f} | - | - |")
                print(rows[-1] if len(rows) > 3 else "\n".join(rows), flush=True)
    except (ValueError, TypeError, OSError) as e:
        print(f"edgecompress bench: {e}", file=sys.stderr)
        return 1
    if not peer:
        print("(llama.cpp: pip install llama-cpp-python to measure it beside)", file=sys.stderr)
    return 0


def _cpus() -> int:
    from .. import _core

    return int(_core.default_num_threads())
