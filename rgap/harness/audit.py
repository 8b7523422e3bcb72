"""Audit a network: its rank analysis, then R-GAP and the optimisation attacks on a few images, in one report.

``run_audit(cfg, out_dir)`` (``python -m runners.audit``) builds the model exactly as a trial does, runs the rank
analysis on it, then runs every attack of ``cfg.attacks`` on images ``0..images-1`` through
:func:`rgap.harness.trial.run_trial` (each trial's row and PNGs under ``<out_dir>/trials/``), and writes
``audit.md`` (per-layer counts, ranks and verdicts; per-attack medians; the verdict paragraph) and ``audit.png``
(a gallery). Every sentence of the verdict is derived from the numbers (``rgap.algorithm.verdict``), never written
per model.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import open_dict
from torch import nn

from rgap.algorithm.network import parse_stages
from rgap.algorithm.rank import LayerRank, rank_analysis
from rgap.algorithm.verdict import LayerVerdict, layer_verdicts
from rgap.core.errors import UnsupportedLayerError, UserInputError
from rgap.core.validation import as_choice, as_int, as_optional_int
from rgap.harness.compose import attack_facts, attack_names, compose_config
from rgap.harness.options import TrialOptions
from rgap.harness.trial import cached_dataset, format_summary, run_trial
from rgap.zoo.checkpoints import build_model
from rgap.zoo.models import task_head

#: Trial options an audit passes on to every trial it runs.
SHARED_KEYS = ("model", "dataset", "weights", "paths", "seed", "label", "precision", "loss", "device", "threads",
               "client_mode", "metrics")


@dataclass
class AttackSummary:
    """One attack's trials: how many ran, and medians over the ok ones."""

    attack: str
    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def _median(self, key: str) -> float | None:
        values = [float(r[key]) for r in self.rows if r["status"] == "ok" and r.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def psnr(self) -> float | None:
        return self._median("psnr")

    @property
    def ssim(self) -> float | None:
        return self._median("ssim")

    @property
    def seconds(self) -> float | None:
        return self._median("time_s")

    @property
    def reasons(self) -> list[str]:
        return sorted({r["reason"] for r in self.rows if r["status"] != "ok"})


@dataclass
class Audit:
    """Everything ``audit.md`` and ``audit.png`` show."""

    model: str
    input_shape: tuple[int, ...]
    parameters: int
    layers: list[LayerRank]
    verdicts: list[LayerVerdict]
    attacks: list[AttackSummary]
    trials_dir: Path
    images: int
    units: dict[str, int]  # output channels / units of each stage, for the verdict's suggested change


def run_audit(cfg: Mapping[str, Any], out_dir: str | Path, progress: Callable[[str], None] = print) -> Audit:
    """Rank analysis, then every attack of ``cfg.attacks`` on ``cfg.images`` images; returns the :class:`Audit`."""
    out_dir = Path(out_dir)
    images = as_int(cfg["images"], "images", minimum=1)
    iterations = as_optional_int(cfg.get("iterations"), "iterations", minimum=1)
    attacks = [as_choice(a, "attacks", attack_names()) for a in _attack_list(cfg["attacks"])]
    trial_base = compose_config("trial", [])
    with open_dict(trial_base):
        for key in SHARED_KEYS:
            if key in cfg:
                trial_base[key] = cfg[key]
    options = TrialOptions.from_config(trial_base)
    dataset = cached_dataset(cfg["dataset"])
    if images > len(dataset):
        raise UserInputError(f"images={images} is more than dataset {options.dataset} has ({len(dataset)}); "
                             f"use images in 1..{len(dataset)}.")
    _, outputs = task_head(options.loss, options.num_classes, dataset.num_classes)
    model, _ = build_model(cfg["model"], dataset.shape, options.seed, num_outputs=outputs, weights=options.weights,
                           results_dir=options.results_dir, dataset_name=options.dataset)
    progress(f"[audit] rank analysis of {options.model} on {'x'.join(map(str, dataset.shape))} inputs")
    layers = rank_analysis(model, dataset.shape, seed=options.seed,
                           progress=lambda line: progress(f"[audit] {line}"))
    summaries = []
    for attack in attacks:
        summary = AttackSummary(attack, attack_facts(attack).label)
        for index in range(images):
            trial_cfg = _trial_config(trial_base, attack, index, iterations)
            row = run_trial(trial_cfg, out_dir / "trials" / f"{attack}_{index}")
            summary.rows.append(row)
            progress(f"[audit] {format_summary(row)}")
        summaries.append(summary)
    return Audit(options.model, tuple(dataset.shape), _parameters(model), layers, layer_verdicts(layers), summaries,
                 out_dir / "trials", images, output_units(model, dataset.shape))


def _attack_list(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise UserInputError(f"attacks={value!r} is not a list of attacks; e.g. attacks=[rgap,dlg,ig] or "
                             f"attacks=[rgap] (valid: {', '.join(attack_names())}).")
    return [str(v) for v in value]


def _trial_config(base: Any, attack: str, index: int, iterations: int | None) -> Any:
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        cfg.attack = compose_config("trial", [f"attack={attack}"]).attack
        cfg.index, cfg.batch_size, cfg.save_images = index, 1, True
        if iterations is not None and not attack_facts(attack).closed_form and "iterations" in cfg.attack:
            cfg.attack.iterations = iterations
    return cfg


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- verdict
def verdict_paragraph(audit: Audit) -> str:
    """The audit's conclusion in plain words, derived from the rank table and the measured attacks."""
    rgap = next((s for s in audit.attacks if s.attack == "rgap"), None)
    measured = ""
    if rgap is not None and rgap.psnr is not None:
        measured = f" Measured: R-GAP reached a median PSNR of {_db(rgap.psnr)} on {rgap.ok} image(s)."
    elif rgap is not None and rgap.reasons:
        measured = f" Measured: R-GAP ran on none of the images ({rgap.reasons[0]})."
    unsupported = [v for v in audit.verdicts if v.status == "unsupported"]
    if unsupported:
        return (f"R-GAP cannot run on {audit.model}: {unsupported[0].text.split('; ', 1)[1]} Only the optimisation "
                f"attacks say how much it leaks.{measured}")
    deficient = [v for v in audit.verdicts if v.status == "deficient"]
    if deficient:
        lost = ", ".join(f"{v.layer} ({v.deficiency:,} directions)" for v in deficient)
        return (f"{audit.model} does not leak its input exactly: {lost} cannot be recovered from the gradient, so "
                f"R-GAP returns the minimum-norm solution there. " + " ".join(v.text for v in deficient)
                + f"{measured} The layers above leak their inputs exactly.")
    unknown = [v for v in audit.verdicts if v.status == "not computed"]
    if unknown:
        return (f"The counts of {audit.model} predict " + " ".join(v.text for v in unknown)
                + f" Numerical ranks of {', '.join(v.layer for v in unknown)} were not computed.{measured}")
    return (f"Every layer of {audit.model} has full column rank, so its gradient leaks the input exactly: R-GAP "
            f"recovers it up to round-off from a noise-free gradient.{measured} {_closest_margin(audit)}")


def _closest_margin(audit: Audit) -> str:
    """Which change of the architecture would remove the exact leak, from the layer with the smallest margin."""
    narrowest = min(audit.verdicts, key=lambda v: v.constraints - v.unknowns)
    layer = next(r for r in audit.layers if r.layer == narrowest.layer)
    margin = narrowest.constraints - narrowest.unknowns
    outputs = audit.units.get(layer.layer, 0)
    if not outputs:
        return f"Its smallest margin is {layer.layer}'s ({margin:,} more constraints than unknowns)."
    per_unit = (layer.w + layer.z) / outputs  # constraints one output channel (or unit) brings
    fewer = math.floor(margin / per_unit) + 1
    what = "output channels" if layer.kind == "conv" else "outputs"
    if fewer >= outputs:
        return f"Its smallest margin is {layer.layer}'s: {margin:,} more constraints than unknowns."
    return (f"The exact leak is closest to breaking at {layer.layer}: {narrowest.text.split(';')[0]}, a margin of "
            f"{margin:,}. Each of its {outputs} {what} brings {per_unit:,.0f} constraints, so with {outputs - fewer} "
            f"{what} or fewer instead of {outputs} its constraints would fall short of its unknowns and the layer "
            "would be rank-deficient (counts only: linearly dependent constraints can make it deficient sooner; "
            "check a changed architecture with python -m runners.rank).")


def output_units(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Output channels (convolutions) or units (fully connected layers) of every stage R-GAP reads, by name."""
    try:
        stages = parse_stages(model, input_shape)
    except UnsupportedLayerError:
        return {}
    return {s.name: int(getattr(s.layer, "out_channels", getattr(s.layer, "out_features", 0))) for s in stages}


def _db(value: float) -> str:
    return "inf dB" if math.isinf(value) else f"{value:.1f} dB"
