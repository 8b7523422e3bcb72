"""R-GAP's first step: read the output layer's gradient as ``k = dl/dz`` (and, where known, ``z``).

Every way of reading the head gives one or more :class:`TopStart`; the recursion runs from each and the
reconstruction that best reproduces the shared gradient is kept.

* **Bias on the output layer** (any loss, any head size): ``dl/db = k`` is observed, so no equation is
  solved. The label follows from its signs: one logit ``k = (sigmoid(f) - y) act'(z)``, so ``y = 1`` iff
  ``k < 0``; softmax cross-entropy ``k = p - e_y`` has exactly one negative entry, at ``y``.
* **One logit, no bias, logistic loss** (the paper): ``<w, dl/dw> = l'(act(z)) act'(z) z`` is a known scalar,
  solved for ``z`` by bracketing and Brent's method. With the label unknown both signs are tried.
* **Several logits, no bias, softmax cross-entropy**: ``dl/dW = k x^T`` has rank one, so ``k = alpha u`` and
  ``x = (sigma / alpha) v`` from its top singular triplet. ``k = softmax(W x) - e_y`` then fixes ``alpha`` by
  one scalar equation; the label is the entry of ``u`` whose sign differs from all others (iDLG's rule) and,
  where two entries qualify (two classes), both are tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

from rgap.algorithm.activations import IdentityActivation, InvertibleActivation
from rgap.algorithm.network import Stage
from rgap.attack.losses import logistic_dloss, signed_labels
from rgap.core.errors import UnsupportedInputError, UnsupportedLayerError

#: Pre-activation grid on which the logistic last-layer equation is bracketed before Brent's method.
_ROOT_GRID = np.concatenate([-np.logspace(3, -8, 600), [0.0], np.logspace(-8, 3, 600)])


@dataclass(eq=False)
class TopStart:
    """One reading of the output layer: where the downward recursion starts."""

    k: torch.Tensor  # dl/dz of the output layer's pre-activation, shape [outputs]
    z: torch.Tensor | None  # the pre-activation itself when the reading gives it (weight constraint), else None
    labels: torch.Tensor | None  # int64 [B]: the labels this reading assumes or recovers (None: not recovered)
    exact: bool  # False when the scalar equation had no root and its closest point was taken
    rule: str  # "bias", "logistic-root" or "softmax-root"


def grid_roots(h: Callable[[np.ndarray], np.ndarray], grid: np.ndarray) -> list[float]:
    """Every root of the scalar function ``h`` bracketed on ``grid`` (refined at its extrema), by Brent."""
    grid = _refine_extrema(h, grid)
    values = h(grid)
    roots: list[float] = [float(z) for z, v in zip(grid, values, strict=True) if v == 0.0]
    for i in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0)[0]:
        root = scipy.optimize.brentq(h, grid[i], grid[i + 1], xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
        roots.append(float(root))
    return sorted(set(roots))


def _refine_extrema(h: Callable[[np.ndarray], np.ndarray], grid: np.ndarray) -> np.ndarray:
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


def last_layer_roots(c: float, activation: InvertibleActivation, y: float) -> tuple[list[float], bool]:
    """All pre-activations ``z`` with ``l'(act(z)) act'(z) z = c`` for the logistic loss and signed label ``y``.

    Returns ``(roots, exact)``; when no root exists (noisy gradients), the minimiser of the residual on the
    grid is returned with ``exact=False``.
    """

    def h(z: np.ndarray | float) -> np.ndarray:
        zt = torch.as_tensor(z, dtype=torch.float64)
        value = logistic_dloss(activation.forward(zt), y) * activation.derivative(zt) * zt
        return value.numpy() - c

    roots = grid_roots(h, _ROOT_GRID)
    if roots:
        return roots, True
    values = h(_ROOT_GRID)
    return [float(_ROOT_GRID[int(np.argmin(np.abs(values)))])], False


def read_head(stage: Stage, grad_w: torch.Tensor, grad_b: torch.Tensor | None, loss: str,
              labels: torch.Tensor | None, batch_size: int) -> list[TopStart]:
    """Every reading of the output layer ``stage`` from its weight (and bias) gradient.

    ``labels`` are the labels given to the attacker, or None to recover them.
    """
    if grad_b is not None:
        return [_from_bias(grad_b, loss, labels, batch_size)]
    if loss == "logistic":
        return _logistic_roots(stage, grad_w, labels, batch_size)
    return _softmax_roots(stage, grad_w, labels, batch_size)


def _from_bias(grad_b: torch.Tensor, loss: str, labels: torch.Tensor | None, batch_size: int) -> TopStart:
    k = grad_b.reshape(-1)
    if labels is None and batch_size == 1 and loss != "logistic":
        labels = k.argmin().reshape(1)  # k = p - e_y: the one negative entry
    elif labels is None and batch_size == 1 and float(k[0]) != 0.0:
        labels = (k < 0).long()  # k = (sigmoid(f) - y) act'(z): negative iff y = 1
    return TopStart(k=k, z=None, labels=labels, exact=True, rule="bias")


def _logistic_roots(stage: Stage, grad_w: torch.Tensor, labels: torch.Tensor | None,
                    batch_size: int) -> list[TopStart]:
    if labels is not None:
        y = float(signed_labels(labels).mean())
        # The reference code's convention for a balanced batch (mean signed label 0) in the combined case.
        signs = [y if y != 0.0 else 0.1]
    elif batch_size == 1:
        signs = [1.0, -1.0]
    else:
        raise UnsupportedInputError(
            f"R-GAP recovers the label of one image at a time; with batch_size={batch_size}, a bias-free "
            "single-logit head and the labels unknown, the combined reconstruction is undefined. Give the "
            "labels (attack.labels=given) or use a model with biases (model.bias=true)."
        )
    w = stage.layer.weight.detach().to(grad_w)
    c = float((w * grad_w).sum())
    found: list[TopStart] = []
    closest: list[TopStart] = []
    for y in signs:
        roots, exact = last_layer_roots(c, stage.activation, y)
        start_labels = labels if labels is not None else torch.tensor([int(y > 0)], device=grad_w.device)
        for root in roots:
            z = torch.tensor([root], dtype=torch.float64, device=grad_w.device)
            k = logistic_dloss(stage.activation.forward(z).cpu(), y).to(z) * stage.activation.derivative(z)
            start = TopStart(k=k, z=z, labels=start_labels, exact=exact, rule="logistic-root")
            (found if exact else closest).append(start)
    return found or closest[:1]


def _softmax_roots(stage: Stage, grad_w: torch.Tensor, labels: torch.Tensor | None,
                   batch_size: int) -> list[TopStart]:
    if not isinstance(stage.activation, IdentityActivation):
        raise UnsupportedLayerError(
            f"R-GAP reads a bias-free multi-class head from its rank-one weight gradient only when the logits "
            f"are the layer's output; {stage.name} is followed by {stage.activation.name}. Use a linear output "
            "layer or model.bias=true."
        )
    if batch_size > 1:
        raise UnsupportedInputError(
            f"R-GAP inverts a bias-free softmax head one image at a time (its weight gradient has rank one); "
            f"batch_size={batch_size} is not supported. Use batch_size=1."
        )
    u_mat, s_vec, vh_mat = torch.linalg.svd(grad_w, full_matrices=False)
    u, sigma, v = u_mat[:, 0], s_vec[0], vh_mat[0]
    c = sigma * (stage.layer.weight.detach().to(grad_w) @ v)  # logits = c / alpha
    given = labels is not None
    classes = [int(labels.reshape(-1)[0])] if given else sorted({int(u.argmin()), int(u.argmax())})
    found: list[TopStart] = []
    closest: tuple[float, TopStart] | None = None
    for y in classes:
        u_y = float(u[y])
        if u_y == 0.0:
            continue
        sign = -np.sign(u_y)  # alpha u_y = p_y - 1 < 0
        others = [j for j in range(u.numel()) if j != y]

        def h(a: np.ndarray | float, y: int = y, sign: float = sign, u_y: float = u_y,
              others: list[int] = others) -> np.ndarray:
            alpha = sign * torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1)
            logits = c.cpu().reshape(1, -1) / alpha
            rest = torch.softmax(logits, dim=1)[:, others].sum(1)  # 1 - p_y without cancellation
            return (alpha.reshape(-1) * u_y + rest).numpy().reshape(np.shape(a))

        grid = np.logspace(-16, np.log10(1.0 / abs(u_y)), 800)
        start_labels = torch.tensor([y], device=grad_w.device)
        for root in grid_roots(h, grid):
            alpha = sign * root
            found.append(TopStart(k=alpha * u, z=c / alpha, labels=start_labels, exact=True, rule="softmax-root"))
        values = np.abs(h(grid))
        best = int(np.argmin(values))
        if closest is None or values[best] < closest[0]:
            alpha = sign * grid[best]
            closest = (float(values[best]), TopStart(k=alpha * u, z=c / alpha, labels=start_labels, exact=False,
                                                     rule="softmax-root"))
    if found or closest is None:
        return found
    return [closest[1]]  # no exact root (noisy gradient): the scale that comes closest
