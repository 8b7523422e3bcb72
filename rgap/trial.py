"""One trial, one path, whatever the attack:

config -> dataset + model -> shared gradient -> attack -> metrics -> row (+ images).

``run_trial(cfg, out_dir)`` is what ``python -m runners.attack`` calls; tests and notebooks call it too.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import astuple, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgap.attack import Attack, AttackResult, SharedGradient, TracePoint, TraceRecorder
from rgap.checkpoints import WeightsInfo, add_rank_note, build_model, check_weights_config
from rgap.config import instantiate_group, short_error
from rgap.data import ImageSet, build_dataset, select_indices
from rgap.defenses import Defense, NoDefense, build_defense, defense_generator
from rgap.errors import UnsupportedError, UserInputError
from rgap.images import rescale_minmax, save_image_grid
from rgap.losses import get_loss, reversed_labels
from rgap.matching import label_accuracy, match_to_originals
from rgap.metrics import LpipsScorer, image_metrics
from rgap.schema import TRACE_COLUMNS, write_csv, write_row
from rgap.trial_config import LABEL_MODES, LOSSES, PRECISIONS, TrialOptions, threads_for

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Trial:
    """Everything a trial fixes before the attack runs."""

    dataset: ImageSet
    indices: list[int]
    images: torch.Tensor  # [B, C, H, W], float32 in [0, 1]
    labels: torch.Tensor  # true labels of the images
    shared: SharedGradient  # what the attacker receives (labels = the ones the gradient used)
    weights: WeightsInfo = field(default_factory=WeightsInfo)  # untrained or which checkpoint (row columns)
    defense: Defense = field(default_factory=NoDefense)  # what was applied to ``shared`` (row columns)


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda[:N]``; a CUDA request on a machine without CUDA is a ``UserInputError``."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserInputError(f"device={name!r} is not a valid device; valid choices: cpu, cuda, cuda:N.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device={name!r} was requested but CUDA is not available here; use device=cpu.")
    if device.type not in ("cpu", "cuda"):
        raise UserInputError(f"device={name!r} is not supported; valid choices: cpu, cuda, cuda:N.")
    return device


def _choice(value: str, valid: Mapping[str, Any] | tuple[str, ...], key: str) -> str:
    if value not in valid:
        raise UserInputError(f"{key}={value!r} is not valid; valid choices: {', '.join(valid)}.")
    return value


def compute_shared_gradient(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "logistic",
    precision: str = "float64",
    label_mode: str = "true",
    device: torch.device | str = "cpu",
) -> SharedGradient:
    """The client's update: gradient of the mean loss over ``images`` in ``precision``.

    ``label_mode="reversed"`` trains on the label opposite to the model's prediction, as the R-GAP
    reference code does (it makes the last-layer equation's root unique); with several logits, on the least
    likely class. The returned gradient keeps
    the client's dtype; the attacker's model copy has the same weights.
    """
    dtype = DTYPES[_choice(precision, PRECISIONS, "precision")]
    _choice(label_mode, LABEL_MODES, "label")
    client = copy.deepcopy(model).to(device=device, dtype=dtype)
    x = images.to(device=device, dtype=dtype)
    logits = client(x)
    if label_mode == "reversed":
        labels = reversed_labels(logits)
    labels = labels.to(device)
    value = get_loss(loss)(logits, labels)
    grads = torch.autograd.grad(value, list(client.parameters()))
    return SharedGradient(
        model=client,
        gradients=[g.detach() for g in grads],
        labels=labels.detach(),
        loss=loss,
        input_shape=tuple(images.shape[1:]),
        batch_size=images.shape[0],
    )


def resolve_head(cfg: Mapping[str, Any], dataset_classes: int) -> tuple[str, int]:
    """(loss, logits of the output layer) for a trial config.

    ``loss=auto``: cross-entropy when ``model.num_classes`` asks for more than one logit, else logistic.
    The head has ``model.num_classes`` logits when set, else 1 (logistic) or the dataset's class count.
    """
    loss = _resolved_loss(cfg)
    requested = cfg["model"].get("num_classes")
    if loss == "logistic":
        if dataset_classes != 2:
            raise UserInputError(
                f"loss=logistic trains one logit on binary labels, but dataset.num_classes={dataset_classes}; "
                "set dataset.num_classes=2, or loss=cross_entropy for a multi-class head."
            )
        if requested is not None and int(requested) != 1:
            raise UserInputError(f"loss=logistic needs one logit, but model.num_classes={requested}; "
                                 "use loss=cross_entropy (or loss=auto) or model.num_classes=null.")
        return loss, 1
    outputs = dataset_classes if requested is None else int(requested)
    if outputs < max(2, dataset_classes):
        raise UserInputError(
            f"model.num_classes={requested} is too small for loss=cross_entropy on a dataset with "
            f"{dataset_classes} classes; set model.num_classes >= {max(2, dataset_classes)} or null."
        )
    return loss, outputs


def per_example_gradients(shared: SharedGradient, images: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each image's own gradient (same model, dtype, loss and labels as ``shared``), for DP-SGD clipping."""
    params = list(shared.model.parameters())
    x = images.to(device=params[0].device, dtype=params[0].dtype)
    loss = get_loss(shared.loss)
    out = []
    for i in range(x.shape[0]):
        value = loss(shared.model(x[i : i + 1]), shared.labels[i : i + 1])
        out.append([g.detach() for g in torch.autograd.grad(value, params)])
    return out


def check_trial_config(cfg: Mapping[str, Any]) -> TrialOptions:
    """Every check that needs no data and no model: the top-level options, the device, the loss, the attack and
    defense (built, which validates their hyper-parameters) and the weight keys. Raises ``UserInputError``."""
    options = TrialOptions.from_config(cfg)
    resolve_device(options.device)
    _resolved_loss(cfg)
    check_weights_config(cfg["model"])
    instantiate_group(cfg["attack"], "attack", Attack)
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


def setup_trial(cfg: Mapping[str, Any], options: TrialOptions | None = None) -> Trial:
    """Dataset, images, seeded model and shared gradient for one trial config."""
    options = options or TrialOptions.from_config(cfg)
    device = resolve_device(options.device)
    dataset = cached_dataset(cfg["dataset"])
    torch.set_num_threads(threads_for(options.threads, dataset.shape))
    loss, outputs = resolve_head(cfg, dataset.num_classes)
    indices = select_indices(len(dataset), options.index, options.batch_size, options.seed)
    images, labels = dataset.get(indices)
    model, weights = build_model(cfg["model"], dataset.shape, options.seed, num_outputs=outputs,
                                 results_dir=options.results_dir, dataset_name=options.dataset)
    weights = add_rank_note(weights, cfg["model"], model, dataset.shape, options.seed, outputs,
                            attack=options.attack)
    shared = compute_shared_gradient(
        model, images, labels, loss=loss, precision=options.precision, label_mode=options.label_mode,
        device=device,
    )
    defense = build_defense(cfg.get("defense"))
    shared = defense.defend(shared, lambda: per_example_gradients(shared, images),
                            defense_generator(options.seed))
    return Trial(dataset=dataset, indices=indices, images=images, labels=labels, shared=shared, weights=weights,
                 defense=defense)


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


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit hash of the code (``+dirty`` with uncommitted changes), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _base_row(cfg: Mapping[str, Any], options: TrialOptions) -> dict[str, Any]:
    return {
        "attack": options.attack, "model": options.model, "dataset": options.dataset,
        "batch_size": options.batch_size, "index": options.index, "seed": options.seed,
        "label_mode": options.label_mode, "precision": options.precision,
        "loss": _resolved_loss(cfg),
        "device": options.device,
        "torch_version": torch.__version__, "git_commit": git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _resolved_loss(cfg: Mapping[str, Any]) -> str:
    """The loss a trial trains with (``auto`` resolved from ``model.num_classes``)."""
    if _choice(str(cfg["loss"]), LOSSES, "loss") != "auto":
        return str(cfg["loss"])
    requested = cfg["model"].get("num_classes")
    return "cross_entropy" if requested is not None and int(requested) > 1 else "logistic"


def run_trial(cfg: Mapping[str, Any], out_dir: str | Path | None = None,
              lpips: LpipsScorer | None = None, config_hash: str | None = None) -> dict[str, Any]:
    """Run one trial and return its row; with ``out_dir``, also write ``row.csv`` and the PNGs there.

    ``UserInputError`` propagates (bad config: nothing is written). What the attack cannot do becomes
    ``status=unsupported``, an unexpected attack error ``status=failed``; both keep the reason.
    """
    options = TrialOptions.from_config(cfg)
    row = _base_row(cfg, options)
    row["config_hash"] = config_hash
    trial = setup_trial(cfg, options)
    row.update(trial.weights.columns(), defense=trial.defense.name, defense_params=trial.defense.describe())
    row["indices"] = " ".join(str(i) for i in trial.indices)
    row["source"] = "; ".join(trial.dataset.sources(trial.indices))
    row["labels"] = " ".join(str(int(v)) for v in trial.shared.labels.cpu())  # what the client trained on
    attack = instantiate_group(cfg["attack"], "attack", Attack)
    trace = TraceRecorder(every=options.trace_every, score=_trace_scorer(trial.images))
    try:
        result, seconds = timed_attack(attack, trial.shared, trace)
    except UnsupportedError as exc:
        row.update(status="unsupported", reason=str(exc))
    except Exception as exc:  # a crashing attack is recorded, not fatal to a sweep
        log.exception("Attack %s failed", row["attack"])
        row.update(status="failed", reason=short_error(exc, 500))
    else:
        row.update(status="ok", reason="", time_s=seconds, iterations=result.iterations,
                   final_loss=result.final_loss, attack_info=json.dumps(result.info, sort_keys=True))
        reconstruction = _matched(result, trial.images)
        row.update(_score(options, trial, result, reconstruction, lpips))
        row.update(_labels(result, trial.shared.labels.cpu()))
        _finish_trace(trace, row)
        if out_dir is not None:
            write_csv([astuple(p) for p in trace.points], TRACE_COLUMNS, Path(out_dir) / "trace.csv")
            if options.save_images:
                _save_images(Path(out_dir), trial.images, reconstruction)
    if out_dir is not None:
        write_row(row, Path(out_dir) / "row.csv")
    return row


def _trace_scorer(images: torch.Tensor):
    """(mse, psnr) of an intermediate reconstruction, matched to the images as the final row is."""

    def score(reconstruction: torch.Tensor) -> tuple[float | None, float | None]:
        if reconstruction.shape != images.shape:
            return None, None
        order = match_to_originals(reconstruction, images)
        values = image_metrics(reconstruction.cpu(), images[order]).values
        return values["mse"], values["psnr"]

    return score


def _matched(result: AttackResult, images: torch.Tensor) -> torch.Tensor:
    """The reconstruction reordered so that image i pairs with ``images[i]`` (Hungarian on MSE)."""
    reconstruction = result.reconstruction.detach().cpu()
    if result.combined or reconstruction.shape[0] == 1:
        return reconstruction
    order = match_to_originals(reconstruction, images)
    result.info["matching"] = order
    return reconstruction[torch.argsort(torch.tensor(order))]  # position j holds the match of images[j]


def _labels(result: AttackResult, true: torch.Tensor) -> dict[str, Any]:
    if result.labels is None:
        return {"labels_given": False, "label_acc": None}
    labels = result.labels.detach().cpu().reshape(-1)
    return {"labels_given": result.labels_given, "attack_labels": " ".join(str(int(v)) for v in labels),
            "label_acc": label_accuracy(labels, true)}


def _finish_trace(trace: TraceRecorder, row: dict[str, Any]) -> None:
    """Make the last trace point the row itself (closed-form attacks get their one point here)."""
    final = TracePoint(row["iterations"] or 0, row["time_s"], row["final_loss"], row["mse"], row["psnr"])
    if trace.points and trace.points[-1].iteration == final.iteration:
        trace.points[-1] = final
    else:
        trace.points.append(final)


def _score(options: TrialOptions, trial: Trial, result: AttackResult, reconstruction: torch.Tensor,
           lpips: LpipsScorer | None) -> dict[str, Any]:
    if not options.lpips:
        lpips = None
    elif lpips is None:
        lpips = shared_lpips_scorer(options.lpips_net, options.require_lpips)
    target = trial.images.mean(0, keepdim=True) if result.combined else trial.images
    scores = image_metrics(reconstruction, target, lpips)
    notes = "; ".join(f"{name}: {reason}" for name, reason in sorted(scores.reasons.items()))
    matching = result.info.get("matching")
    return {**scores.values, "metric_notes": notes, "matching": " ".join(map(str, matching)) if matching else "",
            "scored_against": "batch_mean" if result.combined else "images"}


@functools.lru_cache(maxsize=4)
def shared_lpips_scorer(net: str, require: bool) -> LpipsScorer:
    """One LPIPS network per process and setting (a sweep's jobs reuse it instead of reloading it)."""
    return LpipsScorer(net=net, require=require)


def _save_images(out_dir: Path, images: torch.Tensor, reconstruction: torch.Tensor) -> None:
    reconstruction = reconstruction.float()
    save_image_grid(images, out_dir / "origin.png")
    save_image_grid(reconstruction, out_dir / "reconstructed.png")
    save_image_grid(rescale_minmax(reconstruction), out_dir / "rescaled.png")


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
