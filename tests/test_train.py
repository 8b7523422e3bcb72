"""Training models on their task, checkpoints, and attacking trained weights (``runners.train``, ``model.state``)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from rgap.attack.losses import logistic_loss
from rgap.core.errors import CheckpointMismatchError, UserInputError
from rgap.harness.rank import run_rank_analysis
from rgap.harness.trial import run_trial, setup_trial
from rgap.zoo.checkpoints import (
    WeightsChoice,
    build_model,
    builder_config,
    load_into,
    read_checkpoint,
    save_checkpoint,
    weights_hash,
)
from rgap.zoo.data import build_dataset
from rgap.zoo.training import TrainSettings, split_indices, train_from_config, train_model
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


def compose_config(name: str, *overrides: str):
    """``conf/<name>.yaml`` with ``overrides``."""
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name=name, overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{model: (TrainResult, checkpoint path)}: LeNet and FCN3 trained on sample_gray (a second in all)."""
    results = tmp_path_factory.mktemp("results")
    out = {}
    for model, epochs in (("lenet", 20), ("fcn3", 3)):
        cfg = compose_config("train", f"model={model}", "dataset=sample_gray", f"epochs={epochs}", "batch_size=16",
                             "threads=1", f"paths.results={results}")
        out[model] = train_from_config(cfg, progress=None)
    return out


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(32, 0.2, seed=0)
    assert (train, val) == split_indices(32, 0.2, seed=0)
    assert len(val) == 6 and sorted(train + val) == list(range(32))
    assert split_indices(32, 0.2, seed=1) != (train, val)
    assert split_indices(10, 0.0, seed=0)[1] == []
    with pytest.raises(UserInputError, match="val_fraction"):
        TrainSettings(val_fraction=1.0)
    with pytest.raises(UserInputError, match="sgd, adam"):
        TrainSettings(optimizer="lbfgs")


def test_training_reduces_the_training_loss(trial_cfg):
    cfg = trial_cfg("model=fcn3", "dataset=sample_gray")
    dataset = build_dataset(cfg["dataset"])
    model, weights = build_model(cfg["model"], dataset.shape, seed=0, num_outputs=1)
    assert weights.weights == "untrained:default" and weights.weights_hash == ""
    before = copy.deepcopy(model)
    lines: list[str] = []
    result = train_model(model, dataset, "logistic", TrainSettings(epochs=3, batch_size=16, seed=0), lines.append)
    images, labels = dataset.get(result.train_indices)
    with torch.no_grad():
        initial, final = logistic_loss(before(images), labels), logistic_loss(result.model(images), labels)
    assert float(final) < 0.9 * float(initial)
    assert [s.epoch for s in result.history] == [1, 2, 3] and len(lines) == 3
    assert lines[0].startswith("epoch 1/3 | train loss ") and "val acc" in lines[0]
    assert result.val_accuracy is not None and len(result.val_indices) == 40
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_checkpoint_round_trip(trained, trial_cfg):
    result, path = trained["lenet"]
    assert path.name == "lenet_sample_gray_e20_s0.pt" and path.parent.name == "checkpoints"
    meta = read_checkpoint(path)
    assert meta["model_config"]["name"] == "lenet" and meta["model_config"]["bias"] is False
    assert "num_classes" in meta["model_config"] and meta["model_config"]["num_classes"] is None
    assert not {"checkpoint", "state", "rank_check"} & set(meta["model_config"])
    assert meta["dataset"] == "sample_gray" and meta["input_shape"] == [1, 28, 28] and meta["num_outputs"] == 1
    assert meta["loss"] == "logistic" and meta["epochs"] == 20 and meta["seed"] == 0
    assert meta["val_accuracy"] == pytest.approx(result.val_accuracy)
    assert meta["torch_version"] == torch.__version__ and len(meta["history"]) == 20
    fresh, _ = build_model(trial_cfg("model=lenet")["model"], (1, 28, 28), seed=5, num_outputs=1)
    load_into(fresh, path, trial_cfg("model=lenet")["model"], (1, 28, 28))
    stored = result.model.state_dict()
    assert set(fresh.state_dict()) == set(stored)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, stored[key])
    assert re.fullmatch(r"[0-9a-f]{12}", weights_hash(path))


