"""R-GAP with eval-mode batch norm, average pooling and pass-through layers, on random small networks.

Every expected value comes from ``tests/stage_reference.py`` (autograd through the real modules), never from
``rgap``. Exact cases (every stage's stacked system full rank, cond <= COND_MAX at the true k) must reproduce
the input to ``TOL`` (the argument of ``tests/test_rgap_exact.py``). Where a pool makes a stage rank-deficient,
R-GAP must return the minimum-norm least-squares solution of that stage's stacked system, compared with
``torch.linalg.lstsq`` of the explicitly built system.
"""

from __future__ import annotations

import math

import pytest
import torch
from stage_reference import DTYPE, Block, client, random_bn, reversed_label, sequential, stacked_reference
from torch import nn

from rgap.algorithm.composite import make_stage_inverter
from rgap.algorithm.network import parse_stages
from rgap.algorithm.recursive import RGAP
from rgap.algorithm.solvers import SolveOptions
from rgap.attack import SharedGradient
from rgap.attack.losses import logistic_loss

TOL = 1e-6
COND_MAX = 1e4
SHAPE = (2, 5, 5)


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _conv(cin: int, cout: int, bias: bool = False, **kw) -> nn.Module:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias, **kw).to(DTYPE)


def _fc(cin: int, cout: int, bias: bool = False) -> nn.Module:
    return nn.Linear(cin, cout, bias=bias).to(DTYPE)


