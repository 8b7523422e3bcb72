"""Gather a sweep's rows into one table and summarise it.

    python -m scripts.collect <sweep dir> [--psnr-threshold 30]

Writes ``trials.csv`` (every row, sorted), ``summary.csv`` and ``summary.md`` into the sweep directory (see
``rgap.harness.collect``). Invalid row files are named and nothing is written; re-running the sweep recomputes them.
"""

from __future__ import annotations

import argparse
import math
import sys

from rgap.core.errors import UserInputError
from rgap.harness.collect import GROUP, METRICS, collect, load_rows, summarize
from rgap.harness.schema import read_table

__all__ = ["GROUP", "METRICS", "collect", "load_rows", "main", "summarize"]


def _threshold(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"--psnr-threshold must be a finite number of dB, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--psnr-threshold", type=_threshold, default=30.0)
    args = parser.parse_args(argv)
    try:
        paths = collect(args.sweep_dir, args.psnr_threshold)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = read_table(paths[0])
    print(f"{len(table)} trials ({', '.join(f'{k} {v}' for k, v in table['status'].value_counts().items())})")
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
