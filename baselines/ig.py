"""Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching + total variation.

Follows ``inversefed.GradientReconstructor`` with ``cost_fn='sim'`` (the reference code, not breaching):
the objective is ``1 - cos(g', g)`` over all layers' gradients taken jointly plus ``tv * TV(x)``; Adam
optimises the dummy input only, on the *sign* of the input gradient (``signed``), with the step size cut
by 10x at 3/8, 5/8 and 7/8 of the iterations, and the input projected onto the image box [0, 1] after
every step (``boxed``). Labels are the ones the attacker is given. Of several restarts the one with the
lowest final objective wins; unlike the reference (``reconstruction_algorithms.py`` L111-115, which
filters the scores for finiteness and then indexes the *unfiltered* candidate list) the winner is picked
among finite scores by the restart's own index.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from baselines.common import attack_dtype, cosine_distance, init_dummy, model_gradients, prepare, total_variation
from rgap.attack import Attack, AttackFacts, AttackResult, SharedGradient, TraceRecorder
from rgap.attack.losses import get_loss
from rgap.core.errors import UnsupportedInputError, UserInputError

# Fractions of ``iterations`` after which the step size drops by 10x (inversefed's MultiStepLR milestones
# ``max_iterations // 2.667, // 1.6, // 1.142``, i.e. 3/8, 5/8 and 7/8).
DECAY_FRACTIONS: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8)


def decay_milestones(iterations: int) -> list[int]:
    """Step counts after which MultiStepLR multiplies the step size by 0.1 (3/8, 5/8, 7/8 of ``iterations``)."""
    return sorted({max(1, int(iterations * f)) for f in DECAY_FRACTIONS if int(iterations * f) < iterations})


def final_step_size(lr: float, iterations: int, decay: bool = True) -> float:
    """The Adam step size of the last iteration (``lr * 0.1 ** k`` with k milestones passed)."""
    return lr * 0.1 ** len(decay_milestones(iterations)) if decay else lr


class InvertingGradients(Attack):
    """Inverting Gradients with given labels.

    Args:
        iterations: Adam steps per restart (inversefed ``DEFAULT_CONFIG``: 4800; the paper's CLI: 24 000).
        lr: Adam step size before decay.
        tv: weight of the total-variation prior (inversefed CLI default 1e-4; ``DEFAULT_CONFIG`` 1e-1,
            CIFAR notebooks 1e-6, ImageNet notebooks 1e-1).
        signed: step on ``sign(dL/dx)`` instead of ``dL/dx`` (the reference default).
        boxed: clamp the dummy input to [0, 1] after every step.
        restarts: independent runs from dummies seeded ``seed, seed + 1, ...``; the lowest finite final
            objective wins.
        init: dummy initialisation, ``randn`` (reference), ``rand`` or ``half`` (see ``init_dummy``).
        dtype: precision the attack optimises in (``float32`` or ``float64``).
        seed: seed of restart 0's dummy (a CPU ``torch.Generator``; global RNG state is untouched).
        decay: multiply the step size by 0.1 at 3/8, 5/8 and 7/8 of ``iterations``.

    ``AttackResult.iterations`` counts the Adam steps run over *all* restarts (``restarts * iterations``
    unless a restart stopped early on a non-finite objective); ``info["iterations_per_restart"]`` has the
    per-restart count. The trace's iteration axis is the same running step count, so its last point is
    ``(result.iterations, result.final_loss)``. ``final_loss`` is the objective (cosine distance + TV term)
    evaluated at the returned reconstruction, i.e. after the last step and projection.
    """

    name = "ig"
    facts = AttackFacts(label="IG", order=3, color="#009E73", marker="D")

    def __init__(self, iterations: int = 4800, lr: float = 0.1, tv: float = 1e-4, signed: bool = True,
                 boxed: bool = True, restarts: int = 1, init: str = "randn", dtype: str = "float32", seed: int = 0,
                 decay: bool = True) -> None:
        if int(iterations) < 1:
            raise UserInputError(f"attack.iterations={iterations!r} must be >= 1.")
        if int(restarts) < 1:
            raise UserInputError(f"attack.restarts={restarts!r} must be >= 1.")
        if not float(lr) > 0:
            raise UserInputError(f"attack.lr={lr!r} must be > 0.")
        if not float(tv) >= 0:
            raise UserInputError(f"attack.tv={tv!r} must be >= 0.")
        self.iterations = int(iterations)
        self.lr = float(lr)
        self.tv = float(tv)
        self.signed = bool(signed)
        self.boxed = bool(boxed)
        self.restarts = int(restarts)
        self.init = str(init)
        self.dtype = str(dtype)
        self.torch_dtype = attack_dtype(self.dtype)
        self.seed = int(seed)
        self.decay = bool(decay)

    def objective(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_fn: Any,
                  targets: list[torch.Tensor]) -> torch.Tensor:
        """``cosine_distance(grad(x), target) + tv * TV(x)``, differentiable w.r.t. ``x``."""
        value = cosine_distance(model_gradients(model, x, labels, loss_fn), targets)
        if self.tv > 0:
            value = value + self.tv * total_variation(x)
        return value

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        if shared.labels is None:
            raise UnsupportedInputError("Inverting Gradients (attack=ig) needs the labels the gradient was computed "
                                        "with; this trial gives none.")
        loss_fn = get_loss(shared.loss)
        model, targets = prepare(shared, self.torch_dtype)
        device = targets[0].device
        labels = shared.labels.detach().to(device)
        shape = (int(shared.batch_size), *(int(v) for v in shared.input_shape))

        if trace is not None:
            trace.start()
        candidates: list[torch.Tensor] = []
        losses: list[float] = []
        steps_run: list[int] = []
        for restart in range(self.restarts):
            x, loss, steps = self._run(model, targets, labels, loss_fn, shape, device, restart, sum(steps_run), trace)
            candidates.append(x)
            losses.append(loss)
            steps_run.append(steps)

        # Score over finite losses only, indexing the candidates by the restart's own index.
        finite = [r for r, value in enumerate(losses) if math.isfinite(value)]
        chosen = min(finite, key=lambda r: losses[r]) if finite else 0
        total = sum(steps_run)
        result = AttackResult(
            reconstruction=candidates[chosen].to(torch.float64),
            labels=shared.labels.detach().clone().long(),
            labels_given=True,
            iterations=total,
            final_loss=losses[chosen],
            info={
                "restart_losses": [value if math.isfinite(value) else None for value in losses],
                "chosen_restart": chosen,
                "iterations_per_restart": steps_run,
                "all_restarts_nonfinite": not finite,
            },
        )
        if trace is not None:
            trace.record(total, result.final_loss, result.reconstruction, force=True)
        return result

    def _run(self, model: nn.Module, targets: list[torch.Tensor], labels: torch.Tensor, loss_fn: Any,
             shape: tuple[int, ...], device: torch.device, restart: int, offset: int,
             trace: TraceRecorder | None) -> tuple[torch.Tensor, float, int]:
        """One restart: returns the final (projected) dummy, its objective and the steps run.

        Iteration ``it`` evaluates the objective at the dummy after ``it`` steps; that value is what the
        trace records for step ``it`` (so every recorded loss belongs to the recorded image) and what the
        next step differentiates. A non-finite objective ends the restart early.
        """
        generator = torch.Generator(device="cpu").manual_seed(self.seed + restart)
        x = init_dummy(shape, self.init, generator, self.torch_dtype, device).requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr)
        milestones = decay_milestones(self.iterations) if self.decay else []
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        loss = float("nan")
        steps = 0
        for it in range(self.iterations + 1):
            value = self.objective(model, x, labels, loss_fn, targets)
            loss = float(value.detach())
            if it > 0 and trace is not None:
                trace.record(offset + it, loss, x.detach())
            if it == self.iterations or not math.isfinite(loss):
                break
            optimizer.zero_grad(set_to_none=True)
            (grad,) = torch.autograd.grad(value, [x])
            x.grad = grad.sign() if self.signed else grad
            optimizer.step()
            scheduler.step()
            if self.boxed:
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
            steps = it + 1
        return x.detach(), loss, steps
