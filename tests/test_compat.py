"""Results of earlier versions stay usable: their sweeps resume with nothing re-run, their checkpoints load.

The fixtures in ``tests/data/v1`` were written by the code at commit ba43530 (see its README).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from rgap.harness.hashing import hash_payload, legacy_hashes, trial_hash
from rgap.harness.schema import read_row

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "tests" / "data" / "v1"
V1_SWEEPS = [
    ["attack=rgap", "attack.solver=generic", "attack.cg_tol=1e-12", "model=fcn3,lenet", "dataset=sample_gray",
     "index=0,1", "metrics.lpips=false"],
    ["attack=dlg", "attack.iterations=2", "model=lenet", "dataset=sample_gray", "index=0", "defense=gaussian,none",
     "metrics.lpips=false"],
]


def test_a_version_1_sweep_resumes_with_no_trial_rerun(tmp_path):
    trials = tmp_path / "sweeps" / "v1" / "trials"
    shutil.copytree(V1 / "sweep_trials", trials)
    before = {p: p.read_bytes() for p in trials.glob("*/row.csv")}
    assert len(before) == 6
    for overrides in V1_SWEEPS:
        proc = subprocess.run([sys.executable, "-m", "runners.benchmark", "-m", "sweep_name=v1", *overrides,
                               f"paths.results={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        jobs = 4 if "attack=rgap" in overrides else 2
        assert proc.stdout.count("(row exists)") == jobs, proc.stdout
        assert ": rgap |" not in proc.stdout and ": dlg |" not in proc.stdout  # nothing ran
    assert {p: p.read_bytes() for p in trials.glob("*/row.csv")} == before
    table = pd.read_csv(tmp_path / "sweeps" / "v1" / "trials.csv")
    assert len(table) == 6 and (table["status"] == "ok").all() and (table["source"].isna()).all()


def test_hash_ignores_project_module_paths_but_not_a_users_builder(trial_cfg):
    cfg = trial_cfg("model=lenet")
    moved = trial_cfg("model=lenet", "model._target_=rgap.somewhere_else.lenet")
    assert trial_hash(cfg) == trial_hash(moved)
    assert "_target_" not in hash_payload(cfg)["model"]
    users = trial_cfg("model=lenet", "model._target_=mynet.build")
    assert trial_hash(users) != trial_hash(cfg) and hash_payload(users)["model"]["_target_"] == "mynet.build"
    assert trial_hash(cfg) not in legacy_hashes(cfg) and len(legacy_hashes(cfg)) >= 1


def test_a_version_1_checkpoint_loads(trial_cfg, tmp_path):
    from rgap.zoo.checkpoints import WeightsChoice, build_model

    path = V1 / "lenet_sample_gray_v1.pt"
    cfg = trial_cfg("model=lenet", "dataset=sample_gray", f"weights.checkpoint={path}")
    model, weights = build_model(cfg.model, (1, 28, 28), 0, num_outputs=1,
                                 weights=WeightsChoice.from_config(cfg.weights), dataset_name="sample_gray")
    stored = __import__("torch").load(path, weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert (tensor == stored[name]).all()
    assert weights.weights == f"checkpoint:{path}" and len(weights.weights_hash) == 12


def test_version_1_rows_read_with_the_current_schema():
    for path in (V1 / "sweep_trials").glob("*/row.csv"):
        row = read_row(path)
        assert row["status"] == "ok" and row["source"] == "" and isinstance(row["batch_size"], int)


def test_version_1_hashes_of_many_configs_are_found():
    import json

    from rgap.harness.compose import compose_config

    cases = json.loads((V1 / "hashes.json").read_text())["cases"]
    assert len(cases) >= 10
    for case in cases:
        assert case["v1_hash"] in legacy_hashes(compose_config("benchmark", case["overrides"])), case["name"]
        if "attack.solver=generic" in case["overrides"]:  # today's structured solver rounds differently: runs again
            today = [o for o in case["overrides"] if not o.startswith(("attack.solver=", "attack.cg_tol="))]
            assert case["v1_hash"] not in legacy_hashes(compose_config("benchmark", today)), case["name"]
