"""Audit a network: ``python -m runners.audit model=... [dataset=...] [images=N] [attacks=[rgap,dlg,ig]]``.

Runs the rank analysis, then each attack on N images through the trial path, and writes ``audit.md`` (per-layer
counts, ranks and verdicts; per-attack medians; the verdict in words) and ``audit.png`` (a gallery) into the run
directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rgap.harness.audit import run_audit, verdict_paragraph
from rgap.harness.audit_report import write_audit
from runners.common import cli, exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    audit = run_audit(cfg, out_dir, progress=lambda line: print(line, flush=True))
    paths = write_audit(audit, out_dir)
    print(verdict_paragraph(audit))
    print("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    cli(main)
