"""Shared fixtures: compose the real Hydra config and shrink it for tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    torch.set_num_threads(1)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_trial(*overrides: str):
    """The real ``conf/trial.yaml`` with ``overrides``; LPIPS off unless asked for (no weights offline)."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="trial", overrides=["metrics.lpips=false", *overrides])


@pytest.fixture
def trial_cfg():
    return compose_trial
