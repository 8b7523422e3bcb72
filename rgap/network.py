"""Read a model as R-GAP sees it: a chain of stages ``activation(layer(x))`` from input to logit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rgap.activations import IdentityActivation, InvertibleActivation, invertible_activation, is_activation
from rgap.errors import UnsupportedLayerError
from rgap.models import collect_shapes

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass
class Stage:
    """One weight layer and the activation that follows it."""

    name: str
    layer: nn.Module
    activation: InvertibleActivation
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    param_index: int  # position of ``layer.weight`` in ``list(model.parameters())``

    @property
    def input_size(self) -> int:
        return int(torch.Size(self.input_shape).numel())

    @property
    def output_size(self) -> int:
        return int(torch.Size(self.output_shape).numel())


def _leaves(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            f"R-GAP reads models as a chain of layers and needs an nn.Sequential, got {type(model).__name__}."
        )
    leaves: list[nn.Module] = []
    for child in model:
        leaves.extend(_leaves(child) if isinstance(child, nn.Sequential) else [child])
    return leaves


def parse_stages(model: nn.Module, input_shape: Sequence[int]) -> list[Stage]:
    """Split ``model`` into stages; raise ``UnsupportedLayerError`` for anything R-GAP cannot invert.

    Supported: bias-free ``Conv2d`` (zero padding, any stride, no dilation or groups) and ``Linear``, each
    optionally followed by an invertible activation; ``Flatten`` between them.
    """
    shapes = collect_shapes(model, input_shape)
    param_ids = {id(p): i for i, p in enumerate(model.parameters())}
    stages: list[Stage] = []
    counts = {"conv": 0, "fc": 0}
    for module in _leaves(model):
        if isinstance(module, nn.Flatten):
            continue
        if isinstance(module, WEIGHT_LAYERS):
            _check_weight_layer(module)
            kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
            counts[kind] += 1
            in_shape, out_shape = shapes[module]
            stages.append(Stage(f"{kind}{counts[kind]}", module, IdentityActivation(), in_shape, out_shape,
                                param_ids[id(module.weight)]))
        elif is_activation(module):
            if not stages or not isinstance(stages[-1].activation, IdentityActivation):
                raise UnsupportedLayerError(
                    f"R-GAP expects each activation to follow a Conv2d or Linear layer; {module!r} does not."
                )
            stages[-1].activation = invertible_activation(module)
        else:
            raise UnsupportedLayerError(
                f"R-GAP cannot invert {type(module).__name__} ({module!r}). Supported layers: Conv2d and Linear "
                "without bias, Flatten, and the activations LeakyReLU (slope > 0), Sigmoid and Identity; "
                "ReLU, pooling and batch norm lose information."
            )
    if not stages:
        raise UnsupportedLayerError("The model has no Conv2d or Linear layer to invert.")
    if len(param_ids) != len(stages):
        raise UnsupportedLayerError("R-GAP needs exactly one trainable weight per layer (no biases, no extras).")
    return stages


def _check_weight_layer(layer: nn.Module) -> None:
    if layer.bias is not None:
        raise UnsupportedLayerError(
            f"{layer!r} has a bias; this R-GAP implementation handles bias-free layers only."
        )
    if isinstance(layer, nn.Conv2d) and (
        layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    ):
        raise UnsupportedLayerError(
            f"{layer!r}: R-GAP supports convolutions with groups=1, dilation=1 and numeric zero padding only."
        )
