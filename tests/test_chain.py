"""Reading models into R-GAP stages (rgap.algorithm.network, rgap.algorithm.chainops): nesting, modes, and every
problem at once."""

from __future__ import annotations

import pytest
import torch
from stage_reference import DTYPE, random_bn
from torch import nn

from rgap.algorithm.chainops import register_chain_op
from rgap.algorithm.network import UnsupportedModelError, parse_stages, read_stages
from rgap.algorithm.rank import rank_analysis
from rgap.algorithm.recursive import RGAP
from rgap.attack import SharedGradient
from rgap.attack.losses import logistic_loss
from rgap.core.errors import UnsupportedError, UnsupportedLayerError, UserInputError

SHAPE = (2, 6, 6)


def _attack(model: nn.Module) -> None:
    model = model.to(DTYPE)
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    labels = torch.zeros(1, dtype=DTYPE)
    grads = torch.autograd.grad(logistic_loss(model(x), labels), list(model.parameters()))
    RGAP().reconstruct(SharedGradient(model, list(grads), labels, "logistic", SHAPE, 1))


def _everything_unsupported() -> nn.Sequential:
    """Train-mode batch norm and dropout, ReLU and max pooling, in a model left in training mode."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 1, bias=False),
    ).to(DTYPE)


def test_every_problem_is_reported_at_once() -> None:
    model = _everything_unsupported().train()
    with pytest.raises(UnsupportedModelError) as excinfo:
        parse_stages(model, SHAPE)
    error = excinfo.value
    assert isinstance(error, UnsupportedLayerError) and isinstance(error, UnsupportedError)
    wheres = [p.where.split(" (")[0] for p in error.problems]
    assert wheres == ["layer 1", "layer 2", "layer 3", "layer 4"]
    reasons = [p.reason for p in error.problems]
    assert "training mode" in reasons[0] and "statistics" in reasons[0]
    assert "negative" in reasons[1]
    assert "mask" in reasons[2]
    assert "max pooling" in reasons[3]
    message = str(error)
    assert message.startswith("R-GAP cannot invert this model (4 problems): (1) layer 1 (BatchNorm2d(4")
    assert all(f"({i}) layer {i}" in message for i in range(1, 5)) and "Supported:" in message


def test_eval_mode_leaves_only_the_mode_independent_problems() -> None:
    model = _everything_unsupported().eval()
    with pytest.raises(UnsupportedModelError) as excinfo:
        parse_stages(model, SHAPE)
    assert [p.where.split(" (")[0] for p in excinfo.value.problems] == ["layer 2", "layer 4"]


@pytest.mark.parametrize(("module", "train", "message"), [
    (nn.BatchNorm2d(4), True, r"layer 1 \(BatchNorm2d.*training mode.*couple the samples"),
    (nn.Dropout(0.3), True, r"layer 1 \(Dropout.*mask the attacker does not know"),
    (nn.ReLU(), False, r"layer 1 \(ReLU\(\)\).*negative"),
    (nn.MaxPool2d(3, stride=1, padding=1), False, r"layer 1 \(MaxPool2d.*discards"),
])
def test_rgap_names_each_unsupported_layer(module: nn.Module, train: bool, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), module, nn.LeakyReLU(0.2), nn.Flatten(),
                          nn.Linear(144, 1, bias=False)).to(DTYPE).train(train)
    with pytest.raises(UnsupportedLayerError, match=message):
        _attack(model)


def test_batch_norm_without_running_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.Flatten(), nn.Linear(64, 1)).eval()
    with pytest.raises(UnsupportedLayerError, match="track_running_stats=False"):
        parse_stages(model, SHAPE)


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.fc = nn.Linear(48, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(72, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).flatten(1))


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(72, 1))


class _UnusedForward(_Unused):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Tuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(72, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        return self.body(x), tuple(x.shape)


@pytest.mark.parametrize(("model", "message"), [
    (_Functional(), r"layer 1 `fc`.*not the output of layer 0.*not a module"),
    (_Twice(), r"`conv`.*runs more than once"),
    (_UnusedForward(), r"parameters scale belong to no layer"),
    (_Tuple(), r"the model: its output is not the output of layer 1"),
])
def test_models_that_are_no_chain(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message):
        parse_stages(model.to(DTYPE), SHAPE)


@pytest.mark.parametrize(("modules", "message"), [
    ([nn.Conv2d(2, 3, 3, bias=False), nn.Flatten(), random_bn(48, 1, True, torch.Generator().manual_seed(0)),
      nn.LeakyReLU(0.2), nn.Linear(48, 1)], r"layer 2 \(BatchNorm1d.*per feature, not per output channel"),
    ([nn.Conv2d(2, 4, 3, bias=False), nn.AvgPool2d(2), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16, 1)],
     r"layer 2 \(LeakyReLU.*follows a pooling or batch-norm layer"),
    ([nn.Flatten(), nn.Linear(72, 4), nn.LeakyReLU(0.2), nn.Linear(4, 1), nn.Sigmoid(), nn.BatchNorm1d(1)],
     r"layer 5 \(BatchNorm1d.*follows the output layer"),
    ([nn.Flatten(), nn.Linear(72, 4), nn.LeakyReLU(0.0), nn.Linear(4, 1)], r"layer 2 \(LeakyReLU.*slope"),
])
def test_misplaced_layers(modules: list[nn.Module], message: str) -> None:
    model = nn.Sequential(*modules).to(DTYPE).eval()
    with pytest.raises(UnsupportedLayerError, match=message):
        parse_stages(model, SHAPE)


def test_pool_between_two_layers_without_activation_is_composed_upwards() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 1)).eval()
    conv, fc = parse_stages(model, SHAPE)
    assert conv.activation.name == "identity" and conv.output_shape == (4, 4, 4)
    assert fc.input_shape == (4, 4, 4) and fc.layer_input_shape == (16,) and fc.rank_bound == 16


def test_batch_norm_after_the_output_layer_is_ranked_but_not_attacked() -> None:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 6, bias=False), nn.LeakyReLU(0.2), nn.Linear(6, 1, bias=False),
                          random_bn(1, 1, True, gen)).to(DTYPE).eval()
    assert parse_stages(model, SHAPE)[-1].post
    assert [r.predicted for r in rank_analysis(model, SHAPE)] == ["determined", "determined"]
    with pytest.raises(UnsupportedLayerError, match="batch norm after the output layer"):
        _attack(model)


def test_nested_names_positions_and_pass_throughs() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.ModuleList([nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Identity()])
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for module in self.features:
                x = module(x)
            return self.classifier(x)

    model = Net().eval()
    with pytest.raises(UnsupportedLayerError, match=r"R-GAP cannot invert layer 1 `features.1` \(ReLU\(\)\)"):
        parse_stages(model, SHAPE)
    model.features[1] = nn.LeakyReLU(0.2)
    stages = parse_stages(model, SHAPE)
    assert [(s.name, s.position, s.input_shape, s.output_shape) for s in stages] == [
        ("conv1", 0, (2, 6, 6), (4, 6, 6)), ("fc1", 5, (144,), (1,))]
    assert stages[1].k_rule == "bias"


def test_trace_leaves_the_model_and_random_state_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(64, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reading = read_stages(model, SHAPE)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [p.where.split(" (")[0] for p in reading.problems] == ["layer 1", "layer 3"]
    assert [s.name for s in reading.stages] == ["conv1", "fc1"]  # partial stages, for the counts


def test_model_that_cannot_run_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match=r"cannot run on inputs of shape \(2, 6, 6\)"):
        parse_stages(nn.Sequential(nn.Flatten(), nn.Linear(5, 1)), SHAPE)


def test_chain_op_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_chain_op(nn.Identity)(lambda module, i, o: None)


def test_count_only_on_a_nested_train_mode_model() -> None:
    """A nested model in training mode: unsupported, counted per stage (pool composed), every problem in the note."""
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([
                nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)),
                nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.LeakyReLU(0.2)),
            ])
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(54, 1, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = Net().train()
    rows = rank_analysis(model, SHAPE)
    assert [(r.layer, r.x, r.w, r.z, r.rank_bound) for r in rows] == [
        ("conv1", 72, 72, 144, None), ("conv2", 144, 216, 54, 36), ("fc1", 54, 54, 1, None)]
    assert all(r.predicted == "unsupported" and r.rank is None for r in rows)
    assert "`blocks.0.1`" in rows[0].note and "`head.1`" in rows[0].note and "2 problems" in rows[0].note
    eval_rows = rank_analysis(model.eval(), SHAPE)
    assert [r.predicted for r in eval_rows] == ["determined", "deficient", "determined"]
    assert eval_rows[0].note == "bn folded (output)" and eval_rows[1].note.startswith("avgpool 2x2 composed")


def test_trace_runs_one_sample_or_two() -> None:
    """A forward that hard-codes one sample runs; training-mode BatchNorm1d (needs two samples) is still read."""
    class OneSample(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(72, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.view(1, -1))

    assert [s.name for s in parse_stages(OneSample(), SHAPE)] == ["fc1"]
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 4), nn.BatchNorm1d(4), nn.LeakyReLU(0.2), nn.Linear(4, 1))
    reading = read_stages(model.train(), SHAPE)
    assert [p.where.split(" (")[0] for p in reading.problems] == ["layer 2"]
    assert "training mode" in reading.problems[0].reason
