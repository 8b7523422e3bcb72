"""The rank analysis against reconstruction: the R-GAP paper's rank-analysis figure (its five networks A-E, our
``rankfig_a`` .. ``rankfig_e``), each network's per-layer counts and numerical rank, and what R-GAP and DLG achieve.

Table: per network the counts |x|-|W|-|z| (and with the virtual constraints |V|), the numerical deficiency and the
two predictions, then each attack's median PSNR against them. Figures: PSNR per attack on each network ordered by
its deficiency, and a gallery with one row per network (``gallery``). Input: ``rank_analysis.csv`` (one row per
layer with a ``model`` column; :func:`write_rank_csv`). Sweeps: ``conf/experiment/paper_rank.yaml`` (CIFAR-10) and
``paper_rank_offline.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rgap.algorithm.rank import total_params
from rgap.core.atomic import atomic_write_text
from rgap.core.errors import UserInputError
from rgap.harness.compose import compose_config
from rgap.harness.rank import run_rank_analysis
from rgap.zoo.checkpoints import build_model
from scripts.reports.cells import EMPTY, Rendered, markdown_table
from scripts.reports.paper_numbers import RANK_FIGURE_PARAMS
from scripts.reports.spec import OFFLINE_NOTE, Experiment, FigureSpec, Options, TableSpec
from scripts.reports.style import capped, color, marker, note_cap, panels
from scripts.reports.trials import attack_order, display

RANK_MODELS = ("rankfig_a", "rankfig_b", "rankfig_c", "rankfig_d", "rankfig_e")  # the rank figure's networks
RANK_PREFIX = "rankfig_"  # the rank figure's networks: labelled A-E in the rank plot
INPUT_SHAPE = (3, 32, 32)
RANK_REQUIRED = ("model", "layer", "index_v", "deficiency", "predicted")  # columns the rank CSV must have

EXPERIMENT = Experiment(
    key="rank", folder="rank", configs=("paper_rank_offline",), sweep_name="paper_rank_offline",
    note="offline variant (`paper_rank_offline`): the figure's five networks on `sample` images 0, 5, 10 (3x32x32) "
         "instead of CIFAR-10; the rank analysis is of each network at a seeded random input (seed 0, the trials' "
         "weights); " + OFFLINE_NOTE,
    tables=(TableSpec("rank"),),
    figures=(FigureSpec("rank"), FigureSpec("gallery", by="model")),
    rank_analysis=True,
)


def write_rank_csv(path: Path, seed: int = 0, models: Sequence[str] = RANK_MODELS) -> Path:
    """Rank tables of ``models`` (default the five figure networks; 3x32x32 input, numerical ranks at a seeded
    random input), each from ``conf/rank.yaml`` composed for the model, as one CSV: one row per layer with
    ``model`` and ``total_params`` in front."""
    frames = []
    for name in models:
        cfg = compose_config("rank", [f"model={name}", f"input_shape=[{','.join(map(str, INPUT_SHAPE))}]",
                                      f"seed={seed}"])
        frame = run_rank_analysis(cfg)
        model, _ = build_model(cfg.model, INPUT_SHAPE, seed)
        frame.insert(0, "model", name)
        frame.insert(1, "total_params", total_params(model))
        frames.append(frame)
    return atomic_write_text(path, pd.concat(frames).to_csv(index=False))


# ---------------------------------------------------------------------------------------------------- table


def load_rank_csv(path: str | Path | None) -> pd.DataFrame:
    """The per-layer rank table (``rgap.algorithm.rank.rank_table`` + ``model`` [+ ``total_params``]); checked."""
    if path is None:
        raise UserInputError("the rank table and figure need --rank-csv PATH: the rank analysis of every model, "
                             "one row per layer (rgap.algorithm.rank.rank_table with a `model` column), e.g. the "
                             "rank_analysis.csv written by scripts.paper_offline.")
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"--rank-csv {path} does not exist.")
    frame = pd.read_csv(path, dtype={"model": str, "layer": str, "predicted": str})
    missing = [c for c in RANK_REQUIRED if c not in frame.columns]
    if missing or frame.empty:
        raise UserInputError(f"--rank-csv {path} lacks the columns {missing} or rows; expected "
                             "rgap.algorithm.rank.rank_table rows with a `model` column.")
    return frame


def psnr_median(rows: pd.DataFrame) -> tuple[float, int]:
    """Median PSNR over the ok trials of ``rows`` and their number (NaN, 0 when none)."""
    values = pd.to_numeric(rows.loc[rows["status"] == "ok", "psnr"], errors="coerce").dropna()
    return (float(values.median()) if len(values) else math.nan), len(values)


def _per_layer(layers: pd.DataFrame, column: str, signed: bool = True, nonzero: bool = False) -> str:
    """``conv1 -484; fc1 -1``: one value of ``column`` per layer, input layer first (``nonzero``: only layers
    whose value is not 0; ``""`` when none is)."""
    parts = []
    for name, value in zip(layers["layer"], layers[column], strict=True):
        if nonzero and not pd.isna(value) and int(value) == 0:
            continue
        parts.append(f"{name} {'n/a' if pd.isna(value) else format(int(value), '+d' if signed else 'd')}")
    return "; ".join(parts)


def observed(rows: pd.DataFrame, threshold: float) -> tuple[float, int, str]:
    """Median PSNR, ok trials with a PSNR, and ``ok`` (median >= ``threshold``) / ``noisy`` / the statuses /
    ``no trials`` for the trials of one attack on one network."""
    median, n_ok = psnr_median(rows)
    if n_ok:
        return median, n_ok, "ok" if median >= threshold else "noisy"
    if rows.empty:
        return median, n_ok, "no trials"
    return median, n_ok, "/".join(sorted(set(rows["status"])))


def _agrees(predicted: object, seen: str, positive: str) -> object:
    """``yes`` when the prediction (``positive`` = recoverable) and the observation (``ok``) go together."""
    if pd.isna(predicted) or seen not in ("ok", "noisy") or predicted == "n/a":
        return pd.NA
    return "yes" if (predicted == positive) == (seen == "ok") else "no"


def rank_summary(trials: pd.DataFrame, rank: pd.DataFrame, threshold: float = 30.0) -> pd.DataFrame:
    """One row per model (sorted): rank counts and deficiency, both predictions, and per attack its median PSNR,
    what was observed and whether each prediction agrees.

    ``predicted_count`` (``predicted`` is the same column, kept for readers of older tables) is ``unsupported``
    if any layer is, ``deficient`` if any layer's count with virtual constraints ``index_v`` is > 0, else
    ``determined``. ``predicted_rank`` is ``deficient`` when the layers' numerical deficiencies add up to > 0,
    ``full rank`` when they are all 0, ``n/a`` when a layer has none (``deficiency_missing`` counts those).
    Per attack ``a``: ``a_psnr_median``, ``a_n`` (ok trials), ``a_observed`` (``ok`` when the median PSNR
    reaches ``threshold``, ``noisy`` below, else the trials' statuses), ``a_agrees_count`` and
    ``a_agrees_rank`` (``yes`` when "determined"/"full rank" goes with "ok"). ``observed``/``agrees`` repeat
    R-GAP's (the attack the layer-wise analysis is about).
    """
    attacks = attack_order(trials["attack"])
    rows = []
    for model in sorted(set(rank["model"]) | set(trials["model"])):
        layers = rank[rank["model"] == model]
        row: dict[str, object] = {"model": model, "figure_params": RANK_FIGURE_PARAMS.values.get(model, pd.NA)}
        total = layers["total_params"].dropna() if "total_params" in layers else pd.Series(dtype=float)
        row["total_params"] = int(total.iloc[0]) if len(total) else pd.NA
        if layers.empty:
            row.update(index_per_layer=pd.NA, index_v_per_layer=pd.NA, deficiency_per_layer=pd.NA,
                       worst_layer=pd.NA, worst_index_v=pd.NA, deficiency=pd.NA, deficiency_missing=pd.NA,
                       predicted_count=pd.NA, predicted_rank=pd.NA)
        else:
            worst = layers.loc[pd.to_numeric(layers["index_v"]).idxmax()]
            deficiency = pd.to_numeric(layers["deficiency"], errors="coerce")
            predicted = set(layers["predicted"].astype(str))
            missing = int(deficiency.isna().sum())
            total_deficiency = int(deficiency.sum()) if deficiency.notna().any() else pd.NA
            row.update(index_per_layer=_per_layer(layers, "index"),
                       index_v_per_layer=_per_layer(layers, "index_v"),
                       deficiency_per_layer=_per_layer(layers, "deficiency", signed=False, nonzero=True),
                       worst_layer=worst["layer"], worst_index_v=int(worst["index_v"]),
                       deficiency=total_deficiency, deficiency_missing=missing,
                       predicted_count="unsupported" if "unsupported" in predicted
                       else "deficient" if "deficient" in predicted else "determined",
                       predicted_rank="n/a" if missing or pd.isna(total_deficiency)
                       else "deficient" if total_deficiency > 0 else "full rank")
        row["predicted"] = row["predicted_count"]
        mine = trials[trials["model"] == model]
        for attack in attacks:
            median, n_ok, seen = observed(mine[mine["attack"] == attack], threshold)
            row[f"{attack}_psnr_median"], row[f"{attack}_n"], row[f"{attack}_observed"] = median, n_ok, seen
            row[f"{attack}_agrees_count"] = _agrees(row["predicted_count"], seen, "determined")
            row[f"{attack}_agrees_rank"] = _agrees(row["predicted_rank"], seen, "full rank")
        rgap_seen = observed(mine[mine["attack"] == "rgap"], threshold)[2]
        row["observed"] = rgap_seen
        row["agrees"] = _agrees(row["predicted_count"], rgap_seen, "determined")
        rows.append(row)
    return pd.DataFrame(rows)


def _int_or_blank(value: object) -> str:
    """``123`` or an empty string for a missing value."""
    return "" if pd.isna(value) else f"{int(value)}"


def _blank(value: object) -> str:
    """The value as text, or an empty string when missing."""
    return "" if pd.isna(value) else str(value)


def render_rank(trials: pd.DataFrame, rank: pd.DataFrame, threshold: float) -> Rendered:
    """The rank analysis per network (counts per layer, numerical deficiency, both predictions), then each
    attack's median PSNR against those predictions; the CSV has one row per (network, attack)."""
    summary = rank_summary(trials, rank, threshold)
    attacks = attack_order(trials["attack"])
    analysis, outcome, long_rows = [], [], []
    for row in summary.to_dict("records"):
        deficiency = "n/a" if pd.isna(row["deficiency"]) else str(row["deficiency"])
        if not pd.isna(row["deficiency"]) and row["deficiency_missing"]:
            deficiency += f" ({row['deficiency_missing']} layer(s) n/a)"
        if not pd.isna(row["deficiency_per_layer"]) and not pd.isna(row["deficiency"]) and row["deficiency"]:
            deficiency += f" ({row['deficiency_per_layer']})"
        analysis.append({
            "network": row["model"], "figure |W|": _int_or_blank(row["figure_params"]),
            "our |W|": _int_or_blank(row["total_params"]),
            "|x|-|W|-|z| per layer": _blank(row["index_per_layer"]),
            "|x|-|W|-|z|-|V| per layer": _blank(row["index_v_per_layer"]),
            "numerical deficiency": deficiency, "predicted (count)": _blank(row["predicted_count"]),
            "predicted (numerical rank)": _blank(row["predicted_rank"])})
        for attack in attacks:
            median, n = row[f"{attack}_psnr_median"], row[f"{attack}_n"]
            outcome.append({
                "network": row["model"], "attack": display(attack),
                "PSNR median (dB)": EMPTY if not n else f"{median:.1f} (n={n})",
                f"observed (>= {threshold:g} dB)": row[f"{attack}_observed"],
                "count right?": _blank(row[f"{attack}_agrees_count"]),
                "numerical rank right?": _blank(row[f"{attack}_agrees_rank"])})
            long_rows.append({
                "model": row["model"], "figure_|W|": row["figure_params"], "our_|W|": row["total_params"],
                "index_per_layer": row["index_per_layer"], "index_v_per_layer": row["index_v_per_layer"],
                "deficiency_per_layer": row["deficiency_per_layer"], "deficiency": row["deficiency"],
                "deficiency_missing": row["deficiency_missing"], "predicted_count": row["predicted_count"],
                "predicted_rank": row["predicted_rank"], "attack": attack, "psnr_median": median, "n": n,
                "observed": row[f"{attack}_observed"], "agrees_count": row[f"{attack}_agrees_count"],
                "agrees_rank": row[f"{attack}_agrees_rank"]})
    scores = []
    for attack in attacks:
        for kind, title in (("count", "the count"), ("rank", "the numerical rank")):
            verdicts = [v for v in summary[f"{attack}_agrees_{kind}"] if not pd.isna(v)]
            if verdicts:
                scores.append(f"{title} predicted {display(attack)} on {verdicts.count('yes')} of "
                              f"{len(verdicts)} networks")
    caption = ("\"figure |W|\" is the total parameter count printed in the R-GAP paper's rank-analysis figure "
               "(its networks A-E are rankfig_a..rankfig_e); \"our |W|\" is our model's. Per layer, input layer "
               "first: the paper's count |x|-|W|-|z| (unknowns minus gradient and weight constraints) and the "
               "same minus the virtual constraints |V| carried up from the layer below (our reading of the "
               "figure, rgap/algorithm/rank.py); > 0 means fewer constraints than unknowns. \"numerical deficiency\": "
               "unknowns minus the numerical rank of each layer's stacked system [K; A] at a seeded random input "
               "(sum over layers, the deficient layers in brackets). \"predicted (count)\": deficient when a "
               "layer's count with |V| is > 0; \"predicted (numerical rank)\": deficient when a layer's system is "
               f"rank-deficient. An attack is \"ok\" on a network when its median PSNR over the ok trials is >= "
               f"{threshold:g} dB; a prediction is right when \"determined\"/\"full rank\" goes with \"ok\".")
    parts = ["# Rank analysis vs reconstruction", "", caption, "", "## Rank analysis per network", "",
             markdown_table(pd.DataFrame(analysis)), "", "## Reconstruction per network and attack", "",
             markdown_table(pd.DataFrame(outcome)), ""]
    if scores:
        parts += ["Summary: " + "; ".join(scores) + ".", ""]
    return Rendered("\n".join(parts), pd.DataFrame(long_rows))


def render(trials: pd.DataFrame, options: Options) -> Rendered:
    """The ``rank`` table kind."""
    return render_rank(trials, load_rank_csv(options.rank_csv), options.psnr_threshold)


# ---------------------------------------------------------------------------------------------------- figure


def plot_rank(trials: pd.DataFrame, rank: pd.DataFrame, psnr_threshold: float = 30.0) -> Figure:
    """PSNR per attack on each network, networks ordered along x by their rank deficiency.

    One column per network, sorted by its numerical rank deficiency (summed over layers; the worst-layer count
    index_v when a deficiency is missing), which the tick label gives under the network's name; per attack the
    trials as small faint markers and their median as a large one, side by side.
    """
    summary = rank_summary(trials, rank, psnr_threshold)
    summary = summary[summary["predicted"].notna()]
    if summary.empty:
        raise UserInputError("no model of the sweep is in --rank-csv; nothing to plot.")
    use_deficiency = summary["deficiency"].notna().all()
    x_column = "deficiency" if use_deficiency else "worst_index_v"
    x_label = ("network (numerical rank deficiency, summed over layers)" if use_deficiency
               else "network (worst-layer count |x|-|W|-|z|-|V|; deficiency n/a)")
    summary = summary.assign(_x=pd.to_numeric(summary[x_column])).sort_values(["_x", "model"], kind="stable")
    attacks = attack_order(trials.loc[trials["model"].isin(summary["model"]), "attack"])
    short = all(m.startswith(RANK_PREFIX) for m in summary["model"])
    fig, axes = panels(1, 1)
    ax = axes[0, 0]
    width = 0.6 / max(1, len(attacks))
    for position, row in enumerate(summary.to_dict("records")):
        for a, attack in enumerate(attacks):
            x = position + (a - (len(attacks) - 1) / 2) * width
            mine = trials[(trials["model"] == row["model"]) & (trials["attack"] == attack) & (trials["status"] == "ok")]
            values = capped(pd.to_numeric(mine["psnr"], errors="coerce").dropna())
            style = {"marker": marker(attack), "color": color(attack, attacks)}
            ax.scatter(np.full(len(values), x), values, s=8, alpha=0.35, linewidths=0, zorder=2, **style)
            median = capped(np.array([row[f"{attack}_psnr_median"]]))[0]
            if np.isfinite(median):
                ax.scatter([x], [median], s=28, zorder=3, label=display(attack) if position == 0 else None, **style)
    names = [m[len(RANK_PREFIX):].upper() if short else m for m in summary["model"]]
    ax.set_xticks(range(len(summary)), [f"{n}\n{int(x)}" for n, x in zip(names, summary["_x"], strict=True)])
    ax.set_xlim(-0.6, len(summary) - 0.4)
    if short:
        ax.set_title(f"networks A-E = {RANK_PREFIX}a..e (the paper's rank figure)")
    note_cap(ax, pd.to_numeric(trials.loc[trials["model"].isin(summary["model"]), "psnr"], errors="coerce"))
    ax.axhline(psnr_threshold, linestyle=":", color="0.4", linewidth=0.8, label=f"{psnr_threshold:g} dB")
    ax.set_xlabel(x_label)
    ax.set_ylabel("PSNR (dB): trials, median")
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.5)
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    return fig


def draw(trials: pd.DataFrame, sweep_dir: Path, options: Options) -> Figure:
    """The ``rank`` figure kind."""
    return plot_rank(trials, load_rank_csv(options.rank_csv), options.psnr_threshold)
