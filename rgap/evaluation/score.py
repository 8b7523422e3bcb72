"""Score one attack result against the private images: matching, metrics, labels and the trace's end point.

``evaluate`` is the evaluation step of a trial; ``trace_scorer`` scores intermediate reconstructions the same
way (matched to the images as the final result is), for the accuracy-vs-time traces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rgap.attack import AttackResult, TracePoint
from rgap.evaluation.matching import label_accuracy, match_to_originals
from rgap.evaluation.metrics import LpipsScorer, MetricResult, image_metrics


@dataclass
class Evaluation:
    """How good one reconstruction is."""

    reconstruction: torch.Tensor  # on the CPU, reordered so that image i pairs with the i-th original
    matching: list[int] | None  # reconstruction i -> original matching[i] (None: one image or combined)
    scored_against: str  # "images", or "batch_mean" for one combined image
    metrics: MetricResult
    attack_labels: list[int] | None  # labels the attack reports (None: it recovers none)
    labels_given: bool
    label_acc: float | None
    trace_end: TracePoint  # the row's own point: last iteration, attack time, loss, MSE, PSNR

    def columns(self) -> dict[str, Any]:
        """The row columns this evaluation fills."""
        notes = "; ".join(f"{name}: {reason}" for name, reason in sorted(self.metrics.reasons.items()))
        columns: dict[str, Any] = {
            **self.metrics.values, "metric_notes": notes, "scored_against": self.scored_against,
            "matching": " ".join(map(str, self.matching)) if self.matching else "",
            "labels_given": self.labels_given, "label_acc": self.label_acc,
        }
        if self.attack_labels is not None:
            columns["attack_labels"] = " ".join(map(str, self.attack_labels))
        return columns


def evaluate(result: AttackResult, seconds: float, images: torch.Tensor, true_labels: torch.Tensor,
             lpips: LpipsScorer | None = None) -> Evaluation:
    """Match the reconstruction to ``images`` (Hungarian on MSE), score it, compare labels, and build the trace
    point that ends the attack's trace (iteration count, ``seconds``, final loss, MSE, PSNR)."""
    reconstruction = result.reconstruction.detach().cpu()
    matching = None
    if not result.combined and reconstruction.shape[0] > 1:
        matching = match_to_originals(reconstruction, images)
        reconstruction = reconstruction[torch.argsort(torch.tensor(matching))]  # position j: match of images[j]
    target = images.mean(0, keepdim=True) if result.combined else images
    metrics = image_metrics(reconstruction, target, lpips)
    attack_labels = label_acc = None
    if result.labels is not None:
        recovered = result.labels.detach().cpu().reshape(-1)
        attack_labels = [int(v) for v in recovered]
        label_acc = label_accuracy(recovered, true_labels.detach().cpu())
    end = TracePoint(result.iterations or 0, seconds, result.final_loss, metrics.values["mse"],
                     metrics.values["psnr"])
    return Evaluation(reconstruction, matching, "batch_mean" if result.combined else "images", metrics,
                      attack_labels, result.labels is not None and result.labels_given, label_acc, end)


def trace_scorer(images: torch.Tensor) -> Callable[[torch.Tensor], tuple[float | None, float | None]]:
    """(mse, psnr) of an intermediate reconstruction, matched to ``images`` as the final result is."""

    def score(reconstruction: torch.Tensor) -> tuple[float | None, float | None]:
        if reconstruction.shape != images.shape:
            return None, None
        order = match_to_originals(reconstruction, images)
        values = image_metrics(reconstruction.cpu(), images[order]).values
        return values["mse"], values["psnr"]

    return score


def finish_trace(points: list[TracePoint], end: TracePoint) -> list[TracePoint]:
    """The trace with ``end`` as its last point (replacing a point at the same iteration)."""
    if points and points[-1].iteration == end.iteration:
        return [*points[:-1], end]
    return [*points, end]
