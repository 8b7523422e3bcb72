"""Networks "of a user", importable as ``tests.user_models.<name>`` for ``model=custom`` tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def build(input_shape: Sequence[int], seed: int, num_outputs: int = 1) -> nn.Module:
    """A builder in the harness's style: input shape, seed and head size."""
    channels, height, width = input_shape
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1, bias=False), nn.LeakyReLU(0.2), nn.Flatten(),
                         nn.Linear(6 * height * width, num_outputs, bias=False))


class Net(nn.Module):
    """A plain ``nn.Module`` class with its own keyword arguments (no seed, no input shape, no head size)."""

    def __init__(self, width: int = 4, channels: int = 1, pixels: int = 28 * 28, logits: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.Sigmoid(), nn.Flatten(),
                                  nn.Linear(width * pixels, logits, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def no_kwargs_builder(input_shape: Sequence[int]) -> nn.Module:
    """A builder that accepts only the input shape."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.Size(input_shape).numel()), 3, bias=False))


def bn_pool_net(input_shape: Sequence[int], seed: int, num_outputs: int = 1) -> nn.Module:
    """Eval-mode batch norm and average pooling: conv -> BN -> LeakyReLU -> AvgPool2d(2) -> conv -> BN -> LeakyReLU
    -> Flatten -> Linear. The pool discards three quarters of conv1's output, so the conv2 stage is deficient."""
    channels, height, width = input_shape
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.AvgPool2d(2),
        nn.Conv2d(4, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2), nn.Flatten(),
        nn.Linear(16 * (height // 2) * (width // 2), num_outputs, bias=False))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # running statistics as a trained network has them
            with torch.no_grad():
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.eval()
