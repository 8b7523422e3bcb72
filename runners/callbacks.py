"""Hydra callbacks for sweeps: check every job before any runs, remember the sweep's size, collect at the end.

* Before the first trial (``on_multirun_start``): the sweep name must name one directory under
  ``<paths.results>/sweeps``, the directory must be writable, and every job's config is composed and checked
  (types, choices, attack and defense hyper-parameters, weight keys): a typo in any job is one paragraph and exit
  2 before anything runs.
* Every job's progress line reads the sweep's start time and job count from two small files, whatever process or
  machine it runs on.
* At the end (``on_multirun_end``) the rows are collected into ``trials.csv`` and ``summary.*``.

``python -m runners.benchmark`` without ``-m`` is a one-job sweep into the same directory (``on_run_*``).
"""

from __future__ import annotations

import copy
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rgap.core.atomic import atomic_write_text, make_dirs
from rgap.core.errors import UserInputError
from rgap.core.validation import as_int, as_name
from rgap.harness.collect import collect
from rgap.harness.compose import config_groups
from rgap.harness.sweep import check_sweep_config, scan_sweep
from runners.common import USER_ERROR_EXIT, print_user_error

STARTED_FILE = ".sweep_started"
TOTAL_FILE = ".sweep_total"
#: Sweeps with more jobs than this are checked one composed config per swept value, not per job.
CHECK_EVERY_JOB_UP_TO = 64
#: Override lists of the jobs this process has composed and checked (``hydra/sweeper=checked`` skips
#: composing them a second time).
_CHECKED_JOBS: set[tuple[str, ...]] = set()


def checked_jobs() -> frozenset[tuple[str, ...]]:
    """Override lists (as the basic sweeper writes them) of the jobs ``check_jobs`` composed and checked."""
    return frozenset(_CHECKED_JOBS)


def job_overrides(task_overrides: list[str]) -> list[list[str]]:
    """The override list of every job the basic sweeper makes from ``task_overrides`` (cartesian product).

    A later override of the same key replaces an earlier one, as a command-line override replaces the config's
    ``hydra.sweeper.params`` entry.
    """
    latest: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(task_overrides)):
        key = override.get_key_element()
        if override.is_sweep_override():
            latest[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            latest[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*latest.values())]


def count_jobs(task_overrides: list[str]) -> int:
    """Number of jobs the basic sweeper makes from ``task_overrides``."""
    return len(job_overrides(task_overrides))


def representative_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """All jobs when few; else the first job with each key's each value in turn (every value checked once)."""
    if len(jobs) <= CHECK_EVERY_JOB_UP_TO:
        return jobs
    first = jobs[0]
    picked = [first]
    for position in range(len(first)):
        for value in dict.fromkeys(job[position] for job in jobs):
            if value != first[position]:
                picked.append([*first[:position], value, *first[position + 1:]])
    return picked


def check_jobs(config_name: str, jobs: list[list[str]]) -> list[list[str]]:
    """Compose and check every job config (or one per swept value); the first problem is a ``UserInputError``.

    Jobs that differ from a composed one only in plain values (``index=3``, ``attack.lr=0.1``: no config group,
    no ``+``/``~``) are not composed again: the composed config is copied and the values set as Hydra sets them
    (``OmegaConf.update`` with Hydra's parsed value, in struct mode, so an unknown key is still an error). A
    composition costs about 0.1 s, a copy a few milliseconds.
    """
    from hydra import compose
    from hydra.errors import HydraException

    composed: dict[tuple[str, ...], DictConfig] = {}
    checked = representative_jobs(jobs)
    for job in checked:
        where = f"sweep job `{' '.join(job)}`" if job else "the sweep"
        try:
            structure, values = split_overrides(job)
            if tuple(structure) not in composed:
                composed[tuple(structure)] = compose(config_name=config_name, overrides=structure)
            cfg = with_values(composed[tuple(structure)], values)
            if cfg is None:  # a value Hydra would refuse: compose the job for Hydra's own message
                cfg = compose(config_name=config_name, overrides=job)
            check_sweep_config(cfg)
        except UserInputError as exc:
            raise UserInputError(f"{where}: {exc} No trial was run.") from exc
        except (HydraException, OmegaConfBaseException) as exc:
            raise UserInputError(f"{where}: {' '.join(str(exc).split())} No trial was run.") from exc
    return checked


