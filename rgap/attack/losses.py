"""Training losses of the attacked client, registered by name."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rgap.core.errors import UserInputError


def signed_labels(labels: torch.Tensor) -> torch.Tensor:
    """Map labels {0, 1} to {-1, +1}."""
    return 2.0 * labels.to(torch.float64) - 1.0


def reversed_labels(logits: torch.Tensor) -> torch.Tensor:
    """The reference code's label flip, per sample: one logit -> the class it does not predict (1 if the logit
    is <= 0, else 0); several logits -> the least likely class. Makes R-GAP's last-layer root unique."""
    flat = logits.detach().reshape(logits.shape[0], -1)
    return (flat[:, 0] <= 0).long() if flat.shape[1] == 1 else flat.argmin(dim=1)


def head_loss(logits: torch.Tensor) -> str:
    """The loss that goes with a head: ``logistic`` for one logit, ``cross_entropy`` for several."""
    return "logistic" if logits.reshape(logits.shape[0], -1).shape[1] == 1 else "cross_entropy"


def logistic_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss of one logit per sample, ``mean log(1 + exp(-y f))`` with y = 2 label - 1.

    Equals ``binary_cross_entropy_with_logits`` for labels in {0, 1}; also accepts soft labels in [0, 1].
    """
    y = signed_labels(labels).to(device=logits.device, dtype=logits.dtype).reshape(-1)
    return F.softplus(-y * logits.reshape(-1)).mean()


def logistic_dloss(f: torch.Tensor | float, y: torch.Tensor | float) -> torch.Tensor:
    """d/df log(1 + exp(-y f)) = -y / (1 + exp(y f)) for a signed label ``y``."""
    f = torch.as_tensor(f, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    return -y * torch.sigmoid(-y * f)


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of ``logits`` [B, C] with integer ``labels`` [B]."""
    return F.cross_entropy(logits, labels.to(device=logits.device, dtype=torch.long))


def soft_logistic_loss(logits: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """Logistic loss against the soft label ``sigmoid(label_logits)`` (DLG's optimisable label, one logit)."""
    target = torch.sigmoid(label_logits).reshape(-1)
    return F.binary_cross_entropy_with_logits(logits.reshape(-1), target)


def soft_cross_entropy_loss(logits: torch.Tensor, label_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the soft label ``softmax(label_logits)`` [B, C] (DLG's optimisable label)."""
    return -(torch.softmax(label_logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def hard_labels(loss: str, label_logits: torch.Tensor) -> torch.Tensor:
    """The integer labels a soft-label parameter stands for (argmax, or sigmoid > 0.5 for one logit)."""
    if loss == "logistic":
        return (label_logits.reshape(-1) > 0).long()
    return label_logits.argmax(dim=-1)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logistic": logistic_loss,
    "cross_entropy": cross_entropy_loss,
}
SOFT_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "logistic": soft_logistic_loss,
    "cross_entropy": soft_cross_entropy_loss,
}


def get_soft_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The soft-label version of the loss registered as ``name`` (labels given as logits)."""
    if name not in SOFT_LOSSES:
        raise UserInputError(f"Unknown loss {name!r}; valid choices: {', '.join(sorted(SOFT_LOSSES))}.")
    return SOFT_LOSSES[name]


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function registered as ``name``."""
    if name not in LOSSES:
        raise UserInputError(f"Unknown loss {name!r}; valid choices: {', '.join(sorted(LOSSES))}.")
    return LOSSES[name]
