"""Time R-GAP per image: trials of ``runners.attack attack=rgap`` on images 0..N-1, one gradient precision at a time.

    python -m scripts.bench_rgap [--images 8] [--precision float64,float32] [OVERRIDE ...]

OVERRIDEs are the trial's Hydra overrides (as ``python -m runners.attack`` takes them), for example::

    python -m scripts.bench_rgap                                     # CNN6 on the offline photos (32 px)
    python -m scripts.bench_rgap model=cnn6d --images 4 --precision float64
    python -m scripts.bench_rgap +setup=lenet_sample_gray_dlgweights  # LeNet with DLG's U(-0.5, 0.5) weights
    python -m scripts.bench_rgap model=cnn6w dataset.size=128 --images 2 --precision float64
    python -m scripts.bench_rgap attack.solver=generic               # the dense/plain-CG solver of version 1

Prints, per image, the row's attack seconds (``time_s``), PSNR, label and how many roots the top layer had;
per precision the median and maximum seconds, the PSNR median/min/max and the label accuracy; then the
process's peak resident memory (VmHWM). Targets of issue 13 on 2 CPU cores: CNN6 <= 0.35 s per image at >= 200
dB (float64 gradients); LeNet with DLG's weights <= 0.08 s; CNN6-d <= 1.5 s; peak memory <= 1.2 GB at 32 px.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from rgap.core.atomic import atomic_write_text, make_dirs
from scripts.benchtrials import attack_info, load_note, median, ok_rows, peak_rss_mb, run_main, run_rows

PRECISIONS = ("float64", "float32")


def _precisions(text: str) -> list[str]:
    values = text.split(",")
    bad = [v for v in values if v not in PRECISIONS]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad} not valid; valid choices: {', '.join(PRECISIONS)} (comma-separated)")
    return values


def _progress(row: dict) -> None:
    if row["status"] != "ok":
        print(f"  {row['precision']} image {row['index']:2d}: {row['status']}: {row['reason']}", flush=True)
        return
    info = attack_info(row)
    print(f"  {row['precision']} image {row['index']:2d}: {row['time_s']:6.2f} s  PSNR {row['psnr']:7.2f} dB  "
          f"label acc {row['label_acc']:.0%}  top roots {info.get('rgap_roots', '?')} "
          f"({info.get('rgap_root_rule', '?')})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8, help="images 0..N-1 of the dataset, one trial each")
    parser.add_argument("--precision", type=_precisions, default=["float64", "float32"],
                        help="gradient precision(s) of the client, comma-separated (default float64,float32)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows and the peak memory to this JSON file (scripts.bench_scaling)")
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides of the trial config")
    args = parser.parse_args(argv)
    if args.json is not None:
        make_dirs(args.json.parent)  # an unwritable place fails now, not after every trial has run
    base = ["attack=rgap", *args.overrides]
    print(f"R-GAP trials: {' '.join(base)}, images 0..{args.images - 1}, torch {torch.__version__}, {load_note()}",
          flush=True)
    results = {p: run_rows([*base, f"precision={p}"], args.images, _progress) for p in args.precision}
    print(f"\n{'gradient':>9} | {'ok':>3} | {'s/image (median)':>16} | {'s/image (max)':>13} | {'PSNR median':>11} | "
          f"{'PSNR min':>8} | {'PSNR max':>8} | label acc")
    for precision, rows in results.items():
        ok = ok_rows(rows)
        if not ok:
            print(f"{precision:>9} | {0:3d} | no ok row")
            continue
        psnrs = [r["psnr"] for r in ok]
        print(f"{precision:>9} | {len(ok):3d} | {median(ok, 'time_s'):16.3f} | {max(r['time_s'] for r in ok):13.3f} | "
              f"{median(ok, 'psnr'):11.2f} | {min(psnrs):8.2f} | {max(psnrs):8.2f} | "
              f"{100 * median(ok, 'label_acc'):.0f} %")
    print(f"peak resident memory of the process: {peak_rss_mb():.0f} MiB; {load_note()}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"overrides": base, "peak_mb": peak_rss_mb(),
                                                 "load": os.getloadavg()[0], "rows": results}, default=str))
    return 0


if __name__ == "__main__":
    run_main(main)
