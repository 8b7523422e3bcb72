"""Two user-style networks outside the model zoo, for the audit measurements and the batch-norm/pooling tests.

* :func:`bn_cnn`: CNN6's convolutions, each followed by eval-mode ``BatchNorm2d`` before its LeakyReLU, and a
  ``BatchNorm1d`` on the flattened features before the output layer: R-GAP folds every batch norm into its
  layer, and the stages keep CNN6's full rank.
* :func:`pool_cnn`: a CNN with ``AvgPool2d(2)`` after conv1's activation. R-GAP composes the pool with conv2,
  whose unknown becomes the pool's 12 x 17 x 17 input, of which at most the 12 x 8 x 8 pooled values reach
  conv2: that stage is rank-deficient whatever its width.

Both take the zoo builders' arguments (``rgap.zoo.models.cnn6``), so a trial can build them with
``model._target_=custom_nets.bn_cnn`` (``tests/`` on ``PYTHONPATH``). Batch norms get seeded random running
statistics and affine parameters (a trained network's are not 0/1), and the models are returned in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rgap.zoo.models import head_size

CNN6_CONVS = [(12, 4, 2, 2), (36, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1)]


def randomize_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every batch norm running statistics and affine parameters as a trained network would have."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                if module.affine:
                    module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                    module.bias.copy_(0.2 * torch.randn(c, generator=generator))


def _features(layers: list[nn.Module], input_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return int(nn.Sequential(*layers)(torch.zeros(1, *input_shape)).numel())


def bn_cnn(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
           slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
           num_classes: int | None = None) -> nn.Sequential:
    """CNN6 with eval-mode batch norm: conv -> BatchNorm2d -> LeakyReLU (x6) -> Flatten -> BatchNorm1d -> Linear.

    ``init``/``init_std`` are accepted for config compatibility; weights keep PyTorch's default initialisation.
    """
    outputs = head_size(num_outputs, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        channels = int(input_shape[0])
        for out_ch, kernel, stride, padding in CNN6_CONVS:
            layers += [nn.Conv2d(channels, out_ch, kernel, stride=stride, padding=padding, bias=bias),
                       nn.BatchNorm2d(out_ch), nn.LeakyReLU(slope)]
            channels = out_ch
        layers.append(nn.Flatten())
        features = _features(layers, input_shape)
        layers += [nn.BatchNorm1d(features), nn.Linear(features, outputs, bias=bias)]
        model = nn.Sequential(*layers)
        randomize_batch_norm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def pool_cnn(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
             slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
             num_classes: int | None = None) -> nn.Sequential:
    """conv1 -> LeakyReLU -> AvgPool2d(2) -> conv2 -> LeakyReLU -> conv3 -> LeakyReLU -> conv4 -> LeakyReLU -> FC.

    conv1 (12, 4x4, stride 2, padding 2) gives 12 x 17 x 17 at 32 px; the pool keeps 12 x 8 x 8 of it.
    ``init``/``init_std`` are accepted for config compatibility; weights keep PyTorch's default initialisation.
    """
    outputs = head_size(num_outputs, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        channels = int(input_shape[0])
        layers: list[nn.Module] = [nn.Conv2d(channels, 12, 4, stride=2, padding=2, bias=bias), nn.LeakyReLU(slope),
                                   nn.AvgPool2d(2)]
        for in_ch, out_ch, stride in [(12, 36, 1), (36, 36, 1), (36, 64, 2)]:
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias), nn.LeakyReLU(slope)]
        layers.append(nn.Flatten())
        layers.append(nn.Linear(_features(layers, input_shape), outputs, bias=bias))
        model = nn.Sequential(*layers)
    return model.eval()
