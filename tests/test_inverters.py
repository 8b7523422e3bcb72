"""Independent checks of the per-layer R-GAP constraint systems in ``rgap.algorithm.inverters``.

Every expected value is built from torch.autograd / torch.func on the real ``nn.Conv2d`` / ``nn.Linear``
module and from dense linear algebra (``torch.linalg.pinv`` / ``lstsq``), never from the inverter itself.

Notation (one sample, no batch dim): ``z = A x`` is the layer, ``k = dl/dz`` the output gradient,
``K(k)`` the map ``x -> vec(dl/dW)``; the stacked system is ``M = [K; A]``, ``b = [vec g; z]``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rgap.algorithm.inverters import LayerInverter, LinearInverter, make_inverter
from rgap.core.errors import UnsupportedLayerError

DTYPE = torch.float64

# (in_channels, height, width, out_channels, kernel, stride, padding)
CONV_CONFIGS = [
    (1, 5, 5, 2, (3, 3), 1, 0),
    (2, 5, 6, 3, (3, 3), 1, 1),
    (2, 7, 9, 3, (3, 2), 1, 2),
    (3, 6, 6, 4, (3, 3), 2, 1),
    (2, 7, 9, 3, (3, 2), 2, 0),
    (1, 8, 7, 2, (4, 4), 2, 2),
    (2, 8, 8, 5, (2, 3), 3, 1),
    (1, 9, 8, 2, (3, 3), 3, 0),
    (3, 4, 5, 1, (1, 1), 1, 0),
    (2, 6, 7, 3, (2, 2), 3, 0),  # stride > kernel: some input pixels are seen by no patch (zero columns)
]
# (in_features, out_features)
LINEAR_CONFIGS = [(6, 4), (5, 5), (4, 9), (12, 3)]


def _conv_id(cfg: tuple) -> str:
    c, h, w, f, (kh, kw), s, p = cfg
    return f"conv-in{c}x{h}x{w}-out{f}-k{kh}x{kw}-s{s}-p{p}"


def _make_conv(cfg: tuple, seed: int) -> tuple[nn.Conv2d, tuple[int, ...], tuple[int, ...]]:
    c, h, w, f, kernel, stride, padding = cfg
    torch.manual_seed(seed)
    layer = nn.Conv2d(c, f, kernel, stride=stride, padding=padding, bias=False).to(DTYPE)
    with torch.no_grad():
        out_shape = tuple(layer(torch.zeros(1, c, h, w, dtype=DTYPE)).shape[1:])
    return layer, (c, h, w), out_shape


def _make_linear(cfg: tuple, seed: int) -> tuple[nn.Linear, tuple[int, ...], tuple[int, ...]]:
    n_in, n_out = cfg
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=False).to(DTYPE), (n_in,), (n_out,)


LAYER_CASES = [pytest.param(("conv", cfg), id=_conv_id(cfg)) for cfg in CONV_CONFIGS] + [
    pytest.param(("linear", cfg), id=f"linear-{cfg[0]}to{cfg[1]}") for cfg in LINEAR_CONFIGS
]


@pytest.fixture(params=LAYER_CASES, scope="module")
def case(request: pytest.FixtureRequest) -> dict:
    """A random float64 layer, its inverter, random x, k (seeded per case) and the reference K(k), A."""
    kind, cfg = request.param
    seed = 17 + sum(int(v) if isinstance(v, int) else sum(v) for v in cfg)  # deterministic, differs per case
    layer, in_shape, out_shape = (_make_conv if kind == "conv" else _make_linear)(cfg, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    return {
        "layer": layer,
        "inv": make_inverter(layer, in_shape, out_shape),
        "in_shape": in_shape,
        "out_shape": out_shape,
        "x": x,
        "k": k,
        "seed": seed,
        "K": ref_gradient_matrix(layer, in_shape, k),
        "A": ref_weight_matrix(layer, in_shape),
    }


def random_data(case: dict, salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Arbitrary (generally inconsistent) data g, z of the layer's shapes."""
    gen = torch.Generator().manual_seed(case["seed"] * 100 + salt)
    g = torch.randn(case["layer"].weight.shape, generator=gen, dtype=DTYPE)
    z = torch.randn(case["out_shape"], generator=gen, dtype=DTYPE)
    return g, z


# ---------------------------------------------------------------------------------------------------
# Independent references (autograd on the real module)
# ---------------------------------------------------------------------------------------------------


def ref_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer(x.unsqueeze(0))[0]


