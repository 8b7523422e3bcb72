"""DLG, iDLG and the R-GAP/DLG hybrid on tiny networks with noise-free float64 gradients.

PSNR bar (``PSNR_BAR = 40`` dB, on unclamped images in [0, 1]): 40 dB is an RMS error of 0.01, about 2.5
grey levels of an 8-bit image, at which a reconstruction is visually indistinguishable from the original
(8-bit quantisation alone sits at about 59 dB). Measured on the nets below, DLG and iDLG converge to
52-86 dB (cross-entropy, 4 classes) and 54-63 dB (one logistic logit) within 10-20 L-BFGS steps and then
stop moving: L-BFGS's own stopping tests (tolerance_change 1e-9 on the loss, tolerance_grad 1e-7) end each
step once the gradient loss is ~1e-9, so the floor is set by those tolerances, not by float64 round-off
(R-GAP's exact solve reaches ~300 dB on the same kind of net). A failed reconstruction of these nets is at
5-20 dB, far below the bar.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from baselines.dlg import DLG, IDLG, early_stop_interval, infer_labels
from baselines.hgap import HGAP
from rgap.algorithm.recursive import RGAP
from rgap.attack import SharedGradient, TraceRecorder
from rgap.client.gradient import compute_shared_gradient
from rgap.core.config import instantiate_group
from rgap.core.errors import UnsupportedInputError, UserInputError
from rgap.harness.trial import run_trial
from rgap.zoo.models import conv_net
from tests.conftest import CONF_DIR

PSNR_BAR = 40.0
SIGMOID_CONVS = [(4, 3, 2, 1), (4, 3, 1, 1)]


def psnr(recon: torch.Tensor, original: torch.Tensor) -> float:
    """PSNR (dB, data range 1) of an unclamped reconstruction."""
    mse = float(((recon.detach().cpu().double() - original.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def sigmoid_net(seed: int, num_outputs: int):
    return conv_net((1, 8, 8), convs=SIGMOID_CONVS, activation="sigmoid", num_outputs=num_outputs,
                    init="uniform", init_std=0.5, seed=seed)


def image(seed: int, shape: tuple[int, ...] = (1, 1, 8, 8)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def ce_case(seed: int, num_outputs: int = 4, batch: int = 1, labels: list[int] | None = None
            ) -> tuple[torch.Tensor, SharedGradient]:
    x = image(100 + seed, (batch, 1, 8, 8))
    y = torch.tensor(labels if labels is not None else [seed % num_outputs])
    return x, compute_shared_gradient(sigmoid_net(seed, num_outputs), x, y, loss="cross_entropy")


def test_dlg_recovers_input_and_label():
    x, shared = ce_case(2)
    result = DLG(iterations=20, dtype="float64").reconstruct(shared)
    assert psnr(result.reconstruction, x) > PSNR_BAR  # measured 69 dB
    assert result.reconstruction.dtype == torch.float64
    assert result.labels.tolist() == shared.labels.tolist() and not result.labels_given
    assert result.iterations == 20 and result.final_loss < 1e-6 and not result.info["diverged"]


def test_idlg_recovers_input_cross_entropy():
    x, shared = ce_case(2)
    result = IDLG(iterations=20, dtype="float64").reconstruct(shared)
    assert psnr(result.reconstruction, x) > PSNR_BAR  # measured 73 dB
    assert result.labels.tolist() == shared.labels.tolist() and not result.labels_given
    assert result.info["label_features_nonnegative"] is True


def test_idlg_recovers_input_logistic():
    x = image(501)
    shared = compute_shared_gradient(sigmoid_net(1, 1), x, torch.tensor([1]), loss="logistic")
    # early_stop=0: this single-logit net's gradient loss is below iDLG's 1e-6 after the first step already
    # (the default stop ends the run there, at 33 dB); the test is about where L-BFGS converges.
    result = IDLG(iterations=20, dtype="float64", early_stop=0.0).reconstruct(shared)
    assert psnr(result.reconstruction, x) > PSNR_BAR  # measured 63 dB
    assert result.labels.tolist() == [1]
    assert result.info["label_rule"].startswith("logistic")


def test_idlg_labels_right_where_dlg_gets_some_wrong():
    """20 single-image cases, 10 classes: iDLG's rule is always right; 5 steps of joint DLG are not (18/20)."""
    idlg_right = dlg_right = 0
    for seed in range(20):
        _, shared = ce_case(seed, num_outputs=10)
        truth = shared.labels.tolist()
        idlg_right += infer_labels(shared)[0].tolist() == truth
        dlg_right += DLG(iterations=5, dtype="float64", seed=seed).reconstruct(shared).labels.tolist() == truth
    assert idlg_right == 20
    assert dlg_right < 20  # measured 18 (the premise: DLG's joint label optimisation can end on a wrong class)


