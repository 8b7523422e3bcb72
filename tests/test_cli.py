"""The command lines as a user runs them (subprocesses from the repository root)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_attack_cli_writes_row_and_summary(tmp_path):
    out = tmp_path / "run"
    proc = run("runners.attack", "model=lenet", "dataset=sample_gray", "index=2", f"hydra.run.dir={out}",
               "metrics.lpips=false")
    assert proc.returncode == 0, proc.stderr
    assert "rgap | lenet | sample_gray[2] | ok | MSE" in proc.stdout
    with open(out / "row.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["status"] == "ok" and float(row["psnr"]) > 60
    assert (out / "reconstructed.png").exists()


def test_bad_index_exits_with_one_paragraph(tmp_path):
    proc = run("runners.attack", "index=99", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: index=99 is out of range")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "row.csv").exists()


def test_unknown_model_lists_choices(tmp_path):
    proc = run("runners.attack", "model=resnet", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "Could not find 'model/resnet'" in proc.stderr
    for name in ("cnn6", "cnn6d", "fcn3", "lenet"):
        assert name in proc.stderr


def test_missing_mnist_says_where_and_how(tmp_path):
    proc = run("runners.attack", "model=fcn3", "dataset=mnist", "batch_size=5", f"dataset.root={tmp_path}",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert str(tmp_path / "MNIST" / "raw") in proc.stderr and "dataset.download=true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rank_cli_prints_table_and_writes_csv(tmp_path):
    proc = run("runners.rank", "model=lenet", "dataset=sample_gray", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "index_v" in proc.stdout and "full column rank" in proc.stdout
    with open(tmp_path / "rank.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "conv3", "fc1"]
    assert all(r["deficiency"] == "0" for r in rows)
