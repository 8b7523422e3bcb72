"""``hydra/sweeper=checked``: each job composed once in the sweep's process, unchecked jobs still validated."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COUNTING_RUN = textwrap.dedent("""
    import atexit, runpy, sys
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    calls = []
    original = ConfigLoaderImpl.load_sweep_config
    def counted(self, master_config, sweep_overrides):
        calls.append(tuple(sweep_overrides))
        return original(self, master_config, sweep_overrides)
    ConfigLoaderImpl.load_sweep_config = counted
    atexit.register(lambda: print(f"compositions: {sorted(calls)}"))
    sys.argv = ["runners.benchmark", *sys.argv[1:]]
    runpy.run_module("runners.benchmark", run_name="__main__")
""")


def counted_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    script = tmp_path / "counting_run.py"
    script.write_text(COUNTING_RUN)
    args = [sys.executable, str(script), "-m", "attack=rgap", "model=fcn3", "dataset=sample_gray",
            "metrics.lpips=false", f"paths.results={tmp_path / 'results'}", *overrides]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def composed_jobs(proc: subprocess.CompletedProcess) -> list[tuple[str, ...]]:
    """The override lists ``COUNTING_RUN`` saw composed, one per composition (sorted)."""
    line = next(line for line in proc.stdout.splitlines() if line.startswith("compositions: "))
    return ast.literal_eval(line.removeprefix("compositions: "))


def test_each_job_is_composed_once(tmp_path):
    proc = counted_sweep(tmp_path, "index=0,1,2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The launcher composes each job once; Hydra's basic sweeper would compose each a second time first.
    assert [job[-1] for job in composed_jobs(proc)] == ["index=0", "index=1", "index=2"]
    assert "3/3 rows (ok 3" in proc.stdout


@pytest.mark.parametrize("bad", [["attack.cg_tol=0.1,oops"], ["model=fcn3,fcn33"], ["+attack.cg_tool=1,2"]])
def test_a_typo_in_one_job_still_stops_the_sweep_before_any_trial(tmp_path, bad):
    proc = counted_sweep(tmp_path, "index=0,1", *bad)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith("error: sweep job") and message.endswith("No trial was run."), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "results").rglob("row.csv"))


class RecordingLoader:
    def __init__(self) -> None:
        self.composed: list[tuple[str, ...]] = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed.append(tuple(sweep_overrides))


def test_jobs_the_callback_did_not_check_are_still_validated(monkeypatch):
    from omegaconf import OmegaConf

    from runners import callbacks
    from runners.plugins import register

    register()
    from hydra_plugins.rgap_sweeper import CheckedSweeper

    monkeypatch.setattr(callbacks, "_CHECKED_JOBS", {("model=fcn3", "index=0")})
    sweeper = CheckedSweeper(max_batch_size=None)
    loader = RecordingLoader()
    sweeper.hydra_context = type("Context", (), {"config_loader": loader})()
    sweeper.config = OmegaConf.create({})
    sweeper.validate_batch_is_legal([["model=fcn3", "index=0"], ["model=fcn3", "index=1"], ["model=lenet", "index=0"]])
    assert loader.composed == [("model=fcn3", "index=1"), ("model=lenet", "index=0")]


def test_hydra_finds_the_sweeper_in_a_fresh_process():
    code = ("import runners.benchmark\n"
            "from hydra.core.plugins import Plugins\nfrom hydra.plugins.sweeper import Sweeper\n"
            "print(sorted(c.__name__ for c in Plugins.instance().discover(Sweeper)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CheckedSweeper" in proc.stdout and "BasicSweeper" in proc.stdout


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "1.5", "true"])
def test_a_bad_batch_size_is_one_paragraph_before_any_trial(tmp_path, value):
    proc = counted_sweep(tmp_path, "index=0,1", f"hydra.sweeper.max_batch_size={value}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert message.startswith("error: hydra.sweeper.max_batch_size=") and "give a whole number >= 1" in message
    assert message.endswith("No trial was run.") and "Traceback" not in proc.stderr
    assert not list((tmp_path / "results").rglob("row.csv"))


def test_batches_of_one_job_still_compose_each_job_once(tmp_path):
    proc = counted_sweep(tmp_path, "index=0,1,2", "hydra.sweeper.max_batch_size=1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [job[-1] for job in composed_jobs(proc)] == ["index=0", "index=1", "index=2"]
    assert "3/3 rows (ok 3" in proc.stdout
