"""How R-GAP scales with the input size: a CNN6-style network on the offline photos at several resolutions.

    python -m scripts.bench_scaling [--sizes 32 64 128] [--images 2] [OVERRIDE ...]
    python -m scripts.bench_scaling --sizes 128 224 model=cnn6w          # issue 13's CNN6-W targets

Each size runs ``python -m scripts.bench_rgap --precision float64 --images N model=cnn6w dataset.size=<size>
OVERRIDE...`` (default model: ``cnn6w``) in a fresh child process, so that its peak resident memory (VmHWM) is
its own; the trials are those of ``runners.attack`` (float64 gradients, reversed label). Prints per size the median
seconds per image (the rows' ``time_s``), the child's peak memory, the median and minimum PSNR; a least-squares
fit of ``time ~ pixels^a`` and ``peak memory ~ pixels^b``; and per layer of the first image how it was solved
(the row's ``rgap_layers``: dense method, or CG preconditioner, iterations, final relative residual and
whether CG reached ``attack.cg_tol``). Targets of issue 13 on 2 CPU cores: CNN6-W at 128 px <= 8 s per image
at >= 140 dB; at 224 px <= 60 s, <= 8 GB, >= 100 dB, every CG layer converged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from rgap.core.atomic import atomic_write_text, make_dirs
from rgap.core.errors import UserInputError
from scripts.benchtrials import BUSY_LOAD, attack_info, load_note, run_main

ROOT = Path(__file__).resolve().parents[1]


def run_size(size: int, images: int, overrides: list[str], workdir: Path) -> dict:
    """One size in a child process: its rows, peak memory and load, from ``bench_rgap --json``."""
    out = workdir / f"size{size}.json"
    command = [sys.executable, "-m", "scripts.bench_rgap", "--precision", "float64", "--images", str(images),
               "--json", str(out), *overrides, f"dataset.size={size}"]
    proc = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
                          stdout=sys.stderr)  # the child's per-image lines go to stderr, as progress
    if proc.returncode == 2:
        raise UserInputError(f"size {size}: the trial config was refused (see the error above).")
    if proc.returncode != 0:
        raise SystemExit(f"size {size}: the child failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    rows = [r for r in result["rows"]["float64"] if r["status"] == "ok"]
    return {"size": size, "pixels": size * size, "peak_mb": result["peak_mb"], "load": result["load"], "rows": rows}


def fit_exponent(pixels: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels); NaN with fewer than two sizes."""
    if len(pixels) < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(pixels), np.log(values), 1)
    return float(slope)


def layer_lines(row: dict) -> list[str]:
    """One line per layer of the row's ``rgap_layers`` (``name:rank:method[:fields]``)."""
    lines = []
    for text in attack_info(row).get("rgap_layers", "").split():
        name, rank, method, *fields = text.split(":")
        lines.append(f"    {name:6s} {method:10s} {rank:>12}  {' '.join(fields)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sides (dataset.size)")
    parser.add_argument("--images", type=int, default=2, help="images per size (the first ones of the set)")
    parser.add_argument("--json", type=Path, help="also write all results to this JSON file")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides of the trial config")
    args = parser.parse_args(argv)
    if args.json is not None:
        make_dirs(args.json.parent)  # an unwritable place fails now, not after every size has run
    bad = [s for s in args.sizes if s < 8]
    if bad:
        raise UserInputError(f"--sizes {bad}: give sides of at least 8 px.")
    overrides = ["model=cnn6w", *args.overrides]
    print(f"R-GAP scaling: {' '.join(overrides)}, sizes {args.sizes}, {args.images} images per size; {load_note()}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        results = [run_size(size, args.images, overrides, Path(tmp)) for size in args.sizes]
    results = [r for r in results if r["rows"]]
    if not results:
        print("no size gave an ok row")
        return 1
    print(f"\n{'size':>5} | {'pixels':>6} | {'s/image (median)':>16} | {'peak MiB':>8} | {'PSNR median':>11} | "
          f"{'PSNR min':>8} | {'load':>5}")
    for res in results:
        secs, psnrs = [r["time_s"] for r in res["rows"]], [r["psnr"] for r in res["rows"]]
        print(f"{res['size']:>5} | {res['pixels']:>6} | {statistics.median(secs):16.2f} | {res['peak_mb']:8.0f} | "
              f"{statistics.median(psnrs):11.2f} | {min(psnrs):8.2f} | {res['load']:5.2f}")
    pixels = [res["pixels"] for res in results]
    a = fit_exponent(pixels, [statistics.median(r["time_s"] for r in res["rows"]) for res in results])
    b = fit_exponent(pixels, [res["peak_mb"] for res in results])
    print(f"\nfit: time ~ pixels^{a:.2f}, peak memory ~ pixels^{b:.2f}")
    print("\nper layer (first image): name, method, rank, solver fields")
    for res in results:
        print(f"  size {res['size']}:")
        print("\n".join(layer_lines(res["rows"][0])))
    if max(res["load"] for res in results) > BUSY_LOAD:
        print(f"\nNOTE: timings taken under load (load average up to {max(r['load'] for r in results):.2f}).")
    if args.json:
        atomic_write_text(args.json, json.dumps({"overrides": overrides, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    run_main(main)
