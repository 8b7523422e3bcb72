"""What every figure shares: paper-column panels, 8 pt text, each attack's colour and marker (its ``AttackFacts``),
PSNR drawn at most at 100 dB, and saving as PNG (200 dpi) and PDF without a half-written file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rgap.core.atomic import atomic_save  # noqa: E402
from rgap.core.errors import UserInputError  # noqa: E402
from rgap.harness.compose import attack_facts  # noqa: E402
from scripts.reports.trials import column_keys, is_known  # noqa: E402

#: Colours for attacks without display facts, in turn (the Okabe-Ito colours no known attack uses).
EXTRA_COLORS = ("#56B4E9", "#000000", "#F0E442")
PANEL = (3.3, 2.4)  # inches per panel: one paper column
PSNR_CAP = 100.0
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "lines.linewidth": 1.2, "axes.spines.top": False, "axes.spines.right": False,
         "pdf.fonttype": 42, "savefig.dpi": 200}


def color(attack: str, attacks: Sequence[str]) -> str:
    """The attack's colour (``AttackFacts.color``; attacks without facts take ``EXTRA_COLORS`` in turn)."""
    if is_known(attack):
        return attack_facts(attack).color
    unknown = [a for a in attacks if not is_known(a)]
    return EXTRA_COLORS[unknown.index(attack) % len(EXTRA_COLORS)] if attack in unknown else "#000000"


def marker(attack: str) -> str:
    """The attack's marker (``AttackFacts.marker``; ``x`` when unknown)."""
    return attack_facts(attack).marker


def capped(values: np.ndarray | pd.Series) -> np.ndarray:
    """PSNR values with those above ``PSNR_CAP`` (including inf) drawn at the cap."""
    return np.minimum(np.asarray(values, dtype=float), PSNR_CAP)


def note_cap(ax: Axes, psnr: pd.Series | np.ndarray) -> None:
    """Add a second title line when some PSNR values were drawn at ``PSNR_CAP`` (call after ``set_title``)."""
    values = pd.to_numeric(pd.Series(np.asarray(psnr, dtype=float)), errors="coerce")
    if (values > PSNR_CAP).any():
        prefix = f"{ax.get_title()}\n" if ax.get_title() else ""
        ax.set_title(f"{prefix}(PSNR > {PSNR_CAP:g} dB drawn at {PSNR_CAP:g})")


def log_x(ax: Axes) -> None:
    """Log x axis with plain labels at 1, 2 and 5 times each decade (no minor labels)."""
    ax.set_xscale("log")
    axis = ax.xaxis
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def panels(n_rows: int, n_cols: int, size: tuple[float, float] = PANEL, **kwargs) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_rows x n_cols`` panels of ``size`` inches each; axes as a 2-D array."""
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size[0] * n_cols, size[1] * n_rows), squeeze=False, **kwargs)
    return fig, axes


def chosen_columns(trials: pd.DataFrame, models: Sequence[str] | None) -> dict[tuple[str, str, int], str]:
    """Architecture columns (as in the tables), restricted to ``models`` (model names or column labels)."""
    columns = column_keys(trials, "model")
    if not models:
        return columns
    kept = {key: label for key, label in columns.items() if key[0] in models or label in models}
    if not kept:
        raise UserInputError(f"--models {' '.join(models)} matches none of {sorted(set(columns.values()))}.")
    return kept


def save_figure(fig: Figure, out: Path, name: str) -> list[Path]:
    """``<out>/<name>.png`` (200 dpi) and ``.pdf``, each written to a temporary file and renamed."""
    paths = []
    for ext in ("png", "pdf"):
        path = atomic_save(out / f"{name}.{ext}",
                           lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=200, bbox_inches="tight"))
        paths.append(path)
    plt.close(fig)
    return paths
