"""Building blocks shared by the optimization attacks: the attacker's model copy, dummy inputs,
gradient-matching distances and image priors."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rgap.attack import SharedGradient
from rgap.core.errors import UserInputError

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


def init_dummy(shape: Sequence[int], kind: str, generator: torch.Generator, dtype: torch.dtype,
               device: torch.device | str) -> torch.Tensor:
    """A seeded dummy tensor: ``randn`` (DLG, iDLG, IG), ``rand`` (uniform [0, 1]) or ``half`` (all 0.5)."""
    inits: dict[str, Callable[[], torch.Tensor]] = {
        "randn": lambda: torch.randn(*shape, generator=generator, dtype=torch.float64),
        "rand": lambda: torch.rand(*shape, generator=generator, dtype=torch.float64),
        "half": lambda: torch.full(tuple(shape), 0.5, dtype=torch.float64),
    }
    if kind not in inits:
        raise UserInputError(f"attack.init={kind!r} is not valid; valid choices: {', '.join(inits)}.")
    return inits[kind]().to(device=device, dtype=dtype)


def model_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Parameter gradients of ``loss_fn(model(x), labels)``, differentiable w.r.t. ``x`` (and soft labels)."""
    value = loss_fn(model(x), labels)
    return list(torch.autograd.grad(value, list(model.parameters()), create_graph=True))


def euclidean_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """DLG's objective: sum over layers of the squared Euclidean distance (not halved)."""
    return sum(((d - t) ** 2).sum() for d, t in zip(dummy, target, strict=True))


def cosine_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverting Gradients' objective: 1 - cosine similarity of all layers' gradients taken jointly."""
    dot = sum((d * t).sum() for d, t in zip(dummy, target, strict=True))
    dummy_norm = sum((d * d).sum() for d in dummy).sqrt()
    target_norm = sum((t * t).sum() for t in target).sqrt()
    return 1 - dot / (dummy_norm * target_norm).clamp_min(torch.finfo(dot.dtype).tiny)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean |dx| + mean |dy| over a [B, C, H, W] batch."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
