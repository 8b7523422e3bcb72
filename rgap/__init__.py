"""rgap-bench: gradient inversion attacks on the same models, images and gradients, one CSV row per trial.

Sub-packages, each with one job (dependencies point down this list, never up; ``tests/test_architecture.py``
checks it):

``rgap.harness``     one trial from config to row (``run_trial``), sweeps, the typed row schema, config hashes
``rgap.zoo``         what a trial attacks: models, datasets, checkpoints, training
``rgap.client``      the federated client: the shared gradient and the defenses applied to it
``rgap.evaluation``  scoring a reconstruction: metrics, matching to the originals, image files
``rgap.algorithm``   the R-GAP algorithm and its rank analysis: sees a model and a shared gradient, nothing else
``rgap.attack``      the attack interface every attack implements (``Attack``, ``SharedGradient``, the losses)
``rgap.core``        errors, typed option reading, atomic file writes, building objects from config groups
"""
