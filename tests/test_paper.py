"""Paper tables and figures: from hand-made sweeps (cells, footnotes, joins, plots, errors), and end to end from
each offline experiment's config through real (reduced) trials to its tables and figures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib import pyplot as plt
from matplotlib.collections import PathCollection
from PIL import Image

from rgap.core.errors import UserInputError
from rgap.harness.schema import ROW_COLUMNS, TRACE_COLUMNS, write_csv, write_row
from rgap.harness.sweep import run_sweep_job
from scripts import paper_offline, paper_tables, plot
from scripts.collect import collect
from scripts.reports.gallery import plot_gallery
from scripts.reports.outputs import FIGURES, TABLES, make_plot, write_tables
from scripts.reports.paper_numbers import RANK_FIGURE_PARAMS
from scripts.reports.rank import rank_summary
from scripts.reports.style import STYLE
from scripts.reports.time_curves import on_grid, plot_time
from scripts.reports.trials import load_trials

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

RANK_COLUMNS = ["model", "total_params", "layer", "kind", "x", "w", "z", "v", "index", "index_v", "rank", "unknowns",
                "deficiency", "predicted", "b", "note"]


def row(attack: str, model: str = "cnn6", *, index: int = 0, status: str = "ok", psnr: float | None = 20.0,
        batch_size: int = 1, dataset: str = "sample", **extra) -> dict:
    """A schema row with plausible defaults; ``config_hash`` unique per call unless given."""
    row.counter = getattr(row, "counter", 0) + 1
    base = {c: None for c in ROW_COLUMNS}
    mse = None if psnr is None else 10 ** (-psnr / 10)
    base.update(attack=attack, model=model, dataset=dataset, batch_size=batch_size, index=index, indices=str(index),
                seed=0, precision="float64", loss="logistic", defense="none", defense_params="{}", status=status,
                reason="" if status == "ok" else f"{attack} cannot invert {model}: ReLU has no inverse",
                mse=mse if status == "ok" else None, psnr=psnr if status == "ok" else None,
                ssim=0.5 if status == "ok" else None, lpips=None, metric_notes="lpips: LPIPS not requested",
                label_acc=1.0, labels_given=False, time_s=0.5 if attack == "rgap" else 5.0,
                iterations=0 if attack == "rgap" else 100, attack_info="{}",
                config_hash=f"{row.counter:012x}")
    base.update(extra)
    return base


def make_sweep(path: Path, rows: list[dict], traces: bool = False, images: bool = False,
               collected: bool = True) -> Path:
    """Write ``rows`` as a sweep (``trials/<hash>/row.csv`` [+ trace/images]) and collect ``trials.csv``."""
    for r in rows:
        out = path / "trials" / r["config_hash"]
        write_row(r, out / "row.csv")
        if traces and r["status"] == "ok":
            if r["attack"] == "rgap":
                points = [(0, r["time_s"], 0.0, r["mse"], r["psnr"])]
            else:
                times = np.geomspace(0.05, r["time_s"], 12)
                psnr = np.linspace(5.0, r["psnr"], 12)
                points = [(10 * i, float(t), 1.0 / (i + 1), float(10 ** (-p / 10)), float(p))
                          for i, (t, p) in enumerate(zip(times, psnr, strict=True))]
            write_csv(points, TRACE_COLUMNS, out / "trace.csv")
        if images and r["status"] == "ok" and r["attack"] != "dlg":  # dlg trials: "no image saved"
            pixels = (np.random.default_rng(r["index"]).random((8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(out / "origin.png")
            Image.fromarray(255 - pixels).save(out / "reconstructed.png")
    if collected:
        collect(path)
    return path


def table1_rows() -> list[dict]:
    """R-GAP/DLG on cnn6 (one unsupported), R-GAP unsupported on cnn6d, the hybrid on fcn3 at B=1 and 5."""
    rows = [row("rgap", "cnn6", index=i, psnr=p) for i, p in enumerate([10.0, 20.0, 30.0])]
    rows.append(row("rgap", "cnn6", index=3, status="unsupported"))
    rows += [row("dlg", "cnn6", index=i, psnr=p) for i, p in enumerate([12.0, 14.0])]
    rows += [row("rgap", "cnn6d", index=i, status="unsupported") for i in range(2)]
    rows += [row("hgap", "fcn3", index=0, psnr=40.0, batch_size=1), row("hgap", "fcn3", index=0, psnr=8.0,
                                                                          batch_size=5)]
    return rows


def test_table1_cells_counts_and_footnotes(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", table1_rows())
    md_path, csv_path = write_tables(sweep, "table1", out=tmp_path / "out")
    md = md_path.read_text()
    assert "sample standard deviation (ddof=1)" in md
    table = pd.read_csv(csv_path)
    psnr = table[table["metric"] == "psnr"].set_index("attack")
    assert list(psnr.index) == ["R-GAP", "DLG", "R-GAP+DLG (hybrid)"]  # paper order, display names
    assert list(psnr.columns) == ["metric", "cnn6", "cnn6d", "fcn3 (B=1)", "fcn3 (B=5)"]
    assert psnr.loc["R-GAP", "cnn6"] == "20.0 ± 10.0 (n=3; 1 unsupported)"
    assert psnr.loc["DLG", "cnn6"] == "13.0 ± 1.4 (n=2)"
    assert psnr.loc["R-GAP+DLG (hybrid)", "fcn3 (B=5)"] == "8.0 (n=1)"  # one trial: no std
    assert psnr.loc["R-GAP", "cnn6d"].startswith("unsupported (n=2) [")
    assert psnr.loc["DLG", "cnn6d"] == "–"
    mse = table[table["metric"] == "mse"].set_index("attack")
    assert mse.loc["DLG", "cnn6"] == "5.1e-02 ± 1.6e-02 (n=2)"
    lpips = table[table["metric"] == "lpips"].set_index("attack")
    assert lpips.loc["R-GAP", "cnn6"] == "n/a [1] (1 unsupported)"
    lpips_section = md.split("## LPIPS")[1].split("##")[0]
    assert "[1] lpips: LPIPS not requested" in lpips_section
    assert "ReLU has no inverse" in md  # the unsupported reason is quoted in a footnote
    assert "| 0.50 ± 0.00 s (n=3; 1 unsupported) |" in md
    inf_sweep = make_sweep(tmp_path / "inf", [row("rgap", psnr=50.0), row("rgap", index=1, psnr=float("inf"))])
    inf_table = pd.read_csv(write_tables(inf_sweep, "table1", out=tmp_path / "inf_out")[1])
    assert inf_table.set_index("metric").loc["psnr", "cnn6"] == "inf [1] (n=2)"
    # deterministic: a second run (from row files only, no trials.csv) writes the same bytes
    (sweep / "trials.csv").unlink()
    again = write_tables(sweep, "table1", out=tmp_path / "again")
    assert again[0].read_text() == md and again[1].read_bytes() == csv_path.read_bytes()


def test_labels_table_rows_per_dataset_beside_the_paper(tmp_path):
    rows = [row("dlg", "lenet", dataset="sample", index=i, label_acc=a) for i, a in enumerate([1.0, 0.0])]
    rows += [row("idlg", "lenet", dataset="sample", index=i, label_acc=1.0) for i in range(2)]
    rows += [row("idlg", "lenet", dataset="sample_gray", index=0, label_acc=1.0),
             row("idlg", "lenet", dataset="sample_gray", index=1, status="failed")]
    rows += [row("dlg", "lenet", dataset="mnist", index=i, label_acc=a) for i, a in enumerate([1.0, 1.0, 0.0, 1.0])]
    sweep = make_sweep(tmp_path / "sweep", rows)
    md_path, csv_path = write_tables(sweep, "labels", out=tmp_path / "out")
    table = pd.read_csv(csv_path, keep_default_na=False).set_index("data")
    assert list(table.index) == ["mnist (MNIST)", "sample", "sample_gray", "CIFAR-100", "LFW"]
    assert list(table.columns) == ["DLG (ours)", "iDLG (ours)", "DLG (iDLG paper, Table 1)",
                                   "iDLG (iDLG paper, Table 1)"]
    assert table.loc["sample", "DLG (ours)"] == "50.0 % (n=2)"
    assert table.loc["sample_gray", "iDLG (ours)"] == "100.0 % (n=1; 1 failed)"
    assert table.loc["sample_gray", "DLG (ours)"] == "–"
    assert table.loc["sample", "DLG (iDLG paper, Table 1)"] == "–"  # no paper number for our offline sets
    assert table.loc["mnist (MNIST)", "DLG (ours)"] == "75.0 % (n=4)"
    assert table.loc["mnist (MNIST)", "DLG (iDLG paper, Table 1)"] == "89.9 %"
    assert table.loc["CIFAR-100", "DLG (iDLG paper, Table 1)"] == "83.3 %"
    assert table.loc["LFW", "DLG (iDLG paper, Table 1)"] == "79.1 %"
    assert (table.loc[["mnist (MNIST)", "CIFAR-100", "LFW"], "iDLG (iDLG paper, Table 1)"] == "100.0 %").all()
    assert table.loc["CIFAR-100", "DLG (ours)"] == "not run [1]" and table.loc["LFW", "iDLG (ours)"] == "not run [2]"
    md = md_path.read_text()
    assert "[1] CIFAR-100: not run, this project has no CIFAR-100 loader" in md
    # without MNIST trials (the offline variant), MNIST is a "not run" row too, with its own reason
    offline = make_sweep(tmp_path / "offline", rows[:6])
    table = pd.read_csv(write_tables(offline, "labels", out=tmp_path / "o")[1],
                        keep_default_na=False).set_index("data")
    assert list(table.index) == ["sample", "sample_gray", "MNIST", "CIFAR-100", "LFW"]
    assert table.loc["MNIST", "DLG (ours)"] == "not run [1]"
    assert "not run in this sweep (dataset=mnist" in (tmp_path / "o" / "labels.md").read_text()


def rank_csv(path: Path) -> Path:
    """Per-layer rank rows: rankfig_a determined, rankfig_b deficient (414), lenet count-only (no deficiency)."""
    layers = [
        ("rankfig_a", 3556, "conv1", -484, 0, "determined"), ("rankfig_a", 3556, "fc1", -1, 0, "determined"),
        ("rankfig_b", 2667, "conv1", 405, 414, "deficient"), ("rankfig_b", 2667, "fc1", -1, 0, "determined"),
        ("lenet", 1000, "conv1", -1868, None, "determined"),
    ]
    rows = [{"model": m, "total_params": t, "layer": n, "kind": n[:-1], "x": 1, "w": 1, "z": 1, "v": 0, "index": iv,
             "index_v": iv, "rank": None, "unknowns": 1, "deficiency": d, "predicted": p, "b": 0, "note": ""}
            for m, t, n, iv, d, p in layers]
    pd.DataFrame(rows, columns=RANK_COLUMNS).to_csv(path, index=False)
    return path


def rank_rows() -> list[dict]:
    """R-GAP good on rankfig_a, poor on rankfig_b and lenet; DLG on both figure networks."""
    rows = [row("rgap", "rankfig_a", index=i, psnr=p) for i, p in enumerate([40.0, 50.0, 60.0])]
    rows += [row("rgap", "rankfig_b", index=i, psnr=p) for i, p in enumerate([10.0, 12.0])]
    rows += [row("dlg", m, index=0, psnr=15.0) for m in ("rankfig_a", "rankfig_b")]
    rows += [row("rgap", "lenet", index=0, psnr=12.0)]  # predicted determined, observed noisy
    return rows


def test_rank_table_joins_and_agrees(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", rank_rows())
    csv = rank_csv(tmp_path / "rank.csv")
    md_path, csv_path = write_tables(sweep, "rank", out=tmp_path / "out", rank_csv=csv)
    summary = rank_summary(load_trials(sweep), pd.read_csv(csv)).set_index("model")
    assert list(summary.index) == ["lenet", "rankfig_a", "rankfig_b"]
    assert summary.loc["rankfig_a", "figure_params"] == 3556 and pd.isna(summary.loc["lenet", "figure_params"])
    assert pd.isna(summary.loc["lenet", "deficiency"]) and summary.loc["lenet", "deficiency_missing"] == 1
    assert summary.loc["rankfig_b", "index_per_layer"] == "conv1 +405; fc1 -1"
    assert summary.loc["rankfig_b", "deficiency_per_layer"] == "conv1 414"  # deficient layers only
    assert list(summary["predicted_count"]) == ["determined", "determined", "deficient"]
    assert list(summary["predicted_rank"]) == ["n/a", "full rank", "deficient"]
    assert list(summary["rgap_observed"]) == ["noisy", "ok", "noisy"]
    assert list(summary["rgap_agrees_count"]) == ["no", "yes", "yes"]
    assert pd.isna(summary.loc["lenet", "rgap_agrees_rank"])  # no numerical rank: no verdict
    assert list(summary.loc[["rankfig_a", "rankfig_b"], "dlg_agrees_rank"]) == ["no", "yes"]  # DLG 15 dB on both
    assert summary.loc["lenet", "dlg_observed"] == "no trials"
    table = pd.read_csv(csv_path)
    assert len(table) == 6 and list(table["attack"][:2]) == ["rgap", "dlg"]  # one row per (network, attack)
    first = table[(table["model"] == "rankfig_a") & (table["attack"] == "rgap")].iloc[0]
    assert (first["psnr_median"], first["n"], first["agrees_rank"]) == (50.0, 3, "yes")
    md = md_path.read_text()
    assert ("| rankfig_b | 2667 | 2667 | conv1 +405; fc1 -1 | conv1 +405; fc1 -1 | 414 (conv1 414) | "
            "deficient | deficient |") in md
    assert "| lenet |  | 1000 | conv1 -1868 | conv1 -1868 | n/a | determined | n/a |" in md
    assert "| rankfig_b | R-GAP | 11.0 (n=2) | noisy | yes | yes |" in md
    assert "| lenet | DLG | – | no trials |  |  |" in md
    assert "the numerical rank predicted R-GAP on 2 of 2 networks" in md
    assert "the count predicted R-GAP on 2 of 3 networks" in md


def noise_rows(param: str = "scale") -> list[dict]:
    """R-GAP and DLG, two images per level 0, 1e-3 and 1e-1 of gaussian ``scale`` or ``prune_ratio``."""
    rows = []
    for level, psnrs in ((0.0, [200.0, 240.0]), (1e-3, [40.0, 44.0]), (1e-1, [12.0, 10.0])):
        for attack, shift in (("rgap", 0.0), ("dlg", -5.0)):
            params = {"relative": True, "scale": level} if param == "scale" else {"prune_ratio": level}
            defense = "gaussian" if param == "scale" else "prune"
            rows += [row(attack, "cnn6", index=i, psnr=p + shift, defense=defense,
                         defense_params=json.dumps(params, sort_keys=True)) for i, p in enumerate(psnrs)]
    return rows


def test_noise_table(tmp_path):
    rows = noise_rows()
    rows.append(row("rgap", "cnn6", index=5, status="failed", defense="gaussian",
                    defense_params='{"relative": true, "scale": 0.1}'))
    sweep = make_sweep(tmp_path / "sweep", rows)
    md_path, csv_path = write_tables(sweep, "noise", out=tmp_path / "out")
    table = pd.read_csv(csv_path, dtype={"scale": str}).set_index("scale")
    assert list(table.index) == ["0", "0.001", "0.1"] and list(table.columns) == ["R-GAP", "DLG"]
    assert table.loc["0.001", "R-GAP"] == "42.0 (n=2)"
    assert table.loc["0.1", "R-GAP"] == "11.0 (n=2; 1 failed)"
    assert table.loc["0.1", "DLG"] == "6.0 (n=2)"
    assert "relative" in md_path.read_text()


@pytest.mark.parametrize("kind", ["time", "gallery", "rank", "noise", "noise_prune"])
def test_plots_render(tmp_path, kind):
    extra: dict = {}
    if kind in ("time", "gallery"):
        sweep = make_sweep(tmp_path / "sweep", table1_rows(), traces=True, images=True)
    elif kind == "rank":
        sweep = make_sweep(tmp_path / "sweep", rank_rows())
        extra["rank_csv"] = rank_csv(tmp_path / "rank.csv")
    else:
        param = "scale" if kind == "noise" else "prune_ratio"
        sweep = make_sweep(tmp_path / "sweep", noise_rows(param))
        extra["param"] = param
    paths = make_plot(kind.split("_")[0], sweep, out=tmp_path / "figs", **extra)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left behind


def test_time_curves_and_gallery_blank(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", table1_rows(), traces=True, images=True)
    trials = load_trials(sweep)
    with plt.rc_context(STYLE):
        fig = plot_time(trials, sweep, models=["cnn6"])
        assert fig.get_size_inches() == pytest.approx([3.3, 4.8])
        top = fig.axes[0]
        assert top.get_xscale() == "log" and top.get_ylabel() == "PSNR (dB)"
        assert [t.get_text() for t in top.get_legend().get_texts()] == ["R-GAP", "DLG"]
        dlg_line = top.get_lines()[0]
        assert dlg_line.get_ydata()[-1] == pytest.approx(13.0)  # median of the held final values 12 and 14
        plt.close(fig)
        fig = plot_gallery(trials, sweep, "cnn6", [0, 1])
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts.count("no image saved") == 2  # dlg trials were written without images
        assert sum(len(ax.images) for ax in fig.axes) == 4  # originals and R-GAP reconstructions are found
        assert "20.0 dB" in [ax.get_xlabel() for ax in fig.axes]
        plt.close(fig)
        fig = plot_gallery(trials, sweep, by="model")  # one row per model, the smallest common index
        assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["cnn6", "cnn6d", "fcn3"]
        assert [ax.get_title() for ax in fig.axes[:4]] == ["original", "R-GAP", "DLG", "R-GAP+DLG (hybrid)"]
        assert fig.axes[5].get_xlabel() == "unsupported" and fig.axes[11].get_xlabel() == "40.0 dB"  # fcn3 at B=1
        plt.close(fig)
        with pytest.raises(UserInputError, match="--by"):
            plot_gallery(trials, sweep, by="seed")
    noisy = make_sweep(tmp_path / "noisy", noise_rows(), traces=True)
    fig = plot_time(load_trials(noisy), noisy)
    assert fig.texts[0].get_text().startswith("undefended trials only")
    scatter = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in scatter] == [2]  # the two level-0 R-GAP trials of six
    plt.close(fig)
    grid = np.array([0.5, 1.0, 2.0, 4.0])
    assert np.allclose(on_grid(grid, np.array([1.0, 2.0]), np.array([10.0, 20.0]))[1:], [10.0, 20.0, 20.0])
    assert np.isnan(on_grid(grid, np.array([1.0, 2.0]), np.array([10.0, 20.0]))[0])


def test_all_digit_hashes_survive_collect(tmp_path):
    """Hashes are text from the row files through trials.csv to the reports (no repair needed)."""
    rows = [row("rgap", index=0, config_hash="000000000123"), row("rgap", index=1, config_hash="00000000012a")]
    sweep = make_sweep(tmp_path / "sweep", rows, traces=True)
    assert ",000000000123," in (sweep / "trials.csv").read_text()
    trials = load_trials(sweep)
    assert sorted(trials["config_hash"]) == ["000000000123", "00000000012a"]


def test_trials_without_newer_columns_read_through_the_schema(tmp_path, capsys):
    """A trials.csv from before the ``source`` column renders the same tables; one without the key columns, or with
    a cell of the wrong type, is one paragraph and exit 2."""
    sweep = make_sweep(tmp_path / "sweep", table1_rows())
    md_path, csv_path = write_tables(sweep, "table1", out=tmp_path / "new")
    old = pd.read_csv(sweep / "trials.csv", dtype=str, keep_default_na=False).drop(columns=["source"])
    old.to_csv(sweep / "trials.csv", index=False)
    again = write_tables(sweep, "table1", out=tmp_path / "old")
    assert again[0].read_text() == md_path.read_text() and again[1].read_bytes() == csv_path.read_bytes()
    assert str(load_trials(sweep)["batch_size"].dtype) == "Int64"  # typed by the schema, not guessed
    old.drop(columns=["psnr"]).to_csv(sweep / "trials.csv", index=False)
    assert paper_tables.main([str(sweep), "--experiment", "table1"]) == 2
    assert "lacks the columns ['psnr']" in capsys.readouterr().err
    old.assign(batch_size="1.5").to_csv(sweep / "trials.csv", index=False)
    assert paper_tables.main([str(sweep), "--experiment", "table1"]) == 2
    assert "not of its column's type" in capsys.readouterr().err


def test_attack_styles_come_from_the_attack_facts():
    from rgap.harness.compose import attack_facts
    from scripts.reports.style import EXTRA_COLORS, color, marker

    attacks = ["rgap", "dlg", "idlg", "ig", "hgap", "mine", "yours"]
    colors = [color(a, attacks) for a in attacks]
    assert colors[:5] == [attack_facts(a).color for a in attacks[:5]] and len(set(colors[:5])) == 5
    assert colors[5:] == list(EXTRA_COLORS[:2])  # attacks without facts take the spare colours in turn
    assert [marker(a) for a in ("rgap", "dlg", "mine")] == ["o", "s", "x"]
    assert attack_facts("rgap").closed_form and not attack_facts("dlg").closed_form


def test_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert paper_tables.main([str(missing), "--experiment", "table1"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert plot.main(["time", str(missing)]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot.main(["noise", str(tmp_path / "empty")]) == 2
    assert "holds no trial rows" in capsys.readouterr().err
    sweep = make_sweep(tmp_path / "sweep", rank_rows())
    assert plot.main(["histogram", str(sweep)]) == 2
    assert "unknown plot kind 'histogram'" in capsys.readouterr().err
    assert paper_tables.main([str(sweep), "--experiment", "table9"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert paper_tables.main([str(sweep), "--experiment", "rank"]) == 2
    assert "--rank-csv" in capsys.readouterr().err
    assert paper_tables.main([str(sweep), "--experiment", "noise"]) == 2
    assert "defense parameter 'scale'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ end to end, reduced


def compose_benchmark(*overrides: str, hydra_node: bool = False):
    """``conf/benchmark.yaml`` with ``overrides`` (LPIPS off: no weights offline)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="benchmark", overrides=["metrics.lpips=false", *overrides],
                       return_hydra_config=hydra_node)


