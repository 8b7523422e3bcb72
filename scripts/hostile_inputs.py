"""Run the command lines with hostile inputs and check that every one fails (or works) cleanly.

    python -m scripts.hostile_inputs [--jobs 2] [--keep DIR]

Each case is one command as a user would type it (typos, wrong types, NaN, out-of-range values, paths that
escape or do not exist, unreadable or truncated files, a full-disk stand-in). For each the script prints the
exit code, the expected one, and whether stderr/stdout hold a Python traceback; "misbehaved" means a wrong exit
code or a wrong outcome (a run that should have been refused ran, an expected file is missing). Before the cases
it runs a small sweep; afterwards it checks that every row file of that sweep is byte-for-byte unchanged
("rows lost"). The summary line gives the totals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["model=fcn3", "dataset=sample_gray", "metrics.lpips=false"]


@dataclass
class Case:
    """One hostile command: ``args`` after ``python -m``; ``expect`` its exit code; ``check`` may return what
    went wrong beyond the exit code (None: fine)."""

    name: str
    args: list[str]
    expect: int
    check: Callable[[subprocess.CompletedProcess], str | None] | None = None


@dataclass
class Outcome:
    case: Case
    code: int
    traceback: bool
    problem: str | None


def run(args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def make_cases(work: Path) -> list[Case]:
    """The hostile inputs, with their fixtures created under ``work``."""
    results = work / "results"
    res = f"paths.results={results}"

    def run_dir(name: str) -> str:
        return f"hydra.run.dir={work / 'runs' / name}"

    empty_dir = work / "empty_dir"
    empty_dir.mkdir()
    garbage = work / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    a_file = work / "a_file"
    a_file.write_text("not a directory")
    truncated = work / "truncated_sweep"
    shutil.copytree(results / "sweeps" / "base", truncated)
    row = sorted(truncated.glob("trials/*/row.csv"))[0]
    row.write_bytes(row.read_bytes()[:300])
    trials_before = (truncated / "trials.csv").read_bytes()

    def left_dir(name: str) -> Callable[[subprocess.CompletedProcess], str | None]:
        return lambda proc: f"left {work / 'runs' / name}" if (work / "runs" / name).exists() else None

    def unchanged_trials(proc: subprocess.CompletedProcess) -> str | None:
        return None if (truncated / "trials.csv").read_bytes() == trials_before else "trials.csv was replaced"

    def nothing_outside(proc: subprocess.CompletedProcess) -> str | None:
        return "wrote outside results/" if (work / "elsewhere").exists() else None

    def one_job_sweep(proc: subprocess.CompletedProcess) -> str | None:
        ok = (results / "sweeps" / "single" / "trials.csv").is_file()
        return None if ok else "no trials.csv for the one-job sweep"

    def rerun_invalid(proc: subprocess.CompletedProcess) -> str | None:
        return None if "re-running" in proc.stdout else "the invalid row was not re-run"

    cases = [
        Case("sweep: overwrite=flase", ["runners.benchmark", "-m", "sweep_name=base", *FAST, "index=0,1",
                                        "overwrite=flase", res], 2),
        Case("sweep: overwrite=1", ["runners.benchmark", "-m", "sweep_name=base", *FAST, "index=0,1", "overwrite=1",
                                    res], 2),
        Case("sweep: seed=1,1.5", ["runners.benchmark", "-m", "sweep_name=base", *FAST, "seed=1,1.5", res], 2),
        Case("sweep: sweep_name=../../../../elsewhere", ["runners.benchmark", "-m", *FAST,
                                                         "sweep_name=../../../../elsewhere", res], 2, nothing_outside),
        Case("sweep: sweep_name=a/b", ["runners.benchmark", "-m", *FAST, "sweep_name=a/b", res], 2),
        Case("sweep: hydra.sweeper.max_batch_size=0", ["runners.benchmark", "-m", "sweep_name=base", *FAST,
                                                       "index=0,1", "hydra.sweeper.max_batch_size=0", res], 2),
        Case("sweep: psnr_threshold=nan", ["runners.benchmark", "-m", "sweep_name=base", *FAST, "psnr_threshold=nan",
                                           res], 2),
        Case("sweep: attack=dlg attack.lr=nan", ["runners.benchmark", "-m", "sweep_name=base", *FAST,
                                                 "attack=dlg", "attack.lr=nan", "index=0,1", res], 2),
        Case("benchmark without -m (one-job sweep)", ["runners.benchmark", "sweep_name=single", *FAST, res], 0,
             one_job_sweep),
        Case("sweep resumes over a truncated row", ["runners.benchmark", "-m", "sweep_name=resume", *FAST, "index=0",
                                                    res], 0, rerun_invalid),
        Case("attack: batch_size=1.5", ["runners.attack", *FAST, "batch_size=1.5", run_dir("bs"), res], 2,
             left_dir("bs")),
        Case("attack: index=abc", ["runners.attack", *FAST, "index=abc", run_dir("idx"), res], 2, left_dir("idx")),
        Case("attack: index=999", ["runners.attack", *FAST, "index=999", run_dir("idx999"), res], 2),
        Case("attack: index=-2", ["runners.attack", *FAST, "index=-2", run_dir("idxm2"), res], 2),
        Case("attack: seed=-1", ["runners.attack", *FAST, "seed=-1", run_dir("seedm1"), res], 2),
        Case("attack: precision=float16", ["runners.attack", *FAST, "precision=float16", run_dir("prec"), res], 2),
        Case("attack: label=maybe", ["runners.attack", *FAST, "label=maybe", run_dir("label"), res], 2),
        Case("attack: device=tpu", ["runners.attack", *FAST, "device=tpu", run_dir("dev"), res], 2),
        Case("attack: threads=0", ["runners.attack", *FAST, "threads=0", run_dir("thr"), res], 2),
        Case("attack: trace_every=0", ["runners.attack", *FAST, "trace_every=0", run_dir("trace"), res], 2),
        Case("attack: save_images=yes", ["runners.attack", *FAST, "save_images=yes", run_dir("save"), res], 2),
        Case("attack: metrics.lpips=maybe", ["runners.attack", *FAST, "metrics.lpips=maybe", run_dir("lp"), res], 2),
        Case("attack: attack=dlg attack.iterations=0", ["runners.attack", *FAST, "attack=dlg", "attack.iterations=0",
                                                        run_dir("it0"), res], 2),
        Case("attack: attack=ig attack.lr=-1", ["runners.attack", *FAST, "attack=ig", "attack.lr=-1", run_dir("iglr"),
                                                res], 2),
        Case("attack: attack=rgap attack.cg_tol=nan", ["runners.attack", *FAST, "attack.cg_tol=nan", run_dir("cg"),
                                                       res], 2),
        Case("attack: attack.dense_limit=abc", ["runners.attack", *FAST, "attack.dense_limit=abc", run_dir("dl"), res],
             2),
        Case("attack: defense=gaussian defense.scale=nan", ["runners.attack", *FAST, "defense=gaussian",
                                                            "defense.scale=nan", run_dir("gs"), res], 2),
        Case("attack: defense=prune defense.prune_ratio=1.5", ["runners.attack", *FAST, "defense=prune",
                                                               "defense.prune_ratio=1.5", run_dir("pr"), res], 2),
        Case("attack: model.init_std=nan", ["runners.attack", *FAST, "model.init_std=nan", run_dir("istd"), res], 2),
        Case("attack: model.num_classes=1.5", ["runners.attack", *FAST, "model.num_classes=1.5", run_dir("nc"), res],
             2),
        Case("attack: weights.checkpoint=<a directory>", ["runners.attack", *FAST, f"weights.checkpoint={empty_dir}",
                                                        run_dir("ckdir"), res], 2),
        Case("attack: weights.checkpoint=<missing file>", ["runners.attack", *FAST, f"weights.checkpoint={work}/no.pt",
                                                         run_dir("ckmiss"), res], 2),
        Case("attack: weights.checkpoint=<random bytes>", ["runners.attack", *FAST, f"weights.checkpoint={garbage}",
                                                         run_dir("ckbytes"), res], 2),
        Case("attack: weights.state=bogus", ["runners.attack", *FAST, "weights.state=bogus", run_dir("state"), res], 2),
        Case("attack: weights.rank_check=maybe", ["runners.attack", *FAST, "weights.rank_check=maybe", run_dir("rc"),
                                                  res], 2),
        Case("attack: dataset=folder, missing path", ["runners.attack", "dataset=folder", "dataset.path=/nonexistent",
                                                      "metrics.lpips=false", run_dir("fold"), res], 2),
        Case("attack: dataset=folder, no images", ["runners.attack", "dataset=folder", f"dataset.path={empty_dir}",
                                                   "metrics.lpips=false", run_dir("fold2"), res], 2),
        Case("attack: dataset=cifar10, files missing", ["runners.attack", "dataset=cifar10",
                                                        f"dataset.root={empty_dir}", "metrics.lpips=false",
                                                        run_dir("cifar"), res], 2),
        Case("attack: dataset.size=abc", ["runners.attack", "dataset.size=abc", "metrics.lpips=false", run_dir("sz"),
                                          res], 2),
        Case("attack: dataset.size=0", ["runners.attack", "dataset.size=0", "metrics.lpips=false", run_dir("sz0"),
                                        res], 2),
        Case("attack: paths.results=<a file>/results", ["runners.attack", *FAST, f"paths.results={a_file}/results"],
             2),
        Case("rank: input_shape=abc", ["runners.rank", "model=lenet", "input_shape=abc", run_dir("rk1")], 2,
             left_dir("rk1")),
        Case("rank: input_shape=[1,0,0]", ["runners.rank", "model=lenet", "input_shape=[1,0,0]", run_dir("rk2")], 2),
        Case("rank: max_unknowns=-1", ["runners.rank", "model=lenet", "dataset=sample_gray", "max_unknowns=-1",
                                       run_dir("rk3")], 2),
        Case("rank: numerical=perhaps", ["runners.rank", "model=lenet", "dataset=sample_gray", "numerical=perhaps",
                                         run_dir("rk4")], 2),
        Case("train: epochs=2.5", ["runners.train", "model=lenet", "dataset=sample_gray", "epochs=2.5",
                                   run_dir("tr1"), res], 2),
        Case("train: lr=nan", ["runners.train", "model=lenet", "dataset=sample_gray", "lr=nan", run_dir("tr2"), res],
             2),
        Case("collect: a truncated row file", ["scripts.collect", str(truncated)], 2, unchanged_trials),
        Case("collect: missing directory", ["scripts.collect", str(work / "nope")], 2),
        Case("collect: --psnr-threshold nan", ["scripts.collect", str(results / "sweeps" / "base"),
                                               "--psnr-threshold", "nan"], 2),
        Case("plot gallery without saved images", ["scripts.plot", "gallery", str(results / "sweeps" / "base"),
                                                   "--out", str(work / "fig")], 2),
        Case("paper_offline --no-sweep on a fresh clone", ["scripts.paper_offline", "--no-sweep", "--only", "table1",
                                                           "--out", str(work / "ref")], 2),
        Case("hydra: unknown key indx=3", ["runners.attack", *FAST, "indx=3", run_dir("h1")], 1),
        Case("hydra: model=resnet", ["runners.attack", "model=resnet", run_dir("h2")], 1),
        Case("hydra: index=[", ["runners.attack", *FAST, "index=[", run_dir("h3")], 1),
    ]
    return cases


def judge(case: Case, proc: subprocess.CompletedProcess) -> Outcome:
    text = proc.stdout + proc.stderr
    traceback = "Traceback (most recent call last)" in text
    problem = None
    if proc.returncode != case.expect:
        problem = f"exit {proc.returncode}, expected {case.expect}: {' '.join(proc.stderr.split())[:300]}"
    elif case.expect == 2 and not proc.stderr.lstrip().startswith(("error:", "usage:")):
        problem = f"no one-paragraph error: {' '.join(proc.stderr.split())[:300]}"
    elif case.check is not None:
        problem = case.check(proc)
    return Outcome(case, proc.returncode, traceback, problem)


def snapshot(sweep: Path) -> dict[str, bytes]:
    return {str(p.relative_to(sweep)): p.read_bytes() for p in sorted(sweep.glob("trials/*/row.csv"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results"
    print(f"setting up a 2-trial sweep in {results} ...", flush=True)
    base = run(["runners.benchmark", "-m", "sweep_name=base", *FAST, "index=0,1", f"paths.results={results}"])
    if base.returncode != 0:
        print(base.stdout + base.stderr, file=sys.stderr)
        return 1
    shutil.copytree(results / "sweeps" / "base", results / "sweeps" / "resume")
    resumed_row = sorted((results / "sweeps" / "resume").glob("trials/*/row.csv"))[0]
    cases = make_cases(work)
    resumed_row.write_bytes(resumed_row.read_bytes()[:300])
    before = snapshot(results / "sweeps" / "base")
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [(case, pool.submit(run, case.args)) for case in cases]
        for number, (case, future) in enumerate(futures, start=1):
            outcome = judge(case, future.result())
            outcomes.append(outcome)
            verdict = "ok" if outcome.problem is None and not outcome.traceback else "MISBEHAVED"
            print(f"[{number:2d}/{len(cases)}] exit {outcome.code} (expected {case.expect}) "
                  f"traceback: {'YES' if outcome.traceback else 'no '} | {verdict:10s} | {case.name}"
                  + (f"\n        {outcome.problem}" if outcome.problem else ""), flush=True)
    after = snapshot(results / "sweeps" / "base")
    lost = [k for k in before if before[k] != after.get(k)]
    tracebacks = sum(o.traceback for o in outcomes)
    misbehaved = sum(o.problem is not None for o in outcomes)
    print(f"{len(outcomes)} hostile inputs: {tracebacks} tracebacks, {misbehaved} silent misbehaviours, "
          f"{len(lost)} rows lost or changed (of {len(before)} rows of the sweep they ran against)")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not (tracebacks or misbehaved or lost) else 1


if __name__ == "__main__":
    sys.exit(main())
