"""Figures of a sweep, sized for a paper column (PNG at 200 dpi and PDF).

    python -m scripts.plot <kind> <sweep dir> [--out DIR] [--models M ...] [--model M] [--indices I ...]
        [--param scale] [--rank-csv PATH] [--psnr-threshold 30] [--by index|model] [--name NAME]

Kinds (each writes ``<out>/<kind>.png`` and ``<out>/<kind>.pdf``, or ``<NAME>.*``; default ``--out``:
``<sweep dir>/figures``):

* ``time``: PSNR (top) and MSE (bottom) against attack wall time, one column per architecture. Optimisation
  attacks: median and inter-quartile band of the ok trials' traces (``trials/<hash>/trace.csv``) on a common
  log-spaced time grid; closed-form attacks (one trace point): one marker per trial.
* ``gallery``: original and each attack's reconstruction (``origin.png`` / ``reconstructed.png``) for a few
  images (``--indices``, default the first 4) of one model (``--model``, default the first), PSNR under each;
  ``--by model``: one row per model for one image (the rank figure's layout).
* ``rank``: PSNR per attack (trials and median) on each network, the networks ordered by their numerical rank
  deficiency from ``--rank-csv`` (or worst-layer index_v when the deficiency was not computed).
* ``noise``: median PSNR (inter-quartile band) against the defense parameter ``--param`` (``scale``: log axis,
  ``prune_ratio``: linear), one panel per model, with a dashed line at 20 dB.

PSNR values above 100 dB (exact recoveries reach hundreds of dB, or infinity) are drawn at 100 dB.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
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
from scripts.paper_tables import (  # noqa: E402
    attack_order,
    column_keys,
    defense_level,
    display,
    load_rank_csv,
    load_trials,
    rank_summary,
    select,
    with_levels,
)

KINDS = ("time", "gallery", "rank", "noise")
CLOSED_FORM = ("rgap",)
#: Okabe-Ito colour-blind-safe palette.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
COLORS = {"rgap": OKABE_ITO["blue"], "dlg": OKABE_ITO["vermillion"], "idlg": OKABE_ITO["orange"],
          "ig": OKABE_ITO["green"], "hgap": OKABE_ITO["purple"]}
EXTRA_COLORS = (OKABE_ITO["sky"], OKABE_ITO["black"], OKABE_ITO["yellow"])
MARKERS = {"rgap": "o", "dlg": "s", "idlg": "^", "ig": "D", "hgap": "v"}
PANEL = (3.3, 2.4)  # inches per panel: one paper column
PSNR_CAP = 100.0
NOISE_LINE = 20.0
RANK_PREFIX = "rankfig_"  # the rank figure's networks: labelled A-E in the rank plot
LINEAR_PARAMS = ("prune_ratio",)
#: Axis labels of defense parameters ({defense} is the defense's name).
PARAM_LABELS = {"prune_ratio": "pruning ratio (fraction of entries zeroed)", "scale": "{defense} noise scale",
                "noise_multiplier": "DP-SGD noise multiplier", "clip_norm": "DP-SGD clip norm"}
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "lines.linewidth": 1.2, "axes.spines.top": False, "axes.spines.right": False,
         "pdf.fonttype": 42, "savefig.dpi": 200}


def color(attack: str, attacks: Sequence[str]) -> str:
    """The attack's Okabe-Ito colour (unknown attacks take the remaining ones in turn)."""
    if attack in COLORS:
        return COLORS[attack]
    unknown = [a for a in attacks if a not in COLORS]
    return EXTRA_COLORS[unknown.index(attack) % len(EXTRA_COLORS)] if attack in unknown else OKABE_ITO["black"]


def marker(attack: str) -> str:
    """The attack's marker (``x`` when unknown)."""
    return MARKERS.get(attack, "x")


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


