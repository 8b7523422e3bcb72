"""Gather a sweep's rows into ``trials.csv`` and summarise them (``summary.csv``, ``summary.md``).

Summary groups: attack x model x dataset x batch size x defense x defense parameters x weights, with the count of
trials and of ok / unsupported / failed ones; metric means and medians are over the ok trials (``n_ok`` of
``count``), and ``frac_psnr_above`` is over *all* trials, so unsupported and failed trials count as misses,
never silently dropped.

Every row file is read through :func:`rgap.harness.schema.read_row`. If any is invalid (cut, appended to, empty,
foreign), nothing is written: the error names each file and why, and re-running the sweep recomputes them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rgap.core.atomic import atomic_write_text
from rgap.core.errors import UserInputError
from rgap.harness.schema import ROW_COLUMNS, rows_frame
from rgap.harness.sweep import scan_sweep

GROUP = ["attack", "model", "dataset", "batch_size", "defense", "defense_params", "weights"]
METRICS = ["mse", "psnr", "ssim", "lpips", "label_acc", "time_s"]
OUTPUTS = ("trials.csv", "summary.csv", "summary.md")


def load_rows(sweep_dir: str | Path) -> pd.DataFrame:
    """All rows under ``sweep_dir`` with the schema's types, sorted; ``UserInputError`` if there is no such sweep,
    no row, or any row file is invalid (each named, with its reason)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir} is not a directory; give the sweep directory (results/sweeps/<name>).")
    scan = scan_sweep(sweep_dir)
    if scan.invalid:
        listed = "; ".join(f"{e.path} {e.reason}" for e in scan.invalid)
        raise UserInputError(
            f"{len(scan.invalid)} row file(s) in {sweep_dir} are not valid rows and count as missing: {listed}. "
            f"Nothing was written ({', '.join(OUTPUTS)} are unchanged). Run the sweep command again: it re-runs "
            "these trials and replaces their row files; a row file that belongs to no trial of the sweep can be "
            "deleted."
        )
    if not scan.rows:
        raise UserInputError(
            f"{sweep_dir.resolve()} holds no trial rows (expected trials/<hash>/row.csv, written by "
            "`python -m runners.benchmark -m ...`); is it a sweep directory, and has any trial finished?"
        )
    table = rows_frame(scan.rows)
    return table.sort_values([*GROUP, "index", "seed", "config_hash"], kind="stable").reset_index(drop=True)


def summarize(table: pd.DataFrame, psnr_threshold: float = 30.0) -> pd.DataFrame:
    """Per group: counts by status, mean/median of each metric over ok trials, fraction above the threshold."""
    rows = []
    for keys, group in table.groupby(GROUP, sort=True, dropna=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(GROUP, keys, strict=True))
        row.update(count=len(group), n_ok=len(ok), n_unsupported=int((group["status"] == "unsupported").sum()),
                   n_failed=int((group["status"] == "failed").sum()))
        for metric in METRICS:
            values = pd.to_numeric(ok[metric], errors="coerce")
            row[f"{metric}_mean"] = values.mean()
            row[f"{metric}_median"] = values.median()
        psnr = pd.to_numeric(group["psnr"], errors="coerce")
        row[f"frac_psnr_above_{psnr_threshold:g}"] = float((psnr > psnr_threshold).sum()) / len(group)
        rows.append(row)
    return pd.DataFrame(rows)


def collect(sweep_dir: str | Path, psnr_threshold: float = 30.0) -> list[Path]:
    """Write ``trials.csv``, ``summary.csv`` and ``summary.md`` into ``sweep_dir``; return their paths."""
    sweep_dir = Path(sweep_dir)
    table = load_rows(sweep_dir)
    summary = summarize(table, psnr_threshold)
    paths = [sweep_dir / name for name in OUTPUTS]
    atomic_write_text(paths[0], table[list(ROW_COLUMNS)].to_csv(index=False))
    atomic_write_text(paths[1], summary.to_csv(index=False))
    shown = summary[[*GROUP, "count", "n_ok", "n_unsupported", "n_failed", "psnr_median", "mse_median",
                     "label_acc_mean", "time_s_median", f"frac_psnr_above_{psnr_threshold:g}"]]
    atomic_write_text(paths[2], f"# Sweep summary: {sweep_dir.name}\n\n{len(table)} trials. Metric medians over ok "
                      f"trials; the fraction above {psnr_threshold:g} dB PSNR is over all trials.\n\n"
                      + shown.to_markdown(index=False, floatfmt=".4g") + "\n")
    return paths
