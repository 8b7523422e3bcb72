"""Preconditioners for CG on a Conv2d layer's normal equations ``G = wk I_C (x) B + wa A^T A``
(``rgap.algorithm.structured``).

Each builder takes a :class:`rgap.algorithm.structured.ConvSystem` and returns ``r -> M^-1 r`` for flat float64 ``r``:

* ``lowrank``: ``M = S^-1 + wk U Lam U^T`` with ``S`` the periodic Gram inverse of ``wa A^T A`` with every
  channel coupling (``rgap.algorithm.circulant``, slightly shifted) and ``U Lam U^T = I (x) B`` restricted to B's range
  (``C r0`` directions), inverted by the Woodbury identity (its ``C r0 x C r0`` matrix formed in float32). For
  layers with few input channels.
* ``capacitance``: ``M = wk I (x) (B + delta I) + wa A^T A`` inverted exactly by the Woodbury identity over
  the weight constraints (an ``|z| x |z|`` capacitance matrix), ``delta`` a tiny shift that makes the
  gradient block invertible: ``M`` is ``G`` up to that shift, so CG needs a handful of iterations. For
  layers whose gradient block is singular (their conditioning then rests on ``A``) and whose ``|z|`` is small.
* ``shared``: channel blocks ``wk B + a_c Abar`` with one shared ``P x P`` matrix ``Abar`` (the mean of the
  channel-diagonal blocks of ``A^T A``, each normalised to unit mean eigenvalue) and ``a_c`` the mean
  eigenvalue of channel c's block: one generalised eigen-decomposition ``(B, Abar)`` diagonalises every block,
  so applying it is two products with a shared ``P x P`` matrix. Nearly as good as the exact channel blocks.
* ``shared_torus``: ``shared`` with ``Abar`` replaced by its periodic model (``rgap.algorithm.circulant``) and ``B`` by
  the Woodbury identity over its ``F kh kw`` rows, so that nothing P x P is formed. For large images.
* ``jacobi``: the inverse diagonal of ``G``, for large layers that plain CG solves quickly anyway, and for small
  channel blocks, where ``shared``'s P x P products cost more than the CG steps they save.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from rgap.algorithm import weightcache
from rgap.algorithm.circulant import TorusGramInverse
from rgap.algorithm.solvers import cholesky_apply


class ConvSystem(Protocol):
    """What a preconditioner reads of a conv layer's system (``rgap.algorithm.structured.ConvSystem`` implements
    it; a protocol, so that the structured solver may build preconditioners without an import cycle)."""

    inverter: Any
    op: Any
    k: torch.Tensor
    n: int
    channels: int
    pixels: int
    wk: float
    wa: float

    def block(self) -> torch.Tensor: ...
    def block_eigen(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def block_range(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def range_factors(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def to_range(self, v: torch.Tensor) -> torch.Tensor: ...
    def from_range(self, w: torch.Tensor) -> torch.Tensor: ...
    def gradient_rows(self, v: torch.Tensor) -> torch.Tensor: ...
    def gradient_cols(self, y: torch.Tensor) -> torch.Tensor: ...

Preconditioner = Callable[[torch.Tensor], torch.Tensor]

#: ``lowrank`` when B's range over all channels has at most this many directions (C r0).
LOWRANK_LIMIT = 1024
#: ``shared`` / ``capacitance`` (P x P eigen-decompositions and products) up to this many pixels per channel.
SHARED_PIXELS = 576
#: ``capacitance`` when forming and factorising its |z| x |z| matrix costs at most this many multiply-adds
#: (``|z|^3 / 3 + |z|^2 C kh kw``).
CAPACITANCE_COST = 3e9
#: Shift of the gradient block in ``capacitance``, relative to its largest eigenvalue.
CAPACITANCE_SHIFT = 1e-8
#: ``lowrank`` makes the periodic inverse exact on the image (``TorusGramInverse(exact_margin=...)``) when the
#: torus has at most this many pixels outside it (all channels; on the minimal torus grid when the 2-3-5 one has
#: more): then it needs a handful of CG steps on a border-free layer. The margin's Cholesky factor (m^2 entries,
#: m^3 / 3 to factorise, once per weights) is applied by two triangular solves per application: CNN6-W's conv1
#: has m = 3,120 at 128 px (78 MB, 15 steps instead of 262) and 5,424 at 224 px (235 MB, 27 instead of 444).
EXACT_MARGIN = 6000
#: Shift of the periodic Gram in ``lowrank``, relative to the mean eigenvalue of ``wa A^T A``.
TORUS_SHIFT = 1e-4
#: Shift of a singular ``Abar`` in ``shared``, relative to its mean eigenvalue.
SHARED_SHIFT = 1e-10
#: ``lowrank`` forms B's range basis V1 (P x r0) densely for its set-up when it has at most this many entries.
DENSE_BASIS_ENTRIES = 1 << 24
#: ``shared`` only from this many pixels per channel (and when its products cost at most one CG product by G):
#: on smaller blocks its P x P products cost more than the steps they save (CNN6 at 32 px, conv2-conv6: 458 steps
#: in 0.36 s per image against 556 Jacobi steps in 0.30 s).
SHARED_MIN_PIXELS = 256
#: Large images: ``shared_torus`` when rank B is below this fraction of the pixels, else ``jacobi``.
SPARSE_GRADIENT_FRACTION = 0.25
#: ``lowrank`` forms its capacitance matrix in float32 (with the dense basis; see ``lowrank``).
LOWERED_SETUP = True
#: Apply ``shared_torus`` in float32 where CG is not projected on a null space (CG's products, residuals and
#: iterates stay float64).
#: Not ``lowrank``: its Woodbury correction cancels most of ``S r`` on B's range, and in float32 CG then failed
#: to converge on a small noise-free layer.
LOWERED_APPLY = True
#: Vectors per batch when the ``lowrank`` capacitance matrix is formed.
_CHUNK = 64


def choose(channels: int, pixels: int, rank_b: int, outputs: int, taps: int, block_singular: bool) -> str:
    """The preconditioner for a layer with ``C`` input channels of ``P`` pixels, ``rank B = r0``, ``|z|`` outputs
    and ``kh kw = taps``.

    ``lowrank`` if ``C r0 <= LOWRANK_LIMIT``; else, with at most ``SHARED_PIXELS`` pixels, ``capacitance`` when
    B is singular and its matrix costs at most ``CAPACITANCE_COST``, else ``shared`` when it pays (at least
    ``SHARED_MIN_PIXELS`` pixels and its ``2 C P^2`` multiply-adds per step at most those of a product by G:
    ``2 C taps |z|`` for the weights plus ``min(C P^2, 2 C taps |z|)`` for the gradient block; measured on
    CNN6-W at 64 px it cuts conv3-conv5's steps by a quarter to a third), else ``jacobi``. Larger images:
    ``shared_torus`` (same iterations as ``shared``, products cheaper than its dense P x P ones) when B's rank is
    below ``SPARSE_GRADIENT_FRACTION`` of the pixels, else ``jacobi``. Measured on CNN6-W at 128 px (one
    thread): where B has a large rank the layer is well conditioned and plain CG's cheap steps win (conv3:
    390 Jacobi steps in 2.4 s against 232 ``shared_torus`` steps in 4 s); where B's rank is a tenth of the
    pixels, ``shared_torus`` cuts 3,600 steps (6.7 s) to 860 (5 s).
    """
    if channels * rank_b <= LOWRANK_LIMIT:
        return "lowrank"
    if pixels <= SHARED_PIXELS:
        cost = float(outputs) ** 3 / 3 + float(outputs) ** 2 * channels * taps
        if block_singular and cost <= CAPACITANCE_COST:
            return "capacitance"
        weights = 2.0 * channels * taps * outputs
        product = weights + min(float(channels) * pixels * pixels, weights)
        if pixels >= SHARED_MIN_PIXELS and 2.0 * channels * pixels * pixels <= product:
            return "shared"
        return "jacobi"
    if rank_b < SPARSE_GRADIENT_FRACTION * pixels:
        return "shared_torus"
    return "jacobi"


def build(name: str, system: ConvSystem, float32: bool = False) -> Preconditioner:
    """The preconditioner ``name`` (a key of ``BUILDERS``) for ``system``; with ``float32`` (CG is not projected on
    a null space) and ``LOWERED_APPLY``, those of ``FLOAT32_APPLIED`` are applied in float32."""
    if float32 and LOWERED_APPLY and name in FLOAT32_APPLIED:
        return FLOAT32_APPLIED[name](system)
    return BUILDERS[name](system)


def _torus(system: ConvSystem, shift: float, exact_margin: int = 0,
           mix: torch.Tensor | None = None) -> TorusGramInverse:
    """``(T + gamma I)^-1`` of the layer's periodic Gram ``T`` (``gamma = shift`` times its mean eigenvalue; with
    ``mix``, which derives from the weights, the single-channel combination of ``TorusGramInverse``). It depends on
    the weights only: built once per weights and geometry (``rgap.algorithm.weightcache``).
    ``(wa T + wa gamma I)^-1`` is this divided by ``wa``."""
    inv = system.inverter
    weight = inv.weight(system.k)
    key = weightcache.weight_key(weight, "torus", inv.input_shape, inv.stride, inv.padding, shift, exact_margin,
                                 mix is not None)
    return weightcache.cached(key, lambda: TorusGramInverse(weight, inv.input_shape, inv.stride, inv.padding, 1.0,
                                                            shift, mix=mix, relative=True, exact_margin=exact_margin))


def lowrank(system: ConvSystem) -> Preconditioner:
    """``M^-1 r = S (r - U Cap^-1 U^T S r)`` with ``Cap = (wk Lam)^-1 + U^T S U`` (C r0 x C r0) and
    ``S = S1 / wa`` (``S1``: the cached ``_torus``).

    ``U^T`` and ``U`` go through the sparse ``K0`` (``ConvSystem.to_range`` / ``from_range``), never a dense
    P x r0 basis on large images.
    """
    channels, pixels = system.channels, system.pixels
    lam, _ = system.range_factors()
    rank_b = int(lam.numel())
    periodic = _torus(system, TORUS_SHIFT, EXACT_MARGIN)
    inverse_wa = 1.0 / system.wa
    if rank_b == 0:
        return lambda r: periodic(r) * inverse_wa
    # U^T S U, one input channel at a time: columns V1[:, j] placed in channel c (only that channel transformed).
    # The reduction by U^T uses the dense basis V1 when it is small, else the sparse K0. With the dense basis the
    # matrix is formed in float32 (LOWERED_SETUP): its entries then carry a relative error of about 1e-7, a
    # preconditioner that stays symmetric positive definite (it is applied in float64) and costs CG a step or two.
    dense = pixels * rank_b <= DENSE_BASIS_ENTRIES
    lowered = dense and LOWERED_SETUP
    setup = periodic.lowered() if lowered else periodic
    dtype = torch.float32 if lowered else torch.float64
    basis = system.block_range()[1].to(dtype) if dense else None
    eye = torch.eye(rank_b, dtype=torch.float64, device=lam.device)
    cap = torch.empty(channels * rank_b, channels * rank_b, dtype=dtype, device=lam.device)
    margin = None if periodic.margin is None else torch.empty(channels * rank_b, periodic.margin.numel(),
                                                               dtype=dtype, device=lam.device)
    for start in range(0, rank_b, _CHUNK):
        stop = min(start + _CHUNK, rank_b)
        images = basis[:, start:stop].T if dense else system.from_range(eye[start:stop])  # [m, P]: V1 columns
        for c in range(channels):
            applied, outside = setup.raw_channel(images, c)
            applied = applied.reshape(stop - start, channels, pixels)
            reduced = applied @ basis if dense else system.to_range(applied)
            cap[c * rank_b + start : c * rank_b + stop] = reduced.reshape(stop - start, -1)
            if margin is not None:
                margin[c * rank_b + start : c * rank_b + stop] = outside
    if margin is not None:  # U^T S_exact U = U^T S U - X^T ([S]_mm)^-1 X, X = [S U]_m
        half = torch.linalg.solve_triangular(setup.margin_chol, margin.T, upper=False)
        cap -= half.T @ half
    cap = cap.to(torch.float64)
    cap = (0.5 * inverse_wa) * (cap + cap.T)  # U^T S U
    cap.diagonal().add_((1.0 / (system.wk * lam)).repeat(channels))
    chol = torch.linalg.cholesky(cap)

    def apply(r: torch.Tensor) -> torch.Tensor:
        s = periodic(r).mul_(inverse_wa)
        u = system.to_range(s.reshape(channels, pixels)).reshape(-1, 1)
        w = cholesky_apply(u, chol).reshape(channels, rank_b)
        return periodic(r - system.from_range(w).reshape(-1)).mul_(inverse_wa)

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
    block = system.block()
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


def shared_torus(system: ConvSystem, float32: bool = False) -> Preconditioner:
    """``shared`` for large images: ``M_c = wk B + a_c Abar`` with ``Abar`` the periodic model of the mean channel
    block (``rgap.algorithm.circulant``, ``mix``) and ``B = K0^T K0`` of rank at most ``r = F kh kw < P``, inverted by
    Woodbury: with ``S = Abar^-1`` and ``K0 S K0^T = E Sig E^T`` (r x r, shared by all channels),
    ``M_c^-1 = (S - S K0^T E diag(1 / (a_c / wk + sig)) E^T K0 S) / a_c``.

    ``float32``: applied in float32 (set up in float64), about 1.6x faster per application (two FFTs and two
    products by the sparse ``K0`` per step); measured on CNN6-W the same CG steps to 1e-13 (conv2 at 224 px:
    2,236 against 2,234). Not under the null-space projection of a rank-deficient layer: there the float32
    round-off cost up to 60 % more steps on small random layers.
    """
    inv, channels, pixels = system.inverter, system.channels, system.pixels
    traces = inv.channel_weight_traces(system.k)
    safe = torch.where(traces > 0, traces, torch.ones_like(traces))
    scale = system.wa * traces / pixels  # a_c
    mix = (pixels / channels) / safe
    periodic = _torus(system, SHARED_SHIFT, mix=mix)
    k0 = system.k0  # [r, P]
    applied = periodic(k0)  # S K0^T, one column per row of K0: [r, P]
    small = applied @ k0.T  # K0 S K0^T
    sig, e = torch.linalg.eigh(0.5 * (small + small.T))
    weights = 1.0 / (scale.unsqueeze(1) / system.wk + sig.clamp(min=0.0).unsqueeze(0))  # [C, r]
    inverse_scale = (1.0 / scale).unsqueeze(1)
    if float32:
        periodic, e, weights, inverse_scale = (periodic.lowered(), e.float(), weights.float(), inverse_scale.float())
    et = e.T.contiguous()

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = periodic(r.reshape(channels, pixels).to(e.dtype))  # S r_c
        t = (system.gradient_rows(y) @ e).mul_(weights)  # diag(...) E^T K0 S r_c
        return ((y - periodic(system.gradient_cols(t @ et))) * inverse_scale).reshape(-1).to(r.dtype)

    return apply


def jacobi(system: ConvSystem) -> Preconditioner:
    """The inverse diagonal of ``G`` (no set-up; for well-conditioned large layers)."""
    diagonal = system.op.diagonal
    inverse = torch.where(diagonal > 0, 1.0 / diagonal, torch.zeros_like(diagonal))

    def apply(r: torch.Tensor) -> torch.Tensor:
        return r * inverse

    return apply


def capacitance(system: ConvSystem) -> Preconditioner:
    """``M = wk I (x) (B + delta I) + wa A^T A``, inverted by Woodbury over the |z| weight constraints:
    ``M^-1 = D^-1 - D^-1 A^T Cap^-1 A D^-1``, ``D = wk I (x) (B + delta I)``, ``Cap = I / wa + A D^-1 A^T``.

    ``Cap`` is formed without N x N work: ``Cap[(f, o), (g, q)] = sum_{t, u} Binv[p(o, t), p(q, u)] Mw[t, u][f, g]``
    with ``Binv = (wk (B + delta I))^-1`` (P x P, shared by all channels), ``p(o, t)`` the pixel that tap ``t`` of
    output ``o`` reads and ``Mw[t, u] = sum_c W[:, c, t] W[:, c, u]^T``: one product of an ``(L (L + 1) / 2, taps^2)``
    gather of ``Binv`` (output pairs ``o <= q``; the others by symmetry) with the ``(taps^2, F^2)`` matrix ``Mw``.
    """
    inv, channels, pixels = system.inverter, system.channels, system.pixels
    lam, q = system.block_eigen()  # B = Q Lam Q^T
    lam = lam.clamp(min=0.0)
    d = system.wk * (lam + CAPACITANCE_SHIFT * float(lam.max()) + 1e-300)
    block_inverse = (q / d) @ q.T  # (wk (B + delta I))^-1, [P, P]
    weight = inv.weight(system.k)  # [F, C, kh, kw]
    n_out = weight.shape[0]
    taps = weight.shape[2] * weight.shape[3]
    rows, cols, flat = _output_pair_taps(inv, block_inverse.device)
    padded = torch.zeros(pixels + 1, pixels + 1, dtype=block_inverse.dtype, device=block_inverse.device)
    padded[:pixels, :pixels] = block_inverse
    w = weight.reshape(n_out, channels, taps)
    mixing = torch.einsum("fct,gcu->tufg", w, w).reshape(taps * taps, n_out * n_out)
    pairs = (padded.view(-1)[flat] @ mixing).reshape(-1, n_out, n_out)  # Cap[(., o), (., q)] for o <= q
    outputs = int(rows.max()) + 1
    blocks = torch.empty(outputs, outputs, n_out, n_out, dtype=pairs.dtype, device=pairs.device)
    blocks[rows, cols] = pairs
    blocks[cols, rows] = pairs.transpose(1, 2)  # Cap is symmetric: the (q, o) block is the (o, q) one transposed
    cap = blocks.permute(2, 0, 3, 1).reshape(n_out * outputs, n_out * outputs)
    cap = 0.5 * (cap + cap.T)
    cap.diagonal().add_(1.0 / system.wa)
    chol = torch.linalg.cholesky(cap)
    out_shape = inv.output_shape

    def d_inverse(v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(channels, pixels) @ block_inverse).reshape(-1)

    def apply(r: torch.Tensor) -> torch.Tensor:
        y = d_inverse(r)
        u = inv.forward(y.reshape(inv.input_shape)).reshape(-1, 1)
        w_out = cholesky_apply(u, chol).reshape(out_shape)
        return y - d_inverse(inv.input_vjp(w_out).reshape(-1))

    return apply


def _output_pair_taps(inverter: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output pairs ``o <= q`` (``rows``, ``cols``: [L (L + 1) / 2]) and, per pair, the flat index of
    ``Binv[p(o, t), p(q, u)]`` for every tap pair ``(t, u)`` in a (P + 1) x (P + 1) matrix whose last row and column
    stand for the zero padding: [L (L + 1) / 2, taps^2]. Geometry only: computed once per layer shape
    (``rgap.algorithm.weightcache``)."""
    def compute() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tap_pixels = inverter._tap_pixels(device).T  # [L, taps]: pixel of tap t at output o (P on the padding)
        outputs, pixels = tap_pixels.shape[0], inverter.input_shape[1] * inverter.input_shape[2]
        rows, cols = torch.triu_indices(outputs, outputs, device=device)
        flat = tap_pixels[rows].unsqueeze(2) * (pixels + 1) + tap_pixels[cols].unsqueeze(1)  # [pairs, t, u]
        return rows, cols, flat.reshape(rows.numel(), -1)

    key = ("output pair taps", inverter.input_shape, inverter.kernel, inverter.stride, inverter.padding, str(device))
    return weightcache.cached(key, compute)


BUILDERS: dict[str, Callable[[ConvSystem], Preconditioner]] = {
    "lowrank": lowrank, "capacitance": capacitance, "shared": shared, "shared_torus": shared_torus, "jacobi": jacobi,
}
#: The float32-applied variants (``build`` with ``float32``).
FLOAT32_APPLIED: dict[str, Callable[[ConvSystem], Preconditioner]] = {
    "shared_torus": lambda system: shared_torus(system, float32=True),
}
