"""Compose configs with Hydra's compose API from plain Python (scripts, tests, notebooks).

``compose_config("trial", ["attack=dlg", "model=lenet"])`` gives exactly the config ``python -m runners.attack
attack=dlg model=lenet`` runs with, so scripts run trials through :func:`rgap.harness.trial.run_trial` with real
configs instead of private copies. Hydra's errors (unknown key, bad override) become ``UserInputError``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rgap.attack import Attack, AttackFacts
from rgap.core.config import locate_callable
from rgap.core.errors import UserInputError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(config_name: str = "trial", overrides: Sequence[str] = ()) -> DictConfig:
    """The composed ``conf/<config_name>.yaml`` with ``overrides`` (without the ``hydra`` node)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if GlobalHydra.instance().is_initialized():  # inside a running Hydra app (a runner, a callback)
            return compose(config_name=config_name, overrides=list(overrides))
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserInputError(f"{' '.join(overrides) or config_name}: {' '.join(str(exc).split())}") from exc


@functools.lru_cache(maxsize=1)
def config_groups() -> frozenset[str]:
    """The config groups of ``conf/`` (its sub-directories: ``attack``, ``model``, ``hydra``, ...)."""
    return frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def attack_names() -> list[str]:
    """Every attack of ``conf/attack/``."""
    return sorted(p.stem for p in (CONF_DIR / "attack").glob("*.yaml"))


@functools.lru_cache(maxsize=32)
def attack_facts(name: str) -> AttackFacts:
    """The display facts of the attack ``name`` (its class's ``facts``); an unknown name gets its own label."""
    if name not in attack_names():
        return AttackFacts(label=name)
    target = str(compose_config("trial", [f"attack={name}"]).attack["_target_"])
    cls = locate_callable(target)
    return cls.facts if isinstance(cls, type) and issubclass(cls, Attack) else AttackFacts(label=name)
