"""Gather a sweep's rows into one table and summarise it.

    python -m scripts.collect <sweep dir> [--psnr-threshold 30]

Writes ``trials.csv`` (every row, sorted), ``summary.csv`` and ``summary.md`` into the sweep directory.
Summary groups: attack x model x dataset x batch size, with the count of trials and of ok / unsupported /
failed ones; metric means and medians are over the ok trials (``n_ok`` of ``count``), and ``frac_psnr_above``
is over *all* trials, so unsupported and failed trials count as misses, never silently dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from rgap.errors import UserInputError
from rgap.schema import ROW_COLUMNS
from rgap.sweep import completed_rows

#: Columns read as text: hashes and label lists that pandas would otherwise turn into numbers.
TEXT_COLUMNS = {c: str for c in ("indices", "labels", "attack_labels", "matching", "config_hash", "weights_hash",
                                 "git_commit", "defense_params")}
GROUP = ["attack", "model", "dataset", "batch_size", "defense", "defense_params", "weights"]
METRICS = ["mse", "psnr", "ssim", "lpips", "label_acc", "time_s"]


def load_rows(sweep_dir: str | Path) -> pd.DataFrame:
    """All finished rows under ``sweep_dir``; ``UserInputError`` if there is no such sweep or no row."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir} is not a directory; give the sweep directory (results/sweeps/<name>).")
    paths = completed_rows(sweep_dir)
    if not paths:
        raise UserInputError(
            f"{sweep_dir.resolve()} holds no trial rows (expected trials/<hash>/row.csv, written by "
            "`python -m runners.benchmark -m ...`); is it a sweep directory, and has any trial finished?"
        )
    frames = [pd.read_csv(p, dtype=TEXT_COLUMNS) for p in paths]
    table = pd.concat(frames, ignore_index=True)
    missing = [c for c in ROW_COLUMNS if c not in table.columns]
    if missing:
        raise UserInputError(f"Rows under {sweep_dir} lack columns {missing}: written by another version?")
    table = table[list(ROW_COLUMNS)]
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


def _atomic_write(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def collect(sweep_dir: str | Path, psnr_threshold: float = 30.0) -> list[Path]:
    """Write ``trials.csv``, ``summary.csv`` and ``summary.md`` into ``sweep_dir``; return their paths."""
    sweep_dir = Path(sweep_dir)
    table = load_rows(sweep_dir)
    summary = summarize(table, psnr_threshold)
    paths = [sweep_dir / "trials.csv", sweep_dir / "summary.csv", sweep_dir / "summary.md"]
    _atomic_write(table.to_csv(index=False), paths[0])
    _atomic_write(summary.to_csv(index=False), paths[1])
    shown = summary[[*GROUP, "count", "n_ok", "n_unsupported", "n_failed", "psnr_median", "mse_median",
                     "label_acc_mean", "time_s_median", f"frac_psnr_above_{psnr_threshold:g}"]]
    _atomic_write(f"# Sweep summary: {sweep_dir.name}\n\n{len(table)} trials. Metric medians over ok trials; "
                  f"the fraction above {psnr_threshold:g} dB PSNR is over all trials.\n\n"
                  + shown.to_markdown(index=False, floatfmt=".4g") + "\n", paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--psnr-threshold", type=float, default=30.0)
    args = parser.parse_args(argv)
    try:
        paths = collect(args.sweep_dir, args.psnr_threshold)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = pd.read_csv(paths[0])
    print(f"{len(table)} trials ({', '.join(f'{k} {v}' for k, v in table['status'].value_counts().items())})")
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
