"""Render a sweep's rows as the paper's tables (Markdown and CSV).

    python -m scripts.paper_tables <sweep dir> --experiment {table1,rank,noise,labels} [--out DIR]
        [--rank-csv PATH] [--param scale] [--psnr-threshold 30] [--note TEXT]

Reads ``<sweep dir>/trials.csv`` (or the sweep's row files when it is missing) and writes ``<out>/<experiment>.md``
and ``<out>/<experiment>.csv`` (default ``--out``: the sweep directory). Each table belongs to its experiment's
module in ``scripts/reports/``:

* ``table1`` (``reports.table1``): rows = attacks, columns = architectures; MSE (headline), PSNR, SSIM, LPIPS and
  time tables.
* ``labels`` (``reports.labels``): DLG / iDLG label accuracy per dataset, next to the iDLG paper's Table 1.
* ``rank`` (``reports.rank``): the rank analysis (``--rank-csv``, ``rgap.algorithm.rank.rank_table`` rows with
  a ``model`` column) per model, joined with each attack's median PSNR, and whether the prediction agrees with what
  it achieved.
* ``noise`` (``reports.noise``): median PSNR per defense level (``--param``, read from ``defense_params``) and attack.

Cells are ``mean ± std (n=K)`` with the *sample* standard deviation (ddof=1) over the ok trials; a cell also counts
its unsupported and failed trials (they are never averaged in), and an empty metric shows ``n/a`` with a footnote
quoting the trials' ``metric_notes``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rgap.core.errors import UserInputError
from scripts.reports.outputs import TABLES, write_tables


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the tables; 2 (and one paragraph on stderr) on a ``UserInputError``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--experiment", required=True, help=f"one of {', '.join(TABLES)}")
    parser.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    parser.add_argument("--rank-csv", default=None, help="rank analysis per layer with a model column (rank)")
    parser.add_argument("--param", default="scale", help="defense_params key of the noise level (noise)")
    parser.add_argument("--psnr-threshold", type=float, default=30.0, help="R-GAP 'ok' threshold in dB (rank)")
    parser.add_argument("--note", default=None, help="a 'Setting:' paragraph under the caption (Markdown)")
    args = parser.parse_args(argv)
    try:
        paths = write_tables(args.sweep_dir, args.experiment, args.out, args.rank_csv, args.param,
                             args.psnr_threshold, args.note)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
