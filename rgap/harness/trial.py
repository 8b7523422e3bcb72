"""One trial, one path, whatever the attack, read top to bottom:

    options -> attack -> images and model (+ weights) -> client: shared gradient (+ defense) -> attack run
            -> evaluation (matching, metrics, labels, trace end point) -> row (+ trace, images)

``run_trial(cfg, out_dir)`` is what ``python -m runners.attack`` and every sweep job call; tests, scripts and
notebooks call it too. Each config value is read once, into :class:`~rgap.harness.options.TrialOptions`.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgap.attack import Attack, AttackResult, SharedGradient, TraceRecorder
from rgap.client.defenses import build_defense
from rgap.client.gradient import Client
from rgap.core.config import instantiate_group
from rgap.core.errors import UnsupportedError, short_error
from rgap.core.validation import as_device
from rgap.evaluation.images import rescale_minmax, save_image_grid
from rgap.evaluation.metrics import LpipsScorer
from rgap.evaluation.score import Evaluation, evaluate, finish_trace, trace_scorer
from rgap.harness.options import TrialOptions, threads_for
from rgap.harness.rank import with_rank_note
from rgap.harness.schema import TRACE_COLUMNS, write_csv, write_row
from rgap.zoo.checkpoints import WeightsInfo, build_model
from rgap.zoo.data import ImageSet, build_dataset, select_indices
from rgap.zoo.models import task_head

log = logging.getLogger(__name__)


@dataclass
class Victim:
    """What the trial attacks: the private images and the model (with its weights) the client trains."""

    dataset: ImageSet
    indices: list[int]
    images: torch.Tensor  # [B, C, H, W], float32 in [0, 1]
    labels: torch.Tensor  # true labels of the images
    model: nn.Module
    outputs: int  # logits of the model's head
    weights: WeightsInfo


@dataclass
class AttackRun:
    """The attack's outcome: a result and its wall time, or why there is none (``unsupported``/``failed``)."""

    status: str
    reason: str = ""
    result: AttackResult | None = None
    seconds: float | None = None


def run_trial(cfg: Mapping[str, Any], out_dir: str | Path | None = None,
              lpips: LpipsScorer | None = None, config_hash: str | None = None) -> dict[str, Any]:
    """Run one trial and return its row; with ``out_dir``, also write ``row.csv``, ``trace.csv`` and the PNGs.

    ``UserInputError`` propagates (bad config: nothing is written). What the attack cannot do becomes
    ``status=unsupported``, an unexpected attack error ``status=failed``; both keep the reason.
    """
    options = TrialOptions.from_config(cfg)
    attack = build_attack(cfg)
    trial = setup_trial(cfg, options, attack)
    trace = TraceRecorder(every=options.trace_every, score=trace_scorer(trial.images))
    run = run_attack(attack, trial.shared, trace)
    evaluation = None
    if run.result is not None:
        evaluation = evaluate(run.result, run.seconds or 0.0, trial.images, trial.shared.labels,
                              lpips_for(options, lpips))
    row = make_row(options, config_hash, trial, run, evaluation)
    if out_dir is not None:
        write_outputs(Path(out_dir), row, trace, evaluation, trial.images if options.save_images else None)
    return row


@dataclass
class Trial(Victim):
    """A victim after its client shared its gradient: everything fixed before the attack runs."""

    client: Client
    shared: SharedGradient  # what the attacker receives (labels = the ones the gradient used)


def setup_trial(cfg: Mapping[str, Any], options: TrialOptions | None = None, attack: Attack | None = None) -> Trial:
    """The trial up to the shared gradient: the victim (images, model, weights) and its client's update."""
    options = options or TrialOptions.from_config(cfg)
    victim = prepare_victim(cfg, options, attack)
    client = Client(loss=options.loss, precision=options.precision, label_mode=options.label_mode,
                    device=as_device(options.device), defense=build_defense(cfg.get("defense")), seed=options.seed,
                    mode=options.client_mode)
    shared = client.share(victim.model, victim.images, victim.labels)
    return Trial(**vars(victim), client=client, shared=shared)


def build_attack(cfg: Mapping[str, Any]) -> Attack:
    """The trial's attack, built (and its hyper-parameters checked) before any work is done."""
    return instantiate_group(cfg["attack"], "attack", Attack)


def prepare_victim(cfg: Mapping[str, Any], options: TrialOptions, attack: Attack | None = None) -> Victim:
    """Images, labels and the seeded model with its weights; the ``rank_note`` when the weights are a checkpoint,
    ``weights.rank_check`` is on and the attack is closed-form."""
    dataset = cached_dataset(cfg["dataset"])
    torch.set_num_threads(threads_for(options.threads, dataset.shape))
    loss, outputs = task_head(options.loss, options.num_classes, dataset.num_classes)
    indices = select_indices(len(dataset), options.index, options.batch_size, options.seed)
    images, labels = dataset.get(indices)
    model, weights = build_model(cfg["model"], dataset.shape, options.seed, num_outputs=outputs,
                                 weights=options.weights, results_dir=options.results_dir,
                                 dataset_name=options.dataset)
    if options.weights.rank_check and attack is not None and attack.facts.closed_form:
        weights = with_rank_note(weights, cfg["model"], model, dataset.shape, options.seed, outputs)
    return Victim(dataset, indices, images, labels, model, outputs, weights)


