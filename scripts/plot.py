"""Figures of a sweep, sized for a paper column (PNG at 200 dpi and PDF).

    python -m scripts.plot <kind> <sweep dir> [--out DIR] [--models M ...] [--model M] [--indices I ...]
        [--param scale] [--rank-csv PATH] [--psnr-threshold 30] [--by index|model] [--name NAME]

Kinds (each writes ``<out>/<kind>.png`` and ``<out>/<kind>.pdf``, or ``<NAME>.*``; default ``--out``:
``<sweep dir>/figures``), each drawn by its module in ``scripts/reports/``:

* ``time`` (``reports.time_curves``): PSNR (top) and MSE (bottom) against attack wall time, one column per
  architecture. Optimisation attacks: median and inter-quartile band of the ok trials' traces
  (``trials/<hash>/trace.csv``) on a common log-spaced time grid; closed-form attacks (one trace point): one marker
  per trial.
* ``gallery`` (``reports.gallery``): original and each attack's reconstruction (``origin.png`` /
  ``reconstructed.png``) for a few images (``--indices``, default the first 4) of one model (``--model``, default the
  first), PSNR under each; ``--by model``: one row per model for one image (the rank figure's layout).
* ``rank`` (``reports.rank``): PSNR per attack (trials and median) on each network, the networks ordered by their
  numerical rank deficiency from ``--rank-csv`` (or worst-layer index_v when the deficiency was not computed).
* ``noise`` (``reports.noise``): median PSNR (inter-quartile band) against the defense parameter ``--param``
  (``scale``: log axis, ``prune_ratio``: linear), one panel per model, with a dashed line at 20 dB.

PSNR values above 100 dB (exact recoveries reach hundreds of dB, or infinity) are drawn at 100 dB.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rgap.core.errors import UserInputError
from scripts.reports.outputs import FIGURES, make_plot


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: draw one figure; 2 (and one paragraph on stderr) on a ``UserInputError``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", help=f"one of {', '.join(FIGURES)}")
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None, help="output directory (default: <sweep dir>/figures)")
    parser.add_argument("--models", nargs="+", default=None, help="models to show (time, noise; default all)")
    parser.add_argument("--model", default=None, help="the gallery's model (default: the first)")
    parser.add_argument("--indices", nargs="+", type=int, default=None, help="gallery images (default first 4)")
    parser.add_argument("--by", default="index", help="gallery rows: index (images of one model) or model")
    parser.add_argument("--name", default=None, help="file name without extension (default: the kind)")
    parser.add_argument("--param", default="scale", help="defense_params key on the x axis (noise)")
    parser.add_argument("--rank-csv", default=None, help="rank analysis per layer with a model column (rank)")
    parser.add_argument("--psnr-threshold", type=float, default=30.0, help="R-GAP 'ok' threshold in dB (rank)")
    args = parser.parse_args(argv)
    try:
        paths = make_plot(args.kind, args.sweep_dir, args.out, args.models, args.model, args.indices, args.param,
                          args.rank_csv, args.psnr_threshold, args.by, args.name)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
