"""Read a model as R-GAP sees it: a chain of stages ``activation(layer(x))`` from input to logit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rgap.activations import IdentityActivation, InvertibleActivation, invertible_activation, is_activation
from rgap.core.errors import UnsupportedLayerError

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
    bias_index: int | None = None  # position of ``layer.bias`` (None: bias-free layer)

    @property
    def has_bias(self) -> bool:
        return self.bias_index is not None

    @property
    def input_size(self) -> int:
        return int(torch.Size(self.input_shape).numel())

    @property
    def output_size(self) -> int:
        return int(torch.Size(self.output_shape).numel())


def _leaves(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise UnsupportedLayerError(
            f"R-GAP reads models as a chain of layers and needs an nn.Sequential, got {type(model).__name__}; "
            "residual connections and other branching graphs cannot be inverted layer by layer."
        )
    leaves: list[nn.Module] = []
    for child in model:
        leaves.extend(_leaves(child) if isinstance(child, nn.Sequential) else [child])
    return leaves


def parse_stages(model: nn.Module, input_shape: Sequence[int]) -> list[Stage]:
    """Split ``model`` into stages; raise ``UnsupportedLayerError`` for anything R-GAP cannot invert.

    Supported: ``Conv2d`` (zero padding, any stride, no dilation or groups) and ``Linear``, with or without
    bias, each optionally followed by an invertible activation; ``Flatten`` between them. Errors name the
    offending layer by its position and say why R-GAP cannot invert it.
    """
    shapes = collect_shapes(model, input_shape)
    param_ids = {id(p): i for i, p in enumerate(model.parameters())}
    stages: list[Stage] = []
    counts = {"conv": 0, "fc": 0}
    for position, module in enumerate(_leaves(model)):
        where = f"layer {position} ({module!r})"
        if isinstance(module, nn.Flatten):
            continue
        if isinstance(module, WEIGHT_LAYERS):
            _check_weight_layer(module, where)
            kind = "conv" if isinstance(module, nn.Conv2d) else "fc"
            counts[kind] += 1
            in_shape, out_shape = shapes[module]
            bias_index = param_ids[id(module.bias)] if module.bias is not None else None
            stages.append(Stage(f"{kind}{counts[kind]}", module, IdentityActivation(), in_shape, out_shape,
                                param_ids[id(module.weight)], bias_index))
        elif is_activation(module):
            if not stages or not isinstance(stages[-1].activation, IdentityActivation):
                raise UnsupportedLayerError(
                    f"R-GAP expects each activation to follow a Conv2d or Linear layer; {where} does not."
                )
            stages[-1].activation = invertible_activation(module)
        else:
            raise UnsupportedLayerError(f"R-GAP cannot invert {where}: {unsupported_reason(module)}")
    if not stages:
        raise UnsupportedLayerError("The model has no Conv2d or Linear layer to invert.")
    if len(param_ids) != sum(2 if s.has_bias else 1 for s in stages):
        raise UnsupportedLayerError(
            "R-GAP needs exactly one weight (and optionally one bias) per Conv2d/Linear layer and no other "
            "trainable parameters."
        )
    return stages


#: Why R-GAP cannot invert a module type (its input cannot be recovered from its output and the gradients).
UNSUPPORTED_REASONS: dict[type[nn.Module], str] = {
    nn.ReLU: "ReLU sets every negative pre-activation to 0, so the negative half of z is lost and the weight "
             "constraints below it are unknown (use LeakyReLU with a positive slope).",
    nn.MaxPool2d: "max pooling keeps one value per window and discards the others' values and positions.",
    nn.AvgPool2d: "average pooling maps a window to its mean; the window's values are not recoverable from it.",
    nn.AdaptiveAvgPool2d: "adaptive pooling maps each region to its mean; the region's values are lost.",
    nn.AdaptiveMaxPool2d: "adaptive pooling keeps one value per region; the others are lost.",
    nn.BatchNorm1d: "batch norm normalises with batch statistics that couple the samples and are not shared.",
    nn.BatchNorm2d: "batch norm normalises with batch statistics that couple the samples and are not shared.",
    nn.Dropout: "dropout zeroes a random subset of units that the attacker does not know.",
}


def unsupported_reason(module: nn.Module) -> str:
    """One sentence on why R-GAP cannot invert ``module``, and what it supports."""
    reason = UNSUPPORTED_REASONS.get(type(module), f"{type(module).__name__} has no registered inverse.")
    return (f"{reason} Supported: Conv2d and Linear (with or without bias), Flatten, and the activations "
            "LeakyReLU (slope > 0), Sigmoid and Identity; residual connections need a plain nn.Sequential chain.")


def _check_weight_layer(layer: nn.Module, where: str) -> None:
    if isinstance(layer, nn.Conv2d) and (
        layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    ):
        raise UnsupportedLayerError(
            f"{where}: R-GAP supports convolutions with groups=1, dilation=1 and numeric zero padding only."
        )


def collect_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, tuple[tuple[int, ...], ...]]:
    """Input and output shapes (without batch dim) of every leaf module, recorded with forward hooks.

    ``forward``'s return value is untouched; returns ``{module: (input_shape, output_shape)}``.
    """
    shapes: dict[nn.Module, tuple[tuple[int, ...], ...]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shapes[module] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return shapes
