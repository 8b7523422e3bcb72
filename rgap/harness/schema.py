"""The one typed row schema: every trial writes exactly these columns, every reader goes through here.

A ``row.csv`` is valid only if it holds exactly the schema's header and one row whose cells parse as their
column's type (integers as integers, booleans as ``True``/``False``, a known ``status``). Anything else (cut,
appended to, empty, binary, another program's CSV) is an :class:`InvalidRowError` that names the file and the
reason; sweeps count such a trial as missing and run it again, and ``collect`` refuses to summarise over it.

Rows written before the ``source`` and ``client_mode`` columns existed (:data:`LEGACY_ROW_COLUMNS`) are still
valid; they read with those cells empty, so a sweep started by an older version resumes without re-running them.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rgap.core.atomic import write_csv
from rgap.core.errors import RGapBenchError

STATUSES = ("ok", "unsupported", "failed")

#: Column -> type of ``row.csv``, in order. Metrics that could not be computed are empty and ``metric_notes``
#: says why. ``int``/``float``/``bool`` cells may be empty (None) unless the column is in :data:`REQUIRED`.
ROW_SCHEMA: dict[str, type] = {
    "attack": str, "model": str, "dataset": str, "batch_size": int, "index": int, "indices": str, "source": str,
    "seed": int, "label_mode": str, "client_mode": str, "precision": str, "loss": str,
    "defense": str, "defense_params": str, "weights": str, "weights_hash": str, "rank_note": str, "device": str,
    "status": str, "reason": str,
    "mse": float, "psnr": float, "ssim": float, "lpips": float, "metric_notes": str, "scored_against": str,
    "matching": str, "label_acc": float, "labels_given": bool, "labels": str, "attack_labels": str,
    "time_s": float, "iterations": int, "final_loss": float, "attack_info": str,
    "config_hash": str, "torch_version": str, "git_commit": str, "timestamp": str,
}
ROW_COLUMNS: tuple[str, ...] = tuple(ROW_SCHEMA)
#: Columns that every row has a value for.
REQUIRED: tuple[str, ...] = ("attack", "model", "dataset", "batch_size", "index", "seed", "status")
#: Headers of earlier versions that are still read (missing columns read as empty): version 1 had no ``source``
#: and no ``client_mode`` (its clients computed in eval mode).
LEGACY_ROW_COLUMNS: tuple[tuple[str, ...], ...] = (tuple(c for c in ROW_COLUMNS if c not in ("source", "client_mode")),)

TRACE_COLUMNS: tuple[str, ...] = ("iteration", "time_s", "grad_loss", "mse", "psnr")


class InvalidRowError(RGapBenchError):
    """A row file that is not exactly one row of this schema."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


# --------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------
def _parse_int(text: str) -> int:
    if text.strip() != text or not text.lstrip("-").isdigit():
        raise ValueError(f"{text!r} is not an integer")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)  # accepts repr() output, including inf and nan
    if text.strip() != text:
        raise ValueError(f"{text!r} has surrounding spaces")
    return value


def _parse_bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"{text!r} is not True or False")
    return text == "True"


_PARSERS: dict[type, Callable[[str], Any]] = {int: _parse_int, float: _parse_float, bool: _parse_bool, str: str}


def parse_cell(column: str, text: str) -> Any:
    """The typed value of one cell of ``column`` (empty text is None); ``ValueError`` if it does not parse."""
    kind = ROW_SCHEMA[column]
    if text == "" and kind is not str:
        if column in REQUIRED:
            raise ValueError("is empty")
        return None
    if kind is str and text == "" and column in REQUIRED:
        raise ValueError("is empty")
    return _PARSERS[kind](text)


