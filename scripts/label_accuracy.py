"""DLG vs iDLG label accuracy (the iDLG paper's Table 1, in spirit, on our offline data).

    python -m scripts.label_accuracy [--datasets sample_gray sample] [--images 50] [--set dlg.iterations=300]

A LeNet with Sigmoid activations, U(-0.5, 0.5) weights (as in the DLG/iDLG code) and one logit per
class, trained with softmax cross-entropy on one image at a time; a fresh seeded network per image as in
iDLG's experiments. DLG recovers the label by joint optimisation; iDLG reads it off the signs of the
last layer's weight gradient.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rgap.attack import Attack
from rgap.client.gradient import compute_shared_gradient
from rgap.core.config import instantiate_group
from rgap.evaluation.matching import label_accuracy
from rgap.zoo.data import build_dataset
from rgap.zoo.models import lenet
from scripts.bench_attacks import load_group, parse_overrides

#: iDLG paper, Table 1 (README of PatrickZH/Improved-Deep-Leakage-from-Gradients): label accuracy in %.
PAPER = {"MNIST": (89.9, 100.0), "CIFAR-100": (83.3, 100.0), "LFW": (79.1, 100.0)}


def accuracy(dataset_name: str, n_images: int, overrides: dict[str, list[str]]) -> dict[str, float]:
    dataset = build_dataset(load_group("dataset", dataset_name, []))
    attacks = {name: instantiate_group(load_group("attack", name, overrides.get(name, [])), "attack", Attack)
               for name in ("dlg", "idlg")}
    correct = {name: 0.0 for name in attacks}
    n = min(n_images, len(dataset))
    for index in range(n):
        images, labels = dataset.get([index])
        model = lenet(dataset.shape, seed=index, init="uniform", init_std=0.5, num_outputs=dataset.num_classes)
        shared = compute_shared_gradient(model, images, labels, loss="cross_entropy", precision="float32",
                                         label_mode="true")
        for name, attack in attacks.items():
            result = attack.reconstruct(shared)
            correct[name] += label_accuracy(result.labels.cpu(), shared.labels.cpu())
        print(f"  {dataset_name} image {index:3d}: " + "  ".join(f"{k} {v / (index + 1):.3f}" for k, v in
                                                                    correct.items()), flush=True)
    return {name: 100.0 * value / n for name, value in correct.items()} | {"n": n,
                                                                           "classes": dataset.num_classes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sample_gray"])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--set", nargs="*", default=[], metavar="ATTACK.KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    rows = {name: accuracy(name, args.images, overrides) for name in args.datasets}
    print("\n| data | images | classes | DLG label acc. | iDLG label acc. |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} (ours) | {row['n']} | {row['classes']} | {row['dlg']:.1f} % | {row['idlg']:.1f} % |")
    for name, (dlg, idlg) in PAPER.items():
        print(f"| {name} (iDLG paper) | | | {dlg:.1f} % | {idlg:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
