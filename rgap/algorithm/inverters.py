"""Per-layer constraint systems of R-GAP, registered by layer type.

For a layer ``z = A x`` whose output gradient is ``k = dl/dz``, the unknown input ``x`` satisfies
  * gradient constraints ``K(k) x = vec(dl/dW)`` (one row per weight), and
  * weight constraints ``A x = z`` (one row per output, ``z`` from inverting the activation above).
R-GAP solves the stacked least-squares problem. We never form the stacked matrix: the normal equations
``(K^T K + A^T A) x = K^T g + A^T z`` are built from the structure of each layer:

* Linear: ``K^T K = |k|^2 I``, ``K^T g = dW^T k``.
* Conv2d: ``K`` is block-diagonal over input channels with one shared block ``K0`` (kernel taps x pixels),
  built with a dilated convolution of ``k``; ``A^T A`` is obtained by pushing the identity through the
  convolution and its transpose (torch conv ops, no Python loops over pixels).

``stacked_system`` forms the dense matrix anyway; it exists for tests and small rank checks.

Layers with more unknowns than ``SolveOptions.dense_limit`` never form an N x N matrix: ``normal_operator``
describes ``G`` by its product with a vector (Conv2d: one ``unfold``, small GEMMs and one ``fold``) and
``rgap.algorithm.matfree`` solves by conjugate gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rgap.algorithm import weightcache
from rgap.algorithm.matfree import NormalOperator, PatchProduct, balance_weight, solve_normal
from rgap.algorithm.solvers import RCOND, STRUCTURED_MIN, Solution, SolveOptions, solve_gram
from rgap.algorithm.structured import solve_conv
from rgap.core.errors import UnsupportedLayerError

#: Conv2d layers with at most this many unknowns keep their weight Gram matrix in ``rgap.algorithm.weightcache``.
CACHED_GRAM_LIMIT = 1024
#: ``Conv2dInverter.gradient_block`` scatters when ``SCATTER_COST L^2 < (H W)^2 F`` (measured on this project's
#: layers: one index-add costs about as much as 50 multiply-adds of the dense product).
SCATTER_COST = 50


@dataclass(frozen=True)
class ConstraintCounts:
    """Sizes from the rank analysis: unknowns |x|, gradient constraints |W|, weight constraints |z|."""

    x: int
    w: int
    z: int


class LayerInverter(ABC):
    """Constraint system of one weight layer with fixed input/output shapes."""

    def __init__(self, layer: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
        self.layer = layer
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.n = int(torch.Size(self.input_shape).numel())

    def weight(self, like: torch.Tensor) -> torch.Tensor:
        return self.layer.weight.detach().to(dtype=like.dtype, device=like.device)

    def counts(self) -> ConstraintCounts:
        return ConstraintCounts(self.n, self.layer.weight.numel(), int(torch.Size(self.output_shape).numel()))

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x for ``x`` of shape ``input_shape`` (no batch dim); returns ``output_shape``."""

    @abstractmethod
    def input_vjp(self, k: torch.Tensor) -> torch.Tensor:
        """A^T k: the gradient w.r.t. the layer input given ``k = dl/dz`` (shape ``output_shape``)."""

    @abstractmethod
    def gradient_normal(self, k: torch.Tensor, grad_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K^T K, K^T vec(grad_w)) of the gradient constraints, as an N x N matrix and an N vector."""

    @abstractmethod
    def weight_gram(self, like: torch.Tensor) -> torch.Tensor:
        """A^T A as an N x N matrix."""

    def normal_equations(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """G = K^T K + A^T A and rhs = K^T g + A^T z (weight constraints dropped when ``z`` is None).

        ``balance`` weights each block so that its Gram matrix has mean eigenvalue 1 (see ``block_weight``).
        """
        gram, rhs = self.gradient_normal(k, grad_w)
        if z is None:
            return gram, rhs
        weight_gram = self.weight_gram(k)
        wk, wa = (block_weight(gram), block_weight(weight_gram)) if balance else (1.0, 1.0)
        rhs = wk * rhs + wa * self.input_vjp(z.reshape(self.output_shape)).reshape(-1)
        return wk * gram + wa * weight_gram, rhs

    @abstractmethod
    def normal_operator(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> NormalOperator:
        """The normal equations of ``normal_equations`` in float64 without forming any N x N matrix."""

    def solve(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False,
        options: SolveOptions | None = None,
    ) -> Solution:
        """Least-squares input from the stacked gradient and weight constraints.

        Dense (Cholesky / minimum-norm eigen-solve) unless ``options`` is given and the layer has more than
        ``options.dense_limit`` unknowns: then matrix-free conjugate gradients (``rgap.algorithm.matfree``).
        """
        if options is not None and self.n > options.dense_limit:
            solution = solve_normal(self.normal_operator(k, grad_w, z, balance), options)
            solution.x = solution.x.to(k.dtype)
            return solution
        gram, rhs = self.normal_equations(k, grad_w, z, balance)
        return solve_gram(gram, rhs)

    @abstractmethod
    def gradient_matrix(self, k: torch.Tensor) -> torch.Tensor:
        """Dense K(k), |W| x N, rows in the order of ``vec(dl/dW)``."""

    @abstractmethod
    def weight_matrix(self, like: torch.Tensor) -> torch.Tensor:
        """Dense A, |z| x N."""

    @abstractmethod
    def weight_gradient(self, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """dl/dW for one input ``x`` and output gradient ``k`` (the forward model of the gradient constraints)."""

    def stacked_system(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense [K; A] and [vec g; z]: only for small layers (tests, brute-force ranks)."""
        rows, values = [self.gradient_matrix(k)], [grad_w.reshape(-1)]
        if z is not None:
            rows.append(self.weight_matrix(k))
            values.append(z.reshape(-1))
        return torch.cat(rows), torch.cat(values)


