"""R-GAP: the Recursive Gradient Attack on Privacy (Zhu & Blaschko, ICLR 2021), in closed form.

1. Output layer (``rgap.algorithm.heads``): read ``k = dl/dz`` from the output layer's gradient: from its bias gradient
   when it has a bias, else (one logit, logistic loss, the paper's setting) from the scalar equation
   ``<w, dl/dw> = l'(act(z)) act'(z) z``, or (several logits, softmax cross-entropy) from the rank-one weight
   gradient and one scalar equation. Labels are given to the attack or recovered on the way.
2. Downward recursion: invert the activation below (weight-constraint right-hand side ``act^-1(a) - b``),
   push ``k`` through the layer above and its activation derivative (or read it from a fully connected
   layer's bias gradient, which equals ``k``), and solve the stacked least-squares system of gradient and
   weight constraints of each layer (see ``rgap.algorithm.inverters``).

All solves run in float64 whatever precision the client used. Where the head has several readings (two roots
of the scalar equation, or two candidate labels), every reconstruction is computed and the one that
reproduces the observed gradient better is kept; for bias-free LeakyReLU networks two of them can be exact
"twins" that give the same gradient, and a box prior (fewer pixels outside [0, 1]) breaks the tie. The
choice, its rule, and whether the recovered label was ambiguous are recorded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rgap.algorithm.composite import make_stage_inverter
from rgap.algorithm.heads import TopStart, last_layer_roots, read_head
from rgap.algorithm.inverters import LayerInverter
from rgap.algorithm.network import Stage, parse_stages
from rgap.algorithm.solvers import SOLVERS, Solution, SolveOptions
from rgap.algorithm.structured import SINGLE_THREAD_LIMIT, threads
from rgap.attack import Attack, AttackFacts, AttackResult, SharedGradient, TraceRecorder
from rgap.attack.losses import get_loss, signed_labels
from rgap.core.errors import UnsupportedInputError, UnsupportedLayerError
from rgap.core.validation import as_bool, as_choice, as_float, as_int

__all__ = ["RGAP", "Candidate", "last_layer_roots"]

#: Two candidate reconstructions whose gradient residuals are within this factor are indistinguishable.
_TIE_FACTOR = 10.0
LABEL_MODES = ("given", "infer")
HEAD_LOSSES = ("logistic", "cross_entropy")


@dataclass(eq=False)
class Candidate:
    """The reconstruction that follows from one reading of the output layer."""

    start: TopStart
    x: torch.Tensor
    layers: list[str]
    residual: float = float("nan")
    box_violation: float = float("nan")


class RGAP(Attack):
    """Closed-form recursive reconstruction for chains of Conv2d/Linear layers (with or without biases), with
    eval-mode batch norm folded into them and average pooling composed with them (``rgap.algorithm.composite``).

    Args:
        weight_constraints: stack the weight constraints ``A x = z`` with the gradient constraints
            (the paper's formulation; the reference code drops them for FC layers).
        balance: weight the two constraint blocks so that each has unit mean eigenvalue in the normal
            equations (``rgap.algorithm.inverters.block_weight``). Identical results on exact gradients; far more
            robust on float32 gradients, where the unweighted system lets propagated errors dominate.
        labels: ``given`` (the attacker knows the labels, as in the paper) or ``infer`` (recover them from
            the gradient; ambiguity is reported).
        dense_limit, cg_tol, cg_maxiter: how each layer is solved (``rgap.algorithm.solvers.SolveOptions``).
        solver: ``structured`` (default: Conv2d layers by CG preconditioned with their channel and convolution
            structure, ``rgap.algorithm.structured``) or ``generic`` (dense solves up to ``dense_limit`` unknowns, plain
            CG above).
    """

    name = "rgap"
    facts = AttackFacts(label="R-GAP", order=0, color="#0072B2", marker="o", closed_form=True)

    def __init__(self, weight_constraints: bool = True, balance: bool = True, labels: str = "given",
                 dense_limit: int = 4096, cg_tol: float = 1e-13, cg_maxiter: int = 20000,
                 solver: str = "structured") -> None:
        self.weight_constraints = as_bool(weight_constraints, "attack.weight_constraints")
        self.balance = as_bool(balance, "attack.balance")
        self.labels = as_choice(labels, "attack.labels", LABEL_MODES)
        solver = as_choice(solver, "attack.solver", SOLVERS,
                           meaning="structured: preconditioned CG using each conv layer's structure; generic: dense "
                                   "solves up to attack.dense_limit unknowns, plain CG above")
        self.options = SolveOptions(dense_limit=as_int(dense_limit, "attack.dense_limit", minimum=0),
                                    cg_tol=as_float(cg_tol, "attack.cg_tol", positive=True),
                                    cg_maxiter=as_int(cg_maxiter, "attack.cg_maxiter", minimum=1),
                                    solver=solver)

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        """The reconstruction; on the CPU, networks whose layers all have at most ``SINGLE_THREAD_LIMIT``
        unknowns run on one torch thread (their operations are too small to share out; measured on 2 cores,
        two threads made a 32 px CNN6 several times slower)."""
        small = int(torch.Size(shared.input_shape).numel()) <= SINGLE_THREAD_LIMIT
        with threads(1 if small and shared.gradients[0].device.type == "cpu" else None):
            return self._reconstruct(shared)

    def _reconstruct(self, shared: SharedGradient) -> AttackResult:
        if self.labels == "given" and shared.labels is None:
            raise UnsupportedInputError("R-GAP was asked to use the given labels, but none were given; "
                                        "set attack.labels=infer.")
        model = copy.deepcopy(shared.model).to(torch.float64)
        stages = parse_stages(model, shared.input_shape)
        self._check_supported(stages, shared.batch_size, shared.loss)
        inverters = [make_stage_inverter(s) for s in stages]
        device = shared.gradients[0].device
        params = [shared.gradients[i].detach().to(device=device, dtype=torch.float64)
                  for i in range(len(shared.gradients))]
        grads = [params[s.param_index] for s in stages]
        top_bias_grad = params[stages[-1].bias_index] if stages[-1].has_bias else None
        k_grads = [params[s.k_index] if s.k_index is not None else None for s in stages]
        if not any(bool(g.any()) for g in params):
            raise UnsupportedInputError("The shared gradient is all zeros: it carries no information to invert.")
        given = shared.labels.detach().to(device) if self.labels == "given" else None

        starts = read_head(stages[-1], grads[-1], top_bias_grad, shared.loss, given, shared.batch_size)
        if not starts:
            raise UnsupportedInputError("R-GAP could not read the output layer's gradient (all-zero gradient).")
        candidates = [self._recurse(start, stages, inverters, grads, k_grads) for start in starts]
        combined = shared.batch_size > 1
        for cand in candidates:
            target = _residual_target(cand.start, given, combined, device)
            cand.residual = _gradient_residual(model, cand.x.reshape(1, *shared.input_shape), target, shared.loss,
                                               params)
            cand.box_violation = float((cand.x.clamp(max=0).abs() + (cand.x - 1).clamp(min=0)).mean())
        floor = float(np.sqrt(torch.finfo(shared.gradients[0].dtype).eps))
        best, rule, tied = _choose(candidates, floor)
        reconstruction = best.x.reshape(1, *shared.input_shape)
        info = {
            "rgap_head": best.start.rule,
            "rgap_roots": len(candidates),
            "rgap_root_index": candidates.index(best),
            "rgap_root_rule": rule,
            "rgap_grad_residual": best.residual,
            "rgap_layers": " ".join(best.layers),
        }
        if best.start.z is not None and best.start.z.numel() == 1:
            info["rgap_z_top"] = float(best.start.z)
        labels = given
        if given is None:
            labels = best.start.labels
            recovered = {tuple(c.start.labels.tolist()) for c in tied if c.start.labels is not None}
            info["rgap_label_ambiguous"] = labels is None or len(recovered) > 1
        return AttackResult(reconstruction=reconstruction.to(torch.float64), labels=labels,
                            labels_given=given is not None, combined=combined, info=info)

    @staticmethod
    def _check_supported(stages: list[Stage], batch_size: int, loss: str) -> None:
        if loss not in HEAD_LOSSES:
            raise UnsupportedInputError(f"R-GAP reads the output layer for the losses {', '.join(HEAD_LOSSES)}, "
                                        f"not loss={loss!r}.")
        if stages[-1].post:
            raise UnsupportedLayerError(
                f"R-GAP reads the logits from the output layer's gradient; batch norm after the output layer "
                f"{stages[-1].name} is not supported (remove it or put it before the output layer)."
            )
        top = stages[-1].layer
        if not isinstance(top, nn.Linear):
            raise UnsupportedLayerError(f"R-GAP's closed-form first step needs a Linear output layer, got {top!r}.")
        if loss == "logistic" and top.out_features != 1:
            raise UnsupportedLayerError(
                f"R-GAP's logistic head needs a single-logit output layer, but {top!r} has {top.out_features}."
            )
        if loss == "cross_entropy" and top.out_features < 2:
            raise UnsupportedLayerError(f"Softmax cross-entropy needs at least two logits, but {top!r} has one.")
        if batch_size > 1 and any(not isinstance(s.layer, nn.Linear) for s in stages):
            raise UnsupportedInputError(
                f"R-GAP inverts convolutional networks one image at a time; batch_size={batch_size} is supported "
                "only for fully connected networks (as one combined reconstruction)."
            )

    def _recurse(self, start: TopStart, stages: list[Stage], inverters: list[LayerInverter],
                 grads: list[torch.Tensor], k_grads: list[torch.Tensor | None]) -> Candidate:
        """Solve the stages from the top down; each stage inverter removes its own offsets (bias, batch norm).

        ``k_grads[i]`` is the gradient of a parameter that equals stage ``i``'s ``k`` (``Stage.k_index``), if any.
        """
        top = stages[-1]
        k = start.k
        z_top = start.z if self.weight_constraints else None
        solution = inverters[-1].solve(k, grads[-1], z_top, self.balance, self.options)
        layers = [_describe(top, solution)]
        x = solution.x
        for i in range(len(stages) - 2, -1, -1):
            stage = stages[i]
            a = x.reshape(stage.output_shape)
            z_i = stage.activation.inverse(a)
            if k_grads[i] is not None:
                k = k_grads[i].reshape(stage.output_shape)  # a fully connected layer's bias (or BN beta) gradient
            else:
                k = inverters[i + 1].input_vjp(k).reshape(stage.output_shape) * stage.activation.derivative(z_i)
            solution = inverters[i].solve(k, grads[i], z_i if self.weight_constraints else None, self.balance,
                                          self.options)
            layers.append(_describe(stage, solution, stage.activation.out_of_range(a)))
            x = solution.x
        return Candidate(start=start, x=x, layers=layers[::-1])


def _residual_target(start: TopStart, given: torch.Tensor | None, combined: bool, device: torch.device) -> torch.Tensor:
    """Labels under which a candidate's gradient is compared with the observed one."""
    if combined:  # one image standing for the batch, trained on the batch's mean (soft) label
        y = float(signed_labels(given).mean()) if given is not None else 0.0
        y = y if y != 0.0 else 0.1
        return torch.full((1,), (y + 1) / 2, dtype=torch.float64, device=device)
    labels = given if given is not None else start.labels
    if labels is None:  # a zero bias gradient carries no label; score under label 0
        return torch.zeros(1, dtype=torch.long, device=device)
    return labels


def _describe(stage: Stage, solution: Solution, clipped: int = 0) -> str:
    """``name:rank/n:method``, plus for CG the preconditioner (structured path), iterations, residual, condition
    estimate and convergence.

    CG does not compute the rank: it is shown as ``?/n``.
    """
    rank = solution.rank if solution.rank_computed else "?"
    text = f"{stage.name}:{rank}/{solution.n}:{solution.method}"
    if solution.preconditioner is not None:
        text += f":pre={solution.preconditioner}"
    if solution.iterations is not None:
        text += f":it={solution.iterations}"
    if solution.residual is not None:
        text += f":res={solution.residual:.1e}"
    if solution.cond is not None:
        text += f":cond={solution.cond:.2g}"
    if solution.converged is False:
        text += ":NOT-converged"
    return text + f":clipped={clipped}" if clipped else text


def _gradient_residual(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss: str,
                       grads: list[torch.Tensor]) -> float:
    """Relative L2 distance between the gradient that ``x`` produces and the observed one (all parameters)."""
    params = list(model.parameters())
    logits = model(x.to(params[0]))
    produced = torch.autograd.grad(get_loss(loss)(logits, labels), params)
    num = sum(float(((p - g) ** 2).sum()) for p, g in zip(produced, grads, strict=True))
    den = sum(float((g**2).sum()) for g in grads)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


def _choose(candidates: list[Candidate], floor: float) -> tuple[Candidate, str, list[Candidate]]:
    """Pick a candidate: by gradient residual, or by the box prior among those the residual cannot tell apart.

    Residuals below ``floor`` (sqrt of the gradient dtype's machine epsilon) are round-off, as are residuals
    within ``_TIE_FACTOR`` of the best one. Returns the choice, its rule and the tied candidates.
    """
    if not all(c.start.exact for c in candidates):
        return candidates[0], "closest", candidates[:1]
    if len(candidates) == 1:
        return candidates[0], "unique", candidates
    bound = max(_TIE_FACTOR * min(c.residual for c in candidates), floor)
    tied = [c for c in candidates if c.residual <= bound]
    if len(tied) == 1:
        return tied[0], "gradient", tied
    return min(tied, key=lambda c: c.box_violation), "box-prior", tied
