"""End-to-end exactness of the closed-form R-GAP reconstruction (``rgap.algorithm.recursive.RGAP``).

The client side is simulated with plain torch.autograd; every expected value (true inputs, true output
gradients ``k = dl/dz``, the dense per-layer systems ``[K; A]``, the twin root of the last-layer equation,
the twin's gradient) is computed here independently of ``rgap``.

Why ``max |x_hat - x| < 1e-6`` is the right bound for the exact cases: on a full-column-rank network with
noise-free float64 gradients R-GAP is exact up to round-off. Each layer solves the normal equations
``M^T M x = M^T b`` (Cholesky / Woodbury), whose relative error is about ``cond(M)^2 * eps``; the tests assert
``cond(M) <= COND_MAX = 1e3`` at the true ``k`` for every layer, so each solve contributes at most
``1e6 * 2.2e-16 ~ 2e-10`` relative error, and with <= 4 layers, activation inverses that amplify by at most
1/slope = 10 (LeakyReLU) or 1/(a(1-a)) ~ 10 (Sigmoid, pre-activations O(1) here), and inputs in [0, 1] the
worst case stays below ~1e-7. Observed errors are 1e-15 .. 1e-11. Any real defect (wrong row order,
wrong root, wrong k recursion, wrong activation inverse) gives errors of order 1e-2 .. 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import nn

from rgap.algorithm.activations import IdentityActivation, LeakyReLUActivation
from rgap.algorithm.recursive import RGAP, last_layer_roots
from rgap.attack import SharedGradient
from rgap.attack.losses import logistic_loss
from rgap.core.errors import UnsupportedError, UnsupportedInputError, UnsupportedLayerError
from rgap.zoo.models import cnn6, cnn6d

DTYPE = torch.float64
TOL = 1e-6  # see the module docstring
COND_MAX = 1e3


# ---------------------------------------------------------------------------------------------------
# Random networks and the client-side truth
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Net:
    """A bias-free chain: ``layers`` are ("conv", out_ch, kernel, stride, padding) or ("fc", width)."""

    input_shape: tuple[int, int, int]
    layers: tuple[tuple, ...]
    activation: str  # "leaky0.1", "leaky0.2", "leaky0.5" or "sigmoid"
    seed: int
    top_leaky: bool = False  # FCN3-style LeakyReLU after the single-logit output layer

    def __str__(self) -> str:
        parts = []
        for spec in self.layers:
            if spec[0] == "conv":
                _, f, k, s, p = spec
                kernel = f"{k[0]}x{k[1]}" if isinstance(k, tuple) else f"{k}"
                parts.append(f"c{f}k{kernel}s{s}p{p}")
            else:
                parts.append(f"fc{spec[1]}")
        top = "-topleaky" if self.top_leaky else ""
        return f"{'x'.join(map(str, self.input_shape))}-{'-'.join(parts)}-{self.activation}{top}"


def _activation(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "sigmoid" else nn.LeakyReLU(float(name.removeprefix("leaky")))


def build_net(net: Net) -> nn.Sequential:
    torch.manual_seed(net.seed)
    layers: list[nn.Module] = []

    def out_shape() -> tuple[int, ...]:
        with torch.no_grad():
            return tuple(nn.Sequential(*layers)(torch.zeros(1, *net.input_shape)).shape[1:])

    for spec in net.layers:
        shape = out_shape() if layers else net.input_shape
        if spec[0] == "conv":
            _, f, k, s, p = spec
            layers += [nn.Conv2d(shape[0], f, k, stride=s, padding=p, bias=False), _activation(net.activation)]
        else:
            if len(shape) > 1:
                layers.append(nn.Flatten())
            layers += [nn.Linear(math.prod(shape), spec[1], bias=False), _activation(net.activation)]
    shape = out_shape()
    if len(shape) > 1:
        layers.append(nn.Flatten())
    layers.append(nn.Linear(math.prod(shape), 1, bias=False))
    if net.top_leaky:
        layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers).to(DTYPE).eval()


def random_input(net: Net, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + net.seed)
    return torch.rand(batch, *net.input_shape, generator=gen, dtype=DTYPE)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@dataclass
class Truth:
    """What the client computed: gradients of all parameters plus, per weight layer, input / pre-activation / k."""

    logit: float
    grads: list[torch.Tensor]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    ks: list[torch.Tensor]


def client_truth(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Truth:
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        records.append((inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in weight_layers(model)]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    params = list(model.parameters())
    outs = torch.autograd.grad(logistic_loss(logits, labels), params + [o for _, o in records])
    return Truth(
        logit=float(logits.detach().reshape(-1)[0]),
        grads=[g.detach() for g in outs[: len(params)]],
        inputs=[i.detach()[0] for i, _ in records],
        outputs=[o.detach()[0] for _, o in records],
        ks=[k.detach()[0] for k in outs[len(params) :]],
    )


def logit_of(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(x).reshape(-1)[0])


def reversed_label(logit: float) -> torch.Tensor:
    """The misclassifying label: the last-layer equation then has a unique root."""
    return torch.tensor([0.0 if logit > 0 else 1.0], dtype=DTYPE)


def true_label(logit: float) -> torch.Tensor:
    """The correctly classifying label: the last-layer equation then has two roots."""
    return torch.tensor([1.0 if logit > 0 else 0.0], dtype=DTYPE)


def attack(
    model: nn.Module,
    grads: list[torch.Tensor],
    labels: torch.Tensor,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    **kwargs,
):
    shared = SharedGradient(model, list(grads), labels, "logistic", tuple(input_shape), batch_size)
    return RGAP(**kwargs).reconstruct(shared)


def dense_system(layer: nn.Module, in_shape: tuple[int, ...], k: torch.Tensor) -> torch.Tensor:
    """M = [K(k); A] from autograd: K is the Jacobian of x -> dl/dW, A the Jacobian of the layer."""
    params = {"weight": layer.weight.detach()}

    def weight_grad(x: torch.Tensor) -> torch.Tensor:
        def inner(w: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(layer, {"weight": w}, (x.unsqueeze(0),))
            return (out * k.unsqueeze(0)).sum()

        return torch.func.grad(inner)(params["weight"]).reshape(-1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, params, (x.unsqueeze(0),)).reshape(-1)

    x0 = torch.zeros(in_shape, dtype=DTYPE)
    kmat = torch.func.jacrev(weight_grad)(x0).reshape(layer.weight.numel(), -1)
    amat = torch.func.jacrev(forward)(x0).reshape(-1, x0.numel())
    return torch.cat([kmat, amat])


def assert_layers_well_posed(model: nn.Module, truth: Truth) -> list[int]:
    """Every layer's stacked system has full column rank and cond <= COND_MAX at the true k."""
    sizes = []
    for layer, x_in, k in zip(weight_layers(model), truth.inputs, truth.ks, strict=True):
        mat = dense_system(layer, tuple(x_in.shape), k)
        # Sanity of the reference itself: M x = [vec dl/dW; z] at the true layer input.
        own_grad = next(g for g, p in zip(truth.grads, model.parameters(), strict=True) if p is layer.weight)
        expected = torch.cat([own_grad.reshape(-1), layer(x_in.unsqueeze(0)).detach().reshape(-1)])
        torch.testing.assert_close(mat @ x_in.reshape(-1), expected, rtol=1e-10, atol=1e-12)
        n = mat.shape[1]
        assert int(torch.linalg.matrix_rank(mat)) == n, f"test setup: {layer} is rank-deficient"
        assert float(torch.linalg.cond(mat)) <= COND_MAX, f"test setup: {layer} is ill-conditioned"
        sizes.append(n)
    return sizes


