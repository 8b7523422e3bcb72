"""Structured solves and numerical ranks of a Conv2d layer's R-GAP normal equations.

With ``P = H W`` pixels per input channel, the (balanced) normal equations of a convolution with ``C`` input
channels are ``G x = b``, ``G = wk I_C (x) B + wa A^T A``: ``B = K0^T K0`` (P x P) is the gradient-constraint
block that every input channel shares (``K0``: one row per kernel weight of one channel, ``F kh kw`` rows) and
``A`` the convolution. Neither part needs an N x N matrix (N = C P):

* **Solve**: conjugate gradients (``rgap.algorithm.matfree.conjugate_gradient``; products by ``normal_operator``, with
  the gradient term as ``(I (x) B) v`` when that is cheaper) preconditioned by one of the preconditioners of
  ``rgap.algorithm.preconditioners``, chosen from the layer's sizes. Where CG is not projected on a null space
  its search directions come from float32 products with float64 residual replacements (``LOWERED_PRODUCTS``):
  the stopping test holds for the float64 residual.
* **Rank** (:meth:`ConvSystem.null_space`), with the cut-off of ``rgap.algorithm.solvers`` (eigenvalues of ``G`` above
  ``RCOND^2 lambda_max(G)``), from the same blocks: ``G >= wk I (x) B``, so a full-rank ``B`` settles it;
  otherwise ``null(G) = null(I (x) B) cap null(A)`` is found in the ``C m0``-dimensional null space of
  ``I (x) B`` (``m0 = P - rank B``) from the reduced matrix ``N^T G N`` (Cholesky certificate, else inertia
  and inverse iteration); when that space is too large, ``G >= wa A^T A`` and a lower bound of
  ``lambda_min(A^T A)`` settles a full rank: from the periodic model when the layer has no border effects
  (``rgap.algorithm.circulant.border_free``), else from a Cholesky certificate of the dense ``A^T A - mu I`` (weights
  only; both computed once per weights and cached).
  A rank-deficient layer gets the minimum-norm solution: the CG solution minus its projection on ``null(G)``
  (method ``pinv``, as the dense eigen-solve).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rgap.algorithm import preconditioners, weightcache
from rgap.algorithm.circulant import border_free, periodic_lam_min
from rgap.algorithm.matfree import NormalOperator, conjugate_gradient, lanczos_cond
from rgap.algorithm.preconditioners import Preconditioner
from rgap.algorithm.solvers import RCOND, Solution, SolveOptions, cholesky_apply


class Conv2dInverter(Protocol):
    """What the structured solver reads of a conv layer's inverter (``rgap.algorithm.inverters.Conv2dInverter``
    implements it; a protocol, so that the inverter may call this module without an import cycle)."""

    layer: Any
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    n: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    def weight(self, like: torch.Tensor) -> torch.Tensor: ...
    def weight_gram(self, like: torch.Tensor) -> torch.Tensor: ...
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def input_vjp(self, k: torch.Tensor) -> torch.Tensor: ...
    def channel_matrix(self, k: torch.Tensor) -> torch.Tensor: ...
    def gradient_block(self, k: torch.Tensor, k0: torch.Tensor | None = None) -> torch.Tensor: ...
    def normal_operator(self, *args: Any, **kwargs: Any) -> NormalOperator: ...

#: Reduced rank problem ``N^T G N`` when null(I (x) B) has at most this many directions ...
REDUCED_LIMIT = 2048
#: ... and forming it costs at most this many multiply-adds, and B is at most this large (P x P eigen-solve).
REDUCED_COST = 4e9
REDUCED_PIXELS = 2048
#: ``_weight_gram_on`` takes the tap route only when its ``(taps m)^2`` pair matrix has at most this many entries.
TAP_PAIRS_LIMIT = 1 << 23
#: Eigenvalues of wk B within this factor above the rank cut-off are treated as candidates for the null space.
GAP = 1e4
#: Layers with at most this many unknowns are solved on one CPU thread (see ``solve_conv``).
SINGLE_THREAD_LIMIT = 20000
#: Power iterations for lambda_max(A^T A), which enters the rank cut-off.
POWER_ITERATIONS = 30
#: CG's search directions from float32 products (``PatchProduct.lowered``) with float64 residual replacements
#: (``conjugate_gradient``'s ``fast_matvec``) where CG is not projected on a null space.
LOWERED_PRODUCTS = True


@dataclass
class NullSpace:
    """Numerical null space of ``G``: ``rank`` and an orthonormal basis (N x (N - rank); None when full rank).

    ``route`` says how it was found: ``gradient-block`` (B has full rank), ``reduced`` (inertia and null vectors
    of ``N^T G N``), ``periodic weights`` (lower bound of lambda_min(A^T A) from the periodic model) or
    ``weights`` (Cholesky certificate of the dense ``A^T A``).
    """

    rank: int
    basis: torch.Tensor | None
    route: str


class ConvSystem:
    """The normal equations of one Conv2d layer at one ``(k, grad_w, z)``, in float64, with their structure."""

    def __init__(self, inverter: Conv2dInverter, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor,
                 balance: bool) -> None:
        self.inverter = inverter
        self.channels, height, width = inverter.input_shape
        self.pixels = height * width
        self.n = inverter.n
        k = k.to(torch.float64)
        self.k = k
        self.op: NormalOperator = inverter.normal_operator(k, grad_w, z, balance)
        self.wk, self.wa = self.op.weights
        self.k0 = inverter.channel_matrix(k)  # [r, P]
        self._block: torch.Tensor | None = None
        self.kmat = k.reshape(inverter.output_shape[0], -1)  # [F, L]
        n_out, taps = inverter.output_shape[0], inverter.kernel[0] * inverter.kernel[1]
        outputs = inverter.output_shape[1] * inverter.output_shape[2]
        if self.pixels <= 2 * taps * n_out * outputs / self.pixels:  # C P^2 <= 2 C taps F L
            self.op.matvec.use_channel_block(self.wk * self.block())
        self._lam_max: float | None = None
        self._range: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eig: tuple[torch.Tensor, torch.Tensor, bool] | None = None
        self._range_factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._lowered: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------ spectra
    def block(self) -> torch.Tensor:
        """``B = K0^T K0`` [P, P] (computed once; ``Conv2dInverter.gradient_block``)."""
        if self._block is None:
            self._block = self.inverter.gradient_block(self.k, self.k0)
        return self._block

    def lam_max(self) -> float:
        """An estimate of lambda_max(G) from above: ``wk lambda_max(B) + wa lambda_max(A^T A)`` (at most 2x high).

        ``lambda_max(A^T A)`` depends on the weights only (cached, ``weight_bounds``).
        """
        if self._lam_max is None:
            lam = self._spectrum()[0]
            lam_b = float(lam.max()) if lam.numel() else 0.0
            self._lam_max = self.wk * lam_b + self.wa * weight_bounds(self.inverter).lam_max
        return self._lam_max

    def cutoff(self) -> float:
        """Eigenvalues of G at or below this count as zero (as ``rgap.algorithm.solvers.pinv_solve``)."""
        return RCOND**2 * self.lam_max()

    def _spectrum(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Eigen-decomposition of the smaller of ``B = K0^T K0`` (``pixels=True``: vectors are B's) and
        ``K0 K0^T`` (``pixels=False``: left singular vectors of K0); same nonzero eigenvalues."""
        if self._eig is None:
            if self.pixels <= self.k0.shape[0]:
                lam, vecs = torch.linalg.eigh(self.block())
                self._eig = (lam, vecs, True)
            else:
                lam, vecs = torch.linalg.eigh(self.k0 @ self.k0.T)
                self._eig = (lam, vecs, False)
        return self._eig

    def block_eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and orthonormal eigenvectors [P, P] of B (P x P eigen-decomposition)."""
        lam, vecs, pixels = self._spectrum()
        if pixels:
            return lam, vecs
        return torch.linalg.eigh(self.block())

    def block_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues ``lam`` of B with ``wk lam`` above the cut-off and an orthonormal basis [P, r0] of their
        eigenvectors (B's numerical range)."""
        if self._range is None:
            lam, vecs = self.range_factors()
            self._range = (lam, vecs if self._spectrum()[2] else (self.k0.T @ vecs) / lam.sqrt())
        return self._range

    def range_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lam, vecs)`` of B's numerical range as the spectrum gives them: eigenvectors of B ([P, r0]) or of
        ``K0 K0^T`` ([r, r0], then B's are ``K0^T vecs / sqrt(lam)``)."""
        if self._range_factors is None:
            lam, vecs, _ = self._spectrum()
            keep = self.wk * lam > self.cutoff()
            lam, vecs = lam[keep], vecs[:, keep]
            pixels = self._spectrum()[2]
            self._range_factors = (lam, vecs, vecs if pixels else (vecs / lam.sqrt()).contiguous())
        return self._range_factors[:2]

    def to_range(self, v: torch.Tensor) -> torch.Tensor:
        """Coordinates in B's range basis, channel by channel: [..., C, P] -> [..., C, r0] (``V1^T v_c``).

        Through the sparse ``K0`` (``gradient_rows``) when B's eigenvectors are not formed (``P > r``)."""
        self.range_factors()
        scaled = self._in_dtype("range basis", self._range_factors[2], v.dtype)
        if self._eig[2]:
            return v @ scaled
        return self.gradient_rows(v) @ scaled

    def from_range(self, w: torch.Tensor) -> torch.Tensor:
        """The adjoint of ``to_range``: [..., C, r0] -> [..., C, P] (``V1 w_c``)."""
        self.range_factors()
        scaled = self._in_dtype("range basis", self._range_factors[2], w.dtype)
        if self._eig[2]:
            return w @ scaled.T
        return self.gradient_cols(w @ scaled.T)

    def _in_dtype(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``tensor`` in ``dtype`` (a float32 copy made once, for preconditioners applied in float32)."""
        if tensor.dtype == dtype:
            return tensor
        key = (name, dtype)
        if key not in self._lowered:
            self._lowered[key] = tensor.to(dtype)
        return self._lowered[key]

    def gradient_rows(self, v: torch.Tensor) -> torch.Tensor:
        """``K0 v_c`` for every channel image: [..., P] -> [..., r] (one correlation with ``k``, as dl/dW)."""
        inv = self.inverter
        height, width = inv.input_shape[1:]
        lead = v.shape[:-1]
        patches = torch.nn.functional.unfold(v.reshape(-1, 1, height, width), inv.kernel, padding=inv.padding,
                                             stride=inv.stride)  # [m, taps, L]
        rows = patches @ self._in_dtype("k", self.kmat, v.dtype).T  # [m, taps, F]
        return rows.transpose(1, 2).reshape(*lead, -1)

    def gradient_cols(self, y: torch.Tensor) -> torch.Tensor:
        """``K0^T y_c``: [..., r] -> [..., P] (the adjoint of ``gradient_rows``)."""
        inv = self.inverter
        height, width = inv.input_shape[1:]
        lead = y.shape[:-1]
        n_out = self.kmat.shape[0]
        cols = y.reshape(-1, n_out, y.shape[-1] // n_out).transpose(1, 2) @ self._in_dtype("k", self.kmat, y.dtype)
        images = torch.nn.functional.fold(cols, (height, width), inv.kernel, padding=inv.padding, stride=inv.stride)
        return images.reshape(*lead, -1)

    # ----------------------------------------------------------------------------------------- rank
    def null_space(self, allow_weight_certificate: bool) -> NullSpace | None:
        """The numerical null space of G from the structured blocks, or None when no cheap route decides it.

        ``allow_weight_certificate``: the dense ``A^T A`` of this layer may be formed (once per weights) to
        certify a full rank.
        """
        cut = self.cutoff()
        lam, _ = self.range_factors()
        rank_b = int(lam.numel())
        if rank_b == self.pixels:
            return NullSpace(self.n, None, "gradient-block")
        # Null-space candidates of B: eigenvalues of wk B up to GAP above the cut-off (numerically zero ones
        # are ~1e-16 of the largest, well separated in practice).
        m0 = self.pixels - int((self.wk * lam > GAP * cut).sum())
        reduced = self.channels * m0
        if self.pixels <= REDUCED_PIXELS and reduced <= REDUCED_LIMIT and float(reduced) * self.n * m0 <= REDUCED_COST:
            return self._reduced_null_space(cut)
        bounds = weight_bounds(self.inverter)
        if self.wa * bounds.periodic_bound(self.inverter) > cut:
            return NullSpace(self.n, None, "periodic weights")
        if self.wa * bounds.certified_lam_min(self.inverter, allow_weight_certificate) > cut:
            return NullSpace(self.n, None, "weights")
        return None

    def _reduced_null_space(self, cut: float) -> NullSpace:
        """null(G) inside null(I (x) B) from ``R = N^T G N`` (``N = I (x) N0``, N0: B's null vectors): a Cholesky
        factorisation of ``R - cut I`` certifies full rank; otherwise its inertia (LDL^T) counts the eigenvalues
        at or below the cut and shifted inverse iteration finds their eigenvectors."""
        lam_all, vecs = self.block_eigen()
        null = self.wk * lam_all <= GAP * cut
        n0, lam0 = vecs[:, null], lam_all[null]  # [P, m0]
        m0 = n0.shape[1]
        channels, (height, width) = self.channels, self.inverter.input_shape[1:]
        reduced = self.wa * self._weight_gram_on(n0.T.reshape(m0, 1, height, width))
        reduced = 0.5 * (reduced + reduced.T)
        reduced.diagonal().add_((self.wk * lam0.clamp(min=0.0)).repeat(channels))
        # A Cholesky factorisation of N^T G N - cut I exists iff every eigenvalue is above the cut: full rank.
        reduced.diagonal().sub_(cut)
        _, info = torch.linalg.cholesky_ex(reduced)
        if int(info) == 0:
            return NullSpace(self.n, None, "reduced")
        d = _negative_eigenvalues(reduced)  # Sylvester's inertia of N^T G N - cut I
        reduced.diagonal().add_(cut)
        if d == 0:
            return NullSpace(self.n, None, "reduced")
        y0 = _null_vectors(reduced, d, cut).reshape(channels, m0, d)
        basis = torch.einsum("pj,cjd->cpd", n0, y0).reshape(self.n, d)
        return NullSpace(self.n - d, basis, "reduced")

    @staticmethod
    def _tap_route_cheaper(channels: int, m: int, n_out: int, taps: int, outputs: int, pixels: int) -> bool:
        """Multiply-adds of ``_weight_gram_on``'s tap route against its conv route."""
        taps_cost = float(taps * m) ** 2 * outputs + float(taps * channels * m) ** 2
        conv_cost = 2.0 * channels * m * n_out * outputs * channels * taps + float(channels * m) ** 2 * pixels
        return taps_cost <= conv_cost

    def _weight_gram_on(self, images: torch.Tensor) -> torch.Tensor:
        """``Y^T A^T A Y`` for ``Y = I_C (x) V`` (``V``: the ``m`` single-channel ``images`` [m, 1, H, W] as
        columns): [C m, C m] with rows ``(c, j)``, by the cheaper of two routes.

        * taps: ``(A Y)^T (A Y)`` sums over outputs and kernel taps, so entry ``((c, j), (d, l))`` is
          ``sum_{t, u} Mw[t, u][c, d] Np[t, u][j, l]`` with ``Mw[t, u] = W[:, :, t]^T W[:, :, u]`` (weights only)
          and ``Np[t, u][j, l] = sum_o v_j[pixel of tap t at o] v_l[pixel of tap u at o]`` (image patches):
          one ``(taps^2, C^2) x (taps^2, m^2)`` product. Cheap when ``taps m`` is small against ``C^2 F``.
        * conv: ``A^T A`` applied to each of the ``C m`` columns (a convolution and its transpose), then ``V^T``.
        """
        inv = self.inverter
        weight = inv.weight(self.k)  # [F, C, kh, kw]
        n_out, channels, m = weight.shape[0], self.channels, images.shape[0]
        taps = weight.shape[2] * weight.shape[3]
        outputs = inv.output_shape[1] * inv.output_shape[2]
        cheaper = self._tap_route_cheaper(channels, m, n_out, taps, outputs, self.pixels)
        if cheaper and (taps * m) ** 2 <= TAP_PAIRS_LIMIT:
            flat = weight.reshape(n_out, channels * taps)
            mixing = (flat.T @ flat).reshape(channels, taps, channels, taps).permute(1, 3, 0, 2)
            patches = torch.nn.functional.unfold(images, inv.kernel, padding=inv.padding, stride=inv.stride)
            rows = patches.transpose(0, 1).reshape(taps * m, -1)  # [(t, j), L]
            pairs = (rows @ rows.T).reshape(taps, m, taps, m).permute(0, 2, 1, 3)  # [t, u, j, l]
            gram = mixing.reshape(taps * taps, channels * channels).T @ pairs.reshape(taps * taps, m * m)
            return gram.reshape(channels, channels, m, m).permute(0, 2, 1, 3).reshape(channels * m, channels * m)
        height, width = inv.input_shape[1:]
        kernels = weight.transpose(0, 1).reshape(channels * n_out, 1, *weight.shape[2:])
        out = torch.nn.functional.conv2d(images, kernels, stride=inv.stride, padding=inv.padding)  # A (v_j in c)
        out = out.reshape(m, channels, n_out, *out.shape[2:]).transpose(0, 1).reshape(channels * m, n_out,
                                                                                       *out.shape[2:])
        columns = torch.nn.grad.conv2d_input((channels * m, channels, height, width), weight, out, inv.stride,
                                             inv.padding)  # A^T A (v_j in channel c), one per batch entry
        basis = images.reshape(m, -1).T  # [P, m]
        return (columns.reshape(channels * m, channels, -1) @ basis).reshape(channels * m, -1)

    # -------------------------------------------------------------------------------- preconditioners
    def preconditioner(self, float32: bool = False) -> tuple[str, Preconditioner]:
        """``(name, apply)``: the preconditioner of ``rgap.algorithm.preconditioners`` chosen for this layer's sizes
        (``float32``: it may be applied in float32, see ``preconditioners.build``)."""
        rank_b = int(self.range_factors()[0].numel())
        outputs = int(torch.Size(self.inverter.output_shape).numel())
        taps = self.inverter.kernel[0] * self.inverter.kernel[1]
        name = preconditioners.choose(self.channels, self.pixels, rank_b, outputs, taps, rank_b < self.pixels)
        return name, preconditioners.build(name, self, float32=float32)

    def solve(self, options: SolveOptions, null: NullSpace | None) -> Solution:
        """CG with the chosen preconditioner; projected on ``null``'s complement when it has a basis, else with
        float32 products for the search directions (``LOWERED_PRODUCTS``, ``PatchProduct.lowered``)."""
        basis = null.basis if null is not None else None
        name, apply = self.preconditioner(float32=basis is None)  # not under a null-space projection
        if basis is not None:  # keep CG in range(G): the preconditioner projected on null(G)'s complement
            plain = apply

            def apply(r: torch.Tensor) -> torch.Tensor:
                y = plain(r - basis @ (basis.T @ r))
                return y - basis @ (basis.T @ y)

        lowered = getattr(self.op.matvec, "lowered", None) if basis is None and LOWERED_PRODUCTS else None
        result = conjugate_gradient(self.op.matvec, self.op.rhs, None, options.cg_tol, options.cg_maxiter,
                                    precondition=apply, fast_matvec=None if lowered is None else lowered())
        x = result.x
        if basis is not None:
            x = x - basis @ (basis.T @ x)
        bnorm = float(torch.linalg.vector_norm(self.op.rhs))
        residual = float(torch.linalg.vector_norm(self.op.rhs - self.op.matvec(x))) / bnorm if bnorm > 0 else 0.0
        rank = null.rank if null is not None else self.n
        method = "pinv" if rank < self.n else "cg"
        return Solution(x, rank, self.n, method, rank_computed=null is not None, iterations=result.iterations,
                        residual=residual, cond=lanczos_cond(result.alphas, result.betas),
                        converged=result.converged, preconditioner=name)


def _negative_eigenvalues(matrix: torch.Tensor) -> int:
    """Number of negative eigenvalues of a symmetric matrix from its LDL^T (Bunch-Kaufman) factorisation
    (Sylvester's law of inertia: D has as many, counted over its 1 x 1 and 2 x 2 blocks)."""
    ld, pivots, info = torch.linalg.ldl_factor_ex(matrix)
    if int(info) < 0:  # pragma: no cover - invalid input to LAPACK
        return int((torch.linalg.eigvalsh(matrix) < 0).sum())
    diag, off, pivots = ld.diagonal().tolist(), ld.diagonal(-1).tolist(), pivots.tolist()
    count, k = 0, 0
    while k < len(pivots):
        if pivots[k] < 0:  # a 2 x 2 block at (k, k + 1)
            a, b, c = diag[k], off[k], diag[k + 1]
            det = a * c - b * b
            count += 1 if det < 0 else (2 if det > 0 and a + c < 0 else 0)
            k += 2
        else:
            count += diag[k] < 0
            k += 1
    return count


def _null_vectors(matrix: torch.Tensor, count: int, cut: float) -> torch.Tensor:
    """Orthonormal basis of the eigenspace of the ``count`` eigenvalues at or below ``cut`` of a PSD ``matrix``.

    Shifted inverse subspace iteration (``(matrix + sigma I)^-1`` damps the other eigenvectors by ``sigma`` over
    their eigenvalue per step); accepted when every Ritz value is at or below ``cut``, otherwise (no clear
    gap at the cut) a full eigen-decomposition gives them.
    """
    sigma = max(cut, 1e-12 * float(matrix.diagonal().max()))
    shifted = matrix.clone()
    shifted.diagonal().add_(sigma)
    chol, info = torch.linalg.cholesky_ex(shifted)
    if int(info) == 0:
        gen = torch.Generator().manual_seed(0)
        block = torch.randn(matrix.shape[0], count, generator=gen, dtype=matrix.dtype).to(matrix.device)
        for _ in range(3):
            block = torch.linalg.qr(cholesky_apply(block, chol))[0]
        ritz = torch.linalg.eigvalsh(block.T @ matrix @ block)
        if float(ritz.max()) <= cut:
            return block
    return torch.linalg.eigh(matrix)[1][:, :count]


# ---------------------------------------------------------------------------------------- weight bounds
@dataclass
class WeightBounds:
    """Spectral bounds of ``A^T A`` of one layer, which depend on its weights and geometry only.

    ``lam_max``: lambda_max(A^T A) by power iteration (slightly low at worst; ``lam_max`` of ``ConvSystem``
    adds the gradient block's, which more than covers it). ``periodic``: a lower bound of lambda_min(A^T A) from
    the periodic model (``periodic_bound``), computed on first use. ``dense``: a certified lower bound from the
    dense ``A^T A`` (``certified_lam_min``), computed on first use.
    """

    lam_max: float
    periodic: float | None = None
    dense: float | None = None

    def periodic_bound(self, inverter: Conv2dInverter) -> float:
        """lambda_min of the periodic model (``rgap.algorithm.circulant.periodic_lam_min``, clipped at 0) when
        the torus adds no output window inside the image (``border_free``: ``A^T A`` is then a principal
        submatrix of the periodic Gram), else 0. Computed on first use only: one eigen-decomposition per Fourier
        block (CNN6-W conv5 at 128 px: 180 blocks of 192 x 192), which layers whose gradient block alone
        settles the rank never need."""
        if self.periodic is None:
            self.periodic = 0.0
            if border_free(inverter.input_shape, inverter.kernel, inverter.stride, inverter.padding):
                self.periodic = max(periodic_lam_min(_float64_weight(inverter), inverter.input_shape,
                                                     inverter.stride, inverter.padding), 0.0)
        return self.periodic

    def certified_lam_min(self, inverter: Conv2dInverter, allow_dense: bool) -> float:
        """The best lower bound of lambda_min(A^T A) at hand (0 if none).

        The dense one (only with ``allow_dense``, and only when the periodic one is 0) forms A^T A once,
        estimates lambda_min by inverse iteration on its Cholesky factor and certifies half of it by a Cholesky
        factorisation of ``A^T A - mu I`` (which exists only if lambda_min > mu).
        """
        periodic = self.periodic_bound(inverter)
        if periodic > 0.0 or not allow_dense:
            return periodic
        if self.dense is None:
            gram = inverter.weight_gram(_float64_weight(inverter))
            bound = 0.0
            chol, info = torch.linalg.cholesky_ex(gram)
            if int(info) == 0:
                gen = torch.Generator().manual_seed(0)
                v = torch.randn(gram.shape[0], 1, generator=gen, dtype=torch.float64).to(gram.device)
                estimate = 0.0
                for _ in range(8):
                    v = cholesky_apply(v, chol)
                    v /= torch.linalg.vector_norm(v)
                    estimate = float(v.T @ gram @ v)
                del chol
                for fraction in (0.5, 0.05):
                    mu = fraction * estimate
                    gram.diagonal().sub_(mu)
                    _, info = torch.linalg.cholesky_ex(gram)
                    gram.diagonal().add_(mu)
                    if int(info) == 0 and mu > 0:
                        bound = mu
                        break
            self.dense = bound
        return self.dense


def _float64_weight(inverter: Conv2dInverter) -> torch.Tensor:
    """The inverter's weight (``inverter.weight``) in float64 on the layer's device."""
    return inverter.weight(torch.empty(0, dtype=torch.float64, device=inverter.layer.weight.device))


def weight_bounds(inverter: Conv2dInverter) -> WeightBounds:
    """The ``WeightBounds`` of ``inverter``'s layer, cached per weights and geometry
    (``rgap.algorithm.weightcache``)."""
    weight = _float64_weight(inverter)  # what the inverter uses (a wrapper may fold other layers into it)
    key = weightcache.weight_key(weight, "bounds", type(inverter).__name__, inverter.input_shape,
                                 inverter.output_shape, inverter.stride, inverter.padding)
    return weightcache.cached(key, lambda: _power_bounds(inverter))


def _power_bounds(inverter: Conv2dInverter) -> WeightBounds:
    """lambda_max(A^T A) by power iteration from a seeded start (the lower bounds of lambda_min come later, when
    asked for)."""
    like = _float64_weight(inverter)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(inverter.input_shape, generator=gen, dtype=torch.float64).to(like.device)
    v /= torch.linalg.vector_norm(v)
    value = 0.0
    for _ in range(POWER_ITERATIONS):
        w = inverter.input_vjp(inverter.forward(v))
        value = float((v * w).sum())
        norm = torch.linalg.vector_norm(w)
        if float(norm) == 0.0:
            break
        v = w / norm
    return WeightBounds(lam_max=value)


# ------------------------------------------------------------------------------------------- entry points
def solve_conv(inverter: Conv2dInverter, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None,
               balance: bool, options: SolveOptions) -> Solution | None:
    """Structured solve of one Conv2d layer; None when its rank cannot be decided cheaply and the layer is
    small enough for the dense path (the caller then solves densely).

    Layers with at most ``SINGLE_THREAD_LIMIT`` unknowns are solved on one CPU thread: their CG steps are
    hundreds of operations on a few thousand numbers, which intra-op threads only slow down.
    """
    with threads(1 if inverter.n <= SINGLE_THREAD_LIMIT and k.device.type == "cpu" else None):
        if z is None:
            return _gradient_only(inverter, k, grad_w)
        system = ConvSystem(inverter, k, grad_w, z, balance)
        small = inverter.n <= options.dense_limit
        null = system.null_space(allow_weight_certificate=small)
        if null is None and small:
            return None
        return system.solve(options, null)


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (unchanged when None), restoring the setting."""
    if count is None or count == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def conv_rank(inverter: Conv2dInverter, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor | None,
              balance: bool = False, allow_weight_certificate: bool = True) -> NullSpace | None:
    """Numerical rank (and null space) of the layer's unweighted (or balanced) normal equations, or None."""
    if z is None:
        system = _GradientOnly(inverter, k)
        return NullSpace(system.rank, None, "gradient-block")
    return ConvSystem(inverter, k, grad_w, z, balance).null_space(allow_weight_certificate)


class _GradientOnly:
    """``G = I (x) B`` (gradient constraints alone): minimum-norm solution channel by channel."""

    def __init__(self, inverter: Conv2dInverter, k: torch.Tensor) -> None:
        k = k.to(torch.float64)
        k0 = inverter.channel_matrix(k)
        channels = inverter.input_shape[0]
        pixels = k0.shape[1]
        if pixels <= k0.shape[0]:
            lam, vecs = torch.linalg.eigh(k0.T @ k0)
        else:
            lam, u = torch.linalg.eigh(k0 @ k0.T)
            safe = lam.clamp(min=1e-300)
            vecs = (k0.T @ u) / safe.sqrt()
        keep = lam > RCOND**2 * float(lam.max().clamp(min=0.0)) if lam.numel() else lam > 0
        self.lam, self.vecs, self.k0 = lam[keep], vecs[:, keep], k0
        self.rank = channels * int(keep.sum())
        self.channels = channels


def _gradient_only(inverter: Conv2dInverter, k: torch.Tensor, grad_w: torch.Tensor) -> Solution:
    system = _GradientOnly(inverter, k)
    channels = system.channels
    gmat = grad_w.to(torch.float64).reshape(grad_w.shape[0], channels, -1).permute(1, 0, 2).reshape(channels, -1)
    rhs = gmat @ system.k0  # [C, P]: K^T g per channel
    x = ((rhs @ system.vecs) / system.lam) @ system.vecs.T
    method = "direct" if system.rank == inverter.n else "pinv"
    return Solution(x.reshape(-1).to(k.dtype), system.rank, inverter.n, method)


__all__ = ["ConvSystem", "NullSpace", "WeightBounds", "conv_rank", "solve_conv", "threads", "weight_bounds"]
