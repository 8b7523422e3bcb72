"""How an experiment is published: its sweep configs, its tables and its figures, as plain data.

Each experiment module (``table1``, ``rank``, ``noise``, ``labels``, ``defenses``) declares one :class:`Experiment`;
``scripts.paper_offline`` runs its sweeps and writes what it lists; :class:`Options` carries what the command lines
(``scripts.paper_tables``, ``scripts.plot``) may ask of one table or figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SWEEPS = Path("results/sweeps")
#: The setting the offline variants of Table 1, the rank study and the noise study share (their tables' notes).
OFFLINE_NOTE = ("untrained networks (PyTorch default init unless said otherwise, seed 0), float64 gradients, "
                "reversed labels (`label=reversed`), every attack at its config's settings (DLG, iDLG and the "
                "hybrid: 300 L-BFGS steps of 20 evaluations); LPIPS is empty offline (no AlexNet weights).")


@dataclass(frozen=True)
class Options:
    """Choices for one table or figure; each kind reads the ones it needs."""

    rank_csv: str | Path | None = None  # rank: per-layer rank analysis with a ``model`` column
    param: str = "scale"  # noise: the ``defense_params`` key of the defense level (also the time plot's "undefended")
    psnr_threshold: float = 30.0  # rank: an attack is "ok" on a network at a median PSNR at least this
    models: tuple[str, ...] | None = None  # time, noise: the models shown (default all)
    model: str | None = None  # gallery: its model (default the first of ``models``, else the first)
    indices: tuple[int, ...] | None = None  # gallery: its images
    by: str = "index"  # gallery: rows are images of one model (index) or models (model)


@dataclass(frozen=True)
class TableSpec:
    """A table an experiment publishes: ``<target>/[<subdir>/]<kind>.md`` and ``.csv``."""

    kind: str  # a key of ``scripts.reports.outputs.TABLES``
    subdir: str = ""
    param: str = "scale"
    note: str = ""  # the "Setting:" paragraph; empty: the experiment's note

    @property
    def path(self) -> str:
        """The file path without extension, relative to the experiment's folder."""
        return f"{self.subdir}/{self.kind}" if self.subdir else self.kind


@dataclass(frozen=True)
class FigureSpec:
    """A figure an experiment publishes: ``<target>/<name or kind>.png``."""

    kind: str  # a key of ``scripts.reports.outputs.FIGURES``
    name: str = ""
    model: str | None = None  # gallery: skipped (with a message) when the sweep has no trials of it
    by: str = "index"
    param: str = "scale"

    @property
    def file_name(self) -> str:
        """The file name without extension."""
        return self.name or self.kind

    def options(self, rank_csv: str | Path | None = None) -> Options:
        """The figure's options."""
        return Options(rank_csv=rank_csv, param=self.param, model=self.model, by=self.by)


@dataclass(frozen=True)
class Experiment:
    """One experiment: the sweeps that make its rows and what is published from them.

    ``configs`` are run in turn with ``python -m runners.benchmark -m +experiment=<config>``; they all write into
    ``results/sweeps/<sweep_name>``. Published files go to ``<out>/<folder>/``: the ``tables``, the ``figures``,
    the sweep's ``trials.csv`` and, with ``rank_analysis``, the networks' per-layer ``rank_analysis.csv``.
    """

    key: str  # the experiment's name on the command line (``--only``)
    folder: str
    configs: tuple[str, ...]
    sweep_name: str
    note: str  # the setting, printed under each table's caption
    tables: tuple[TableSpec, ...]
    figures: tuple[FigureSpec, ...] = ()
    rank_analysis: bool = False
    paper: bool = True  # one of the papers' experiments (``scripts.paper_offline`` runs these by default)

    @property
    def sweep_dir(self) -> Path:
        """Where its sweeps write (``results/sweeps/<sweep_name>``, the configs' ``sweep_name``)."""
        return SWEEPS / self.sweep_name
