"""Table 1: R-GAP against the optimisation attacks per architecture (CNN6, CNN6-d, FCN3 and its batch of five).

Table: rows = attacks, columns = architectures; the MSE (the paper's headline metric), then PSNR, SSIM, LPIPS and
attack wall time, each cell ``mean ± std (n=K)`` over the images. Figures: accuracy against time
(``time_curves``) and a reconstruction gallery per architecture (``gallery``).
Sweeps: ``conf/experiment/paper_table1.yaml`` (CIFAR-10, MNIST) and ``paper_table1_offline.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from scripts.reports.cells import STD_CAPTION, Footnotes, Rendered, fixed, markdown_table, stat_cell
from scripts.reports.spec import OFFLINE_NOTE, Experiment, FigureSpec, Options, TableSpec
from scripts.reports.trials import attack_order, column_keys, display, select

#: (metric, section title, number format, unit) of the tables, the headline first.
METRICS: tuple[tuple[str, str, Callable[[float], str], str], ...] = (
    ("mse", "MSE (headline)", fixed(".1e"), ""),
    ("psnr", "PSNR (dB)", fixed(".1f"), ""),
    ("ssim", "SSIM", fixed(".3f"), ""),
    ("lpips", "LPIPS", fixed(".3f"), ""),
    ("time_s", "Attack wall time", fixed(".2f"), " s"),
)

EXPERIMENT = Experiment(
    key="table1", folder="table1", configs=("paper_table1_offline",), sweep_name="paper_table1_offline",
    note="offline variant (`paper_table1_offline`): CNN6 and CNN6-d on the bundled `sample` photos (3x32x32) instead "
         "of CIFAR-10 and FCN3 on `sample_gray` (1x28x28) instead of MNIST; 3 images per cell (indices 0, 5, 10; "
         "FCN3 B=5: images 0-4, 5-9, 10-14, scored against the batch mean) instead of the paper's test images; "
         + OFFLINE_NOTE,
    tables=(TableSpec("table1"),),
    figures=(FigureSpec("time"), FigureSpec("gallery", model="cnn6"),
             FigureSpec("gallery", name="gallery_cnn6d", model="cnn6d"),
             FigureSpec("gallery", name="gallery_fcn3", model="fcn3")),
)


def attack_by_column(trials: pd.DataFrame, columns: dict[tuple[str, str, int], str], metric: str,
                     fmt: Callable[[float], str], notes: Footnotes, stat: str = "mean_std",
                     unit: str = "") -> pd.DataFrame:
    """Rows = attacks (display order), columns = ``columns``' labels, cells from ``stat_cell``."""
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
    for metric, title, fmt, unit in METRICS:
        notes = Footnotes()
        frame = attack_by_column(trials, columns, metric, fmt, notes, unit=unit)
        parts += [f"## {title}", "", markdown_table(frame), ""]
        if notes.texts:
            parts += [notes.render(), ""]
        frames.append(frame.assign(metric=metric)[["metric", *frame.columns]])
    return Rendered("\n".join(parts), pd.concat(frames, ignore_index=True))


def render(trials: pd.DataFrame, options: Options) -> Rendered:
    """The ``table1`` table kind."""
    return render_table1(trials)
