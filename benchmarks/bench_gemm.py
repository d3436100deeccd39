"""int8 GEMM benchmark (also `edgecompress bench`): writes benchmarks/results/<cpu>.md.

    python benchmarks/bench_gemm.py            # standard shapes, 1 thread and all threads
    python benchmarks/bench_gemm.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from edgecompress.bench import add_arguments, cpu_slug, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args()
    if args.output is None and not args.quick:
        args.output = str(pathlib.Path(__file__).parent / "results" / f"{cpu_slug()}.md")
    sys.exit(run(args))
