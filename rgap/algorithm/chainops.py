"""The modules between R-GAP's weight layers, registered by module type: pass-throughs, batch norm, pooling.

R-GAP inverts a chain of weight layers (``rgap.algorithm.inverters``) and invertible activations
(``rgap.algorithm.activations``). Everything else in the chain is read here as an affine map ``y = L x + c`` of
one sample:

* **pass-through** (``None``): ``Identity``, ``Flatten``, ``Unflatten`` and dropout in eval mode (or with
  ``p = 0``) change no value and disappear from the stages.
* **per-channel affine** (:class:`ChannelAffine`): ``BatchNorm1d``/``BatchNorm2d`` in eval mode with running
  statistics, ``y = s * x + t`` per channel with ``s = gamma / sqrt(running_var + eps)`` and
  ``t = beta - running_mean * s`` (``gamma = 1``, ``beta = 0`` without ``affine``). Right after a weight layer
  it is folded into that layer's output; elsewhere it is part of the next layer's input map.
* **linear** (:class:`AvgPoolOp`): ``AvgPool2d`` and ``AdaptiveAvgPool2d``, parameter-free averages, composed
  with the next weight layer (whose unknown becomes the pool's input).

A reader registered for a type returns the op, ``None`` for a pass-through, or raises ``UnsupportedLayerError``
with the reason (batch norm or dropout in training mode). Every op works on batches ``[B, *in_shape]`` and
knows its adjoint, so a layer's constraint system can be composed with it without forming matrices.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rgap.core.errors import UnsupportedLayerError

Shape = tuple[int, ...]


class ChainOp(ABC):
    """An affine map ``y = L x + c`` of one sample between weight layers, applied to batches of samples."""

    #: Short description for rank-table notes and layer reports, e.g. ``"bn"``, ``"avgpool 2x2"``.
    note: str = ""

    def __init__(self, module: nn.Module, input_shape: Shape, output_shape: Shape) -> None:
        self.module = module
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)

    def parameters(self) -> list[nn.Parameter]:
        """The op's own trainable parameters (their gradients are part of the shared gradient)."""
        return list(self.module.parameters())

    @abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part ``L x`` for ``x`` of shape ``[B, *input_shape]``; returns ``[B, *output_shape]``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``L^T y`` for ``y`` of shape ``[B, *output_shape]``; returns ``[B, *input_shape]``."""

    @abstractmethod
    def pull_diagonal(self, d: torch.Tensor) -> torch.Tensor:
        """``(L o L)^T d`` (entrywise square): the diagonal of ``L^T diag(d) L``, shape ``input_shape``."""

    def offset(self, like: torch.Tensor) -> torch.Tensor | None:
        """The constant ``c`` (shape ``output_shape``), or None when the map is linear."""
        return None

    def affine(self, x: torch.Tensor) -> torch.Tensor:
        """``L x + c`` for a batch ``x``."""
        y = self.apply(x)
        c = self.offset(y)
        return y if c is None else y + c


def _channel_view(v: torch.Tensor, shape: Shape) -> torch.Tensor:
    """A per-channel vector ``[C]`` shaped to broadcast over a sample of ``shape`` (channels first)."""
    return v.reshape(-1, *([1] * (len(shape) - 1)))


class ChannelAffine(ChainOp):
    """``y = s * x + t`` per channel (dimension 0 of a sample): batch norm in eval mode."""

    note = "bn"

    def __init__(self, module: nn.Module, input_shape: Shape, output_shape: Shape, scale: torch.Tensor,
                 shift: torch.Tensor) -> None:
        super().__init__(module, input_shape, output_shape)
        self._scale, self._shift = scale.detach(), shift.detach()

    def channel_scale(self, like: torch.Tensor) -> torch.Tensor:
        return self._scale.to(dtype=like.dtype, device=like.device)

    def scale(self, like: torch.Tensor) -> torch.Tensor:
        """``s`` broadcast to the full sample shape."""
        return _channel_view(self.channel_scale(like), self.input_shape).expand(self.input_shape)

    def shift(self, like: torch.Tensor) -> torch.Tensor:
        """``t`` broadcast to the full sample shape."""
        t = self._shift.to(dtype=like.dtype, device=like.device)
        return _channel_view(t, self.input_shape).expand(self.input_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.input_shape) * self.scale(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.reshape(-1, *self.output_shape) * self.scale(y)

    def pull_diagonal(self, d: torch.Tensor) -> torch.Tensor:
        return d.reshape(self.output_shape) * self.scale(d) ** 2

    def offset(self, like: torch.Tensor) -> torch.Tensor:
        return self.shift(like)


class AvgPoolOp(ChainOp):
    """A parameter-free average pooling, linear: ``y = P x``; the adjoint is its vector-Jacobian product."""

    def __init__(self, module: nn.Module, input_shape: Shape, output_shape: Shape) -> None:
        super().__init__(module, input_shape, output_shape)
        if len(self.input_shape) != 3:
            raise UnsupportedLayerError(f"{type(module).__name__} needs (C, H, W) inputs, got {self.input_shape}.")
        self.note = _pool_note(module)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.reshape(-1, *self.input_shape))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(-1, *self.output_shape)
        with torch.enable_grad():
            x = torch.zeros(y.shape[0], *self.input_shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (grad,) = torch.autograd.grad(self.module(x), x, y)
        return grad

    def weights(self, like: torch.Tensor) -> torch.Tensor:
        """The weight ``1 / divisor`` every input of an output's window carries, per output (shape output)."""
        ones = torch.ones(1, *self.input_shape, dtype=like.dtype, device=like.device)
        if isinstance(self.module, nn.AdaptiveAvgPool2d):
            _, height, width = self.input_shape
            out_h, out_w = self.output_shape[1:]
            rows, cols = _adaptive_sizes(height, out_h), _adaptive_sizes(width, out_w)
            sizes = torch.outer(rows, cols).to(like)
            return (1.0 / sizes).expand(self.output_shape)
        m = self.module
        counts = F.avg_pool2d(ones, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, divisor_override=1)[0]
        totals = self.apply(ones)[0]  # count / divisor
        return torch.where(counts > 0, totals / counts.clamp(min=1), torch.zeros_like(totals))

    def pull_diagonal(self, d: torch.Tensor) -> torch.Tensor:
        """Every row of ``P`` is ``1 / divisor`` on its window, so ``(P o P)^T d = P^T (d / divisor)``."""
        return self.adjoint((d.reshape(self.output_shape) * self.weights(d)).unsqueeze(0))[0]


