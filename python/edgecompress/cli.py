"""The ``edgecompress`` command: ``demo``, ``generate``, ``chat``, ``perplexity``, ``bench`` and ``report``."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import __version__
from .formats._common import show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecompress", description="Compressed neural networks on CPUs.")
    parser.add_argument("--version", action="version", version=f"edgecompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench, demo
    from .llm import cli as llm_cli
    from .llm import demo as llm_demo

    bench_p = sub.add_parser(
        "bench", help="a GGUF model's prefill and decode speed (bench MODEL.gguf), or without a model the "
                      "int8 GEMM microbenchmarks; next to the peers that are installed")
    bench_p.add_argument("model", nargs="?", metavar="MODEL.gguf",
                         help="a GGUF file: prefill 512 and decode 128 tokens, as llama-bench reports them")
    bench_p.add_argument("--weights", default=None, help="with MODEL.gguf: comma-separated weights= forms (default native)")
    bench.add_arguments(bench_p)
    demo_p = sub.add_parser(
        "demo", help="Gemma 3 270M on this CPU without torch: a generation, then size, speed and perplexity "
                     "of each weights= form next to llama.cpp ('demo digits': the CNN compression demo)",
        description=llm_demo.__doc__.split("\n\n")[0])
    llm_demo.add_arguments(demo_p)
    demo_sub = demo_p.add_subparsers(dest="demo", required=False)
    demo.add_arguments(demo_sub.add_parser(
        "digits", help="train a small CNN on the digits, compress it with each recipe, compare with torch "
                       "(needs torch and scikit-learn)", description=demo.__doc__.split("\n\n")[0]))
    llm_cli.add_commands(sub)
    serve_p = sub.add_parser("serve", help="serve a GGUF model (OpenAI-compatible /v1/completions, /v1/chat/completions) "
                                           "or a saved program (Open Inference Protocol v2) over HTTP (the serve extra)")
    serve_p.add_argument("model", metavar="MODEL", help="a .gguf file or a program saved by edgecompress.engine.save")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--port", type=int, default=8000)
    serve_p.add_argument("--name", default=None, help="the model's name in the API (default: the file's stem)")
    serve_p.add_argument("--max-request-mb", type=float, default=64, help="largest request body (default 64 MB)")
    serve_p.add_argument("--ray", action="store_true", help="deploy on Ray Serve (ray[serve]) instead of uvicorn: the "
                                                            "cluster of RAY_ADDRESS, or a local one")
    serve_p.add_argument("--replicas", type=int, default=1, help="with --ray: replicas (default 1)")
    serve_p.add_argument("--max-replicas", type=int, default=None,
                         help="with --ray: autoscale between --replicas and this many")
    serve_p.add_argument("--max-batch-size", type=int, default=1,
                         help="with --ray: batch up to this many program requests per call (Ray Serve's dynamic "
                              "batching; default 1: off)")
    serve_p.add_argument("--batch-wait-ms", type=float, default=5.0,
                         help="with --ray: the longest wait for a batch to fill (default 5 ms)")
    split_p = sub.add_parser("split", help="where to cut a saved program between a device and a server for a link: "
                                           "the plan, predicted and measured (emulated link) against edge-only and cloud-only")
    split_p.add_argument("model", metavar="MODEL", help="a program saved by edgecompress.engine.save, or a GGUF "
                                                        "language model (split by layers)")
    split_p.add_argument("--bandwidth", default="10Mbit", help="the link, e.g. 1Mbit, 10Mbit, 100Mbit, 5MB (default 10Mbit)")
    split_p.add_argument("--rtt", default="20ms", help="the round trip, e.g. 20ms, 0.1s (default 20ms)")
    split_p.add_argument("--dims", default="", help="sizes of the named dimensions, e.g. batch=1,seq=128 (default 1 each)")
    split_p.add_argument("--device-threads", type=int, default=1, help="threads of the device side (default 1)")
    split_p.add_argument("--server-threads", type=int, default=None, help="threads of the server side (default: every CPU)")
    split_p.add_argument("--wire", default=None, help="cut tensors as fp32, fp16 or int8 (default int8; fp16 for "
                                                      "a language model)")
    split_p.add_argument("--prompt-tokens", type=int, default=64, help="a language model: the prompt's tokens (default 64)")
    split_p.add_argument("--new-tokens", type=int, default=32, help="a language model: tokens generated (default 32)")
    split_p.add_argument("--codec", default=None, help="zstd or lz4 over the wire (default none)")
    report = sub.add_parser("report", help="the per-layer report of a model saved by edgecompress.save",
                            description="Modules, formats and bytes of a saved model (from its manifest), "
                                        "and the report of edgecompress.compress when it was saved with one.")
    report.add_argument("model_file", metavar="MODEL_FILE", help="a .safetensors file written by edgecompress.save")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return llm_cli.bench_model(args) if args.model else bench.run(args)
    if args.command == "demo":
        return demo.run(args) if args.demo == "digits" else llm_demo.run(args)
    if args.command in ("generate", "chat", "perplexity"):
        return llm_cli.run(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "split":
        from .engine.split_cli import run as run_split, run_llm

        return run_llm(args) if args.model.endswith(".gguf") else run_split(args)
    return _report(args.model_file)


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serve import run, run_ray
    except ImportError as e:
        print(f'edgecompress serve: needs fastapi and uvicorn: pip install "edgecompress[serve]" ({e})', file=sys.stderr)
        return 1
    try:
        limit = int(args.max_request_mb * (1 << 20))
        if args.ray:
            run_ray(args.model, args.host, args.port, args.name, limit, args.replicas, args.max_replicas,
                    args.max_batch_size, args.batch_wait_ms / 1e3)
        else:
            run(args.model, args.host, args.port, args.name, limit)
    except ImportError as e:
        print(f'edgecompress serve: needs fastapi and uvicorn: pip install "edgecompress[serve]" ({e})', file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"edgecompress serve: {e}", file=sys.stderr)
        return 1
    return 0


def _report(path: str) -> int:
    """Print the compressed modules of a saved model and its stored compress report; a file that is
    not a readable edgecompress file gets a one-line error and exit code 1."""
    try:
        from safetensors import safe_open

        from .compress.summary import CompressReport
        from .serialization import read_manifest
    except ImportError as e:
        print(f"edgecompress report: needs torch and safetensors: pip install \"edgecompress[torch]\" ({e})",
              file=sys.stderr)
        return 1
    try:
        manifest = read_manifest(path)
        with safe_open(path, framework="pt") as f:
            sizes = {key: math.prod(f.get_slice(key).get_shape()) * _DTYPE_BYTES.get(f.get_slice(key).get_dtype(), 4)
                     for key in f.keys()}
    except (OSError, ValueError) as e:  # (read_manifest checked the file; OSError: it changed since)
        print(f"edgecompress report: {_one_line(e)}", file=sys.stderr)
        return 1
    rows = [["module", "type", "formats", "weight bytes", "config"]]
    for name, extra in manifest["modules"].items():
        weight_bytes = sum(b for k, b in sizes.items() if k.startswith(f"{name}.weight."))
        formats = sorted({_format(w) for w in extra["weights"]})
        config = ", ".join(f"{k}={show(v)}" for k, v in extra["config"].items())
        rows.append([name, extra["module"], ", ".join(formats), str(weight_bytes), config])
    compressed = sum(int(r[3]) for r in rows[1:])
    rest = sum(b for k, b in sizes.items() if not any(k.startswith(f"{n}.") for n in manifest["modules"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{path}: edgecompress file version {manifest['version']}, written by edgecompress "
             f"{show(manifest['edgecompress_version'])}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[:1] + [["-" * w for w in widths]] + rows[1:]]
    file_bytes = os.path.getsize(path)
    lines.append(f"{len(rows) - 1} compressed modules, {compressed} weight bytes; float rest: {rest} bytes; "
                 f"file: {file_bytes} bytes")
    if manifest["recipe"] is not None:
        lines.append(f"recipe: {show(manifest['recipe'])}")
    if manifest.get("report") is not None:
        try:
            report = CompressReport.from_dict(manifest["report"])
            report.file_bytes = file_bytes  # (a file cannot hold its own size)
            lines.append(str(report))
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a hand-edited report's entries
            print(f"edgecompress report: the stored compress report is unreadable: {_one_line(e)}", file=sys.stderr)
            return 1
    print("\n".join(lines))
    return 0


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:500]


_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}


def _format(meta: dict) -> str:
    """A weight's format and its main option, from its metadata (checked only for its format)."""
    fmt = meta["format"]
    dtypes = meta.get("dtypes")
    detail = {"int8": meta.get("granularity"), "sparse": meta.get("layout"), "int4": f"g{show(meta.get('group_size'))}",
              "lowrank": "/".join(sorted({show(v) for v in dtypes.values()})) if isinstance(dtypes, dict) else None}
    value = detail.get(fmt)
    return f"{fmt} {value[:80] if isinstance(value, str) else '' if value is None else show(value)}".strip()


if __name__ == "__main__":
    sys.exit(main())
