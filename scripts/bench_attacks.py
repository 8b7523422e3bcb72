"""R-GAP next to the optimisation attacks on the same images, weights and gradients, through the trial path.

    python -m scripts.bench_attacks [--setups cnn6_sample lenet_sample_gray_dlgweights] [--images 8]
                                    [--attacks rgap dlg idlg ig hgap] [--for dlg attack.iterations=50 ...]
                                    [OVERRIDE ...]

Each setup is a ``conf/setup/`` entry (a model and a dataset chosen together: ``lenet_sample_gray_dlgweights``
is LeNet with DLG's U(-0.5, 0.5) weights on the offline faces); for each, every attack runs as the trials
``runners.attack +setup=<setup> attack=<attack> index=i`` (the same seeded weights, images and client gradient
for every attack). OVERRIDEs apply to every trial, ``--for ATTACK OVERRIDE`` to that attack's trials only.
Prints per attack the median PSNR, median attack seconds (``time_s``) and label accuracy, and the ratio of
DLG's median seconds to R-GAP's. Targets of issue 13 (2 CPU cores, DLG's default 300 iterations): >= 40x on
CNN6, >= 20x on LeNet with DLG's weights.
"""

from __future__ import annotations

import argparse

import torch

from scripts.benchtrials import load_note, median, ok_rows, run_main, run_rows


def _progress(row: dict) -> None:
    head = f"  {row['model']} {row['attack']:5s} image {row['index']}:"
    if row["status"] != "ok":
        print(f"{head} {row['status']}: {row['reason']}", flush=True)
        return
    psnr = "-" if row["psnr"] is None else f"{row['psnr']:7.2f} dB"
    acc = "-" if row["label_acc"] is None else f"{row['label_acc']:.2f}"
    print(f"{head} PSNR {psnr}  {row['time_s']:8.2f} s  label acc {acc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=["cnn6_sample", "lenet_sample_gray_dlgweights"],
                        help="conf/setup entries (model and dataset together)")
    parser.add_argument("--attacks", nargs="+", default=["rgap", "dlg", "idlg", "ig", "hgap"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--for", dest="per_attack", nargs=2, action="append", default=[],
                        metavar=("ATTACK", "OVERRIDE"), help="an override for one attack's trials only")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides of every trial")
    args = parser.parse_args(argv)
    per_attack: dict[str, list[str]] = {}
    for name, override in args.per_attack:
        per_attack.setdefault(name, []).append(override)
    print(f"{args.images} images per setup, overrides {' '.join(args.overrides) or 'none'}, per attack "
          f"{per_attack or 'none'}, torch {torch.__version__}, {load_note()}", flush=True)
    for setup in args.setups:
        results = {name: run_rows([f"+setup={setup}", f"attack={name}", *args.overrides, *per_attack.get(name, [])],
                                  args.images, _progress)
                   for name in args.attacks}
        print(f"\n{setup}")
        print(f"{'attack':>7} | {'ok':>3} | {'median PSNR (dB)':>16} | {'median s':>9} | {'label acc':>9}")
        for name, rows in results.items():
            ok = ok_rows(rows)
            if not ok:
                print(f"{name:>7} | {0:3d} | {rows[0]['status']}: {rows[0]['reason'][:80]}")
                continue
            print(f"{name:>7} | {len(ok):3d} | {median(ok, 'psnr'):16.2f} | {median(ok, 'time_s'):9.3f} | "
                  f"{median(ok, 'label_acc'):9.2f}")
        rgap, dlg = ok_rows(results.get("rgap", [])), ok_rows(results.get("dlg", []))
        if rgap and dlg:
            ratio = median(dlg, "time_s") / median(rgap, "time_s")
            print(f"DLG seconds / R-GAP seconds (medians) on {setup}: {ratio:.1f}x")
        print(flush=True)
    print(load_note())
    return 0


if __name__ == "__main__":
    run_main(main)
