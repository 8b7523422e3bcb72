"""The constraint system of one stage (``rgap.algorithm.network.Stage``): a weight layer composed with its maps.

A stage maps its unknown input ``x`` to its pre-activation ``z`` through

    u = P x + c             pre-maps (eval batch norm, average pooling; ``rgap.algorithm.chainops``), affine
    z = s * (W u + b) + t   the weight layer, then the per-channel scale/shift of the batch norms after it

With ``k = dl/dz``, the layer's own output gradient is ``k_W = s * k`` and its weight gradient is
``dl/dW = K(k_W) u``. So the stage's constraints on ``x`` are

* gradient constraints ``K(k_W) P x = vec(dl/dW) - K(k_W) c`` (one per weight), and
* weight constraints ``S W P x = z - z0`` (one per output), ``z0`` the stage's output at ``x = 0``.

The post-maps are folded into the weights (``S W`` is the layer with its output channels scaled, the usual
batch-norm folding) and handled by the layer's own inverter; the pre-map is composed with it through its
products only: dense normal matrices ``P^T G P`` for small stages, the matrix-free product
``v -> P^T G (P v)`` for large ones. A stage without pre-maps delegates its solve to the layer's inverter
(Woodbury, Cholesky or its matrix-free path), so plain chains solve exactly as before.

Unlike a bare ``LayerInverter``, ``StageInverter`` takes the observed ``z`` (bias and every offset included)
and the observed ``dl/dW``, and removes the offsets itself. Balance weights (``balance=True``) are those of the
layer's own system at ``u``; in exact arithmetic the solution does not depend on them.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from rgap.algorithm.chainops import fold_affine, per_channel_scale
from rgap.algorithm.inverters import LayerInverter, make_inverter
from rgap.algorithm.matfree import NormalOperator
from rgap.algorithm.network import Stage
from rgap.algorithm.solvers import Solution, SolveOptions


class StageInverter(LayerInverter):
    """The least-squares system of a stage's input ``x``, built on the weight layer's registered inverter."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(stage.layer, stage.input_shape, stage.output_shape)
        self.stage = stage
        self.pre = list(stage.pre)
        self.layer_input_shape = stage.layer_input_shape
        self.layer_output_shape = stage.layer_output_shape
        like = stage.layer.weight.detach()
        self._scale: torch.Tensor | None = None  # flat s of the post-maps (None: no post-maps)
        self._shift: torch.Tensor | None = None
        inner_layer = stage.layer
        if stage.post:
            self._scale, self._shift = fold_affine(stage.post, like)
            channel = per_channel_scale(stage.layer, self._scale, self.layer_output_shape)
            if channel is None:
                raise ValueError(f"{stage.name}: the post-maps are not per output channel (parse_stages checks this).")
            inner_layer = _scaled_copy(stage.layer, channel)
        self.inner: LayerInverter = make_inverter(inner_layer, self.layer_input_shape, self.layer_output_shape)
        self.n_inner = math.prod(self.layer_input_shape)
        self._offsets: dict[tuple, tuple[torch.Tensor | None, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------- the maps

    def map_input(self, x: torch.Tensor) -> torch.Tensor:
        """``P x`` (linear part of the pre-maps) for a batch ``[B, n]``; returns ``[B, |u|]``."""
        v = x.reshape(x.shape[0], -1)
        for op in self.pre:
            v = op.apply(v.reshape(-1, *op.input_shape)).reshape(v.shape[0], -1)
        return v

    def map_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``P^T y`` for a batch ``[B, |u|]``; returns ``[B, n]``."""
        v = y.reshape(y.shape[0], -1)
        for op in reversed(self.pre):
            v = op.adjoint(v.reshape(-1, *op.output_shape)).reshape(v.shape[0], -1)
        return v

    def _sandwich(self, matrix: torch.Tensor) -> torch.Tensor:
        """``P^T M P`` for a symmetric ``M`` (``|u| x |u|``)."""
        if not self.pre:
            return matrix
        return self.map_adjoint(self.map_adjoint(matrix).T.contiguous())

    def _pull_diagonal(self, d: torch.Tensor) -> torch.Tensor:
        """``diag(P^T diag(d) P)``, pushed back op by op (``ChainOp.pull_diagonal``)."""
        for op in reversed(self.pre):
            d = op.pull_diagonal(d.reshape(op.output_shape))
        return d.reshape(-1)

    def offsets(self, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(c, z0)``: the layer input at ``x = 0`` (None without pre-map offsets) and the stage output there."""
        key = (like.dtype, like.device)
        if key not in self._offsets:
            u0 = torch.zeros(1, *self.input_shape, dtype=like.dtype, device=like.device)
            has_offset = False
            for op in self.pre:
                offset = op.offset(u0)
                u0 = op.apply(u0.reshape(-1, *op.input_shape))
                if offset is not None:
                    u0, has_offset = u0 + offset, True
            layer = self.stage.layer
            weight = layer.weight
            with torch.no_grad():
                z0 = layer(u0.reshape(1, *self.layer_input_shape).to(weight)).to(like).reshape(-1)
            if self._scale is not None:
                z0 = self._scale.to(like) * z0 + self._shift.to(like)
            self._offsets[key] = (u0.reshape(-1) if has_offset else None, z0)
        return self._offsets[key]

    def _layer_k(self, k: torch.Tensor) -> torch.Tensor:
        """``k_W = s * k``: the gradient at the layer's own output."""
        k = k.reshape(-1)
        if self._scale is not None:
            k = k * self._scale.to(k)
        return k.reshape(self.layer_output_shape)

    def _inner_args(self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None) -> tuple:
        """The layer inverter's ``(k_W, dl/dW - K(k_W) c, z - z0)`` for the stage's ``(k, dl/dW, z)``."""
        k_w = self._layer_k(k)
        c, z0 = self.offsets(k)
        if c is not None:
            grad_w = grad_w - self.inner.weight_gradient(k_w, c.to(k_w)).reshape(grad_w.shape)
        if z is not None:
            z = (z.reshape(-1) - z0.to(z)).reshape(self.layer_output_shape)
        return k_w, grad_w, z

    # ------------------------------------------------------------------------ LayerInverter interface

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``S W P x`` (no offsets)."""
        return self.inner.forward(self.map_input(x.reshape(1, -1))[0].reshape(self.layer_input_shape)).reshape(
            self.output_shape)

    def input_vjp(self, k: torch.Tensor) -> torch.Tensor:
        """``P^T W^T (s * k)``: the gradient w.r.t. the stage input."""
        back = self.inner.input_vjp(k.reshape(self.layer_output_shape))  # the folded layer applies s
        return self.map_adjoint(back.reshape(1, -1))[0].reshape(self.input_shape)

    def weight_gradient(self, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``dl/dW`` of the layer for stage input ``x`` and ``k = dl/dz`` (offsets included)."""
        k_w = self._layer_k(k)
        u = self.map_input(x.reshape(1, -1))[0]
        c, _ = self.offsets(k)
        if c is not None:
            u = u + c.to(u)
        return self.inner.weight_gradient(k_w, u.reshape(self.layer_input_shape))

    def gradient_matrix(self, k: torch.Tensor) -> torch.Tensor:
        """Dense ``K(k_W) P``."""
        return self._right_compose(self.inner.gradient_matrix(self._layer_k(k)))

    def weight_matrix(self, like: torch.Tensor) -> torch.Tensor:
        """Dense ``S W P``."""
        return self._right_compose(self.inner.weight_matrix(like))

    def _right_compose(self, rows: torch.Tensor) -> torch.Tensor:
        """``M P`` for a dense ``M`` with ``|u|`` columns."""
        return self.map_adjoint(rows) if self.pre else rows

    def gradient_normal(self, k: torch.Tensor, grad_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_w, grad_w, _ = self._inner_args(k, grad_w, None)
        gram, rhs = self.inner.gradient_normal(k_w, grad_w)
        return self._sandwich(gram), self._pull_back(rhs)

    def weight_gram(self, like: torch.Tensor) -> torch.Tensor:
        return self._sandwich(self.inner.weight_gram(like))

    def _pull_back(self, rhs: torch.Tensor) -> torch.Tensor:
        return self.map_adjoint(rhs.reshape(1, -1))[0] if self.pre else rhs.reshape(-1)

    def normal_equations(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``P^T G_u P`` and ``P^T rhs_u`` from the layer's normal equations at ``u`` (its balance weights)."""
        gram, rhs = self.inner.normal_equations(*self._inner_args(k, grad_w, z), balance)
        return self._sandwich(gram), self._pull_back(rhs)

    def normal_operator(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> NormalOperator:
        """``v -> P^T G_u (P v)`` on the layer's matrix-free operator.

        The diagonal (Jacobi preconditioner only) is ``(P o P)^T diag(G_u)``: exact when every input feeds at most
        one output of the pre-maps (batch norm, non-overlapping pooling), an approximation otherwise.
        """
        k64 = k.to(torch.float64)
        inner = self.inner.normal_operator(*self._inner_args(k64, grad_w.to(k64), None if z is None else z.to(k64)),
                                           balance)
        if not self.pre:
            return inner

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return self.map_adjoint(inner.matvec(self.map_input(v.reshape(1, -1))[0]).reshape(1, -1))[0]

        return NormalOperator(matvec, self._pull_back(inner.rhs), self._pull_diagonal(inner.diagonal), inner.weights)

    def layer_system(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None
    ) -> tuple[LayerInverter, tuple] | None:
        """Without pre-maps, the stage's system is its (folded) layer's: that inverter and its ``(k, dl/dW, z)``
        arguments; None with pre-maps (the composed system is only available through this class)."""
        if self.pre:
            return None
        return self.inner, self._inner_args(k, grad_w, z)

    def solve(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False,
        options: SolveOptions | None = None,
    ) -> Solution:
        """The layer inverter's own solve without pre-maps; else dense or matrix-free on the composed system."""
        if not self.pre:
            return self.inner.solve(*self._inner_args(k, grad_w, z), balance, options)
        return super().solve(k, grad_w, z, balance, options)

    def stacked_system(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``[K(k_W) P; S W P]`` and ``[vec dl/dW - K(k_W) c; z - z0]`` (small stages only)."""
        k_w, grad_eff, z_eff = self._inner_args(k, grad_w, z)
        rows, values = [self.gradient_matrix(k)], [grad_eff.reshape(-1)]
        if z_eff is not None:
            rows.append(self.weight_matrix(k))
            values.append(z_eff.reshape(-1))
        return torch.cat(rows), torch.cat(values)


def _scaled_copy(layer: nn.Module, channel_scale: torch.Tensor) -> nn.Module:
    """A copy of ``layer`` whose output channels (rows of its weight) are scaled by ``channel_scale``."""
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        weight = folded.weight
        weight.mul_(channel_scale.to(weight).reshape(-1, *([1] * (weight.dim() - 1))))
    return folded


def make_stage_inverter(stage: Stage) -> StageInverter:
    """The constraint system of ``stage`` (``UnsupportedLayerError`` when its layer has no inverter)."""
    return StageInverter(stage)
