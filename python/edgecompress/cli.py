"""The ``edgecompress`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecompress", description="Compressed neural networks on CPUs.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="int8 GEMM microbenchmarks on this CPU, next to the peers that are installed")
    from .bench import add_arguments, run

    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
