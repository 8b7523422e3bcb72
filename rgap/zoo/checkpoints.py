"""Checkpoints of trained models (written by ``python -m runners.train``) and the weights a trial attacks.

A checkpoint is one ``.pt`` file holding a plain dict (loadable with ``torch.load(..., weights_only=True)``):
the ``state_dict``, the resolved model config (``name``, ``_target_``, ``bias``, ``num_classes``, ...), the
dataset it was trained on, the input shape, the number of outputs, the loss, the validation accuracy, the
epochs, the seed and the torch version (plus the training history and optimiser settings).

Which weights a trial attacks is chosen apart from the architecture, by ``conf/weights/default.yaml``
(:class:`WeightsChoice`):

``weights.checkpoint``  path to a checkpoint; null = untrained weights from the seeded init. Wins over ``state``.
``weights.state``       ``untrained`` | ``trained`` (the newest matching checkpoint in ``<paths.results>/checkpoints``).
``weights.rank_check``  opt-in (default false): with checkpoint weights and a closed-form attack, compare per-layer
                        numerical ranks of the trained model with the untrained one (the ``rank_note`` column, see
                        ``rgap.harness.rank``).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgap.core.atomic import atomic_save
from rgap.core.config import instantiate_group, locate_callable
from rgap.core.errors import CheckpointMismatchError, UserInputError, short_error
from rgap.core.validation import as_bool, as_path

#: Keys that choose the weights, not the architecture (version-1 model configs held them; never passed on).
WEIGHT_KEYS = ("checkpoint", "state", "rank_check")
#: Model config keys that only shape the initial weights: a checkpoint overrides them, so they may differ.
INIT_KEYS = ("name", "init", "init_std", "num_classes")
FORMAT = "rgap-bench-checkpoint"
FORMAT_VERSION = 1
#: ``format`` given to a user's plain ``state_dict`` file when it is read (only its tensors are compared).
PLAIN_FORMAT = "state_dict"
CHECKPOINT_DIR = "checkpoints"
#: ``_target_`` values under these prefixes are this project's builders (their module path may move).
PROJECT_PACKAGES = ("rgap.", "baselines.")


@dataclass(frozen=True)
class WeightsChoice:
    """The ``weights`` options of a trial (``conf/weights/default.yaml``), checked."""

    checkpoint: Path | None = None
    state: str = "untrained"
    rank_check: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> WeightsChoice:
        """Check types and choices; a ``checkpoint`` that is a directory or missing is a ``UserInputError``."""
        cfg = cfg or {}
        state = str(cfg.get("state") or "untrained")
        if state not in STATES:
            raise UserInputError(
                f"weights.state={state!r} is not valid; valid choices: {', '.join(STATES)} (untrained = the seeded "
                "initial weights, trained = the newest matching checkpoint in <paths.results>/checkpoints), or set "
                "weights.checkpoint=<path> to a checkpoint file."
            )
        checkpoint = cfg.get("checkpoint")
        path = None if checkpoint is None else as_path(checkpoint, "weights.checkpoint")
        if path is not None and not path.is_file():
            read_checkpoint(path)  # raises the message for a directory or a missing file
        return cls(path, state, as_bool(cfg.get("rank_check", False), "weights.rank_check"))


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model has, as recorded in a row (``weights``, ``weights_hash``, ``rank_note``)."""

    weights: str = ""  # "untrained:<init>" or "checkpoint:<path>"
    weights_hash: str = ""  # first 12 hex digits of the checkpoint file's SHA-256 ("" when untrained)
    rank_note: str = ""  # trained vs untrained per-layer ranks (checkpoint weights, closed-form attacks)
    checkpoint: str | None = None  # the checkpoint path, None when untrained

    def columns(self) -> dict[str, str]:
        """The row columns this describes."""
        return {"weights": self.weights, "weights_hash": self.weights_hash, "rank_note": self.rank_note}


