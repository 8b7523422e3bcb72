"""rgap.algorithm.verdict: per-layer verdicts in words from rank-table rows (a pure function of the rows)."""

from __future__ import annotations

import torch
from torch import nn

from rgap.algorithm.rank import LayerRank, rank_analysis
from rgap.algorithm.verdict import layer_verdict, layer_verdicts


def _row(layer: str, x: int, w: int, z: int, v: int, rank: int | None, **kw) -> LayerRank:
    index = x - w - z
    predicted = kw.pop("predicted", None)
    bound = kw.pop("rank_bound", None)
    if predicted is None:
        predicted = "deficient" if index - v > 0 or (bound is not None and bound < x) else "determined"
    return LayerRank(layer=layer, kind="conv", x=x, w=w, z=z, v=v, index=index, index_v=index - v, rank=rank,
                     unknowns=x, deficiency=None if rank is None else x - rank, predicted=predicted,
                     rank_bound=bound, **kw)


def test_dependent_constraints_cnn6d_conv2() -> None:
    """CNN6-d conv2 as `python -m runners.rank model=cnn6d` reports it (x 3468, w 2160, z 1620, v 972, rank 3188)."""
    verdict = layer_verdict(_row("conv2", 3468, 2160, 1620, 972, 3188))
    assert verdict.status == "deficient" and verdict.cause == "dependent"
    assert (verdict.deficiency, verdict.count_deficiency, verdict.constraints) == (280, 0, 4752)
    assert verdict.text.startswith("conv2 has 3,468 unknowns and 4,752 constraints (2,160 from its gradient, "
                                   "1,620 from its output, 972 carried up from the layers below); the constraints "
                                   "outnumber the unknowns by 1,284, but its constraints are linearly dependent")
    assert "rank-deficient by 280" in verdict.text


def test_too_few_constraints_and_extra_dependence() -> None:
    """The paper figure's column 2 conv1: 405 short by the counts, 414 by the numerical rank."""
    verdict = layer_verdict(_row("conv1", 3072, 144, 2523, 0, 3072 - 414))
    assert verdict.cause == "counts" and verdict.count_deficiency == 405 and verdict.deficiency == 414
    assert "fall 405 short of the unknowns, and 9 more because its constraints are linearly dependent" in verdict.text
    assert "from the layers below" not in verdict.text  # no virtual constraints to mention


def test_full_rank_not_computed_and_unsupported() -> None:
    full = layer_verdict(_row("conv1", 3072, 576, 3468, 0, 3072))
    assert full.status == "full rank" and full.deficiency == 0 and "numerical rank is full (3,072)" in full.text
    big = layer_verdict(_row("conv1", 12288, 576, 100, 0, None))
    assert big.status == "not computed" and big.count_deficiency == 11612 and "at least 11,612" in big.text
    unsupported = layer_verdict(_row("fc1", 10, 20, 2, 0, None, predicted="unsupported", note="layer 2: ReLU"))
    assert unsupported.status == "unsupported" and unsupported.text.endswith("(layer 2: ReLU).")


def test_pooling_bound_from_a_real_rank_table() -> None:
    """A 2x2 pool before fc1: 72 pooled values of 288 unknowns, whatever fc1's 2,160 gradient constraints say."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.LeakyReLU(0.2), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(72, 30), nn.LeakyReLU(0.2), nn.Linear(30, 1, bias=False)).eval()
    rows = rank_analysis(model, (2, 6, 6))
    fc1 = rows[1]
    assert (fc1.x, fc1.rank_bound, fc1.predicted) == (288, 72, "deficient") and fc1.index_v < 0
    verdicts = layer_verdicts(rows)
    assert [v.status for v in verdicts] == ["full rank", "deficient", "full rank"]
    assert verdicts[1].cause == "pooling" and verdicts[1].count_deficiency == 216
    assert verdicts[1].deficiency == fc1.deficiency >= 216
    assert "pooling passes only 72 of its 288 unknowns up, so at least 216 directions are lost" in verdicts[1].text
