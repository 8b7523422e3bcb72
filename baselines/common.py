"""Building blocks shared by the optimization attacks: the attacker's model copy, dummy inputs,
gradient-matching distances and image priors."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rgap.attack import SharedGradient
from rgap.core.errors import UserInputError
from rgap.core.validation import as_choice

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def attack_dtype(name: str) -> torch.dtype:
    """``float32`` or ``float64`` (the precision an attack optimises in)."""
    if name not in DTYPES:
        raise UserInputError(f"attack.dtype={name!r} is not valid; valid choices: {', '.join(DTYPES)}.")
    return DTYPES[name]


def prepare(shared: SharedGradient, dtype: torch.dtype) -> tuple[nn.Module, list[torch.Tensor]]:
    """The attacker's model copy and the shared gradient, both in ``dtype`` on the gradient's device."""
    device = shared.gradients[0].device
    model = copy.deepcopy(shared.model).to(device=device, dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(True)
    targets = [g.detach().to(device=device, dtype=dtype) for g in shared.gradients]
    return model, targets


#: Dummy initialisations by name: ``(shape, generator) -> float64 tensor`` (see ``init_dummy``).
INITS: dict[str, Callable[[tuple[int, ...], torch.Generator], torch.Tensor]] = {
    "randn": lambda shape, generator: torch.randn(*shape, generator=generator, dtype=torch.float64),
    "rand": lambda shape, generator: torch.rand(*shape, generator=generator, dtype=torch.float64),
    "half": lambda shape, generator: torch.full(shape, 0.5, dtype=torch.float64),
}


def init_dummy(shape: Sequence[int], kind: str, generator: torch.Generator, dtype: torch.dtype,
               device: torch.device | str) -> torch.Tensor:
    """A seeded dummy tensor: ``randn`` (DLG, iDLG, IG), ``rand`` (uniform [0, 1]) or ``half`` (all 0.5).

    Drawn in float64 on the CPU from ``generator``, then cast to ``dtype`` on ``device``.
    """
    kind = as_choice(kind, "attack.init", list(INITS))
    return INITS[kind](tuple(int(v) for v in shape), generator).to(device=device, dtype=dtype)


def model_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Parameter gradients of ``loss_fn(model(x), labels)``, differentiable w.r.t. ``x`` (and soft labels)."""
    value = loss_fn(model(x), labels)
    return list(torch.autograd.grad(value, list(model.parameters()), create_graph=True))


def euclidean_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """DLG's objective: sum over layers of the squared Euclidean distance (not halved)."""
    return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))


def cosine_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverting Gradients' objective: 1 - cosine similarity of all layers' gradients taken jointly.

    Computed in the reference's order of operations (``inversefed.reconstruction_costs``, ``cost_fn='sim'``):
    the negated dot product and both squared norms are accumulated layer by layer, then
    ``1 + (-dot) / |g'| / |g|``. Algebraically equal orders (e.g. ``1 - dot / (|g'| |g|)``) round
    differently, and IG's signed steps amplify such round-off into different trajectories. A norm below the
    smallest normal float is raised to it, so an all-zero gradient gives a finite value instead of NaN.
    """
    neg_dot: Any = 0
    dummy_sq: Any = 0
    target_sq: Any = 0
    for d, t in zip(dummy, target, strict=True):
        neg_dot = neg_dot - (d * t).sum()
        dummy_sq = dummy_sq + d.pow(2).sum()
        target_sq = target_sq + t.pow(2).sum()
    tiny = torch.finfo(neg_dot.dtype).tiny
    return 1 + neg_dot / dummy_sq.sqrt().clamp_min(tiny) / target_sq.sqrt().clamp_min(tiny)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |dx| + mean |dy| over a [B, C, H, W] batch."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
