"""Sweeps: one trial per job, rows keyed by a hash of the resolved trial config, never lost or duplicated.

Layout of a sweep directory::

    <sweep>/trials/<hash>/row.csv      the trial's row (written last, atomically: its presence = done)
    <sweep>/trials/<hash>/trace.csv    ... and its trace and images
    <sweep>/trials.csv, summary.csv, summary.md   written by ``scripts.collect``

A job whose ``row.csv`` already exists is skipped unless ``overwrite=true``; a job killed mid-way leaves
no ``row.csv`` (only temporary files, which readers ignore) and is re-run on resume.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rgap.trial import format_summary, run_trial

#: Top-level keys that do not change a trial's result (outputs and bookkeeping), left out of its hash.
NOT_HASHED = ("hydra", "paths", "overwrite", "sweep_name", "save_images", "collect", "psnr_threshold")


def trial_hash(cfg: Mapping[str, Any]) -> str:
    """12 hex digits of SHA-256 over the resolved trial config (sorted JSON, output-only keys removed)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(container, dict)
    payload = {k: v for k, v in container.items() if k not in NOT_HASHED}
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def trial_dir(sweep_dir: str | Path, key: str) -> Path:
    return Path(sweep_dir) / "trials" / key


def completed_rows(sweep_dir: str | Path) -> list[Path]:
    """Every finished trial's ``row.csv`` under ``sweep_dir`` (sorted, temporary files excluded)."""
    return sorted(Path(sweep_dir).glob("trials/*/row.csv"))


def run_sweep_job(cfg: Mapping[str, Any], sweep_dir: str | Path, overwrite: bool = False) -> tuple[str, dict | None]:
    """Run one sweep trial unless its row exists. Returns ``(hash, row)``; ``row`` is None when skipped."""
    key = trial_hash(cfg)
    out = trial_dir(sweep_dir, key)
    if (out / "row.csv").exists() and not overwrite:
        return key, None
    row = run_trial(cfg, out, config_hash=key)
    return key, row


def progress_line(sweep_dir: str | Path, total: int | None, started: float, ran_here: int, key: str,
                  row: dict | None) -> str:
    """``[sweep] 12/54 rows (ok 10, unsupported 1, failed 1) | this job: ... | ~3m left``."""
    counts = {"ok": 0, "unsupported": 0, "failed": 0}
    rows = completed_rows(sweep_dir)
    for path in rows:
        with open(path, newline="") as handle:
            status = next(csv.DictReader(handle), {}).get("status", "")
        counts[status] = counts.get(status, 0) + 1
    done = len(rows)
    what = f"skipped {key} (row exists)" if row is None else f"{key}: {format_summary(row)}"
    eta = ""
    if total and ran_here:
        per_trial = (time.time() - started) / ran_here
        eta = f" | ~{max(0, total - done) * per_trial / 60:.1f} min left"
    of_total = f"/{total}" if total else ""
    status = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"[sweep] {done}{of_total} rows ({status}) | {what}{eta}"
