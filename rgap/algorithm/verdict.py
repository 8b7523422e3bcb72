"""Per-layer verdicts of a rank table (``rgap.algorithm.rank.LayerRank`` rows) in words, for audits of a network.

A pure function of the rows: which counts make a layer deficient and by how much. A layer's constraints are
its gradient constraints ``w`` (one per weight), its weight constraints ``z`` (one per output) and the virtual
constraints ``v`` carried up from the layers below; its unknowns ``x``. Three causes of a deficiency:

* ``counts``: fewer constraints than unknowns (``index_v = x - w - z - v > 0``);
* ``pooling``: a pool composed into the layer passes only ``rank_bound < x`` values up, whatever the counts;
* ``dependent``: the counts suffice but the constraints are linearly dependent (the numerical rank shows it,
  e.g. CNN6-d conv2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rgap.algorithm.rank import LayerRank


@dataclass(frozen=True)
class LayerVerdict:
    """One layer's verdict: its counts, its deficiency (numerical, or a lower bound) and the cause."""

    layer: str
    status: str  # "full rank", "deficient", "unsupported" or "not computed"
    unknowns: int
    constraints: int  # w + z + v
    from_gradient: int  # w
    from_output: int  # z
    from_below: int  # v
    deficiency: int | None  # unknowns - rank (None: no numerical rank)
    count_deficiency: int  # what the counts and the pooling bound alone imply (0: they predict full rank)
    cause: str  # "counts", "pooling", "dependent" or "" (full rank / unknown)
    text: str


def _n(value: int) -> str:
    return f"{value:,}"


def layer_verdict(row: LayerRank) -> LayerVerdict:
    """The verdict of one rank-table row (see the module docstring for the causes)."""
    constraints = row.w + row.z + row.v
    parts = [f"{_n(row.w)} from its gradient", f"{_n(row.z)} from its output"]
    if row.v:
        parts.append(f"{_n(row.v)} carried up from the layers below")
    counted = f"{row.layer} has {_n(row.x)} unknowns and {_n(constraints)} constraints ({', '.join(parts)})"
    by_counts = max(0, row.index_v)
    by_pool = row.x - row.rank_bound if row.rank_bound is not None else 0
    count_deficiency = max(by_counts, by_pool)
    if row.predicted == "unsupported":
        return LayerVerdict(row.layer, "unsupported", row.x, constraints, row.w, row.z, row.v, None,
                            count_deficiency, "", f"{counted}; R-GAP cannot run on this network ({row.note}).")
    if by_pool and by_pool >= by_counts:
        cause, why = "pooling", (f"pooling passes only {_n(row.rank_bound)} of its {_n(row.x)} unknowns up, so at "
                                 f"least {_n(by_pool)} directions are lost")
    elif by_counts:
        cause, why = "counts", f"the constraints fall {_n(by_counts)} short of the unknowns"
    else:
        cause, why = "", f"the constraints outnumber the unknowns by {_n(-row.index_v)}"
    if row.deficiency is None:
        status = "not computed"
        verdict = (f"{counted}; {why}, so it is rank-deficient by at least {_n(count_deficiency)} (numerical rank "
                   "not computed)." if count_deficiency else
                   f"{counted}; {why} (numerical rank not computed, so full rank is not confirmed).")
        return LayerVerdict(row.layer, status, row.x, constraints, row.w, row.z, row.v, None, count_deficiency,
                            cause, verdict)
    if row.deficiency == 0:
        return LayerVerdict(row.layer, "full rank", row.x, constraints, row.w, row.z, row.v, 0, count_deficiency, "",
                            f"{counted}; {why} and its numerical rank is full ({_n(row.rank)}): R-GAP recovers "
                            "its input exactly from exact gradients.")
    if not cause or row.deficiency > count_deficiency:
        extra = row.deficiency - count_deficiency
        dependent = f"{_n(extra)} more because its constraints are linearly dependent" if count_deficiency else \
            "its constraints are linearly dependent"
        cause = cause or "dependent"
        why = f"{why}, and {dependent}" if count_deficiency else f"{why}, but {dependent}"
    text = (f"{counted}; {why}: its numerical rank is {_n(row.rank)}, so it is rank-deficient by "
            f"{_n(row.deficiency)} and R-GAP returns the minimum-norm solution for its input.")
    return LayerVerdict(row.layer, "deficient", row.x, constraints, row.w, row.z, row.v, row.deficiency,
                        count_deficiency, cause, text)


def layer_verdicts(rows: Sequence[LayerRank]) -> list[LayerVerdict]:
    """The verdict of every row, in order."""
    return [layer_verdict(row) for row in rows]
