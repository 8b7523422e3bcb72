"""Sweeps of trials: ``python -m runners.benchmark -m attack=rgap,dlg model=cnn6,fcn3 batch_size=1,2 ...``.

Each job runs one trial through the same path as ``runners.attack`` and writes its row atomically to
``<sweep dir>/trials/<config hash>/``; existing rows are skipped (``overwrite=true`` re-runs them).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rgap.sweep import progress_line, run_sweep_job
from runners.callbacks import STARTED_FILE, TOTAL_FILE
from runners.common import exit_on_user_error


def _read_number(path: Path) -> float | None:
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir if hydra_cfg.mode.name == "MULTIRUN" else hydra_cfg.runtime.output_dir)
    key, row = run_sweep_job(cfg, sweep_dir, overwrite=bool(cfg.overwrite))
    started = _read_number(sweep_dir / STARTED_FILE) or time.time()
    total = _read_number(sweep_dir / TOTAL_FILE)
    print(progress_line(sweep_dir, int(total) if total else None, started, hydra_cfg.job.num + 1, key, row),
          flush=True)


if __name__ == "__main__":
    main()
