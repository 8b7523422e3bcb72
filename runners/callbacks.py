"""Hydra callbacks for sweeps: remember when and how big the sweep is, collect its rows at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

STARTED_FILE = ".sweep_started"
TOTAL_FILE = ".sweep_total"


def count_jobs(task_overrides: list[str]) -> int:
    """Number of jobs the basic sweeper makes from overrides (cartesian product of sweeps).

    A later override of the same key replaces an earlier one, as a command-line override replaces the
    config's ``hydra.sweeper.params`` entry.
    """
    latest = {}
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        latest[override.get_key_element()] = override
    total = 1
    for override in latest.values():
        if override.is_sweep_override():
            total *= len(list(override.sweep_string_iterator()))
    return total


class SweepCallback(Callback):
    """Writes the sweep's start time and job count (read by every job's progress line, whatever process or
    machine it runs on) and collects ``trials.csv`` / ``summary.*`` when the multirun ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        total = count_jobs([*params, *config.hydra.overrides.task])
        (sweep_dir / STARTED_FILE).write_text(str(time.time()))
        (sweep_dir / TOTAL_FILE).write_text(str(total))
        print(f"[sweep] {total} trials -> {sweep_dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from scripts.collect import collect

        sweep_dir = Path(config.hydra.sweep.dir)
        paths = collect(sweep_dir, psnr_threshold=float(config.get("psnr_threshold", 30.0)))
        print(f"[sweep] collected: {', '.join(str(p) for p in paths)}", flush=True)
