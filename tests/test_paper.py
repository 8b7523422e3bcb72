"""Paper tables and figures from hand-made sweeps (no attack runs): cells, footnotes, joins, plots, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from PIL import Image

from rgap.schema import ROW_COLUMNS, TRACE_COLUMNS, write_csv, write_row
from scripts import paper_tables, plot
from scripts.collect import collect

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
    md_path, csv_path = paper_tables.write_tables(sweep, "table1", out=tmp_path / "out")
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
    inf_table = pd.read_csv(paper_tables.write_tables(inf_sweep, "table1", out=tmp_path / "inf_out")[1])
    assert inf_table.set_index("metric").loc["psnr", "cnn6"] == "inf [1] (n=2)"
    # deterministic: a second run (from row files only, no trials.csv) writes the same bytes
    (sweep / "trials.csv").unlink()
    again = paper_tables.write_tables(sweep, "table1", out=tmp_path / "again")
    assert again[0].read_text() == md and again[1].read_bytes() == csv_path.read_bytes()


def test_labels_table_has_paper_columns(tmp_path):
    rows = [row("dlg", "lenet", dataset="sample", index=i, label_acc=a) for i, a in enumerate([1.0, 0.0])]
    rows += [row("idlg", "lenet", dataset="sample", index=i, label_acc=1.0) for i in range(2)]
    rows += [row("idlg", "lenet", dataset="sample_gray", index=0, label_acc=1.0),
             row("idlg", "lenet", dataset="sample_gray", index=1, status="failed")]
    sweep = make_sweep(tmp_path / "sweep", rows)
    md_path, csv_path = paper_tables.write_tables(sweep, "labels", out=tmp_path / "out")
    table = pd.read_csv(csv_path, keep_default_na=False).set_index("attack")
    assert list(table.index) == ["DLG", "iDLG"]
    assert table.loc["DLG", "ours: sample"] == "50.0 % (n=2)"
    assert table.loc["iDLG", "ours: sample_gray"] == "100.0 % (n=1; 1 failed)"
    assert table.loc["DLG", "ours: sample_gray"] == "–"
    assert table.loc["DLG", "paper (iDLG, Table 1): MNIST"] == "89.9 %"
    assert table.loc["DLG", "paper (iDLG, Table 1): CIFAR-100"] == "83.3 %"
    assert table.loc["DLG", "paper (iDLG, Table 1): LFW"] == "79.1 %"
    assert (table.loc["iDLG", [c for c in table.columns if c.startswith("paper")]] == "100.0 %").all()
    assert "for reference only" in md_path.read_text()


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
    md_path, csv_path = paper_tables.write_tables(sweep, "rank", out=tmp_path / "out", rank_csv=csv)
    table = pd.read_csv(csv_path).set_index("model")
    assert list(table.index) == ["lenet", "rankfig_a", "rankfig_b"]
    assert table.loc["rankfig_a", "figure_|W|"] == 3556 and pd.isna(table.loc["lenet", "figure_|W|"])
    assert pd.isna(table.loc["lenet", "deficiency"]) and table.loc["lenet", "deficiency_missing"] == 1
    assert table.loc["rankfig_b", "our_|W|"] == 2667
    assert table.loc["rankfig_b", "worst_index_v"] == 405 and table.loc["rankfig_b", "deficiency"] == 414
    assert [table.loc[m, "predicted"] for m in table.index] == ["determined", "determined", "deficient"]
    assert [table.loc[m, "observed"] for m in table.index] == ["noisy", "ok", "noisy"]
    assert [table.loc[m, "agrees"] for m in table.index] == ["no", "yes", "yes"]
    assert table.loc["rankfig_a", "rgap_psnr_median"] == 50.0
    md = md_path.read_text()
    assert "| rankfig_b | 2667 | 2667 | +405 (conv1) | 414 | deficient | 11.0 (n=2) | 15.0 (n=1) | noisy | yes |" in md
    assert "| lenet |  | 1000 | -1868 (conv1) | n/a | determined |" in md


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
    md_path, csv_path = paper_tables.write_tables(sweep, "noise", out=tmp_path / "out")
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
    paths = plot.make_plot(kind.split("_")[0], sweep, out=tmp_path / "figs", **extra)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left behind


def test_time_curves_and_gallery_blank(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", table1_rows(), traces=True, images=True)
    trials = paper_tables.load_trials(sweep)
    with plot.plt.rc_context(plot.STYLE):
        fig = plot.plot_time(trials, sweep, models=["cnn6"])
        assert fig.get_size_inches() == pytest.approx([3.3, 4.8])
        top = fig.axes[0]
        assert top.get_xscale() == "log" and top.get_ylabel() == "PSNR (dB)"
        assert [t.get_text() for t in top.get_legend().get_texts()] == ["R-GAP", "DLG"]
        dlg_line = top.get_lines()[0]
        assert dlg_line.get_ydata()[-1] == pytest.approx(13.0)  # median of the held final values 12 and 14
        plot.plt.close(fig)
        fig = plot.plot_gallery(trials, sweep, "cnn6", [0, 1])
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert texts.count("no image saved") == 2  # dlg trials were written without images
        assert sum(len(ax.images) for ax in fig.axes) == 4  # originals and R-GAP reconstructions are found
        assert "20.0 dB" in [ax.get_xlabel() for ax in fig.axes]
        plot.plt.close(fig)
    noisy = make_sweep(tmp_path / "noisy", noise_rows(), traces=True)
    fig = plot.plot_time(paper_tables.load_trials(noisy), noisy)
    assert fig.texts[0].get_text().startswith("undefended trials only")
    scatter = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in scatter] == [2]  # the two level-0 R-GAP trials of six
    plot.plt.close(fig)
    grid = np.array([0.5, 1.0, 2.0, 4.0])
    assert np.allclose(plot.on_grid(grid, np.array([1.0, 2.0]), np.array([10.0, 20.0]))[1:], [10.0, 20.0, 20.0])
    assert np.isnan(plot.on_grid(grid, np.array([1.0, 2.0]), np.array([10.0, 20.0]))[0])


def test_hashes_mangled_by_collect_are_repaired(tmp_path):
    rows = [row("rgap", index=0, config_hash="000000000123"), row("rgap", index=1, config_hash="00000000012a")]
    sweep = make_sweep(tmp_path / "sweep", rows, traces=True)
    (sweep / "trials.csv").write_text((sweep / "trials.csv").read_text().replace(",000000000123,", ",123,"))
    trials = paper_tables.load_trials(sweep)
    assert sorted(trials["config_hash"]) == ["000000000123", "00000000012a"]


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
