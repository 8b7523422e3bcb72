"""Tests of rgap.algorithm.rank: the counts of the paper's rank-analysis figure, CNN6 / CNN6-d numerical ranks, and a
brute-force rank reference built independently from autograd Jacobians."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgap.algorithm.rank import LayerRank, rank_analysis, rank_table, total_params, virtual_constraints
from rgap.attack.losses import logistic_loss
from rgap.zoo.models import cnn6, cnn6d, conv_net

CIFAR = (3, 32, 32)

# The five columns of the paper's rank-analysis figure: unpadded stride-1 convs, LeakyReLU, bias-free, one logit.
FIGURE: dict[str, dict] = {
    "col1": {"convs": [(4, 4, 1, 0)], "hidden": [], "params": 3556},
    "col2": {"convs": [(3, 4, 1, 0)], "hidden": [], "params": 2667},
    "col3": {"convs": [(3, 4, 1, 0)], "hidden": [500], "params": 1_262_144},
    "col4": {"convs": [(4, 3, 1, 0), (4, 3, 1, 0)], "hidden": [], "params": 3388},
    "col5": {"convs": [(4, 5, 1, 0), (4, 4, 1, 0)], "hidden": [], "params": 3056},
}


def figure_net(col: str) -> nn.Sequential:
    spec = FIGURE[col]
    return conv_net(CIFAR, spec["convs"], hidden=spec["hidden"])


def by_name(rows: list[LayerRank]) -> dict[str, LayerRank]:
    return {r.layer: r for r in rows}


# --------------------------------------------------------------------------------------------- figure counts


@pytest.mark.parametrize("col", sorted(FIGURE))
def test_figure_total_params(col: str) -> None:
    assert total_params(figure_net(col)) == FIGURE[col]["params"]


def test_figure_counts_and_signs() -> None:
    rows = {col: by_name(rank_analysis(figure_net(col), CIFAR, numerical=False)) for col in FIGURE}
    # Column 1: conv1 over-determined.
    assert rows["col1"]["conv1"].index == -484 < 0
    # Columns 2 and 3: conv1 under-determined, whatever sits above it.
    for col in ("col2", "col3"):
        conv1 = rows[col]["conv1"]
        assert (conv1.x, conv1.w, conv1.z, conv1.index) == (3072, 144, 2523, 405)
        assert conv1.predicted == "deficient"
    # Column 4: conv2 count positive, rescued by conv1's surplus as virtual constraints.
    c1, c2 = rows["col4"]["conv1"], rows["col4"]["conv2"]
    assert (c1.index, c2.index, c2.v, c2.index_v) == (-636, 320, 636, -316)
    assert c1.index < 0 < c2.index and c2.index_v < 0 and c2.predicted == "determined"
    # Column 5: conv1's surplus does not suffice.
    c1, c2 = rows["col5"]["conv1"], rows["col5"]["conv2"]
    assert (c1.index, c2.index, c2.v, c2.index_v) == (-364, 380, 364, 16)
    assert c1.index < 0 < c2.index and c2.index_v > 0 and c2.predicted == "deficient"
    for layers in rows.values():
        assert all(r.rank is None and r.deficiency is None for r in layers.values())


def test_virtual_constraints_rule() -> None:
    assert virtual_constraints([-636, 320, -1]) == [0, 636, 316]
    assert virtual_constraints([-364, 380, -1]) == [0, 364, 0]
    assert virtual_constraints([405, -1]) == [0, 0]


@pytest.mark.slow
def test_figure_numerical_deficits() -> None:
    """Numerical ranks of the figure networks (the notes found 414 for col2 conv1 and 336 for col4 conv2)."""
    deficits = {}
    for col in ("col1", "col2", "col4", "col5"):
        for r in rank_analysis(figure_net(col), CIFAR):
            deficits[f"{col}/{r.layer}"] = r.deficiency
    print("figure deficits:", deficits)
    deficient = {"col2/conv1", "col4/conv2", "col5/conv2"}
    assert deficits["col2/conv1"] == 414
    assert deficits["col4/conv2"] == 336
    assert all((d > 0) == (name in deficient) for name, d in deficits.items()), deficits


# ------------------------------------------------------------------------------------------------ CNN6 pair


def test_cnn6_full_rank() -> None:
    start = time.perf_counter()
    rows = rank_analysis(cnn6(CIFAR), CIFAR)
    print(f"cnn6 rank analysis: {time.perf_counter() - start:.1f} s")
    assert [r.layer for r in rows] == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1"]
    assert [r.rank for r in rows] == [3072, 3468, 2916, 2916, 2916, 1600, 3200]
    assert all(r.deficiency == 0 and r.predicted == "determined" for r in rows)


def test_cnn6d_conv2_deficient() -> None:
    start = time.perf_counter()
    rows = by_name(rank_analysis(cnn6d(CIFAR), CIFAR))
    print(f"cnn6d rank analysis: {time.perf_counter() - start:.1f} s")
    conv2 = rows.pop("conv2")
    print(f"CNN6-d conv2 deficiency: {conv2.deficiency} (rank {conv2.rank} of {conv2.unknowns})")
    assert conv2.deficiency is not None and conv2.deficiency > 0
    # The count (even without virtual constraints) does not see it: a count-only prediction is wrong here.
    assert conv2.index == -312 and conv2.predicted == "determined"
    assert all(r.deficiency == 0 for r in rows.values())


# ------------------------------------------------------------------------------------ brute-force reference


def reference_ranks(model: nn.Sequential, input_shape: tuple[int, ...], seed: int = 0) -> list[int]:
    """Rank of [K; A] per weight layer from autograd Jacobians, independent of rgap.inverters/solvers.

    Walks the (flat) Sequential by hand, takes k = dL/dz by autograd, then K = d/dx (dL/dW at fixed k) and
    A = d/dx layer(x), and torch.linalg.matrix_rank of the stacked dense matrix.
    """
    model = model.double()
    x = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layers, inputs, outputs = [], [], []
    h = x
    for module in model:
        out = module(h)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            layers.append(module)
            inputs.append(h.detach())
            outputs.append(out)
        h = out
    label = torch.tensor([0.0 if float(h.detach().reshape(-1)[0]) > 0 else 1.0], dtype=torch.float64)
    ks = torch.autograd.grad(logistic_loss(h.reshape(-1), label), outputs)
    ranks = []
    for layer, x_in, k in zip(layers, inputs, ks, strict=True):
        weight = layer.weight.detach()
        apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if isinstance(layer, nn.Conv2d):

            def apply(xx: torch.Tensor, ww: torch.Tensor, layer: nn.Conv2d = layer) -> torch.Tensor:
                return F.conv2d(xx, ww, stride=layer.stride, padding=layer.padding)

        else:

            def apply(xx: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
                return F.linear(xx, ww)

        def grad_w(xx: torch.Tensor, apply=apply, k=k, weight=weight) -> torch.Tensor:
            return torch.func.grad(lambda ww: (k.detach() * apply(xx, ww)).sum())(weight)

        n = x_in.numel()
        big_k = torch.autograd.functional.jacobian(grad_w, x_in).reshape(weight.numel(), n)
        big_a = torch.autograd.functional.jacobian(lambda xx, apply=apply, w=weight: apply(xx, w), x_in)
        big_a = big_a.reshape(-1, n)
        ranks.append(int(torch.linalg.matrix_rank(torch.cat([big_k, big_a]))))
    return ranks


SMALL = {
    "deficient conv": ((3, 8, 8), {"convs": [(1, 3, 1, 0)]}),
    "stride2 padded": ((2, 7, 7), {"convs": [(4, 3, 2, 1), (3, 2, 1, 0)], "hidden": [5], "seed": 1}),
    "sigmoid s2": ((3, 6, 6), {"convs": [(2, 3, 2, 1)], "hidden": [4], "activation": "sigmoid", "seed": 2}),
    "wide stride": ((2, 9, 9), {"convs": [(3, 3, 2, 2), (2, 3, 1, 0)], "seed": 3}),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_numerical_rank_matches_brute_force(name: str) -> None:
    shape, kwargs = SMALL[name]
    rows = rank_analysis(conv_net(shape, **kwargs), shape, seed=4)
    expected = reference_ranks(conv_net(shape, **kwargs), shape, seed=4)
    assert [r.rank for r in rows] == expected
    assert all(r.deficiency == r.unknowns - r.rank for r in rows)


def test_brute_force_cases_cover_deficiency() -> None:
    rows = rank_analysis(conv_net((3, 8, 8), [(1, 3, 1, 0)]), (3, 8, 8))
    assert rows[0].deficiency > 0 and rows[0].predicted == "deficient"
    rows = rank_analysis(conv_net((2, 7, 7), [(4, 3, 2, 1), (3, 2, 1, 0)], hidden=[5], seed=1), (2, 7, 7))
    assert [r.kind for r in rows] == ["conv", "conv", "fc", "fc"]
    assert rows[0].x == 98 and rows[0].z == 64  # unpadded unknowns, stride-2 output 4x4x4


# ----------------------------------------------------------------------------------------- options / table


def test_max_unknowns_and_numerical_flag() -> None:
    shape = (2, 7, 7)
    model = conv_net(shape, [(4, 3, 2, 1), (3, 2, 1, 0)], hidden=[5], seed=1)
    rows = rank_analysis(model, shape, max_unknowns=60)
    assert [r.rank is None for r in rows] == [True, True, False, False]  # 98, 64 unknowns > 60; 27, 5 below
    assert rows[2].deficiency == 0 and rows[3].deficiency == 0
    assert all(r.rank is None for r in rank_analysis(model, shape, numerical=False))
    # The caller's model is untouched: still float32 and without gradients.
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())


def test_rank_table_columns_and_order() -> None:
    shape = (2, 7, 7)
    rows = rank_analysis(conv_net(shape, [(4, 3, 2, 1), (3, 2, 1, 0)], hidden=[5], seed=1), shape)
    table = rank_table(rows)
    expected = ["layer", "kind", "x", "w", "z", "v", "index", "index_v", "rank", "unknowns", "deficiency", "predicted",
                "b", "note", "rank_bound"]
    assert list(table.columns) == expected
    assert list(table["layer"]) == ["conv1", "conv2", "fc1", "fc2"]
    assert table.loc[0, "x"] == 98 and table.loc[3, "z"] == 1
    assert (table["index"] == table["x"] - table["w"] - table["z"]).all()
    assert (table["index_v"] == table["index"] - table["v"]).all()
    none_table = rank_table(rank_analysis(conv_net(shape, [(4, 3, 2, 1)], seed=1), shape, numerical=False))
    assert none_table["rank"].isna().all()


def test_inplace_activation_does_not_change_ranks() -> None:
    """Hooks must record the pre-activation z and k = dl/dz even when the activation works in place."""
    shape = (2, 7, 7)
    model = conv_net(shape, [(4, 3, 2, 1), (3, 2, 1, 0)], hidden=[5], seed=1)
    inplace = nn.Sequential(*[nn.LeakyReLU(0.2, inplace=True) if isinstance(m, nn.LeakyReLU) else m for m in model])
    assert rank_analysis(inplace, shape) == rank_analysis(model, shape)
    assert [r.rank for r in rank_analysis(inplace, shape)] == reference_ranks(model, shape)
