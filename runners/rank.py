"""Rank analysis: ``python -m runners.rank model=cnn6d`` prints the per-layer table and writes ``rank.csv``.

One progress line per layer while the numerical ranks are computed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rgap.harness.rank import run_rank_analysis
from runners.common import cli, exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="rank")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    table = run_rank_analysis(cfg, out_dir / "rank.csv", progress=lambda line: print(f"[rank] {line}", flush=True))
    print(table.to_string(index=False))
    deficient = table[table["deficiency"].fillna(0) > 0]
    if len(deficient):
        listed = ", ".join(f"{r.layer} (deficiency {r.deficiency})" for r in deficient.itertuples())
        print(f"rank-deficient layers (R-GAP cannot recover their input exactly): {listed}")
    elif (table["predicted"] == "unsupported").any():
        print(f"R-GAP cannot invert this network: {table['note'].iloc[0]}")
    elif table["rank"].notna().all():
        print("every layer's constraint system has full column rank: R-GAP is exact on noise-free gradients")
    else:
        print("numerical ranks were not computed for every layer (see max_unknowns); no verdict on exactness")
    print(f"written: {out_dir / 'rank.csv'}")


if __name__ == "__main__":
    cli(main)
