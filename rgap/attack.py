"""The attack interface every attack (R-GAP here, the optimization baselines in ``baselines/``) implements.

An attack sees what an honest-but-curious server sees: the model and its weights, the shared gradient,
the loss, the input shape and (when given) the labels. It never sees the images.
"""

from __future__ import annotations

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
    labels: torch.Tensor | None = None
    combined: bool = False  # one image that stands for the whole batch (R-GAP on FC nets, batch > 1)
    info: dict[str, Any] = field(default_factory=dict)


class Attack(ABC):
    """A gradient inversion attack, built from ``conf/attack/*.yaml`` with Hydra's ``_target_``."""

    name: str = "attack"

    @abstractmethod
    def reconstruct(self, shared: SharedGradient) -> AttackResult:
        """Recover the client's input from ``shared``; raise ``UnsupportedError`` for what it cannot do."""
