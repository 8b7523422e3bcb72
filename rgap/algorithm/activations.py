"""Invertible activations for R-GAP, registered by module type.

Each entry knows ``forward(z)``, ``inverse(a)`` (the weight-constraint right-hand side z = act^-1(a)) and
``derivative(z)`` (the factor in the k recursion). Modules without an entry raise ``UnsupportedLayerError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from rgap.core.errors import UnsupportedLayerError


class InvertibleActivation(ABC):
    """An elementwise bijection R -> range with its inverse and derivative."""

    name: str = "activation"

    @abstractmethod
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """a = act(z)."""

    @abstractmethod
    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """z = act^-1(a); values outside the range are projected onto it."""

    @abstractmethod
    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """act'(z)."""

    def out_of_range(self, a: torch.Tensor) -> int:
        """How many entries of ``a`` lie outside the activation's range (projected by ``inverse``)."""
        return 0


class IdentityActivation(InvertibleActivation):
    name = "identity"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(z)


#: Pre-activations within this fraction of the layer's largest ``|z|`` are zeros up to round-off (float64 solves
#: are accurate to about 1e-12 relative).
ZERO_TOL = 1e-10


class LeakyReLUActivation(InvertibleActivation):
    name = "leaky_relu"

    def __init__(self, slope: float) -> None:
        if slope <= 0:
            raise UnsupportedLayerError(
                f"LeakyReLU with negative_slope={slope} is not invertible (R-GAP needs a slope > 0)."
            )
        self.slope = float(slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z >= 0, z, self.slope * z)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return torch.where(a >= 0, a, a / self.slope)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """1 above zero, the slope elsewhere. At ``z = 0`` autograd's LeakyReLU backward uses the slope; a
        recovered ``z`` that is zero up to round-off (``|z| <= ZERO_TOL * max |z|``: an image with black regions
        gives exact zeros after bias-free layers) is read as zero, so its sign does not flip the slope."""
        tol = ZERO_TOL * float(z.abs().max()) if z.numel() else 0.0
        return torch.where(z > tol, torch.ones_like(z), torch.full_like(z, self.slope))


class SigmoidActivation(InvertibleActivation):
    name = "sigmoid"
    #: Outputs are clipped to [eps, 1 - eps] before the logit, so noisy inputs give finite pre-activations.
    eps = 1e-12

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return torch.logit(a.clamp(self.eps, 1 - self.eps))

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)

    def out_of_range(self, a: torch.Tensor) -> int:
        return int(((a <= 0) | (a >= 1)).sum())


ACTIVATION_REGISTRY: dict[type[nn.Module], Callable[[nn.Module], InvertibleActivation]] = {}


def register_activation(module_type: type[nn.Module]):
    """Decorator: register a factory that turns a module of ``module_type`` into an ``InvertibleActivation``."""

    def wrap(factory: Callable[[nn.Module], InvertibleActivation]):
        if module_type in ACTIVATION_REGISTRY:
            raise ValueError(f"An inverse for {module_type.__name__} is already registered.")
        ACTIVATION_REGISTRY[module_type] = factory
        return factory

    return wrap


register_activation(nn.Identity)(lambda m: IdentityActivation())
register_activation(nn.LeakyReLU)(lambda m: LeakyReLUActivation(m.negative_slope))
register_activation(nn.Sigmoid)(lambda m: SigmoidActivation())


def is_activation(module: nn.Module) -> bool:
    """Whether R-GAP knows how to invert this module."""
    return type(module) in ACTIVATION_REGISTRY


def invertible_activation(module: nn.Module) -> InvertibleActivation:
    """The registered inverse of ``module`` or ``UnsupportedLayerError`` naming the valid choices."""
    factory = ACTIVATION_REGISTRY.get(type(module))
    if factory is None:
        known = ", ".join(sorted(t.__name__ for t in ACTIVATION_REGISTRY))
        raise UnsupportedLayerError(
            f"R-GAP cannot invert the activation {module!r}: it is not a bijection or has no registered "
            f"inverse. Invertible activations: {known}."
        )
    return factory(module)
