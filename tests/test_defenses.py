"""Defenses change the shared gradient exactly as specified, are seeded, and are recorded in the row."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rgap.attack import SharedGradient
from rgap.attack.losses import cross_entropy_loss
from rgap.client.defenses import DPSGD, GaussianNoise, GradientPruning, LaplaceNoise, NoDefense, defense_generator
from rgap.client.gradient import per_example_gradients
from rgap.core.errors import UserInputError
from rgap.harness.trial import run_trial, setup_trial


def _shared(n: int = 200_000, scale: float = 1.0) -> SharedGradient:
    grads = [scale * torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64),
             scale * torch.randn(30, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)]
    return SharedGradient(nn.Linear(1, 1), grads, None, "logistic", (1, 1, 1), 1)


def test_only_dpsgd_asks_the_client_for_per_example_gradients() -> None:
    assert DPSGD.needs_per_example
    assert not any(d.needs_per_example for d in (NoDefense, GaussianNoise, LaplaceNoise, GradientPruning))


def test_gaussian_noise_statistics() -> None:
    shared = _shared()
    out = GaussianNoise(scale=0.3).defend(shared.gradients, None, defense_generator(0))
    noise = out[0] - shared.gradients[0]
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.std()) == pytest.approx(0.3, rel=0.01)
    assert float(((noise / 0.3) ** 4).mean()) == pytest.approx(3.0, rel=0.05)  # Gaussian kurtosis
    assert out[0].dtype == torch.float64 and shared.gradients[0] is not out[0]


def test_laplace_noise_statistics() -> None:
    shared = _shared()
    out = LaplaceNoise(scale=0.2).defend(shared.gradients, None, defense_generator(0))
    noise = out[0] - shared.gradients[0]
    assert float(noise.std()) == pytest.approx(0.2 * 2**0.5, rel=0.01)
    assert float(noise.abs().mean()) == pytest.approx(0.2, rel=0.01)  # E|X| = b for Laplace(0, b)
    assert float(((noise / noise.std()) ** 4).mean()) == pytest.approx(6.0, rel=0.1)  # Laplace kurtosis


def test_relative_noise_scales_with_each_tensor() -> None:
    for scale in (1e-3, 10.0):
        shared = _shared(scale=scale)
        out = GaussianNoise(scale=0.5, relative=True).defend(shared.gradients, None, defense_generator(0))
        for clean, noisy in zip(shared.gradients, out, strict=True):
            rms = float(clean.pow(2).mean().sqrt())
            assert float((noisy - clean).std()) == pytest.approx(0.5 * rms, rel=0.1)


def test_noise_is_seeded() -> None:
    shared = _shared(n=1000)
    first = GaussianNoise(scale=1.0).defend(shared.gradients, None, defense_generator(3))
    again = GaussianNoise(scale=1.0).defend(shared.gradients, None, defense_generator(3))
    other = GaussianNoise(scale=1.0).defend(shared.gradients, None, defense_generator(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9])
def test_pruning_zeroes_the_smallest_fraction_per_tensor(ratio: float) -> None:
    shared = _shared(n=1001)
    out = GradientPruning(prune_ratio=ratio).defend(shared.gradients, None, defense_generator(0))
    for clean, pruned in zip(shared.gradients, out, strict=True):
        dropped = int(ratio * clean.numel())
        assert int((pruned == 0).sum()) == dropped
        kept = pruned != 0
        assert torch.equal(pruned[kept], clean[kept])  # survivors unchanged
        if dropped:
            assert float(clean[kept].abs().min()) >= float(clean[~kept].abs().max())


def _batch_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 4, dtype=torch.float64)
    return model, x, torch.tensor([0, 2, 1, 2])


def _independent_per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    out = []
    for i in range(x.shape[0]):
        model.zero_grad()
        cross_entropy_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.clone() for p in model.parameters()])
    return out


def _dp_shared(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SharedGradient:
    grads = torch.autograd.grad(cross_entropy_loss(model(x), y), list(model.parameters()))
    return SharedGradient(model, list(grads), y, "cross_entropy", (1, 3, 4), x.shape[0])


def test_per_example_gradients_match_autograd() -> None:
    model, x, y = _batch_model()
    mine = per_example_gradients(model, x, y, "cross_entropy")
    for a, b in zip(mine, _independent_per_example(model, x, y), strict=True):
        assert all(torch.allclose(g, h) for g, h in zip(a, b, strict=True))


def test_dpsgd_clips_each_example_then_averages() -> None:
    model, x, y = _batch_model()
    shared = _dp_shared(model, x, y)
    examples = _independent_per_example(model, x, y)
    norms = [float(torch.sqrt(sum(g.pow(2).sum() for g in ex))) for ex in examples]
    clip = sorted(norms)[1]  # clips some examples, not others
    out = DPSGD(clip_norm=clip, noise_multiplier=0.0).defend(shared.gradients, examples, defense_generator(0))
    expected = [sum(ex[j] * min(1.0, clip / n) for ex, n in zip(examples, norms, strict=True)) / len(examples)
                for j in range(len(shared.gradients))]
    assert all(torch.allclose(a, b) for a, b in zip(out, expected, strict=True))
    # clipping inactive and no noise: the undefended mean gradient
    loose = DPSGD(clip_norm=1e9, noise_multiplier=0.0).defend(shared.gradients, examples, defense_generator(0))
    assert all(torch.allclose(a, b) for a, b in zip(loose, shared.gradients, strict=True))


def test_dpsgd_noise_std() -> None:
    grads = [torch.zeros(100_000, dtype=torch.float64)]
    shared = SharedGradient(nn.Linear(1, 1), grads, None, "logistic", (1, 1, 1), 4)
    examples = [[torch.zeros(100_000, dtype=torch.float64)] for _ in range(4)]
    out = DPSGD(clip_norm=2.0, noise_multiplier=1.5).defend(shared.gradients, examples, defense_generator(0))
    assert float(out[0].std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.01)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: GaussianNoise(scale=-1.0), "scale=-1.0"),
    (lambda: LaplaceNoise(scale=float("nan")), "scale=nan"),
    (lambda: GradientPruning(prune_ratio=1.0), "prune_ratio=1.0"),
    (lambda: DPSGD(clip_norm=0.0), "clip_norm=0"),
    (lambda: DPSGD(noise_multiplier=-2.0), "noise_multiplier=-2.0"),
])
def test_bad_parameters_are_user_errors(make, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        make()


def test_none_is_the_identity() -> None:
    shared = _shared(n=10)
    assert NoDefense().defend(shared.gradients, None, defense_generator(0)) is shared.gradients


def test_trial_records_and_applies_the_defense(trial_cfg) -> None:
    base = ("model=lenet", "dataset=sample_gray", "seed=1")
    clean = setup_trial(trial_cfg(*base)).shared.gradients
    pruned = setup_trial(trial_cfg(*base, "defense=prune", "defense.prune_ratio=0.5")).shared.gradients
    for c, p in zip(clean, pruned, strict=True):
        assert int((p == 0).sum()) == int(0.5 * c.numel())
    row = run_trial(trial_cfg(*base, "defense=gaussian", "defense.scale=0.01", "defense.relative=true"))
    assert row["defense"] == "gaussian"
    assert json.loads(row["defense_params"]) == {"relative": True, "scale": 0.01}
    assert row["status"] == "ok" and row["psnr"] < 30  # R-GAP is not exact on a noisy gradient
    again = run_trial(trial_cfg(*base, "defense=gaussian", "defense.scale=0.01", "defense.relative=true"))
    assert again["mse"] == row["mse"]


def test_dpsgd_through_the_trial_on_a_batch(trial_cfg) -> None:
    row = run_trial(trial_cfg("model=fcn3", "dataset=sample_gray", "batch_size=3", "defense=dpsgd",
                              "defense.clip_norm=0.1", "defense.noise_multiplier=0.0"))
    assert row["defense"] == "dpsgd" and row["status"] == "ok"
