"""Sweeps: one trial per job, rows keyed by a hash of the resolved trial config, never lost or duplicated.

Layout of a sweep directory::

    <sweep>/trials/<hash>/row.csv      the trial's row (written last, atomically: a *valid* row = done)
    <sweep>/trials/<hash>/trace.csv    ... and its trace and images
    <sweep>/trials/<hash>/.claim       lock file: held (``flock``) by the process running the trial
    <sweep>/trials.csv, summary.csv, summary.md   written by ``scripts.collect``

A job whose ``row.csv`` is valid is skipped unless ``overwrite=true``; a row file that is not one valid row of the
schema (cut, appended to, empty, foreign) is named and the trial runs again. A job killed mid-way leaves no
``row.csv`` (only temporary files, which readers ignore) and is re-run on resume. Before running a trial a job
claims it with an exclusive ``flock`` on ``.claim``: concurrent sweeps into the same directory share the work
instead of computing a trial twice, and the operating system drops the claim of a killed process, so a claim is
never left stuck.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgap.core.atomic import atomic_write_text, make_dirs, write_error
from rgap.core.validation import as_bool, as_float, as_name
from rgap.evaluation.metrics import LpipsScorer
from rgap.harness.hashing import legacy_hashes, trial_hash
from rgap.harness.schema import STATUSES, InvalidRowError, read_row
from rgap.harness.trial import check_trial_config, format_summary, run_trial, shared_lpips_scorer

ROW_FILE = "row.csv"
CLAIM_FILE = ".claim"


def check_sweep_config(cfg: Mapping[str, Any]) -> None:
    """The trial checks of :func:`rgap.harness.trial.check_trial_config` plus the sweep's own options."""
    check_trial_config(cfg)
    as_name(cfg.get("sweep_name", "default"), "sweep_name")
    as_bool(cfg.get("overwrite", False), "overwrite")
    as_float(cfg.get("psnr_threshold", 30.0), "psnr_threshold")


def trial_dir(sweep_dir: str | Path, key: str) -> Path:
    return Path(sweep_dir) / "trials" / key


def completed_rows(sweep_dir: str | Path) -> list[Path]:
    """Every ``row.csv`` file under ``sweep_dir/trials`` (sorted; temporary files excluded; not validated)."""
    return sorted(Path(sweep_dir).glob(f"trials/*/{ROW_FILE}"))


@dataclass
class SweepScan:
    """The row files of a sweep directory, read and checked."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[InvalidRowError] = field(default_factory=list)
    running: int = 0  # trials claimed by a live process that have no valid row yet

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for row in self.rows:
            counts[row["status"]] += 1
        return counts


def scan_sweep(sweep_dir: str | Path) -> SweepScan:
    """Read every trial's row file under ``sweep_dir``; invalid ones are kept as errors, never dropped silently."""
    scan = SweepScan()
    trials = Path(sweep_dir) / "trials"
    for directory in sorted(p for p in trials.iterdir() if p.is_dir()) if trials.is_dir() else []:
        row_path = directory / ROW_FILE
        if row_path.exists():
            try:
                scan.rows.append(read_row(row_path))
                continue
            except InvalidRowError as exc:
                scan.invalid.append(exc)
        if is_claimed(directory):
            scan.running += 1
    return scan


