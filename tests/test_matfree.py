"""Matrix-free normal equations and conjugate gradients (``rgap.algorithm.matfree``) against independent references.

References are dense Jacobians from ``torch.autograd.functional.jacobian`` of the real ``nn.Conv2d`` /
``nn.Linear`` modules (``K``: x -> dl/dW, ``A``: x -> layer(x)), dense eigen/least-squares solves, and the
dense path of the inverters (``solve_gram``), which ``tests/test_inverters.py`` checks against autograd.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgap.algorithm import matfree
from rgap.algorithm.inverters import Conv2dInverter, make_inverter
from rgap.algorithm.matfree import conjugate_gradient, lanczos_cond, solve_normal
from rgap.algorithm.recursive import RGAP
from rgap.algorithm.solvers import SolveOptions
from rgap.client.gradient import compute_shared_gradient
from rgap.core.errors import UserInputError
from rgap.evaluation.metrics import image_metrics
from rgap.zoo import models
from rgap.zoo.data import load_sample

DTYPE = torch.float64
FORCE_CG = SolveOptions(dense_limit=0)

# (in_channels, height, width, out_channels, kernel, stride, padding); all full rank with weight constraints.
CONV_CONFIGS = [
    (2, 6, 6, 4, (3, 3), 1, 1),
    (1, 7, 6, 3, (3, 2), 1, 0),
    (3, 9, 9, 5, (4, 4), 2, 2),
    (2, 8, 7, 6, (3, 3), 2, 1),
    (2, 9, 8, 8, (3, 3), 3, 2),
    (2, 6, 6, 12, (2, 2), 2, 0),
    (2, 7, 7, 16, (5, 5), 3, 2),
    (1, 8, 8, 12, (4, 4), 3, 1),
]
# (in_features, out_features): wide, square, tall.
LINEAR_CONFIGS = [(12, 3), (7, 7), (5, 9)]


def _layer(kind: str, cfg: tuple, seed: int) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    torch.manual_seed(seed)
    if kind == "linear":
        return nn.Linear(cfg[0], cfg[1], bias=False).to(DTYPE), (cfg[0],), (cfg[1],)
    c, h, w, f, kernel, stride, padding = cfg
    layer = nn.Conv2d(c, f, kernel, stride=stride, padding=padding, bias=False).to(DTYPE)
    with torch.no_grad():
        out_shape = tuple(layer(torch.zeros(1, c, h, w, dtype=DTYPE)).shape[1:])
    return layer, (c, h, w), out_shape


CASES = [pytest.param(("conv", cfg), id=f"conv{i}-s{cfg[5]}-p{cfg[6]}") for i, cfg in enumerate(CONV_CONFIGS)] + [
    pytest.param(("linear", cfg), id=f"linear-{cfg[0]}to{cfg[1]}") for cfg in LINEAR_CONFIGS
]


@pytest.fixture(params=CASES, scope="module")
def case(request: pytest.FixtureRequest) -> dict:
    """Layer, inverter, autograd Jacobians K and A, a true input x and noisy (inconsistent) data g, z."""
    kind, cfg = request.param
    seed = 5 + len(repr(cfg))
    layer, in_shape, out_shape = _layer(kind, cfg, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    weight = layer.weight.detach()

    def forward(v: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": weight}, (v.unsqueeze(0),))[0]

    def weight_grad(v: torch.Tensor) -> torch.Tensor:
        w = weight.clone().requires_grad_(True)
        out = torch.func.functional_call(layer, {"weight": w}, (v.unsqueeze(0),))[0]
        return torch.autograd.grad((out * k).sum(), w, create_graph=True)[0].reshape(-1)

    n = x.numel()
    jac_k = torch.autograd.functional.jacobian(weight_grad, x).reshape(-1, n)
    jac_a = torch.autograd.functional.jacobian(lambda v: forward(v).reshape(-1), x).reshape(-1, n)
    g = (jac_k @ x.reshape(-1)) * (1 + 0.01 * torch.randn(jac_k.shape[0], generator=gen, dtype=DTYPE))
    z = (jac_a @ x.reshape(-1)) + 0.01 * torch.randn(jac_a.shape[0], generator=gen, dtype=DTYPE)
    return {"inv": make_inverter(layer, in_shape, out_shape), "K": jac_k, "A": jac_a, "k": k, "x": x,
            "g": g.reshape(weight.shape), "z": z.reshape(out_shape), "n": n}


def _reference(case: dict, with_z: bool, balance: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """Dense G, b and block weights (N / trace) from the autograd Jacobians."""
    jk, ja, n = case["K"], case["A"], case["n"]
    kk, aa = jk.T @ jk, ja.T @ ja
    if not with_z:
        return kk, jk.T @ case["g"].reshape(-1), (1.0, 1.0)
    wk, wa = (n / float(jk.pow(2).sum()), n / float(ja.pow(2).sum())) if balance else (1.0, 1.0)
    rhs = wk * jk.T @ case["g"].reshape(-1) + wa * ja.T @ case["z"].reshape(-1)
    return wk * kk + wa * aa, rhs, (wk, wa)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("with_z, balance", [(True, True), (True, False), (False, False)])
def test_operator_matches_dense_jacobians(case: dict, with_z: bool, balance: bool) -> None:
    inv = case["inv"]
    op = inv.normal_operator(case["k"], case["g"], case["z"] if with_z else None, balance)
    gram, rhs, weights = _reference(case, with_z, balance)
    assert op.n == case["n"] and op.weights == pytest.approx(weights, rel=1e-12)
    v = torch.randn(case["n"], generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    assert _rel(op.matvec(v), gram @ v) < 1e-13
    assert _rel(op.rhs, rhs) < 1e-13
    torch.testing.assert_close(op.diagonal, torch.diagonal(gram), rtol=1e-13, atol=1e-14)


def test_operator_buffers_are_reused_safely(case: dict) -> None:
    """matvec writes into fixed buffers: consecutive products stay linear and leave their input intact."""
    op = case["inv"].normal_operator(case["k"], case["g"], case["z"], True)
    gram, _, _ = _reference(case, True, True)
    gen = torch.Generator().manual_seed(9)
    v1, v2 = (torch.randn(case["n"], generator=gen, dtype=DTYPE) for _ in range(2))
    saved = v1.clone()
    first = op.matvec(v1).clone()
    second = op.matvec(v2).clone()
    assert torch.equal(v1, saved)
    assert _rel(op.matvec(v1 + v2), first + second) < 1e-13 and _rel(second, gram @ v2) < 1e-13


def test_operator_traces_match_block_weight(case: dict) -> None:
    """The balance weights from traces equal ``block_weight`` of the inverter's own dense Gram blocks."""
    from rgap.algorithm.inverters import block_weight

    inv, k = case["inv"], case["k"]
    op = inv.normal_operator(k, case["g"], case["z"], balance=True)
    kk, _ = inv.gradient_normal(k, case["g"])
    assert op.weights == pytest.approx((block_weight(kk), block_weight(inv.weight_gram(k))), rel=1e-12)


