"""How much of a sweep's wall time is not attack time: the per-trial overhead of the harness.

    python -m scripts.bench_overhead [--trials 32] [--model cnn6] [--dataset sample] [--keep DIR]

Runs ``python -m runners.benchmark -m attack=rgap model=<model> dataset=<dataset> index=0,...,N-1
metrics.lpips=false`` with the basic launcher into a fresh directory, measures the command's wall time (process
start, imports, Hydra, every trial, collection) and prints it next to the sum of the rows' ``time_s`` (the
attacks alone) and their difference per trial.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rgap.harness.schema import read_table
from scripts.benchtrials import load_note

ROOT = Path(__file__).resolve().parents[1]


def measure(trials: int, model: str, dataset: str, results: Path) -> tuple[float, float, int]:
    """(wall seconds of the sweep command, sum of time_s, number of rows)."""
    indices = ",".join(str(i) for i in range(trials))
    args = [sys.executable, "-m", "runners.benchmark", "-m", "attack=rgap", f"model={model}", f"dataset={dataset}",
            f"index={indices}", "metrics.lpips=false", "sweep_name=overhead", f"paths.results={results}"]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    table = read_table(results / "sweeps" / "overhead" / "trials.csv")
    return wall, float(table["time_s"].sum()), len(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--model", default="cnn6")
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--keep", type=Path, default=None, help="write the sweep here and keep it")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: give at least 1")
    results = args.keep or Path(tempfile.mkdtemp(prefix="overhead-"))
    print(f"before: {load_note()}")
    wall, attack, rows = measure(args.trials, args.model, args.dataset, results)
    print(f"{rows} R-GAP trials on {args.model}/{args.dataset} (basic launcher, one process, metrics.lpips=false)")
    print(f"sweep wall time {wall:.2f} s | sum of time_s {attack:.2f} s | "
          f"overhead per trial {(wall - attack) / rows:.3f} s (wall - sum) / {rows}")
    print(f"after: {load_note()}")
    if args.keep is None:
        shutil.rmtree(results, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
