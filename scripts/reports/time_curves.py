"""The accuracy-against-time figure (Table 1's and the noise study's ``time.png``): PSNR (top) and MSE (bottom)
against attack wall time, one column per architecture.

Optimisation attacks: median and inter-quartile band of the ok trials' traces (``trials/<hash>/trace.csv``) on a
common log-spaced time grid, each trace holding its last value after it ends; closed-form attacks (one trace point,
``AttackFacts.closed_form``), and attacks without usable traces: one marker per trial.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rgap.harness.compose import attack_facts
from scripts.reports.spec import Options
from scripts.reports.style import capped, chosen_columns, color, log_x, marker, note_cap, panels
from scripts.reports.trials import attack_order, display, select, undefended


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
            if not attack_facts(attack).closed_form and curves:
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


def draw(trials: pd.DataFrame, sweep_dir: Path, options: Options) -> Figure:
    """The ``time`` figure kind."""
    return plot_time(trials, sweep_dir, options.models, options.param)