def bn_blocks(seed: int, affine: bool, bias: bool) -> list[Block]:
    """BatchNorm2d after conv1 (before its activation) and before conv2 (after conv1's activation), BatchNorm1d
    before fc1 and after it (before its activation); ``affine`` and layer ``bias`` as given."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    return [
        Block(_conv(2, 6, bias), post=[random_bn(6, 2, affine, gen)], act=_lrelu()),
        Block(_conv(6, 8, bias), pre=[random_bn(6, 2, affine, gen)], act=_lrelu()),
        Block(_fc(200, 16, bias), pre=[nn.Flatten(), random_bn(200, 1, affine, gen)],
              post=[random_bn(16, 1, affine, gen)], act=nn.Sigmoid() if seed % 2 else _lrelu()),
        Block(_fc(16, 1)),
    ]


def _input(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.rand(1, *shape, generator=torch.Generator().manual_seed(1000 + seed), dtype=DTYPE)


def _attack(model: nn.Module, x: torch.Tensor, **kwargs):
    labels = reversed_label(model, x)
    grads = torch.autograd.grad(logistic_loss(model(x), labels), list(model.parameters()))
    shared = SharedGradient(model, list(grads), labels, "logistic", tuple(x.shape[1:]), 1)
    return RGAP(**kwargs).reconstruct(shared)


def _assert_well_posed(blocks: list[Block], model: nn.Module, x: torch.Tensor) -> None:
    _, truths = client(model, blocks, x, reversed_label(model, x))
    for block, truth in zip(blocks, truths, strict=True):
        mat, rhs = stacked_reference(block, truth)
        torch.testing.assert_close(mat @ truth.x.reshape(-1), rhs, rtol=1e-10, atol=1e-12)  # the reference is right
        assert int(torch.linalg.matrix_rank(mat)) == mat.shape[1], "test setup: a stage is rank-deficient"
        assert float(torch.linalg.cond(mat)) <= COND_MAX, "test setup: a stage is ill-conditioned"


# --------------------------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("seed", [0, 1])
def test_eval_batch_norm_is_exact(seed: int, affine: bool, bias: bool) -> None:
    blocks = bn_blocks(seed, affine, bias)
    model = sequential(blocks)
    x = _input(seed)
    _assert_well_posed(blocks, model, x)
    result = _attack(model, x)
    err = float((result.reconstruction - x).abs().max())
    assert err < TOL, (err, result.info["rgap_layers"])
    stages = parse_stages(model, SHAPE)
    assert [s.name for s in stages] == ["conv1", "conv2", "fc1", "fc2"]
    assert [len(s.pre) for s in stages] == [0, 1, 1, 0] and [len(s.post) for s in stages] == [1, 0, 1, 0]
    # fc1's k is read from the batch norm's beta gradient when it has one, else pushed down from fc2.
    assert stages[2].k_rule == ("bn beta" if affine else "")


def test_batch_norm_cg_path_matches_dense() -> None:
    blocks = bn_blocks(3, True, True)
    model = sequential(blocks)
    x = _input(3)
    dense = _attack(model, x)
    cg = _attack(model, x, dense_limit=10)
    assert ":cg:" in cg.info["rgap_layers"] and ":cg:" not in dense.info["rgap_layers"]
    assert float((cg.reconstruction - dense.reconstruction).abs().max()) < TOL
    assert float((cg.reconstruction - x).abs().max()) < TOL


def test_stage_system_matches_autograd_reference() -> None:
    """Dense [K; A] and right-hand side of every stage equal the autograd reference (pre-maps, folding, offsets)."""
    blocks = bn_blocks(4, True, True)
    model = sequential(blocks)
    x = _input(4)
    _, truths = client(model, blocks, x, reversed_label(model, x))
    for stage, block, truth in zip(parse_stages(model, SHAPE), blocks, truths, strict=True):
        inverter = make_stage_inverter(stage)
        mat, rhs = inverter.stacked_system(truth.k, truth.grad_w, truth.z)
        ref_mat, ref_rhs = stacked_reference(block, truth)
        torch.testing.assert_close(mat, ref_mat, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(rhs, ref_rhs, rtol=1e-10, atol=1e-12)
        linear_z = ref_mat[-truth.z.numel():] @ truth.x.reshape(-1)  # A x without the offsets
        torch.testing.assert_close(inverter.forward(truth.x).reshape(-1), linear_z, rtol=1e-10, atol=1e-12)
        gram, grhs = inverter.normal_equations(truth.k, truth.grad_w, truth.z)
        torch.testing.assert_close(gram, ref_mat.T @ ref_mat, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grhs, ref_mat.T @ ref_rhs, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(inverter.weight_gradient(truth.k, truth.x), truth.grad_w, rtol=1e-10, atol=1e-12)


def test_input_vjp_is_the_stage_input_gradient() -> None:
    """``input_vjp(k)`` of a stage is dl/dx through the pre-maps, the layer and the folded batch norm."""
    blocks = bn_blocks(5, True, False)
    model = sequential(blocks)
    x = _input(5)
    _, truths = client(model, blocks, x, reversed_label(model, x))
    for stage, block, truth in zip(parse_stages(model, SHAPE), blocks, truths, strict=True):
        xin = truth.x.unsqueeze(0).clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(block.to_z(xin), xin, truth.k.unsqueeze(0))
        got = make_stage_inverter(stage).input_vjp(truth.k)
        assert tuple(got.shape) == stage.input_shape  # (200,) for fc1: the Flatten before its batch norm is dropped
        torch.testing.assert_close(got.reshape(-1), expected.reshape(-1), rtol=1e-10, atol=1e-13)


# ----------------------------------------------------------------------------------------------- pooling


def _pool_matrix(pool: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    return pool(torch.eye(n, dtype=DTYPE).reshape(n, *shape)).reshape(n, -1).T


def full_rank_pool_blocks(seed: int) -> list[Block]:
    """Non-reducing pools (stride 1, padding 1): an injective map, so the composed stages keep full rank."""
    torch.manual_seed(seed)
    return [
        Block(_conv(2, 6), pre=[nn.AvgPool2d(2, stride=1, padding=1)], act=_lrelu()),  # 2x5x5 -> 2x6x6
        Block(_conv(6, 8), pre=[nn.AvgPool2d(2, stride=1, padding=1)], act=_lrelu()),  # 6x6x6 -> 6x7x7
        Block(_fc(8 * 7 * 7, 12), pre=[nn.Flatten()], act=_lrelu()),
        Block(_fc(12, 1)),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_rank_pooling_is_exact(seed: int) -> None:
    blocks = full_rank_pool_blocks(seed)
    model = sequential(blocks)
    x = _input(seed)
    for pool, shape in [(blocks[0].pre[0], (2, 5, 5)), (blocks[1].pre[0], (6, 6, 6))]:
        mat = _pool_matrix(pool, shape)
        assert int(torch.linalg.matrix_rank(mat)) == mat.shape[1]  # the pool itself is injective
    _assert_well_posed(blocks, model, x)
    for kwargs in ({}, {"dense_limit": 10})[: 2 if seed == 0 else 1]:  # the matrix-free path once
        result = _attack(model, x, **kwargs)
        err = float((result.reconstruction - x).abs().max())
        assert err < TOL, (err, result.info["rgap_layers"])


def deficient_pool_blocks(seed: int) -> list[Block]:
    """A 2x2 pool on the image: stage 1 has 50 unknowns but only 2x2x2 = 8 pooled values reach conv1."""
    torch.manual_seed(seed)
    return [
        Block(_conv(2, 8), pre=[nn.AvgPool2d(2)], act=_lrelu()),  # 2x5x5 -> 2x2x2 -> 8x2x2
        Block(_fc(32, 40, bias=True), pre=[nn.Flatten()], act=_lrelu()),
        Block(_fc(40, 1)),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dense_limit", [4096, 10], ids=["dense", "cg"])
def test_deficient_pooling_gives_the_minimum_norm_solution(seed: int, dense_limit: int) -> None:
    """Upper stages exact, so R-GAP's image is stage 1's minimum-norm solution at the true k and z."""
    blocks = deficient_pool_blocks(seed)
    model = sequential(blocks)
    x = _input(seed)
    _, truths = client(model, blocks, x, reversed_label(model, x))
    mat, rhs = stacked_reference(blocks[0], truths[0])
    rank = int(torch.linalg.matrix_rank(mat))
    assert rank <= 8 < mat.shape[1]
    for block, truth in zip(blocks[1:], truths[1:], strict=True):
        upper, _ = stacked_reference(block, truth)
        assert int(torch.linalg.matrix_rank(upper)) == upper.shape[1]
    expected = torch.linalg.lstsq(mat, rhs.unsqueeze(1), rcond=1e-10, driver="gelsd").solution.reshape(-1)
    result = _attack(model, x, dense_limit=dense_limit)
    got = result.reconstruction.reshape(-1)
    assert float((got - expected).abs().max()) < 1e-8 * max(1.0, float(expected.abs().max()))
    assert float((got - x.reshape(-1)).abs().max()) > 1e-2  # the pool's null space is really lost
    if dense_limit > 50:
        assert result.info["rgap_layers"].startswith(f"conv1:{rank}/50:pinv")


def test_deficient_middle_stage_solve_is_minimum_norm() -> None:
    """A pool between two layers: the composed stage's own solve equals lstsq of its explicit system."""
    torch.manual_seed(7)
    blocks = [
        Block(_conv(2, 6), act=_lrelu()),
        Block(_conv(6, 8), pre=[nn.AvgPool2d(2, stride=2, ceil_mode=True)], act=_lrelu()),  # 6x5x5 -> 6x3x3
        Block(_fc(72, 1), pre=[nn.Flatten()]),
    ]
    model = sequential(blocks)
    x = _input(7)
    _, truths = client(model, blocks, x, reversed_label(model, x))
    stage = parse_stages(model, SHAPE)[1]
    mat, rhs = stacked_reference(blocks[1], truths[1])
    expected = torch.linalg.lstsq(mat, rhs.unsqueeze(1), rcond=1e-10, driver="gelsd").solution.reshape(-1)
    inverter = make_stage_inverter(stage)
    for balance in (False, True):
        for options in (None, SolveOptions(dense_limit=10)):
            solution = inverter.solve(truths[1].k, truths[1].grad_w, truths[1].z, balance, options)
            assert float((solution.x.reshape(-1) - expected).abs().max()) < 1e-8
    assert int(torch.linalg.matrix_rank(mat)) <= 54 < 150