def _cnn6_checkpoint(trial_cfg, path: Path, name: str = "cnn6") -> Path:
    cfg = trial_cfg("model=cnn6")["model"]
    model, _ = build_model(cfg, (3, 32, 32), seed=0, num_outputs=1)
    stored_cfg = {**builder_config(cfg), "name": name}  # name="cnn6d": a checkpoint whose metadata lies
    return save_checkpoint(path, model, stored_cfg, "sample", (3, 32, 32), 1, "logistic", None, 0, 0)


def test_cnn6_checkpoint_does_not_load_into_cnn6d(trial_cfg, tmp_path):
    path = _cnn6_checkpoint(trial_cfg, tmp_path / "cnn6.pt")
    with pytest.raises(CheckpointMismatchError) as info:
        build_model(trial_cfg("model=cnn6d")["model"], (3, 32, 32), 0, num_outputs=1,
                    weights=WeightsChoice(checkpoint=path))
    message = str(info.value)
    assert "holds model cnn6 for input 3x32x32 with 1 output(s)" in message
    assert "model cnn6d for input 3x32x32 with 1 output(s) was requested" in message
    assert "2.weight (36, 12, 3, 3) vs (20, 12, 3, 3)" in message and "\n" not in message
    # A file whose stored name was edited to cnn6d still fails, on the parameter shapes.
    renamed = _cnn6_checkpoint(trial_cfg, tmp_path / "cnn6d.pt", name="cnn6d")
    with pytest.raises(CheckpointMismatchError, match=r"parameter shapes .*2\.weight"):
        build_model(trial_cfg("model=cnn6d")["model"], (3, 32, 32), 0, num_outputs=1,
                    weights=WeightsChoice(checkpoint=renamed))


def test_wrong_input_shape_or_head_fails(trained, trial_cfg):
    _, path = trained["lenet"]
    with pytest.raises(CheckpointMismatchError, match=r"input shape 1x28x28 vs 3x32x32"):
        setup_trial(trial_cfg("model=lenet", "dataset=sample", f"weights.checkpoint={path}"))
    with pytest.raises(CheckpointMismatchError, match=r"outputs 1 vs 2"):
        setup_trial(trial_cfg("model=lenet", "dataset=sample_gray", "model.num_classes=2",
                              f"weights.checkpoint={path}"))
    with pytest.raises(CheckpointMismatchError, match=r"model.bias=False vs True"):
        setup_trial(trial_cfg("model=lenet", "dataset=sample_gray", "model.bias=true", f"weights.checkpoint={path}"))


def test_missing_checkpoint_lists_the_available_ones(trained, trial_cfg):
    _, path = trained["lenet"]
    missing = path.parent / "lenet_sample_gray_e99_s0.pt"
    with pytest.raises(UserInputError) as info:
        setup_trial(trial_cfg("model=lenet", "dataset=sample_gray", f"weights.checkpoint={missing}"))
    assert str(missing) in str(info.value) and "lenet_sample_gray_e20_s0.pt" in str(info.value)
    assert "fcn3_sample_gray_e3_s0.pt" in str(info.value) and "runners.train" in str(info.value)
    junk = path.parent.parent / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="could not be read as a checkpoint"):
        setup_trial(trial_cfg("model=lenet", "dataset=sample_gray", f"weights.checkpoint={junk}"))