def assert_layers_well_posed_rank_only(model: nn.Module, truth: Truth) -> None:
    for layer, x_in, k in zip(weight_layers(model), truth.inputs, truth.ks, strict=True):
        mat = dense_system(layer, tuple(x_in.shape), k)
        assert int(torch.linalg.matrix_rank(mat)) == mat.shape[1]


def layer_reports(info: dict) -> list[tuple[str, int, int, str]]:
    """Parse info['rgap_layers'] = "conv1:36/36:cholesky fc1:..." into (name, rank, n, method)."""
    out = []
    for item in info["rgap_layers"].split():
        name, rank_n, method = item.split(":")[:3]
        rank, n = rank_n.split("/")
        out.append((name, int(rank), int(n), method))
    return out


def max_err(result, x: torch.Tensor) -> float:
    assert result.reconstruction.shape == (1, *x.shape[1:])
    return float((result.reconstruction - x[:1]).abs().max())


# ---------------------------------------------------------------------------------------------------
# Exact reconstruction with a unique root (misclassifying label)
# ---------------------------------------------------------------------------------------------------

EXACT_NETS = [
    Net((1, 3, 4), (("fc", 10), ("fc", 8)), "leaky0.2", seed=0),
    Net((1, 4, 4), (("fc", 16), ("fc", 6)), "leaky0.1", seed=1),
    Net((1, 3, 4), (("fc", 10), ("fc", 8)), "sigmoid", seed=2),
    Net((3, 2, 3), (("fc", 20), ("fc", 12)), "leaky0.5", seed=3, top_leaky=True),
    Net((1, 3, 3), (("fc", 30),), "leaky0.2", seed=15, top_leaky=True),
    Net((1, 6, 6), (("conv", 4, 3, 1, 1),), "leaky0.2", seed=4),
    Net((1, 7, 7), (("conv", 4, 3, 1, 0), ("conv", 6, 3, 1, 1)), "leaky0.1", seed=5),
    Net((1, 8, 8), (("conv", 4, 4, 2, 1), ("conv", 8, 3, 1, 1)), "leaky0.5", seed=6),
    Net((2, 7, 7), (("conv", 6, 3, 2, 2), ("conv", 8, 3, 1, 1)), "leaky0.2", seed=7),
    Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("conv", 8, 3, 1, 1)), "sigmoid", seed=8),
    Net((1, 8, 8), (("conv", 6, 3, 2, 1), ("conv", 8, 3, 1, 1)), "sigmoid", seed=9),
    Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("fc", 20)), "leaky0.2", seed=10),
    Net((2, 7, 9), (("conv", 8, (3, 2), 1, 1), ("conv", 16, 3, 2, 1)), "leaky0.2", seed=11),
    Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("conv", 8, 3, 1, 1), ("fc", 16)), "sigmoid", seed=12),
    Net((3, 5, 5), (("conv", 9, 3, 1, 2), ("conv", 16, 3, 2, 0)), "leaky0.1", seed=13),
    Net((1, 7, 8), (("conv", 5, (2, 3), 1, 0), ("conv", 12, 2, 2, 0)), "leaky0.2", seed=14, top_leaky=True),
]