def test_adaptive_pool_and_overlapping_pool_operator() -> None:
    """Matrix-free products of composed stages equal the dense normal matrix for overlapping and adaptive pools,
    and the CG diagonal is exact where every input feeds one output."""
    torch.manual_seed(3)
    for pool, exact_diag in [(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), False),
                             (nn.AdaptiveAvgPool2d((3, 2)), False), (nn.AvgPool2d(2, divisor_override=3), True)]:
        first = Block(_conv(2, 4), pre=[pool], act=_lrelu())
        features = first.to_z(torch.zeros(1, *SHAPE, dtype=DTYPE)).numel()
        blocks = [first, Block(_fc(features, 1), pre=[nn.Flatten()])]
        model = sequential(blocks)
        x = _input(3)
        _, truths = client(model, blocks, x, reversed_label(model, x))
        inverter = make_stage_inverter(parse_stages(model, SHAPE)[0])
        gram, rhs = inverter.normal_equations(truths[0].k, truths[0].grad_w, truths[0].z)
        mat, ref_rhs = stacked_reference(blocks[0], truths[0])
        torch.testing.assert_close(gram, mat.T @ mat, rtol=1e-9, atol=1e-12)
        op = inverter.normal_operator(truths[0].k, truths[0].grad_w, truths[0].z)
        v = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
        torch.testing.assert_close(op.matvec(v).clone(), gram @ v, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(op.rhs, mat.T @ ref_rhs, rtol=1e-9, atol=1e-12)
        if exact_diag:
            torch.testing.assert_close(op.diagonal, torch.diagonal(gram), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------ pass-throughs


def _plain_blocks(seed: int) -> list[Block]:
    torch.manual_seed(seed)
    return [Block(_conv(2, 6), act=_lrelu()), Block(_conv(6, 8), act=_lrelu()),
            Block(_fc(200, 16, bias=True), pre=[nn.Flatten()], act=_lrelu()), Block(_fc(16, 1))]


class _ListNet(nn.Module):
    """A custom module: a ModuleList run in a loop, a functional flatten in forward, then a head Sequential."""

    def __init__(self, body: list[nn.Module], head: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.ModuleList(body)
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.body:
            x = module(x)
        return self.head(x.flatten(1))


def _decorated(blocks: list[Block]) -> list[nn.Module]:
    c1, c2, f1, f2 = (b.layer for b in blocks)
    return [
        nn.Identity(), nn.Sequential(c1, nn.Dropout(0.3), _lrelu()), nn.Dropout2d(0.5),
        nn.Sequential(nn.Sequential(c2), nn.Identity(), _lrelu()),
        nn.Flatten(), nn.Unflatten(1, (8, 25)), nn.Flatten(), f1, nn.Dropout(0.0), _lrelu(), nn.AlphaDropout(0.2),
        f2, nn.Identity(),
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_pass_through_layers_and_nesting_change_nothing(seed: int) -> None:
    """Identity, eval dropout, Flatten/Unflatten, nested Sequential and a ModuleList module: same as the plain chain."""
    blocks = _plain_blocks(seed)
    plain = sequential(blocks)
    x = _input(seed)
    expected = _attack(plain, x)
    assert float((expected.reconstruction - x).abs().max()) < TOL
    modules = _decorated(blocks)
    nested = nn.Sequential(*modules).to(DTYPE).eval()
    listed = _ListNet(modules[:4], modules[7:]).to(DTYPE).eval()  # body up to conv2's activation, head from fc1
    for model in (nested, listed):
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        result = _attack(model, x)
        torch.testing.assert_close(result.reconstruction, expected.reconstruction, rtol=0, atol=1e-12)
        assert [s.name for s in parse_stages(model, SHAPE)] == ["conv1", "conv2", "fc1", "fc2"]
