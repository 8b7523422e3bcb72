"""Time R-GAP on CNN6 (or another model) over images of the offline sample set.

    python -m scripts.bench_rgap [--model cnn6] [--images 8] [--precision float64 float32] [--threads 2]
                                 [--bias] [--num-classes 10] [--labels given|infer] [--solver structured|generic]
                                 [--init uniform --init-std 0.5] [--size 32]

Prints, per gradient precision, seconds per image (attack only), PSNR (median / min / max), and the
process's peak resident memory. Targets of issue 13 on 2 CPU cores: CNN6 <= 0.35 s per image at >= 200 dB
(float64 gradients), LeNet on sample_gray <= 0.08 s, CNN6-d <= 1.5 s, peak memory <= 1.2 GB.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys

import torch

from rgap.algorithm.recursive import RGAP
from rgap.client.gradient import compute_shared_gradient
from rgap.evaluation.metrics import image_metrics
from rgap.harness.trial import timed_attack
from rgap.zoo import models
from rgap.zoo.data import load_sample, load_sample_gray

DATASETS = {"sample": load_sample, "sample_gray": load_sample_gray}
MODELS = {"cnn6": models.cnn6, "cnn6d": models.cnn6d, "cnn6w": models.cnn6w, "fcn3": models.fcn3,
          "lenet": models.lenet}


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(model_name: str, dataset_name: str, n_images: int, precision: str, label: str, seed: int,
          balance: bool = True, bias: bool = False, num_classes: int | None = None, labels: str = "given",
          solver: str = "structured", init: dict | None = None, size: int = 32) -> dict:
    """Attack ``n_images`` images one by one; return per-image seconds, PSNRs and label hits."""
    dataset = DATASETS[dataset_name](size=size) if dataset_name == "sample" else DATASETS[dataset_name]()
    model = MODELS[model_name](dataset.shape, seed=seed, bias=bias, num_classes=num_classes, **(init or {}))
    loss = "cross_entropy" if num_classes and num_classes > 1 else "logistic"
    attack = RGAP(balance=balance, labels=labels, solver=solver)
    seconds, psnrs, hits = [], [], []
    for index in range(n_images):
        images, true_labels = dataset.get([index])
        shared = compute_shared_gradient(model, images, true_labels, loss=loss, precision=precision,
                                         label_mode=label)
        result, elapsed = timed_attack(attack, shared)
        psnr = image_metrics(result.reconstruction, images).values["psnr"]
        hit = result.labels is not None and result.labels.tolist() == shared.labels.tolist()
        seconds.append(elapsed)
        psnrs.append(psnr)
        hits.append(hit)
        print(f"  {precision} image {index:2d}: {elapsed:6.2f} s  PSNR {psnr:7.2f} dB  "
              f"root {result.info['rgap_root_rule']}  label {'ok' if hit else 'WRONG'}", flush=True)
    return {"seconds": seconds, "psnr": psnrs, "label_acc": sum(hits) / len(hits)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn6", choices=sorted(MODELS))
    parser.add_argument("--dataset", default="sample", choices=sorted(DATASETS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--precision", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--label", default="reversed", choices=["true", "reversed"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                        help="weight gradient and weight constraints equally (R-GAP's default)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2 = the CI box)")
    parser.add_argument("--bias", action="store_true", help="every layer with a bias")
    parser.add_argument("--num-classes", type=int, default=None, help="logits of the head (softmax cross-entropy)")
    parser.add_argument("--labels", default="given", choices=["given", "infer"], help="R-GAP's attack.labels")
    parser.add_argument("--solver", default="structured", choices=["structured", "generic"],
                        help="R-GAP's attack.solver")
    parser.add_argument("--init", default=None, help="weight init scheme (e.g. uniform: DLG's LeNet weights)")
    parser.add_argument("--init-std", type=float, default=None, help="its scale (0.5 for DLG's U(-0.5, 0.5))")
    parser.add_argument("--size", type=int, default=32, help="image side for dataset=sample")
    args = parser.parse_args(argv)
    init = {key: value for key, value in (("init", args.init), ("init_std", args.init_std)) if value is not None}
    torch.set_num_threads(args.threads)
    print(f"R-GAP on {args.model} / {args.dataset}, {args.images} images, label={args.label}, "
          f"balance={args.balance}, bias={args.bias}, num_classes={args.num_classes}, labels={args.labels}, "
          f"solver={args.solver}, init={init or 'default'}, size={args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    results = {p: bench(args.model, args.dataset, args.images, p, args.label, args.seed, args.balance, args.bias,
                        args.num_classes, args.labels, args.solver, init, args.size)
               for p in args.precision}
    print(f"\n{'gradient':>9} | {'s/image (median)':>16} | {'s/image (max)':>13} | {'PSNR median':>11} | "
          f"{'PSNR min':>8} | {'PSNR max':>8} | label acc")
    for precision, res in results.items():
        print(f"{precision:>9} | {statistics.median(res['seconds']):16.2f} | {max(res['seconds']):13.2f} | "
              f"{statistics.median(res['psnr']):11.2f} | {min(res['psnr']):8.2f} | {max(res['psnr']):8.2f} | "
              f"{100 * res['label_acc']:.0f} %")
    print(f"peak resident memory of the process: {peak_rss_mb():.0f} MiB; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