@pytest.mark.parametrize("net", EXACT_NETS, ids=str)
def test_exact_reconstruction_unique_root(net: Net) -> None:
    model = build_net(net)
    x = random_input(net)
    labels = reversed_label(logit_of(model, x))
    truth = client_truth(model, x, labels)
    sizes = assert_layers_well_posed(model, truth)

    result = attack(model, truth.grads, labels, net.input_shape)

    assert max_err(result, x) < TOL
    assert result.combined is False
    assert result.info["rgap_roots"] == 1
    assert result.info["rgap_root_rule"] == "unique"
    # The last-layer root is the true pre-activation of the logit layer.
    assert result.info["rgap_z_top"] == pytest.approx(float(truth.outputs[-1]), rel=1e-9, abs=1e-12)
    assert result.info["rgap_grad_residual"] < 1e-8
    reports = layer_reports(result.info)
    assert [n for _, _, n, _ in reports] == sizes
    assert all(rank == n and method != "pinv" for _, rank, n, method in reports), result.info["rgap_layers"]


def test_fc_net_without_weight_constraints_is_exact() -> None:
    """For FC layers the gradient constraints alone (K = k (x) I) already determine x."""
    net = EXACT_NETS[0]
    model = build_net(net)
    x = random_input(net)
    labels = reversed_label(logit_of(model, x))
    truth = client_truth(model, x, labels)
    result = attack(model, truth.grads, labels, net.input_shape, weight_constraints=False)
    assert max_err(result, x) < TOL


