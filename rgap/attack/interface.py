"""The attack interface every attack (R-GAP here, the optimization baselines in ``baselines/``) implements.

An attack sees what an honest-but-curious server sees: the model and its weights, the shared gradient,
the loss, the input shape and (when given) the labels. It never sees the images.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class SharedGradient:
    """Everything the attacker receives from one client update."""

    model: nn.Module
    gradients: list[torch.Tensor]  # one per parameter, in ``model.parameters()`` order
    labels: torch.Tensor | None  # the labels the gradient was computed with, when given to the attacker
    loss: str
    input_shape: tuple[int, int, int]
    batch_size: int


@dataclass
class AttackResult:
    """A reconstruction and what the attack wants recorded about it."""

    reconstruction: torch.Tensor  # [B, C, H, W], or [1, C, H, W] when ``combined``
    labels: torch.Tensor | None = None  # labels the attack reports (int64 [B]); None if it recovers none
    labels_given: bool = False  # True when ``labels`` are the ones the attacker was given, not recovered
    combined: bool = False  # one image that stands for the whole batch (R-GAP on FC nets, batch > 1)
    iterations: int | None = None  # optimisation iterations run (None for closed-form attacks)
    final_loss: float | None = None  # final gradient-matching loss (None for closed-form attacks)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TracePoint:
    """One point of an accuracy-vs-time trace."""

    iteration: int
    time_s: float  # attack seconds so far, excluding the time spent measuring the trace itself
    grad_loss: float | None
    mse: float | None
    psnr: float | None


class TraceRecorder:
    """Records iteration, elapsed attack time, gradient loss and MSE/PSNR against the ground truth.

    Attacks call ``start()`` when their timed work begins and ``record(...)`` every iteration; a point is
    kept every ``every`` iterations (and whenever ``force=True``). Scoring happens with the clock paused,
    so ``elapsed()`` and every point's ``time_s`` count attack work only. ``score`` maps a reconstruction
    to ``(mse, psnr)``; the trial passes one that matches reconstructions to images like the final row.
    """

    def __init__(self, every: int = 10, score: Any = None) -> None:
        self.every = max(1, int(every))
        self.score = score
        self.points: list[TracePoint] = []
        self._start: float | None = None
        self._paused = 0.0

    def start(self) -> None:
        """Start (or restart) the attack clock."""
        self._start = time.perf_counter()
        self._paused = 0.0

    @property
    def paused_s(self) -> float:
        """Seconds spent scoring trace points (to subtract from an outer wall clock)."""
        return self._paused

    def elapsed(self) -> float:
        """Attack seconds since ``start()``, without the time spent in ``record``."""
        if self._start is None:
            return 0.0
        return time.perf_counter() - self._start - self._paused

    def record(self, iteration: int, grad_loss: float | None, reconstruction: torch.Tensor,
               force: bool = False) -> None:
        """Keep a point at ``iteration`` if it is due (``iteration % every == 0``) or ``force``."""
        if not force and iteration % self.every != 0:
            return
        elapsed = self.elapsed()
        paused_at = time.perf_counter()
        mse, psnr = self.score(reconstruction.detach()) if self.score is not None else (None, None)
        loss = None if grad_loss is None or not math.isfinite(float(grad_loss)) else float(grad_loss)
        point = TracePoint(iteration, elapsed, loss, mse, psnr)
        if self.points and self.points[-1].iteration == iteration:
            self.points[-1] = point
        else:
            self.points.append(point)
        self._paused += time.perf_counter() - paused_at


@dataclass(frozen=True)
class AttackFacts:
    """What tables and figures need to know about an attack, kept with the attack class itself.

    ``label`` is its display name, ``order`` its position in tables and legends, ``color`` and ``marker`` its
    style in every figure (Okabe-Ito palette), and ``closed_form`` says whether it is a closed-form attack
    (one result, no iterations; its exactness is decided by the layer ranks, so trials on checkpoints may carry
    a ``rank_note``).
    """

    label: str
    order: int = 100
    color: str = "#000000"
    marker: str = "x"
    closed_form: bool = False


class Attack(ABC):
    """A gradient inversion attack, built from ``conf/attack/*.yaml`` with Hydra's ``_target_``."""

    name: str = "attack"
    facts: AttackFacts = AttackFacts(label="attack")

    @abstractmethod
    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        """Recover the client's input from ``shared``; raise ``UnsupportedError`` for what it cannot do.

        Optimisation attacks call ``trace.start()`` before their first iteration and ``trace.record(...)``
        after each one; closed-form attacks may ignore ``trace`` (the trial adds the final point).
        """
