"""A trial's top-level options, read and checked once (``TrialOptions.from_config``).

Every option of ``conf/trial.yaml`` that is not a config group (attack, model, dataset, defense build
themselves) is validated here with the right type, so ``seed=1.5``, ``index=abc`` or ``save_images=flase`` are
one clear error before anything runs, and the rest of the trial reads typed values instead of re-parsing the
config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgap.client.gradient import CLIENT_MODES, LABEL_MODES, PRECISIONS
from rgap.core.validation import as_bool, as_choice, as_int, as_path
from rgap.zoo.checkpoints import WeightsChoice
from rgap.zoo.models import resolve_loss

LPIPS_NETS = ("alex", "vgg", "vgg16", "squeeze")
#: Images with at most this many pixels (H x W) run on one torch thread under ``threads=auto``.
AUTO_ONE_THREAD_PIXELS = 64 * 64


@dataclass(frozen=True)
class TrialOptions:
    """The typed top-level options of one trial."""

    attack: str
    model: str
    dataset: str
    index: int
    batch_size: int
    seed: int
    label_mode: str
    client_mode: str  # eval | train: the module mode the client computes its gradient in
    precision: str
    loss: str  # logistic | cross_entropy (``auto`` resolved from model.num_classes)
    num_classes: int | None  # model.num_classes: logits of the head (None: from the loss and the dataset)
    weights: WeightsChoice  # which weights the model has (untrained, a checkpoint, the newest trained one)
    device: str
    threads: int | str  # a thread count, or "auto" (see :func:`threads_for`)
    trace_every: int
    save_images: bool
    lpips: bool
    lpips_net: str
    require_lpips: bool
    results_dir: Path

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrialOptions:
        """Check every top-level option of ``cfg``; the first bad one is a ``UserInputError``."""
        metrics = cfg.get("metrics") or {}
        threads = cfg.get("threads", "auto")
        num_classes = cfg["model"].get("num_classes")
        num_classes = None if num_classes is None else as_int(num_classes, "model.num_classes", minimum=1)
        return cls(
            attack=str(cfg["attack"]["name"]),
            model=str(cfg["model"]["name"]),
            dataset=str(cfg["dataset"]["name"]),
            index=as_int(cfg["index"], "index", minimum=-1),
            batch_size=as_int(cfg["batch_size"], "batch_size", minimum=1),
            seed=as_int(cfg["seed"], "seed", minimum=0),
            label_mode=as_choice(label_mode(cfg["label"]), "label", LABEL_MODES),
            client_mode=as_choice(cfg.get("client_mode", "eval"), "client_mode", CLIENT_MODES),
            precision=as_choice(cfg["precision"], "precision", PRECISIONS),
            loss=resolve_loss(cfg["loss"], num_classes),
            num_classes=num_classes,
            weights=WeightsChoice.from_config(cfg.get("weights")),
            device=str(cfg["device"]),
            threads="auto" if threads in (None, "auto") else as_int(threads, "threads", minimum=1),
            trace_every=as_int(cfg.get("trace_every", 10), "trace_every", minimum=1),
            save_images=as_bool(cfg.get("save_images", True), "save_images"),
            lpips=as_bool(metrics.get("lpips", True), "metrics.lpips"),
            lpips_net=as_choice(metrics.get("lpips_net", "alex"), "metrics.lpips_net", LPIPS_NETS),
            require_lpips=as_bool(metrics.get("require_lpips", False), "metrics.require_lpips"),
            results_dir=as_path((cfg.get("paths") or {}).get("results", "results"), "paths.results"),
        )


def label_mode(value: Any) -> str:
    """The ``label`` option as a string: YAML and Hydra read ``label=true`` as the boolean True."""
    return "true" if value is True else str(value)


def threads_for(threads: int | str, input_shape: tuple[int, ...]) -> int:
    """Torch CPU threads for a trial: the given count, or under ``auto`` one thread for images of at most
    64x64 pixels (measured: small networks gain little from a second thread and collapse under load when
    torch's threads busy-wait for a core) and every core the process may use for larger ones."""
    if threads != "auto":
        return int(threads)
    if input_shape[-1] * input_shape[-2] <= AUTO_ONE_THREAD_PIXELS:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