def test_logistic_label_rule_matches_true_label():
    """The derived sign rule (negative weight-gradient sum -> 1) on random sigmoid single-logit nets."""
    seen = []
    for seed in range(20):
        model = sigmoid_net(seed, 1)
        for mode in ("true", "reversed"):
            shared = compute_shared_gradient(model, image(500 + seed), torch.tensor([seed % 2]), loss="logistic",
                                             label_mode=mode)
            labels, info = infer_labels(shared)
            assert labels.tolist() == shared.labels.tolist(), (seed, mode)
            seen.append(int(shared.labels))
    assert set(seen) == {0, 1}
    assert info["label_features_nonnegative"] is True


def test_batch_labels_multiset_and_logistic_batch_unsupported():
    """Batches of distinct labels: right as a multiset for B=2 (measured 20/20 seeds; B=3: 18/20)."""
    for seed in range(10):
        labels = torch.randperm(10, generator=torch.Generator().manual_seed(seed))[:2].tolist()
        _, shared = ce_case(seed, num_outputs=10, batch=2, labels=labels)
        recovered, info = infer_labels(shared)
        assert recovered.tolist() == sorted(labels)  # sorted: which image has which label is not identifiable
        assert "multiset" in info["label_rule"] and info["label_negative_rows"] == 2
    # Where it fails: another image's p_c outweighs class 5's own p - 1 term, so only 2 row sums are
    # negative and the third label is the least positive row (a guess, flagged by label_negative_rows < B).
    _, shared = ce_case(3, num_outputs=10, batch=3, labels=[7, 2, 5])
    recovered, info = infer_labels(shared)
    assert recovered.tolist() == [2, 4, 7] and info["label_negative_rows"] == 2
    x = image(7, (2, 1, 8, 8))
    shared = compute_shared_gradient(sigmoid_net(0, 1), x, torch.tensor([0, 1]), loss="logistic")
    with pytest.raises(UnsupportedInputError, match="one image"):
        IDLG(iterations=1).reconstruct(shared)


@pytest.mark.parametrize("make", [lambda: DLG(iterations=7, dtype="float64"),
                                  lambda: IDLG(iterations=7, dtype="float64"),
                                  lambda: HGAP(iterations=7, dtype="float64")])
def test_trace_points(make):
    if make().name == "hgap":
        x, shared = leaky_case(0)
    else:
        x, shared = ce_case(0)
    trace = TraceRecorder(every=2, score=lambda r: (0.0, psnr(r, x)))
    result = make().reconstruct(shared, trace)
    iterations = [p.iteration for p in trace.points]
    times = [p.time_s for p in trace.points]
    assert iterations == sorted(set(iterations)) and times == sorted(times)
    assert trace.points[-1].iteration == result.iterations
    assert trace.points[-1].grad_loss == result.final_loss


def test_determinism_and_seed():
    _, shared = ce_case(1)
    first = DLG(iterations=3, seed=0).reconstruct(shared)
    again = DLG(iterations=3, seed=0).reconstruct(shared)
    other = DLG(iterations=3, seed=1).reconstruct(shared)
    assert torch.equal(first.reconstruction, again.reconstruction)
    assert not torch.equal(first.reconstruction, other.reconstruction)
    assert first.reconstruction.dtype == torch.float64