def test_conv_gradient_adjoint_is_conv2d_input() -> None:
    """<G, K v> = <K^T G, v> with K v = dl/dW and K^T G = conv2d_input(shape, G, k); and K^T K v matches."""
    layer, in_shape, out_shape = _layer("conv", (3, 11, 10, 5, (3, 4), 2, 1), 0)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(out_shape, generator=gen, dtype=DTYPE), torch.randn(in_shape, generator=gen, dtype=DTYPE)
    big_g = torch.randn(layer.weight.shape, generator=gen, dtype=DTYPE)

    def adjoint(grad: torch.Tensor) -> torch.Tensor:
        return torch.nn.grad.conv2d_input((1, *in_shape), grad, k.unsqueeze(0), layer.stride, layer.padding)[0]

    lhs = float((big_g * inv.weight_gradient(k, v)).sum())
    assert lhs == pytest.approx(float((adjoint(big_g) * v).sum()), rel=1e-12)
    op = inv.normal_operator(k, torch.zeros_like(big_g), None)
    assert _rel(op.matvec(v.reshape(-1)), adjoint(inv.weight_gradient(k, v)).reshape(-1)) < 1e-13
    # A^T A v with conv ops: the input gradient of the convolution applied to A v.
    op_a = inv.normal_operator(torch.zeros(out_shape, dtype=DTYPE), torch.zeros_like(big_g), inv.forward(v))
    expected = torch.nn.grad.conv2d_input((1, *in_shape), layer.weight.detach(), F.conv2d(
        v.unsqueeze(0), layer.weight.detach(), stride=layer.stride, padding=layer.padding), layer.stride,
        layer.padding)
    assert _rel(op_a.matvec(v.reshape(-1)), expected.reshape(-1)) < 1e-13


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("preconditioner", ["none", "jacobi"])
def test_cg_matches_dense_solve(case: dict, balance: bool, preconditioner: str) -> None:
    inv, k, g, z = case["inv"], case["k"], case["g"], case["z"]
    dense = inv.solve(k, g, z, balance)
    assert dense.method in ("cholesky", "woodbury")  # the cases are full rank
    cg = inv.solve(k, g, z, balance, SolveOptions(dense_limit=0, preconditioner=preconditioner))
    assert (cg.method, cg.rank, cg.n, cg.rank_computed, cg.converged) == ("cg", case["n"], case["n"], False, True)
    assert _rel(cg.x, dense.x) < 1e-8
    gram, rhs, _ = _reference(case, True, balance)
    assert cg.residual == pytest.approx(_rel(gram @ cg.x, rhs), rel=1e-3, abs=1e-15)
    assert cg.residual < 1e-11 and cg.iterations > 0
    # Lanczos estimate: a lower bound of the condition number of the (Jacobi-scaled) Gram matrix, near it.
    scale = torch.diagonal(gram).rsqrt() if preconditioner == "jacobi" else torch.ones(case["n"], dtype=DTYPE)
    eig = torch.linalg.eigvalsh(scale[:, None] * gram * scale[None, :])
    true_cond = float(eig[-1] / eig[0])
    assert 0.3 * true_cond <= cg.cond <= true_cond * (1 + 1e-6)


