"""Shared fixtures: compose the real Hydra config and shrink it for tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_trial(*overrides: str):
    """The real ``conf/trial.yaml`` with ``overrides``; LPIPS off unless asked for (no weights offline)."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="trial", overrides=["metrics.lpips=false", *overrides])


@pytest.fixture
def trial_cfg():
    return compose_trial
