"""What the benchmark scripts share: trials composed with Hydra's compose API and run by ``run_trial``.

A benchmark is a list of trials, each given by the same overrides ``python -m runners.attack`` takes
(``model=cnn6d``, ``+setup=lenet_sample_gray_dlgweights``, ``dataset.size=128``, ``attack.solver=generic``...);
Hydra parses and checks them (a typo is an error before anything runs). Benchmarks never write rows or
images: ``metrics.lpips=false save_images=false``, no output directory; the numbers come from the rows that
``run_trial`` returns, so they are the numbers a sweep would record.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rgap.core.errors import UserInputError
from rgap.harness.compose import compose_config
from rgap.harness.trial import run_trial

#: Added to every benchmark trial: nothing written, no LPIPS (its first load would be timed with the trial).
BENCH_OVERRIDES = ("metrics.lpips=false", "save_images=false")
#: Load average above which timings are reported as taken under load (2 cores).
BUSY_LOAD = 1.0


def trial_configs(overrides: Sequence[str], images: int) -> list[Any]:
    """The composed trial configs of images ``0..images-1`` (all composed first: a bad override fails at once)."""
    if images < 1:
        raise UserInputError(f"--images {images}: give at least 1 image.")
    return [compose_config("trial", [*overrides, *BENCH_OVERRIDES, f"index={i}"]) for i in range(images)]


def run_rows(overrides: Sequence[str], images: int,
             progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per image, through ``rgap.harness.trial.run_trial`` (the trial path of ``runners.attack``)."""
    rows = []
    for cfg in trial_configs(overrides, images):
        row = run_trial(cfg)
        if progress is not None:
            progress(row)
        rows.append(row)
    return rows


def ok_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with ``status=ok`` (the others carry their reason)."""
    return [r for r in rows if r["status"] == "ok"]


def median(rows: Sequence[dict[str, Any]], column: str) -> float:
    """Median of a numeric column over ``rows`` that have it (NaN when none)."""
    values = [float(r[column]) for r in rows if r.get(column) is not None]
    return statistics.median(values) if values else float("nan")


def attack_info(row: dict[str, Any]) -> dict[str, Any]:
    """The row's ``attack_info`` JSON as a dict (empty for rows without a result)."""
    text = row.get("attack_info")
    return json.loads(text) if text else {}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM; Linux reports ``ru_maxrss`` in KiB)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_note() -> str:
    """``load average 0.31`` (and a warning when the machine is not quiet)."""
    load = os.getloadavg()[0]
    return f"load average {load:.2f}" + (" (NOT quiet: timings taken under load)" if load > BUSY_LOAD else "")


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main``: a ``UserInputError`` is one paragraph on stderr and exit 2."""
    try:
        code = main()
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
