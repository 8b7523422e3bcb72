"""R-GAP: the Recursive Gradient Attack on Privacy (Zhu & Blaschko, ICLR 2021), in closed form.

1. Last layer: for a single-logit output ``f = act(z)``, ``z = w^T x`` trained with the logistic loss,
   ``<w, dl/dw> = l'(f) act'(z) z`` is a known scalar. We solve it for ``z`` with a bracketing root finder
   (the reference code runs 30,000 Adam steps) and get ``k = dl/dz`` and ``x = dl/dw / k``.
2. Downward recursion: invert the activation below (weight-constraint right-hand side), push ``k``
   through the layer above and its activation derivative, and solve the stacked least-squares system of
   gradient and weight constraints of each layer (see ``rgap.inverters``).

All solves run in float64 whatever precision the client used. Where the scalar equation has two roots
(the logistic loss with a correctly classified sample), both reconstructions are computed and the one
that reproduces the observed gradient better is kept; for bias-free LeakyReLU networks the two are exact
"twins" that give the same gradient, and a box prior (fewer pixels outside [0, 1]) breaks the tie. The
choice and its rule are recorded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from rgap.activations import InvertibleActivation
from rgap.attack import Attack, AttackResult, SharedGradient, TraceRecorder
from rgap.errors import UnsupportedInputError, UnsupportedLayerError
from rgap.inverters import LayerInverter, make_inverter
from rgap.losses import get_loss, logistic_dloss, signed_labels
from rgap.network import Stage, parse_stages

#: Pre-activation grid on which the last-layer equation is bracketed before Brent's method refines roots.
_ROOT_GRID = np.concatenate([-np.logspace(3, -8, 600), [0.0], np.logspace(-8, 3, 600)])
#: Two candidate reconstructions whose gradient residuals are within this factor are indistinguishable.
_TIE_FACTOR = 10.0


@dataclass
class Candidate:
    """The reconstruction that follows from one root of the last-layer equation."""

    z_top: float
    x: torch.Tensor
    layers: list[str]
    residual: float = float("nan")
    box_violation: float = float("nan")


def last_layer_roots(c: float, activation: InvertibleActivation, y: float) -> tuple[list[float], bool]:
    """All pre-activations ``z`` with ``l'(act(z)) act'(z) z = c`` for the logistic loss and signed label ``y``.

    Returns ``(roots, exact)``; when no root exists (noisy gradients), the minimiser of the residual on the
    grid is returned with ``exact=False``.
    """

    def h(z: np.ndarray | float) -> np.ndarray:
        zt = torch.as_tensor(z, dtype=torch.float64)
        value = logistic_dloss(activation.forward(zt), y) * activation.derivative(zt) * zt
        return value.numpy() - c

    grid = _refine_extrema(h, _ROOT_GRID)
    values = h(grid)
    roots: list[float] = [float(z) for z, v in zip(grid, values, strict=True) if v == 0.0]
    for i in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]:
        root = scipy.optimize.brentq(h, grid[i], grid[i + 1], xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        roots.append(float(root))
    if roots:
        return sorted(set(roots)), True
    return [float(grid[int(np.argmin(np.abs(values)))])], False


def _refine_extrema(h, grid: np.ndarray) -> np.ndarray:
    """Add the exact local extrema of ``h`` to ``grid``, so that two roots in one grid cell are bracketed."""
    values = h(grid)
    slopes = np.diff(values)
    extra = []
    for i in np.nonzero(slopes[:-1] * slopes[1:] < 0)[0] + 1:
        sign = 1.0 if slopes[i - 1] < 0 else -1.0  # minimum: minimise h; maximum: minimise -h
        found = scipy.optimize.minimize_scalar(lambda z, s=sign: s * float(h(z)), bounds=(grid[i - 1], grid[i + 1]),
                                               method="bounded", options={"xatol": 1e-14})
        extra.append(float(found.x))
    return np.unique(np.concatenate([grid, extra])) if extra else grid


class RGAP(Attack):
    """Closed-form recursive reconstruction for chains of bias-free Conv2d/Linear layers.

    Args:
        weight_constraints: stack the weight constraints ``A x = z`` with the gradient constraints
            (the paper's formulation; the reference code drops them for FC layers).
        balance: weight the two constraint blocks so that each has unit mean eigenvalue in the normal
            equations (``rgap.inverters.block_weight``). Identical results on exact gradients; far more
            robust on float32 gradients, where the unweighted system lets propagated errors dominate.
    """

    name = "rgap"

    def __init__(self, weight_constraints: bool = True, balance: bool = True) -> None:
        self.weight_constraints = weight_constraints
        self.balance = balance

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        if shared.labels is None:
            raise UnsupportedInputError("R-GAP needs the labels the gradient was computed with (label given).")
        if shared.loss != "logistic":
            raise UnsupportedInputError(f"R-GAP's closed-form last layer needs the logistic loss, got {shared.loss!r}.")
        model = copy.deepcopy(shared.model).to(torch.float64)
        stages = parse_stages(model, shared.input_shape)
        self._check_supported(stages, shared.batch_size)
        inverters = [make_inverter(s.layer, s.input_shape, s.output_shape) for s in stages]
        device = shared.gradients[0].device
        grads = [shared.gradients[s.param_index].detach().to(device=device, dtype=torch.float64) for s in stages]
        labels = shared.labels.detach().to(device=device)
        y = float(signed_labels(labels).mean())
        # The reference code's convention for a balanced batch (mean signed label 0) in the combined case.
        y = y if y != 0.0 else 0.1

        w_top = stages[-1].layer.weight.detach().to(device=device, dtype=torch.float64)
        c = float((w_top * grads[-1]).sum())
        roots, exact = last_layer_roots(c, stages[-1].activation, y)
        candidates = [self._recurse(z, y, stages, inverters, grads) for z in roots]
        combined = shared.batch_size > 1
        target = torch.full((1,), (y + 1) / 2, dtype=torch.float64, device=device) if combined else labels
        for cand in candidates:
            cand.residual = _gradient_residual(model, cand.x.reshape(1, *shared.input_shape), target,
                                               shared.loss, grads, [s.param_index for s in stages])
            cand.box_violation = float((cand.x.clamp(max=0).abs() + (cand.x - 1).clamp(min=0)).mean())
        floor = float(np.sqrt(torch.finfo(shared.gradients[0].dtype).eps))
        best, rule = _choose(candidates, exact, floor)
        reconstruction = best.x.reshape(1, *shared.input_shape)
        info = {
            "rgap_roots": len(roots),
            "rgap_root_index": candidates.index(best),
            "rgap_root_rule": rule,
            "rgap_z_top": best.z_top,
            "rgap_grad_residual": best.residual,
            "rgap_layers": " ".join(best.layers),
        }
        return AttackResult(reconstruction=reconstruction.to(torch.float64), labels=labels, labels_given=True,
                            combined=combined, info=info)

    @staticmethod
    def _check_supported(stages: list[Stage], batch_size: int) -> None:
        top = stages[-1].layer
        if not isinstance(top, nn.Linear) or top.out_features != 1:
            raise UnsupportedLayerError(
                f"R-GAP's closed-form first step needs a single-logit Linear output layer, got {top!r}."
            )
        if batch_size > 1 and any(not isinstance(s.layer, nn.Linear) for s in stages):
            raise UnsupportedInputError(
                f"R-GAP inverts convolutional networks one image at a time; batch_size={batch_size} is supported "
                "only for fully connected networks (as one combined reconstruction)."
            )

    def _recurse(self, z_top: float, y: float, stages: list[Stage], inverters: list[LayerInverter],
                 grads: list[torch.Tensor]) -> Candidate:
        top = stages[-1]
        z = torch.tensor([z_top], dtype=torch.float64, device=grads[-1].device)
        k = logistic_dloss(top.activation.forward(z).cpu(), y).to(z) * top.activation.derivative(z)
        solution = inverters[-1].solve(k, grads[-1], z if self.weight_constraints else None, self.balance)
        layers = [_describe(top, solution.rank, solution.n, solution.method)]
        x = solution.x
        for i in range(len(stages) - 2, -1, -1):
            stage = stages[i]
            a = x.reshape(stage.output_shape)
            z_i = stage.activation.inverse(a)
            k = inverters[i + 1].input_vjp(k).reshape(stage.output_shape) * stage.activation.derivative(z_i)
            solution = inverters[i].solve(k, grads[i], z_i if self.weight_constraints else None, self.balance)
            clipped = stage.activation.out_of_range(a)
            layers.append(_describe(stage, solution.rank, solution.n, solution.method, clipped))
            x = solution.x
        return Candidate(z_top=z_top, x=x, layers=layers[::-1])


def _describe(stage: Stage, rank: int, n: int, method: str, clipped: int = 0) -> str:
    text = f"{stage.name}:{rank}/{n}:{method}"
    return text + f":clipped={clipped}" if clipped else text


def _gradient_residual(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss: str,
                       grads: list[torch.Tensor], param_indices: list[int]) -> float:
    """Relative L2 distance between the gradient that ``x`` produces and the observed one."""
    params = list(model.parameters())
    logits = model(x.to(params[0]))
    produced = torch.autograd.grad(get_loss(loss)(logits, labels), [params[i] for i in param_indices])
    num = sum(float(((p - g) ** 2).sum()) for p, g in zip(produced, grads, strict=True))
    den = sum(float((g**2).sum()) for g in grads)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


def _choose(candidates: list[Candidate], exact: bool, floor: float) -> tuple[Candidate, str]:
    """Pick a candidate: by gradient residual, or by the box prior among those the residual cannot tell apart.

    Residuals below ``floor`` (sqrt of the gradient dtype's machine epsilon) are round-off, as are residuals
    within ``_TIE_FACTOR`` of the best one.
    """
    if not exact:
        return candidates[0], "closest"
    if len(candidates) == 1:
        return candidates[0], "unique"
    bound = max(_TIE_FACTOR * min(c.residual for c in candidates), floor)
    tied = [c for c in candidates if c.residual <= bound]
    if len(tied) == 1:
        return tied[0], "gradient"
    return min(tied, key=lambda c: c.box_violation), "box-prior"
