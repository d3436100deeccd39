"""The ``edgecompress`` command: ``bench``, ``demo`` and ``report``."""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecompress", description="Compressed neural networks on CPUs.")
    parser.add_argument("--version", action="version", version=f"edgecompress {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import bench, demo

    bench.add_arguments(sub.add_parser(
        "bench", help="int8 GEMM microbenchmarks on this CPU, next to the peers that are installed"))
    demo.add_arguments(sub.add_parser(
        "demo", help="train a small CNN on the digits, compress it with each recipe, compare with torch",
        description=demo.__doc__.split("\n\n")[0]))
    report = sub.add_parser("report", help="the per-layer report of a model saved by edgecompress.save",
                            description="Modules, formats and bytes of a saved model (from its manifest), "
                                        "and the report of edgecompress.compress when it was saved with one.")
    report.add_argument("model_file", metavar="MODEL_FILE", help="a .safetensors file written by edgecompress.save")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench.run(args)
    if args.command == "demo":
        return demo.run(args)
    return _report(args.model_file)


def _report(path: str) -> int:
    """Print the compressed modules of a saved model and its stored compress report."""
    try:
        from safetensors import safe_open

        from .compress.summary import CompressReport
        from .serialization import read_manifest
    except ImportError as e:
        print(f"edgecompress report needs torch and safetensors: pip install \"edgecompress[torch]\" ({e})",
              file=sys.stderr)
        return 1
    try:
        manifest = read_manifest(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"edgecompress report: {e}", file=sys.stderr)
        return 1
    sizes = {}
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            s = f.get_slice(key)
            n = 1
            for d in s.get_shape():
                n *= d
            sizes[key] = n * _DTYPE_BYTES.get(s.get_dtype(), 4)
    rows = [["module", "type", "formats", "weight bytes", "config"]]
    for name, extra in manifest["modules"].items():
        weight_bytes = sum(b for k, b in sizes.items() if k.startswith(f"{name}.weight."))
        formats = sorted({_format(w) for w in extra.get("weights", [])})
        config = ", ".join(f"{k}={v}" for k, v in extra.get("config", {}).items())
        rows.append([name, str(extra.get("module")), ", ".join(formats), str(weight_bytes), config])
    compressed = sum(int(r[3]) for r in rows[1:])
    rest = sum(b for k, b in sizes.items() if not any(k.startswith(f"{n}.") for n in manifest["modules"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"{path}: edgecompress file version {manifest['version']}, written by edgecompress "
          f"{manifest.get('edgecompress_version')}")
    for r in rows[:1] + [["-" * w for w in widths]] + rows[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    file_bytes = os.path.getsize(path)
    print(f"{len(rows) - 1} compressed modules, {compressed} weight bytes; float rest: {rest} bytes; "
          f"file: {file_bytes} bytes")
    if manifest.get("recipe") is not None:
        print(f"recipe: {manifest['recipe']}")
    if manifest.get("report") is not None:
        try:
            report = CompressReport.from_dict(manifest["report"])
            report.file_bytes = file_bytes  # (a file cannot hold its own size)
            print(report)
        except ValueError as e:
            print(f"the stored compress report is unreadable: {e}", file=sys.stderr)
            return 1
    return 0


_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1,
                "BOOL": 1}


def _format(meta: dict) -> str:
    """A weight's format and its main option, from its metadata."""
    fmt = meta.get("format")
    detail = {"int8": meta.get("granularity"), "sparse": meta.get("layout"),
              "int4": f"g{meta.get('group_size')}", "lowrank": "/".join(sorted(set((meta.get("dtypes") or {}).values())))}
    return f"{fmt} {detail.get(fmt) or ''}".strip()


if __name__ == "__main__":
    sys.exit(main())
