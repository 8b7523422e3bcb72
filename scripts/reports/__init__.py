"""Reports by experiment: each module owns one experiment's tables and figures.

Experiments (each declares its sweeps and published files as ``EXPERIMENT``, see ``spec``):

``table1``     R-GAP against the optimisation attacks per architecture (MSE headline, PSNR, SSIM, LPIPS, time)
``rank``       the rank-analysis figure's networks: per-layer counts and ranks against reconstruction quality
``noise``      PSNR against a defense's level (the paper's relative Gaussian noise)
``labels``     DLG against iDLG label accuracy, beside the iDLG paper's Table 1
``defenses``   the defense sweeps (noise and pruning), drawn with the noise study's table and figure

Shared by them: ``trials`` (reading rows through the typed schema, slicing them), ``cells`` (table cells,
footnotes, Markdown, writing), ``style`` (figure style, panels, attack colours and markers, saving), the figures
two experiments draw (``time_curves``: accuracy against time; ``gallery``: reconstructions), ``paper_numbers``
(every number quoted from a paper, with its source) and ``outputs`` (tables and figures by name, written for a
sweep). The command lines ``scripts.paper_tables``, ``scripts.plot`` and ``scripts.paper_offline`` call these.
"""
