"""The defense sweeps: relative Gaussian noise and gradient pruning against R-GAP, DLG and iDLG on CNN6 (``sample``)
and LeNet (``sample_gray``, DLG's weights).

Both sweeps (``conf/experiment/defense_noise.yaml``, ``defense_prune.yaml``) write into ``results/sweeps/defenses``;
the report is the noise study's table and figure (``noise``) once per defense parameter: ``scale/noise.md`` and
``noise_scale.png``, ``prune/noise.md`` and ``noise_prune.png``.
"""

from __future__ import annotations

from scripts.reports.spec import Experiment, FigureSpec, TableSpec

SCALE_NOTE = ("Issue 6 defense sweep (conf/experiment/defense_noise.yaml): Gaussian noise relative to each parameter "
              "tensor's RMS gradient entry; CNN6 on sample (default init), LeNet on sample_gray with DLG's U(-0.5, "
              "0.5) weights; images 0 and 10; label=reversed; float64 gradients.")
PRUNE_NOTE = ("Issue 6 defense sweep (conf/experiment/defense_prune.yaml): per parameter tensor the smallest "
              "prune_ratio of gradient entries set to zero; CNN6 on sample (default init), LeNet on sample_gray with "
              "DLG's U(-0.5, 0.5) weights; images 0 and 10.")

EXPERIMENT = Experiment(
    key="defenses", folder="defenses", configs=("defense_noise", "defense_prune"), sweep_name="defenses",
    note=SCALE_NOTE,
    tables=(TableSpec("noise", subdir="scale", param="scale", note=SCALE_NOTE),
            TableSpec("noise", subdir="prune", param="prune_ratio", note=PRUNE_NOTE)),
    figures=(FigureSpec("noise", name="noise_scale", param="scale"),
             FigureSpec("noise", name="noise_prune", param="prune_ratio")),
    paper=False,
)
