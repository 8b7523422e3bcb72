"""Preconditioners for CG on a Conv2d layer's normal equations ``G = wk I_C (x) B + wa A^T A`` (``rgap.structured``).

Each builder takes a :class:`rgap.structured.ConvSystem` and returns ``r -> M^-1 r`` for flat float64 ``r``:

* ``lowrank``: ``M = S^-1 + wk U Lam U^T`` with ``S`` the periodic Gram inverse of ``wa A^T A`` with every
  channel coupling (``rgap.circulant``, slightly shifted) and ``U Lam U^T = I (x) B`` restricted to B's range
  (``C r0`` directions), inverted by the Woodbury identity. For layers with few input channels.
* ``capacitance``: ``M = wk I (x) (B + delta I) + wa A^T A`` inverted exactly by the Woodbury identity over
  the weight constraints (an ``|z| x |z|`` capacitance matrix), ``delta`` a tiny shift that makes the
  gradient block invertible: ``M`` is ``G`` up to that shift, so CG needs a handful of iterations. For
  layers whose gradient block is singular (their conditioning then rests on ``A``) and whose ``|z|`` is small.
* ``shared``: channel blocks ``wk B + a_c Abar`` with one shared ``P x P`` matrix ``Abar`` (the mean of the
  channel-diagonal blocks of ``A^T A``, each normalised to unit mean eigenvalue) and ``a_c`` the mean
  eigenvalue of channel c's block: one generalised eigen-decomposition ``(B, Abar)`` diagonalises every block,
  so applying it is two products with a shared ``P x P`` matrix. Nearly as good as the exact channel blocks.
* ``torus``: the periodic Gram inverse of ``wa A^T A + g I``, ``g`` the mean eigenvalue of ``wk I (x) B``.
  For large images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from rgap.circulant import TorusGramInverse

if TYPE_CHECKING:
    from rgap.structured import ConvSystem

Preconditioner = Callable[[torch.Tensor], torch.Tensor]

#: ``lowrank`` when B's range over all channels has at most this many directions (C r0).
LOWRANK_LIMIT = 1024
#: ``shared`` / ``capacitance`` need P x P eigen-decompositions: at most this many pixels per channel.
SHARED_PIXELS = 2048
#: ``capacitance`` when forming its matrix costs at most this many multiply-adds (|z|^2 N).
CAPACITANCE_COST = 1.2e10
#: Shift of the gradient block in ``capacitance``, relative to its largest eigenvalue.
CAPACITANCE_SHIFT = 1e-8
#: Shift of the periodic Gram in ``lowrank``, relative to the mean eigenvalue of ``wa A^T A``.
TORUS_SHIFT = 1e-4
#: Shift of a singular ``Abar`` in ``shared``, relative to its mean eigenvalue.
SHARED_SHIFT = 1e-10
#: Vectors per batch when the ``lowrank`` capacitance matrix is formed.
_CHUNK = 64


def choose(channels: int, pixels: int, rank_b: int, outputs: int, block_singular: bool) -> str:
    """The preconditioner for a layer with ``C`` input channels of ``P`` pixels, ``rank B = r0`` and ``|z|`` outputs.

    ``lowrank`` if ``C r0 <= LOWRANK_LIMIT``; else, if ``P <= SHARED_PIXELS``, ``capacitance`` when B is
    singular and ``|z|^2 N <= CAPACITANCE_COST``, otherwise ``shared``; else ``torus``.
    """
    if channels * rank_b <= LOWRANK_LIMIT:
        return "lowrank"
    if pixels <= SHARED_PIXELS:
        if block_singular and float(outputs) ** 2 * channels * pixels <= CAPACITANCE_COST:
            return "capacitance"
        return "shared"
    return "torus"


def build(name: str, system: ConvSystem) -> Preconditioner:
    """The preconditioner ``name`` (a key of ``BUILDERS``) for ``system``."""
    return BUILDERS[name](system)


def _mean_weight_eigenvalue(system: ConvSystem) -> float:
    """Mean eigenvalue of ``wa A^T A``: (trace G - trace(wk I (x) B)) / N."""
    trace_k = system.wk * system.channels * float((system.k0 * system.k0).sum())
    return max((float(system.op.diagonal.sum()) - trace_k) / system.n, 1e-300)


def _torus(system: ConvSystem, gamma: float) -> TorusGramInverse:
    inv = system.inverter
    return TorusGramInverse(inv.weight(system.k), inv.input_shape, inv.stride, inv.padding, system.wa, gamma)


def torus(system: ConvSystem) -> Preconditioner:
    """Periodic Gram inverse of ``wa A^T A + g I``, ``g`` the mean eigenvalue of ``wk I (x) B``."""
    gamma = system.wk * float((system.k0 * system.k0).sum()) / system.pixels
    if gamma <= 0.0:
        gamma = TORUS_SHIFT * _mean_weight_eigenvalue(system)
    return _torus(system, gamma)


def lowrank(system: ConvSystem) -> Preconditioner:
    """``M^-1 r = S (r - U Cap^-1 U^T S r)`` with ``Cap = (wk Lam)^-1 + U^T S U`` (C r0 x C r0)."""
    channels, pixels = system.channels, system.pixels
    lam, basis = system.block_range()  # [r0], [P, r0]
    rank_b = int(lam.numel())
    periodic = _torus(system, TORUS_SHIFT * _mean_weight_eigenvalue(system))
    if rank_b == 0:
        return periodic
    # U^T S U, one input channel at a time: columns V1[:, j] placed in channel c.
    cap = torch.empty(channels * rank_b, channels * rank_b, dtype=torch.float64, device=basis.device)
    for c in range(channels):
        for start in range(0, rank_b, _CHUNK):
            stop = min(start + _CHUNK, rank_b)
            cols = basis.new_zeros(stop - start, channels, pixels)
            cols[:, c, :] = basis[:, start:stop].T
            image = periodic(cols.reshape(stop - start, -1)).reshape(stop - start, channels, pixels)
            cap[c * rank_b + start : c * rank_b + stop] = (image @ basis).reshape(stop - start, -1)
    cap = 0.5 * (cap + cap.T)
    cap.diagonal().add_((1.0 / (system.wk * lam)).repeat(channels))
    chol = torch.linalg.cholesky(cap)

    def apply(r: torch.Tensor) -> torch.Tensor:
        s = periodic(r)
        u = (s.reshape(channels, pixels) @ basis).reshape(-1, 1)
        w = torch.cholesky_solve(u, chol).reshape(channels, rank_b)
        return periodic(r - (w @ basis.T).reshape(-1))

    return apply


def shared(system: ConvSystem) -> Preconditioner:
    """``M_c = wk B + a_c Abar`` per channel through one generalised eigen-decomposition ``X^T B X = Lam``,
    ``X^T Abar X = I``: ``M_c^-1 = X (wk Lam + a_c)^-1 X^T``."""
    inv, channels, pixels = system.inverter, system.channels, system.pixels
    traces = inv.channel_weight_traces(system.k)  # trace((A^T A)_cc)
    safe = torch.where(traces > 0, traces, torch.ones_like(traces))
    abar = inv.channel_weight_grams(system.k, (pixels / channels) / safe)  # mean of unit-mean-eigenvalue blocks
    scale = system.wa * traces / pixels  # a_c
    abar.diagonal().add_(SHARED_SHIFT * float(abar.diagonal().mean()))
    chol = torch.linalg.cholesky(abar)
    block = system.k0.T @ system.k0
    half = torch.linalg.solve_triangular(chol, block, upper=False)  # L^-1 B
    lam, u = torch.linalg.eigh(torch.linalg.solve_triangular(chol, half.T, upper=False))  # L^-1 B L^-T
    x = torch.linalg.solve_triangular(chol.T, u, upper=True)  # L^-T U
    denominators = system.wk * lam.clamp(min=0.0).unsqueeze(0) + scale.unsqueeze(1)  # [C, P]
    inverse_denominators = 1.0 / denominators
    xt = x.T.contiguous()

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = (r.reshape(channels, pixels) @ x).mul_(inverse_denominators)
        return (y @ xt).reshape(-1)

    return apply


def capacitance(system: ConvSystem) -> Preconditioner:
    """``M = wk I (x) (B + delta I) + wa A^T A``, inverted by Woodbury over the |z| weight constraints:
    ``M^-1 = D^-1 - D^-1 A^T Cap^-1 A D^-1``, ``D = wk I (x) (B + delta I)``, ``Cap = I / wa + A D^-1 A^T``."""
    inv, channels, pixels = system.inverter, system.channels, system.pixels
    height, width = inv.input_shape[1:]
    lam, q = system.block_eigen()  # B = Q Lam Q^T
    d = system.wk * (lam.clamp(min=0.0) + CAPACITANCE_SHIFT * float(lam.max().clamp(min=0.0)))
    if float(d.min()) <= 0.0:
        d = d + float(d.max()) * CAPACITANCE_SHIFT + 1e-300
    weight = inv.weight(system.k)  # [F, C, kh, kw]
    n_out = weight.shape[0]
    kernels = weight.transpose(0, 1).reshape(channels * n_out, 1, *weight.shape[2:])
    images = q.T.reshape(pixels, 1, height, width)
    aq = torch.nn.functional.conv2d(images, kernels, stride=inv.stride, padding=inv.padding)  # [P, C F, Ho, Wo]
    aq = aq.reshape(pixels, channels, n_out, -1)  # A (Q e_j in channel c) = aq[j, c]
    x = (aq / d.sqrt().reshape(pixels, 1, 1, 1)).permute(2, 3, 1, 0).reshape(-1, channels * pixels)  # |z| x N
    cap = x @ x.T
    cap.diagonal().add_(1.0 / system.wa)
    chol = torch.linalg.cholesky(cap)
    inverse_d = (1.0 / d).unsqueeze(0)
    qt = q.T.contiguous()
    out_shape = inv.output_shape

    def d_inverse(v: torch.Tensor) -> torch.Tensor:
        return ((v.reshape(channels, pixels) @ q).mul_(inverse_d) @ qt).reshape(-1)

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = d_inverse(r)
        u = inv.forward(y.reshape(inv.input_shape)).reshape(-1, 1)
        w = torch.cholesky_solve(u, chol).reshape(out_shape)
        return y - d_inverse(inv.input_vjp(w).reshape(-1))

    return apply


BUILDERS: dict[str, Callable[[ConvSystem], Preconditioner]] = {
    "lowrank": lowrank, "capacitance": capacitance, "shared": shared, "torus": torus,
}