def save_figure(fig: Figure, out: Path, kind: str) -> list[Path]:
    """``<out>/<kind>.png`` (200 dpi) and ``.pdf``, each written to a temporary file and renamed."""
    paths = []
    for ext in ("png", "pdf"):
        path = atomic_save(out / f"{kind}.{ext}",
                           lambda tmp, ext=ext: fig.savefig(tmp, format=ext, dpi=200, bbox_inches="tight"))
        paths.append(path)
    plt.close(fig)
    return paths


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


# ---------------------------------------------------------------------------------------------------- time


def read_trace(sweep_dir: Path, config_hash: str) -> pd.DataFrame | None:
    """A trial's ``trace.csv`` (time_s > 0, sorted by time), or None when absent, unreadable or empty."""
    path = sweep_dir / "trials" / config_hash / "trace.csv"
    if not path.is_file():
        return None
    try:
        trace = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    if "time_s" not in trace:
        return None
    for column in ("time_s", "mse", "psnr"):
        trace[column] = pd.to_numeric(trace.get(column), errors="coerce")
    trace = trace[trace["time_s"] > 0].sort_values("time_s", kind="stable")
    return trace if len(trace) else None


def on_grid(grid: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` interpolated at ``grid``: NaN before the first time, the last value held after the last."""
    keep = np.isfinite(values)
    times, values = times[keep], values[keep]
    out = np.full(grid.shape, np.nan)
    if not len(times):
        return out
    inside = grid >= times[0]
    out[inside] = np.interp(grid[inside], times, values)  # np.interp holds the end values outside the range
    return out


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, 25th and 75th percentile over the rows of ``curves`` (NaN ignored; all-NaN columns stay NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        q25, median, q75 = np.nanpercentile(curves, [25, 50, 75], axis=0)
    return median, q25, q75


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


def plot_time(trials: pd.DataFrame, sweep_dir: Path, models: Sequence[str] | None = None,
              param: str = "scale") -> Figure:
    """PSNR and MSE against attack wall time, one column per architecture (undefended trials of a sweep that
    varies the defense)."""
    trials, note = undefended(trials, param)
    columns = chosen_columns(trials, models)
    attacks = attack_order(trials["attack"])
    fig, axes = panels(2, len(columns))
    drawn: dict[str, object] = {}
    for col, (key, label) in enumerate(columns.items()):
        top, bottom = axes[0, col], axes[1, col]
        ok = select(trials, key)
        ok = ok[ok["status"] == "ok"]
        for attack in attack_order(ok["attack"]):
            rows = ok[ok["attack"] == attack]
            traces = {h: read_trace(sweep_dir, h) for h in rows["config_hash"]}
            curves = [t for t in traces.values() if t is not None and len(t) > 1]
            style = {"color": color(attack, attacks), "label": display(attack)}
            if attack not in CLOSED_FORM and curves:
                start = min(float(t["time_s"].iloc[0]) for t in curves)
                end = max(float(t["time_s"].iloc[-1]) for t in curves)
                grid = np.geomspace(start, max(end, start * 1.0001), 200)
                for ax, column, transform in ((top, "psnr", capped), (bottom, "mse", np.log10)):
                    with np.errstate(divide="ignore", invalid="ignore"):
                        stack = np.array([on_grid(grid, t["time_s"].to_numpy(float),
                                                  transform(t[column].to_numpy(float))) for t in curves])
                    stack[~np.isfinite(stack)] = np.nan
                    median, q25, q75 = band(stack)
                    if column == "mse":
                        median, q25, q75 = 10.0**median, 10.0**q25, 10.0**q75
                    (line,) = ax.plot(grid, median, **style)
                    ax.fill_between(grid, q25, q75, color=style["color"], alpha=0.2, linewidth=0)
                    drawn.setdefault(attack, line)
            else:  # closed form, or no usable trace: one marker per trial at its final time and metrics
                times = rows["time_s"].to_numpy(float)
                top.scatter(times, capped(rows["psnr"]), marker=marker(attack), s=14, **style)
                mse = rows["mse"].to_numpy(float)
                keep = mse > 0
                handle = bottom.scatter(times[keep], mse[keep], marker=marker(attack), s=14, **style)
                drawn.setdefault(attack, handle)
        if ok.empty:
            top.text(0.5, 0.5, "no ok trials", transform=top.transAxes, ha="center", va="center")
        top.set_title(label)
        note_cap(top, ok["psnr"])
        for ax in (top, bottom):
            log_x(ax)
            ax.set_xlabel("attack wall time (s)")
            ax.grid(True, which="major", alpha=0.3, linewidth=0.5)
        bottom.set_yscale("log")
        top.set_ylabel("PSNR (dB)")
        bottom.set_ylabel("MSE")
    if note:
        fig.suptitle(note, fontsize=8)
    if drawn:
        axes[0, 0].legend([drawn[a] for a in attacks if a in drawn], [display(a) for a in attacks if a in drawn],
                          loc="best", frameon=False)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- gallery


def _image(path: Path) -> np.ndarray | None:
    """The PNG at ``path`` as an array, or None when there is none."""
    return plt.imread(path) if path.is_file() else None


def _blank(ax: Axes, title: str) -> None:
    """A light empty frame with ``title`` in its middle."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color("0.8")
    ax.text(0.5, 0.5, title, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4")


def _show(ax: Axes, image: np.ndarray) -> None:
    """``image`` without ticks (grey colour map for one channel)."""
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def psnr_label(status: str, psnr: float) -> str:
    """``23.4 dB`` under an ok panel (``inf dB`` for an exact one, ``PSNR n/a``), else the status."""
    if status != "ok":
        return status or "no status"
    return "PSNR n/a" if math.isnan(psnr) else f"{psnr:.1f} dB"


def plot_gallery(trials: pd.DataFrame, sweep_dir: Path, model: str | None = None,
                 indices: Sequence[int] | None = None, by: str = "index") -> Figure:
    """Columns = original | each attack's reconstruction, PSNR under each, at each model's smallest batch size.

    ``by="index"``: rows = images (``indices``, default the first 4) of one model (default the first);
    ``by="model"``: rows = every model (or those sharing the dataset of ``model``), one image (the first of
    ``indices``, default the smallest index they all have), like the paper's rank figure.
    """
    if by not in ("index", "model"):
        raise UserInputError(f"--by {by}: use index (rows = images of one model) or model (rows = models).")
    models = sorted(set(trials["model"]))
    if model is not None and model not in models:
        raise UserInputError(f"--model {model} is not in this sweep; it has {', '.join(models)}.")
    smallest = trials.groupby("model")["batch_size"].transform("min")
    trials = trials[trials["batch_size"] == smallest]
    if by == "index":
        model = model or models[0]
        mine = trials[trials["model"] == model]
        available = sorted(int(i) for i in mine["index"].dropna().unique())
        chosen = list(indices) if indices else available[:4]
        unknown = [i for i in chosen if i not in available]
        if unknown:
            raise UserInputError(f"--indices {unknown} not in the sweep for {model}; it has {available}.")
        grid = [(model, index, f"index {index}") for index in chosen]
        title = f"{model} (B={int(mine['batch_size'].min())}); PSNR under each reconstruction"
    else:
        if model is not None:
            trials = trials[trials["dataset"].isin(set(trials.loc[trials["model"] == model, "dataset"]))]
            models = sorted(set(trials["model"]))
        shared = set.intersection(*(set(trials.loc[trials["model"] == m, "index"].dropna().astype(int))
                                    for m in models))
        index = int(indices[0]) if indices else (min(shared) if shared else None)
        if index is None or index not in shared:
            raise UserInputError(f"--indices: no image index common to every model ({sorted(shared)}).")
        grid = [(m, index, m) for m in models]
        title = f"image index {index}; PSNR under each reconstruction"
    attacks = attack_order(trials.loc[trials["model"].isin({g[0] for g in grid}), "attack"])
    shown = trials[trials["model"].isin({g[0] for g in grid}) & trials["index"].isin({g[1] for g in grid})]
    saved = sum((sweep_dir / "trials" / h / "reconstructed.png").is_file() for h in shown["config_hash"])
    if saved == 0:
        raise UserInputError(
            f"None of the {len(shown)} trials this gallery shows has saved images (sweeps run with save_images=false "
            "by default), so every frame would be empty. Re-run those trials with images, e.g. the same sweep command "
            "plus `save_images=true overwrite=true` (add `index=...` to limit it to the images you want), then draw "
            "the gallery again."
        )
    if saved < len(shown):
        print(f"warning: {len(shown) - saved} of {len(shown)} trials in this gallery have no saved images; their "
              "frames say 'no image saved' (re-run them with save_images=true overwrite=true).", file=sys.stderr)
    fig, axes = panels(len(grid), 1 + len(attacks), size=(1.4, 1.55))
    for r, (name, index, label) in enumerate(grid):
        rows = trials[(trials["model"] == name) & (trials["index"] == index)]
        rows = rows.assign(_ok=rows["status"] != "ok").sort_values(["_ok", "seed", "config_hash"], kind="stable")
        origin = next((img for h in rows["config_hash"] if (img := _image(sweep_dir / "trials" / h / "origin.png"))
                       is not None), None)
        ax = axes[r, 0]
        if origin is None:
            _blank(ax, "no image saved")
        else:
            _show(ax, origin)
        ax.set_ylabel(label)
        for c, attack in enumerate(attacks, start=1):
            ax = axes[r, c]
            hit = rows[rows["attack"] == attack]
            if hit.empty:
                _blank(ax, "no trial")
                continue
            row = hit.iloc[0]
            image = _image(sweep_dir / "trials" / row["config_hash"] / "reconstructed.png")
            if image is None:
                _blank(ax, "no image saved")
            else:
                _show(ax, image)
            ax.set_xlabel(psnr_label(row["status"], float(row["psnr"])))
        for c, heading in enumerate(["original", *(display(a) for a in attacks)]):
            if r == 0:
                axes[0, c].set_title(heading)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- rank


def plot_rank(trials: pd.DataFrame, rank: pd.DataFrame, psnr_threshold: float = 30.0) -> Figure:
    """PSNR per attack on each network, networks ordered along x by their rank deficiency.

    One column per network, sorted by its numerical rank deficiency (summed over layers; the worst-layer count
    index_v when a deficiency is missing), which the tick label gives under the network's name; per attack the
    trials as small faint markers and their median as a large one, side by side.
    """
    summary = rank_summary(trials, rank, psnr_threshold)
    summary = summary[summary["predicted"].notna()]
    if summary.empty:
        raise UserInputError("no model of the sweep is in --rank-csv; nothing to plot.")
    use_deficiency = summary["deficiency"].notna().all()
    x_column = "deficiency" if use_deficiency else "worst_index_v"
    x_label = ("network (numerical rank deficiency, summed over layers)" if use_deficiency
               else "network (worst-layer count |x|-|W|-|z|-|V|; deficiency n/a)")
    summary = summary.assign(_x=pd.to_numeric(summary[x_column])).sort_values(["_x", "model"], kind="stable")
    attacks = attack_order(trials.loc[trials["model"].isin(summary["model"]), "attack"])
    short = all(m.startswith(RANK_PREFIX) for m in summary["model"])
    fig, axes = panels(1, 1)
    ax = axes[0, 0]
    width = 0.6 / max(1, len(attacks))
    for position, row in enumerate(summary.to_dict("records")):
        for a, attack in enumerate(attacks):
            x = position + (a - (len(attacks) - 1) / 2) * width
            mine = trials[(trials["model"] == row["model"]) & (trials["attack"] == attack) & (trials["status"] == "ok")]
            values = capped(pd.to_numeric(mine["psnr"], errors="coerce").dropna())
            style = {"marker": marker(attack), "color": color(attack, attacks)}
            ax.scatter(np.full(len(values), x), values, s=8, alpha=0.35, linewidths=0, zorder=2, **style)
            median = capped(np.array([row[f"{attack}_psnr_median"]]))[0]
            if np.isfinite(median):
                ax.scatter([x], [median], s=28, zorder=3, label=display(attack) if position == 0 else None, **style)
    names = [m[len(RANK_PREFIX):].upper() if short else m for m in summary["model"]]
    ax.set_xticks(range(len(summary)), [f"{n}\n{int(x)}" for n, x in zip(names, summary["_x"], strict=True)])
    ax.set_xlim(-0.6, len(summary) - 0.4)
    if short:
        ax.set_title(f"networks A-E = {RANK_PREFIX}a..e (the paper's rank figure)")
    note_cap(ax, pd.to_numeric(trials.loc[trials["model"].isin(summary["model"]), "psnr"], errors="coerce"))
    ax.axhline(psnr_threshold, linestyle=":", color="0.4", linewidth=0.8, label=f"{psnr_threshold:g} dB")
    ax.set_xlabel(x_label)
    ax.set_ylabel("PSNR (dB): trials, median")
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.5)
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- noise


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


# ---------------------------------------------------------------------------------------------------- main


def make_plot(kind: str, sweep_dir: str | Path, out: str | Path | None = None, models: Sequence[str] | None = None,
              model: str | None = None, indices: Sequence[int] | None = None, param: str = "scale",
              rank_csv: str | Path | None = None, psnr_threshold: float = 30.0, by: str = "index",
              name: str | None = None) -> list[Path]:
    """Draw ``kind`` for the sweep and write ``<out>/<name or kind>.png`` and ``.pdf``; return their paths."""
    if kind not in KINDS:
        raise UserInputError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}.")
    sweep_dir = Path(sweep_dir)
    trials = load_trials(sweep_dir)
    out = Path(out) if out is not None else sweep_dir / "figures"
    with plt.rc_context(STYLE):
        if kind == "time":
            fig = plot_time(trials, sweep_dir, models, param)
        elif kind == "gallery":
            fig = plot_gallery(trials, sweep_dir, model or (models[0] if models else None), indices, by)
        elif kind == "rank":
            fig = plot_rank(trials, load_rank_csv(rank_csv), psnr_threshold)
        else:
            fig = plot_noise(trials, param, models)
        return save_figure(fig, out, name or kind)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: draw one figure; 2 (and one paragraph on stderr) on a ``UserInputError``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", help=f"one of {', '.join(KINDS)}")
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", default=None, help="output directory (default: <sweep dir>/figures)")
    parser.add_argument("--models", nargs="+", default=None, help="models to show (time, noise; default all)")
    parser.add_argument("--model", default=None, help="the gallery's model (default: the first)")
    parser.add_argument("--indices", nargs="+", type=int, default=None, help="gallery images (default first 4)")
    parser.add_argument("--by", default="index", help="gallery rows: index (images of one model) or model")
    parser.add_argument("--name", default=None, help="file name without extension (default: the kind)")
    parser.add_argument("--param", default="scale", help="defense_params key on the x axis (noise)")
    parser.add_argument("--rank-csv", default=None, help="rank analysis per layer with a model column (rank)")
    parser.add_argument("--psnr-threshold", type=float, default=30.0, help="R-GAP 'ok' threshold in dB (rank)")
    args = parser.parse_args(argv)
    try:
        paths = make_plot(args.kind, args.sweep_dir, args.out, args.models, args.model, args.indices, args.param,
                          args.rank_csv, args.psnr_threshold, args.by, args.name)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
