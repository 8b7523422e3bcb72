"""R-GAP next to the optimization attacks on the same images, weights and gradients.

    python -m scripts.bench_attacks [--models cnn6 lenet] [--images 8] [--attacks rgap dlg idlg ig hgap]
                                    [--set dlg.iterations=300 ig.iterations=4800 lenet:model.init=uniform ...]

An override ``MODEL:group.key=value`` applies to that model only (``lenet:model.init=uniform
lenet:model.init_std=0.5`` gives LeNet DLG's weights while CNN6 keeps its own), so one run prints both ratios.

For each model, every attack sees the same shared gradients (the trial path of ``runners.attack``:
``sample`` images for CNN6, ``sample_gray`` for LeNet, logistic loss with the true label, float64
gradient). Prints per attack the median PSNR, median attack seconds and label accuracy, and the ratio of
DLG's seconds to R-GAP's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rgap.attack import Attack
from rgap.client.gradient import compute_shared_gradient
from rgap.core.config import instantiate_group
from rgap.core.errors import UnsupportedError
from rgap.evaluation.matching import label_accuracy
from rgap.evaluation.metrics import image_metrics
from rgap.harness.trial import timed_attack
from rgap.zoo.checkpoints import build_model
from rgap.zoo.data import build_dataset

CONF = Path(__file__).resolve().parents[1] / "conf"
DATASET_FOR = {"cnn6": "sample", "cnn6d": "sample", "fcn3": "sample_gray", "lenet": "sample_gray"}


def load_group(group: str, name: str, overrides: list[str]):
    """``conf/<group>/<name>.yaml`` with ``key=value`` overrides applied."""
    cfg = OmegaConf.load(CONF / group / f"{name}.yaml")
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, _parse(value))
    return cfg


def parse_overrides(items: list[str], model_name: str | None = None) -> dict[str, list[str]]:
    """``["dlg.iterations=50", "model.init=uniform"]`` -> ``{"dlg": ["iterations=50"], "model": ["init=uniform"]}``.

    Items ``MODEL:group.key=value`` are kept only for ``model_name``."""
    overrides: dict[str, list[str]] = {}
    for item in items:
        target, _, rest_item = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        if target and target != model_name:
            continue
        group, rest = rest_item.split(".", 1)
        overrides.setdefault(group, []).append(rest)
    return overrides


def _parse(value: str):
    return OmegaConf.create(f"v: {value}").v


def run(model_name: str, attacks: list[str], n_images: int, overrides: dict[str, list[str]], seed: int,
        label: str) -> dict[str, dict[str, list[float]]]:
    dataset = build_dataset(load_group("dataset", DATASET_FOR[model_name], []))
    model_cfg = load_group("model", model_name, overrides.get("model", []))
    model, _ = build_model(model_cfg, dataset.shape, seed, num_outputs=1)
    results: dict[str, dict[str, list[float]]] = {}
    for name in attacks:
        attack = instantiate_group(load_group("attack", name, overrides.get(name, [])), "attack", Attack)
        stats: dict[str, list[float]] = {"psnr": [], "seconds": [], "label_acc": []}
        for index in range(n_images):
            images, labels = dataset.get([index])
            shared = compute_shared_gradient(model, images, labels, precision="float64", label_mode=label)
            try:
                result, seconds = timed_attack(attack, shared)
            except UnsupportedError as exc:
                print(f"  {model_name} {name:5s} image {index}: unsupported: {exc}", flush=True)
                continue
            psnr = image_metrics(result.reconstruction, images).values["psnr"]
            acc = float("nan")
            if result.labels is not None:
                acc = label_accuracy(result.labels.cpu(), shared.labels.cpu())
            stats["psnr"].append(psnr if psnr is not None else float("nan"))
            stats["seconds"].append(seconds)
            stats["label_acc"].append(acc)
            print(f"  {model_name} {name:5s} image {index}: PSNR {stats['psnr'][-1]:7.2f} dB  {seconds:8.2f} s  "
                  f"label acc {acc:.2f}", flush=True)
        results[name] = stats
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn6", "lenet"], choices=sorted(DATASET_FOR))
    parser.add_argument("--attacks", nargs="+", default=["rgap", "dlg", "idlg", "ig", "hgap"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="true", choices=["true", "reversed"])
    parser.add_argument("--set", nargs="*", default=[], metavar="ATTACK.KEY=VALUE",
                        help="config overrides, e.g. dlg.iterations=50 ig.iterations=500 model.init=uniform")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.images} images per model, label={args.label}, overrides {args.set or 'none'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model_name in args.models:
        overrides = parse_overrides(args.set, model_name)
        results = run(model_name, args.attacks, args.images, overrides, args.seed, args.label)
        print(f"\n{model_name} / {DATASET_FOR[model_name]}")
        print(f"{'attack':>7} | {'n':>2} | {'median PSNR (dB)':>16} | {'median s':>9} | {'label acc':>9}")
        for name, stats in results.items():
            if not stats["psnr"]:
                print(f"{name:>7} |  0 | unsupported")
                continue
            print(f"{name:>7} | {len(stats['psnr']):2d} | {statistics.median(stats['psnr']):16.2f} | "
                  f"{statistics.median(stats['seconds']):9.2f} | {statistics.mean(stats['label_acc']):9.2f}")
        if results.get("rgap", {}).get("seconds") and results.get("dlg", {}).get("seconds"):
            ratio = statistics.median(results["dlg"]["seconds"]) / statistics.median(results["rgap"]["seconds"])
            print(f"DLG seconds / R-GAP seconds (medians) on {model_name} "
                  f"({' '.join(overrides.get('model', [])) or 'default weights'}): {ratio:.1f}x")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