def test_rank_deficient_layer_is_reported_with_its_rank() -> None:
    """conv2 with 8 filters on 8x7x10 inputs has rank < n (checked with a dense SVD); R-GAP must say so."""
    net = Net((2, 7, 9), (("conv", 8, (3, 2), 1, 1), ("conv", 8, 3, 2, 1)), "leaky0.2", seed=11)
    model = build_net(net)
    x = random_input(net)
    labels = reversed_label(logit_of(model, x))
    truth = client_truth(model, x, labels)
    conv2 = weight_layers(model)[1]
    mat = dense_system(conv2, tuple(truth.inputs[1].shape), truth.ks[1])
    rank = int(torch.linalg.matrix_rank(mat))
    assert rank < mat.shape[1]

    result = attack(model, truth.grads, labels, net.input_shape)
    reports = {name: (r, n, method) for name, r, n, method in layer_reports(result.info)}
    assert reports["conv2"] == (rank, mat.shape[1], "pinv")
    assert reports["conv1"][0] == reports["conv1"][1]
    # Not identifiable: the minimum-norm solution is not the input.
    assert max_err(result, x) > 1e-3


# ---------------------------------------------------------------------------------------------------
# Two roots (correctly classified sample)
# ---------------------------------------------------------------------------------------------------

#: u* = argmin of phi(u) = -u sigmoid(-u) for u > 0 (where u sigmoid(u) = 1); phi(u*) = -0.27846...
U_STAR = scipy.optimize.brentq(lambda u: u / (1 + math.exp(-u)) - 1.0, 0.5, 2.0, xtol=1e-15)


def phi(f: float, s: float) -> float:
    """d/df log(1 + exp(-s f)) * f: the last-layer quantity <w, dl/dw> for a homogeneous top activation."""
    return -s * f / (1.0 + math.exp(s * f))


def twin_output(f: float, s: float) -> float:
    """The other solution f' of phi(f') = phi(f) (same sign as s f), by an independent bracketing solve."""
    c = phi(f, s)
    u = s * f
    lo, hi = (U_STAR, 60.0) if u < U_STAR else (1e-300, U_STAR)
    u2 = scipy.optimize.brentq(lambda v: -v / (1.0 + math.exp(v)) - c, lo, hi, xtol=1e-300, rtol=1e-15)
    return s * u2


def scale_logit(model: nn.Module, x: torch.Tensor, target: float) -> None:
    """Rescale the last Linear layer so that the network's output (before any top activation) is ``target``."""
    top = weight_layers(model)[-1]
    pre = []
    handle = top.register_forward_hook(lambda m, i, o: pre.append(float(o.detach().reshape(-1)[0])))
    try:
        logit_of(model, x)
    finally:
        handle.remove()
    with torch.no_grad():
        top.weight.mul_(target / pre[0])


LEAKY_TWIN_CASES = [
    # (net, pre-activation of the logit layer); |z| < u* puts the twin at a larger scale, outside [0, 1].
    (Net((1, 3, 4), (("fc", 10), ("fc", 8)), "leaky0.2", seed=0), 0.5),
    (Net((1, 3, 4), (("fc", 10), ("fc", 8)), "leaky0.2", seed=0), -0.8),
    (Net((3, 2, 3), (("fc", 20), ("fc", 12)), "leaky0.5", seed=3, top_leaky=True), 0.6),
    (Net((3, 2, 3), (("fc", 20), ("fc", 12)), "leaky0.5", seed=3, top_leaky=True), -2.0),  # f = 0.2 z = -0.4
    (Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("conv", 8, 3, 1, 1)), "leaky0.2", seed=1), 0.7),
    (Net((1, 8, 8), (("conv", 4, 4, 2, 1), ("conv", 8, 3, 1, 1)), "leaky0.5", seed=6), -1.0),
]


def _twin_id(case: tuple[Net, float]) -> str:
    return f"{case[0]}-z{case[1]}"


