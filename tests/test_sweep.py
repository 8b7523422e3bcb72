"""Sweeps: counts, skip on re-run, resume after kill -9, concurrent writers, collect's errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rgap.harness.schema import ROW_COLUMNS, write_row
from rgap.harness.sweep import completed_rows, trial_hash
from scripts.collect import collect, summarize
from scripts.collect import main as collect_main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["attack=rgap", "model=lenet,fcn3", "dataset=sample_gray", "batch_size=1,2", "metrics.lpips=false"]
#: Columns that are the same whenever the same trial is run again (times and provenance differ).
STABLE = ["config_hash", "attack", "model", "dataset", "batch_size", "indices", "status", "reason", "mse", "psnr",
          "ssim", "label_acc", "attack_info"]


def sweep(results: Path, *extra: str, wait: bool = True):
    args = [sys.executable, "-m", "runners.benchmark", "-m", *SWEEP, f"paths.results={results}", *extra]
    if not wait:
        return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def stable(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table["attack_info"] = table["attack_info"].str.replace(r'"rgap_grad_residual": [^,}]*', "", regex=True)
    return table[STABLE].sort_values("config_hash").reset_index(drop=True)


def test_sweep_counts_rerun_and_resume(tmp_path):
    first = tmp_path / "a"
    proc = sweep(first)
    assert "[sweep] 4 trials" in proc.stdout
    table = pd.read_csv(first / "sweeps" / "default" / "trials.csv")
    assert len(table) == 4
    assert (table["status"] == "ok").sum() == 3
    unsupported = table[table["status"] == "unsupported"]
    assert list(unsupported["model"]) == ["lenet"] and list(unsupported["batch_size"]) == [2]
    summary = pd.read_csv(first / "sweeps" / "default" / "summary.csv")
    assert summary["count"].sum() == 4 and summary["n_unsupported"].sum() == 1
    assert "| rgap" in (first / "sweeps" / "default" / "summary.md").read_text()

    # Re-running skips every trial: no new row, no row rewritten.
    rows = completed_rows(first / "sweeps" / "default")
    stamps = [p.stat().st_mtime_ns for p in rows]
    proc = sweep(first)
    assert proc.stdout.count("(row exists)") == 4
    assert [p.stat().st_mtime_ns for p in completed_rows(first / "sweeps" / "default")] == stamps

    # kill -9 after the first row, then resume: same table as the uninterrupted sweep.
    second = tmp_path / "b"
    child = sweep(second, wait=False)
    deadline = time.time() + 300
    while not completed_rows(second / "sweeps" / "default") and time.time() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 1 <= len(completed_rows(second / "sweeps" / "default")) < 4
    sweep(second)
    pd.testing.assert_frame_equal(stable(second / "sweeps" / "default" / "trials.csv"),
                                  stable(first / "sweeps" / "default" / "trials.csv"))


def _writer(path: str, value: int, repeats: int) -> None:
    row = dict.fromkeys(ROW_COLUMNS)
    for i in range(repeats):
        row.update(attack="rgap", model="m", dataset="d", batch_size=1, seed=0, status="ok", mse=float(value),
                   reason="x" * 5000, index=i)
        write_row(row, path)


def test_concurrent_writers_never_corrupt_rows(tmp_path):
    shared = tmp_path / "trials" / "same" / "row.csv"
    jobs = [multiprocessing.Process(target=_writer, args=(str(shared), v, 200)) for v in (1, 2)]
    jobs += [multiprocessing.Process(target=_writer, args=(str(tmp_path / "trials" / f"own{v}" / "row.csv"), v, 50))
             for v in (3, 4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    for path in completed_rows(tmp_path):
        table = pd.read_csv(path)
        assert list(table.columns) == list(ROW_COLUMNS) and len(table) == 1
        assert table["reason"][0] == "x" * 5000
    assert len(completed_rows(tmp_path)) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_collect_errors_are_clear(tmp_path, capsys):
    assert collect_main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert collect_main([str(tmp_path)]) == 2
    assert "holds no trial rows" in capsys.readouterr().err
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="no trial rows"):
        collect(tmp_path)


def test_summary_counts_failures_in_denominators():
    base = {c: None for c in ROW_COLUMNS}
    rows = [dict(base, attack="dlg", model="m", dataset="d", batch_size=1, status=s, psnr=p, index=i, seed=0,
                 config_hash=str(i))
            for i, (s, p) in enumerate([("ok", 40.0), ("ok", 20.0), ("failed", None), ("unsupported", None)])]
    summary = summarize(pd.DataFrame(rows), psnr_threshold=30.0)
    assert summary.loc[0, "count"] == 4 and summary.loc[0, "n_ok"] == 2
    assert summary.loc[0, "n_failed"] == 1 and summary.loc[0, "n_unsupported"] == 1
    assert summary.loc[0, "psnr_mean"] == 30.0
    assert summary.loc[0, "frac_psnr_above_30"] == 0.25


def test_trial_hash_ignores_outputs_only(trial_cfg):
    a = trial_cfg("seed=1")
    assert trial_hash(a) == trial_hash(trial_cfg("seed=1", "paths.results=/elsewhere"))
    assert trial_hash(a) != trial_hash(trial_cfg("seed=2"))
    assert len(trial_hash(a)) == 12


@pytest.mark.slow
def test_joblib_launcher_gives_the_same_metrics(tmp_path):
    sweep(tmp_path / "basic")
    sweep(tmp_path / "joblib", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    pd.testing.assert_frame_equal(stable(tmp_path / "joblib" / "sweeps" / "default" / "trials.csv"),
                                  stable(tmp_path / "basic" / "sweeps" / "default" / "trials.csv"))


def test_count_jobs_lets_a_later_override_replace_an_earlier_one() -> None:
    from runners.callbacks import count_jobs

    assert count_jobs(["attack=rgap,dlg,idlg", "index=0,10", "seed=1"]) == 6
    assert count_jobs(["attack=rgap,dlg,idlg", "index=0,10", "attack=rgap,dlg"]) == 4
