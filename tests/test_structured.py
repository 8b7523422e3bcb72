"""The structured solver (``rgap.algorithm.structured``, ``rgap.algorithm.preconditioners``,
``rgap.algorithm.circulant``) against dense references.

References are independent of the structured code: dense stacked systems ``[K; A]`` from autograd Jacobians
of the real ``nn.Conv2d`` / ``nn.Linear`` modules, solved by ``torch.linalg.lstsq`` / ``torch.linalg.pinv``,
ranks by ``torch.linalg.matrix_rank``, and the dense path of the inverters (``solve_gram``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rgap.algorithm import circulant, inverters, matfree, preconditioners, structured, weightcache
from rgap.algorithm.circulant import (
    TorusGramInverse,
    border_free,
    fft_size,
    hermitian_inverse,
    margin_pixels,
    periodic_lam_min,
    torus_grid,
)
from rgap.algorithm.composite import make_stage_inverter
from rgap.algorithm.inverters import Conv2dInverter, make_inverter
from rgap.algorithm.network import read_stages
from rgap.algorithm.rank import operating_point, rank_analysis
from rgap.algorithm.recursive import RGAP
from rgap.algorithm.solvers import (
    SolveOptions,
    cholesky_apply,
    numerical_rank,
    singular_values_from_gram,
    solve_gram,
)
from rgap.algorithm.structured import conv_rank, solve_conv, weight_bounds
from rgap.client.gradient import compute_shared_gradient
from rgap.core.errors import UserInputError
from rgap.zoo import models
from tests import custom_nets

DTYPE = torch.float64
STRUCTURED = SolveOptions(solver="structured", cg_tol=1e-14)

# (in_channels, height, width, out_channels, kernel, stride, padding)
FULL_RANK = [
    (2, 6, 6, 4, (3, 3), 1, 1),
    (3, 9, 9, 5, (4, 4), 2, 2),
    (2, 8, 7, 6, (3, 3), 2, 1),
    (4, 7, 7, 6, (3, 3), 1, 1),
    (2, 9, 8, 8, (3, 3), 3, 2),
]
# Rank-deficient with weight constraints: few filters on a strided conv, and stride > kernel (unseen pixels).
DEFICIENT = [
    (4, 9, 9, 1, (3, 3), 2, 1),
    (3, 10, 9, 4, (3, 3), 3, 0),
    (6, 7, 7, 1, (2, 2), 2, 0),
]


def _conv(cfg: tuple, seed: int) -> Conv2dInverter:
    c, h, w, f, kernel, stride, padding = cfg
    torch.manual_seed(seed)
    layer = nn.Conv2d(c, f, kernel, stride=stride, padding=padding, bias=False).to(DTYPE)
    with torch.no_grad():
        out_shape = tuple(layer(torch.zeros(1, c, h, w, dtype=DTYPE)).shape[1:])
    return make_inverter(layer, (c, h, w), out_shape)


def _data(inv, seed: int, noise: float) -> dict:
    """Random x, k; g = dl/dW(x) and z = A x, optionally perturbed (inconsistent: a least-squares problem)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(inv.input_shape, generator=gen, dtype=DTYPE)
    k = torch.randn(inv.output_shape, generator=gen, dtype=DTYPE)
    g = inv.weight_gradient(k, x)
    z = inv.forward(x)
    g = g + noise * torch.randn(g.shape, generator=gen, dtype=DTYPE) * g.abs().mean()
    z = z + noise * torch.randn(z.shape, generator=gen, dtype=DTYPE) * z.abs().mean()
    return {"x": x.reshape(-1), "k": k, "g": g, "z": z}


