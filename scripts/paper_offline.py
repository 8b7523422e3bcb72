"""Run the offline paper experiments end to end and write the committed reference results.

    python -m scripts.paper_offline [--out results/reference] [--jobs 2] [--only table1 rank noise labels]
                                    [--no-sweep]

For each experiment: the sweep ``python -m runners.benchmark -m +experiment=paper_<name>_offline`` (rows are
kept under ``results/sweeps/``, so an interrupted run resumes), then its tables (``scripts.paper_tables``)
and figures (``scripts.plot``). ``<out>/<name>/`` receives trials.csv, the tables (Markdown and CSV) and the
figures (PNG); ``<out>/README.md`` lists what ran, on which commit and machine, and how long it took.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

from rgap.core.config import instantiate_group
from rgap.core.errors import UserInputError
from rgap.harness.sweep import completed_rows
from rgap.harness.trial import git_commit
from rgap.rank import rank_analysis, rank_table, total_params
from scripts.paper_tables import load_trials, write_tables
from scripts.plot import make_plot

SWEEPS = Path("results/sweeps")
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "conf" / "model"
RANK_MODELS = ("rankfig_a", "rankfig_b", "rankfig_c", "rankfig_d", "rankfig_e")  # the rank figure's networks


@dataclass(frozen=True)
class Experiment:
    """One paper experiment: its table name for scripts.paper_tables and the figures drawn from it, each a
    ``scripts.plot.make_plot`` kind with its keyword arguments (``name``: the file name)."""

    name: str
    table: str
    plots: tuple[tuple[str, dict[str, Any]], ...]
    note: str = ""  # the offline setting, printed under the table's caption

    @property
    def config(self) -> str:
        """The offline experiment config's name (``conf/experiment/<config>.yaml``)."""
        return f"paper_{self.name}_offline"

    @property
    def sweep_dir(self) -> Path:
        """Where its sweep writes (``results/sweeps/<config>``, the config's ``sweep_name``)."""
        return SWEEPS / self.config


OFFLINE_NOTE = ("untrained networks (PyTorch default init unless said otherwise, seed 0), float64 gradients, "
                "reversed labels (`label=reversed`), every attack at its config's settings (DLG, iDLG and the "
                "hybrid: 300 L-BFGS steps of 20 evaluations); LPIPS is empty offline (no AlexNet weights).")
EXPERIMENTS = {
    "table1": Experiment("table1", "table1", (
        ("time", {}), ("gallery", {"model": "cnn6"}), ("gallery", {"model": "cnn6d", "name": "gallery_cnn6d"}),
        ("gallery", {"model": "fcn3", "name": "gallery_fcn3"})),
        "offline variant (`paper_table1_offline`): CNN6 and CNN6-d on the bundled `sample` photos (3x32x32) instead "
        "of CIFAR-10 and FCN3 on `sample_gray` (1x28x28) instead of MNIST; 3 images per cell (indices 0, 5, 10; "
        "FCN3 B=5: images 0-4, 5-9, 10-14, scored against the batch mean) instead of the paper's test images; "
        + OFFLINE_NOTE),
    "rank": Experiment("rank", "rank", (("rank", {}), ("gallery", {"by": "model"})),
                       "offline variant (`paper_rank_offline`): the figure's five networks on `sample` images "
                       "0, 5, 10 (3x32x32) instead of CIFAR-10; the rank analysis is of each network at a seeded "
                       "random input (seed 0, the trials' weights); " + OFFLINE_NOTE),
    "noise": Experiment("noise", "noise", (("noise", {}), ("time", {})),
                        "offline variant (`paper_noise_offline`): CNN6 with N(0, 0.01^2) weights (the reference "
                        "code's noise-study initialisation) on `sample` images 0 and 10 instead of CIFAR-10; "
                        "Gaussian noise of standard deviation scale x (each parameter tensor's RMS gradient entry) "
                        "added to the shared gradient, seeded with the trial seed; " + OFFLINE_NOTE),
    "labels": Experiment("idlg_labels", "labels", (),
                         "offline variant (`paper_idlg_labels_offline`): `sample` with 8 classes (one per source "
                         "photo; chance 12.5 %) and `sample_gray` with 2 (face / non-face; chance 50 %), 10 seeds "
                         "each: every seed draws one random image and a fresh LeNet (Sigmoid, U(-0.5, 0.5) "
                         "weights, one logit per class), true labels, softmax cross-entropy, float32 gradients, as "
                         "scripts.label_accuracy and iDLG's code; DLG and iDLG at 300 L-BFGS steps."),
}


