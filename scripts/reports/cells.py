"""Table cells, footnotes and Markdown for every experiment's tables, and how a rendered table is written.

Cells are ``mean ± std (n=K)`` with the *sample* standard deviation (ddof=1) over the ok trials; a cell also counts
its unsupported and failed trials (they are never averaged in), and an empty metric shows ``n/a`` with a footnote
quoting the trials' ``metric_notes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rgap.core.atomic import atomic_write_text
from scripts.reports.trials import display

EMPTY = "–"
STD_CAPTION = ("Cells: mean ± sample standard deviation (ddof=1) over the ok trials, n = ok trials with a value "
               "(one trial: its value alone); unsupported and failed trials are counted in the cell, never "
               "averaged.")


@dataclass
class Rendered:
    """An experiment's Markdown text and its CSV table."""

    markdown: str
    csv: pd.DataFrame


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


def section(title: str, caption: str, frame: pd.DataFrame, notes: Footnotes | None = None) -> str:
    """``# title``, the caption, the table and its footnotes (if any), each paragraph ending in a blank line."""
    parts = [f"# {title}", "", caption, "", markdown_table(frame), ""]
    if notes is not None and notes.texts:
        parts += [notes.render(), ""]
    return "\n".join(parts)


def with_note(markdown: str, note: str | None) -> str:
    """``markdown`` with ``Setting: note`` as a paragraph after its title and caption (unchanged without one)."""
    if not note:
        return markdown
    title, caption, rest = (markdown.split("\n\n", 2) + ["", ""])[:3]
    return "\n\n".join([title, caption, f"Setting: {' '.join(note.split())}", rest])


def write_rendered(rendered: Rendered, out: Path, stem: str, command: str, note: str | None = None) -> list[Path]:
    """Write ``<out>/<stem>.md`` (headed by the ``command`` that wrote it, ``note`` under the caption) and
    ``<out>/<stem>.csv``, atomically; return their paths."""
    header = f"<!-- Written by `{command}` -->\n"
    return [atomic_write_text(out / f"{stem}.md", header + with_note(rendered.markdown, note)),
            atomic_write_text(out / f"{stem}.csv", rendered.csv.to_csv(index=False))]
