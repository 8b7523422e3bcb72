"""The one-trial path: config -> data + model -> shared gradient -> attack -> metrics -> row + images."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rgap.algorithm.recursive import RGAP
from rgap.attack.losses import logistic_loss
from rgap.client.gradient import compute_shared_gradient
from rgap.core.errors import UserInputError
from rgap.harness.schema import ROW_COLUMNS
from rgap.harness.trial import run_trial, setup_trial
from rgap.zoo.models import cnn6


def read_row(path):
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert tuple(rows[0]) == ROW_COLUMNS
    return rows[0]


def test_default_trial_is_exact_and_writes_outputs(trial_cfg, tmp_path):
    row = run_trial(trial_cfg(), tmp_path)
    assert row["status"] == "ok"
    assert row["psnr"] >= 60.0  # float64 gradient of an untrained CNN6: closed form is exact
    assert row["lpips"] is None and "lpips" in row["metric_notes"]
    written = read_row(tmp_path / "row.csv")
    assert written["attack"] == "rgap" and written["model"] == "cnn6" and written["dataset"] == "sample"
    assert float(written["psnr"]) == pytest.approx(row["psnr"])
    assert written["lpips"] == ""
    assert json.loads(written["attack_info"])["rgap_root_rule"] == "unique"
    for name in ("origin.png", "reconstructed.png", "rescaled.png"):
        assert (tmp_path / name).stat().st_size > 0
    # R-GAP is given the labels the client trained on: they count as given, and as recovered.
    assert written["labels_given"] == "True" and float(written["label_acc"]) == 1.0
    assert written["labels"] == written["attack_labels"]
    # Closed form: a one-point trace that equals the row.
    with open(tmp_path / "trace.csv", newline="") as handle:
        trace = list(csv.DictReader(handle))
    assert len(trace) == 1
    assert float(trace[0]["time_s"]) == pytest.approx(row["time_s"])
    assert float(trace[0]["psnr"]) == pytest.approx(row["psnr"])


def test_trial_is_deterministic(trial_cfg):
    cfg = trial_cfg("index=-1", "seed=3", "model=lenet", "dataset=sample_gray")
    first, second = setup_trial(cfg), setup_trial(cfg)
    assert first.indices == second.indices
    assert torch.equal(first.images, second.images)
    for a, b in zip(first.shared.gradients, second.shared.gradients, strict=True):
        assert torch.equal(a, b)
    rows = [run_trial(cfg) for _ in range(2)]
    assert rows[0]["mse"] == rows[1]["mse"] and rows[0]["indices"] == rows[1]["indices"]


def test_reversed_label_is_opposite_of_prediction():
    model = cnn6((3, 32, 32), seed=1)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logit = float(model(images))
    shared = compute_shared_gradient(model, images, torch.tensor([1]), label_mode="reversed")
    assert int(shared.labels) == (0 if logit > 0 else 1)
    # and the shared gradient is the autograd gradient of the logistic loss with that label
    model = model.double()
    expected = torch.autograd.grad(logistic_loss(model(images.double()), shared.labels), list(model.parameters()))
    for got, want in zip(shared.gradients, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_float32_precision_is_what_the_client_shares(trial_cfg):
    trial = setup_trial(trial_cfg("precision=float32"))
    assert all(g.dtype == torch.float32 for g in trial.shared.gradients)
    row = run_trial(trial_cfg("precision=float32"))
    assert row["precision"] == "float32" and row["status"] == "ok"


def test_conv_net_with_batch_is_an_unsupported_row(trial_cfg, tmp_path):
    row = run_trial(trial_cfg("batch_size=2"), tmp_path)
    assert row["status"] == "unsupported"
    assert "batch_size=2" in row["reason"]
    written = read_row(tmp_path / "row.csv")
    assert written["status"] == "unsupported" and written["psnr"] == ""


def test_unsupported_layer_is_an_unsupported_row(trial_cfg, tmp_path):
    cfg = trial_cfg("+model.activation=relu", "model._target_=rgap.zoo.models.conv_net", "+model.convs=[[4,3,1,1]]")
    row = run_trial(cfg, tmp_path)
    assert row["status"] == "unsupported" and "ReLU" in row["reason"]


def test_crashing_attack_is_a_failed_row(trial_cfg, tmp_path, monkeypatch):
    def boom(self, shared, trace=None):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(RGAP, "reconstruct", boom)
    row = run_trial(trial_cfg(), tmp_path)
    assert row["status"] == "failed" and "solver exploded" in row["reason"]
    assert read_row(tmp_path / "row.csv")["status"] == "failed"


def test_fcn3_batch_is_one_combined_reconstruction(trial_cfg):
    row = run_trial(trial_cfg("model=fcn3", "dataset=sample_gray", "batch_size=5"))
    assert row["status"] == "ok" and row["scored_against"] == "batch_mean"
    assert row["indices"] == "0 1 2 3 4"


def test_reference_examples_compose(trial_cfg):
    """The seed README's three examples: -i 0; -m CNN6-d (random image); -m FCN3 -d MNIST -b 5."""
    assert trial_cfg("index=0").index == 0
    cfg = trial_cfg("model=cnn6d", "index=-1")
    assert cfg.model.name == "cnn6d"
    cfg = trial_cfg("model=fcn3", "dataset=mnist", "batch_size=5")
    assert cfg.dataset.name == "mnist" and cfg.batch_size == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("index=99",), "index=99"),
        (("batch_size=33",), "batch_size=33"),
        (("precision=float16",), "float64"),
        (("label=maybe",), "reversed"),
        (("dataset.num_classes=8",), "num_classes"),
        (("+model.bogus=1",), "model.bogus"),
    ],
)
def test_bad_input_is_a_user_error(trial_cfg, tmp_path, overrides, message):
    with pytest.raises(UserInputError, match=message):
        run_trial(trial_cfg(*overrides), tmp_path)
    assert not (tmp_path / "row.csv").exists()


