"""Dense symmetric positive semi-definite solves for R-GAP's normal equations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

#: Singular values of the stacked system below ``RCOND * sigma_max`` count as zero (rank deficiency).
RCOND = 1e-7
#: How layers are solved (``SolveOptions.solver``).
SOLVERS = ("structured", "generic")
#: With ``solver="structured"``, Conv2d layers with at most this many unknowns stay on the dense path (faster there).
STRUCTURED_MIN = 1024


@dataclass(frozen=True)
class SolveOptions:
    """How a layer's normal equations are solved.

    Layers with at most ``dense_limit`` unknowns form the dense Gram matrix (Cholesky, or a minimum-norm
    eigen-solve when rank-deficient); larger layers are solved matrix-free by conjugate gradients on the
    normal equations to a relative residual ``cg_tol`` (at most ``cg_maxiter`` iterations), see
    ``rgap.algorithm.matfree``. ``preconditioner`` is ``"jacobi"`` (diagonal of the normal matrix) or ``"none"``; only
    ``"none"`` returns the minimum-norm solution of a rank-deficient layer (as the dense path does).

    ``solver="structured"`` sends Conv2d layers with more than ``STRUCTURED_MIN`` unknowns, at any size, to
    ``rgap.algorithm.structured`` instead: CG preconditioned by the layer's channel and convolution structure (to
    ``cg_tol``, at most ``cg_maxiter`` iterations), with the numerical rank and the minimum-norm solution of a
    rank-deficient layer from structured factorisations; ``"generic"`` is the path described above.
    """

    dense_limit: int = 4096
    cg_tol: float = 1e-12
    cg_maxiter: int = 20000
    preconditioner: str = "none"
    solver: str = "generic"


@dataclass
class Solution:
    """Result of one layer solve: ``x`` plus how it was obtained.

    ``method`` is "cholesky", "woodbury", "direct", "pinv" (minimum-norm solution of a rank-deficient system) or "cg"
    (matrix-free conjugate gradients, ``rgap.algorithm.matfree``). Plain CG does not compute the rank: it reports
    ``rank = n`` with ``rank_computed = False``; the structured path (``rgap.algorithm.structured``, which names its
    ``preconditioner``) computes it where a structured route exists. CG reports ``iterations``, the final relative
    residual ``|b - G x| / |b|`` of the normal equations (recomputed, not CG's recursive estimate), ``converged``
    (False: ``cg_maxiter`` was reached or CG broke down, and ``x`` is the last iterate) and ``cond``, the condition
    number of the (preconditioned) normal matrix estimated from CG's Lanczos tridiagonal matrix (a lower bound).
    """

    x: torch.Tensor
    rank: int
    n: int
    method: str
    rank_computed: bool = True
    iterations: int | None = None
    residual: float | None = None
    cond: float | None = None
    converged: bool | None = None
    preconditioner: str | None = None


def singular_values_from_gram(gram: torch.Tensor) -> np.ndarray:
    """Singular values of the stacked system whose Gram matrix is ``gram``, in descending order."""
    eig = scipy.linalg.eigh(gram.detach().cpu().double().numpy(), eigvals_only=True, driver="evd")
    return np.sqrt(np.clip(eig[::-1], 0.0, None))


def numerical_rank(singular_values: np.ndarray, rcond: float = RCOND) -> int:
    """Number of singular values above ``rcond`` times the largest."""
    if singular_values.size == 0 or singular_values[0] == 0:
        return 0
    return int((singular_values > rcond * singular_values[0]).sum())


def cholesky_apply(rhs: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^-1 rhs`` for the lower Cholesky factor ``L`` ([n, n]) and ``rhs`` [n, m], by two triangular solves.

    What ``torch.cholesky_solve`` computes, without the copy of the factor that it makes on every call (a
    3,120 x 3,120 factor: 24 ms against 1.9 ms per solve); for factors that serve every step of a CG run.
    """
    half = torch.linalg.solve_triangular(factor, rhs, upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True)


def solve_gram(gram: torch.Tensor, rhs: torch.Tensor, rcond: float = RCOND) -> Solution:
    """Least-squares solution from the normal equations ``gram x = rhs``.

    Cholesky when the system is well determined; otherwise (Cholesky fails, or a pivot is below
    ``rcond^2`` of the largest, i.e. the stacked system has a singular value below ``rcond`` relative)
    the minimum-norm solution from an eigendecomposition, with the numerical rank.
    """
    n = gram.shape[0]
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        pivots = torch.diagonal(chol) ** 2
        if float(pivots.min()) > rcond**2 * float(pivots.max()):
            x = torch.cholesky_solve(rhs.reshape(-1, 1), chol).reshape(-1)
            return Solution(x, n, n, "cholesky")
    return pinv_solve(gram, rhs, rcond)


def pinv_solve(gram: torch.Tensor, rhs: torch.Tensor, rcond: float = RCOND) -> Solution:
    """Minimum-norm solution through the eigendecomposition of ``gram`` (slow path for rank deficiency)."""
    eig, vecs = scipy.linalg.eigh(gram.detach().cpu().double().numpy(), driver="evd")
    sigma_max = np.sqrt(max(eig.max(), 0.0))
    keep = eig > (rcond * sigma_max) ** 2
    coeff = vecs[:, keep].T @ rhs.detach().cpu().double().numpy()
    x = vecs[:, keep] @ (coeff / eig[keep])
    return Solution(torch.from_numpy(x).to(rhs), int(keep.sum()), gram.shape[0], "pinv")