@pytest.mark.parametrize("case", LEAKY_TWIN_CASES, ids=_twin_id)
def test_leaky_relu_twins(case: tuple[Net, float]) -> None:
    """Bias-free LeakyReLU nets are positively homogeneous: the second root gives a scaled input with the very
    same gradient. Where the twin leaves [0, 1] the true input is identifiable and must be chosen."""
    net, z_top = case
    model = build_net(net)
    x = random_input(net)
    scale_logit(model, x, z_top)
    logit = logit_of(model, x)
    labels = true_label(logit)
    truth = client_truth(model, x, labels)
    s = 1.0 if logit > 0 else -1.0

    # Independent check of the twin: x' = (f'/f) x reproduces the observed gradient exactly.
    twin_scale = twin_output(logit, s) / logit
    assert twin_scale > 1.0
    x_twin = twin_scale * x
    assert float(x_twin.max()) > 1.0  # the twin violates the box prior
    twin_grads = client_truth(model, x_twin, labels).grads
    for g_twin, g in zip(twin_grads, truth.grads, strict=True):
        torch.testing.assert_close(g_twin, g, rtol=1e-9, atol=1e-14)

    result = attack(model, truth.grads, labels, net.input_shape)

    assert result.info["rgap_roots"] == 2
    assert max_err(result, x) < TOL
    assert result.info["rgap_z_top"] == pytest.approx(float(truth.outputs[-1]), rel=1e-9)
    # Exact twins reproduce the gradient equally well: the box prior decides.
    assert result.info["rgap_root_rule"] == "box-prior"


def test_leaky_relu_twins_rule_is_box_prior() -> None:
    net, z_top = LEAKY_TWIN_CASES[0][0], 0.3
    model = build_net(net)
    x = random_input(net)
    scale_logit(model, x, z_top)
    labels = true_label(logit_of(model, x))
    truth = client_truth(model, x, labels)
    result = attack(model, truth.grads, labels, net.input_shape)
    assert max_err(result, x) < TOL
    assert result.info["rgap_root_rule"] == "box-prior"


def test_leaky_relu_twins_inside_box_are_indistinguishable() -> None:
    """With the true logit above u* the twin is a shrunk copy inside [0, 1]: either candidate is acceptable,
    and it must be one of the two exact twins."""
    net = Net((1, 3, 4), (("fc", 10), ("fc", 8)), "leaky0.2", seed=0)
    model = build_net(net)
    x = random_input(net)
    scale_logit(model, x, 3.0)
    logit = logit_of(model, x)
    labels = true_label(logit)
    truth = client_truth(model, x, labels)
    x_twin = twin_output(logit, 1.0) / logit * x
    assert float(x_twin.max()) < 1.0
    result = attack(model, truth.grads, labels, net.input_shape)
    assert result.info["rgap_roots"] == 2
    assert min(max_err(result, x), max_err(result, x_twin)) < TOL


SIGMOID_TWO_ROOT_CASES = [
    (Net((1, 3, 4), (("fc", 10), ("fc", 8)), "sigmoid", seed=2), 0.5),
    (Net((1, 3, 4), (("fc", 10), ("fc", 8)), "sigmoid", seed=2), -3.0),
    (Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("conv", 8, 3, 1, 1)), "sigmoid", seed=8), 3.0),
    (Net((1, 6, 6), (("conv", 4, 3, 1, 1), ("conv", 8, 3, 1, 1)), "sigmoid", seed=8), -0.5),
]


@pytest.mark.parametrize("case", SIGMOID_TWO_ROOT_CASES, ids=_twin_id)
def test_sigmoid_two_roots_decided_by_gradient(case: tuple[Net, float]) -> None:
    """Sigmoid nets are not homogeneous: only the true root reproduces the gradient."""
    net, z_top = case
    model = build_net(net)
    x = random_input(net)
    scale_logit(model, x, z_top)
    labels = true_label(logit_of(model, x))
    truth = client_truth(model, x, labels)
    assert_layers_well_posed_rank_only(model, truth)

    result = attack(model, truth.grads, labels, net.input_shape)

    assert result.info["rgap_roots"] == 2
    assert result.info["rgap_root_rule"] == "gradient"
    assert result.info["rgap_z_top"] == pytest.approx(z_top, rel=1e-9)
    assert result.info["rgap_grad_residual"] < 1e-8
    assert max_err(result, x) < TOL


# ---------------------------------------------------------------------------------------------------
# The last-layer scalar equation
# ---------------------------------------------------------------------------------------------------

C_MIN = phi(U_STAR, 1.0)  # -0.278464542761074...


