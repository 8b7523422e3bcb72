"""Every number that the reports quote from a paper, once, with where it comes from.

Only numbers that were read from their source are here. The R-GAP paper's own results (its Table 1 MSEs, the RA-i
values, timings, the noise study) could not be read, so no table shows a paper number for them; our tables stand
on their own there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quoted:
    """Numbers quoted from one paper's table or figure, and where they were read."""

    source: str  # the paper and table or figure, as shown in table headings
    read_from: str  # where the numbers were read
    values: dict


#: iDLG (Zhao, Mopuri, Bilen 2020), Table 1: accuracy (%) of the labels DLG and iDLG extract, per dataset.
IDLG_LABEL_ACCURACY = Quoted(
    source="iDLG paper, Table 1",
    read_from="README of github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients (Table 1)",
    values={"MNIST": {"dlg": 89.9, "idlg": 100.0}, "CIFAR-100": {"dlg": 83.3, "idlg": 100.0},
            "LFW": {"dlg": 79.1, "idlg": 100.0}},
)

#: R-GAP (Zhu & Blaschko 2021), rank-analysis figure: total parameter count |W| of its five networks A-E, which
#: are this project's ``rankfig_a`` .. ``rankfig_e`` (conf/model/).
RANK_FIGURE_PARAMS = Quoted(
    source="R-GAP paper, rank-analysis figure",
    read_from="the figure as published on the first author's site (JunyiZhu-AI.github.io, assets/img/pub/fig/rgap.jpg)",
    values={"rankfig_a": 3556, "rankfig_b": 2667, "rankfig_c": 1262144, "rankfig_d": 3388, "rankfig_e": 3056},
)
