"""The one row schema: every trial writes exactly these columns, every reader expects them."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Columns of ``row.csv``, in order. Metrics that could not be computed are empty and ``metric_notes`` says why.
ROW_COLUMNS: tuple[str, ...] = (
    "attack", "model", "dataset", "batch_size", "index", "indices", "seed", "label_mode", "precision", "loss",
    "defense", "defense_params", "weights", "weights_hash", "rank_note", "device", "status", "reason",
    "mse", "psnr", "ssim", "lpips", "metric_notes", "scored_against", "matching",
    "label_acc", "labels_given", "labels", "attack_labels",
    "time_s", "iterations", "final_loss", "attack_info",
    "config_hash", "torch_version", "git_commit", "timestamp",
)

STATUSES = ("ok", "unsupported", "failed")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


TRACE_COLUMNS: tuple[str, ...] = ("iteration", "time_s", "grad_loss", "mse", "psnr")


def write_csv(rows: list[Mapping[str, Any]] | list[tuple], columns: tuple[str, ...], path: str | os.PathLike) -> Path:
    """Write ``rows`` (mappings or tuples in ``columns`` order) under a header, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
            writer.writerow([_cell(v) for v in values])
    os.replace(tmp, path)
    return path


def write_row(row: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write one row as a two-line CSV atomically (temporary file + rename); unknown keys are refused."""
    unknown = set(row) - set(ROW_COLUMNS)
    if unknown:
        raise KeyError(f"Row has columns outside the schema: {sorted(unknown)}")
    return write_csv([row], ROW_COLUMNS, path)
