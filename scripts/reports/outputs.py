"""The experiments' tables and figures by name, and how one of them is written for a sweep.

``TABLES`` maps ``--experiment`` of ``scripts.paper_tables`` to the experiment module that renders it, ``FIGURES``
maps the kind of ``scripts.plot`` to the module that draws it; ``scripts.paper_offline`` writes the same through
:func:`write_tables` and :func:`make_plot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from rgap.core.errors import UserInputError
from scripts.reports import gallery, labels, noise, rank, table1, time_curves
from scripts.reports.cells import Rendered, write_rendered
from scripts.reports.spec import Options
from scripts.reports.style import STYLE, save_figure
from scripts.reports.trials import load_trials

TABLES: dict[str, Callable[[pd.DataFrame, Options], Rendered]] = {
    "table1": table1.render, "rank": rank.render, "noise": noise.render, "labels": labels.render,
}
FIGURES: dict[str, Callable[[pd.DataFrame, Path, Options], Figure]] = {
    "time": time_curves.draw, "gallery": gallery.draw, "rank": rank.draw, "noise": noise.draw,
}


def write_tables(sweep_dir: str | Path, experiment: str, out: str | Path | None = None,
                 rank_csv: str | Path | None = None, param: str = "scale", psnr_threshold: float = 30.0,
                 note: str | None = None) -> list[Path]:
    """Write ``<out>/<experiment>.md`` and ``.csv`` (atomically) for the sweep; return their paths.

    ``out`` defaults to the sweep directory; ``note`` (e.g. how the sweep was reduced) is printed under the caption.
    """
    if experiment not in TABLES:
        raise UserInputError(f"unknown experiment {experiment!r}; choose one of {', '.join(TABLES)}.")
    trials = load_trials(sweep_dir)
    rendered = TABLES[experiment](trials, Options(rank_csv=rank_csv, param=param, psnr_threshold=psnr_threshold))
    out = Path(out) if out is not None else Path(sweep_dir)
    command = f"python -m scripts.paper_tables {Path(sweep_dir).name} --experiment {experiment}"
    return write_rendered(rendered, out, experiment, command, note)


def make_plot(kind: str, sweep_dir: str | Path, out: str | Path | None = None, models: Sequence[str] | None = None,
              model: str | None = None, indices: Sequence[int] | None = None, param: str = "scale",
              rank_csv: str | Path | None = None, psnr_threshold: float = 30.0, by: str = "index",
              name: str | None = None) -> list[Path]:
    """Draw ``kind`` for the sweep and write ``<out>/<name or kind>.png`` and ``.pdf``; return their paths.

    ``out`` defaults to ``<sweep dir>/figures``.
    """
    if kind not in FIGURES:
        raise UserInputError(f"unknown plot kind {kind!r}; choose one of {', '.join(FIGURES)}.")
    sweep_dir = Path(sweep_dir)
    trials = load_trials(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "figures"
    options = Options(rank_csv=rank_csv, param=param, psnr_threshold=psnr_threshold,
                      models=tuple(models) if models else None, model=model,
                      indices=tuple(indices) if indices else None, by=by)
    with plt.rc_context(STYLE):
        return save_figure(FIGURES[kind](trials, sweep_dir, options), out, name or kind)