def test_c_min_constant() -> None:
    assert abs(C_MIN - -0.2784645427610738) < 1e-12


@pytest.mark.parametrize("s", [1.0, -1.0], ids=["y=+1", "y=-1"])
def test_last_layer_roots_closed_form(s: float) -> None:
    """Identity top: c = l'(mu) mu = -s mu / (1 + e^(s mu)). The true mu must be among the roots, with two roots
    for c in (C_MIN, 0) and exactly one for c > 0."""
    rng = np.random.default_rng(7)
    mus = rng.uniform(-20.0, 20.0, size=300)
    # Also right next to the double root at s*mu = u*, where both roots fall into one grid cell.
    mus = np.concatenate([mus, s * (U_STAR + np.array([-0.02, -1e-3, 1e-3, 0.01, 0.02]))])
    for mu in mus:
        c = phi(float(mu), s)
        roots, exact = last_layer_roots(c, IdentityActivation(), s)
        assert exact
        assert min(abs(r - mu) for r in roots) <= 1e-9 * max(1.0, abs(mu)), (mu, roots)
        if c > 0:
            assert len(roots) == 1
        elif C_MIN < c < 0:
            assert len(roots) == 2
            twin = twin_output(float(mu), s)
            assert min(abs(r - twin) for r in roots) <= 1e-9 * max(1.0, abs(twin)), (mu, twin, roots)
        # Every returned value solves the equation.
        for r in roots:
            assert phi(r, s) == pytest.approx(c, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("c", [-0.2786, -0.3, -1.0, -50.0])
def test_last_layer_roots_no_solution(c: float) -> None:
    roots, exact = last_layer_roots(c, IdentityActivation(), 1.0)
    assert exact is False
    assert len(roots) == 1


def test_last_layer_roots_near_double_root() -> None:
    mu = 1.29
    c = phi(mu, 1.0)
    assert C_MIN < c < -0.2784
    roots, exact = last_layer_roots(c, IdentityActivation(), 1.0)
    assert exact
    assert len(roots) == 2
    assert min(abs(r - mu) for r in roots) < 1e-9


# ---------------------------------------------------------------------------------------------------
# Combined FC batch
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("top_leaky", [False, True], ids=["plain", "fcn3-style"])
def test_fc_batch_of_identical_images_is_combined_and_exact(top_leaky: bool) -> None:
    net = Net((1, 4, 4), (("fc", 24), ("fc", 10)), "leaky0.2", seed=21, top_leaky=top_leaky)
    model = build_net(net)
    image = random_input(net)
    x = image.repeat(3, 1, 1, 1)
    logit = logit_of(model, image)
    labels = reversed_label(logit).repeat(3)
    grads = torch.autograd.grad(logistic_loss(model(x), labels), list(model.parameters()))
    # The mean loss of identical samples has the single-sample gradient.
    single = torch.autograd.grad(logistic_loss(model(image), labels[:1]), list(model.parameters()))
    for g_batch, g_single in zip(grads, single, strict=True):
        torch.testing.assert_close(g_batch, g_single, rtol=1e-12, atol=1e-15)

    result = attack(model, grads, labels, net.input_shape, batch_size=3)

    assert result.combined is True
    assert result.reconstruction.shape == (1, *net.input_shape)
    assert float((result.reconstruction - image).abs().max()) < TOL


# ---------------------------------------------------------------------------------------------------
# Unsupported models and inputs
# ---------------------------------------------------------------------------------------------------


def _unsupported_relu() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 1, bias=False))


def _unsupported_maxpool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.LeakyReLU(0.2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 1, bias=False),
    )


def _unsupported_batchnorm() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(64, 1, bias=False),
    )


def _conv_bias() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=True), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 1, bias=False)
    )


def _unsupported_two_logits() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 2, bias=False)
    )


def _supported_conv() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(64, 1, bias=False)
    )