def ref_weight_grad(layer: nn.Module, x: torch.Tensor, k: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """dl/dW for input ``x`` and output gradient ``k``: autograd of <k, layer(x)> w.r.t. the weight."""
    out = layer(x.unsqueeze(0))
    (grad,) = torch.autograd.grad(out, layer.weight, grad_outputs=k.unsqueeze(0), create_graph=create_graph)
    return grad


def ref_input_grad(layer: nn.Module, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(layer(x.unsqueeze(0)), x, grad_outputs=k.unsqueeze(0))
    return grad


def ref_gradient_matrix(layer: nn.Module, in_shape: tuple[int, ...], k: torch.Tensor) -> torch.Tensor:
    """Jacobian w.r.t. x of x -> autograd.grad(layer(x), W, grad_outputs=k, create_graph=True)."""

    def weight_grad_of_x(x: torch.Tensor) -> torch.Tensor:
        return ref_weight_grad(layer, x, k, create_graph=True).reshape(-1)

    x0 = torch.zeros(in_shape, dtype=DTYPE)
    jac = torch.autograd.functional.jacobian(weight_grad_of_x, x0, vectorize=True)
    return jac.reshape(layer.weight.numel(), -1)


def ref_weight_matrix(layer: nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Jacobian of the layer's forward (torch.func.jacrev), |z| x N."""
    x0 = torch.zeros(in_shape, dtype=DTYPE)
    params = {"weight": layer.weight.detach()}
    jac = torch.func.jacrev(lambda x: torch.func.functional_call(layer, params, (x.unsqueeze(0),))[0])(x0)
    n = x0.numel()
    return jac.reshape(-1, n)


def ref_stacked(case: dict, g: torch.Tensor, z: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense M = [K; A] and b = [vec g; z] from the reference Jacobians (only K and vec g when z is None)."""
    kmat = case["K"] if "K" in case else ref_gradient_matrix(case["layer"], case["in_shape"], case["k"])
    if z is None:
        return kmat, g.reshape(-1)
    amat = case["A"] if "A" in case else ref_weight_matrix(case["layer"], case["in_shape"])
    return torch.cat([kmat, amat]), torch.cat([g.reshape(-1), z.reshape(-1)])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10, atol: float = 1e-10) -> None:
    torch.testing.assert_close(actual.to(DTYPE), expected.to(DTYPE), rtol=rtol, atol=atol)


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """Relative error in the 2-norm: |actual - expected| <= tol * max(|expected|, 1)."""
    err = float(torch.linalg.vector_norm(actual.reshape(-1) - expected.reshape(-1)))
    scale = max(float(torch.linalg.vector_norm(expected)), 1.0)
    assert err <= tol * scale, f"relative error {err / scale:.3e} > {tol:.0e}"


# ---------------------------------------------------------------------------------------------------
# Matrices and maps
# ---------------------------------------------------------------------------------------------------


def test_counts(case: dict) -> None:
    inv, layer = case["inv"], case["layer"]
    counts = inv.counts()
    n_in = int(torch.Size(case["in_shape"]).numel())
    n_out = int(torch.Size(case["out_shape"]).numel())
    assert (counts.x, counts.w, counts.z) == (n_in, layer.weight.numel(), n_out)
    assert inv.n == n_in


def test_forward_matches_module(case: dict) -> None:
    out = case["inv"].forward(case["x"])
    assert tuple(out.shape) == case["out_shape"]
    assert_close(out, ref_forward(case["layer"], case["x"]))


def test_input_vjp_matches_autograd(case: dict) -> None:
    vjp = case["inv"].input_vjp(case["k"])
    assert tuple(vjp.reshape(case["in_shape"]).shape) == case["in_shape"]
    assert_close(vjp.reshape(case["in_shape"]), ref_input_grad(case["layer"], case["x"], case["k"]))


def test_weight_gradient_matches_autograd(case: dict) -> None:
    grad = case["inv"].weight_gradient(case["k"], case["x"])
    assert_close(grad.reshape(case["layer"].weight.shape), ref_weight_grad(case["layer"], case["x"], case["k"]))


def test_gradient_matrix_is_jacobian_of_weight_gradient(case: dict) -> None:
    kmat = case["inv"].gradient_matrix(case["k"])
    expected = case["K"]
    assert kmat.shape == expected.shape
    assert_close(kmat, expected)
    # The rows are in vec(dl/dW) order: K x is the true weight gradient at a random x.
    assert_close(kmat @ case["x"].reshape(-1), ref_weight_grad(case["layer"], case["x"], case["k"]).reshape(-1))


def test_weight_matrix_is_jacobian_of_forward(case: dict) -> None:
    amat = case["inv"].weight_matrix(case["k"])
    expected = case["A"]
    assert amat.shape == expected.shape
    assert_close(amat, expected)


def test_weight_gram(case: dict) -> None:
    amat = case["A"]
    assert_close(case["inv"].weight_gram(case["k"]), amat.T @ amat)


def test_gradient_normal(case: dict) -> None:
    g, _ = random_data(case, salt=1)
    kmat = case["K"]
    gram, rhs = case["inv"].gradient_normal(case["k"], g)
    assert_close(gram, kmat.T @ kmat)
    assert_close(rhs, kmat.T @ g.reshape(-1))


@pytest.mark.parametrize("with_z", [True, False], ids=["K-and-A", "K-only"])
def test_normal_equations(case: dict, with_z: bool) -> None:
    # Arbitrary (inconsistent) right-hand sides, so rhs is tested as M^T b and not only through x.
    g, z = random_data(case, salt=2)
    z = z if with_z else None
    mat, b = ref_stacked(case, g, z)
    gram, rhs = case["inv"].normal_equations(case["k"], g, z)
    assert_close(gram, mat.T @ mat)
    assert_close(rhs.reshape(-1), mat.T @ b)
    # The base-class composition must agree with any specialised override (Conv2d builds it in place).
    base_gram, base_rhs = LayerInverter.normal_equations(case["inv"], case["k"], g, z)
    assert_close(base_gram, mat.T @ mat)
    assert_close(base_rhs.reshape(-1), mat.T @ b)


@pytest.mark.parametrize("with_z", [True, False], ids=["K-and-A", "K-only"])
def test_stacked_system(case: dict, with_z: bool) -> None:
    g, z = random_data(case, salt=3)
    z = z if with_z else None
    mat, b = ref_stacked(case, g, z)
    got_mat, got_b = case["inv"].stacked_system(case["k"], g, z)
    assert_close(got_mat, mat)
    assert_close(got_b, b)


# ---------------------------------------------------------------------------------------------------
# Solves
# ---------------------------------------------------------------------------------------------------


def test_solve_consistent_system(case: dict) -> None:
    """Consistent data (g, z) from a true x: exact recovery when [K; A] has full column rank, else min-norm."""
    layer, x, k = case["layer"], case["x"], case["k"]
    g = ref_weight_grad(layer, x, k)
    z = ref_forward(layer, x).detach()
    mat, b = ref_stacked(case, g, z)
    rank = int(torch.linalg.matrix_rank(mat))
    sol = case["inv"].solve(k, g, z)
    assert sol.n == mat.shape[1]
    assert sol.rank == rank
    if rank == mat.shape[1]:
        assert sol.method in ("cholesky", "woodbury")
        # Normal equations square the condition number; these tiny random layers have cond(M) < 1e3.
        assert float(torch.linalg.cond(mat)) < 1e3
        assert_rel(sol.x, x, 1e-9)
    else:
        assert sol.method == "pinv"
        assert_rel(sol.x, torch.linalg.pinv(mat) @ b, 1e-8)


def test_solve_least_squares_matches_pinv(case: dict) -> None:
    """Inconsistent data: the solve is the minimum-norm least-squares solution pinv(M) b."""
    g, z = random_data(case, salt=4)
    mat, b = ref_stacked(case, g, z)
    sol = case["inv"].solve(case["k"], g, z)
    assert_rel(sol.x, torch.linalg.pinv(mat) @ b, 1e-8)
    assert sol.rank == int(torch.linalg.matrix_rank(mat))


def test_solve_gradient_constraints_only(case: dict) -> None:
    """z=None drops the weight constraints: the solve uses K alone."""
    layer, x, k = case["layer"], case["x"], case["k"]
    g = ref_weight_grad(layer, x, k)
    mat, b = ref_stacked(case, g, None)
    sol = case["inv"].solve(k, g, None)
    assert_rel(sol.x, torch.linalg.pinv(mat) @ b, 1e-8)
    assert sol.rank == int(torch.linalg.matrix_rank(mat))


def test_rank_deficient_conv_returns_min_norm_solution() -> None:
    """One 2x2 filter with stride 2 on a 6x6 image: 4 + 9 constraints for 36 unknowns."""
    layer, in_shape, out_shape = _make_conv((1, 6, 6, 1, (2, 2), 2, 0), seed=3)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    g, z = ref_weight_grad(layer, x, k), ref_forward(layer, x).detach()
    case = {"layer": layer, "in_shape": in_shape, "k": k}
    mat, b = ref_stacked(case, g, z)
    rank = int(torch.linalg.matrix_rank(mat))
    assert rank < mat.shape[1]
    sol = inv.solve(k, g, z)
    assert (sol.method, sol.rank, sol.n) == ("pinv", rank, 36)
    expected = torch.linalg.pinv(mat) @ b
    assert_rel(sol.x, expected, 1e-8)
    # The minimum-norm solution satisfies the (consistent) constraints but is not x.
    assert_rel(mat @ sol.x, b, 1e-8)
    assert float((sol.x - x.reshape(-1)).abs().max()) > 1e-3


def test_uncovered_pixels_get_zero_in_min_norm_solution() -> None:
    """Stride 3 with a 2x2 kernel leaves rows/columns 2 and 5 unseen: their columns of M are zero."""
    layer, in_shape, out_shape = _make_conv((1, 6, 6, 4, (2, 2), 3, 0), seed=5)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    g, z = ref_weight_grad(layer, x, k), ref_forward(layer, x).detach()
    sol = inv.solve(k, g, z)
    seen = torch.zeros(6, 6, dtype=torch.bool)
    seen[[0, 1, 3, 4]] = True
    seen[:, [2, 5]] = False
    seen[[2, 5]] = False
    recon = sol.x.reshape(6, 6)
    assert sol.method == "pinv"
    assert sol.rank == int(seen.sum())
    assert_close(recon[seen], x[0][seen], rtol=0, atol=1e-9)
    assert float(recon[~seen].abs().max()) < 1e-12


def test_linear_with_zero_k_uses_weight_constraints_only() -> None:
    """k = 0 removes every gradient constraint; a wide layer then leaves a min-norm solution."""
    layer, in_shape, out_shape = _make_linear((7, 3), seed=8)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(9)
    k = torch.zeros(out_shape, dtype=DTYPE)
    g = torch.zeros(layer.weight.shape, dtype=DTYPE)
    z = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    sol = inv.solve(k, g, z)
    assert (sol.method, sol.rank) == ("pinv", 3)
    assert_rel(sol.x, torch.linalg.pinv(layer.weight.detach()) @ z, 1e-9)


@pytest.mark.parametrize(("n_in", "n_out", "seed"), [(8, 3, 0), (20, 5, 1), (50, 1, 2), (9, 8, 3)])
def test_linear_woodbury_matches_dense_solve(n_in: int, n_out: int, seed: int) -> None:
    """Wide Linear layers (n_out < n_in) take the Woodbury path; it must equal the dense least-squares solve."""
    layer, in_shape, out_shape = _make_linear((n_in, n_out), seed=seed)
    inv = make_inverter(layer, in_shape, out_shape)
    assert isinstance(inv, LinearInverter)
    gen = torch.Generator().manual_seed(100 + seed)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    case = {"layer": layer, "in_shape": in_shape, "k": k}

    # Inconsistent right-hand side: tests the least-squares solution itself.
    g = torch.randn(layer.weight.shape, generator=gen, dtype=DTYPE)
    z = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    mat, b = ref_stacked(case, g, z)
    sol = inv.solve(k, g, z)
    assert (sol.method, sol.rank, sol.n) == ("woodbury", n_in, n_in)
    dense = torch.linalg.lstsq(mat, b.unsqueeze(1), driver="gelsd").solution.reshape(-1)
    assert_rel(sol.x, dense, 1e-10)
    assert_rel(sol.x, LayerInverter.solve(inv, k, g, z).x, 1e-10)

    # Consistent data: exact recovery.
    g, z = ref_weight_grad(layer, x, k), ref_forward(layer, x).detach()
    assert_rel(inv.solve(k, g, z).x, x, 1e-10)


def test_linear_tall_layer_uses_cholesky() -> None:
    layer, in_shape, out_shape = _make_linear((4, 9), seed=11)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(12)
    x, k = torch.rand(in_shape, generator=gen, dtype=DTYPE), torch.randn(out_shape, generator=gen, dtype=DTYPE)
    sol = inv.solve(k, ref_weight_grad(layer, x, k), ref_forward(layer, x).detach())
    assert sol.method == "cholesky"
    assert_rel(sol.x, x, 1e-10)


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(3)], ids=lambda m: type(m).__name__)
def test_make_inverter_rejects_unknown_layers(layer: nn.Module) -> None:
    with pytest.raises(UnsupportedLayerError, match=type(layer).__name__):
        make_inverter(layer, (3, 4, 4), (3, 4, 4))


def test_conv_inverter_requires_chw_input() -> None:
    layer = nn.Conv2d(1, 2, 3, bias=False).to(DTYPE)
    with pytest.raises(UnsupportedLayerError, match="Conv2d input must be"):
        make_inverter(layer, (16,), (2, 2, 2))
