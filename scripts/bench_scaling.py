"""How R-GAP scales with the input size: CNN6 on the offline photos at several resolutions.

    python -m scripts.bench_scaling --sizes 32 64 128 --images 2 [--threads 2] [--dense-limit 4096]
                                    [--model cnn6w] [--solver structured|generic]

Each size runs in a fresh child process (so its peak resident memory, VmHWM, is its own): CNN6 (or --model) built for
3 x size x size, ``load_sample(size=...)`` images, float64 gradients with the reversed label, R-GAP with the
given solve options. Prints per size the median seconds per image (attack only), the child's peak RSS, the
median PSNR, and per layer the constraint counts (|x| unknowns vs |W| + |z| constraints) and how the layer
was solved (dense method, or CG preconditioner, iterations, final relative residual, Lanczos condition
estimate and whether CG reached ``cg_tol``, as the attack's ``rgap_layers`` reports them). Finally a
least-squares fit of ``time ~ pixels^a`` and ``peak memory ~ pixels^b``. Targets of issue 13 on 2 CPU cores:
CNN6-W at 128 px <= 8 s per image at >= 140 dB; at 224 px <= 60 s, <= 8 GB, >= 100 dB, every CG layer converged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace

import numpy as np
import torch

#: Load average above which the timings are reported as taken "under load".
BUSY_LOAD = 1.5


def _vm_hwm_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_size(args: argparse.Namespace) -> dict:
    """One size in this process: attack ``args.images`` images and return timings, PSNRs and layer reports."""
    import rgap.algorithm.inverters as inverters
    from rgap.algorithm.network import parse_stages
    from rgap.algorithm.recursive import RGAP
    from rgap.client.gradient import compute_shared_gradient
    from rgap.evaluation.metrics import image_metrics
    from rgap.harness.trial import timed_attack
    from rgap.zoo import models
    from rgap.zoo.data import load_sample

    torch.set_num_threads(args.threads)
    size = args.child
    dataset = load_sample(size=size)
    model = getattr(models, args.model)(dataset.shape, seed=args.seed)
    stages = parse_stages(model, dataset.shape)
    counts = {}
    for stage in stages:
        c = inverters.make_inverter(stage.layer, stage.input_shape, stage.output_shape).counts()
        counts[stage.name] = {"x": c.x, "w": c.w, "z": c.z}
    attack = RGAP(dense_limit=args.dense_limit, cg_tol=args.cg_tol, cg_maxiter=args.cg_maxiter, solver=args.solver)
    attack.options = replace(attack.options, preconditioner=args.preconditioner)
    baseline = _vm_hwm_mb()
    images_out = []
    for index in range(args.images):
        images, labels = dataset.get([index])
        shared = compute_shared_gradient(model, images, labels, precision="float64", label_mode="reversed")
        result, elapsed = timed_attack(attack, shared)
        psnr = image_metrics(result.reconstruction, images).values["psnr"]
        images_out.append({"index": index, "seconds": elapsed, "psnr": psnr, "layers": result.info["rgap_layers"],
                           "roots": result.info["rgap_roots"]})
        print(f"  size {size} image {index}: {elapsed:7.2f} s  PSNR {psnr:7.2f} dB", file=sys.stderr, flush=True)
    return {"size": size, "pixels": size * size, "threads": torch.get_num_threads(), "baseline_mb": baseline,
            "peak_mb": _vm_hwm_mb(), "counts": counts, "images": images_out, "load": os.getloadavg()[0]}


def _child_command(args: argparse.Namespace, size: int) -> list[str]:
    return [sys.executable, "-m", "scripts.bench_scaling", "--child", str(size), "--images", str(args.images),
            "--threads", str(args.threads), "--dense-limit", str(args.dense_limit), "--cg-tol", repr(args.cg_tol),
            "--cg-maxiter", str(args.cg_maxiter), "--preconditioner", args.preconditioner, "--seed", str(args.seed),
            "--model", args.model, "--solver", args.solver]


def fit_exponent(pixels: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels); NaN with fewer than two sizes."""
    if len(pixels) < 2:
        return float("nan")
    slope, _ = np.polyfit(np.log(pixels), np.log(values), 1)
    return float(slope)