def block_weight(gram: torch.Tensor) -> float:
    """``N / trace(gram)``: the weight that gives a constraint block's Gram matrix mean eigenvalue 1.

    Gradient and weight constraints have very different scales (k is small). In exact arithmetic the
    stacked solution does not depend on the weights, but with a float32 gradient, weighting both blocks
    equally keeps the gradient constraints from being drowned by the (propagated) weight-constraint error.
    """
    return balance_weight(gram.shape[0], float(torch.diagonal(gram).sum()))


INVERTER_REGISTRY: dict[type[nn.Module], type[LayerInverter]] = {}


def register_inverter(layer_type: type[nn.Module]) -> Callable[[type[LayerInverter]], type[LayerInverter]]:
    """Class decorator: register the constraint system for ``layer_type`` (duplicates are refused)."""

    def wrap(cls: type[LayerInverter]) -> type[LayerInverter]:
        if layer_type in INVERTER_REGISTRY:
            raise ValueError(f"An inverter for {layer_type.__name__} is already registered.")
        INVERTER_REGISTRY[layer_type] = cls
        return cls

    return wrap


def make_inverter(layer: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> LayerInverter:
    """The registered inverter for ``layer`` or ``UnsupportedLayerError``."""
    cls = INVERTER_REGISTRY.get(type(layer))
    if cls is None:
        known = ", ".join(t.__name__ for t in INVERTER_REGISTRY)
        raise UnsupportedLayerError(f"No R-GAP inverter for {type(layer).__name__}; supported: {known}.")
    return cls(layer, input_shape, output_shape)


@register_inverter(nn.Linear)
class LinearInverter(LayerInverter):
    """``z = W x`` with ``dl/dW = k x^T``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight(x) @ x.reshape(-1)

    def input_vjp(self, k: torch.Tensor) -> torch.Tensor:
        return self.weight(k).T @ k.reshape(-1)

    def weight_gradient(self, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.outer(k.reshape(-1), x.reshape(-1))

    def gradient_matrix(self, k: torch.Tensor) -> torch.Tensor:
        return torch.kron(k.reshape(-1, 1), torch.eye(self.n, dtype=k.dtype, device=k.device))

    def weight_matrix(self, like: torch.Tensor) -> torch.Tensor:
        return self.weight(like)

    def gradient_normal(self, k: torch.Tensor, grad_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = k.reshape(-1)
        gram = torch.eye(self.n, dtype=k.dtype, device=k.device) * (k @ k)
        return gram, grad_w.reshape(k.numel(), self.n).T @ k

    def weight_gram(self, like: torch.Tensor) -> torch.Tensor:
        w = self.weight(like)
        return w.T @ w

    def normal_operator(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> NormalOperator:
        """``G v = wk |k|^2 v + wa W^T (W v)``; diagonal ``wk |k|^2 + wa colsum(W^2)``."""
        k = k.to(torch.float64).reshape(-1)
        alpha = float(k @ k)
        rhs = grad_w.to(k).reshape(k.numel(), self.n).T @ k
        if z is None:
            return NormalOperator(lambda v: alpha * v, rhs, torch.full_like(rhs, alpha))
        w = self.weight(k)
        col_sq = (w * w).sum(0)
        wk, wa = (balance_weight(self.n, self.n * alpha), balance_weight(self.n, float(col_sq.sum()))) \
            if balance else (1.0, 1.0)
        rhs = wk * rhs + wa * (w.T @ z.to(k).reshape(-1))
        small, out = torch.empty(w.shape[0], dtype=k.dtype, device=k.device), torch.empty_like(rhs)

        def matvec(v: torch.Tensor) -> torch.Tensor:  # into fixed buffers (see rgap.algorithm.matfree)
            torch.mv(w, v, out=small)
            torch.mv(w.T, small, out=out)
            return out.mul_(wa).add_(v, alpha=wk * alpha)

        return NormalOperator(matvec, rhs, wk * alpha + wa * col_sq, (wk, wa))

    def solve(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False,
        options: SolveOptions | None = None,
    ) -> Solution:
        """Woodbury identity when the layer is wide: (aI + W^T W)^-1 needs only an n_out x n_out solve.

        With ``options``, the n_out x n_out system counts against ``dense_limit`` too: a layer with more
        than ``dense_limit`` unknowns and outputs goes to the matrix-free path instead.
        """
        k = k.reshape(-1)
        alpha = k @ k
        w = self.weight(k)
        if z is None and float(alpha) > 0.0:
            # Gradient constraints alone: K^T K = |k|^2 I, so x = dW^T k / |k|^2 (no N x N matrix).
            x = grad_w.reshape(k.numel(), self.n).T @ k / alpha
            return Solution(x, self.n, self.n, "direct")
        too_big = options is not None and self.n > options.dense_limit and w.shape[0] > options.dense_limit
        structured = options is not None and options.solver == "structured"
        if structured and z is not None and float(alpha) == 0.0 and w.shape[0] < self.n and not too_big:
            return self._weight_constraints_min_norm(w, z)
        if z is None or float(alpha) == 0.0 or w.shape[0] >= self.n or too_big:
            return super().solve(k, grad_w, z, balance, options)
        # Blocks weighted as in ``block_weight``: trace(K^T K) = n |k|^2 and trace(A^T A) = |W|_F^2.
        wk, wa = (1.0 / alpha, self.n / (w * w).sum()) if balance else (1.0, 1.0)
        a, w = wk * alpha, w * wa**0.5
        rhs = wk * (grad_w.reshape(k.numel(), self.n).T @ k) + wa**0.5 * (w.T @ z.reshape(-1))
        small = w @ w.T + a * torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        correction = w.T @ torch.linalg.solve(small, w @ rhs)
        return Solution((rhs - correction) / a, self.n, self.n, "woodbury")

    def _weight_constraints_min_norm(self, w: torch.Tensor, z: torch.Tensor) -> Solution:
        """``k = 0`` on a wide layer: ``G = wa W^T W`` has rank at most n_out < n. Its minimum-norm solution
        ``W^+ z`` and numerical rank (cut-off as ``pinv_solve``) from the n_out x n_out ``W W^T``."""
        lam, vecs = torch.linalg.eigh(w @ w.T)
        keep = lam > RCOND**2 * float(lam.max().clamp(min=0.0)) if lam.numel() else lam > 0
        lam, vecs = lam[keep], vecs[:, keep]
        x = w.T @ (vecs @ ((vecs.T @ z.reshape(-1)) / lam))
        return Solution(x, int(keep.sum()), self.n, "pinv")


@register_inverter(nn.Conv2d)
class Conv2dInverter(LayerInverter):
    """Bias-free zero-padded convolution with any stride; unknowns are the unpadded input pixels."""

    def __init__(self, layer: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
        super().__init__(layer, input_shape, output_shape)
        if len(self.input_shape) != 3:
            raise UnsupportedLayerError(f"Conv2d input must be (C, H, W), got {self.input_shape}.")
        self.stride = tuple(layer.stride)
        self.padding = tuple(layer.padding)
        self.kernel = tuple(layer.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.reshape(1, *self.input_shape), self.weight(x), stride=self.stride, padding=self.padding)
        return out[0]

    def input_vjp(self, k: torch.Tensor) -> torch.Tensor:
        k = k.reshape(1, *self.output_shape)
        out = torch.nn.grad.conv2d_input((1, *self.input_shape), self.weight(k), k, self.stride, self.padding)
        return out[0]

    def _fold(self, cols: torch.Tensor) -> torch.Tensor:
        """Adjoint of ``F.unfold``: sum patch columns [C*kh*kw, L] back onto the (unpadded) input, flat."""
        out = F.fold(cols.unsqueeze(0), self.input_shape[1:], self.kernel, padding=self.padding, stride=self.stride)
        return out.reshape(-1)

    def normal_operator(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False
    ) -> NormalOperator:
        """Matrix-free normal equations on patch matrices ``P = unfold(v)`` ([C*kh*kw, L]), see ``PatchProduct``.

        With ``Wm = W.reshape(F, C*kh*kw)`` and ``k`` as [F, L]: ``A v = Wm P``, ``K v = k P^T`` (= dl/dW) and
        both adjoints are ``fold`` of a patch matrix, so ``G v = fold(wa Wm^T (Wm P) + wk (P k^T) k)``.
        Diagonals: ``diag(A^T A) = fold(colsum(Wm^2) 1^T)``, ``diag(K^T K) = fold(1 |k_o|^2)``.
        """
        k = k.to(torch.float64)
        n_out, cols = self.output_shape[0], self.input_shape[0] * self.kernel[0] * self.kernel[1]
        kmat = k.reshape(n_out, -1)  # [F, L]
        gmat = grad_w.to(k).reshape(n_out, cols)
        diag_k = self._fold((kmat * kmat).sum(0).expand(cols, -1))
        rhs_cols = gmat.T @ kmat
        if z is None:
            product = PatchProduct(self.input_shape, self.kernel, self.stride, self.padding, None, kmat)
            return NormalOperator(product, self._fold(rhs_cols), diag_k)
        wmat = self.weight(k).reshape(n_out, cols)
        diag_a = self._fold((wmat * wmat).sum(0).unsqueeze(1).expand(-1, kmat.shape[1]))
        wk, wa = (balance_weight(self.n, float(diag_k.sum())), balance_weight(self.n, float(diag_a.sum()))) \
            if balance else (1.0, 1.0)
        product = PatchProduct(self.input_shape, self.kernel, self.stride, self.padding, wmat, wk**0.5 * kmat,
                               weight_scale=wa)
        rhs = self._fold(wk * rhs_cols + wa * (wmat.T @ z.to(k).reshape(n_out, -1)))
        return NormalOperator(product, rhs, wk * diag_k + wa * diag_a, (wk, wa))

    def solve(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False,
        options: SolveOptions | None = None,
    ) -> Solution:
        """As the base class; with ``options.solver == "structured"`` and more than ``STRUCTURED_MIN`` unknowns,
        the structured solve of ``rgap.algorithm.structured`` (falls back to the dense path when it cannot decide the
        rank of a layer small enough for it; dense layers then form ``B`` by ``gradient_block``'s scatter)."""
        if options is not None and options.solver == "structured":
            if self.n > STRUCTURED_MIN:
                solution = solve_conv(self, k, grad_w, z, balance, options)
                if solution is not None:
                    solution.x = solution.x.to(k.dtype)
                    return solution
            if self.n <= options.dense_limit:
                return solve_gram(*self.normal_equations(k, grad_w, z, balance, scatter_block=True))
        return super().solve(k, grad_w, z, balance, options)

    def _channel_block(self, k: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """dl/dW[f, c, :, :] for single-channel ``images`` [N, H, W]: a dilated correlation with ``k``."""
        ph, pw = self.padding
        padded = F.pad(images.unsqueeze(1), (pw, pw, ph, ph))
        kernels = k.reshape(self.output_shape).unsqueeze(1)  # [F, 1, Ho, Wo]
        out = F.conv2d(padded, kernels, dilation=self.stride)
        return out[:, :, : self.kernel[0], : self.kernel[1]]  # [N, F, kh, kw]

    def weight_gradient(self, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(self.input_shape)
        return self._channel_block(k, x).permute(1, 0, 2, 3)  # [F, C, kh, kw]

    def channel_matrix(self, k: torch.Tensor) -> torch.Tensor:
        """K0: the gradient-constraint block shared by every input channel, (F*kh*kw) x (H*W).

        Row ``(f, a, b)`` holds ``k[f]`` scattered onto the pixels that tap ``(a, b)`` reads (index arithmetic,
        no convolution of an identity basis).
        """
        _, h, w = self.input_shape
        n_out, taps = self.output_shape[0], self.kernel[0] * self.kernel[1]
        pixels = self._tap_pixels(k.device)  # [taps, L], h*w on the zero padding
        out = k.new_zeros(n_out, taps, h * w + 1)  # the last column collects the padding and is dropped
        kmat = k.reshape(n_out, 1, -1).expand(-1, taps, -1)
        out.scatter_(2, pixels.unsqueeze(0).expand(n_out, -1, -1), kmat)
        return out[:, :, : h * w].reshape(n_out * taps, h * w)

    def _tap_pixels(self, device: torch.device) -> torch.Tensor:
        """[kh*kw, L] int64: the unpadded pixel each tap reads at each output position (H*W on the padding)."""
        _, height, width = self.input_shape
        (ph, pw), (kh, kw) = self.padding, self.kernel
        hp, wp = height + 2 * ph, width + 2 * pw
        pixels = height * width
        remap = torch.full((hp, wp), float(pixels), dtype=torch.float64)
        remap[ph : ph + height, pw : pw + width] = torch.arange(pixels, dtype=torch.float64).reshape(height, width)
        return F.unfold(remap.reshape(1, 1, hp, wp), (kh, kw), stride=self.stride)[0].long().to(device)

    def channel_weight_grams(self, like: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """The channel-diagonal blocks ``(A^T A)_cc`` of ``weight_gram``: [C, H*W, H*W] (index arithmetic).

        With ``coefficients`` ([C]), only their combination ``sum_c coefficients[c] (A^T A)_cc``: [H*W, H*W].
        """
        channels, height, width = self.input_shape
        taps, pixels = self.kernel[0] * self.kernel[1], height * width
        weight = self.weight(like).reshape(self.layer.out_channels, channels, taps)
        patch_gram = torch.einsum("fct,fcu->tuc", weight, weight).reshape(taps * taps, channels)
        if coefficients is not None:
            patch_gram = patch_gram @ coefficients.to(patch_gram).reshape(channels, 1)
        patches = self._tap_pixels(torch.device("cpu")).T  # L x taps
        rows, cols = patches[:, :, None].expand(-1, -1, taps), patches[:, None, :].expand(-1, taps, -1)
        valid = ((rows < pixels) & (cols < pixels)).reshape(-1)
        flat = (rows * pixels + cols).reshape(-1)[valid].to(like.device)
        source = patch_gram.repeat(patches.shape[0], 1)[valid.to(like.device)]
        grams = torch.zeros(pixels * pixels, source.shape[1], dtype=like.dtype, device=like.device)
        grams.index_add_(0, flat, source)
        if coefficients is not None:
            return grams.reshape(pixels, pixels)
        return grams.T.reshape(channels, pixels, pixels)

    def channel_weight_traces(self, like: torch.Tensor) -> torch.Tensor:
        """trace((A^T A)_cc) for every input channel c: [C] (tap norms times the outputs that see a pixel)."""
        channels, height, width = self.input_shape
        taps, pixels = self.kernel[0] * self.kernel[1], height * width
        weight = self.weight(like).reshape(self.layer.out_channels, channels, taps)
        seen = (self._tap_pixels(like.device) < pixels).sum(1).to(like.dtype)  # outputs per tap inside the image
        return (weight * weight).sum(0) @ seen

    def gradient_matrix(self, k: torch.Tensor) -> torch.Tensor:
        channels, n_out, taps = self.input_shape[0], self.output_shape[0], self.kernel[0] * self.kernel[1]
        k0 = self.channel_matrix(k).reshape(n_out, taps, -1)
        eye = torch.eye(channels, dtype=k.dtype, device=k.device)
        return torch.einsum("ftp,cd->fctdp", k0, eye).reshape(n_out * channels * taps, self.n)

    def weight_matrix(self, like: torch.Tensor) -> torch.Tensor:
        return self._basis_columns(like).reshape(self.n, -1).T

    def _basis_columns(self, like: torch.Tensor) -> torch.Tensor:
        """A e_j for every unit input e_j: [N, F, Ho, Wo] (the rows of A^T)."""
        basis = torch.eye(self.n, dtype=like.dtype, device=like.device).reshape(self.n, *self.input_shape)
        return F.conv2d(basis, self.weight(like), stride=self.stride, padding=self.padding)

    def gradient_block(self, k: torch.Tensor, k0: torch.Tensor | None = None) -> torch.Tensor:
        """``B = K0^T K0`` [H*W, H*W], the gradient-constraint block every input channel shares (``k0``: the
        ``channel_matrix`` when already at hand).

        ``B[p(o, t), p(o', t)] += sum_f k[f, o] k[f, o']`` for every tap ``t`` (``p(o, t)``: the pixel tap ``t``
        reads at output ``o``): one ``L x L`` product of ``k`` scattered once per tap, instead of the
        ``(H W)^2 F kh kw`` product of ``K0``, when the scatter is cheaper (an index-add costs about
        ``SCATTER_COST`` multiply-adds).
        """
        _, height, width = self.input_shape
        pixels, n_out = height * width, self.output_shape[0]
        kmat = k.reshape(n_out, -1)  # [F, L]
        outputs = kmat.shape[1]
        if SCATTER_COST * outputs * outputs >= pixels * pixels * n_out:
            k0 = self.channel_matrix(k) if k0 is None else k0
            return k0.T @ k0
        products = kmat.T @ kmat
        products = (0.5 * (products + products.T)).reshape(-1)  # [L * L], exactly symmetric
        taps = self._tap_pixels(k.device)  # [kh*kw, L], H*W on the zero padding
        block = k.new_zeros((pixels + 1) * (pixels + 1))
        for tap in taps:
            block.index_add_(0, (tap.unsqueeze(1) * (pixels + 1) + tap.unsqueeze(0)).reshape(-1), products)
        return block.reshape(pixels + 1, pixels + 1)[:pixels, :pixels].contiguous()

    def _gradient_block(self, k: torch.Tensor, grad_w: torch.Tensor,
                        scatter_block: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K0^T K0 (the block every input channel shares; by ``gradient_block`` with ``scatter_block``, else the
        product of version 1) and K^T vec(grad_w)."""
        channels = self.input_shape[0]
        k0 = self.channel_matrix(k)
        g = grad_w.reshape(grad_w.shape[0], channels, -1).permute(0, 2, 1).reshape(k0.shape[0], channels)
        block = self.gradient_block(k, k0) if scatter_block else k0.T @ k0
        return block, (k0.T @ g).T.reshape(-1)

    def gradient_normal(self, k: torch.Tensor, grad_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        block, rhs = self._gradient_block(k, grad_w)
        return torch.block_diag(*([block] * self.input_shape[0])), rhs

    def weight_gram(self, like: torch.Tensor) -> torch.Tensor:
        """A^T A by index arithmetic: the sum over output positions of W^T W scattered onto each patch.

        With ``Wm = W.reshape(F, C*kh*kw)`` and ``P_o`` the patch of output position ``o`` in the padded
        input, ``A^T A = sum_o P_o^T (Wm^T Wm) P_o``. Every channel pair shares the spatial scatter pattern,
        so each scattered index adds a contiguous vector of C*C values. Padded rows/columns are dropped.
        """
        channels, height, width = self.input_shape
        (ph, pw), (kh, kw) = self.padding, self.kernel
        hp, wp = height + 2 * ph, width + 2 * pw
        taps, pixels = kh * kw, height * width
        weight = self.weight(like).reshape(self.layer.out_channels, channels, taps)
        # patch_gram[t, t', c, c'] = sum_f W[f, c, t] W[f, c', t']
        patch_gram = torch.einsum("fct,fdu->tucd", weight, weight).reshape(taps * taps, channels * channels)
        # Interior index of every padded position (-1 on the zero padding), read through each patch.
        remap = torch.full((hp, wp), -1.0, dtype=torch.float64)
        remap[ph : ph + height, pw : pw + width] = torch.arange(pixels, dtype=torch.float64).reshape(height, width)
        patches = F.unfold(remap.reshape(1, 1, hp, wp), (kh, kw), stride=self.stride)[0].T.long()  # L x taps
        rows, cols = patches[:, :, None].expand(-1, -1, taps), patches[:, None, :].expand(-1, taps, -1)
        valid = ((rows >= 0) & (cols >= 0)).reshape(-1).to(like.device)
        flat = (rows * pixels + cols).reshape(-1).to(like.device)[valid]
        source = patch_gram.repeat(patches.shape[0], 1)[valid]
        gram = torch.zeros(pixels * pixels, channels * channels, dtype=like.dtype, device=like.device)
        gram.index_add_(0, flat, source)
        return gram.reshape(pixels, pixels, channels, channels).permute(2, 0, 3, 1).reshape(self.n, self.n)

    def _weight_gram_copy(self, like: torch.Tensor) -> torch.Tensor:
        """A fresh copy of ``weight_gram``; for layers with at most ``CACHED_GRAM_LIMIT`` unknowns the Gram matrix
        itself is computed once per weights (``rgap.algorithm.weightcache``: it does not depend on the image)."""
        if self.n > CACHED_GRAM_LIMIT:
            return self.weight_gram(like)
        key = weightcache.weight_key(self.weight(like), "weight_gram", type(self).__name__, self.input_shape,
                                     self.output_shape,
                                     self.stride, self.padding, str(like.dtype), str(like.device))
        return weightcache.cached(key, lambda: self.weight_gram(like)).clone()

    def normal_equations(
        self, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None, balance: bool = False,
        scatter_block: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As the base class, adding the channel-block-diagonal K^T K in place (no block_diag copy);
        ``scatter_block``: see ``_gradient_block``."""
        if z is None:
            return self.gradient_normal(k, grad_w)
        block, rhs = self._gradient_block(k, grad_w, scatter_block)
        gram = self._weight_gram_copy(k)
        channels, pixels = self.input_shape[0], block.shape[0]
        wk, wa = 1.0, 1.0
        if balance:
            wk = block_weight(block)  # the full K^T K repeats this block on every channel: same mean eigenvalue
            wa = block_weight(gram)
            gram.mul_(wa)
        gram.view(channels, pixels, channels, pixels).diagonal(dim1=0, dim2=2).add_(wk * block.unsqueeze(-1))
        rhs = wk * rhs + wa * self.input_vjp(z.reshape(self.output_shape)).reshape(-1)
        return gram, rhs