UNSUPPORTED = [
    pytest.param(_unsupported_relu, 1, "logistic", True, UnsupportedLayerError, "ReLU", id="relu"),
    pytest.param(_unsupported_maxpool, 1, "logistic", True, UnsupportedLayerError, "MaxPool2d", id="maxpool"),
    pytest.param(_unsupported_batchnorm, 1, "logistic", True, UnsupportedLayerError, "BatchNorm2d", id="batchnorm"),
    pytest.param(_conv_bias, 1, "logistic", True, UnsupportedInputError, "all zeros", id="zero-grad"),
    pytest.param(_unsupported_two_logits, 1, "logistic", True, UnsupportedLayerError, "single-logit", id="2-logits"),
    pytest.param(_supported_conv, 2, "logistic", True, UnsupportedInputError, "batch_size=2", id="conv-batch2"),
    pytest.param(_supported_conv, 1, "logistic", False, UnsupportedInputError, "label", id="no-labels"),
    pytest.param(_supported_conv, 1, "cross_entropy", True, UnsupportedLayerError, "two logits", id="ce-one-logit"),
    pytest.param(_supported_conv, 1, "hinge", True, UnsupportedInputError, "logistic", id="other-loss"),
]


@pytest.mark.parametrize(("make_model", "batch_size", "loss", "with_labels", "error", "message"), UNSUPPORTED)
def test_unsupported(make_model, batch_size: int, loss: str, with_labels: bool, error: type, message: str) -> None:
    torch.manual_seed(0)
    model = make_model().to(DTYPE)
    grads = [torch.zeros_like(p) for p in model.parameters()]
    labels = torch.zeros(batch_size, dtype=DTYPE) if with_labels else None
    shared = SharedGradient(model, grads, labels, loss, (1, 4, 4), batch_size)
    with pytest.raises(error, match=message) as excinfo:
        RGAP().reconstruct(shared)
    assert isinstance(excinfo.value, UnsupportedError)


# ---------------------------------------------------------------------------------------------------
# The paper's networks
# ---------------------------------------------------------------------------------------------------


def _paper_net_attack(builder):
    model = builder((3, 32, 32), seed=0).to(DTYPE)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    labels = reversed_label(logit_of(model, x))
    grads = torch.autograd.grad(logistic_loss(model(x), labels), list(model.parameters()))
    return x, attack(model, list(grads), labels, (3, 32, 32))


@pytest.mark.slow
def test_cnn6_reversed_label_psnr() -> None:
    x, result = _paper_net_attack(cnn6)
    mse = float(((result.reconstruction - x) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    assert psnr >= 60.0
    assert result.info["rgap_root_rule"] == "unique"
    assert all(rank == n for _, rank, n, _ in layer_reports(result.info)), result.info["rgap_layers"]


@pytest.mark.slow
def test_cnn6d_conv2_is_rank_deficient() -> None:
    _, result = _paper_net_attack(cnn6d)
    reports = {name: (rank, n, method) for name, rank, n, method in layer_reports(result.info)}
    rank, n, method = reports["conv2"]
    assert n == 12 * 17 * 17
    assert rank < n
    assert method == "pinv"


def test_leaky_relu_slope_at_a_round_off_zero_matches_autograd() -> None:
    """At z = 0 autograd's LeakyReLU backward uses the negative slope; a recovered z that is zero up to round-off
    (either sign) must give the same slope, or black image regions flip k entries at random."""
    z = torch.tensor([0.0, 1e-15, -1e-15, 0.5, -0.5, 1.0], dtype=torch.float64)
    exact = torch.tensor([0.0, 0.0, 0.0, 0.5, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.leaky_relu(exact, 0.2).sum().backward()
    assert torch.equal(LeakyReLUActivation(0.2).derivative(z), exact.grad)


@pytest.mark.slow
def test_a_deficient_layer_under_black_pixels_gives_one_minimum_norm_answer() -> None:
    """CNN6-d on an image with exact-zero pixels (sample image 3): the structured and the dense solver agree."""
    from rgap.harness.compose import compose_config
    from rgap.harness.trial import run_trial

    psnr = {solver: run_trial(compose_config("trial", ["attack=rgap", "model=cnn6d", "index=3", "save_images=false",
                                                        "metrics.lpips=false", f"attack.solver={solver}"]))["psnr"]
            for solver in ("structured", "generic")}
    assert psnr["structured"] == pytest.approx(psnr["generic"], abs=1e-6)