def _stacked(inv, data: dict, balance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted stacked system ``[sqrt(wk) K; sqrt(wa) A]`` from autograd Jacobians (no inverter code)."""
    layer, k = inv.layer, data["k"]
    x0 = torch.zeros(inv.input_shape, dtype=DTYPE)
    weight = layer.weight.detach()

    def forward(v: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": weight}, (v.unsqueeze(0),))[0].reshape(-1)

    def weight_grad(v: torch.Tensor) -> torch.Tensor:
        w = weight.clone().requires_grad_(True)
        out = torch.func.functional_call(layer, {"weight": w}, (v.unsqueeze(0),))[0]
        return torch.autograd.grad((out * k).sum(), w, create_graph=True)[0].reshape(-1)

    n = x0.numel()
    jk = torch.autograd.functional.jacobian(weight_grad, x0).reshape(-1, n)
    ja = torch.autograd.functional.jacobian(forward, x0).reshape(-1, n)
    wk, wa = (n / float(jk.pow(2).sum()), n / float(ja.pow(2).sum())) if balance else (1.0, 1.0)
    matrix = torch.cat([wk**0.5 * jk, wa**0.5 * ja])
    values = torch.cat([wk**0.5 * data["g"].reshape(-1), wa**0.5 * data["z"].reshape(-1)])
    return matrix, values


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ----------------------------------------------------------------------------------------- conv solves
@pytest.mark.parametrize("cfg", FULL_RANK, ids=lambda c: f"c{c[0]}x{c[1]}x{c[2]}-f{c[3]}-s{c[5]}-p{c[6]}")
@pytest.mark.parametrize("noise", [0.0, 0.01], ids=["consistent", "least-squares"])
@pytest.mark.parametrize("balance", [True, False], ids=["balanced", "plain"])
def test_structured_conv_matches_dense_full_rank(cfg: tuple, noise: float, balance: bool) -> None:
    inv = _conv(cfg, 3)
    data = _data(inv, 4, noise)
    sol = solve_conv(inv, data["k"], data["g"], data["z"], balance, STRUCTURED)
    matrix, values = _stacked(inv, data, balance)
    expected = torch.linalg.lstsq(matrix, values.unsqueeze(1)).solution.reshape(-1)
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], balance))
    assert int(torch.linalg.matrix_rank(matrix)) == inv.n
    assert sol.method == "cg" and sol.converged and sol.rank_computed and sol.rank == inv.n
    assert _rel(sol.x, expected) < 1e-9 and _rel(sol.x, dense.x) < 1e-9
    if noise == 0.0:
        assert _rel(sol.x, data["x"]) < 1e-9


@pytest.mark.parametrize("cfg", DEFICIENT, ids=lambda c: f"c{c[0]}x{c[1]}x{c[2]}-f{c[3]}-s{c[5]}-p{c[6]}")
@pytest.mark.parametrize("noise", [0.0, 0.01], ids=["consistent", "least-squares"])
def test_structured_conv_rank_deficient_is_min_norm(cfg: tuple, noise: float) -> None:
    inv = _conv(cfg, 5)
    data = _data(inv, 6, noise)
    matrix, values = _stacked(inv, data, True)
    rank = int(torch.linalg.matrix_rank(matrix))
    assert rank < inv.n  # the case is what it claims
    sol = solve_conv(inv, data["k"], data["g"], data["z"], True, STRUCTURED)
    expected = torch.linalg.pinv(matrix, rtol=1e-10) @ values
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], True))
    assert (sol.method, sol.rank, sol.rank_computed, sol.converged) == ("pinv", rank, True, True)
    assert dense.method == "pinv" and dense.rank == rank
    assert _rel(sol.x, expected) < 1e-8 and _rel(sol.x, dense.x) < 1e-8


@pytest.mark.parametrize("name", sorted(preconditioners.BUILDERS))
@pytest.mark.parametrize("cfg", [FULL_RANK[1], FULL_RANK[3], DEFICIENT[0]], ids=["s2", "s1", "deficient"])
def test_every_preconditioner_reaches_the_dense_solution(name: str, cfg: tuple,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each preconditioner forced on the same layers: CG converges to the dense (minimum-norm) solution."""
    monkeypatch.setattr(preconditioners, "choose", lambda *args: name)
    inv = _conv(cfg, 7)
    data = _data(inv, 8, 0.01)
    sol = solve_conv(inv, data["k"], data["g"], data["z"], True, STRUCTURED)
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], True))
    assert sol.preconditioner == name and sol.converged and sol.rank == dense.rank
    assert _rel(sol.x, dense.x) < 1e-8


def test_gradient_constraints_only_is_channelwise_min_norm() -> None:
    inv = _conv(DEFICIENT[1], 9)
    data = _data(inv, 10, 0.0)
    matrix, _ = _stacked(inv, data, False)
    jk = matrix[: data["g"].numel()]
    sol = solve_conv(inv, data["k"], data["g"], None, False, STRUCTURED)
    expected = torch.linalg.pinv(jk, rtol=1e-10) @ data["g"].reshape(-1)
    assert sol.rank == int(torch.linalg.matrix_rank(jk)) and _rel(sol.x, expected) < 1e-9


def test_non_convergence_is_reported() -> None:
    inv = _conv(FULL_RANK[1], 11)
    data = _data(inv, 12, 0.01)
    sol = solve_conv(inv, data["k"], data["g"], data["z"], True, SolveOptions(solver="structured", cg_maxiter=1))
    assert sol.iterations == 1 and sol.converged is False and sol.residual > 1e-6