def run_attack(attack: Attack, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackRun:
    """The attack under a wall clock; what it cannot do, and a crash, become the run's status and reason."""
    try:
        result, seconds = timed_attack(attack, shared, trace)
    except UnsupportedError as exc:
        return AttackRun("unsupported", str(exc))
    except Exception as exc:  # a crashing attack is recorded, not fatal to a sweep
        log.exception("Attack %s failed", attack.name)
        return AttackRun("failed", short_error(exc, 500))
    return AttackRun("ok", "", result, seconds)


def timed_attack(attack: Attack, shared: SharedGradient,
                 trace: TraceRecorder | None = None) -> tuple[AttackResult, float]:
    """Run the attack alone under a wall clock (CUDA synchronised on both ends).

    Time the trace recorder spends scoring intermediate reconstructions is subtracted.
    """
    sync = shared.gradients[0].is_cuda
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = attack.reconstruct(shared, trace)
    if sync:
        torch.cuda.synchronize()
    paused = trace.paused_s if trace is not None else 0.0
    return result, time.perf_counter() - start - paused


def make_row(options: TrialOptions, config_hash: str | None, trial: Trial, run: AttackRun,
             evaluation: Evaluation | None) -> dict[str, Any]:
    """The trial's row (``rgap.harness.schema``)."""
    victim, client, shared = trial, trial.client, trial.shared
    row: dict[str, Any] = {
        "attack": options.attack, "model": options.model, "dataset": options.dataset,
        "batch_size": options.batch_size, "index": options.index, "seed": options.seed,
        "indices": " ".join(str(i) for i in victim.indices),
        "source": "; ".join(victim.dataset.sources(victim.indices)),
        "label_mode": options.label_mode, "client_mode": options.client_mode, "precision": options.precision,
        "loss": options.loss,
        "defense": client.defense.name, "defense_params": client.defense.describe(),
        **victim.weights.columns(),
        "device": options.device, "status": run.status, "reason": run.reason,
        "labels": " ".join(str(int(v)) for v in shared.labels.cpu()),  # what the client trained on
        "config_hash": config_hash, "torch_version": torch.__version__, "git_commit": git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if run.result is not None and evaluation is not None:
        row.update(time_s=run.seconds, iterations=run.result.iterations, final_loss=run.result.final_loss,
                   attack_info=json.dumps(run.result.info, sort_keys=True), **evaluation.columns())
    return row


def write_outputs(out_dir: Path, row: Mapping[str, Any], trace: TraceRecorder, evaluation: Evaluation | None,
                  images: torch.Tensor | None) -> None:
    """``trace.csv`` and (with ``images``) the PNGs of an ok trial, then ``row.csv`` last: a row means done."""
    if evaluation is not None:
        points = finish_trace(trace.points, evaluation.trace_end)
        write_csv([astuple(p) for p in points], TRACE_COLUMNS, out_dir / "trace.csv")
        if images is not None:
            reconstruction = evaluation.reconstruction.float()
            save_image_grid(images, out_dir / "origin.png")
            save_image_grid(reconstruction, out_dir / "reconstructed.png")
            save_image_grid(rescale_minmax(reconstruction), out_dir / "rescaled.png")
    write_row(row, out_dir / "row.csv")


def check_trial_config(cfg: Mapping[str, Any]) -> TrialOptions:
    """Every check that needs no data and no model: the top-level options, the device, the weights, the attack
    and the defense (built, which checks their hyper-parameters). Raises ``UserInputError``."""
    options = TrialOptions.from_config(cfg)
    as_device(options.device)
    build_attack(cfg)
    build_defense(cfg.get("defense"))
    return options


def cached_dataset(dataset_cfg: Mapping[str, Any]) -> ImageSet:
    """``build_dataset`` once per process and dataset config (a sweep's jobs share the images)."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) \
        else dict(dataset_cfg)
    key = json.dumps(plain, sort_keys=True, default=str)
    if key not in _DATASETS:
        _DATASETS.clear()  # keep one dataset in memory: a sweep runs its trials dataset by dataset
        _DATASETS[key] = build_dataset(dataset_cfg)
    return _DATASETS[key]


_DATASETS: dict[str, ImageSet] = {}


def lpips_for(options: TrialOptions, given: LpipsScorer | None) -> LpipsScorer | None:
    """The LPIPS scorer of a trial: none when ``metrics.lpips=false``, else ``given`` or the process's own."""
    if not options.lpips:
        return None
    return given if given is not None else shared_lpips_scorer(options.lpips_net, options.require_lpips)


@functools.lru_cache(maxsize=4)
def shared_lpips_scorer(net: str, require: bool) -> LpipsScorer:
    """One LPIPS network per process and setting (a sweep's jobs reuse it instead of reloading it)."""
    return LpipsScorer(net=net, require=require)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit hash of the code (``+dirty`` with uncommitted changes), or ``unknown``; asked once per
    process (the code a process runs does not change under it)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def format_summary(row: Mapping[str, Any]) -> str:
    """One line: what ran, its status and the headline numbers."""
    head = f"{row['attack']} | {row['model']} | {row['dataset']}[{row.get('indices', '')}] | {row['status']}"
    if row["status"] != "ok":
        return f"{head}: {row['reason']}"

    def fmt(key: str, spec: str) -> str:
        value = row.get(key)
        return "n/a" if value is None else format(value, spec)

    return (f"{head} | MSE {fmt('mse', '.3e')} | PSNR {fmt('psnr', '.2f')} dB | SSIM {fmt('ssim', '.4f')} | "
            f"LPIPS {fmt('lpips', '.4f')} | {row['time_s']:.2f} s ({row['precision']} gradient)")
