"""Train a model on its task: ``python -m runners.train [model=cnn6] [dataset=sample] [epochs=10] ...``.

Prints one progress line per epoch, writes the checkpoint (default
``results/checkpoints/<model>_<dataset>_e<epochs>_s<seed>.pt``) and ``history.csv`` in the Hydra run directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rgap.zoo.checkpoints import weights_hash
from rgap.zoo.training import train_from_config, write_history
from runners.common import cli, exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result, path = train_from_config(cfg, progress=lambda line: print(line, flush=True))
    write_history(result, out_dir / "history.csv")
    accuracy = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.3f}"
    print(f"validation accuracy {accuracy} on {len(result.val_indices)} images "
          f"({len(result.train_indices)} trained on)")
    print(f"checkpoint: {path} (weights hash {weights_hash(path)})")
    print(f"attack it: python -m runners.attack model={cfg.model.name} dataset={cfg.dataset.name} "
          f"weights.checkpoint={path}")
    return result.val_accuracy


if __name__ == "__main__":
    cli(main)