def test_non_converged_layer_is_reported_in_the_attack_info() -> None:
    """CNN6 at 24 px: conv layers above ``STRUCTURED_MIN`` unknowns take the structured path; capped CG says so."""
    model = models.cnn6((3, 24, 24), seed=0)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 24, 24, generator=gen)
    shared = compute_shared_gradient(model, images, torch.tensor([1]), label_mode="reversed")
    layers = RGAP(cg_maxiter=1).reconstruct(shared).info["rgap_layers"].split()
    structured_layers = [text for text in layers if ":pre=" in text]
    assert structured_layers and all("NOT-converged" in text for text in structured_layers), layers
    assert all("NOT-converged" not in text for text in layers if ":pre=" not in text)


# ------------------------------------------------------------------------------------------ FC layers
@pytest.mark.parametrize(("n_in", "n_out"), [(12, 3), (9, 9), (5, 11)])
def test_linear_structured_matches_dense(n_in: int, n_out: int) -> None:
    torch.manual_seed(n_in * n_out)
    layer = nn.Linear(n_in, n_out, bias=False).to(DTYPE)
    inv = make_inverter(layer, (n_in,), (n_out,))
    data = _data(inv, 13, 0.01)
    sol = inv.solve(data["k"], data["g"], data["z"], True, STRUCTURED)
    matrix, values = _stacked(inv, data, True)
    expected = torch.linalg.lstsq(matrix, values.unsqueeze(1)).solution.reshape(-1)
    assert sol.rank == n_in and _rel(sol.x, expected) < 1e-9


def test_linear_without_gradient_signal_is_min_norm() -> None:
    """k = 0 on a wide layer: only ``W x = z`` (rank n_out < n_in); the structured path returns ``W^+ z``."""
    torch.manual_seed(0)
    layer = nn.Linear(10, 4, bias=False).to(DTYPE)
    inv = make_inverter(layer, (10,), (4,))
    z = torch.randn(4, dtype=DTYPE)
    k, g = torch.zeros(4, dtype=DTYPE), torch.zeros(4, 10, dtype=DTYPE)
    sol = inv.solve(k, g, z, True, STRUCTURED)
    dense = inv.solve(k, g, z, True)
    expected = torch.linalg.pinv(layer.weight.detach()) @ z
    assert (sol.method, sol.rank) == ("pinv", 4) and (dense.method, dense.rank) == ("pinv", 4)
    assert _rel(sol.x, expected) < 1e-10 and _rel(sol.x, dense.x) < 1e-10


# ------------------------------------------------------------------------------------------------ ranks
@pytest.mark.parametrize("cfg", FULL_RANK + DEFICIENT, ids=lambda c: f"c{c[0]}x{c[1]}x{c[2]}-f{c[3]}-s{c[5]}")
def test_structured_rank_matches_matrix_rank(cfg: tuple) -> None:
    inv = _conv(cfg, 14)
    data = _data(inv, 15, 0.0)
    matrix, _ = _stacked(inv, data, False)
    null = conv_rank(inv, data["k"], data["g"], data["z"])
    assert null is not None and null.rank == int(torch.linalg.matrix_rank(matrix))
    if null.basis is not None:  # an orthonormal basis of the null space of [K; A]
        assert null.basis.shape == (inv.n, inv.n - null.rank)
        assert float((matrix @ null.basis).abs().max()) < 1e-10 * float(matrix.abs().max())
        assert torch.allclose(null.basis.T @ null.basis, torch.eye(inv.n - null.rank, dtype=DTYPE), atol=1e-10)