# --------------------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def claim(directory: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking ``flock`` on ``directory/.claim`` while the block runs.

    Yields True when this process holds the claim, False when another live process does. The lock file itself
    is never removed (removing it would let two processes lock two different files).
    """
    make_dirs(directory)
    try:
        fd = os.open(directory / CLAIM_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise write_error(directory / CLAIM_FILE, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_claimed(directory: Path) -> bool:
    """Whether a live process holds the claim on the trial in ``directory``."""
    path = directory / CLAIM_FILE
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------
@dataclass
class JobOutcome:
    """What one sweep job did: ``ran`` (row is its row), ``skipped`` (valid row exists) or ``claimed``
    (another process is running the trial). ``note`` says why a trial was re-run (invalid row file)."""

    key: str
    action: str
    row: dict[str, Any] | None = None
    note: str = ""


def run_sweep_job(cfg: Mapping[str, Any], sweep_dir: str | Path, overwrite: bool = False) -> JobOutcome:
    """Run one sweep trial unless its valid row exists or another process is running it.

    A row stored by an earlier version under its old hash (:func:`rgap.harness.hashing.legacy_hashes`) counts as done;
    when the trial is re-run (``overwrite``), that old row is removed so the trial is never listed twice.
    """
    key = trial_hash(cfg)
    out = trial_dir(sweep_dir, key)
    with claim(out) as mine:
        if not mine:
            return JobOutcome(key, "claimed")
        note = ""
        legacy = _legacy_rows(cfg, sweep_dir)
        if (out / ROW_FILE).exists():
            try:
                read_row(out / ROW_FILE)
                if not overwrite:
                    return JobOutcome(key, "skipped")
            except InvalidRowError as exc:
                note = f"re-running: {exc}"
        elif legacy and not overwrite:
            return JobOutcome(legacy[0].parent.name, "skipped", note="stored by an earlier version")
        row = run_trial(cfg, out, lpips=_known_lpips(cfg, sweep_dir), config_hash=key)
        _remember_lpips(cfg, sweep_dir)
        for old in legacy:
            shutil.rmtree(old.parent, ignore_errors=True)
        return JobOutcome(key, "ran", row, note)


def _legacy_rows(cfg: Mapping[str, Any], sweep_dir: str | Path) -> list[Path]:
    """Valid rows of this trial stored under an earlier version's hash."""
    found = []
    for key in legacy_hashes(cfg):
        path = trial_dir(sweep_dir, key) / ROW_FILE
        if path.exists():
            try:
                read_row(path)
            except InvalidRowError:
                continue
            found.append(path)
    return found


def _lpips_marker(cfg: Mapping[str, Any], sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / f".lpips_unavailable_{(cfg.get('metrics') or {}).get('lpips_net', 'alex')}"


def _known_lpips(cfg: Mapping[str, Any], sweep_dir: str | Path) -> LpipsScorer | None:
    """An already-failed LPIPS scorer when an earlier job of this sweep (any process) could not load LPIPS."""
    marker = _lpips_marker(cfg, sweep_dir)
    metrics = cfg.get("metrics") or {}
    if metrics.get("require_lpips") is True or not marker.exists():
        return None
    return LpipsScorer.unavailable(marker.read_text().strip(), str(metrics.get("lpips_net", "alex")))


def _remember_lpips(cfg: Mapping[str, Any], sweep_dir: str | Path) -> None:
    """Leave a marker when this process found LPIPS unavailable, so later jobs (other processes) do not retry."""
    metrics = cfg.get("metrics") or {}
    if metrics.get("lpips") is not True or metrics.get("require_lpips") is True:
        return
    scorer = shared_lpips_scorer(str(metrics.get("lpips_net", "alex")), False)
    if scorer.reason is not None and not _lpips_marker(cfg, sweep_dir).exists():
        atomic_write_text(_lpips_marker(cfg, sweep_dir), scorer.reason + "\n")


def progress_line(sweep_dir: str | Path, total: int | None, started: float, ran_here: int,
                  outcome: JobOutcome) -> str:
    """``[sweep] 12/54 rows (ok 10, unsupported 1, failed 1) | this job: ... | ~3m left``."""
    scan = scan_sweep(sweep_dir)
    done = len(scan.rows)
    what = {
        "skipped": f"skipped {outcome.key} (row exists)",
        "claimed": f"skipped {outcome.key} (another process is running it)",
    }.get(outcome.action) or f"{outcome.key}: {format_summary(outcome.row or {})}"
    if outcome.note:
        what += f" [{outcome.note}]"
    eta = ""
    if total and ran_here:
        per_trial = (time.time() - started) / ran_here
        eta = f" | ~{max(0, total - done) * per_trial / 60:.1f} min left"
    of_total = f"/{total}" if total else ""
    status = ", ".join(f"{k} {v}" for k, v in scan.counts().items())
    extra = f", invalid {len(scan.invalid)}" if scan.invalid else ""
    return f"[sweep] {done}{of_total} rows ({status}{extra}) | {what}{eta}"
