"""Matrix-free solves of R-GAP's normal equations for layers too large for a dense Gram matrix.

A layer's normal equations ``G x = b`` with ``G = wk K^T K + wa A^T A`` and ``b = wk K^T g + wa A^T z``
are described by a :class:`NormalOperator`: the product ``v -> G v``, the right-hand side, the diagonal of
``G`` (Jacobi preconditioner) and the block weights (``N / trace`` of each block, as ``block_weight``,
with the traces summed from the diagonals).
The layer inverters build it from their own structure (``rgap.algorithm.inverters``) without any N x N matrix;
:func:`solve_normal` runs (preconditioned) conjugate gradients on it and reports the iteration count, the
final residual and a condition-number estimate from the Lanczos coefficients of the CG run.

Everything runs in float64 on the device of the inputs, except that the structured solver
(``rgap.algorithm.structured``) may take CG's search directions from a float32 copy of the product
(``PatchProduct.lowered``, about half the time) with float64 residual replacements (``conjugate_gradient``'s
``fast_matvec``); the loop uses torch only (one host sync per iteration for the stopping test). Products and CG
updates write into buffers allocated once per solve: thousands of iterations that each allocate and free
megabyte-sized temporaries fragment glibc's heap (measured: peak RSS of a 128 px CNN6 reconstruction anywhere
from 2 to 18 GB instead of under 1 GB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from rgap.algorithm.solvers import Solution, SolveOptions

PRECONDITIONERS = ("jacobi", "none")
#: Reliable-update CG (``conjugate_gradient`` with ``fast_matvec``) replaces the residual by the true one whenever
#: the recursive residual has fallen by this factor since the last replacement (or grown by its inverse) ...
RELIABLE_FACTOR = 0.1
#: ... and gives the inexact products up when the true residual fell by less than this factor between two
#: replacements.
STALL_FACTOR = 0.5
#: ``PatchProduct`` uses ``F.unfold`` / ``F.fold`` for patch matrices of at most this many bytes.
COMPACT_BYTES = 1 << 20


@dataclass
class NormalOperator:
    """``G = wk K^T K + wa A^T A`` of one layer, matrix-free: ``matvec(v) = G v`` for flat ``v`` of length n.

    ``matvec`` may return a buffer that its next call overwrites (use or copy the result before calling again).

    ``weights`` are the block weights ``(wk, wa)`` (``(1, 1)`` without balancing; ``wa`` unused without
    weight constraints).
    """

    matvec: Callable[[torch.Tensor], torch.Tensor]
    rhs: torch.Tensor
    diagonal: torch.Tensor
    weights: tuple[float, float] = (1.0, 1.0)

    @property
    def n(self) -> int:
        return int(self.rhs.numel())


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`; ``alphas``/``betas`` are CG's step coefficients."""

    x: torch.Tensor
    iterations: int
    converged: bool
    alphas: list[float]
    betas: list[float]