def run(command: list[str]) -> None:
    """Run a command with this interpreter, echoing it; a failure stops the whole run."""
    print("+", " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], check=True)


def write_rank_csv(path: Path, seed: int = 0, models: Sequence[str] = RANK_MODELS) -> Path:
    """Rank tables of ``models`` (default the five figure networks; 3x32x32 input, numerical ranks at a seeded
    random input) as one CSV, one row per layer with ``model`` and ``total_params`` in front."""
    frames = []
    for name in models:
        cfg = OmegaConf.load(MODEL_CONFIGS / f"{name}.yaml")
        model = instantiate_group(cfg, "model", nn.Module, input_shape=(3, 32, 32), seed=seed)
        frame = rank_table(rank_analysis(model, (3, 32, 32), seed=seed))
        frame.insert(0, "model", name)
        frame.insert(1, "total_params", total_params(model))
        frames.append(frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(path, index=False)
    return path


def publish(exp: Experiment, sweep_dir: Path, target: Path, rank_models: Sequence[str] = RANK_MODELS) -> list[Path]:
    """Tables, figures (PNG only) and ``trials.csv`` of a finished sweep into ``target``; returns the files.

    The rank experiment also gets ``rank_analysis.csv`` (``write_rank_csv`` of ``rank_models``). A figure of a
    model the sweep has no trials of (an interrupted sweep) is skipped with a message.
    """
    target.mkdir(parents=True, exist_ok=True)
    rank_csv = write_rank_csv(target / "rank_analysis.csv", models=rank_models) if exp.table == "rank" else None
    if rank_csv is not None:
        print(f"rank analysis -> {rank_csv}", flush=True)
    files = [*([rank_csv] if rank_csv else []), *write_tables(sweep_dir, exp.table, target, rank_csv, note=exp.note)]
    models = set(load_trials(sweep_dir)["model"])
    for kind, options in exp.plots:
        if options.get("model", next(iter(models))) not in models:
            print(f"skipped {kind} {options}: the sweep has no {options['model']} trials", flush=True)
            continue
        files += make_plot(kind, sweep_dir, target, rank_csv=rank_csv, **options)
    shutil.copy(sweep_dir / "trials.csv", target / "trials.csv")
    files.append(target / "trials.csv")
    for pdf in [f for f in files if f.suffix == ".pdf"]:  # PNGs are enough for the repository
        pdf.unlink()
    files = [f for f in files if f.suffix != ".pdf"]
    print("\n".join(str(f) for f in files), flush=True)
    return files


def run_experiment(exp: Experiment, jobs: int) -> tuple[float, int, int]:
    """The experiment's sweep (a subprocess; resumes where a previous one stopped); returns its seconds, the
    trials it ran and the trials that were already there."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    before = len(completed_rows(exp.sweep_dir))
    start = time.perf_counter()
    run(["-m", "runners.benchmark", "-m", f"+experiment={exp.config}", *launcher])
    return time.perf_counter() - start, len(completed_rows(exp.sweep_dir)) - before, before


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
        rows = out / exp.name / "trials.csv"
        if rows.is_file():
            commits = sorted(set(pd.read_csv(rows, dtype={"git_commit": str})["git_commit"].dropna()))
            lines.append(f"- `{exp.config}` trials computed at commit(s) {', '.join(f'`{c}`' for c in commits)} "
                         "(`+dirty`: with uncommitted changes)")
    for key in sorted(known):
        t = known[key]
        lines.append(f"- `{EXPERIMENTS[key].config}`: sweep {t['sweep_s']:.0f} s for {t['ran']} trials"
                     + (f" ({t['resumed']} were already there)" if t["resumed"] else "")
                     + f", tables and figures {t['publish_s']:.0f} s; load average {t['load_before']:.1f} before, "
                     f"{t['load_after']:.1f} after (on 2 cores: other jobs shared the machine when above 2)")
    lines += ["", "Times in the rows are attack wall time on this machine under that load; re-run on yours before "
              "comparing."]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: run the chosen offline experiments (all by default) and write ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/reference"))
    parser.add_argument("--jobs", type=int, default=2, help="parallel trials (joblib launcher); 1 = sequential")
    parser.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=sorted(EXPERIMENTS))
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
        publish(exp, exp.sweep_dir, args.out / exp.name)
        if ran:  # a sweep that found every row already written keeps the timing of the run that wrote them
            timings[key] = {"sweep_s": sweep_s, "ran": ran, "resumed": resumed, "load_before": load_before,
                            "publish_s": time.perf_counter() - start, "load_after": os.getloadavg()[0]}
    if not args.no_sweep:
        write_readme(args.out, args.jobs, timings)
    print(f"reference results written to {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
