"""Label accuracy: DLG (labels recovered by joint optimisation) against iDLG (labels read off the signs of the last
layer's weight gradient), beside the iDLG paper's Table 1.

One experiment, one command: ``python -m scripts.paper_offline --only labels`` runs the sweep
``conf/experiment/paper_idlg_labels_offline.yaml`` (the full version: ``paper_idlg_labels.yaml``) and writes this
table. Table: one row per dataset of the sweep, then the paper's datasets the sweep did not run; no figure.
"""

from __future__ import annotations

import pandas as pd

from rgap.core.errors import UserInputError
from scripts.reports.cells import EMPTY, Footnotes, Rendered, fixed, section, stat_cell
from scripts.reports.paper_numbers import IDLG_LABEL_ACCURACY
from scripts.reports.spec import Experiment, Options, TableSpec
from scripts.reports.trials import column_keys, display, select

ATTACKS = ("dlg", "idlg")
#: The iDLG paper's datasets that this project can load, and their dataset config names.
PAPER_MATCH = {"MNIST": "mnist"}

EXPERIMENT = Experiment(
    key="labels", folder="idlg_labels", configs=("paper_idlg_labels_offline",),
    sweep_name="paper_idlg_labels_offline",
    note="offline variant (`paper_idlg_labels_offline`): `sample` with 8 classes (one per source photo; chance "
         "12.5 %) and `sample_gray` with 2 (face / non-face; chance 50 %), 10 seeds each: every seed draws one random "
         "image and a fresh LeNet (Sigmoid, U(-0.5, 0.5) weights, one logit per class), true labels, softmax "
         "cross-entropy, float32 gradients, as iDLG's code; DLG and iDLG at 300 L-BFGS steps.",
    tables=(TableSpec("labels"),),
)


def _not_run(paper_name: str) -> str:
    """Why the sweep has no row for one of the paper's datasets."""
    if paper_name not in PAPER_MATCH:
        return f"{paper_name}: not run, this project has no {paper_name} loader"
    return (f"{paper_name}: not run in this sweep (dataset={PAPER_MATCH[paper_name]} needs its files; "
            "see conf/experiment/paper_idlg_labels.yaml)")


def render_labels(trials: pd.DataFrame) -> Rendered:
    """Label accuracy (mean, %) of DLG and iDLG: one row per dataset, ours beside the iDLG paper's Table 1.

    Rows: every dataset (and batch size) of the sweep, then the paper's datasets this sweep did not run (MNIST
    when absent, CIFAR-100 and LFW always: this project has no loader for them), whose own cells say "not run".
    """
    trials = trials[trials["attack"].isin(ATTACKS)]
    if trials.empty:
        raise UserInputError("the labels table needs dlg or idlg trials; this sweep has none.")
    paper, group = IDLG_LABEL_ACCURACY.values, IDLG_LABEL_ACCURACY.source
    notes = Footnotes()
    rows = []
    ran_paper_sets = set()
    for key, label in column_keys(trials, "dataset").items():
        cell_rows = select(trials, key)
        paper_name = next((p for p, ours in PAPER_MATCH.items() if ours == key[1]), None)
        row = {"data": label if paper_name is None else f"{label} ({paper_name})"}
        for attack in ATTACKS:
            mine = cell_rows[cell_rows["attack"] == attack]
            row[f"{display(attack)} (ours)"] = stat_cell(mine.assign(label_acc=mine["label_acc"] * 100), "label_acc",
                                                         fixed(".1f"), notes, stat="mean", unit=" %")
        for attack in ATTACKS:
            value = paper.get(paper_name or "", {}).get(attack)
            row[f"{display(attack)} ({group})"] = EMPTY if value is None else f"{value:.1f} %"
        if paper_name:
            ran_paper_sets.add(paper_name)
        rows.append(row)
    for paper_name, values in paper.items():
        if paper_name in ran_paper_sets:
            continue
        row = {"data": paper_name}
        for attack in ATTACKS:
            row[f"{display(attack)} (ours)"] = "not run" + notes.ref(_not_run(paper_name))
        for attack in ATTACKS:
            row[f"{display(attack)} ({group})"] = f"{values[attack]:.1f} %"
        rows.append(row)
    given = trials[(trials["status"] == "ok") & trials["labels_given"].astype(str).str.lower().eq("true")]
    caption = ("Cells \"(ours)\": mean label accuracy over the ok trials in % (n = ok trials with a value); "
               "unsupported and failed trials are counted, never averaged. The columns headed "
               f"\"({group})\" are the iDLG paper's reported numbers (its own setup: LeNet, 300 L-BFGS "
               "iterations, MNIST, CIFAR-100 and LFW), shown for reference: only where a row names the same "
               "dataset are the two comparable.")
    if not given.empty:
        caption += f" {len(given)} ok trial(s) were given the true labels (labels_given), so scored trivially."
    frame = pd.DataFrame(rows)
    return Rendered(section("Label accuracy: DLG vs iDLG", caption, frame, notes), frame)


def render(trials: pd.DataFrame, options: Options) -> Rendered:
    """The ``labels`` table kind."""
    return render_labels(trials)
