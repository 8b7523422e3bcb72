"""Run the offline paper experiments end to end and write the committed reference results.

    python -m scripts.paper_offline [--out results/reference] [--jobs 2] [--only table1 rank noise labels]

For each experiment: the sweep ``python -m runners.benchmark -m +experiment=paper_<name>_offline`` (rows are
kept under ``results/sweeps/``, so an interrupted run resumes), then its tables (``scripts.paper_tables``)
and figures (``scripts.plot``). ``<out>/<name>/`` receives trials.csv, the tables (Markdown and CSV) and the
figures (PNG); ``<out>/README.md`` lists what ran, on which commit and machine, and how long it took.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

from rgap.config import instantiate_group
from rgap.rank import rank_analysis, rank_table, total_params
from rgap.trial import git_commit

SWEEPS = Path("results/sweeps")
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "model"
RANK_MODELS = ("rankfig_a", "rankfig_b", "rankfig_c", "rankfig_d", "rankfig_e")  # the rank figure's networks


@dataclass(frozen=True)
class Experiment:
    """One paper experiment: its table name for scripts.paper_tables and the figures drawn from it."""

    name: str
    table: str
    plots: tuple[str, ...]

    @property
    def config(self) -> str:
        return f"paper_{self.name}_offline"

    @property
    def sweep_dir(self) -> Path:
        return SWEEPS / self.config


EXPERIMENTS = {
    "table1": Experiment("table1", "table1", ("time", "gallery")),
    "rank": Experiment("rank", "rank", ("rank",)),
    "noise": Experiment("noise", "noise", ("noise", "time")),
    "labels": Experiment("idlg_labels", "labels", ()),
}


def run(command: list[str]) -> None:
    """Run a command with this interpreter, echoing it; a failure stops the whole run."""
    print("+", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], check=True)


def write_rank_csv(path: Path, seed: int = 0) -> Path:
    """Rank tables of the five figure networks (3x32x32, numerical ranks), one CSV with model/total_params."""
    frames = []
    for name in RANK_MODELS:
        cfg = OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")
        model = instantiate_group(cfg, "model", nn.Module, input_shape=(3, 32, 32), seed=seed)
        frame = rank_table(rank_analysis(model, (3, 32, 32), seed=seed))
        frame.insert(0, "model", name)
        frame.insert(1, "total_params", total_params(model))
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(path, index=False)
    return path


def run_experiment(exp: Experiment, out: Path, jobs: int) -> float:
    """Sweep, tables and figures of one experiment into ``out/<name>``; returns the sweep's seconds."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    start = time.perf_counter()
    run(["-m", "runners.benchmark", "-m", f"+experiment={exp.config}", *launcher])
    seconds = time.perf_counter() - start
    target = out / exp.name
    target.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    if exp.table == "rank":
        extra = ["--rank-csv", str(write_rank_csv(target / "rank_analysis.csv"))]
    run(["-m", "scripts.paper_tables", str(exp.sweep_dir), "--experiment", exp.table, "--out", str(target), *extra])
    for kind in exp.plots:
        run(["-m", "scripts.plot", kind, str(exp.sweep_dir), "--out", str(target), *extra])
    shutil.copy(exp.sweep_dir / "trials.csv", target / "trials.csv")
    for pdf in target.glob("*.pdf"):  # PNGs are enough for the repository; PDFs are one command away
        pdf.unlink()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/reference"))
    parser.add_argument("--jobs", type=int, default=2, help="parallel trials (joblib launcher); 1 = sequential")
    parser.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=sorted(EXPERIMENTS))
    args = parser.parse_args(argv)
    timings = {}
    for key in args.only:
        timings[key] = run_experiment(EXPERIMENTS[key], args.out, args.jobs)
    lines = [
        "# Reference results (offline variants of the paper experiments)",
        "",
        "Written by `make paper-offline` (`python -m scripts.paper_offline`). Each folder holds the experiment's",
        "`trials.csv` (one row per trial), its tables (`*.md`, `*.csv`) and figures (`*.png`).",
        "",
        f"- commit: `{git_commit()}`, torch {torch.__version__}, {platform.machine()} with "
        f"{torch.get_num_threads()} torch threads available, {args.jobs} parallel trial(s) of one thread",
        *(f"- `{EXPERIMENTS[k].config}`: sweep took {s:.0f} s" for k, s in timings.items()),
        "",
        "Timings in the rows are attack wall time on this machine; re-run on yours before comparing.",
    ]
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    print(f"reference results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
