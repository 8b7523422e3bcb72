"""Train an attacked model on its own task, so that attacks can be run on trained weights.

The head and loss are those a trial builds (:func:`rgap.zoo.models.task_head`): one logit with the logistic loss
on binary labels, or softmax cross-entropy over ``model.num_classes`` logits. Training is float32, on a
deterministic seeded split (the last ``val_fraction`` of a seeded permutation is the validation set) and a
seeded shuffle per epoch. ``python -m runners.train`` calls :func:`train_from_config`; tests call the parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgap.attack.losses import get_loss, hard_labels
from rgap.core.atomic import write_csv
from rgap.core.errors import UserInputError
from rgap.core.validation import as_device, as_float, as_int, as_optional_int, as_path
from rgap.zoo.checkpoints import WeightsChoice, build_model, default_checkpoint_path, save_checkpoint
from rgap.zoo.data import ImageSet, build_dataset
from rgap.zoo.models import task_head

Progress = Callable[[str], None]

#: ``optimizer`` -> factory(params, lr, weight_decay, momentum).
OPTIMIZERS: dict[str, Callable[[Iterable[nn.Parameter], float, float, float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, wd, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd),
    "adam": lambda params, lr, wd, momentum: torch.optim.Adam(params, lr=lr, weight_decay=wd),
}


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one training run (the top-level keys of ``conf/train.yaml``)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f"optimizer={self.optimizer!r} is not valid; valid choices: "
                                 f"{', '.join(OPTIMIZERS)}.")
        for key, minimum in (("epochs", 1), ("batch_size", 1)):
            if int(getattr(self, key)) < minimum:
                raise UserInputError(f"{key}={getattr(self, key)!r} is not valid; it must be an integer >= {minimum}.")
        if not float(self.lr) > 0:
            raise UserInputError(f"lr={self.lr!r} is not valid; the learning rate must be positive.")
        if float(self.weight_decay) < 0:
            raise UserInputError(f"weight_decay={self.weight_decay!r} is not valid; it must be >= 0.")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise UserInputError(f"val_fraction={self.val_fraction!r} is not valid; it must lie in [0, 1) "
                                 "(0 = no validation set).")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrainSettings:
        """The settings from a ``conf/train.yaml`` mapping (missing keys keep their defaults), type-checked:
        ``epochs=2.5`` or ``lr=nan`` is a ``UserInputError``, not a silent truncation."""
        casts: dict[str, Any] = {
            "epochs": lambda v: as_int(v, "epochs", minimum=1),
            "batch_size": lambda v: as_int(v, "batch_size", minimum=1),
            "lr": lambda v: as_float(v, "lr", positive=True),
            "optimizer": str,
            "momentum": lambda v: as_float(v, "momentum", minimum=0.0),
            "weight_decay": lambda v: as_float(v, "weight_decay", minimum=0.0),
            "val_fraction": lambda v: as_float(v, "val_fraction", minimum=0.0),
            "seed": lambda v: as_int(v, "seed", minimum=0),
            "device": str,
        }
        return cls(**{k: cast(cfg[k]) for k, cast in casts.items() if cfg.get(k) is not None})


@dataclass
class EpochStats:
    """One line of the training history."""

    epoch: int
    train_loss: float  # mean loss over the epoch's mini-batches (weighted by batch size)
    val_loss: float | None  # None without a validation set
    val_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    """A trained model and how it got there."""

    model: nn.Module
    loss: str
    num_outputs: int
    train_indices: list[int]
    val_indices: list[int]
    history: list[EpochStats] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy after the last epoch (None without a validation set)."""
        return self.history[-1].val_accuracy if self.history else None