class PatchProduct:
    """``v -> fold(wa Wm^T Wm P + (P R^T) R) + (I (x) Bc) v`` with ``P = unfold(v)``, allocation-free.

    ``P`` is the [C*kh*kw, L] patch matrix of the zero-padded input (``F.unfold``'s layout), ``Wm`` the
    [F, C*kh*kw] weight matrix (or None), scaled by ``weight_scale`` (``wa``), ``R`` an [F, L] matrix (or None)
    and ``Bc`` a [P, P] block applied to every input channel (or None, set by ``use_channel_block``); ``fold``
    is the adjoint of ``unfold`` restricted to the unpadded input. The weight term is one product by the
    precomputed ``wa Wm^T Wm`` or two by ``Wm``, whichever is cheaper. For large layers im2col is a strided
    copy into a fixed buffer and col2im one in-place strided add per kernel tap, so repeated products allocate
    nothing large; layers whose patch matrix is at most ``COMPACT_BYTES`` use ``F.unfold`` / ``F.fold``
    (faster there, and their small temporaries do not fragment the heap).
    """

    def __init__(self, input_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], weight: torch.Tensor | None, right: torch.Tensor | None,
                 weight_scale: float = 1.0) -> None:
        channels, height, width = input_shape
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        hp, wp = height + 2 * ph, width + 2 * pw
        self.ho, self.wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        self.kernel, self.stride, self.padding, self.input_shape = kernel, stride, padding, (channels, height, width)
        self._factors = (weight, right, weight_scale)
        like = right if right is not None else weight
        dtype, device = like.dtype, like.device
        cols = channels * kh * kw
        self.padded = torch.zeros(channels, hp, wp, dtype=dtype, device=device)
        self.interior = self.padded[:, ph : ph + height, pw : pw + width]
        self.windows = self.padded.as_strided(
            (channels, kh, kw, self.ho, self.wo), (hp * wp, wp, 1, sh * wp, sw), self.padded.storage_offset()
        )
        self.patches = torch.empty(cols, self.ho * self.wo, dtype=dtype, device=device)
        self.cols = torch.empty_like(self.patches)
        self.out_padded = torch.zeros_like(self.padded)
        self.out_interior = self.out_padded[:, ph : ph + height, pw : pw + width]
        self.out = torch.empty(channels * height * width, dtype=dtype, device=device)
        self.right, self.channel_block = right, None
        self.small = None if right is None else torch.empty(cols, right.shape[0], dtype=dtype, device=device)
        self.patch_matrix = self.weight = self.outputs = None
        if weight is not None:
            if cols <= 2 * weight.shape[0]:  # (C kh kw)^2 L <= 2 F (C kh kw) L
                self.patch_matrix = weight_scale * (weight.T @ weight)
            else:
                self.weight = weight
                self.scaled_weight_t = weight_scale * weight.T
                self.outputs = torch.empty(weight.shape[0], self.ho * self.wo, dtype=dtype, device=device)

    def use_channel_block(self, block: torch.Tensor) -> None:
        """Apply the gradient term as ``(I (x) block) v`` on the unpadded input instead of ``(P R^T) R``."""
        self.channel_block, self.right, self.small = block, None, None

    def lowered(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same product computed in float32 for float64 vectors (``conjugate_gradient``'s ``fast_matvec``).

        Its result carries a relative error of about 1e-7 and is a buffer that the next call overwrites.
        """
        weight, right, scale = self._factors
        low = PatchProduct(self.input_shape, self.kernel, self.stride, self.padding, _single(weight), _single(right),
                           scale)
        if self.channel_block is not None:
            low.use_channel_block(self.channel_block.to(torch.float32))
        result = torch.empty_like(self.out)

        def apply(v: torch.Tensor) -> torch.Tensor:
            return result.copy_(low(v.to(torch.float32)))

        return apply

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        channels, height, width = self.input_shape
        (kh, kw), (sh, sw) = self.kernel, self.stride
        compact = self.patches.numel() * self.patches.element_size() <= COMPACT_BYTES
        if compact:
            patches = F.unfold(v.reshape(1, channels, height, width), self.kernel, padding=self.padding,
                               stride=self.stride)[0]
        else:
            self.interior.copy_(v.reshape(channels, height, width))
            patches = self.patches
            patches.view(channels, kh, kw, self.ho, self.wo).copy_(self.windows)
        started = False
        if self.patch_matrix is not None:
            torch.mm(self.patch_matrix, patches, out=self.cols)
            started = True
        elif self.weight is not None:
            torch.mm(self.weight, patches, out=self.outputs)
            torch.mm(self.scaled_weight_t, self.outputs, out=self.cols)
            started = True
        if self.right is not None:
            torch.mm(patches, self.right.T, out=self.small)
            if started:
                self.cols.addmm_(self.small, self.right)
            else:
                torch.mm(self.small, self.right, out=self.cols)
                started = True
        out = self.out.view(channels, height * width)
        if started and compact:
            folded = F.fold(self.cols.unsqueeze(0), (height, width), self.kernel, padding=self.padding,
                            stride=self.stride)
            out.copy_(folded.reshape(channels, height * width))
        elif started:
            cols = self.cols.view(channels, kh, kw, self.ho, self.wo)
            self.out_padded.zero_()
            for i in range(kh):
                for j in range(kw):
                    rows = slice(i, i + sh * (self.ho - 1) + 1, sh)
                    self.out_padded[:, rows, j : j + sw * (self.wo - 1) + 1 : sw].add_(cols[:, i, j])
            self.out.view(channels, height, width).copy_(self.out_interior)
        if started and self.channel_block is not None:
            out.addmm_(v.reshape(channels, height * width), self.channel_block)
        elif not started:
            torch.mm(v.reshape(channels, height * width), self.channel_block, out=out)
        return self.out


def _single(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(torch.float32)


def balance_weight(n: int, trace: float) -> float:
    """``n / trace``: the block weight of ``rgap.algorithm.inverters.block_weight`` from the block's trace alone."""
    return n / trace if trace > 0 else 1.0


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                       inv_diag: torch.Tensor | None, tol: float, maxiter: int,
                       precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       fast_matvec: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CGResult:
    """Preconditioned CG for the symmetric positive semi-definite system ``G x = rhs`` from ``x = 0``.

    ``inv_diag`` multiplies the residual (diagonal preconditioner; None: plain CG); ``precondition``, when
    given instead, applies a symmetric positive definite preconditioner ``M^-1`` to it. Stops when the
    recursively updated residual satisfies ``|r| <= tol |rhs|``, after ``maxiter`` iterations, or on
    breakdown (``p^T G p <= 0``: the search direction lies in the null space). On a consistent singular
    system plain CG converges to the minimum-norm solution.

    ``fast_matvec``: a cheaper, inexact product (``PatchProduct.lowered``: float32) for the search directions,
    with *reliable updates* (residual replacement; van der Vorst and Ye, SIAM J. Sci. Comput. 22, 2000; Clark
    et al., Comput. Phys. Commun. 181, 2010): whenever the recursive residual has fallen by ``RELIABLE_FACTOR``
    since the last replacement, and before convergence is declared, it is replaced by the true residual
    ``rhs - matvec(x)``, so that ``converged`` then holds for the true residual (a recursive residual that has
    grown by ``1 / RELIABLE_FACTOR`` is replaced too). Vectors stay in ``rhs``'s dtype. When the inexact products
    stop helping (a breakdown, or a true residual that fell by less than ``STALL_FACTOR`` between replacements:
    the accuracy the inexact product can reach, or a diverging recursion), CG restarts from the current iterate
    with ``matvec`` and goes on as without ``fast_matvec``.
    """
    x = torch.zeros_like(rhs)
    bnorm = float(torch.linalg.vector_norm(rhs))
    if bnorm == 0.0:
        return CGResult(x, 0, True, [], [])
    if precondition is None and inv_diag is not None:
        scaled = torch.empty_like(rhs)  # one buffer (see the module docstring)

        def precondition(r: torch.Tensor) -> torch.Tensor:
            return torch.mul(r, inv_diag, out=scaled)

    product = matvec if fast_matvec is None else fast_matvec
    segments: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    r = rhs.clone()
    since = bnorm  # true residual norm at the last replacement (inexact products only)
    steps, converged, restart = 0, False, True
    while steps < maxiter:
        if restart:  # (re)start from x with the residual in r
            alphas: list[torch.Tensor] = []
            betas: list[torch.Tensor] = []
            segments.append((alphas, betas))
            zvec = r if precondition is None else precondition(r)
            p = zvec.clone()
            rz = torch.dot(r, zvec)
            restart = False
        q = product(p)
        pq = torch.dot(p, q)
        # A zero step on breakdown keeps the loop free of extra host syncs: one per iteration, below.
        alpha = torch.where(pq > 0, rz / pq, torch.zeros_like(pq))
        x.addcmul_(p, alpha)
        r.addcmul_(q, alpha, value=-1.0)
        pq_host, rnorm = torch.stack([pq, torch.linalg.vector_norm(r)]).tolist()
        inexact = product is not matvec
        if pq_host <= 0.0 and not inexact:
            break
        steps += 1
        if pq_host > 0.0:
            alphas.append(alpha)
        if inexact and (pq_host <= 0.0 or rnorm <= tol * bnorm or rnorm <= RELIABLE_FACTOR * since
                        or rnorm > since / RELIABLE_FACTOR):
            torch.sub(rhs, matvec(x), out=r)
            rnorm = float(torch.linalg.vector_norm(r))
            if rnorm <= tol * bnorm:
                converged = True
                break
            if pq_host <= 0.0 or rnorm > STALL_FACTOR * since:
                product, restart = matvec, True
                continue
            since = rnorm
        elif rnorm <= tol * bnorm:
            converged = True
            break
        zvec = r if precondition is None else precondition(r)
        rz_new = torch.dot(r, zvec)
        beta = rz_new / rz
        betas.append(beta)
        p.mul_(beta).add_(zvec)
        rz = rz_new
    alphas, betas = max(segments, key=lambda segment: len(segment[0]))  # one unbroken CG run for lanczos_cond
    return CGResult(x, steps, converged, _to_list(alphas), _to_list(betas))


def _to_list(values: list[torch.Tensor]) -> list[float]:
    """Host copies of scalar tensors (one transfer)."""
    return torch.stack(values).tolist() if values else []


def lanczos_cond(alphas: list[float], betas: list[float]) -> float:
    """Condition number of the (preconditioned) operator estimated from a CG run.

    CG's coefficients define the Lanczos tridiagonal matrix ``T`` (diagonal ``1/a_j + b_{j-1}/a_{j-1}``,
    off-diagonal ``sqrt(b_j)/a_j``) whose eigenvalues (Ritz values) approach the extreme eigenvalues of the
    operator from inside, so ``max/min`` Ritz value is a lower bound of the condition number (of the part of
    the spectrum the right-hand side excites). NaN without iterations.
    """
    m = len(alphas)
    if m == 0:
        return float("nan")
    if m == 1:
        return 1.0
    a = np.asarray(alphas, dtype=np.float64)
    b = np.asarray(betas[: m - 1], dtype=np.float64)
    diag = 1.0 / a
    diag[1:] += b / a[:-1]
    off = np.sqrt(np.clip(b, 0.0, None)) / a[:-1]
    low = scipy.linalg.eigvalsh_tridiagonal(diag, off, select="i", select_range=(0, 0))[0]
    high = scipy.linalg.eigvalsh_tridiagonal(diag, off, select="i", select_range=(m - 1, m - 1))[0]
    return float(high / low) if low > 0 else float("inf")


def solve_normal(op: NormalOperator, options: SolveOptions) -> Solution:
    """Solve ``G x = b`` of ``op`` by CG as ``options`` say; the returned ``Solution`` has method "cg".

    ``residual`` is recomputed as ``|b - G x| / |b|`` (one extra product). When CG stops without reaching
    ``cg_tol`` (iteration cap or breakdown) the last iterate is returned with ``converged=False``.
    """
    if options.preconditioner not in PRECONDITIONERS:
        raise ValueError(f"Unknown CG preconditioner {options.preconditioner!r}; choose from {PRECONDITIONERS}.")
    inv_diag = None
    if options.preconditioner == "jacobi":
        inv_diag = torch.where(op.diagonal > 0, 1.0 / op.diagonal, torch.zeros_like(op.diagonal))
    result = conjugate_gradient(op.matvec, op.rhs, inv_diag, options.cg_tol, options.cg_maxiter)
    bnorm = float(torch.linalg.vector_norm(op.rhs))
    residual = float(torch.linalg.vector_norm(op.rhs - op.matvec(result.x))) / bnorm if bnorm > 0 else 0.0
    return Solution(result.x, op.n, op.n, "cg", rank_computed=False, iterations=result.iterations,
                    residual=residual, cond=lanczos_cond(result.alphas, result.betas),
                    converged=result.converged)