def reduced_points(experiment: str) -> list[list[str]]:
    """The first sweep point of each attack and of each ``+setup`` (model and dataset pair), plus (noise) the
    first point at the largest noise level."""
    params = compose_benchmark(f"+experiment={experiment}", hydra_node=True).hydra.sweeper.params
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        override = parser.parse_overrides([f"{key}={value}"])[0]
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        axes.append([f"{override.get_key_element()}={v}" for v in values])
    points = [list(p) for p in itertools.product(*axes)]
    chosen: dict[str, list[str]] = {}
    for point in points:
        for override in point:
            if override.startswith(("attack=", "+setup=")):
                chosen.setdefault(override, point)
    picked = [list(p) for p in {tuple(p): None for p in chosen.values()}]
    scales = [o for o in points[-1] if o.startswith("defense.scale=")]
    if scales:
        picked.append([o if not o.startswith("defense.scale=") else scales[0] for o in picked[0]])
    return picked


@pytest.mark.parametrize("key", sorted(paper_offline.EXPERIMENTS))
def test_offline_experiment_end_to_end_reduced(key, tmp_path):
    """One trial per attack (2 optimisation iterations) of each offline experiment, then its tables and figures
    exactly as `make paper-offline` publishes them (reference results use the configs' real settings)."""
    exp = paper_offline.EXPERIMENTS[key]
    sweep = tmp_path / exp.sweep_name
    for config in exp.configs:
        for point in reduced_points(config):
            cfg = compose_benchmark(f"+experiment={config}", *point, "threads=1")
            if cfg.attack.name != "rgap":
                cfg = compose_benchmark(f"+experiment={config}", *point, "threads=1", "attack.iterations=2")
            new = run_sweep_job(cfg, sweep).row
            assert new is not None and new["status"] == "ok", (point, new and new["reason"])
    collect(sweep)
    trials = load_trials(sweep)
    models = sorted(set(trials["model"]))
    out = tmp_path / "out"
    files = paper_offline.publish(exp, sweep, out, rank_models=models)
    names = sorted(f.relative_to(out).as_posix() for f in files)
    expected = {"trials.csv"} | {f"{table.path}.{ext}" for table in exp.tables for ext in ("md", "csv")}
    expected |= {f"{figure.file_name}.png" for figure in exp.figures if (figure.model or models[0]) in models}
    if exp.rank_analysis:
        expected.add("rank_analysis.csv")
    assert set(names) == expected and len(names) == len(expected)
    if exp.rank_analysis:  # composed from conf/rank.yaml: each figure network has the figure's |W|
        analysis = pd.read_csv(out / "rank_analysis.csv")
        assert set(analysis["model"]) == set(models)
        assert (analysis["total_params"] == analysis["model"].map(RANK_FIGURE_PARAMS.values)).all()
        if "rankfig_a" in models:  # the figure's column 1: conv1 |x|-|W|-|z| = 3072 - 192 - 3364 = -484
            conv = analysis[(analysis["model"] == "rankfig_a") & (analysis["kind"] == "conv")].iloc[0]
            assert (conv["x"], conv["w"], conv["z"], conv["index"]) == (3072, 192, 3364, -484)
    assert all(f.stat().st_size > (1000 if f.suffix == ".png" else 0) for f in files)
    assert not list(out.rglob("*.pdf"))
    for table in exp.tables:
        md = (out / f"{table.path}.md").read_text()
        assert "R-GAP" in md or "iDLG" in md


def test_experiments_declare_their_configs_sweep_and_outputs():
    """Each experiment's configs exist and write into its sweep directory; its tables and figures are kinds the
    command lines know; no two tables (or figures) of an experiment share a file."""
    for key, exp in paper_offline.EXPERIMENTS.items():
        assert exp.key == key and exp.configs
        for config in exp.configs:
            assert compose_benchmark(f"+experiment={config}").sweep_name == exp.sweep_name
        assert {t.kind for t in exp.tables} <= set(TABLES) and {f.kind for f in exp.figures} <= set(FIGURES)
        tables, figures = [t.path for t in exp.tables], [f.file_name for f in exp.figures]
        assert len(set(tables)) == len(tables) and len(set(figures)) == len(figures)
    assert paper_offline.DEFAULT == ["labels", "noise", "rank", "table1"]  # the defense sweeps only on request
