"""The rank analysis from a config (``python -m runners.rank``) and the ``rank_note`` of trials on checkpoints.

The analysis itself (``rgap.algorithm.rank.rank_analysis``) sees a model and an input shape; this module builds
the model from ``conf/rank.yaml`` (or a trial's config) and its weights, and writes the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from rgap.algorithm.rank import rank_analysis, rank_table
from rgap.core.atomic import atomic_write_text
from rgap.core.validation import as_bool, as_int, as_path, as_shape
from rgap.zoo.checkpoints import WeightsChoice, WeightsInfo, build_model, builder_config, instantiate_model
from rgap.zoo.data import build_dataset

#: Layers with more unknowns than this get no numerical rank in ``rank_note`` (as ``conf/rank.yaml``'s default).
RANK_NOTE_MAX_UNKNOWNS = 6000


def run_rank_analysis(cfg: Mapping[str, Any], out_path: str | Path | None = None,
                      progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The rank table for ``cfg`` (``conf/rank.yaml``): model built for the dataset's input shape, or for
    ``cfg.input_shape`` when set (no dataset files needed); written as CSV to ``out_path`` when given."""
    seed = as_int(cfg["seed"], "seed", minimum=0)
    numerical = as_bool(cfg["numerical"], "numerical")
    max_unknowns = as_int(cfg["max_unknowns"], "max_unknowns", minimum=1)
    results_dir = as_path((cfg.get("paths") or {}).get("results", "results"), "paths.results")
    weights = WeightsChoice.from_config(cfg.get("weights"))
    if cfg.get("input_shape") is not None:
        input_shape = as_shape(cfg["input_shape"], "input_shape")
    else:
        input_shape = build_dataset(cfg["dataset"]).shape
    model, _ = build_model(cfg["model"], input_shape, seed, weights=weights, results_dir=results_dir,
                           dataset_name=str(cfg["dataset"]["name"]) if cfg.get("dataset") else None)
    rows = rank_analysis(model, input_shape, seed=seed, numerical=numerical, max_unknowns=max_unknowns,
                         progress=progress)
    table = rank_table(rows)
    if out_path is not None:
        atomic_write_text(out_path, table.to_csv(index=False))
    return table


def rank_note(model_cfg: Mapping[str, Any], trained: nn.Module, input_shape: Sequence[int], seed: int,
              num_outputs: int | None = None, max_unknowns: int = RANK_NOTE_MAX_UNKNOWNS) -> str:
    """Per-layer numerical ranks of ``trained`` vs the same architecture with its untrained (seeded) weights.

    ``conv2: 3100 trained vs 3188 untrained (of 3468 unknowns)`` per differing layer joined by ``; ``, or
    ``ranks equal``; layers with more than ``max_unknowns`` unknowns are named as not computed.
    """
    untrained = instantiate_model(model_cfg, input_shape, seed, num_outputs)
    after = rank_analysis(trained, input_shape, seed=seed, max_unknowns=max_unknowns)
    before = rank_analysis(untrained, input_shape, seed=seed, max_unknowns=max_unknowns)
    if all(row.rank is None for row in after):
        note = next((row.note for row in after if row.note), "")
        return f"ranks not computed{': ' + note if note else ''}"
    differing = [f"{a.layer}: {a.rank} trained vs {b.rank} untrained (of {a.unknowns} unknowns)"
                 for a, b in zip(after, before, strict=True) if a.rank is not None and a.rank != b.rank]
    note = "; ".join(differing) or "ranks equal"
    skipped = [a.layer for a in after if a.rank is None]
    if skipped:
        note += f"; not computed (> {max_unknowns} unknowns): {', '.join(skipped)}"
    return note


def with_rank_note(weights: WeightsInfo, model_cfg: Mapping[str, Any], model: nn.Module,
                   input_shape: Sequence[int], seed: int, num_outputs: int | None) -> WeightsInfo:
    """``weights`` with its ``rank_note`` filled (checkpoint weights only), once per process and weights."""
    if weights.checkpoint is None:
        return weights
    key = json.dumps([weights.weights_hash, builder_config(model_cfg), [int(v) for v in input_shape], int(seed),
                      num_outputs], sort_keys=True, default=str)
    if key not in _RANK_NOTES:  # a sweep attacks many images with the same weights: analyse them once
        _RANK_NOTES[key] = rank_note(model_cfg, model, input_shape, seed, num_outputs)
    return replace(weights, rank_note=_RANK_NOTES[key])


#: rank notes already computed in this process, keyed by weights hash, model config, input shape, seed, outputs.
_RANK_NOTES: dict[str, str] = {}
