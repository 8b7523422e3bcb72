"""Run one trial: ``python -m runners.attack [attack=rgap] [model=cnn6] [dataset=sample] [index=0] ...``.

Writes ``row.csv``, ``origin.png``, ``reconstructed.png`` and ``rescaled.png`` into the Hydra run
directory and prints a one-line summary.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rgap.harness.trial import format_summary, run_trial
from runners.common import cli, exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="trial")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    row = run_trial(cfg, out_dir)
    print(format_summary(row))
    print(f"outputs: {out_dir}")
    return row.get("psnr")


if __name__ == "__main__":
    cli(main)
