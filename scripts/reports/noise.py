"""The noise study: PSNR against the level of a defense applied to the shared gradient (Gaussian noise of relative
scale in the paper's setting; any ``defense_params`` key, e.g. ``prune_ratio``, in general).

Table: median PSNR per level (rows) and attack (columns; per model when there are several). Figures: median PSNR
with its inter-quartile band against the level, one panel per model (and defense), and accuracy against time
(``time_curves``, undefended trials). Sweeps: ``conf/experiment/paper_noise.yaml`` (CIFAR-10) and
``paper_noise_offline.yaml``; the defense sweeps reuse the table and figure (``defenses``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rgap.core.errors import UserInputError
from scripts.reports.cells import Footnotes, Rendered, fixed, section, stat_cell
from scripts.reports.spec import OFFLINE_NOTE, Experiment, FigureSpec, Options, TableSpec
from scripts.reports.style import capped, color, marker, note_cap, panels
from scripts.reports.trials import attack_order, display, with_levels

NOISE_LINE = 20.0  # dB: the dashed line of the figure
LINEAR_PARAMS = ("prune_ratio",)  # parameters drawn on a linear axis (the others: log, 0 at the left edge)
#: Axis labels of defense parameters ({defense} is the defense's name).
PARAM_LABELS = {"prune_ratio": "pruning ratio (fraction of entries zeroed)", "scale": "{defense} noise scale",
                "noise_multiplier": "DP-SGD noise multiplier", "clip_norm": "DP-SGD clip norm"}

EXPERIMENT = Experiment(
    key="noise", folder="noise", configs=("paper_noise_offline",), sweep_name="paper_noise_offline",
    note="offline variant (`paper_noise_offline`): CNN6 with N(0, 0.01^2) weights (the reference code's noise-study "
         "initialisation) on `sample` images 0 and 10 instead of CIFAR-10; Gaussian noise of standard deviation "
         "scale x (each parameter tensor's RMS gradient entry) added to the shared gradient, seeded with the trial "
         "seed; " + OFFLINE_NOTE,
    tables=(TableSpec("noise"),),
    figures=(FigureSpec("noise"), FigureSpec("time")),
)


# ---------------------------------------------------------------------------------------------------- table


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
    return Rendered(section(f"PSNR against the defense parameter `{param}`", caption, frame, notes), frame)


def render(trials: pd.DataFrame, options: Options) -> Rendered:
    """The ``noise`` table kind."""
    return render_noise(trials, options.param)


# ---------------------------------------------------------------------------------------------------- figure


def _break_marks(ax: Axes, x: float) -> None:
    """Two short slashes on the x axis at data position ``x``: the log axis is broken there."""
    kwargs = {"transform": ax.get_xaxis_transform(), "color": "k", "clip_on": False, "linewidth": 0.8}
    for dx in (-0.12, 0.12):
        ax.plot([x * 10 ** (dx - 0.06), x * 10 ** (dx + 0.06)], [-0.03, 0.03], **kwargs)


def level_label(value: float) -> str:
    """``0``, ``$10^{-3}$`` for powers of ten, else ``:g``."""
    if value > 0 and math.isclose(math.log10(value), round(math.log10(value)), abs_tol=1e-9):
        return f"$10^{{{round(math.log10(value))}}}$"
    return f"{value:g}"


def plot_noise(trials: pd.DataFrame, param: str = "scale", models: Sequence[str] | None = None) -> Figure:
    """Median PSNR and IQR band against the defense parameter, one line per attack, one panel per model.

    With several defenses sharing ``param`` (e.g. gaussian and laplace ``scale``) there is one panel per model
    and defense; undefended trials (``defense=none``) are level 0 of every panel.
    """
    levels = with_levels(trials, param)
    names = sorted(set(levels["model"]))
    if models:
        names = [m for m in names if m in models]
        if not names:
            raise UserInputError(f"--models {' '.join(models)} matches none of {sorted(set(levels['model']))}.")
    defenses = sorted(set(levels["defense"]) - {"none"})
    attacks = attack_order(levels["attack"])
    log = param not in LINEAR_PARAMS
    positive = sorted(set(levels.loc[levels["level"] > 0, "level"]))
    zero_at = positive[0] / 10.0 if log and positive else 0.0
    chosen = [(m, d) for m in names for d in defenses]
    fig, axes = panels(1, len(chosen))
    for ax, (model, defense) in zip(axes[0], chosen, strict=True):
        mine = levels[(levels["model"] == model) & (levels["status"] == "ok")
                      & levels["defense"].isin([defense, "none"])]
        for attack in attack_order(mine["attack"]):
            rows = mine[mine["attack"] == attack]
            stats = []
            for level, group in rows.groupby("level", sort=True):
                values = capped(pd.to_numeric(group["psnr"], errors="coerce").dropna())
                if len(values):
                    stats.append((level, *np.percentile(values, [50, 25, 75])))
            if not stats:
                continue
            x, median, q25, q75 = (np.array(v, dtype=float) for v in zip(*stats, strict=True))
            if log:
                x = np.where(x > 0, x, zero_at)
            style = {"color": color(attack, attacks)}
            ax.plot(x, median, marker=marker(attack), markersize=4, label=display(attack), **style)
            ax.fill_between(x, q25, q75, alpha=0.2, linewidth=0, **style)
        ax.axhline(NOISE_LINE, linestyle="--", color="0.4", linewidth=0.8, label=f"{NOISE_LINE:g} dB")
        if log:
            ax.set_xscale("log")
            has_zero = bool((mine["level"] == 0).any())
            ticks = ([zero_at] if has_zero else []) + positive
            ax.set_xticks(ticks, (["0"] if has_zero else []) + [level_label(t) for t in positive])
            ax.minorticks_off()
            if has_zero and positive:
                _break_marks(ax, zero_at * math.sqrt(10.0))
        what = PARAM_LABELS.get(param, f"{defense} {param}").format(defense=defense)
        ax.set_xlabel(what + (" (log; 0 at the left edge)" if log else ""))
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(model)
        note_cap(ax, mine.groupby(["attack", "level"])["psnr"].median())
        ax.grid(True, alpha=0.3, linewidth=0.5)
    axes[0, 0].legend(loc="best", frameon=False)
    fig.tight_layout()
    return fig


def draw(trials: pd.DataFrame, sweep_dir: Path, options: Options) -> Figure:
    """The ``noise`` figure kind."""
    return plot_noise(trials, options.param, options.models)
