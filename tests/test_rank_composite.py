"""Rank analysis of stages with batch norm and pooling against brute-force ranks of explicitly built systems.

The reference (``tests/stage_reference.py``) builds each stage's ``[K; A]`` by autograd through the real modules
at the rank analysis's operating point (seeded ``torch.rand`` input, reversed label) and takes
``torch.linalg.matrix_rank``; counts are checked against the reference's matrix sizes.
"""

from __future__ import annotations

import pytest
import torch
from custom_nets import bn_cnn, pool_cnn
from stage_reference import DTYPE, Block, client, random_bn, reversed_label, sequential, stacked_reference
from torch import nn

from rgap.algorithm.rank import rank_analysis


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _bn_net(seed: int) -> tuple[tuple[int, ...], list[Block]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return (2, 5, 5), [
        Block(nn.Conv2d(2, 5, 3, padding=1, bias=True), post=[random_bn(5, 2, True, gen)], act=_lrelu()),
        Block(nn.Conv2d(5, 6, 3, stride=2, padding=1, bias=False), pre=[random_bn(5, 2, False, gen)],
              post=[random_bn(6, 2, False, gen)], act=nn.Sigmoid()),
        Block(nn.Linear(54, 7), pre=[nn.Flatten(), random_bn(54, 1, True, gen)], post=[random_bn(7, 1, True, gen)],
              act=_lrelu()),
        Block(nn.Linear(7, 1, bias=False)),
    ]


def _narrow_bn_net(seed: int) -> tuple[tuple[int, ...], list[Block]]:
    """One output channel: conv1 is rank-deficient, with or without the batch norm folded into it."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return (3, 6, 6), [
        Block(nn.Conv2d(3, 1, 3, bias=False), post=[random_bn(1, 2, True, gen)], act=_lrelu()),
        Block(nn.Linear(16, 1, bias=False), pre=[nn.Flatten()]),
    ]


def _pool_net(seed: int) -> tuple[tuple[int, ...], list[Block]]:
    torch.manual_seed(seed)
    return (2, 6, 6), [
        Block(nn.Conv2d(2, 4, 3, padding=1, bias=False), pre=[nn.AvgPool2d(2, stride=1, padding=1)], act=_lrelu()),
        Block(nn.Conv2d(4, 6, 3, padding=1, bias=False), pre=[nn.AvgPool2d(2, ceil_mode=True)], act=_lrelu()),
        Block(nn.Linear(24, 5), pre=[nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten()], act=_lrelu()),
        Block(nn.Linear(5, 1, bias=False)),
    ]


def _image_pool_net(seed: int) -> tuple[tuple[int, ...], list[Block]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return (2, 6, 6), [
        Block(nn.Conv2d(2, 8, 3, padding=1, bias=False), pre=[random_bn(2, 2, True, gen), nn.AvgPool2d(2)],
              act=_lrelu()),
        Block(nn.Linear(72, 1, bias=False), pre=[nn.Flatten()]),
    ]


NETS = {"bn": _bn_net, "narrow-bn": _narrow_bn_net, "pools": _pool_net, "image-pool": _image_pool_net}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(NETS))
def test_rank_matches_brute_force(name: str, seed: int) -> None:
    shape, blocks = NETS[name](seed)
    model = sequential(blocks)
    rows = rank_analysis(model, shape, seed=seed)
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)  # the operating point
    _, truths = client(model, blocks, x, reversed_label(model, x))
    assert len(rows) == len(blocks)
    for row, block, truth in zip(rows, blocks, truths, strict=True):
        mat, _ = stacked_reference(block, truth)
        assert (row.x, row.w, row.z) == (mat.shape[1], block.layer.weight.numel(), truth.z.numel())
        assert row.rank == int(torch.linalg.matrix_rank(mat)), row
        assert row.deficiency == row.x - row.rank
        if row.rank_bound is not None:
            assert row.rank <= row.rank_bound < row.x and row.predicted == "deficient"


def test_brute_force_cases_cover_deficiency_and_notes() -> None:
    rows = {name: rank_analysis(sequential(NETS[name](0)[1]), NETS[name](0)[0]) for name in NETS}
    assert all(r.deficiency == 0 for r in rows["bn"])
    assert [r.note for r in rows["bn"]] == [
        "bn folded (output)", "bn folded (input); bn folded (output)",
        "bn folded (input); bn folded (output); k read from the bn beta gradient", ""]
    assert rows["narrow-bn"][0].deficiency > 0
    assert rows["image-pool"][0].rank_bound == 18 and rows["image-pool"][0].deficiency >= 72 - 18
    assert rows["image-pool"][0].note == "bn folded (input); avgpool 2x2 composed; rank <= 18 (pooled)"
    pools = rows["pools"]
    assert pools[0].rank_bound is None and pools[0].deficiency == 0  # the stride-1 padded pool is injective
    assert pools[1].rank_bound == 64 and pools[2].rank_bound == 24 and pools[2].note.startswith("adaptive avgpool")


def test_custom_nets_counts() -> None:
    """The measurement networks at 32 px: counts only (the numerical ranks are in the slow test below)."""
    shape = (3, 32, 32)
    bn_rows = rank_analysis(bn_cnn(shape), shape, numerical=False)
    assert [r.layer for r in bn_rows] == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1"]
    assert [r.x for r in bn_rows] == [3072, 3468, 2916, 2916, 2916, 1600, 3200]
    assert all(r.predicted == "determined" for r in bn_rows)
    pool_rows = rank_analysis(pool_cnn(shape), shape, numerical=False)
    assert [(r.layer, r.x, r.rank_bound, r.predicted) for r in pool_rows][:2] == [
        ("conv1", 3072, None, "determined"), ("conv2", 3468, 768, "deficient")]


@pytest.mark.slow
def test_custom_nets_numerical_ranks() -> None:
    shape = (3, 32, 32)
    bn_rows = rank_analysis(bn_cnn(shape), shape)
    print("bn_cnn deficiencies:", [r.deficiency for r in bn_rows])
    assert all(r.deficiency == 0 for r in bn_rows)
    pool_rows = rank_analysis(pool_cnn(shape), shape)
    print("pool_cnn deficiencies:", [r.deficiency for r in pool_rows])
    assert pool_rows[1].deficiency >= 3468 - 768
    assert all(r.deficiency == 0 for r in pool_rows if r.layer != "conv2")