@pytest.mark.parametrize("attack", ["dlg", "idlg", "ig", "hgap"])
def test_optimisation_attack_rows_and_traces(trial_cfg, tmp_path, attack):
    """Same trial path for every attack: the trace is monotone and its last point is the row."""
    # iDLG's default early stop (loss < 1e-6) would end this tiny-gradient run after its first step.
    no_stop = ["attack.early_stop=0"] if attack == "idlg" else []
    cfg = trial_cfg(f"attack={attack}", "model=lenet", "dataset=sample_gray", "attack.iterations=4", "trace_every=1",
                    "label=true", *no_stop)
    row = run_trial(cfg, tmp_path)
    assert row["status"] == "ok", row["reason"]
    assert row["iterations"] == 4
    with open(tmp_path / "trace.csv", newline="") as handle:
        trace = list(csv.DictReader(handle))
    times = [float(p["time_s"]) for p in trace]
    iterations = [int(p["iteration"]) for p in trace]
    assert times == sorted(times) and iterations == sorted(iterations)
    last = trace[-1]
    assert int(last["iteration"]) == row["iterations"]
    assert float(last["time_s"]) == pytest.approx(row["time_s"])
    assert float(last["grad_loss"]) == pytest.approx(row["final_loss"])
    assert float(last["mse"]) == pytest.approx(row["mse"]) and float(last["psnr"]) == pytest.approx(row["psnr"])
    assert row["time_s"] >= times[0]
    assert row["labels_given"] == (attack in ("ig", "hgap"))
    assert 0.0 <= row["label_acc"] <= 1.0


def test_idlg_multiclass_label_through_the_trial(trial_cfg):
    cfg = trial_cfg("attack=idlg", "model=lenet", "model.init=uniform", "model.init_std=0.5", "loss=cross_entropy",
                    "label=true", "dataset.num_classes=8", "attack.iterations=1", "index=9")
    row = run_trial(cfg)
    assert row["status"] == "ok" and row["label_acc"] == 1.0 and row["labels_given"] is False


def test_reversed_label_with_several_logits_is_the_least_likely_class(trial_cfg):
    trial = setup_trial(trial_cfg("loss=cross_entropy", "dataset.num_classes=8", "model=lenet", "index=3"))
    with torch.no_grad():
        logits = trial.shared.model(trial.images.to(torch.float64))
    assert trial.shared.model[-1].out_features == 8
    assert int(trial.shared.labels[0]) == int(logits.argmin())


@pytest.mark.parametrize(("overrides", "message"), [
    (("loss=logistic", "model.num_classes=10"), "model.num_classes=10"),
    (("loss=cross_entropy", "model.num_classes=1"), "too small"),
    (("loss=hinge",), "loss='hinge'"),
    (("dataset.num_classes=8",), "dataset.num_classes=8"),
])
def test_bad_head_configs_are_user_errors(trial_cfg, overrides, message):
    with pytest.raises(UserInputError, match=message):
        setup_trial(trial_cfg(*overrides))


def test_auto_loss_follows_model_num_classes(trial_cfg):
    trial = setup_trial(trial_cfg("model=lenet", "model.num_classes=10", "model.bias=true"))
    assert trial.shared.loss == "cross_entropy" and trial.shared.model[-1].out_features == 10
    assert trial.shared.model[-1].bias is not None
    assert setup_trial(trial_cfg("model=lenet")).shared.loss == "logistic"
