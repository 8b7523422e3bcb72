"""The benchmark scripts run their trials through the trial path of ``runners.attack`` (issue 12)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rgap.harness.compose import compose_config
from rgap.harness.trial import run_trial
from scripts import bench_attacks, bench_rgap

ROOT = Path(__file__).resolve().parents[1]
BENCH_SCRIPTS = sorted((ROOT / "scripts").glob("bench_*.py"))
#: What a benchmark may import from the project: the shared trial runner, the harness and core helpers.
ALLOWED = ("scripts.benchtrials", "rgap.harness", "rgap.core")


@pytest.mark.parametrize("path", BENCH_SCRIPTS, ids=lambda p: p.stem)
def test_benchmarks_build_nothing_by_hand(path: Path) -> None:
    """No hand-loaded YAML, no model/dataset/attack built outside the trial path."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("rgap", "scripts"):
            assert node.module.startswith(ALLOWED), f"{path.name} imports {node.module}"
        if isinstance(node, ast.Attribute):
            assert node.attr not in ("load", "safe_load") or not isinstance(node.value, ast.Name) or \
                node.value.id not in ("OmegaConf", "yaml"), f"{path.name} loads YAML by hand"


def test_bench_rgap_reports_the_rows_of_the_trial_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rows.json"
    code = bench_rgap.main(["--images", "2", "--precision", "float64", "--json", str(out), "model=fcn3",
                            "dataset=sample_gray"])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]["float64"]
    assert [r["index"] for r in rows] == [0, 1]
    for row in rows:
        cfg = compose_config("trial", ["attack=rgap", "model=fcn3", "dataset=sample_gray", "precision=float64",
                                       "metrics.lpips=false", f"index={row['index']}"])
        direct = run_trial(cfg)
        assert direct["status"] == row["status"] == "ok"
        assert direct["psnr"] == pytest.approx(row["psnr"], rel=0, abs=0)  # deterministic: the same trial
        assert direct["label_acc"] == row["label_acc"]
    assert "peak resident memory" in capsys.readouterr().out


def test_bench_attacks_prints_the_ratio_per_setup(capsys: pytest.CaptureFixture) -> None:
    code = bench_attacks.main(["--setups", "fcn3_sample_gray", "--attacks", "rgap", "dlg", "--images", "1",
                               "--for", "dlg", "attack.iterations=2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "DLG seconds / R-GAP seconds (medians) on fcn3_sample_gray" in out
    assert "fcn3 dlg   image 0: PSNR" in out


@pytest.mark.parametrize("args", [
    ["-m", "scripts.bench_rgap", "--images", "1", "modl=cnn6"],
    ["-m", "scripts.bench_rgap", "--images", "0"],
    ["-m", "scripts.bench_attacks", "--setups", "no_such_setup", "--images", "1"],
    ["-m", "scripts.bench_scaling", "--sizes", "4"],
    ["-m", "scripts.bench_rgap", "--images", "1", "--json", "/etc/passwd/rows.json"],
], ids=["typo", "no-images", "unknown-setup", "tiny-size", "json-under-a-file"])
def test_bad_benchmark_input_is_one_paragraph_and_exit_2(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    assert "image  0" not in proc.stdout  # refused before any trial ran
