"""Bring your own model: builders and nn.Module classes from the user's code, their plain state_dicts, and the
client's mode as an explicit trial option (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgap.core.errors import CheckpointMismatchError, UserInputError
from rgap.harness.trial import run_trial
from rgap.zoo.checkpoints import WeightsChoice, build_model, instantiate_model
from tests.user_models import Net, build

ROOT = Path(__file__).resolve().parents[1]
GRAY = ["dataset=sample_gray", "metrics.lpips=false", "save_images=false"]


def test_builder_function_gets_shape_seed_and_head(trial_cfg):
    cfg = trial_cfg("model=custom", "model._target_=tests.user_models.build", *GRAY)
    row = run_trial(cfg)
    assert row["status"] == "ok" and row["model"] == "custom" and row["psnr"] > 100  # R-GAP is exact on it
    a = instantiate_model(cfg.model, (1, 28, 28), 3, 1)
    b = build((1, 28, 28), 3, 1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_module_class_with_its_own_kwargs_is_seeded(trial_cfg):
    cfg = trial_cfg("model=custom", "model._target_=tests.user_models.Net", "+model.width=3", *GRAY)
    first, again = instantiate_model(cfg.model, (1, 28, 28), 0, 1), instantiate_model(cfg.model, (1, 28, 28), 0, 1)
    other = instantiate_model(cfg.model, (1, 28, 28), 1, 1)
    assert isinstance(first, Net) and first.body[0].out_channels == 3
    assert torch.equal(first.body[0].weight, again.body[0].weight)  # same seed, same initial weights
    assert not torch.equal(first.body[0].weight, other.body[0].weight)
    row = run_trial(trial_cfg("model=custom", "model._target_=tests.user_models.Net", "+model.width=3",
                              "attack=dlg", "attack.iterations=2", *GRAY))
    assert row["status"] == "ok" and row["iterations"] == 2


def test_a_head_that_does_not_fit_the_task_is_named(trial_cfg):
    cfg = trial_cfg("model=custom", "model._target_=tests.user_models.no_kwargs_builder", *GRAY)
    with pytest.raises(UserInputError, match=r"gives 3 logit\(s\) per image .* but the task needs 1"):
        instantiate_model(cfg.model, (1, 28, 28), 0, 1)


def test_harness_keys_a_builder_does_not_take_are_named(trial_cfg):
    cfg = trial_cfg("model=cnn6", "model._target_=tests.user_models.build", *GRAY)
    with pytest.raises(UserInputError, match=r"Unknown model option\(s\) model\.init, model\.init_std") as info:
        run_trial(cfg)
    assert "it takes no options (input_shape, seed, num_outputs are passed by the harness itself)" in str(info.value)


def test_a_plain_state_dict_loads_and_a_wrong_one_is_explained(trial_cfg, tmp_path):
    cfg = trial_cfg("model=custom", "model._target_=tests.user_models.Net", "+model.width=3", *GRAY)
    trained = Net(width=3)
    with torch.no_grad():
        trained.body[0].weight.fill_(0.25)
    torch.save(trained.state_dict(), tmp_path / "mine.pt")
    model, weights = build_model(cfg.model, (1, 28, 28), 0, 1, WeightsChoice(checkpoint=tmp_path / "mine.pt"))
    assert torch.equal(model.body[0].weight, trained.body[0].weight) and weights.weights_hash
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    build_model(cfg.model, (1, 28, 28), 0, 1, WeightsChoice(checkpoint=tmp_path / "wrapped.pt"))
    torch.save(Net(width=5).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(CheckpointMismatchError, match=r"body\.0\.weight \(5, 1, 3, 3\) vs \(3, 1, 3, 3\)"):
        build_model(cfg.model, (1, 28, 28), 0, 1, WeightsChoice(checkpoint=tmp_path / "wider.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserInputError, match="neither a checkpoint .* nor a plain state_dict"):
        build_model(cfg.model, (1, 28, 28), 0, 1, WeightsChoice(checkpoint=tmp_path / "list.pt"))


def test_client_mode_is_an_option_and_recorded(trial_cfg):
    row = run_trial(trial_cfg("model=lenet", *GRAY))
    assert row["client_mode"] == "eval"
    assert run_trial(trial_cfg("model=lenet", "client_mode=train", *GRAY))["client_mode"] == "train"
    with pytest.raises(UserInputError, match="client_mode='test' is not valid; valid choices: eval, train"):
        run_trial(trial_cfg("model=lenet", "client_mode=test", *GRAY))


def test_custom_model_from_the_command_line(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def build(input_shape, seed, num_outputs=1):\n"
        "    torch.manual_seed(seed)\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 50, bias=False), nn.Sigmoid(),\n"
        "                         nn.Linear(50, num_outputs, bias=False))\n")
    proc = subprocess.run([sys.executable, "-m", "runners.attack", "model=custom", "model._target_=mynet.build",
                           "model.name=mynet", *GRAY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "rgap | mynet | sample_gray[0] | ok" in proc.stdout
