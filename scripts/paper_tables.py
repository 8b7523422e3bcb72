"""Render a sweep's rows as the paper's tables (Markdown and CSV).

    python -m scripts.paper_tables <sweep dir> --experiment {table1,rank,noise,labels} [--out DIR]
        [--rank-csv PATH] [--param scale] [--psnr-threshold 30] [--note TEXT]

Reads ``<sweep dir>/trials.csv`` (or collects the rows with ``scripts.collect.load_rows`` when it is missing) and
writes ``<out>/<experiment>.md`` and ``<out>/<experiment>.csv`` (default ``--out``: the sweep directory).

* ``table1``: rows = attacks, columns = architectures; MSE (headline), PSNR, SSIM, LPIPS and time tables.
* ``labels``: DLG / iDLG label accuracy per dataset, next to the iDLG paper's Table 1 for reference.
* ``rank``: the rank analysis (``--rank-csv``, ``rgap.rank.rank_table`` rows with a ``model`` column) per model,
  joined with each attack's median PSNR, and whether the prediction agrees with what R-GAP achieved.
* ``noise``: median PSNR per defense level (``--param``, read from ``defense_params``) and attack.

Cells are ``mean ± std (n=K)`` with the *sample* standard deviation (ddof=1) over the ok trials; a cell also counts
its unsupported and failed trials (they are never averaged in), and an empty metric shows ``n/a`` with a footnote
quoting the trials' ``metric_notes``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rgap.core.atomic import atomic_write_text
from rgap.core.errors import UserInputError
from rgap.harness.collect import load_rows

EXPERIMENTS = ("table1", "rank", "noise", "labels")
#: Attacks in the paper's row order, with their display names; other attacks follow, sorted.
ATTACK_ORDER = ("rgap", "dlg", "idlg", "ig", "hgap")
DISPLAY = {"rgap": "R-GAP", "dlg": "DLG", "idlg": "iDLG", "ig": "IG", "hgap": "R-GAP+DLG (hybrid)"}
#: The R-GAP paper's rank-analysis figure: total |W| of its five networks A-E (our rankfig_a..rankfig_e).
FIGURE_PARAMS = {"rankfig_a": 3556, "rankfig_b": 2667, "rankfig_c": 1262144, "rankfig_d": 3388, "rankfig_e": 3056}
#: iDLG paper, Table 1 (README of PatrickZH/Improved-Deep-Leakage-from-Gradients): label accuracy in %.
PAPER_IDLG = {"MNIST": {"dlg": 89.9, "idlg": 100.0}, "CIFAR-100": {"dlg": 83.3, "idlg": 100.0},
              "LFW": {"dlg": 79.1, "idlg": 100.0}}
PAPER_GROUP = "iDLG paper, Table 1"
#: The iDLG paper's datasets that this project can load, and their dataset config names.
PAPER_MATCH = {"MNIST": "mnist"}
STRING_COLUMNS = ("indices", "labels", "attack_labels", "matching", "config_hash", "defense_params", "metric_notes",
                  "reason", "attack_info", "status", "attack", "model", "dataset", "defense", "labels_given")
NUMERIC_COLUMNS = ("batch_size", "index", "seed", "mse", "psnr", "ssim", "lpips", "label_acc", "time_s")
REQUIRED = ("attack", "model", "dataset", "batch_size", "index", "status", "psnr", "config_hash")
EMPTY = "–"


# ---------------------------------------------------------------------------------------------------- loading


def load_trials(sweep_dir: str | Path) -> pd.DataFrame:
    """The sweep's rows: ``trials.csv`` if present, else collected from ``trials/*/row.csv``; typed and sorted.

    Raises ``UserInputError`` for a missing directory, an empty table or rows without the schema's key columns.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserInputError(f"{sweep_dir} is not a directory; give the sweep directory (results/sweeps/<name>).")
    path = sweep_dir / "trials.csv"
    if path.is_file():
        try:
            table = pd.read_csv(path, dtype={c: str for c in STRING_COLUMNS}, keep_default_na=False,
                                na_values=[""])
        except pd.errors.EmptyDataError:
            table = pd.DataFrame()
    else:
        table = load_rows(sweep_dir)
    if table.empty:
        raise UserInputError(f"{path} holds no rows; run `python -m scripts.collect {sweep_dir}` after the sweep.")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserInputError(f"{path} lacks the columns {missing}: is it a trials.csv written by scripts.collect?")
    for column in STRING_COLUMNS:
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
        else:
            table[column] = ""
    for column in NUMERIC_COLUMNS:
        table[column] = pd.to_numeric(table[column], errors="coerce") if column in table.columns else math.nan
    table = repair_hashes(table, sweep_dir)
    keys = ["attack", "model", "dataset", "batch_size", "index", "seed", "config_hash"]
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def repair_hashes(table: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """Give back the trial-directory names of hashes that a CSV round trip turned into numbers.

    ``scripts.collect`` reads each ``row.csv`` without a dtype, so an all-digit hash such as ``000123456789``
    becomes ``123456789`` (and ``12e345678901`` a float) in ``trials.csv``; such values are mapped back to the
    ``trials/<hash>`` directory that reads the same way, so traces and images are still found.
    """
    trials_dir = sweep_dir / "trials"
    if not trials_dir.is_dir():
        return table
    names = {p.name for p in trials_dir.iterdir() if p.is_dir()}
    lost = set(table["config_hash"]) - names
    if not lost:
        return table
    mapping = {}
    for name in sorted(names):
        seen = str(pd.read_csv(io.StringIO(f"h\n{name}\n"))["h"].iloc[0])
        if seen in lost:
            mapping[seen] = name
    return table.assign(config_hash=table["config_hash"].map(lambda h: mapping.get(h, h)))


def attack_order(attacks: Iterable[str]) -> list[str]:
    """Attacks present, in the paper's order (R-GAP, DLG, iDLG, IG, hybrid), unknown ones after, sorted."""
    present = set(attacks)
    return [a for a in ATTACK_ORDER if a in present] + sorted(present - set(ATTACK_ORDER))


def display(attack: str) -> str:
    """The attack's display name (its key when unknown)."""
    return DISPLAY.get(attack, attack)


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


# ---------------------------------------------------------------------------------------------------- cells


@dataclass
class Footnotes:
    """Numbered, de-duplicated footnotes of one table: ``[1] text``."""

    texts: list[str] = field(default_factory=list)

    def ref(self, text: str) -> str:
        """`` [k]`` for ``text``, adding it when new."""
        if text not in self.texts:
            self.texts.append(text)
        return f" [{self.texts.index(text) + 1}]"

    def render(self) -> str:
        """The footnotes as Markdown lines (hard line breaks)."""
        return "\n".join(f"[{i}] {t}  " for i, t in enumerate(self.texts, start=1))


def metric_note(rows: pd.DataFrame, metric: str) -> str:
    """The first ``metric_notes`` reason about ``metric`` among ``rows`` (or the first note at all)."""
    notes = [n for n in rows["metric_notes"] if n]
    for note in notes:
        for part in note.split("; "):
            if part.lower().startswith(f"{metric}:"):
                return part
    return notes[0] if notes else f"{metric}: no value recorded and no metric_notes given"


def status_suffix(rows: pd.DataFrame) -> list[str]:
    """``["1 unsupported", "2 failed"]``: the non-ok trials of ``rows``, by status (sorted)."""
    counts = rows.loc[rows["status"] != "ok", "status"].value_counts()
    return [f"{int(counts[s])} {s or 'no status'}" for s in sorted(counts.index)]


def _reason(rows: pd.DataFrame, status: str) -> str:
    """Footnote text: the first ``status`` trial's reason (whitespace folded, at most 200 characters)."""
    first = rows.loc[rows["status"] == status].iloc[0]
    text = " ".join(str(first["reason"]).split()) or "no reason recorded"
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{display(first['attack'])} on {first['model']} ({status}): {text}"


def stat_cell(rows: pd.DataFrame, metric: str, fmt: Callable[[float], str], notes: Footnotes,
              stat: str = "mean_std", unit: str = "") -> str:
    """One cell: ``mean ± std unit (n=K[; 1 unsupported])``; ``stat`` ``mean`` / ``median``: ``value (n=K...)``.

    The statistic is over the ok trials with a value of ``metric``; std is the sample std (ddof=1), left out for
    one trial. A cell with no ok trial shows the statuses and counts (``unsupported (n=3)``), one whose ok trials
    have no value shows ``n/a`` with a footnote quoting ``metric_notes``; an empty cell is ``–``.
    """
    if rows.empty:
        return EMPTY
    ok = rows[rows["status"] == "ok"]
    extra = status_suffix(rows)
    if ok.empty:
        counts = rows["status"].value_counts()
        parts = [f"{s or 'no status'} (n={int(counts[s])})" for s in sorted(counts.index)]
        return "; ".join(parts) + notes.ref(_reason(rows, sorted(counts.index)[0]))
    values = pd.to_numeric(ok[metric], errors="coerce").dropna()
    if values.empty:
        suffix = f" ({'; '.join(extra)})" if extra else ""
        return "n/a" + notes.ref(metric_note(ok, metric)) + suffix
    missing = len(ok) - len(values)
    if missing:
        extra = [f"{missing} n/a", *extra]
    if stat == "median":
        body = fmt(float(values.median()))
    elif stat == "mean":
        body = fmt(float(values.mean()))
    else:
        finite = bool(values.map(math.isfinite).all())
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if len(values) > 1 and finite else math.nan
        body = fmt(mean) if not math.isfinite(std) else f"{fmt(mean)} ± {fmt(std)}"
        if not finite:
            body += notes.ref(f"{metric}: infinite for at least one trial (an exact reconstruction, MSE 0), so "
                              "the mean is infinite and no std is given")
    return f"{body}{unit} (n={len(values)}{''.join('; ' + e for e in extra)})"


def fixed(spec: str) -> Callable[[float], str]:
    """A number formatter: ``format(value, spec)``."""
    return lambda value: f"{value:{spec}}"


# ---------------------------------------------------------------------------------------------------- rendering


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of ``frame`` (index left out; ``|`` in cells escaped); the first column left-aligned."""
    def esc(value: object) -> str:
        """A cell as text: NaN/None empty, pipes escaped, newlines folded."""
        text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "|".join([":---"] + ["---:"] * (len(frame.columns) - 1)) + "|"
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def atomic_write(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically (``rgap.core.atomic``)."""
    return atomic_write_text(path, text)


@dataclass
class Rendered:
    """An experiment's Markdown text and its CSV table."""

    markdown: str
    csv: pd.DataFrame


STD_CAPTION = ("Cells: mean ± sample standard deviation (ddof=1) over the ok trials, n = ok trials with a value "
               "(one trial: its value alone); unsupported and failed trials are counted in the cell, never "
               "averaged.")

#: (metric, section title, number format, unit) of table1's tables, the headline first.
TABLE1_METRICS: tuple[tuple[str, str, Callable[[float], str], str], ...] = (
    ("mse", "MSE (headline)", fixed(".1e"), ""),
    ("psnr", "PSNR (dB)", fixed(".1f"), ""),
    ("ssim", "SSIM", fixed(".3f"), ""),
    ("lpips", "LPIPS", fixed(".3f"), ""),
    ("time_s", "Attack wall time", fixed(".2f"), " s"),
)


def attack_by_column(trials: pd.DataFrame, columns: dict[tuple[str, str, int], str], metric: str,
                     fmt: Callable[[float], str], notes: Footnotes, stat: str = "mean_std",
                     unit: str = "") -> pd.DataFrame:
    """Rows = attacks (paper order), columns = ``columns``' labels, cells from ``stat_cell``."""
    rows = []
    for attack in attack_order(trials["attack"]):
        mine = trials[trials["attack"] == attack]
        cells = {label: stat_cell(select(mine, key), metric, fmt, notes, stat, unit)
                 for key, label in columns.items()}
        rows.append({"attack": display(attack), **cells})
    return pd.DataFrame(rows, columns=["attack", *columns.values()])


def render_table1(trials: pd.DataFrame) -> Rendered:
    """R-GAP vs the optimisation attacks per architecture: MSE headline, then PSNR, SSIM, LPIPS and time."""
    columns = column_keys(trials, "model")
    datasets = ", ".join(f"{label}: {key[1]}" for key, label in columns.items())
    parts = ["# Table 1: reconstruction quality per attack and architecture", "",
             f"Columns (architecture: dataset): {datasets}. {STD_CAPTION}", ""]
    frames = []
    for metric, title, fmt, unit in TABLE1_METRICS:
        notes = Footnotes()
        frame = attack_by_column(trials, columns, metric, fmt, notes, unit=unit)
        parts += [f"## {title}", "", markdown_table(frame), ""]
        if notes.texts:
            parts += [notes.render(), ""]
        frames.append(frame.assign(metric=metric)[["metric", *frame.columns]])
    return Rendered("\n".join(parts), pd.concat(frames, ignore_index=True))


def render_labels(trials: pd.DataFrame) -> Rendered:
    """Label accuracy (mean, %) of DLG and iDLG: one row per dataset, ours beside the iDLG paper's Table 1.

    Rows: every dataset (and batch size) of the sweep, then the paper's datasets this sweep did not run (MNIST
    when absent, CIFAR-100 and LFW always: this project has no loader for them), whose own cells say "not run".
    """
    trials = trials[trials["attack"].isin(["dlg", "idlg"])]
    if trials.empty:
        raise UserInputError("the labels table needs dlg or idlg trials; this sweep has none.")
    columns = column_keys(trials, "dataset")
    notes = Footnotes()
    attacks = ("dlg", "idlg")
    rows = []
    ran_paper_sets = set()
    for key, label in columns.items():
        cell_rows = select(trials, key)
        paper_name = next((p for p, ours in PAPER_MATCH.items() if ours == key[1]), None)
        row = {"data": label if paper_name is None else f"{label} ({paper_name})"}
        for attack in attacks:
            mine = cell_rows[cell_rows["attack"] == attack]
            row[f"{display(attack)} (ours)"] = stat_cell(mine.assign(label_acc=mine["label_acc"] * 100), "label_acc",
                                                         fixed(".1f"), notes, stat="mean", unit=" %")
        for attack in attacks:
            value = PAPER_IDLG.get(paper_name or "", {}).get(attack)
            row[f"{display(attack)} ({PAPER_GROUP})"] = EMPTY if value is None else f"{value:.1f} %"
        if paper_name:
            ran_paper_sets.add(paper_name)
        rows.append(row)
    for paper_name, values in PAPER_IDLG.items():
        if paper_name in ran_paper_sets:
            continue
        why = (f"{paper_name}: not run, this project has no {paper_name} loader" if paper_name not in PAPER_MATCH
               else f"{paper_name}: not run in this sweep (dataset={PAPER_MATCH[paper_name]} needs its files; "
               "see conf/experiment/paper_idlg_labels.yaml)")
        row = {"data": paper_name}
        for attack in attacks:
            row[f"{display(attack)} (ours)"] = "not run" + notes.ref(why)
        for attack in attacks:
            row[f"{display(attack)} ({PAPER_GROUP})"] = f"{values[attack]:.1f} %"
        rows.append(row)
    frame = pd.DataFrame(rows)
    given = trials[(trials["status"] == "ok") & trials["labels_given"].astype(str).str.lower().eq("true")]
    caption = ("Cells \"(ours)\": mean label accuracy over the ok trials in % (n = ok trials with a value); "
               "unsupported and failed trials are counted, never averaged. The columns headed "
               f"\"({PAPER_GROUP})\" are the iDLG paper's reported numbers (its own setup: LeNet, 300 L-BFGS "
               "iterations, MNIST, CIFAR-100 and LFW), shown for reference: only where a row names the same "
               "dataset are the two comparable.")
    if not given.empty:
        caption += f" {len(given)} ok trial(s) were given the true labels (labels_given), so scored trivially."
    parts = ["# Label accuracy: DLG vs iDLG", "", caption, "", markdown_table(frame), ""]
    if notes.texts:
        parts += [notes.render(), ""]
    return Rendered("\n".join(parts), frame)


# ---------------------------------------------------------------------------------------------------- rank


RANK_REQUIRED = ("model", "layer", "index_v", "deficiency", "predicted")


def load_rank_csv(path: str | Path | None) -> pd.DataFrame:
    """The per-layer rank table (``rgap.rank.rank_table`` + ``model`` [+ ``total_params``]); checked."""
    if path is None:
        raise UserInputError("the rank table and figure need --rank-csv PATH: the rank analysis of every model, "
                             "one row per layer (rgap.rank.rank_table with a `model` column), e.g. the "
                             "rank_analysis.csv written by scripts.paper_offline.")
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--rank-csv {path} does not exist.")
    frame = pd.read_csv(path, dtype={"model": str, "layer": str, "predicted": str})
    missing = [c for c in RANK_REQUIRED if c not in frame.columns]
    if missing or frame.empty:
        raise UserInputError(f"--rank-csv {path} lacks the columns {missing} or rows; expected rgap.rank.rank_table "
                             "rows with a `model` column.")
    return frame


def psnr_median(rows: pd.DataFrame) -> tuple[float, int]:
    """Median PSNR over the ok trials of ``rows`` and their number (NaN, 0 when none)."""
    values = pd.to_numeric(rows.loc[rows["status"] == "ok", "psnr"], errors="coerce").dropna()
    return (float(values.median()) if len(values) else math.nan), len(values)


def _per_layer(layers: pd.DataFrame, column: str, signed: bool = True, nonzero: bool = False) -> str:
    """``conv1 -484; fc1 -1``: one value of ``column`` per layer, input layer first (``nonzero``: only layers
    whose value is not 0; ``""`` when none is)."""
    parts = []
    for name, value in zip(layers["layer"], layers[column], strict=True):
        if nonzero and not pd.isna(value) and int(value) == 0:
            continue
        parts.append(f"{name} {'n/a' if pd.isna(value) else format(int(value), '+d' if signed else 'd')}")
    return "; ".join(parts)


def observed(rows: pd.DataFrame, threshold: float) -> tuple[float, int, str]:
    """Median PSNR, ok trials with a PSNR, and ``ok`` (median >= ``threshold``) / ``noisy`` / the statuses /
    ``no trials`` for the trials of one attack on one network."""
    median, n_ok = psnr_median(rows)
    if n_ok:
        return median, n_ok, "ok" if median >= threshold else "noisy"
    if rows.empty:
        return median, n_ok, "no trials"
    return median, n_ok, "/".join(sorted(set(rows["status"])))


def _agrees(predicted: object, seen: str, positive: str) -> object:
    """``yes`` when the prediction (``positive`` = recoverable) and the observation (``ok``) go together."""
    if pd.isna(predicted) or seen not in ("ok", "noisy") or predicted == "n/a":
        return pd.NA
    return "yes" if (predicted == positive) == (seen == "ok") else "no"


def rank_summary(trials: pd.DataFrame, rank: pd.DataFrame, threshold: float = 30.0) -> pd.DataFrame:
    """One row per model (sorted): rank counts and deficiency, both predictions, and per attack its median PSNR,
    what was observed and whether each prediction agrees.

    ``predicted_count`` (``predicted`` is the same column, kept for readers of older tables) is ``unsupported``
    if any layer is, ``deficient`` if any layer's count with virtual constraints ``index_v`` is > 0, else
    ``determined``. ``predicted_rank`` is ``deficient`` when the layers' numerical deficiencies add up to > 0,
    ``full rank`` when they are all 0, ``n/a`` when a layer has none (``deficiency_missing`` counts those).
    Per attack ``a``: ``a_psnr_median``, ``a_n`` (ok trials), ``a_observed`` (``ok`` when the median PSNR
    reaches ``threshold``, ``noisy`` below, else the trials' statuses), ``a_agrees_count`` and
    ``a_agrees_rank`` (``yes`` when "determined"/"full rank" goes with "ok"). ``observed``/``agrees`` repeat
    R-GAP's (the attack the layer-wise analysis is about).
    """
    attacks = attack_order(trials["attack"])
    rows = []
    for model in sorted(set(rank["model"]) | set(trials["model"])):
        layers = rank[rank["model"] == model]
        row: dict[str, object] = {"model": model, "figure_params": FIGURE_PARAMS.get(model, pd.NA)}
        total = layers["total_params"].dropna() if "total_params" in layers else pd.Series(dtype=float)
        row["total_params"] = int(total.iloc[0]) if len(total) else pd.NA
        if layers.empty:
            row.update(index_per_layer=pd.NA, index_v_per_layer=pd.NA, deficiency_per_layer=pd.NA,
                       worst_layer=pd.NA, worst_index_v=pd.NA, deficiency=pd.NA, deficiency_missing=pd.NA,
                       predicted_count=pd.NA, predicted_rank=pd.NA)
        else:
            worst = layers.loc[pd.to_numeric(layers["index_v"]).idxmax()]
            deficiency = pd.to_numeric(layers["deficiency"], errors="coerce")
            predicted = set(layers["predicted"].astype(str))
            missing = int(deficiency.isna().sum())
            total_deficiency = int(deficiency.sum()) if deficiency.notna().any() else pd.NA
            row.update(index_per_layer=_per_layer(layers, "index"),
                       index_v_per_layer=_per_layer(layers, "index_v"),
                       deficiency_per_layer=_per_layer(layers, "deficiency", signed=False, nonzero=True),
                       worst_layer=worst["layer"], worst_index_v=int(worst["index_v"]),
                       deficiency=total_deficiency, deficiency_missing=missing,
                       predicted_count="unsupported" if "unsupported" in predicted
                       else "deficient" if "deficient" in predicted else "determined",
                       predicted_rank="n/a" if missing or pd.isna(total_deficiency)
                       else "deficient" if total_deficiency > 0 else "full rank")
        row["predicted"] = row["predicted_count"]
        mine = trials[trials["model"] == model]
        for attack in attacks:
            median, n_ok, seen = observed(mine[mine["attack"] == attack], threshold)
            row[f"{attack}_psnr_median"], row[f"{attack}_n"], row[f"{attack}_observed"] = median, n_ok, seen
            row[f"{attack}_agrees_count"] = _agrees(row["predicted_count"], seen, "determined")
            row[f"{attack}_agrees_rank"] = _agrees(row["predicted_rank"], seen, "full rank")
        rgap_seen = observed(mine[mine["attack"] == "rgap"], threshold)[2]
        row["observed"] = rgap_seen
        row["agrees"] = _agrees(row["predicted_count"], rgap_seen, "determined")
        rows.append(row)
    return pd.DataFrame(rows)


def _int_or_blank(value: object) -> str:
    """``123`` or an empty string for a missing value."""
    return "" if pd.isna(value) else f"{int(value)}"


def _blank(value: object) -> str:
    """The value as text, or an empty string when missing."""
    return "" if pd.isna(value) else str(value)


def render_rank(trials: pd.DataFrame, rank: pd.DataFrame, threshold: float) -> Rendered:
    """The rank analysis per network (counts per layer, numerical deficiency, both predictions), then each
    attack's median PSNR against those predictions; the CSV has one row per (network, attack)."""
    summary = rank_summary(trials, rank, threshold)
    attacks = attack_order(trials["attack"])
    analysis, outcome, long_rows = [], [], []
    for row in summary.to_dict("records"):
        deficiency = "n/a" if pd.isna(row["deficiency"]) else str(row["deficiency"])
        if not pd.isna(row["deficiency"]) and row["deficiency_missing"]:
            deficiency += f" ({row['deficiency_missing']} layer(s) n/a)"
        if not pd.isna(row["deficiency_per_layer"]) and not pd.isna(row["deficiency"]) and row["deficiency"]:
            deficiency += f" ({row['deficiency_per_layer']})"
        analysis.append({
            "network": row["model"], "figure |W|": _int_or_blank(row["figure_params"]),
            "our |W|": _int_or_blank(row["total_params"]),
            "|x|-|W|-|z| per layer": _blank(row["index_per_layer"]),
            "|x|-|W|-|z|-|V| per layer": _blank(row["index_v_per_layer"]),
            "numerical deficiency": deficiency, "predicted (count)": _blank(row["predicted_count"]),
            "predicted (numerical rank)": _blank(row["predicted_rank"])})
        for attack in attacks:
            median, n = row[f"{attack}_psnr_median"], row[f"{attack}_n"]
            outcome.append({
                "network": row["model"], "attack": display(attack),
                "PSNR median (dB)": EMPTY if not n else f"{median:.1f} (n={n})",
                f"observed (>= {threshold:g} dB)": row[f"{attack}_observed"],
                "count right?": _blank(row[f"{attack}_agrees_count"]),
                "numerical rank right?": _blank(row[f"{attack}_agrees_rank"])})
            long_rows.append({
                "model": row["model"], "figure_|W|": row["figure_params"], "our_|W|": row["total_params"],
                "index_per_layer": row["index_per_layer"], "index_v_per_layer": row["index_v_per_layer"],
                "deficiency_per_layer": row["deficiency_per_layer"], "deficiency": row["deficiency"],
                "deficiency_missing": row["deficiency_missing"], "predicted_count": row["predicted_count"],
                "predicted_rank": row["predicted_rank"], "attack": attack, "psnr_median": median, "n": n,
                "observed": row[f"{attack}_observed"], "agrees_count": row[f"{attack}_agrees_count"],
                "agrees_rank": row[f"{attack}_agrees_rank"]})
    scores = []
    for attack in attacks:
        for kind, title in (("count", "the count"), ("rank", "the numerical rank")):
            verdicts = [v for v in summary[f"{attack}_agrees_{kind}"] if not pd.isna(v)]
            if verdicts:
                scores.append(f"{title} predicted {display(attack)} on {verdicts.count('yes')} of "
                              f"{len(verdicts)} networks")
    caption = ("\"figure |W|\" is the total parameter count printed in the R-GAP paper's rank-analysis figure "
               "(its networks A-E are rankfig_a..rankfig_e); \"our |W|\" is our model's. Per layer, input layer "
               "first: the paper's count |x|-|W|-|z| (unknowns minus gradient and weight constraints) and the "
               "same minus the virtual constraints |V| carried up from the layer below (our reading of the "
               "figure, rgap/rank.py); > 0 means fewer constraints than unknowns. \"numerical deficiency\": "
               "unknowns minus the numerical rank of each layer's stacked system [K; A] at a seeded random input "
               "(sum over layers, the deficient layers in brackets). \"predicted (count)\": deficient when a "
               "layer's count with |V| is > 0; \"predicted (numerical rank)\": deficient when a layer's system is "
               f"rank-deficient. An attack is \"ok\" on a network when its median PSNR over the ok trials is >= "
               f"{threshold:g} dB; a prediction is right when \"determined\"/\"full rank\" goes with \"ok\".")
    parts = ["# Rank analysis vs reconstruction", "", caption, "", "## Rank analysis per network", "",
             markdown_table(pd.DataFrame(analysis)), "", "## Reconstruction per network and attack", "",
             markdown_table(pd.DataFrame(outcome)), ""]
    if scores:
        parts += ["Summary: " + "; ".join(scores) + ".", ""]
    return Rendered("\n".join(parts), pd.DataFrame(long_rows))


# ---------------------------------------------------------------------------------------------------- noise


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


def noise_summary(trials: pd.DataFrame, param: str = "scale") -> pd.DataFrame:
    """Median and quartiles of PSNR per (model, defense, level, attack) over ok trials, plus trial counts.

    Levels as in ``with_levels``. Columns: model, defense, level, attack, n (ok with a PSNR), count (all),
    median, q25, q75, n_unsupported, n_failed.
    """
    trials = with_levels(trials, param)
    rows = []
    for (model, defense, level, attack), group in trials.groupby(["model", "defense", "level", "attack"], sort=True):
        values = pd.to_numeric(group.loc[group["status"] == "ok", "psnr"], errors="coerce").dropna()
        rows.append({"model": model, "defense": defense, "level": float(level), "attack": attack,
                     "n": len(values), "count": len(group),
                     "median": float(values.median()) if len(values) else math.nan,
                     "q25": float(values.quantile(0.25)) if len(values) else math.nan,
                     "q75": float(values.quantile(0.75)) if len(values) else math.nan,
                     "n_unsupported": int((group["status"] == "unsupported").sum()),
                     "n_failed": int((group["status"] == "failed").sum())})
    return pd.DataFrame(rows)


def render_noise(trials: pd.DataFrame, param: str) -> Rendered:
    """Median PSNR per defense level (rows) and attack (columns; per model when there are several)."""
    relative = trials["defense_params"].str.contains('"relative": true', regex=False).any()
    trials = with_levels(trials, param)
    defenses = sorted(set(trials["defense"]) - {"none"})
    if len(defenses) == 1:  # undefended trials are level 0 of the one defense
        trials = trials.assign(defense=defenses[0])
    models = sorted(set(trials["model"]))
    notes = Footnotes()
    columns = [(m, a) for m in models for a in attack_order(trials.loc[trials["model"] == m, "attack"])]
    rows = []
    pairs = set(zip(trials["defense"], trials["level"], strict=True))
    for defense, level in sorted(pairs, key=lambda pair: (pair[0] != "none", pair)):
        row = {param: f"{level:g}" if len(defenses) <= 1 else f"{defense} {level:g}"}
        at = trials[(trials["level"] == level) & (trials["defense"] == defense)]
        for model, attack in columns:
            label = display(attack) if len(models) == 1 else f"{display(attack)} [{model}]"
            hit = at[(at["model"] == model) & (at["attack"] == attack)]
            row[label] = stat_cell(hit, "psnr", fixed(".1f"), notes, stat="median")
        rows.append(row)
    frame = pd.DataFrame(rows)
    caption = (f"Median PSNR (dB) over the ok trials per {param} of the {', '.join(defenses)} defense"
               + (" (relative: times each parameter tensor's RMS gradient entry)" if relative else "")
               + "; n = ok trials with a PSNR; unsupported and failed trials are counted, never included.")
    parts = [f"# PSNR against the defense parameter `{param}`", "", caption, "", markdown_table(frame), ""]
    if notes.texts:
        parts += [notes.render(), ""]
    return Rendered("\n".join(parts), frame)


# ---------------------------------------------------------------------------------------------------- main


def render(trials: pd.DataFrame, experiment: str, rank_csv: str | Path | None = None, param: str = "scale",
           psnr_threshold: float = 30.0) -> Rendered:
    """The Markdown and CSV of ``experiment`` for ``trials``."""
    if experiment == "table1":
        return render_table1(trials)
    if experiment == "labels":
        return render_labels(trials)
    if experiment == "rank":
        return render_rank(trials, load_rank_csv(rank_csv), psnr_threshold)
    if experiment == "noise":
        return render_noise(trials, param)
    raise UserInputError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}.")


