"""Run the offline experiments end to end and write the committed reference results.

    python -m scripts.paper_offline [--out results/reference] [--jobs 2]
                                    [--only table1 rank noise labels defenses] [--no-sweep]

The experiments are those of ``scripts/reports/`` (one module each; by default the four paper experiments, table1,
rank, noise and labels; ``--only defenses`` runs the defense sweeps). For each: its sweeps
``python -m runners.benchmark -m +experiment=<config>`` (rows are kept under ``results/sweeps/``, so an interrupted
run resumes), then the tables and figures its module lists. ``<out>/<folder>/`` receives trials.csv, the tables
(Markdown and CSV) and the figures (PNG); ``<out>/README.md`` lists what ran, on which commit and machine, and how
long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from rgap.core.errors import UserInputError
from rgap.harness.sweep import completed_rows
from rgap.harness.trial import git_commit
from scripts.reports import defenses, labels, noise, rank, table1
from scripts.reports.outputs import make_plot, write_tables
from scripts.reports.rank import RANK_MODELS, write_rank_csv
from scripts.reports.spec import Experiment
from scripts.reports.trials import load_trials

#: Every experiment, by its ``--only`` name.
EXPERIMENTS: dict[str, Experiment] = {e.key: e for e in (table1.EXPERIMENT, rank.EXPERIMENT, noise.EXPERIMENT,
                                                        labels.EXPERIMENT, defenses.EXPERIMENT)}
DEFAULT = sorted(key for key, exp in EXPERIMENTS.items() if exp.paper)


def run(command: list[str]) -> None:
    """Run a command with this interpreter, echoing it; a failure stops the whole run."""
    print("+", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], check=True)


def publish(exp: Experiment, sweep_dir: Path, target: Path, rank_models: Sequence[str] = RANK_MODELS) -> list[Path]:
    """Tables, figures (PNG only) and ``trials.csv`` of a finished sweep into ``target``; returns the files.

    With ``exp.rank_analysis``, ``rank_analysis.csv`` (``write_rank_csv`` of ``rank_models``) too. A figure of a
    model the sweep has no trials of (an interrupted sweep) is skipped with a message.
    """
    target.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    rank_csv = write_rank_csv(target / "rank_analysis.csv", models=rank_models) if exp.rank_analysis else None
    if rank_csv is not None:
        print(f"rank analysis -> {rank_csv}", flush=True)
        files.append(rank_csv)
    for table in exp.tables:
        files += write_tables(sweep_dir, table.kind, target / table.subdir, rank_csv, table.param,
                              note=table.note or exp.note)
    models = set(load_trials(sweep_dir)["model"])
    for figure in exp.figures:
        if figure.model is not None and figure.model not in models:
            print(f"skipped {figure.kind} {figure.file_name}: the sweep has no {figure.model} trials", flush=True)
            continue
        files += make_plot(figure.kind, sweep_dir, target, model=figure.model, param=figure.param,
                           rank_csv=rank_csv, by=figure.by, name=figure.file_name)
    shutil.copy(sweep_dir / "trials.csv", target / "trials.csv")
    files.append(target / "trials.csv")
    for pdf in [f for f in files if f.suffix == ".pdf"]:  # PNGs are enough for the repository
        pdf.unlink()
    files = [f for f in files if f.suffix != ".pdf"]
    print("\n".join(str(f) for f in files), flush=True)
    return files


def run_experiment(exp: Experiment, jobs: int) -> tuple[float, int, int]:
    """The experiment's sweeps (subprocesses; each resumes where a previous one stopped); returns their seconds,
    the trials they ran and the trials that were already there."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    before = len(completed_rows(exp.sweep_dir))
    start = time.perf_counter()
    for config in exp.configs:
        run(["-m", "runners.benchmark", "-m", f"+experiment={config}", *launcher])
    return time.perf_counter() - start, len(completed_rows(exp.sweep_dir)) - before, before


def _configs(exp: Experiment) -> str:
    """The experiment's config names as the README lists them (joined by ``, `` inside backticks)."""
    return "`, `".join(exp.configs)


def write_readme(out: Path, jobs: int, timings: dict[str, dict[str, float]]) -> Path:
    """``<out>/README.md``: what ran, on which commit and machine, how long each sweep took (merged with the
    timings of earlier runs into the same ``out``, kept in ``<out>/timings.json``)."""
    record = out / "timings.json"
    known = json.loads(record.read_text()) if record.is_file() else {}
    known.update(timings)
    record.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Reference results (offline variants of the paper experiments)",
        "",
        "Written by `make paper-offline` (`python -m scripts.paper_offline`). Each folder holds the experiment's",
        "`trials.csv` (one row per trial), its tables (`*.md`, `*.csv`) and figures (`*.png`); the sweeps' trial",
        "directories (traces, images) stay under `results/sweeps/` and are not committed.",
        "",
        f"- tables and figures last written at commit `{git_commit()}`, torch {torch.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {jobs} parallel trial(s) of one torch thread each",
    ]
    for _, exp in sorted(EXPERIMENTS.items()):
        rows = out / exp.folder / "trials.csv"
        if rows.is_file():
            commits = sorted(set(pd.read_csv(rows, dtype={"git_commit": str})["git_commit"].dropna()))
            lines.append(f"- `{_configs(exp)}` trials computed at commit(s) {', '.join(f'`{c}`' for c in commits)} "
                         "(`+dirty`: with uncommitted changes)")
    for key in sorted(known):
        t = known[key]
        lines.append(f"- `{_configs(EXPERIMENTS[key])}`: sweep {t['sweep_s']:.0f} s for {t['ran']} trials"
                     + (f" ({t['resumed']} were already there)" if t["resumed"] else "")
                     + f", tables and figures {t['publish_s']:.0f} s; load average {t['load_before']:.1f} before, "
                     f"{t['load_after']:.1f} after (on 2 cores: other jobs shared the machine when above 2)")
    lines += ["", "Times in the rows are attack wall time on this machine under that load; re-run on yours before "
              "comparing."]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: run the chosen experiments (the paper's four by default) and write ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/reference"))
    parser.add_argument("--jobs", type=int, default=2, help="parallel trials (joblib launcher); 1 = sequential")
    parser.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=DEFAULT,
                        help=f"experiments to run (default: {' '.join(DEFAULT)})")
    parser.add_argument("--no-sweep", action="store_true", help="only redraw tables and figures of finished sweeps")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UserInputError as exc:
        print(textwrap.fill(f"error: {exc}", width=100, break_long_words=False), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise UserInputError(f"--jobs {args.jobs}: give the number of parallel trials, 1 or more.")
    timings = {}
    started = time.perf_counter()
    for key in args.only:
        exp = EXPERIMENTS[key]
        load_before = os.getloadavg()[0]
        sweep_s, ran, resumed = (0.0, 0, 0) if args.no_sweep else run_experiment(exp, args.jobs)
        start = time.perf_counter()
        publish(exp, exp.sweep_dir, args.out / exp.folder)
        if ran:  # a sweep that found every row already written keeps the timing of the run that wrote them
            timings[key] = {"sweep_s": sweep_s, "ran": ran, "resumed": resumed, "load_before": load_before,
                            "publish_s": time.perf_counter() - start, "load_after": os.getloadavg()[0]}
    if not args.no_sweep:
        write_readme(args.out, args.jobs, timings)
    print(f"reference results written to {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