def test_cg_gradient_constraints_only(case: dict) -> None:
    inv = case["inv"]
    if isinstance(inv, Conv2dInverter):
        gram, rhs, _ = _reference(case, False, False)
        expected = torch.linalg.lstsq(gram, rhs.unsqueeze(1), driver="gelsd").solution[:, 0]
        cg = inv.solve(case["k"], case["g"], None, False, FORCE_CG)
        assert cg.method == "cg" and _rel(cg.x, expected) < 1e-8
    else:  # K^T K = |k|^2 I is solved directly whatever the size
        cg = inv.solve(case["k"], case["g"], None, False, FORCE_CG)
        expected = case["K"].T @ case["g"].reshape(-1) / case["k"].pow(2).sum()
        assert cg.method == "direct" and _rel(cg.x, expected) < 1e-12


def test_plain_cg_gives_minimum_norm_solution_of_rank_deficient_conv() -> None:
    """Few filters and stride 3 > kernel leave pixels unseen: plain CG returns the pseudo-inverse solution."""
    layer, in_shape, out_shape = _layer("conv", (3, 10, 9, 4, (3, 3), 3, 0), 2)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(4)
    x, k = torch.rand(in_shape, generator=gen, dtype=DTYPE), torch.randn(out_shape, generator=gen, dtype=DTYPE)
    g, z = inv.weight_gradient(k, x), inv.forward(x)
    stacked, values = inv.stacked_system(k, g, z)
    wk = inv.n / float(inv.gradient_matrix(k).pow(2).sum())
    wa = inv.n / float(inv.weight_matrix(k).pow(2).sum())
    rows = inv.gradient_matrix(k).shape[0]
    weights = torch.cat([torch.full((rows,), wk**0.5), torch.full((stacked.shape[0] - rows,), wa**0.5)]).to(DTYPE)
    expected = torch.linalg.pinv(weights[:, None] * stacked, rtol=1e-10) @ (weights * values)
    assert torch.linalg.matrix_rank(stacked) < inv.n
    cg = inv.solve(k, g, z, True, SolveOptions(dense_limit=0, preconditioner="none"))
    assert _rel(cg.x, expected) < 1e-8 and cg.converged
    assert _rel(inv.solve(k, g, z, True).x, expected) < 1e-8  # the dense path agrees


