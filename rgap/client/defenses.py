"""Defenses a client applies to its gradient before sharing it; every attack sees the same defended gradient.

Built from ``conf/defense/*.yaml`` (``defense=none|gaussian|laplace|prune|dpsgd``). Noise is drawn on the
CPU from a ``torch.Generator`` seeded with the trial seed, in the gradient's dtype, then moved to its device,
so the same config and seed give the same defended gradient on any device.

* ``gaussian`` / ``laplace``: i.i.d. noise added to every gradient entry. ``scale`` is the noise standard
  deviation (Gaussian) or the Laplace scale ``b`` (standard deviation ``sqrt(2) b``); with ``relative=true``
  it is multiplied, per parameter tensor, by that tensor's root-mean-square gradient entry, so one number means
  the same signal-to-noise ratio on every layer and every model.
* ``prune``: DLG's strongest defense. Per parameter tensor, the ``prune_ratio`` fraction of entries with the
  smallest magnitude is set to zero; the others are kept unchanged.
* ``dpsgd``: DP-SGD (Abadi et al., 2016). Each example's gradient (over all parameters) is clipped to L2 norm
  ``clip_norm``; the clipped gradients are summed, Gaussian noise of standard deviation
  ``noise_multiplier * clip_norm`` is added, and the sum is divided by the batch size (the same mean reduction
  as the undefended gradient).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

from rgap.core.config import instantiate_group
from rgap.core.errors import UserInputError
from rgap.core.validation import as_bool, as_float

#: Added to the trial seed for the defense's noise, so it never shares a stream with the model or index draws.
SEED_OFFSET = 7919

#: Gradients: one tensor per parameter, in ``model.parameters()`` order.
Gradients = list[torch.Tensor]


class Defense(ABC):
    """Transforms the client's gradient before any attack sees it (the client applies it, see
    ``rgap.client.gradient.Client``)."""

    name: str = "defense"
    #: True when ``defend`` needs each example's own gradient (the client then computes them).
    needs_per_example: bool = False

    def params(self) -> dict[str, Any]:
        """The defense's parameters, as recorded in the row (``defense_params``)."""
        return {}

    def describe(self) -> str:
        """Compact JSON of ``params()`` with sorted keys."""
        return json.dumps(self.params(), sort_keys=True)

    @abstractmethod
    def defend(self, gradients: Gradients, per_example: list[Gradients] | None,
               generator: torch.Generator) -> Gradients:
        """The defended gradients (the inputs are never modified); ``per_example`` is given when
        ``needs_per_example``."""


def _noise(like: torch.Tensor, kind: str, scale: float, generator: torch.Generator) -> torch.Tensor:
    """I.i.d. noise shaped like ``like``: ``normal`` (std ``scale``) or ``laplace`` (scale ``scale``)."""
    if kind == "normal":
        sample = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    else:  # Laplace by inversion of U(-1/2, 1/2): -sign(u) log(1 - 2|u|)
        u = torch.rand(like.shape, generator=generator, dtype=like.dtype) - 0.5
        sample = -torch.sign(u) * torch.log1p(-2 * u.abs())
    return (scale * sample).to(like.device)


def _check_nonnegative(name: str, value: float) -> float:
    return as_float(value, f"defense.{name}", minimum=0.0)


class NoDefense(Defense):
    """The gradient is shared as computed."""

    name = "none"

    def defend(self, gradients: Gradients, per_example: list[Gradients] | None,
               generator: torch.Generator) -> Gradients:
        return gradients


class _AdditiveNoise(Defense):
    kind = "normal"

    def __init__(self, scale: float = 0.0, relative: bool = False) -> None:
        self.scale = _check_nonnegative("scale", scale)
        self.relative = as_bool(relative, "defense.relative")

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "relative": self.relative}

    def defend(self, gradients: Gradients, per_example: list[Gradients] | None,
               generator: torch.Generator) -> Gradients:
        noisy = []
        for grad in gradients:
            scale = self.scale * float(grad.pow(2).mean().sqrt()) if self.relative else self.scale
            noisy.append(grad + _noise(grad, self.kind, scale, generator))
        return noisy


class GaussianNoise(_AdditiveNoise):
    """Gaussian noise of standard deviation ``scale`` (times each tensor's RMS gradient when ``relative``)."""

    name = "gaussian"
    kind = "normal"


class LaplaceNoise(_AdditiveNoise):
    """Laplace noise of scale ``scale`` (std ``sqrt(2) scale``; times each tensor's RMS when ``relative``)."""

    name = "laplace"
    kind = "laplace"


class GradientPruning(Defense):
    """Zero the ``prune_ratio`` smallest-magnitude entries of every parameter's gradient."""

    name = "prune"

    def __init__(self, prune_ratio: float = 0.0) -> None:
        ratio = as_float(prune_ratio, "defense.prune_ratio", minimum=0.0)
        if not 0.0 <= ratio < 1.0:
            raise UserInputError(f"defense.prune_ratio={prune_ratio!r} is not valid; it must be in [0, 1) "
                                 "(the fraction of each layer's gradient entries set to zero).")
        self.prune_ratio = ratio

    def params(self) -> dict[str, Any]:
        return {"prune_ratio": self.prune_ratio}

    def defend(self, gradients: Gradients, per_example: list[Gradients] | None,
               generator: torch.Generator) -> Gradients:
        pruned = []
        for grad in gradients:
            drop = int(math.floor(self.prune_ratio * grad.numel()))
            flat = grad.reshape(-1).clone()
            if drop > 0:
                flat[torch.argsort(flat.abs(), stable=True)[:drop]] = 0.0
            pruned.append(flat.reshape(grad.shape))
        return pruned


class DPSGD(Defense):
    """Per-example clipping to ``clip_norm`` plus Gaussian noise ``noise_multiplier * clip_norm``, mean over B."""

    name = "dpsgd"
    needs_per_example = True

    def __init__(self, clip_norm: float = 1.0, noise_multiplier: float = 1.0) -> None:
        self.clip_norm = _check_nonnegative("clip_norm", clip_norm)
        if self.clip_norm == 0:
            raise UserInputError("defense.clip_norm=0 is not valid; it must be > 0 (the per-example L2 bound).")
        self.noise_multiplier = _check_nonnegative("noise_multiplier", noise_multiplier)

    def params(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier}

    def defend(self, gradients: Gradients, per_example: list[Gradients] | None,
               generator: torch.Generator) -> Gradients:
        if per_example is None:
            raise ValueError("DP-SGD needs each example's gradient (the client computes them).")
        examples = per_example
        total = [torch.zeros_like(g) for g in gradients]
        for grads in examples:
            norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
            factor = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
            for acc, g in zip(total, grads, strict=True):
                acc.add_(g, alpha=factor)
        std = self.noise_multiplier * self.clip_norm
        return [(acc + _noise(acc, "normal", std, generator)) / len(examples) for acc in total]


def defense_generator(seed: int) -> torch.Generator:
    """The CPU generator a trial's defense draws its noise from."""
    return torch.Generator().manual_seed(int(seed) + SEED_OFFSET)


def build_defense(cfg: Mapping[str, Any] | None) -> Defense:
    """The defense of a trial config's ``defense`` group (``None``: no defense, for configs written before it)."""
    if cfg is None:
        return NoDefense()
    return instantiate_group(cfg, "defense", Defense)