def split_indices(n_items: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: a seeded permutation of ``range(n_items)``, the last ``val_fraction``
    (rounded, at least one image when positive) being validation."""
    n_val = int(round(n_items * float(val_fraction)))
    if val_fraction > 0:
        n_val = max(1, n_val)
    if n_items - n_val < 1:
        raise UserInputError(f"val_fraction={val_fraction} leaves no training images out of {n_items}; "
                             "use a smaller val_fraction.")
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(int(seed))).tolist()
    return order[: n_items - n_val], order[n_items - n_val:]


def _batches(indices: Sequence[int], batch_size: int) -> Iterable[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])


def evaluate(model: nn.Module, dataset: ImageSet, indices: Sequence[int], loss: str,
             batch_size: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``dataset[indices]``, without gradients."""
    loss_fn = get_loss(loss)
    param = next(model.parameters())
    total = correct = 0.0
    with torch.no_grad():
        for batch in _batches(indices, batch_size):
            images, labels = dataset.get(batch)
            logits = model(images.to(device=param.device, dtype=param.dtype))
            labels = labels.to(param.device)
            total += float(loss_fn(logits, labels)) * len(batch)
            correct += float((hard_labels(loss, logits) == labels).sum())
    return total / len(indices), correct / len(indices)


def format_epoch(stats: EpochStats, epochs: int) -> str:
    """``epoch 3/10 | train loss 0.6012 | val loss 0.6400 | val acc 0.667 | 0.4 s``."""
    val = ("no validation set" if stats.val_accuracy is None
           else f"val loss {stats.val_loss:.4f} | val acc {stats.val_accuracy:.3f}")
    return f"epoch {stats.epoch}/{epochs} | train loss {stats.train_loss:.4f} | {val} | {stats.seconds:.1f} s"


def train_model(model: nn.Module, dataset: ImageSet, loss: str, settings: TrainSettings,
                progress: Progress | None = print) -> TrainResult:
    """Train ``model`` (in place, float32, on ``settings.device``) on ``dataset`` with ``loss``.

    Returns the model (in eval mode) and the per-epoch history; ``progress`` receives one line per epoch.
    """
    device = as_device(settings.device)
    loss_fn = get_loss(loss)
    model = model.to(device=device, dtype=torch.float32)
    train_idx, val_idx = split_indices(len(dataset), settings.val_fraction, settings.seed)
    optimizer = OPTIMIZERS[settings.optimizer](model.parameters(), float(settings.lr), float(settings.weight_decay),
                                               float(settings.momentum))
    generator = torch.Generator().manual_seed(int(settings.seed))
    with torch.no_grad():
        outputs = int(model(torch.zeros(1, *dataset.shape, device=device)).reshape(1, -1).shape[1])
    result = TrainResult(model=model, loss=loss, num_outputs=outputs, train_indices=train_idx, val_indices=val_idx)
    for epoch in range(1, int(settings.epochs) + 1):
        start = time.perf_counter()
        model.train()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
        total = 0.0
        for batch in _batches(order, int(settings.batch_size)):
            images, labels = dataset.get(batch)
            optimizer.zero_grad(set_to_none=True)
            value = loss_fn(model(images.to(device)), labels.to(device))
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(batch)
        model.eval()
        val_loss, val_acc = evaluate(model, dataset, val_idx, loss) if val_idx else (None, None)
        stats = EpochStats(epoch, total / len(order), val_loss, val_acc, time.perf_counter() - start)
        result.history.append(stats)
        if progress is not None:
            progress(format_epoch(stats, int(settings.epochs)))
    return result


def write_history(result: TrainResult, path: str | Path) -> Path:
    """The per-epoch history as CSV (columns as the ``EpochStats`` fields)."""
    columns = tuple(f.name for f in fields(EpochStats))
    return write_csv([astuple(s) for s in result.history], columns, path)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config node as plain Python values (checkpoints are loaded with ``weights_only=True``)."""
    from omegaconf import DictConfig, OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    assert isinstance(container, dict)
    return container


def train_from_config(cfg: Mapping[str, Any], progress: Progress | None = print) -> tuple[TrainResult, Path]:
    """Train the model of a ``conf/train.yaml`` config and save its checkpoint; returns (result, path).

    The checkpoint goes to ``cfg.output`` or, when null, ``<paths.results>/checkpoints/<model>_<dataset>_
    e<epochs>_s<seed>.pt``. A ``weights.checkpoint`` (or ``weights.state=trained``) is the starting point.
    """
    settings = TrainSettings.from_config(cfg)
    as_device(settings.device)
    threads = as_optional_int(cfg.get("threads"), "threads", minimum=1)
    if threads is not None:
        torch.set_num_threads(threads)
    dataset = build_dataset(cfg["dataset"])
    dataset_name = str(cfg["dataset"]["name"])
    loss, outputs = task_head(str(cfg["loss"]), cfg["model"].get("num_classes"), dataset.num_classes)
    results_dir = as_path((cfg.get("paths") or {}).get("results", "results"), "paths.results")
    model, start = build_model(cfg["model"], dataset.shape, settings.seed, num_outputs=outputs,
                               weights=WeightsChoice.from_config(cfg.get("weights")),
                               results_dir=results_dir, dataset_name=dataset_name)
    result = train_model(model, dataset, loss, settings, progress)
    path = as_path(cfg["output"], "output") if cfg.get("output") else default_checkpoint_path(
        results_dir, str(cfg["model"]["name"]), dataset_name, settings.epochs, settings.seed)
    extra = {
        "history": [asdict(s) for s in result.history],
        "settings": asdict(settings),
        "initial_weights": start.weights,
        "train_size": len(result.train_indices),
        "val_size": len(result.val_indices),
        "dataset_config": {k: v for k, v in _plain(cfg["dataset"]).items() if not str(k).startswith("_")},
    }
    save_checkpoint(path, result.model, cfg["model"], dataset_name, dataset.shape, outputs, loss,
                    result.val_accuracy, settings.epochs, settings.seed, extra=extra)
    return result, path