def _adaptive_sizes(size: int, out: int) -> torch.Tensor:
    """Window lengths of adaptive pooling: ``ceil((i + 1) size / out) - floor(i size / out)``."""
    return torch.tensor([-((-(i + 1) * size) // out) - (i * size) // out for i in range(out)], dtype=torch.float64)


def _pool_note(module: nn.Module) -> str:
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        size = size if isinstance(size, tuple) else (size, size)
        return f"adaptive avgpool to {'x'.join(str(s) for s in size)}"
    kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
    stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
    text = f"avgpool {kernel[0]}x{kernel[1]}"
    return text if tuple(stride) == tuple(kernel) else f"{text} stride {stride[0]}x{stride[1]}"


# ----------------------------------------------------------------------------------------------- registry

ChainReader = Callable[[nn.Module, Shape, Shape], "ChainOp | None"]
CHAIN_REGISTRY: dict[type[nn.Module], ChainReader] = {}


def register_chain_op(module_type: type[nn.Module]) -> Callable[[ChainReader], ChainReader]:
    """Decorator: register the reader of ``module_type`` (duplicates are refused).

    A reader returns a :class:`ChainOp`, ``None`` for a pass-through, or raises ``UnsupportedLayerError``.
    """

    def wrap(reader: ChainReader) -> ChainReader:
        if module_type in CHAIN_REGISTRY:
            raise ValueError(f"A chain op for {module_type.__name__} is already registered.")
        CHAIN_REGISTRY[module_type] = reader
        return reader

    return wrap


def is_chain_op(module: nn.Module) -> bool:
    """Whether ``module``'s type has a registered reader."""
    return type(module) in CHAIN_REGISTRY


def read_chain_op(module: nn.Module, input_shape: Shape, output_shape: Shape) -> ChainOp | None:
    """The op of ``module`` (None: pass-through); ``UnsupportedLayerError`` when it cannot be read in its mode."""
    return CHAIN_REGISTRY[type(module)](module, tuple(input_shape), tuple(output_shape))


def _pass_through(module: nn.Module, input_shape: Shape, output_shape: Shape) -> None:
    return None


for _type in (nn.Identity, nn.Flatten, nn.Unflatten):
    register_chain_op(_type)(_pass_through)

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _dropout(module: nn.Module, input_shape: Shape, output_shape: Shape) -> None:
    if module.training and module.p > 0:
        raise UnsupportedLayerError(
            "dropout in training mode zeroes a random subset of units (and rescales the rest) with a mask the "
            "attacker does not know; in eval mode it is the identity (put the client in eval mode)."
        )
    return None


for _type in DROPOUT_TYPES:
    register_chain_op(_type)(_dropout)


def _batch_norm(module: nn.Module, input_shape: Shape, output_shape: Shape) -> ChannelAffine:
    if module.training:
        raise UnsupportedLayerError(
            "batch norm in training mode normalises with the statistics of the current batch, which couple the "
            "samples and are not shared, so the layer is an unknown nonlinear map; in eval mode (running "
            "statistics) it is a fixed per-channel affine map that R-GAP folds into its neighbours."
        )
    if module.running_mean is None or module.running_var is None:
        raise UnsupportedLayerError(
            "batch norm without running statistics (track_running_stats=False) normalises with the batch "
            "statistics even in eval mode, which couple the samples and are not shared."
        )
    if len(input_shape) not in (1, 2, 3):
        raise UnsupportedLayerError(f"batch norm input of shape {input_shape} is not (C,), (C, L) or (C, H, W).")
    var, mean = module.running_var.detach(), module.running_mean.detach()
    gamma = module.weight.detach() if module.affine else torch.ones_like(var)
    beta = module.bias.detach() if module.affine else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + module.eps)
    return ChannelAffine(module, input_shape, output_shape, scale, beta - mean * scale)


for _type in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_chain_op(_type)(_batch_norm)


def _avg_pool(module: nn.Module, input_shape: Shape, output_shape: Shape) -> AvgPoolOp:
    return AvgPoolOp(module, input_shape, output_shape)


for _type in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
    register_chain_op(_type)(_avg_pool)


# ----------------------------------------------------------------------------------------------- helpers

#: Axis of a weight layer's output (without batch dim) that indexes its output channels / rows of its weight.
OUTPUT_CHANNEL_AXIS: dict[type[nn.Module], int] = {nn.Conv2d: 0, nn.Linear: -1}


def per_channel_scale(layer: nn.Module, scale: torch.Tensor, layer_output_shape: Shape) -> torch.Tensor | None:
    """The per-output-channel vector of an elementwise ``scale`` of ``layer``'s output, or None if it varies
    within a channel (then it cannot be folded into the layer's weights)."""
    axis = OUTPUT_CHANNEL_AXIS.get(type(layer))
    if axis is None:
        return None
    full = scale.reshape(layer_output_shape).movedim(axis, 0)
    vec = full.reshape(full.shape[0], -1)[:, 0]
    if not torch.equal(full, _channel_view(vec, tuple(full.shape)).expand_as(full)):
        return None
    return vec


def fold_affine(ops: list[ChannelAffine], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The composition of per-channel affine ``ops`` (applied in order) as flat elementwise ``(s, t)``."""
    scale = torch.ones(ops[0].input_size, dtype=like.dtype, device=like.device)
    shift = torch.zeros_like(scale)
    for op in ops:
        s, t = op.scale(like).reshape(-1), op.shift(like).reshape(-1)
        scale, shift = s * scale, s * shift + t
    return scale, shift
