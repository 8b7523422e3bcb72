"""Pair reconstructions with ground-truth images before scoring, and compare label multisets."""

from __future__ import annotations

from collections import Counter

import torch
from scipy.optimize import linear_sum_assignment


def match_to_originals(recon: torch.Tensor, original: torch.Tensor) -> list[int]:
    """Hungarian assignment on per-pair MSE (reconstructions clamped to [0, 1]).

    Returns ``order`` with ``recon[i]`` matched to ``original[order[i]]``; the identity for one image.
    """
    if recon.shape[0] == 1:
        return [0]
    rec = torch.nan_to_num(recon.detach().cpu().double(), nan=0.0).clamp(0, 1).flatten(1)
    orig = original.detach().cpu().double().flatten(1)
    cost = torch.cdist(rec, orig) ** 2 / rec.shape[1]
    rows, cols = linear_sum_assignment(cost.numpy())
    order = [0] * len(rows)
    for r, c in zip(rows, cols, strict=True):
        order[int(r)] = int(c)
    return order


def label_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> float:
    """Fraction of the true labels recovered, compared as multisets (order-free, as for a batch)."""
    pred_counts = Counter(int(v) for v in predicted.reshape(-1))
    true_counts = Counter(int(v) for v in true.reshape(-1))
    overlap = sum(min(n, pred_counts[label]) for label, n in true_counts.items())
    return overlap / max(1, sum(true_counts.values()))