def split_overrides(job: list[str]) -> tuple[list[str], list[Override]]:
    """``(structure, values)``: overrides that change the config's composition (config groups, ``+``, ``~``,
    ``hydra.``) as strings, and the parsed plain value changes."""
    groups = config_groups()
    structure: list[str] = []
    values: list[Override] = []
    for text, override in zip(job, OverridesParser.create().parse_overrides(job), strict=True):
        key = override.get_key_element()
        plain = (override.type == OverrideType.CHANGE and override.package is None
                 and key.split(".")[0] != "hydra" and key.split("/")[0] not in groups)
        if plain:
            values.append(override)
        else:
            structure.append(text)
    return structure, values


def with_values(cfg: DictConfig, values: list[Override]) -> DictConfig | None:
    """A copy of ``cfg`` with the parsed value overrides set; None when one of them is refused."""
    if not values:
        return cfg
    copied = copy.deepcopy(cfg)
    for override in values:
        try:
            OmegaConf.update(copied, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:
            return None
    return copied


def sweep_dir_of(config: DictConfig) -> Path:
    """The sweep directory after checking ``sweep_name`` (one directory name under ``<paths.results>/sweeps``)."""
    as_name(config.get("sweep_name", "default"), "sweep_name")
    return Path(str(config.hydra.sweep.dir))


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and write (then remove) a probe file in it; ``OutputWriteError`` when impossible."""
    make_dirs(directory)
    probe = atomic_write_text(directory / ".write_probe", "")
    probe.unlink(missing_ok=True)


def _exit_on_user_error(step: Any) -> None:
    try:
        step()
    except UserInputError as exc:
        print_user_error(exc)
        sys.exit(USER_ERROR_EXIT)


def _start(sweep_dir: Path, total: int) -> None:
    ensure_writable(sweep_dir)
    atomic_write_text(sweep_dir / STARTED_FILE, str(time.time()))
    atomic_write_text(sweep_dir / TOTAL_FILE, str(total))
    print(f"[sweep] {total} trial{'s' if total != 1 else ''} -> {sweep_dir}", flush=True)


def _finish(sweep_dir: Path, psnr_threshold: float) -> None:
    scan = scan_sweep(sweep_dir)
    if scan.running:
        print(f"[sweep] {scan.running} trial(s) are still being run by another process; run "
              f"`python -m scripts.collect {sweep_dir}` when they finish.", flush=True)
    paths = collect(sweep_dir, psnr_threshold=psnr_threshold)
    print(f"[sweep] collected: {', '.join(str(p) for p in paths)}", flush=True)


class RunOutputs(Callback):
    """Single runs (``runners.attack``, ``rank``, ``train``): the run directory must be writable before Hydra
    writes into it (a read-only or full location is one paragraph and exit 2, not a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_user_error(lambda: ensure_writable(Path(str(config.hydra.run.dir))))


class SweepCallback(Callback):
    """Checks, bookkeeping and collection around ``runners.benchmark`` (multirun and single run)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def start() -> None:
            sweep_dir = sweep_dir_of(config)
            batch = config.hydra.sweeper.get("max_batch_size")
            try:
                if batch is not None:
                    as_int(batch, "hydra.sweeper.max_batch_size", 1, meaning="jobs per batch, null: all at once")
            except UserInputError as exc:
                raise UserInputError(f"{exc} No trial was run.") from exc
            params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
            jobs = job_overrides([*params, *config.hydra.overrides.task])
            _CHECKED_JOBS.update(tuple(job) for job in check_jobs(str(config.hydra.job.config_name), jobs))
            _start(sweep_dir, len(jobs))

        _exit_on_user_error(start)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_user_error(lambda: _finish(Path(str(config.hydra.sweep.dir)),
                                            float(config.get("psnr_threshold", 30.0))))

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        def start() -> None:
            sweep_dir = sweep_dir_of(config)
            plain = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            try:
                check_sweep_config(plain)
            except UserInputError as exc:
                raise UserInputError(f"{exc} No trial was run.") from exc
            _start(sweep_dir, 1)

        _exit_on_user_error(start)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_on_user_error(lambda: _finish(Path(str(config.hydra.sweep.dir)),
                                            float(config.get("psnr_threshold", 30.0))))
