"""Config hashes: the key under which a sweep stores a trial (``trials/<hash>/``).

The hash covers what decides a trial's numbers: the resolved config without output and bookkeeping keys
(:data:`NOT_HASHED`) and without the module paths of this project's own builders (``_target_`` values inside
``rgap.`` or ``baselines.``): config entries are identified by their ``name``, so moving code between modules
never changes a hash. A user's own builder (``model._target_=mynet.build``) stays in the hash.

Sweeps started by earlier versions used another formula (version 1: every ``_target_`` hashed, weight keys inside
``model``). :func:`legacy_hashes` rebuilds the version-1 keys a trial may have been stored under, so such a sweep
resumes without re-running anything.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Top-level keys that do not change a trial's result (outputs and bookkeeping), left out of its hash.
NOT_HASHED = ("hydra", "paths", "overwrite", "sweep_name", "save_images", "collect", "psnr_threshold", "run_name")
#: ``_target_`` values under these prefixes are this project's own code and are not hashed.
PROJECT_PACKAGES = ("rgap.", "baselines.")
GROUPS = ("attack", "model", "dataset", "defense")

#: Version 1 (commit ba43530): the ``_target_`` of every config entry, by group and name.
V1_TARGETS: dict[str, dict[str, str]] = {
    "attack": {"rgap": "rgap.recursive.RGAP", "dlg": "baselines.dlg.DLG", "idlg": "baselines.dlg.IDLG",
               "ig": "baselines.ig.InvertingGradients", "hgap": "baselines.hgap.HGAP"},
    "model": {"cnn6": "rgap.models.cnn6", "cnn6d": "rgap.models.cnn6d", "cnn6w": "rgap.models.cnn6w",
              "fcn3": "rgap.models.fcn3", "lenet": "rgap.models.lenet",
              **{f"rankfig_{c}": "rgap.models.conv_net" for c in "abcde"}},
    "dataset": {"sample": "rgap.data.load_sample", "sample_gray": "rgap.data.load_sample_gray",
                "cifar10": "rgap.data.load_cifar10", "mnist": "rgap.data.load_mnist",
                "folder": "rgap.data.load_folder"},
    "defense": {"none": "rgap.defenses.NoDefense", "gaussian": "rgap.defenses.GaussianNoise",
                "laplace": "rgap.defenses.LaplaceNoise", "prune": "rgap.defenses.GradientPruning",
                "dpsgd": "rgap.defenses.DPSGD"},
}


#: Version 1's model configs that held the weight keys (``checkpoint``, ``state``, ``rank_check``).
V1_WEIGHT_KEY_MODELS = ("cnn6", "cnn6d", "cnn6w", "fcn3", "lenet")


def _container(cfg: Mapping[str, Any]) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(dict(cfg))
    assert isinstance(container, dict)
    return {k: v for k, v in container.items() if k not in NOT_HASHED}


def _digest(payload: Mapping[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _is_project_target(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PROJECT_PACKAGES)


def hash_payload(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the hash covers: the resolved config without :data:`NOT_HASHED` keys and project ``_target_`` paths."""
    payload = _container(cfg)
    for group in GROUPS:
        node = payload.get(group)
        if isinstance(node, dict) and _is_project_target(node.get("_target_")):
            del node["_target_"]
    return payload


def trial_hash(cfg: Mapping[str, Any]) -> str:
    """12 hex digits of SHA-256 over :func:`hash_payload` (sorted JSON)."""
    return _digest(hash_payload(cfg))


def legacy_hashes(cfg: Mapping[str, Any]) -> list[str]:
    """The version-1 hashes this trial may have been stored under by an earlier version of this project.

    Version 1 hashed the resolved config (minus :data:`NOT_HASHED`) with the ``_target_`` paths of its time and
    the weight keys (``checkpoint``, ``state``, ``rank_check``, then default true) inside ``model``;
    ``threads: null`` was the default of single runs.
    Only project targets are mapped back; a trial with a user's own builder keeps its path.
    """
    payload = _container(cfg)
    for group, targets in V1_TARGETS.items():
        node = payload.get(group)
        if isinstance(node, dict) and _is_project_target(node.get("_target_")) and node.get("name") in targets:
            node["_target_"] = targets[node["name"]]
    model = payload.get("model")
    weights = payload.pop("weights", None)
    if isinstance(model, dict) and isinstance(weights, dict) and model.get("name") in V1_WEIGHT_KEY_MODELS:
        # version 1 kept the weight keys in these models' configs (the rank-figure networks had none)
        model.update({k: weights[k] for k in ("checkpoint", "state", "rank_check") if k in weights})
    if payload.get("client_mode") == "eval":  # version 1 had no such option; its clients computed in eval mode
        del payload["client_mode"]
    attack = payload.get("attack")
    if isinstance(attack, dict):
        _v1_attack_options(attack)
    rank_checks: list[Any] = [None]
    if isinstance(model, dict) and "rank_check" in model:
        rank_checks = list(dict.fromkeys([model["rank_check"], True, False]))
    threads = [payload.get("threads")] + ([None] if payload.get("threads") == "auto" else [])
    keys = []
    for rank_check, thread in itertools.product(rank_checks, threads):
        candidate = copy.deepcopy(payload)
        if rank_check is not None:
            candidate["model"]["rank_check"] = rank_check
        if "threads" in candidate:
            candidate["threads"] = thread
        keys.append(_digest(candidate))
    current = trial_hash(cfg)
    return [k for k in dict.fromkeys(keys) if k != current]


def _v1_attack_options(attack: dict[str, Any]) -> None:
    """Version 1's names of attack options whose meaning did not change, where the value means the same.

    ``early_stop`` was ``tolerance`` (0 = never stop, the same run either way; a positive threshold is now checked
    as iDLG's code checks it, so it is a different run). Inverting Gradients' ``decay`` was a boolean: ``true`` was
    today's ``fractions`` schedule and ``false`` is ``none`` (single restart only: the winner of several restarts is
    now picked by another score). Today's default ``decay: reference`` has no version-1 equivalent, so those trials
    run again, as they must: their numbers changed. R-GAP's ``solver: generic`` with ``cg_tol: 1e-12`` is version
    1's solver; today's default ``structured`` solver (and ``cg_tol: 1e-13``) round differently, so those run again.
    """
    if "solver" in attack:  # R-GAP: version 1 had only today's generic solver, with cg_tol 1e-12
        if attack["solver"] != "generic" or attack.get("cg_tol") != 1e-12:
            return
        del attack["solver"]
    if attack.get("early_stop") == 0:
        attack["tolerance"] = attack.pop("early_stop")
    if "decay" in attack and attack.get("restarts", 1) == 1 and attack["decay"] in ("fractions", "none"):
        attack["decay"] = attack["decay"] == "fractions"