# --------------------------------------------------------------------------------------------------------
# Model config handling
# --------------------------------------------------------------------------------------------------------
def _container(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``model_cfg`` as a plain dict with interpolations resolved (``???`` stays, instantiate_group reports it)."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(model_cfg, DictConfig):
        return dict(model_cfg)
    try:
        container = OmegaConf.to_container(model_cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise UserInputError(f"Invalid model config: {short_error(exc, 400)}") from exc
    assert isinstance(container, dict)
    return container


def builder_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model config without :data:`WEIGHT_KEYS`: what ``instantiate_group`` passes to the builder."""
    return {k: v for k, v in _container(model_cfg).items() if k not in WEIGHT_KEYS}


def _state_none(model_cfg: Mapping[str, Any], dataset_name: str | None, results_dir: str | Path,
                input_shape: Sequence[int] | None, num_outputs: int | None) -> Path | None:
    return None


def _shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(str(int(v)) for v in shape) if shape is not None else "?"


def _train_command(model_name: str, dataset_name: str | None, num_outputs: int | None) -> str:
    extra = f" model.num_classes={num_outputs}" if num_outputs and num_outputs > 1 else ""
    return f"`python -m runners.train model={model_name} dataset={dataset_name or '<dataset>'}{extra}`"


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------
def checkpoint_dir(results_dir: str | Path) -> Path:
    """``<results_dir>/checkpoints``, where ``runners.train`` writes and ``model.state=trained`` looks."""
    return Path(results_dir) / CHECKPOINT_DIR


def default_checkpoint_path(results_dir: str | Path, model_name: str, dataset_name: str, epochs: int,
                            seed: int) -> Path:
    """``<results_dir>/checkpoints/<model>_<dataset>_e<epochs>_s<seed>.pt``."""
    return checkpoint_dir(results_dir) / f"{model_name}_{dataset_name}_e{int(epochs)}_s{int(seed)}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``*.pt`` files in ``directory``, sorted by name (none when it does not exist)."""
    directory = Path(directory)
    return sorted(directory.glob("*.pt")) if directory.is_dir() else []


def weights_hash(path: str | Path) -> str:
    """First 12 hex digits of the SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_cfg: Mapping[str, Any],
    dataset_name: str,
    input_shape: Sequence[int],
    num_outputs: int,
    loss: str,
    val_accuracy: float | None,
    epochs: int,
    seed: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write one checkpoint file atomically (temporary file + rename) and return its path.

    ``model_cfg`` is stored without :data:`WEIGHT_KEYS`; ``extra`` (plain values only) is stored as well.
    """
    path = Path(path)
    payload = {
        **dict(extra or {}),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "model_config": builder_config(model_cfg),
        "dataset": str(dataset_name),
        "input_shape": [int(v) for v in input_shape],
        "num_outputs": int(num_outputs),
        "loss": str(loss),
        "val_accuracy": None if val_accuracy is None else float(val_accuracy),
        "epochs": int(epochs),
        "seed": int(seed),
        "torch_version": str(torch.__version__),
    }
    return atomic_save(path, lambda tmp: torch.save(payload, tmp))


def _missing_message(path: Path) -> str:
    available = list_checkpoints(path.parent)
    listed = ", ".join(p.name for p in available) if available else "none"
    return (f"weights.checkpoint={path} does not exist; checkpoints available in {path.parent}: {listed}. Write "
            "one with `python -m runners.train model=<model> dataset=<dataset>` (it prints the path), or use "
            "weights.state=trained for the newest matching one.")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (on the CPU); a missing or foreign file is a ``UserInputError``."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        found = list_checkpoints(path)
        listed = ", ".join(p.name for p in found[:8]) if found else "none"
        raise UserInputError(f"weights.checkpoint={path} is a directory, not a checkpoint file; give one .pt file "
                             f"written by `python -m runners.train` (checkpoints in that directory: {listed}).")
    if not path.is_file():
        raise UserInputError(_missing_message(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a torch zip/pickle
        raise UserInputError(f"weights.checkpoint={path} could not be read as a checkpoint ({short_error(exc)}); "
                             "give a .pt file written by `python -m runners.train`.") from exc
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload
    plain = payload.get("state_dict") if isinstance(payload, dict) and "state_dict" in payload else payload
    if isinstance(plain, dict) and plain and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in plain.items()):
        return {"format": PLAIN_FORMAT, "state_dict": plain}
    raise UserInputError(
        f"weights.checkpoint={path} holds neither a checkpoint written by `python -m runners.train` (format="
        f"{FORMAT!r}) nor a plain state_dict (a dict of parameter names to tensors, as torch.save(model."
        "state_dict(), path) writes, or such a dict under the key 'state_dict'); give one of those files."
    )


# --------------------------------------------------------------------------------------------------------
# Loading and compatibility
# --------------------------------------------------------------------------------------------------------
def _num_outputs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Logits per sample of ``model`` on inputs of ``input_shape``."""
    param = next(model.parameters())
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    return int(out.reshape(1, -1).shape[1])


def _state_differences(stored: Mapping[str, torch.Tensor], wanted: Mapping[str, torch.Tensor]) -> list[str]:
    reasons = []
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    if missing:
        reasons.append(f"parameters missing from the checkpoint: {', '.join(missing[:4])}")
    if unexpected:
        reasons.append(f"parameters the model does not have: {', '.join(unexpected[:4])}")
    shapes = [f"{k} {tuple(stored[k].shape)} vs {tuple(wanted[k].shape)}" for k in sorted(set(stored) & set(wanted))
              if tuple(stored[k].shape) != tuple(wanted[k].shape)]
    if shapes:
        reasons.append(f"parameter shapes (checkpoint vs model): {', '.join(shapes[:4])}")
    return reasons


def mismatches(meta: Mapping[str, Any], model: nn.Module, model_cfg: Mapping[str, Any],
               input_shape: Sequence[int]) -> list[str]:
    """Why the checkpoint ``meta`` cannot be loaded into ``model`` (built from ``model_cfg`` for ``input_shape``).

    A plain ``state_dict`` carries no metadata: only its parameter names and shapes are compared.
    """
    if meta.get("format") == PLAIN_FORMAT:
        return _state_differences(meta["state_dict"], model.state_dict())
    stored_cfg = dict(meta.get("model_config") or {})
    wanted_cfg = builder_config(model_cfg)
    reasons = []
    if stored_cfg.get("name") != wanted_cfg.get("name"):
        reasons.append(f"model {stored_cfg.get('name')} vs {wanted_cfg.get('name')}")
    if [int(v) for v in meta.get("input_shape", [])] != [int(v) for v in input_shape]:
        reasons.append(f"input shape {_shape_text(meta.get('input_shape'))} vs {_shape_text(input_shape)}")
    outputs = _num_outputs(model, input_shape)
    if int(meta.get("num_outputs", -1)) != outputs:
        reasons.append(f"outputs {meta.get('num_outputs')} vs {outputs}")
    ignored = set(INIT_KEYS)
    if all(str(c.get("_target_", "")).startswith(PROJECT_PACKAGES) for c in (stored_cfg, wanted_cfg)):
        ignored.add("_target_")  # a builder of this project that moved to another module is the same builder
    options = sorted((set(stored_cfg) | set(wanted_cfg)) - ignored)
    changed = [f"model.{k}={stored_cfg.get(k)!r} vs {wanted_cfg.get(k)!r}" for k in options
               if stored_cfg.get(k) != wanted_cfg.get(k)]
    if changed:
        reasons.append("architecture options " + ", ".join(changed))
    return reasons + _state_differences(meta["state_dict"], model.state_dict())


def load_into(model: nn.Module, path: str | Path, model_cfg: Mapping[str, Any],
              input_shape: Sequence[int]) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` (in place) and return the checkpoint dict.

    The stored model name, input shape, number of outputs, architecture options and the state_dict's keys and
    shapes must all match ``model_cfg``/``input_shape``/``model``, else ``CheckpointMismatchError``.
    """
    path = Path(path)
    meta = read_checkpoint(path)
    _load_checked(meta, path, model, model_cfg, input_shape)
    return meta


def _load_checked(meta: Mapping[str, Any], path: Path, model: nn.Module, model_cfg: Mapping[str, Any],
                  input_shape: Sequence[int]) -> None:
    """Load ``meta``'s weights into ``model``, or raise ``CheckpointMismatchError`` listing every difference."""
    reasons = mismatches(meta, model, model_cfg, input_shape)
    if not reasons:
        model.load_state_dict(meta["state_dict"])  # copies into the model's own tensors (its dtype and device)
        return
    stored = dict(meta.get("model_config") or {}).get("name")
    wanted = builder_config(model_cfg).get("name")
    outputs = _num_outputs(model, input_shape)
    if meta.get("format") == PLAIN_FORMAT:
        raise CheckpointMismatchError(
            f"The state_dict in {path} does not fit model {wanted} (built for input {_shape_text(input_shape)}): "
            f"{'; '.join(reasons)}. Save it from the same architecture (torch.save(model.state_dict(), path)) and "
            "build that architecture with the same model.* options."
        )
    raise CheckpointMismatchError(
        f"Checkpoint {path} does not fit the requested model: it holds model {stored} for input "
        f"{_shape_text(meta.get('input_shape'))} with {meta.get('num_outputs')} output(s) (trained on "
        f"{meta.get('dataset')}), but model {wanted} for input {_shape_text(input_shape)} with {outputs} output(s) "
        f"was requested; differences (checkpoint vs requested): {'; '.join(reasons)}. Use a checkpoint of this "
        f"model ({_train_command(str(wanted), None, outputs)} writes one), or choose the model, dataset and "
        "options the checkpoint was trained with."
    )


def _checkpoint_summary(meta: Mapping[str, Any]) -> str:
    return (f"{dict(meta.get('model_config') or {}).get('name')} on {meta.get('dataset')} "
            f"({_shape_text(meta.get('input_shape'))}, {meta.get('num_outputs')} output(s))")


def resolve_state(model_cfg: Mapping[str, Any], state: str, dataset_name: str | None, results_dir: str | Path,
                  input_shape: Sequence[int] | None = None, num_outputs: int | None = None) -> Path | None:
    """The checkpoint ``weights.state`` asks for: None for ``untrained``; for ``trained`` the newest (mtime)
    checkpoint in ``<results_dir>/checkpoints`` whose stored model name and dataset match (and the input
    shape and number of outputs, when given). None matching is a ``UserInputError`` saying how to make one."""
    return STATES[state](model_cfg, dataset_name, results_dir, input_shape, num_outputs)


def _newest_trained(model_cfg: Mapping[str, Any], dataset_name: str | None, results_dir: str | Path,
                    input_shape: Sequence[int] | None, num_outputs: int | None) -> Path:
    name = str(model_cfg.get("name"))
    directory = checkpoint_dir(results_dir)
    matching, others = [], []
    for path in list_checkpoints(directory):
        try:
            meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # an unreadable file is simply not a candidate
            continue
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            continue
        fits = (dict(meta.get("model_config") or {}).get("name") == name
                and (dataset_name is None or meta.get("dataset") == dataset_name)
                and (input_shape is None or [int(v) for v in meta.get("input_shape", [])] == list(input_shape))
                and (num_outputs is None or int(meta.get("num_outputs", -1)) == int(num_outputs)))
        (matching if fits else others).append((path, meta))
    if matching:
        return max(matching, key=lambda item: (item[0].stat().st_mtime, item[0].name))[0]
    held = "; ".join(f"{p.name}: {_checkpoint_summary(m)}" for p, m in others) or "no checkpoints"
    wanted = (f"model {name} on dataset {dataset_name} (input {_shape_text(input_shape)}, "
              f"{num_outputs if num_outputs is not None else 'any number of'} output(s))")
    raise UserInputError(
        f"weights.state=trained found no checkpoint of {wanted} in {directory} (it holds {held}). Make one with "
        f"{_train_command(name, dataset_name, num_outputs)} (with the same model.* and dataset.* options), "
        "or set weights.checkpoint=<path>, or use weights.state=untrained."
    )


#: ``weights.state`` -> how its checkpoint is found (None: untrained weights).
STATES: dict[str, Callable[..., Path | None]] = {"untrained": _state_none, "trained": _newest_trained}


# --------------------------------------------------------------------------------------------------------
# Building the model a trial attacks
# --------------------------------------------------------------------------------------------------------
def instantiate_model(model_cfg: Mapping[str, Any], input_shape: Sequence[int], seed: int,
                      num_outputs: int | None) -> nn.Module:
    """Build the model of ``model_cfg``: a builder function or an ``nn.Module`` class named by ``_target_``.

    The harness offers ``input_shape``, ``seed`` and ``num_outputs`` and passes those the target accepts (the zoo's
    builders take all three). A target that takes no ``seed`` is built under a forked RNG seeded with it, so its
    initial weights are still the same for the same seed. One that takes no ``num_outputs`` must produce that
    many logits itself; ``model.num_classes`` is passed on only when the target accepts it. A model whose output
    does not fit the task is a ``UserInputError`` saying how many logits it gives and needs.
    """
    config = builder_config(model_cfg)
    accepted = _accepted_keywords(config.get("_target_"))
    offered: dict[str, Any] = {"input_shape": tuple(int(v) for v in input_shape), "seed": int(seed)}
    if num_outputs is not None:
        offered["num_outputs"] = int(num_outputs)
    if accepted is not None:
        offered = {k: v for k, v in offered.items() if k in accepted}
        if "num_classes" not in accepted and config.get("num_classes") is None:
            config.pop("num_classes", None)  # the harness's own key, at its default: not the builder's business
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = instantiate_group(config, "model", nn.Module, **offered)
    if num_outputs is not None and "num_outputs" not in offered:
        produced = _num_outputs(model, input_shape)
        if produced != int(num_outputs):
            raise UserInputError(
                f"model {config.get('name')} ({config.get('_target_')}) gives {produced} logit(s) per image on input "
                f"{_shape_text(input_shape)}, but the task needs {num_outputs} (loss and model.num_classes decide it: "
                "one logit for loss=logistic, one per class for cross_entropy). Set model.num_classes="
                f"{produced} (with loss=cross_entropy when > 1) or build the head your task needs."
            )
    return model


def _accepted_keywords(target: Any) -> set[str] | None:
    """Keyword names ``target`` accepts (a class: its ``__init__``); None when it takes ``**kwargs`` or cannot be
    inspected (then everything is offered)."""
    try:
        fn = locate_callable(str(target))
        params = inspect.signature(fn).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {name for name in params if name not in ("self", "cls")}


def build_model(
    model_cfg: Mapping[str, Any],
    input_shape: Sequence[int],
    seed: int,
    num_outputs: int | None = None,
    weights: WeightsChoice | None = None,
    results_dir: str | Path = "results",
    dataset_name: str | None = None,
) -> tuple[nn.Module, WeightsInfo]:
    """The model of ``model_cfg`` built for ``input_shape`` with ``seed``, with the weights of
    ``weights.checkpoint`` or, for ``weights.state=trained``, of the newest matching checkpoint.

    ``num_outputs=None`` lets the builder choose, or takes the checkpoint's head size when one is loaded.
    """
    weights = weights or WeightsChoice()
    if weights.checkpoint is not None:
        path: Path | None = weights.checkpoint
    else:
        path = STATES[weights.state](model_cfg, dataset_name, results_dir, tuple(input_shape), num_outputs)
    if path is None:
        model = instantiate_model(model_cfg, input_shape, seed, num_outputs)
        return model, WeightsInfo(weights=f"untrained:{builder_config(model_cfg).get('init', 'default')}")
    meta = read_checkpoint(path)
    if num_outputs is None:
        num_outputs = int(meta.get("num_outputs", 1))
    model = instantiate_model(model_cfg, input_shape, seed, num_outputs)
    _load_checked(meta, path, model, model_cfg, input_shape)
    return model, WeightsInfo(weights=f"checkpoint:{path}", weights_hash=weights_hash(path), checkpoint=str(path))