def with_note(markdown: str, note: str | None) -> str:
    """``markdown`` with ``Setting: note`` as a paragraph after its title and caption (unchanged without one)."""
    if not note:
        return markdown
    title, caption, rest = (markdown.split("\n\n", 2) + ["", ""])[:3]
    return "\n\n".join([title, caption, f"Setting: {' '.join(note.split())}", rest])


def write_tables(sweep_dir: str | Path, experiment: str, out: str | Path | None = None,
                 rank_csv: str | Path | None = None, param: str = "scale", psnr_threshold: float = 30.0,
                 note: str | None = None) -> list[Path]:
    """Write ``<out>/<experiment>.md`` and ``.csv`` (atomically) for the sweep; return their paths. ``note``
    (e.g. how the sweep was reduced) is printed under the caption."""
    if experiment not in EXPERIMENTS:
        raise UserInputError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}.")
    trials = load_trials(sweep_dir)
    rendered = render(trials, experiment, rank_csv, param, psnr_threshold)
    out = Path(out) if out is not None else Path(sweep_dir)
    header = f"<!-- Written by `python -m scripts.paper_tables {Path(sweep_dir).name} --experiment {experiment}` -->\n"
    return [atomic_write(header + with_note(rendered.markdown, note), out / f"{experiment}.md"),
            atomic_write(rendered.csv.to_csv(index=False), out / f"{experiment}.csv")]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the tables; 2 (and one paragraph on stderr) on a ``UserInputError``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--experiment", required=True, help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    parser.add_argument("--rank-csv", default=None, help="rank analysis per layer with a model column (rank)")
    parser.add_argument("--param", default="scale", help="defense_params key of the noise level (noise)")
    parser.add_argument("--psnr-threshold", type=float, default=30.0, help="R-GAP 'ok' threshold in dB (rank)")
    parser.add_argument("--note", default=None, help="a 'Setting:' paragraph under the caption (Markdown)")
    args = parser.parse_args(argv)
    try:
        paths = write_tables(args.sweep_dir, args.experiment, args.out, args.rank_csv, args.param,
                             args.psnr_threshold, args.note)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