def test_cg_iteration_cap_returns_last_iterate_with_true_residual(case: dict) -> None:
    inv = case["inv"]
    cg = inv.solve(case["k"], case["g"], case["z"], True, SolveOptions(dense_limit=0, cg_maxiter=2))
    gram, rhs, _ = _reference(case, True, True)
    assert cg.method == "cg" and cg.converged is False and cg.iterations == 2
    assert cg.residual == pytest.approx(_rel(gram @ cg.x, rhs), rel=1e-9) and cg.residual > 1e-6


def test_small_layers_keep_the_dense_path_bit_identical(case: dict) -> None:
    inv, k, g, z = case["inv"], case["k"], case["g"], case["z"]
    dense = inv.solve(k, g, z, True)
    with_options = inv.solve(k, g, z, True, SolveOptions(dense_limit=case["n"]))
    assert with_options.method == dense.method and torch.equal(with_options.x, dense.x)


def test_linear_woodbury_is_kept_while_its_small_system_fits() -> None:
    layer, in_shape, out_shape = _layer("linear", (40, 3), 1)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(0)
    x, k = torch.rand(in_shape, generator=gen, dtype=DTYPE), torch.randn(out_shape, generator=gen, dtype=DTYPE)
    g, z = inv.weight_gradient(k, x), inv.forward(x)
    assert inv.solve(k, g, z, True, SolveOptions(dense_limit=3)).method == "woodbury"
    cg = inv.solve(k, g, z, True, SolveOptions(dense_limit=2))
    assert cg.method == "cg" and _rel(cg.x, x.reshape(-1)) < 1e-8


def test_large_layers_never_form_a_dense_gram() -> None:
    """A dense Gram of these layers would need 300 GB (conv) and 8 TB (linear): only matrix-free paths run."""
    conv = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False).to(DTYPE)
    inv = make_inverter(conv, (3, 256, 256), (16, 256, 256))
    gen = torch.Generator().manual_seed(0)
    x, k = torch.rand(inv.input_shape, generator=gen, dtype=DTYPE), torch.randn(16, 256, 256, generator=gen,
                                                                                 dtype=DTYPE)
    sol = inv.solve(k, inv.weight_gradient(k, x), inv.forward(x), True, SolveOptions(cg_maxiter=3))
    assert sol.method == "cg" and sol.iterations == 3 and not sol.converged and sol.x.shape == (inv.n,)
    fc = nn.Linear(1_000_000, 1, bias=False).to(DTYPE)
    inv = make_inverter(fc, (1_000_000,), (1,))
    x, k = torch.rand(1_000_000, generator=gen, dtype=DTYPE), torch.tensor([0.3], dtype=DTYPE)
    g, z = inv.weight_gradient(k, x), inv.forward(x)
    assert inv.solve(k, g, z, True, SolveOptions()).method == "woodbury"
    sol = inv.solve(k, g, z, True, SolveOptions(dense_limit=0))
    assert sol.method == "cg" and _rel(sol.x, x) < 1e-8


def test_conjugate_gradient_on_explicit_spd_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=DTYPE))
    eig = torch.logspace(0, 3, 30, dtype=DTYPE)
    mat = q @ torch.diag(eig) @ q.T
    b = torch.randn(30, generator=gen, dtype=DTYPE)
    res = conjugate_gradient(lambda v: mat @ v, b, None, 1e-13, 500)
    assert res.converged and _rel(res.x, torch.linalg.solve(mat, b)) < 1e-10
    assert lanczos_cond(res.alphas, res.betas) == pytest.approx(1e3, rel=1e-6)
    zero = conjugate_gradient(lambda v: mat @ v, torch.zeros(30, dtype=DTYPE), None, 1e-12, 10)
    assert zero.converged and zero.iterations == 0 and not zero.x.any()