def check_row(row: Mapping[str, Any]) -> None:
    """Refuse a row that the reader would refuse: unknown columns or values of the wrong type."""
    unknown = set(row) - set(ROW_COLUMNS)
    if unknown:
        raise KeyError(f"Row has columns outside the schema: {sorted(unknown)}")
    for column, kind in ROW_SCHEMA.items():
        value = row.get(column)
        if value is None:
            if column in REQUIRED:
                raise ValueError(f"Row column {column} is required")
            continue
        ok = isinstance(value, str) if kind is str else (
            isinstance(value, bool) if kind is bool else
            isinstance(value, int) and not isinstance(value, bool) if kind is int else
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise TypeError(f"Row column {column}={value!r} is not of type {kind.__name__}")
        if kind is str and ("\x00" in value):
            raise ValueError(f"Row column {column} holds a NUL character")
    if row["status"] not in STATUSES:
        raise ValueError(f"Row status {row['status']!r} is not one of {STATUSES}")


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------
def write_row(row: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write one row (checked against the schema) as a two-line CSV, atomically."""
    check_row(row)
    return write_csv([row], ROW_COLUMNS, path)


def read_row(path: str | os.PathLike) -> dict[str, Any]:
    """The typed row in ``path``, or :class:`InvalidRowError` saying why the file is not one valid row."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidRowError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not raw:
        raise InvalidRowError(path, "is empty (0 bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRowError(path, "is not UTF-8 text") from exc
    if "\x00" in text:
        raise InvalidRowError(path, "holds binary data")
    try:
        records = list(csv.reader(text.splitlines(keepends=True), strict=True))
    except csv.Error as exc:
        raise InvalidRowError(path, f"is not well-formed CSV ({exc})") from exc
    header = tuple(records[0]) if records else ()
    if header != ROW_COLUMNS and header not in LEGACY_ROW_COLUMNS:
        raise InvalidRowError(path, _header_problem(header))
    if len(records) != 2:
        raise InvalidRowError(path, f"has {len(records) - 1} data lines, expected exactly 1")
    if len(records[1]) != len(header):
        raise InvalidRowError(path, f"has {len(records[1])} cells, expected {len(header)} (cut or appended to?)")
    if not text.endswith(("\n", "\r")):
        raise InvalidRowError(path, "does not end with a line break (cut short?)")
    cells = dict(zip(header, records[1], strict=True))
    row: dict[str, Any] = {}
    for column in ROW_COLUMNS:
        try:
            row[column] = parse_cell(column, cells.get(column, ""))
        except ValueError as exc:
            raise InvalidRowError(path, f"column {column}: {exc}") from exc
    if row["status"] not in STATUSES:
        raise InvalidRowError(path, f"column status: {row['status']!r} is not one of {', '.join(STATUSES)}")
    return row


def _header_problem(header: tuple[str, ...]) -> str:
    if not header:
        return "has no header"
    missing = [c for c in ROW_COLUMNS if c not in header]
    extra = [c for c in header if c not in ROW_COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks columns {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"has unknown columns {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        return "header does not match the row schema: " + "; ".join(parts) + " (cut inside the header, or foreign)"
    return "header has the schema's columns in another order"


def rows_frame(rows: list[Mapping[str, Any]]) -> Any:
    """Typed rows as a pandas DataFrame in schema order: integers ``Int64``, booleans ``boolean``, text ``object``
    (never turned into numbers), floats ``float64``."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(ROW_COLUMNS))
    for column, kind in ROW_SCHEMA.items():
        if kind is int:
            frame[column] = frame[column].astype("Int64")
        elif kind is bool:
            frame[column] = frame[column].astype("boolean")
        elif kind is float:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        else:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), "")
    return frame


def read_table(path: str | os.PathLike) -> Any:
    """A ``trials.csv`` written by ``scripts.collect`` (or any CSV of schema rows), with the schema's types."""
    import pandas as pd

    text_columns = {c: str for c, kind in ROW_SCHEMA.items() if kind is str}
    frame = pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values={
        c: [""] for c, kind in ROW_SCHEMA.items() if kind is not str})
    for column in ROW_COLUMNS:
        if column not in frame.columns:
            frame[column] = "" if ROW_SCHEMA[column] is str else None
    records = frame[list(ROW_COLUMNS)].to_dict("records")
    return rows_frame([{k: (None if isinstance(v, float) and math.isnan(v) and ROW_SCHEMA[k] is not float
                            else v) for k, v in r.items()} for r in records])
