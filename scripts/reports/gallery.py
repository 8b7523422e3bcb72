"""The reconstruction gallery (Table 1's ``gallery*.png``, the rank experiment's one row per network): the original
and each attack's reconstruction (``origin.png`` / ``reconstructed.png`` of the trials), PSNR under each."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rgap.core.errors import UserInputError
from scripts.reports.spec import Options
from scripts.reports.style import panels
from scripts.reports.trials import attack_order, display


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


def _grid(trials: pd.DataFrame, model: str | None, indices: Sequence[int] | None,
          by: str) -> tuple[pd.DataFrame, list[tuple[str, int, str]], str]:
    """The trials to draw from (``by="model"`` with a ``model``: those on its datasets), the gallery's rows
    ``(model, index, row label)`` and its title."""
    models = sorted(set(trials["model"]))
    if by == "index":
        model = model or models[0]
        mine = trials[trials["model"] == model]
        available = sorted(int(i) for i in mine["index"].dropna().unique())
        chosen = list(indices) if indices else available[:4]
        unknown = [i for i in chosen if i not in available]
        if unknown:
            raise UserInputError(f"--indices {unknown} not in the sweep for {model}; it has {available}.")
        title = f"{model} (B={int(mine['batch_size'].min())}); PSNR under each reconstruction"
        return trials, [(model, index, f"index {index}") for index in chosen], title
    if model is not None:
        trials = trials[trials["dataset"].isin(set(trials.loc[trials["model"] == model, "dataset"]))]
        models = sorted(set(trials["model"]))
    shared = set.intersection(*(set(trials.loc[trials["model"] == m, "index"].dropna().astype(int)) for m in models))
    index = int(indices[0]) if indices else (min(shared) if shared else None)
    if index is None or index not in shared:
        raise UserInputError(f"--indices: no image index common to every model ({sorted(shared)}).")
    return trials, [(m, index, m) for m in models], f"image index {index}; PSNR under each reconstruction"


def _check_images(shown: pd.DataFrame, sweep_dir: Path) -> None:
    """Refuse a gallery without any saved image; warn when some are missing."""
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
    trials, grid, title = _grid(trials, model, indices, by)
    attacks = attack_order(trials.loc[trials["model"].isin({g[0] for g in grid}), "attack"])
    shown = trials[trials["model"].isin({g[0] for g in grid}) & trials["index"].isin({g[1] for g in grid})]
    _check_images(shown, sweep_dir)
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


def draw(trials: pd.DataFrame, sweep_dir: Path, options: Options) -> Figure:
    """The ``gallery`` figure kind."""
    model = options.model or (options.models[0] if options.models else None)
    return plot_gallery(trials, sweep_dir, model, options.indices, options.by)
