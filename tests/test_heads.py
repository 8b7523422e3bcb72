"""R-GAP beyond the paper: biases, multi-class softmax heads, recovered labels, and clear refusals.

Every reconstruction is compared with the original input of a random small network (the independent
reference), and every recovered label with the label the gradient was computed with.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rgap.algorithm.rank import rank_analysis
from rgap.algorithm.recursive import RGAP
from rgap.attack import SharedGradient
from rgap.attack.losses import get_loss
from rgap.client.gradient import compute_shared_gradient
from rgap.core.errors import UnsupportedError, UnsupportedInputError, UnsupportedLayerError
from rgap.harness.trial import run_trial
from rgap.zoo.models import conv_net, fcn3

DTYPE = torch.float64
SHAPE = (2, 6, 6)


def _net(bias: bool, outputs: int, activation: str = "leaky_relu", seed: int = 0) -> nn.Sequential:
    """conv 2->4 -> conv 4->8 (3x3, padding 1) -> fc 16 -> fc ``outputs``: every layer full rank."""
    return conv_net(SHAPE, [(4, 3, 1, 1), (8, 3, 1, 1)], hidden=[16], activation=activation, num_outputs=outputs,
                    seed=seed, bias=bias, init="uniform", init_std=0.5).to(DTYPE)


def _shared(model: nn.Module, x: torch.Tensor, label: int, loss: str) -> SharedGradient:
    labels = torch.tensor([label])
    value = get_loss(loss)(model(x), labels)
    grads = [g.detach() for g in torch.autograd.grad(value, list(model.parameters()))]
    return SharedGradient(model, grads, labels, loss, tuple(x.shape[1:]), x.shape[0])


def _input(seed: int, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.rand(1, *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


CASES = [  # bias, logits, loss, activation
    pytest.param(True, 1, "logistic", "leaky_relu", id="bias-logistic"),
    pytest.param(True, 1, "logistic", "sigmoid", id="bias-logistic-sigmoid"),
    pytest.param(True, 5, "cross_entropy", "leaky_relu", id="bias-softmax5"),
    pytest.param(False, 5, "cross_entropy", "leaky_relu", id="nobias-softmax5"),
    pytest.param(False, 3, "cross_entropy", "sigmoid", id="nobias-softmax3-sigmoid"),
]


@pytest.mark.parametrize(("bias", "outputs", "loss", "activation"), CASES)
@pytest.mark.parametrize("labels", ["given", "infer"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_reconstruction_and_label(bias: bool, outputs: int, loss: str, activation: str, labels: str,
                                        seed: int) -> None:
    model = _net(bias, outputs, activation, seed)
    x = _input(seed)
    label = seed % outputs if outputs > 1 else 1 - seed % 2
    result = RGAP(labels=labels).reconstruct(_shared(model, x, label, loss))
    assert (result.reconstruction - x).abs().max() < 1e-6
    assert result.labels is not None and result.labels.tolist() == [label]
    assert result.labels_given == (labels == "given")
    if labels == "infer":
        assert result.info["rgap_label_ambiguous"] is False
    assert result.info["rgap_head"] == ("bias" if bias else "softmax-root" if outputs > 1 else "logistic-root")


def test_binary_label_recovered_or_flagged() -> None:
    """Bias-free single logit, label unknown: both signs are tried; a label is right or flagged ambiguous.

    Where two readings reproduce the gradient equally well (the positively scaled "twins" of a LeakyReLU
    network), the box prior picks one and says so; otherwise the reconstruction is exact.
    """
    unambiguous = 0
    for seed in range(8):
        model = _net(False, 1, seed=seed)
        x = _input(seed)
        label = seed % 2
        result = RGAP(labels="infer").reconstruct(_shared(model, x, label, "logistic"))
        if result.info["rgap_label_ambiguous"]:
            continue
        unambiguous += 1
        assert result.labels.tolist() == [label], seed
        if result.info["rgap_root_rule"] != "box-prior":
            assert (result.reconstruction - x).abs().max() < 1e-6, seed
    assert unambiguous >= 6


def test_fully_connected_bias_gives_k_directly() -> None:
    """FCN3 with biases: every layer's k is its bias gradient; exact on a batch of one, labels recovered."""
    torch.manual_seed(0)
    model = fcn3((1, 5, 5), bias=True, num_classes=4, seed=3).to(DTYPE)
    x = _input(4, (1, 5, 5))
    result = RGAP(labels="infer").reconstruct(_shared(model, x, 2, "cross_entropy"))
    assert (result.reconstruction - x).abs().max() < 1e-8
    assert result.labels.tolist() == [2]
    assert "fc2" in result.info["rgap_layers"]


def test_bias_rank_analysis_reports_bias_counts() -> None:
    rows = rank_analysis(_net(True, 5), SHAPE)
    assert [r.b for r in rows] == [4, 8, 16, 5]
    assert all(r.deficiency == 0 for r in rows)
    assert rows[-1].note == "k read from the bias gradient"


def test_multiclass_head_with_activation_needs_bias() -> None:
    model = fcn3((1, 4, 4), num_classes=3).to(DTYPE)  # LeakyReLU after the logits, no bias
    with pytest.raises(UnsupportedLayerError, match="leaky_relu"):
        RGAP().reconstruct(_shared(model, _input(0, (1, 4, 4)), 1, "cross_entropy"))


def test_multiclass_batch_without_bias_is_unsupported() -> None:
    model = _net(False, 3)
    x = torch.cat([_input(0), _input(1)])
    labels = torch.tensor([0, 2])
    grads = torch.autograd.grad(get_loss("cross_entropy")(model(x), labels), list(model.parameters()))
    shared = SharedGradient(model, list(grads), labels, "cross_entropy", SHAPE, 2)
    with pytest.raises(UnsupportedInputError, match="batch_size=2"):
        RGAP().reconstruct(shared)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(72, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.conv(x))


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 1)), r"layer 1 \(ReLU\(\)\).*negative"),
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 1)), r"layer 1 \(MaxPool2d.*pool"),
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 1)), r"BatchNorm2d.*statistics"),
    (_Residual(), "residual"),
])
def test_unsupported_layers_are_named_and_still_counted(model: nn.Module, message: str) -> None:
    model = model.to(DTYPE)
    shared = _shared(model, _input(0), 1, "logistic")
    with pytest.raises(UnsupportedLayerError, match=message) as excinfo:
        RGAP().reconstruct(shared)
    assert isinstance(excinfo.value, UnsupportedError)
    rows = rank_analysis(model, SHAPE)
    weights = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [r.w for r in rows] == [m.weight.numel() for m in weights]
    assert all(r.predicted == "unsupported" and r.rank is None for r in rows)


def test_reversed_multiclass_label_is_least_likely_class() -> None:
    model = _net(True, 5)
    x = _input(7)
    shared = compute_shared_gradient(model, x.float(), torch.tensor([0]), loss="cross_entropy",
                                     label_mode="reversed")
    assert shared.labels.tolist() == [int(model(x).argmin())]


def test_multiclass_bias_trial_end_to_end(trial_cfg) -> None:
    """What a new user runs: model.bias=true model.num_classes=10 (loss auto -> cross-entropy), label recovered."""
    cfg = trial_cfg("model=lenet", "model.bias=true", "model.num_classes=10", "dataset=sample_gray",
                    "attack.labels=infer", "metrics.lpips=false")
    row = run_trial(cfg)
    assert row["status"] == "ok" and row["loss"] == "cross_entropy"
    assert row["label_acc"] == 1.0 and row["labels_given"] is False
    assert row["psnr"] > 100
