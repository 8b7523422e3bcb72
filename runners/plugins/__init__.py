"""Hydra plugins of the runners, kept under ``runners/plugins/hydra_plugins`` (Hydra's plugin namespace)."""

from __future__ import annotations

import sys
from pathlib import Path

PLUGIN_ROOT = Path(__file__).resolve().parent


def register() -> None:
    """Make ``hydra_plugins.rgap_sweeper`` importable (and so discoverable by Hydra) from this directory.

    ``hydra_plugins`` is a namespace package: appending the directory that holds our portion of it to
    ``sys.path`` adds it next to any installed plugin (the joblib, submitit or Ray launchers). Call before
    Hydra's first use in the process (Hydra scans its plugins once).
    """
    if str(PLUGIN_ROOT) not in sys.path:
        sys.path.append(str(PLUGIN_ROOT))