def _layer_lines(res: dict) -> list[str]:
    """Per layer of the first image: counts, method and the CG fields of the attack's ``rgap_layers``."""
    first = res["images"][0]
    lines = []
    for text in first["layers"].split():
        name, rank_n, method, *fields = text.split(":")
        c = res["counts"].get(name, {})
        constraints = c.get("w", 0) + c.get("z", 0)
        flag = "  count-deficient" if c and constraints < c["x"] else ""
        line = f"    {name:6s} |x|={c.get('x', '?'):>6} |W|+|z|={constraints:>6}{flag:17s} {method:9s} {rank_n}"
        if fields:
            line += "  " + " ".join(fields)
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--model", default="cnn6", choices=["cnn6", "cnn6d", "cnn6w"], help="CNN6-style network")
    parser.add_argument("--images", type=int, default=2, help="images per size (the first ones of the set)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2 = the CI box)")
    parser.add_argument("--dense-limit", type=int, default=4096, help="layers with more unknowns use CG")
    parser.add_argument("--cg-tol", type=float, default=1e-13)
    parser.add_argument("--cg-maxiter", type=int, default=20000)
    parser.add_argument("--preconditioner", default="none", choices=["none", "jacobi"],
                        help="generic solver's CG preconditioner")
    parser.add_argument("--solver", default="structured", choices=["structured", "generic"], help="attack.solver")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_size(args)))
        return 0

    load_start = os.getloadavg()[0]
    print(f"R-GAP scaling on {args.model} / sample photos, {args.images} images per size, {args.threads} threads, "
          f"solver={args.solver}, dense_limit={args.dense_limit}, cg_tol={args.cg_tol:g}, "
          f"cg_maxiter={args.cg_maxiter}, "
          f"preconditioner={args.preconditioner}, torch {torch.__version__}; load average {load_start:.2f}", flush=True)
    results = []
    for size in args.sizes:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        proc = subprocess.run(_child_command(args, size), stdout=subprocess.PIPE, env=env, text=True, check=False)
        if proc.returncode != 0:
            print(f"size {size}: child failed with exit code {proc.returncode}", flush=True)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not results:
        return 1

    print(f"\n{'size':>5} | {'pixels':>6} | {'s/image (median)':>16} | {'peak MB':>8} | {'baseline MB':>11} | "
          f"{'PSNR median':>11} | {'PSNR min':>8} | {'load':>5}")
    for res in results:
        secs = [im["seconds"] for im in res["images"]]
        psnrs = [im["psnr"] for im in res["images"]]
        print(f"{res['size']:>5} | {res['pixels']:>6} | {statistics.median(secs):16.2f} | {res['peak_mb']:8.0f} | "
              f"{res['baseline_mb']:11.0f} | {statistics.median(psnrs):11.2f} | {min(psnrs):8.2f} | "
              f"{res['load']:5.2f}")
    pixels = [res["pixels"] for res in results]
    a = fit_exponent(pixels, [statistics.median(im["seconds"] for im in res["images"]) for res in results])
    b = fit_exponent(pixels, [res["peak_mb"] for res in results])
    b_attack = fit_exponent(pixels, [max(res["peak_mb"] - res["baseline_mb"], 1.0) for res in results])
    print(f"\nfit: time ~ pixels^{a:.2f}, peak memory ~ pixels^{b:.2f} "
          f"(peak above the pre-attack baseline ~ pixels^{b_attack:.2f})")
    print("\nper layer (first image):")
    for res in results:
        print(f"  size {res['size']}: {res['images'][0]['layers']}")
        for line in _layer_lines(res):
            print(line)
    load_end = os.getloadavg()[0]
    if max([load_start, load_end] + [res["load"] for res in results]) > BUSY_LOAD:
        print(f"\nNOTE: timings taken under load (load average up to "
              f"{max([load_start, load_end] + [res['load'] for res in results]):.2f} > {BUSY_LOAD}).")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
