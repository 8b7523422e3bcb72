"""The audit command: rank analysis, attacks through the trial path, a report whose verdict follows the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rgap.harness.audit import run_audit, verdict_paragraph
from rgap.harness.audit_report import write_audit
from rgap.harness.compose import compose_config

ROOT = Path(__file__).resolve().parents[1]


def audit(tmp_path: Path, *overrides: str):
    cfg = compose_config("audit", ["images=1", "attacks=[rgap]", *overrides])
    return run_audit(cfg, tmp_path, progress=lambda line: None)


@pytest.mark.slow
def test_three_networks_get_three_correct_verdicts(tmp_path):
    cnn6 = audit(tmp_path / "cnn6", "model=cnn6")
    text = verdict_paragraph(cnn6)
    assert all(v.status == "full rank" for v in cnn6.verdicts)
    assert text.startswith("Every layer of cnn6 has full column rank") and "R-GAP reached a median PSNR" in text
    # conv1: 3,072 unknowns, 576 + 3,468 constraints (margin 972), 337 per output channel: 9 channels fall short
    assert cnn6.attacks[0].psnr > 200 and "with 9 output channels or fewer instead of 12" in text

    cnn6d = audit(tmp_path / "cnn6d", "model=cnn6d")
    text = verdict_paragraph(cnn6d)
    conv2 = next(v for v in cnn6d.verdicts if v.layer == "conv2")
    assert conv2.status == "deficient" and conv2.deficiency == 280 and conv2.cause == "dependent"
    assert "does not leak its input exactly: conv2 (280 directions)" in text
    assert "conv2 has 3,468 unknowns" in text and cnn6d.attacks[0].psnr < 30

    mine = audit(tmp_path / "mine", "model=custom", "model._target_=tests.user_models.bn_pool_net",
                 "model.name=bn_pool_net", "dataset=sample_gray")
    text = verdict_paragraph(mine)
    pooled = [v for v in mine.verdicts if v.status == "deficient"]
    assert [v.cause for v in pooled] == ["pooling"] and pooled[0].deficiency == 4 * 28 * 28 - 4 * 14 * 14
    assert "bn_pool_net does not leak its input exactly" in text and "pooling passes only" in text
    assert len({verdict_paragraph(a) for a in (cnn6, cnn6d, mine)}) == 3

    paths = write_audit(mine, tmp_path / "mine")
    report = paths[0].read_text()
    assert "## Verdict" in report and "| conv2 |" in report and "![gallery](audit.png)" in report
    assert paths[1].stat().st_size > 1000


def test_audit_command_writes_its_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runners.audit", "model=lenet", "dataset=sample_gray", "images=2",
                           "attacks=[rgap,dlg]", "iterations=2", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[audit] rgap | lenet") == 2 and proc.stdout.count("[audit] dlg | lenet") == 2
    assert "Every layer of lenet has full column rank" in proc.stdout
    report = (tmp_path / "audit.md").read_text()
    assert "| R-GAP | 2/2 |" in report and "| DLG | 2/2 |" in report and (tmp_path / "audit.png").is_file()
    for bad, message in [("images=0", "images=0 is out of range"), ("attacks=[rgap,foo]", "attacks='foo'"),
                         ("attacks=rgap", "is not a list of attacks"), ("iterations=1.5", "iterations=1.5")]:
        proc = subprocess.run([sys.executable, "-m", "runners.audit", "model=lenet", "dataset=sample_gray", bad,
                               f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