@pytest.mark.parametrize("cfg", FULL_RANK + DEFICIENT, ids=lambda c: f"c{c[0]}x{c[1]}x{c[2]}-f{c[3]}-s{c[5]}")
@pytest.mark.parametrize("route", ["taps", "conv"])
def test_weight_gram_on_channel_images_matches_autograd(cfg: tuple, route: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Y^T A^T A Y`` for ``Y = I_C (x) V`` (the reduced rank problem) by either route equals the product with
    the autograd Jacobian of the layer."""
    monkeypatch.setattr(structured, "TAP_PAIRS_LIMIT", 1 << 40 if route == "taps" else 0)
    if route == "taps":  # force the tap route even where the conv route is cheaper
        monkeypatch.setattr(structured.ConvSystem, "_tap_route_cheaper", staticmethod(lambda *a: True))
    inv = _conv(cfg, 21)
    data = _data(inv, 22, 0.0)
    ja = torch.autograd.functional.jacobian(
        lambda v: torch.func.functional_call(inv.layer, {"weight": inv.layer.weight.detach()},
                                             (v.unsqueeze(0),))[0].reshape(-1),
        torch.zeros(inv.input_shape, dtype=DTYPE)).reshape(-1, inv.n)
    channels, height, width = inv.input_shape
    m = 5
    images = torch.randn(m, 1, height, width, generator=torch.Generator().manual_seed(23), dtype=DTYPE)
    y = torch.einsum("cd,jp->cpdj", torch.eye(channels, dtype=DTYPE), images.reshape(m, -1)).reshape(inv.n, -1)
    system = structured.ConvSystem(inv, data["k"], data["g"], data["z"], balance=False)
    expected = y.T @ (ja.T @ ja) @ y
    assert _rel(system._weight_gram_on(images), expected) < 1e-12


@pytest.mark.parametrize("cfg", FULL_RANK + DEFICIENT, ids=lambda c: f"c{c[0]}x{c[1]}x{c[2]}-f{c[3]}-s{c[5]}")
@pytest.mark.parametrize("scatter_cost", [0, 10**9], ids=["scatter", "product"])
def test_gradient_block_matches_autograd(cfg: tuple, scatter_cost: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``B = K0^T K0`` by the per-tap scatter or the dense product equals the channel-diagonal block of
    ``K^T K`` from the autograd Jacobian of dl/dW."""
    monkeypatch.setattr(inverters, "SCATTER_COST", scatter_cost)
    inv = _conv(cfg, 24)
    data = _data(inv, 25, 0.0)
    matrix, _ = _stacked(inv, data, False)
    jk = matrix[: data["g"].numel()]
    pixels = inv.input_shape[1] * inv.input_shape[2]
    expected = (jk.T @ jk)[:pixels, :pixels]
    block = inv.gradient_block(data["k"])
    assert _rel(block, expected) < 1e-13
    assert torch.equal(block, block.T) or scatter_cost > 0


def test_weight_certificate_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the reduced route disabled, a full-rank A certifies the rank from A^T A alone (once per weights)."""
    monkeypatch.setattr(structured, "REDUCED_LIMIT", 0)
    inv = _conv((1, 8, 8, 4, (3, 3), 1, 1), 16)  # |z| = 256 > n = 64; B has rank <= 36 < 64
    data = _data(inv, 17, 0.0)
    null = conv_rank(inv, data["k"], data["g"], data["z"])
    assert null is not None and (null.rank, null.route) == (inv.n, "weights")
    assert conv_rank(inv, data["k"], data["g"], data["z"], allow_weight_certificate=False) is None


@pytest.mark.parametrize(("cfg", "free"), [((3, 16, 16, 12, (4, 4), 2, 2), True), ((2, 12, 12, 4, (3, 3), 1, 1), False),
                                           ((2, 13, 13, 5, (3, 3), 2, 1), True), ((2, 12, 12, 5, (3, 3), 2, 1), False),
                                           ((2, 12, 12, 6, (2, 2), 2, 0), True)])
def test_periodic_lower_bound_of_the_weight_gram(cfg: tuple, free: bool) -> None:
    """Border-free layers: lambda_min of the periodic Gram bounds lambda_min(A^T A) from below (dense reference)."""
    inv = _conv(cfg, 21)
    assert border_free(inv.input_shape, inv.kernel, inv.stride, inv.padding) == free
    weight = inv.layer.weight.detach()
    ja = torch.autograd.functional.jacobian(
        lambda v: torch.nn.functional.conv2d(v.unsqueeze(0), weight, stride=inv.stride, padding=inv.padding)
        .reshape(-1), torch.zeros(inv.input_shape, dtype=DTYPE)).reshape(-1, inv.n)
    exact = float(torch.linalg.eigvalsh(ja.T @ ja)[0])
    bound = periodic_lam_min(weight, inv.input_shape, inv.stride, inv.padding)
    if free:
        assert bound <= exact * (1 + 1e-9) + 1e-12


def test_periodic_certificate_route() -> None:
    """The first layer of CNN6 (4x4, stride 2, padding 2) is border-free: its full rank needs no dense A^T A."""
    monkey_limit = structured.REDUCED_LIMIT
    inv = _conv((3, 16, 16, 12, (4, 4), 2, 2), 22)
    data = _data(inv, 23, 0.0)
    matrix, _ = _stacked(inv, data, False)
    try:
        structured.REDUCED_LIMIT = 0
        null = conv_rank(inv, data["k"], data["g"], data["z"], allow_weight_certificate=False)
    finally:
        structured.REDUCED_LIMIT = monkey_limit
    assert null is not None and null.route == "periodic weights"
    assert null.rank == inv.n == int(torch.linalg.matrix_rank(matrix))


def test_rank_analysis_reports_progress_per_layer() -> None:
    shape = (2, 7, 7)
    model = models.conv_net(shape, [(4, 3, 2, 1), (3, 2, 1, 0)], hidden=[5], seed=1)
    lines: list[str] = []
    rows = rank_analysis(model, shape, progress=lines.append, max_unknowns=60)
    assert len(lines) == len(rows) == 4
    assert lines[0].startswith("conv1: rank not computed") and lines[2].startswith("fc1: rank 27/27")



@pytest.mark.parametrize("builder", [models.cnn6, custom_nets.bn_cnn], ids=["cnn6", "bn_cnn"])
def test_rank_analysis_of_stages_takes_the_structured_routes(builder) -> None:
    """Plain and batch-norm-folded conv stages get their rank from the structured factorisations (not a dense
    eigen-solve), and it equals the rank of the dense Gram matrix of the same stage."""
    shape = (3, 20, 20)
    model = builder(shape, seed=0).to(torch.float64)
    lines: list[str] = []
    rows = rank_analysis(model, shape, progress=lines.append)
    stages = read_stages(model, shape).stages
    point = operating_point(model, stages, shape, seed=0)
    for row, line, stage, (k, grad_w, z) in zip(rows, lines, stages, point, strict=True):
        if stage.kind == "conv":
            assert not line.endswith("dense)"), line
        gram, _ = make_stage_inverter(stage).normal_equations(k, grad_w, z)
        assert row.rank == numerical_rank(singular_values_from_gram(gram)), line


# ---------------------------------------------------------------------------------- periodic Gram inverse
@pytest.mark.parametrize("cfg", [(2, 20, 19, 3, (3, 3), 1, 1), (3, 24, 24, 8, (4, 4), 2, 2),
                                 (2, 23, 22, 6, (3, 3), 2, 1), (1, 22, 22, 4, (5, 5), 1, 2)],
                         ids=["s1", "s2-k4", "s2-k3", "k5"])
def test_torus_inverse_is_exact_away_from_the_border(cfg: tuple) -> None:
    """For inputs supported a kernel size inside the image, ``A^T A`` equals the periodic Gram, so the
    periodic inverse undoes ``wa A^T A + gamma`` exactly (forward model: the real convolution and its adjoint)."""
    inv = _conv(cfg, 18)
    c, h, w = inv.input_shape
    margin = max(inv.kernel) + 1
    gen = torch.Generator().manual_seed(19)
    v = torch.zeros(c, h, w, dtype=DTYPE)
    v[:, margin : h - margin, margin : w - margin] = torch.randn(c, h - 2 * margin, w - 2 * margin, generator=gen,
                                                                  dtype=DTYPE)
    wa, gamma = 0.7, 1e-3
    torus = TorusGramInverse(inv.weight(v), inv.input_shape, inv.stride, inv.padding, wa, gamma)
    image = wa * inv.input_vjp(inv.forward(v)) + gamma * v
    assert _rel(torus(image.reshape(-1)), v.reshape(-1)) < 1e-12
    mix = torch.rand(c, generator=gen, dtype=DTYPE)
    single = TorusGramInverse(inv.weight(v), inv.input_shape, inv.stride, inv.padding, wa, gamma, mix=mix)
    grams = inv.channel_weight_grams(v)  # (A^T A)_cc, checked against weight_gram below
    plane = v[0].reshape(-1)
    image = wa * sum(mix[i] * grams[i] for i in range(c)) @ plane + gamma * plane
    assert _rel(single(image), plane) < 1e-12
    low = torus.lowered()  # the float32 copy that preconditioner set-ups use
    image = wa * inv.input_vjp(inv.forward(v)) + gamma * v
    lowered = low(image.reshape(-1).float())
    assert lowered.dtype == torch.float32 and _rel(lowered.double(), v.reshape(-1)) < 1e-4  # float32 round-off
    assert torus.inverse.dtype == torch.complex128 and low is torus.lowered()


@pytest.mark.parametrize("fast_grid", [True, False], ids=["fast-grid", "minimal-grid"])
@pytest.mark.parametrize("cfg", [(2, 9, 9, 5, (3, 3), 2, 1), (3, 10, 8, 4, (2, 2), 2, 0)], ids=["k3-s2-p1", "k2-s2"])
def test_exact_margin_inverts_the_restricted_gram(cfg: tuple, fast_grid: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """On a border-free layer the torus inverse with ``exact_margin`` is ``(wa A^T A + gamma I)^-1`` on the whole
    image (borders included), on either torus grid (forward model: the real convolution and its adjoint)."""
    monkeypatch.setattr(circulant, "FAST_GRID", fast_grid)
    inv = _conv(cfg, 44)
    assert border_free(inv.input_shape, inv.kernel, inv.stride, inv.padding)
    v = torch.randn(inv.input_shape, generator=torch.Generator().manual_seed(45), dtype=DTYPE)
    wa, gamma = 0.7, 1e-3
    image = wa * inv.input_vjp(inv.forward(v)) + gamma * v
    torus = TorusGramInverse(inv.weight(v), inv.input_shape, inv.stride, inv.padding, wa, gamma, exact_margin=10**6)
    assert torus.margin is not None and _rel(torus(image.reshape(-1)), v.reshape(-1)) < 1e-10
    plain = TorusGramInverse(inv.weight(v), inv.input_shape, inv.stride, inv.padding, wa, gamma)
    error = _rel(plain(image.reshape(-1)), v.reshape(-1))
    # without it the border is wrong where windows overlap (with kernel = stride no window couples two pixels
    # across the margin, and the plain periodic inverse is exact already)
    assert error > 1e-3 if inv.kernel[0] > inv.stride[0] else error < 1e-10


def test_grid_gives_up_fast_ffts_for_an_exact_margin() -> None:
    """``_grid``: the 2-3-5 grid unless only the minimal grid keeps the margin within the limit."""
    shape, kernel, stride = (3, 40, 40), (4, 4), (2, 2)
    fast, minimal = torus_grid(shape, kernel, stride, fast=True), torus_grid(shape, kernel, stride)
    assert (fast, minimal) == ((24, 24), (22, 22))
    assert (margin_pixels(shape, stride, fast), margin_pixels(shape, stride, minimal)) == (2112, 1008)
    assert circulant._grid(shape, kernel, stride, 0) == fast
    assert circulant._grid(shape, kernel, stride, 2112) == fast
    assert circulant._grid(shape, kernel, stride, 1500) == minimal
    assert circulant._grid(shape, kernel, stride, 1000) == fast  # neither is exact: the faster one


def test_lowrank_with_an_exact_margin_needs_a_handful_of_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A border-free 3 x 40 x 40 layer (CNN6-W's conv1 in small: 12 filters 4 x 4, stride 2, padding 2): with the
    margin inverted exactly (possible on the minimal grid only, at a limit of 1,500 pixels) ``lowrank`` CG needs
    a handful of steps, without it many more; both reach the dense solution."""
    inv = _conv((3, 40, 40, 12, (4, 4), 2, 2), 46)
    assert border_free(inv.input_shape, inv.kernel, inv.stride, inv.padding)
    data = _data(inv, 47, 0.0)
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], True))
    steps = {}
    for limit in (1500, 1000):
        monkeypatch.setattr(preconditioners, "EXACT_MARGIN", limit)
        sol = solve_conv(inv, data["k"], data["g"], data["z"], True, STRUCTURED)
        assert sol.preconditioner == "lowrank" and sol.converged and _rel(sol.x, dense.x) < 1e-9
        steps[limit] = sol.iterations
    assert steps[1500] <= 20 and steps[1000] >= 3 * steps[1500], steps


