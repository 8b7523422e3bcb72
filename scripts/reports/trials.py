"""A sweep's rows for the reports, read only through the typed schema (``rgap.harness.schema``), and the few
ways the reports slice them: attacks in display order, table columns, defense levels."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from rgap.core.errors import UserInputError
from rgap.harness.collect import load_rows
from rgap.harness.compose import attack_facts, attack_names
from rgap.harness.schema import read_table

#: Columns a ``trials.csv`` must have for the reports (the schema's other columns may be missing in older files).
REQUIRED = ("attack", "model", "dataset", "batch_size", "index", "status", "psnr", "config_hash")
SORT_KEYS = ["attack", "model", "dataset", "batch_size", "index", "seed", "config_hash"]


def load_trials(sweep_dir: str | Path) -> pd.DataFrame:
    """The sweep's rows with the schema's types: ``trials.csv`` if present (older files without the newer
    columns read with them empty), else every ``trials/*/row.csv``; sorted by attack, model, dataset, batch size,
    index, seed and hash.

    Raises ``UserInputError`` for a missing directory, an empty table, rows without the key columns, or cells
    that do not parse as their column's type.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir} is not a directory; give the sweep directory (results/sweeps/<name>).")
    path = sweep_dir / "trials.csv"
    table = _read_collected(path) if path.is_file() else load_rows(sweep_dir)
    if table.empty:
        raise UserInputError(f"{path} holds no rows; run `python -m scripts.collect {sweep_dir}` after the sweep.")
    return table.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def _read_collected(path: Path) -> pd.DataFrame:
    """``trials.csv`` through ``read_table``, after checking that it has a header with the key columns."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    if not header:
        return pd.DataFrame()
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UserInputError(f"{path} lacks the columns {missing}: is it a trials.csv written by scripts.collect?")
    try:
        return read_table(path)
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{path} has a cell that is not of its column's type ({' '.join(str(exc).split())}); "
                             f"rebuild it from the row files with `python -m scripts.collect {path.parent}`.") from exc


def attack_order(attacks: Iterable[str]) -> list[str]:
    """Attacks present, in their display order (``AttackFacts.order``: R-GAP, DLG, iDLG, IG, hybrid), unknown
    ones after, sorted by name."""
    return sorted(set(attacks), key=lambda a: (attack_facts(a).order, a))


def display(attack: str) -> str:
    """The attack's display name (its key when unknown)."""
    return attack_facts(attack).label


def is_known(attack: str) -> bool:
    """Whether ``attack`` is one of ``conf/attack/`` (so it has its own display facts)."""
    return attack in attack_names()


def column_keys(trials: pd.DataFrame, primary: str = "model") -> dict[tuple[str, str, int], str]:
    """Columns of a table, ``(model, dataset, batch_size)`` -> label, sorted by the label's parts.

    The label is the ``primary`` field (``model`` or ``dataset``), with `` (B=k)`` when that value appears with
    several batch sizes and `` [other]`` (the dataset, or the model) when it appears with several of those.
    """
    other = "dataset" if primary == "model" else "model"
    combos = trials[["model", "dataset", "batch_size"]].drop_duplicates()
    combos = combos.assign(batch_size=combos["batch_size"].astype(int))
    labels = {}
    ordered = combos.sort_values([primary, "batch_size", other]).itertuples(index=False)
    for model, dataset, batch in ordered:
        key = {"model": model, "dataset": dataset}
        same = combos[combos[primary] == key[primary]]
        label = str(key[primary])
        if same["batch_size"].nunique() > 1:
            label += f" (B={batch})"
        if same[other].nunique() > 1:
            label += f" [{key[other]}]"
        labels[(model, dataset, int(batch))] = label
    return labels


def select(trials: pd.DataFrame, key: tuple[str, str, int]) -> pd.DataFrame:
    """Rows of one ``(model, dataset, batch_size)`` column."""
    model, dataset, batch = key
    return trials[(trials["model"] == model) & (trials["dataset"] == dataset) & (trials["batch_size"] == batch)]


def defense_level(defense: str, params: str, param: str) -> float | None:
    """The value of ``param`` in a row's ``defense_params`` JSON; 0 for ``defense=none``; None when absent."""
    if defense in ("", "none"):
        return 0.0
    try:
        values = json.loads(params) if params else {}
    except json.JSONDecodeError:
        return None
    value = values.get(param) if isinstance(values, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def with_levels(trials: pd.DataFrame, param: str = "scale") -> pd.DataFrame:
    """Trials with a ``level`` column (``param`` from ``defense_params``; 0 for ``defense=none``).

    Rows whose defense lacks the parameter are left out; ``UserInputError`` when no defended row has it.
    """
    levels = [defense_level(d, p, param) for d, p in zip(trials["defense"], trials["defense_params"], strict=True)]
    trials = trials.assign(level=levels, defense=trials["defense"].replace("", "none")).dropna(subset=["level"])
    if trials.empty or (trials["defense"] == "none").all():
        raise UserInputError(f"no trial has the defense parameter {param!r} in defense_params; pick another "
                             "--param (scale for gaussian/laplace noise, prune_ratio for pruning).")
    return trials.assign(level=trials["level"].astype(float))


def undefended(trials: pd.DataFrame, param: str = "scale") -> tuple[pd.DataFrame, str]:
    """The trials without a defense (``defense=none`` or ``param`` = 0) when the sweep mixes defense settings.

    Returns the trials to draw and a note for the figure ("" when nothing was left out); trials of a sweep with
    one defense setting are all kept, whatever it is.
    """
    if len(trials[["defense", "defense_params"]].drop_duplicates()) <= 1:
        return trials, ""
    zero = [defense_level(d, p, param) == 0 for d, p in zip(trials["defense"], trials["defense_params"], strict=True)]
    if not any(zero):
        raise UserInputError(f"the sweep mixes defense settings and none is undefended ({param} = 0 or "
                             "defense=none); the time plot would pool them. Pick a sweep with one setting.")
    return trials[zero], f"undefended trials only (defense none or {param} = 0)"