def _spd(n: int, decades: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An SPD matrix with eigenvalues log-spaced over ``decades`` decades, and a right-hand side."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    return q @ torch.diag(torch.logspace(0, decades, n, dtype=DTYPE)) @ q.T, torch.randn(n, generator=gen, dtype=DTYPE)


def _true_residual(mat: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(b - mat @ x) / torch.linalg.vector_norm(b))


def test_float32_products_with_reliable_updates_reach_float64_accuracy() -> None:
    """Search directions from float32 products, true residuals in float64: the float64 tolerance holds for the
    true residual, in about as many steps as exact products take; CG whose only product is the float32 one
    claims the same tolerance from its recursive residual while the true one stays near float32 accuracy."""
    mat, b = _spd(200, 3, 0)
    low = mat.float()

    def fast(v: torch.Tensor) -> torch.Tensor:
        return (low @ v.float()).double()

    exact = conjugate_gradient(lambda v: mat @ v, b, None, 1e-13, 3000)
    reliable = conjugate_gradient(lambda v: mat @ v, b, None, 1e-13, 3000, fast_matvec=fast)
    assert reliable.converged and _true_residual(mat, reliable.x, b) <= 1e-13
    assert _rel(reliable.x, torch.linalg.solve(mat, b)) < 1e-10
    assert reliable.iterations <= 1.3 * exact.iterations
    naive = conjugate_gradient(fast, b, None, 1e-13, 3000)
    assert naive.converged and _true_residual(mat, naive.x, b) > 1e-9


def test_inexact_products_that_stall_hand_over_to_exact_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eigenvalues over 4 decades: float32 products stall short of 1e-13 (without the hand-over CG does not
    converge in 3,000 steps, exact products need about 850); with it CG finishes with exact products."""
    mat, b = _spd(200, 4, 0)
    low = mat.float()
    calls = {"exact": 0}

    def exact(v: torch.Tensor) -> torch.Tensor:
        calls["exact"] += 1
        return mat @ v

    def fast(v: torch.Tensor) -> torch.Tensor:
        return (low @ v.float()).double()

    result = conjugate_gradient(exact, b, None, 1e-13, 3000, fast_matvec=fast)
    assert result.converged and _true_residual(mat, result.x, b) < 1e-12
    assert calls["exact"] > 30  # replacements alone would be about 15
    monkeypatch.setattr(matfree, "STALL_FACTOR", float("inf"))
    assert not conjugate_gradient(lambda v: mat @ v, b, None, 1e-13, 3000, fast_matvec=fast).converged


@pytest.mark.parametrize("error", [1e-3, 1e-2, 0.5])
def test_bad_inexact_products_do_not_change_the_answer(error: float) -> None:
    """A fast product that is not the operator (a symmetric error of ``error`` times its norm; at 1e-3 CG on it
    diverges without breaking down): CG still ends at the true solution, by exact products."""
    mat, b = _spd(200, 3, 0)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(200, 200, generator=gen, dtype=DTYPE)
    noise = noise + noise.T
    wrong = mat + error * torch.linalg.matrix_norm(mat, 2) / torch.linalg.matrix_norm(noise, 2) * noise
    result = conjugate_gradient(lambda v: mat @ v, b, None, 1e-13, 3000, fast_matvec=lambda v: wrong @ v)
    assert result.converged and _true_residual(mat, result.x, b) < 2e-13
    assert _rel(result.x, torch.linalg.solve(mat, b)) < 1e-10


@pytest.mark.parametrize("block", [False, True], ids=["patch-gradient", "channel-block"])
@pytest.mark.parametrize("cfg", [CONV_CONFIGS[0], CONV_CONFIGS[2], CONV_CONFIGS[6]], ids=["s1", "s2", "s3"])
def test_lowered_patch_product_is_the_product_at_float32_round_off(cfg: tuple, block: bool) -> None:
    """``PatchProduct.lowered``: the same ``G v`` as the dense Gram (autograd-checked path) to float32 accuracy,
    and not to float64's (it is computed in float32), returned in float64."""
    layer, in_shape, out_shape = _layer("conv", cfg, 40)
    inv = make_inverter(layer, in_shape, out_shape)
    gen = torch.Generator().manual_seed(41)
    k = torch.randn(out_shape, generator=gen, dtype=DTYPE)
    x = torch.rand(in_shape, generator=gen, dtype=DTYPE)
    op = inv.normal_operator(k, inv.weight_gradient(k, x), inv.forward(x), True)
    gram, _ = inv.normal_equations(k, inv.weight_gradient(k, x), inv.forward(x), True)
    if block:
        op.matvec.use_channel_block(op.weights[0] * inv.gradient_block(k))
    v = torch.randn(inv.n, generator=gen, dtype=DTYPE)
    product = op.matvec.lowered()(v)
    assert product.dtype == DTYPE
    assert 1e-12 < _rel(product, gram @ v) < 1e-5
    assert _rel(op.matvec(v), gram @ v) < 1e-12


def test_unknown_preconditioner_is_refused() -> None:
    layer, in_shape, out_shape = _layer("linear", (6, 2), 0)
    op = make_inverter(layer, in_shape, out_shape).normal_operator(torch.ones(2, dtype=DTYPE),
                                                                   torch.ones(2, 6, dtype=DTYPE), None)
    with pytest.raises(ValueError, match="preconditioner"):
        solve_normal(op, SolveOptions(preconditioner="ilu"))


def test_rgap_matrix_free_reconstructs_cnn6() -> None:
    """End to end on CNN6 at 3x16x16 (float64 gradient): every layer by CG, same image as the dense path."""
    dataset = load_sample(size=16)
    images, labels = dataset.get([5])
    model = models.cnn6(dataset.shape, seed=0)
    shared = compute_shared_gradient(model, images, labels, label_mode="reversed")
    dense = RGAP().reconstruct(shared)
    cg = RGAP(dense_limit=0).reconstruct(shared)
    layers = cg.info["rgap_layers"].split()
    assert all(":cg" in text for text in layers if text.startswith("conv")), layers
    assert ":cg" not in dense.info["rgap_layers"]
    assert image_metrics(cg.reconstruction, images).values["psnr"] >= 100
    assert image_metrics(dense.reconstruction, images).values["psnr"] >= 100
    assert _rel(cg.reconstruction, dense.reconstruction) < 1e-7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_operator_and_cg_on_cuda(case: dict) -> None:
    inv, k, g, z = case["inv"], case["k"], case["g"], case["z"]
    cpu = inv.solve(k, g, z, True, FORCE_CG)
    gpu = inv.solve(k.cuda(), g.cuda(), z.cuda(), True, FORCE_CG)
    assert gpu.x.is_cuda and gpu.method == "cg" and _rel(gpu.x.cpu(), cpu.x) < 1e-9


# --------------------------------------------------------------------------------------------------------
# Offline photos at larger sizes
# --------------------------------------------------------------------------------------------------------
#: sha256 of ``round(255 * images)`` (uint8) of ``load_sample()`` as shipped before the ``size`` option.
SAMPLE_32_SHA256 = "235a20b9e0be6774e8ca97e52c1d50eb69e8a993738b01e45f28681645cfca7a"


def test_sample_size_32_is_unchanged() -> None:
    x, y = load_sample(num_classes=2, size=32).get(range(32))
    as_bytes = (x * 255).round().to(torch.uint8)
    assert torch.equal(as_bytes.to(torch.float32) / 255, x)
    assert hashlib.sha256(as_bytes.numpy().tobytes()).hexdigest() == SAMPLE_32_SHA256
    assert torch.equal(load_sample().get(range(32))[0], x)


def test_sample_size_64_cuts_the_same_quadrants() -> None:
    small, labels_small = load_sample(size=32).get(range(32))
    x, labels = load_sample(size=64).get(range(32))
    assert x.shape == (32, 3, 64, 64) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(labels, labels_small)
    # 2x2-averaging the 64 px set must look like the 32 px set (same quadrants of the same photos).
    psnr = image_metrics(F.avg_pool2d(x, 2).clamp(0, 1), small).values["psnr"]
    assert psnr > 25
    with pytest.raises(UserInputError, match="size"):
        load_sample(size=0)