@pytest.mark.parametrize("columns", [1, 5])
def test_cholesky_apply_solves_the_factored_system(columns: int) -> None:
    gen = torch.Generator().manual_seed(48)
    a = torch.randn(60, 60, generator=gen, dtype=DTYPE)
    spd = a @ a.T + 0.1 * torch.eye(60, dtype=DTYPE)
    rhs = torch.randn(60, columns, generator=gen, dtype=DTYPE)
    assert _rel(cholesky_apply(rhs, torch.linalg.cholesky(spd)), torch.linalg.solve(spd, rhs)) < 1e-10


@pytest.mark.parametrize("lowered", [True, False], ids=["float32-setup", "float64-setup"])
def test_lowrank_setup_precision_keeps_cg_exact(lowered: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lowrank`` forms its capacitance matrix in float32 or float64: either way CG reaches the dense solution to
    round-off in a handful of steps (the float32 set-up only perturbs the preconditioner)."""
    monkeypatch.setattr(preconditioners, "LOWERED_SETUP", lowered)
    inv = _conv((3, 16, 16, 12, (4, 4), 2, 2), 30)
    data = _data(inv, 31, 0.0)
    matrix, values = _stacked(inv, data, True)
    dense = torch.linalg.lstsq(matrix, values.unsqueeze(1)).solution.reshape(-1)
    system = structured.ConvSystem(inv, data["k"], data["g"], data["z"], balance=True)
    assert system.preconditioner()[0] == "lowrank"
    solution = system.solve(STRUCTURED, None)
    assert solution.converged and solution.iterations <= 10
    assert _rel(solution.x, dense) < 1e-10


@pytest.mark.parametrize("noise", [0.0, 0.01], ids=["consistent", "noisy"])
@pytest.mark.parametrize("cfg", [FULL_RANK[0], FULL_RANK[1], FULL_RANK[2], DEFICIENT[0], DEFICIENT[1]],
                         ids=["s1", "s2-k4", "s2-k3", "deficient-f1", "deficient-s3"])
def test_shared_torus_applied_in_float32_keeps_cg_exact(cfg: tuple, noise: float,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``shared_torus`` forced on the same layers with ``LOWERED_APPLY`` off and on: CG reaches the dense
    (minimum-norm) solution to round-off either way; on full-rank layers the float32 application takes about as
    many steps, and rank-deficient layers (CG projected on the null space's complement) keep the float64 one."""
    monkeypatch.setattr(preconditioners, "choose", lambda *args: "shared_torus")
    inv = _conv(cfg, 32)
    data = _data(inv, 33, noise)
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], True))
    steps = {}
    for lowered in (False, True):
        monkeypatch.setattr(preconditioners, "LOWERED_APPLY", lowered)
        sol = solve_conv(inv, data["k"], data["g"], data["z"], True, STRUCTURED)
        assert sol.preconditioner == "shared_torus" and sol.converged and sol.rank == dense.rank
        assert _rel(sol.x, dense.x) < 1e-8
        steps[lowered] = sol.iterations
    if dense.rank < inv.n:
        assert steps[True] == steps[False]
    else:
        assert steps[True] <= steps[False] + max(3, steps[False] // 10), steps


def test_float32_application_is_what_the_flag_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``build(float32=True)`` applies ``shared_torus`` in float32 (its output differs from the float64 one at
    float32 round-off, not at float64's); with ``LOWERED_APPLY`` off it is float64."""
    inv = _conv(FULL_RANK[1], 34)
    data = _data(inv, 35, 0.0)
    system = structured.ConvSystem(inv, data["k"], data["g"], data["z"], balance=True)
    r = torch.randn(inv.n, generator=torch.Generator().manual_seed(36), dtype=DTYPE)
    exact = preconditioners.build("shared_torus", system)(r)
    assert _rel(preconditioners.build("shared_torus", system, float32=True)(r), exact) > 1e-12
    assert _rel(preconditioners.build("shared_torus", system, float32=True)(r), exact) < 1e-5
    monkeypatch.setattr(preconditioners, "LOWERED_APPLY", False)
    assert _rel(preconditioners.build("shared_torus", system, float32=True)(r), exact) < 1e-14


@pytest.mark.parametrize("noise", [0.0, 0.01], ids=["consistent", "noisy"])
@pytest.mark.parametrize("cfg", [FULL_RANK[0], FULL_RANK[1], FULL_RANK[3], FULL_RANK[4], DEFICIENT[0], DEFICIENT[1]],
                         ids=["s1", "s2-k4", "s1-c4", "s3", "deficient-f1", "deficient-s3"])
def test_float32_products_keep_cg_exact(cfg: tuple, noise: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """CG's directions from float32 products (``LOWERED_PRODUCTS``) or float64 ones: the same dense (minimum-norm)
    solution to round-off, about as many steps; the float32 products are used exactly where CG is not
    projected on a null space (full-rank layers)."""
    inv = _conv(cfg, 42)
    data = _data(inv, 43, noise)
    dense = solve_gram(*inv.normal_equations(data["k"], data["g"], data["z"], True))
    original = matfree.PatchProduct.lowered
    lowered_calls: list[int] = []

    def spy(self: matfree.PatchProduct) -> object:
        lowered_calls.append(1)
        return original(self)

    monkeypatch.setattr(matfree.PatchProduct, "lowered", spy)
    steps = {}
    for lowered in (False, True):
        monkeypatch.setattr(structured, "LOWERED_PRODUCTS", lowered)
        lowered_calls.clear()
        sol = solve_conv(inv, data["k"], data["g"], data["z"], True, STRUCTURED)
        assert sol.converged and sol.rank == dense.rank and _rel(sol.x, dense.x) < 1e-9
        assert len(lowered_calls) == (1 if lowered and dense.rank == inv.n else 0)
        steps[lowered] = sol.iterations
    assert steps[True] <= steps[False] + max(3, steps[False] // 10), steps


def test_fft_size_is_the_next_2_3_5_smooth_number() -> None:
    smooth = sorted({2**a * 3**b * 5**c for a in range(12) for b in range(8) for c in range(6)})
    for n in range(1, 1000):
        assert fft_size(n) == next(m for m in smooth if m >= n), n
    assert torus_grid((3, 113, 113), (3, 3), (2, 2)) == (58, 58)  # 58 = 2 x 29
    assert torus_grid((3, 113, 113), (3, 3), (2, 2), fast=True) == (60, 60)


_LARGE_BLOCKS = """
import torch
from rgap.algorithm.circulant import TorusGramInverse
torch.set_num_threads(2)
torch.manual_seed(0)
weight = torch.randn(8, 48, 3, 3, dtype=torch.float64)  # 48 channels x 4 phases: 192 x 192 Fourier blocks
torus = TorusGramInverse(weight, (48, 12, 12), (2, 2), (1, 1), 1.0, 1e-3, relative=True)
print(torus.size, torch.isfinite(torus.inverse).all().item())
"""


def test_torus_inverse_of_large_blocks_returns_with_two_threads() -> None:
    """Batched LU with MKL and two threads never returned for ~150 x 150 blocks and more (pytorch #142815);
    the periodic inverse of a 48-channel stride-2 layer (192 x 192 blocks) must not take that route."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _LARGE_BLOCKS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["192", "True"]
    assert "incorrect on entry" not in proc.stderr


@pytest.mark.parametrize("definite", [True, False])
def test_hermitian_inverse_matches_dense_inverse(definite: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(5, 12, 12, dtype=torch.complex128, generator=gen)
    blocks = a.mH @ a + 0.1 * torch.eye(12, dtype=torch.complex128)
    if not definite:
        blocks[2] = -blocks[2]  # Hermitian, negative definite: Cholesky fails, the eigen route takes over
    expected = torch.stack([torch.linalg.inv(b) for b in blocks])  # unbatched LU, one at a time
    assert torch.allclose(hermitian_inverse(blocks), expected, rtol=0, atol=1e-12)


def test_channel_weight_grams_are_the_diagonal_blocks() -> None:
    inv = _conv((3, 7, 8, 4, (3, 2), 2, 1), 20)
    like = torch.zeros(1, dtype=DTYPE)
    c, p = inv.input_shape[0], inv.input_shape[1] * inv.input_shape[2]
    full = inv.weight_gram(like).reshape(c, p, c, p)
    blocks = inv.channel_weight_grams(like)
    assert all(torch.allclose(blocks[i], full[i, :, i, :], atol=1e-14) for i in range(c))
    assert torch.allclose(inv.channel_weight_traces(like), blocks.diagonal(dim1=-2, dim2=-1).sum(-1))


# -------------------------------------------------------------------------------------------- the option
@pytest.mark.parametrize("value", ["fast", "", 1, None, math.nan, True], ids=repr)
def test_solver_option_is_validated(value: object) -> None:
    with pytest.raises(UserInputError, match="attack.solver"):
        RGAP(solver=value)  # type: ignore[arg-type]


def test_generic_solver_keeps_the_dense_path() -> None:
    model = models.cnn6((3, 24, 24), seed=0)
    images = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    shared = compute_shared_gradient(model, images, torch.tensor([0]), label_mode="reversed")
    generic = RGAP(solver="generic").reconstruct(shared)
    fast = RGAP().reconstruct(shared)
    assert ":pre=" not in generic.info["rgap_layers"] and ":pre=" in fast.info["rgap_layers"]
    assert _rel(fast.reconstruction, generic.reconstruction) < 1e-8


def test_weight_cache_follows_the_weight_values() -> None:
    """Cached weight-only quantities are recomputed when a weight changes, and reused otherwise."""
    weightcache.clear()
    inv = _conv((2, 9, 9, 4, (3, 3), 2, 1), 24)
    first = weight_bounds(inv)
    assert weight_bounds(inv) is first
    like = torch.zeros(1, dtype=DTYPE)
    gram = inv._weight_gram_copy(like)
    with torch.no_grad():
        inv.layer.weight.mul_(2.0)
    second = weight_bounds(inv)
    assert second is not first and second.lam_max == pytest.approx(4.0 * first.lam_max, rel=1e-6)
    assert torch.allclose(inv._weight_gram_copy(like), 4.0 * gram) and torch.allclose(inv.weight_gram(like), 4.0 * gram)
