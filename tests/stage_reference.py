"""Independent references for networks with batch norm, pooling and pass-through layers (test helper module).

A network is written as :class:`Block` s, one per weight layer: the modules before it (``pre``: batch norm,
pooling, Flatten, ...), the layer, the modules between it and its activation (``post``) and the activation.
The client side and every stage's stacked system ``[K; A]`` are computed here from the real modules with
torch.autograd / torch.func only, never with ``rgap``: ``K`` is the Jacobian of ``x -> dl/dW`` at the layer's
true output gradient, ``A`` the Jacobian of ``x -> z``, both taken through the modules themselves, and the
right-hand sides subtract the maps' values at ``x = 0`` (the maps are affine in ``x``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rgap.attack.losses import logistic_loss

DTYPE = torch.float64


def random_bn(channels: int, dims: int, affine: bool, generator: torch.Generator) -> nn.Module:
    """An eval-mode BatchNorm1d/2d with random running statistics (and random gamma/beta when affine)."""
    module = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(channels, affine=affine)
    with torch.no_grad():
        module.running_mean.copy_(0.3 * torch.randn(channels, generator=generator))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(channels, generator=generator))
        if affine:
            module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
            module.bias.copy_(0.3 * torch.randn(channels, generator=generator))
    return module.to(DTYPE).eval()


@dataclass
class Block:
    """One weight layer with the modules before it, between it and its activation, and the activation."""

    layer: nn.Module
    pre: list[nn.Module] = field(default_factory=list)
    post: list[nn.Module] = field(default_factory=list)
    act: nn.Module | None = None

    def modules(self) -> list[nn.Module]:
        return [*self.pre, self.layer, *self.post, *([self.act] if self.act is not None else [])]

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        """The block's pre-activation for a batch ``x`` (its input)."""
        return nn.Sequential(*self.pre, self.layer, *self.post)(x)


def sequential(blocks: list[Block]) -> nn.Sequential:
    return nn.Sequential(*[m for b in blocks for m in b.modules()]).to(DTYPE).eval()


@dataclass
class StageTruth:
    x: torch.Tensor  # the block's input (one sample)
    z: torch.Tensor  # its pre-activation
    k: torch.Tensor  # dl/dz
    k_layer: torch.Tensor  # dl/d(layer output)
    grad_w: torch.Tensor  # dl/dW of the layer


def client(model: nn.Module, blocks: list[Block], x: torch.Tensor,
           labels: torch.Tensor) -> tuple[list[torch.Tensor], list[StageTruth]]:
    """All parameter gradients (in ``model.parameters()`` order) and each block's truth, by autograd."""
    inputs, zs, layer_outs = {}, {}, {}

    def keep(store: dict, key: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            store[key] = output
            return output
        return hook

    handles = []
    for i, block in enumerate(blocks):
        first = block.pre[0] if block.pre else block.layer
        handles.append(first.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach())))
        handles.append(block.layer.register_forward_hook(keep(layer_outs, i)))
        handles.append((block.post[-1] if block.post else block.layer).register_forward_hook(keep(zs, i)))
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    params = list(model.parameters())
    n = len(blocks)
    outs = torch.autograd.grad(logistic_loss(logits, labels), params + [zs[i] for i in range(n)]
                               + [layer_outs[i] for i in range(n)])
    grads = [g.detach() for g in outs[: len(params)]]
    truths = []
    for i, block in enumerate(blocks):
        grad_w = grads[next(j for j, p in enumerate(params) if p is block.layer.weight)]
        truths.append(StageTruth(inputs[i][0], zs[i].detach()[0], outs[len(params) + i].detach()[0],
                                 outs[len(params) + n + i].detach()[0], grad_w))
    return grads, truths


def stacked_reference(block: Block, truth: StageTruth) -> tuple[torch.Tensor, torch.Tensor]:
    """``M = [K; A]`` and ``rhs = [vec dl/dW - K-offset; z - z(0)]`` of one block, from autograd alone."""
    pre = nn.Sequential(*block.pre)
    weight = block.layer.weight.detach()
    k_layer = truth.k_layer.unsqueeze(0)

    def grad_w(x: torch.Tensor) -> torch.Tensor:
        u = pre(x.unsqueeze(0))

        def inner(w: torch.Tensor) -> torch.Tensor:
            return (k_layer * torch.func.functional_call(block.layer, {"weight": w}, (u,))).sum()

        return torch.func.grad(inner)(weight).reshape(-1)

    def to_z(x: torch.Tensor) -> torch.Tensor:
        return block.to_z(x.unsqueeze(0)).reshape(-1)

    x = truth.x
    zero = torch.zeros_like(x)
    with torch.no_grad():
        kmat = torch.func.jacrev(grad_w)(x).reshape(weight.numel(), x.numel())
        amat = torch.func.jacrev(to_z)(x).reshape(-1, x.numel())
        rhs = torch.cat([truth.grad_w.reshape(-1) - grad_w(zero), truth.z.reshape(-1) - to_z(zero)])
    return torch.cat([kmat, amat]), rhs


def reversed_label(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The misclassifying label of a single-logit model (a unique root of the last-layer equation)."""
    with torch.no_grad():
        return torch.tensor([0.0 if float(model(x).reshape(-1)[0]) > 0 else 1.0], dtype=DTYPE)