def idlg_code_loop(shared: SharedGradient, iterations: int, threshold: float) -> tuple[int, torch.Tensor]:
    """iDLG.py's loop written out independently: L-BFGS step, then the loss at the new iterate; at 0-based
    steps that are multiples of ``int(iterations / 30)`` the run ends if that loss is below ``threshold``.
    Same dummy draw as ``IDLG(seed=0, dtype='float64')``; returns (steps run, final dummy)."""
    model = copy.deepcopy(shared.model).double()
    targets = [g.double() for g in shared.gradients]
    label = infer_labels(shared)[0]
    x = torch.randn(shared.batch_size, *shared.input_shape, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        grads = torch.autograd.grad(F.cross_entropy(model(x), label), list(model.parameters()), create_graph=True)
        diff = sum(((g - t) ** 2).sum() for g, t in zip(grads, targets, strict=True))
        diff.backward()
        return diff

    for step in range(iterations):
        optimizer.step(closure)
        current = closure().item()
        if step % int(iterations / 30) == 0 and current < threshold:
            break
    return step + 1, x.detach()


def test_early_stop_follows_idlg_code():
    """90 steps (checks after steps 1, 4, 7, ...), threshold 1e-4. Measured losses after steps 1-4: 3.8e-4,
    8.7e-6, 1.3e-7, 6.5e-10: a check after every step would stop after step 2, a check of the loss L-BFGS
    returns (the loss *before* the step) after step 3; iDLG's rule stops after step 4."""
    _, shared = ce_case(2)
    steps, x = idlg_code_loop(shared, 90, 1e-4)
    assert steps == 4
    result = IDLG(iterations=90, early_stop=1e-4, dtype="float64").reconstruct(shared)
    assert result.iterations == steps and result.info["stopped_early"]
    assert torch.allclose(result.reconstruction, x, rtol=0, atol=1e-12)
    assert result.final_loss < 1e-4
    # Without the early stop the same run goes on to the end.
    full = IDLG(iterations=90, early_stop=0.0, dtype="float64").reconstruct(shared)
    assert full.iterations == 90 and not full.info["stopped_early"]


def test_early_stop_defaults_follow_each_code():
    assert DLG().early_stop == 0.0  # DLG's main.py never stops early
    assert IDLG().early_stop == 1e-6  # iDLG.py: loss < 0.000001, checked every Iteration/30 steps
    assert HGAP().early_stop == 0.0
    assert early_stop_interval(300) == 10 and early_stop_interval(20) == 1


@pytest.mark.parametrize("cls", [DLG, IDLG, HGAP])
@pytest.mark.parametrize(("key", "bad"), [
    ("early_stop", -1e-6), ("early_stop", float("nan")), ("early_stop", float("inf")), ("early_stop", "1e-6"),
    ("early_stop", True), ("iterations", 0), ("iterations", -5), ("iterations", 2.5), ("iterations", "300"),
    ("lr", float("nan")), ("lr", 0.0), ("lr", -1.0), ("history_size", 0), ("max_iter", 0),
    ("dtype", "float16"),
])
def test_bad_options_are_one_paragraph_user_errors(cls, key, bad):
    with pytest.raises(UserInputError) as info:
        cls(**{key: bad})
    message = str(info.value)
    assert f"attack.{key}={bad!r}" in message and "\n" not in message


@pytest.mark.parametrize(("key", "bad"), [("init", "zeros"), ("seed", 1.5), ("seed", "0")])
def test_bad_dummy_options(key, bad):
    for cls in (DLG, IDLG):
        with pytest.raises(UserInputError, match=f"attack.{key}="):
            cls(**{key: bad})


def test_nan_gradient_diverges_without_crashing():
    _, shared = ce_case(0)
    shared.gradients[0] = torch.full_like(shared.gradients[0], float("nan"))
    trace = TraceRecorder(every=1)
    result = DLG(iterations=5).reconstruct(shared, trace)
    assert result.info["diverged"] is True
    assert result.iterations == 1
    assert torch.isfinite(result.reconstruction).all()  # the last finite iterate: here the initial dummy


def leaky_case(seed: int) -> tuple[torch.Tensor, SharedGradient]:
    """A tiny bias-free LeakyReLU single-logit conv net that R-GAP inverts exactly."""
    model = conv_net((1, 6, 6), convs=[(4, 3, 1, 1), (8, 3, 1, 1)], activation="leaky_relu", slope=0.2,
                     num_outputs=1, seed=seed)
    x = image(seed, (1, 1, 6, 6))
    return x, compute_shared_gradient(model, x, torch.tensor([1]), loss="logistic", label_mode="reversed")


def test_hybrid_starts_at_rgap():
    x, shared = leaky_case(0)
    rgap_psnr = psnr(RGAP().reconstruct(shared).reconstruction, x)
    trace = TraceRecorder(every=1, score=lambda r: (0.0, psnr(r, x)))
    result = HGAP(iterations=10, dtype="float64").reconstruct(shared, trace)
    assert trace.points[0].iteration == 0 and trace.points[0].psnr == rgap_psnr  # the start is R-GAP's answer
    assert psnr(result.reconstruction, x) >= rgap_psnr  # measured: both ~297 dB (R-GAP is exact here)
    assert result.labels_given and result.labels.tolist() == shared.labels.tolist()
    assert result.info["rgap_seconds"] >= 0 and "rgap_layers" in result.info
    assert result.final_loss <= result.info["rgap_grad_loss"]


def test_hybrid_unsupported():
    model = conv_net((1, 6, 6), convs=[(4, 3, 1, 1)], activation="relu", num_outputs=1, seed=0)
    shared = compute_shared_gradient(model, image(0, (1, 1, 6, 6)), torch.tensor([1]), loss="logistic")
    with pytest.raises(UnsupportedInputError, match="^hybrid needs R-GAP's reconstruction: .*ReLU"):
        HGAP(iterations=1).reconstruct(shared)
    _, shared = leaky_case(0)
    shared.labels = None
    with pytest.raises(UnsupportedInputError, match="^hybrid needs R-GAP's reconstruction: .*label"):
        HGAP(iterations=1).reconstruct(shared)


@pytest.mark.parametrize("name, cls", [("dlg", DLG), ("idlg", IDLG), ("hgap", HGAP)])
def test_configs_instantiate_with_defaults(name, cls):
    cfg = OmegaConf.load(f"{CONF_DIR}/attack/{name}.yaml")
    attack = instantiate_group(cfg, "attack", cls)
    assert type(attack) is cls and attack.name == cfg.name == name
    default = cls()
    for key in cfg:
        if key in ("name", "_target_", "weight_constraints", "balance"):
            continue
        value = getattr(default, "dtype_name" if key == "dtype" else key)
        assert cfg[key] == value, key


@pytest.mark.parametrize("attack", ["dlg", "idlg", "hgap"])
def test_run_trial(trial_cfg, attack):
    model = ["model=lenet", "dataset=sample_gray"] if attack != "hgap" else []
    row = run_trial(trial_cfg(f"attack={attack}", "attack.iterations=1", "save_images=false", *model))
    assert row["status"] == "ok", row["reason"]