def test_state_trained_picks_the_newest_matching_checkpoint(trial_cfg, tmp_path):
    cfg = trial_cfg("model=lenet", "dataset=sample_gray")
    base, _ = build_model(cfg["model"], (1, 28, 28), seed=0, num_outputs=1)
    folder = tmp_path / "checkpoints"
    written = {}
    for i, (name, dataset) in enumerate([("old", "sample_gray"), ("new", "sample_gray"), ("other", "mnist")]):
        model = copy.deepcopy(base)
        with torch.no_grad():
            next(model.parameters()).add_(i + 1.0)
        written[name] = save_checkpoint(folder / f"{name}.pt", model, cfg["model"], dataset, (1, 28, 28), 1,
                                        "logistic", 0.5, 1, 0)
        os.utime(written[name], (1_000_000 + 100 * i, 1_000_000 + 100 * i))
    os.utime(written["old"], (2_000_000, 2_000_000))
    os.utime(written["new"], (3_000_000, 3_000_000))
    _cnn6_checkpoint(trial_cfg, folder / "cnn6_newest.pt")  # newest file, but another model
    trained_cfg = trial_cfg("model=lenet", "dataset=sample_gray", "weights.state=trained", f"paths.results={tmp_path}")
    trained = WeightsChoice.from_config(trained_cfg["weights"])
    model, weights = build_model(trained_cfg["model"], (1, 28, 28), 0, 1, trained, tmp_path, "sample_gray")
    assert weights.weights == f"checkpoint:{written['new']}" and weights.weights_hash == weights_hash(written["new"])
    assert torch.equal(next(model.parameters()), next(base.parameters()) + 2.0)
    with pytest.raises(UserInputError) as info:
        build_model(trained_cfg["model"], (1, 28, 28), 0, 1, trained, tmp_path, "sample")
    assert "python -m runners.train model=lenet dataset=sample" in str(info.value)
    with pytest.raises(UserInputError, match="valid choices: untrained, trained"):
        WeightsChoice.from_config(trial_cfg("model=lenet", "weights.state=finetuned")["weights"])


@pytest.mark.parametrize("model", ["lenet", "fcn3"])
def test_rgap_is_exact_on_trained_weights_and_rows_record_them(trained, trial_cfg, model, tmp_path):
    _, path = trained[model]
    row = run_trial(trial_cfg(f"model={model}", "dataset=sample_gray", "index=3", f"weights.checkpoint={path}",
                              "weights.rank_check=true"), tmp_path)
    assert row["status"] == "ok" and row["psnr"] > 60.0  # float64 gradient: the closed form needs no random weights
    assert row["weights"] == f"checkpoint:{path}" and row["weights_hash"] == weights_hash(path)
    assert re.fullmatch(r"[0-9a-f]{12}", row["weights_hash"])
    assert row["rank_note"] == "ranks equal"
    untrained = run_trial(trial_cfg(f"model={model}", "dataset=sample_gray", "index=3"))
    init = "normal" if model == "lenet" else "default"
    assert untrained["weights"] == f"untrained:{init}" and untrained["weights_hash"] == ""
    assert untrained["rank_note"] == ""
    skipped = run_trial(trial_cfg(f"model={model}", "dataset=sample_gray", "index=3", f"weights.checkpoint={path}"))
    assert skipped["rank_note"] == "" and skipped["psnr"] == pytest.approx(row["psnr"])


def test_rank_analysis_reads_the_checkpoint(trained):
    _, path = trained["lenet"]
    untrained = run_rank_analysis(compose_config("rank", "model=lenet", "dataset=sample_gray"))
    table = run_rank_analysis(compose_config("rank", "model=lenet", "dataset=sample_gray",
                                             f"weights.checkpoint={path}"))
    assert list(table["layer"]) == list(untrained["layer"]) and table["rank"].notna().all()


def test_train_cli_prints_progress_and_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "runners.train", "model=lenet", "dataset=sample_gray", "epochs=2", "threads=1",
           f"paths.results={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2 | train loss" in proc.stdout and "epoch 2/2" in proc.stdout
    path = tmp_path / "checkpoints" / "lenet_sample_gray_e2_s0.pt"
    assert f"checkpoint: {path}" in proc.stdout and path.is_file()
    assert (tmp_path / "run" / "history.csv").is_file()
    bad = subprocess.run([*cmd[:3], "optimizer=lbfgs", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "optimizer='lbfgs' is not valid; valid choices: sgd, adam" in bad.stderr
