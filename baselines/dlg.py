"""Deep Leakage from Gradients (DLG, Zhu et al. 2019) and improved DLG (iDLG, Zhao et al. 2020).

Both match the dummy's gradient to the shared one with DLG's objective (sum over layers of the squared
Euclidean distance) and L-BFGS; one iteration is one ``optimizer.step`` (up to ``max_iter`` closure
evaluations), as in DLG's code.

- ``DLG`` optimises the dummy input and a dummy label (logits; soft label ``softmax``/``sigmoid``) jointly.
- ``IDLG`` first reads the label off the last layer's weight gradient (``infer_labels``), then optimises
  the input alone with the hard label.

``GradientMatching`` is the optimisation loop they share with the R-GAP/DLG hybrid (``baselines.hgap``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from baselines.common import (
    INITS,
    attack_dtype,
    euclidean_distance,
    init_dummy,
    model_gradients,
    prepare,
)
from rgap.attack import Attack, AttackFacts, AttackResult, SharedGradient, TraceRecorder
from rgap.attack.losses import get_loss, get_soft_loss, hard_labels
from rgap.core.errors import UnsupportedInputError, UnsupportedLayerError
from rgap.core.validation import as_choice, as_float, as_int

#: Activations whose outputs are never negative: the iDLG sign rule holds when one feeds the last layer.
NONNEGATIVE_ACTIVATIONS = (nn.Sigmoid, nn.ReLU, nn.ReLU6, nn.Softplus, nn.Softmax)


def _local_trace(trace: TraceRecorder | None) -> TraceRecorder:
    """The caller's recorder, or a timing-only one that keeps no per-iteration points."""
    return trace if trace is not None else TraceRecorder(every=10**9)


def early_stop_interval(iterations: int) -> int:
    """Steps between two early-stop checks: iDLG's ``int(Iteration / 30)`` (10 of 300), at least 1."""
    return max(1, int(iterations) // 30)


class GradientMatching:
    """L-BFGS on DLG's gradient distance; the loop DLG, iDLG and the hybrid share.

    Args:
        iterations: L-BFGS steps (``optimizer.step`` calls), >= 1; DLG and iDLG use 300.
        lr: L-BFGS learning rate (DLG: 1).
        history_size: L-BFGS history (PyTorch's default 100, as DLG).
        max_iter: closure evaluations per step (PyTorch's default 20, as DLG).
        early_stop: iDLG's convergence stop: after steps 1, 1 + k, 1 + 2k, ... with
            ``k = early_stop_interval(iterations)`` (every 10 of 300), the gradient loss at the new iterate is
            evaluated and the run ends if it is below ``early_stop``. ``0`` never stops early (DLG's code);
            iDLG's code uses ``1e-6``. The check's evaluation is not an L-BFGS closure evaluation.
        dtype: ``float32`` or ``float64``, the precision the attack optimises in.

    Every value is validated here: a wrong type, NaN, inf or an out-of-range value raises ``UserInputError``.
    """

    def __init__(self, iterations: int = 300, lr: float = 1.0, history_size: int = 100, max_iter: int = 20,
                 early_stop: float = 0.0, dtype: str = "float32") -> None:
        self.iterations = as_int(iterations, "attack.iterations", minimum=1, meaning="the number of L-BFGS steps")
        self.lr = as_float(lr, "attack.lr", positive=True, meaning="the L-BFGS learning rate")
        self.history_size = as_int(history_size, "attack.history_size", minimum=1,
                                   meaning="the L-BFGS history length")
        self.max_iter = as_int(max_iter, "attack.max_iter", minimum=1,
                               meaning="closure evaluations per L-BFGS step")
        self.early_stop = as_float(early_stop, "attack.early_stop", minimum=0.0,
                                   meaning="stop once the gradient loss is below it; 0 never stops early")
        self.dtype_name = dtype
        self.dtype = attack_dtype(dtype)
        self._run_info: dict[str, Any] = {}

    def optimise(self, params: list[torch.Tensor], objective: Callable[[], torch.Tensor], dummy: torch.Tensor,
                 trace: TraceRecorder) -> tuple[int, float, bool]:
        """Run L-BFGS on ``params`` (``dummy`` is the image batch among them, the one traced).

        Step ``it`` (1-based) is traced with the loss ``optimizer.step`` returns, i.e. the loss at the iterate
        before the step. Returns ``(iterations run, final gradient loss, diverged)``; the closure count and
        whether the early stop fired go to ``info`` (``_result_info``). On a NaN/inf loss the loop stops and
        ``params`` are restored to the last iterate with a finite loss (whose loss is then reported).
        """
        optimizer = torch.optim.LBFGS(params, lr=self.lr, history_size=self.history_size, max_iter=self.max_iter)
        evaluations = 0

        def closure() -> torch.Tensor:
            nonlocal evaluations
            evaluations += 1
            loss = objective()
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g.detach()
            return loss.detach()

        interval = early_stop_interval(self.iterations)
        last_good = [p.detach().clone() for p in params]
        diverged = stopped_early = False
        steps = 0
        for it in range(1, self.iterations + 1):
            before = [p.detach().clone() for p in params]
            loss = float(optimizer.step(closure))  # the loss at ``before``, as L-BFGS evaluates it first
            steps = it
            if not math.isfinite(loss) or not all(torch.isfinite(p).all() for p in params):
                diverged = True
                if math.isfinite(loss):
                    last_good = before
                break
            last_good = before
            trace.record(it, loss, dummy.detach())
            if self.early_stop > 0 and (it - 1) % interval == 0 and float(objective().detach()) < self.early_stop:
                stopped_early = True
                break
        with torch.no_grad():
            final = float(objective().detach()) if not diverged else float("nan")
        if not math.isfinite(final):
            diverged = True
            with torch.no_grad():
                for p, good in zip(params, last_good, strict=True):
                    p.copy_(good)
            final = float(objective().detach())
        trace.record(steps, final, dummy.detach(), force=True)
        self._run_info = {"closure_evaluations": evaluations, "stopped_early": stopped_early}
        return steps, final, diverged

    def _result_info(self, diverged: bool) -> dict[str, Any]:
        return {"diverged": diverged, "dtype": self.dtype_name, **self._run_info}


def _objective(model: nn.Module, dummy: torch.Tensor, label: torch.Tensor, targets: list[torch.Tensor],
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def objective() -> torch.Tensor:
        with torch.enable_grad():
            return euclidean_distance(model_gradients(model, dummy, label, loss_fn), targets)

    return objective


class DLG(GradientMatching, Attack):
    """DLG: joint optimisation of a ``randn`` dummy input and dummy label logits (labels recovered).

    The reported labels are the hard labels of the optimised dummy label (not of its initial value).
    ``init`` and ``seed`` fix the dummy input (``init``) and label logits (always ``randn``), drawn in
    that order from a CPU ``torch.Generator`` seeded with ``seed``. Defaults follow DLG's ``main.py``
    (no early stop); see ``GradientMatching`` for the other arguments.
    """

    name = "dlg"
    facts = AttackFacts(label="DLG", order=1, color="#D55E00", marker="s")

    def __init__(self, iterations: int = 300, lr: float = 1.0, history_size: int = 100, max_iter: int = 20,
                 init: str = "randn", early_stop: float = 0.0, dtype: str = "float32", seed: int = 0) -> None:
        super().__init__(iterations, lr, history_size, max_iter, early_stop, dtype)
        self.init = as_choice(init, "attack.init", list(INITS))
        self.seed = as_int(seed, "attack.seed", meaning="the seed of the dummy draws")

    def _setup(self, shared: SharedGradient):
        """The attacker's model copy, the target gradients, the seeded generator and the dummy input."""
        model, targets = prepare(shared, self.dtype)
        generator = torch.Generator().manual_seed(self.seed)
        shape = (shared.batch_size, *shared.input_shape)
        dummy = init_dummy(shape, self.init, generator, self.dtype, targets[0].device).requires_grad_(True)
        return model, targets, generator, dummy

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        trace = _local_trace(trace)
        model, targets, generator, dummy = self._setup(shared)
        device = targets[0].device
        with torch.no_grad():
            logits_shape = model(dummy).shape
        label_shape = (shared.batch_size,) if shared.loss == "logistic" else tuple(logits_shape)
        label = init_dummy(label_shape, "randn", generator, self.dtype, device).requires_grad_(True)
        objective = _objective(model, dummy, label, targets, get_soft_loss(shared.loss))
        trace.start()
        steps, final, diverged = self.optimise([dummy, label], objective, dummy, trace)
        return AttackResult(
            reconstruction=dummy.detach().to(torch.float64),
            labels=hard_labels(shared.loss, label.detach()).long(),
            labels_given=False, iterations=steps, final_loss=final,
            info={**self._result_info(diverged), "label_rule": "joint optimisation (DLG)"},
        )


def last_linear_weight_index(model: nn.Module) -> int:
    """Index in ``model.parameters()`` of the weight of the last ``nn.Linear`` (module order)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnsupportedLayerError("iDLG's label rule needs a Linear output layer; the model has none.")
    weight = linears[-1].weight
    for i, param in enumerate(model.parameters()):
        if param is weight:
            return i
    raise UnsupportedLayerError("The last Linear layer's weight is not a parameter of the model.")


def features_nonnegative(model: nn.Module) -> bool:
    """Whether the features feeding the last Linear come out of a non-negative activation (e.g. Sigmoid).

    Looks at the last leaf module before the last Linear, skipping shape-only modules (Flatten, Dropout).
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    last = max(i for i, m in enumerate(leaves) if isinstance(m, nn.Linear))
    for module in reversed(leaves[:last]):
        if isinstance(module, (nn.Flatten, nn.Dropout, nn.Unflatten)):
            continue
        return isinstance(module, NONNEGATIVE_ACTIVATIONS)
    return False


def infer_labels(shared: SharedGradient) -> tuple[torch.Tensor, dict[str, Any]]:
    """iDLG's label rule, from the last Linear layer's weight gradient ``G = dL/dW`` ([C, F]).

    Cross-entropy (C logits): ``G[c] = mean_i (p_ic - y_ic) a_i`` with ``a_i`` the features feeding the
    layer. With non-negative features (sigmoid, ReLU) the row sum ``sum_j G[c, j]`` is negative for the true
    class of a single image (``p_c - 1 < 0``) and positive for every other (``p_c > 0``): the label is the
    argmin of the row sums (iDLG). For a batch, the classes with negative row sums, most negative first,
    taking B of them (the B smallest sums if fewer are negative); this is exact for a batch of distinct
    labels only when each class's own ``p - 1`` term outweighs the others' ``p`` terms, repeated labels are
    not recoverable, and which image has which label is not identifiable: labels are returned sorted and
    should be scored as a multiset.

    Logistic loss (one logit ``f``, labels {0, 1}): with ``l = softplus(-y' f)``, ``y' = 2y - 1``,
    ``dl/df = sigmoid(f) - y``. If the output is ``f = act(z)`` with ``z = w^T a`` (``act`` the identity or
    an increasing activation such as FCN3's LeakyReLU), ``dl/dw = (sigmoid(f) - y) act'(z) a`` and
    ``sum_j dl/dw_j = (sigmoid(f) - y) act'(z) sum_j a_j``. With ``act' > 0`` and non-negative features
    (``sum_j a_j > 0``), its sign is the sign of ``sigmoid(f) - y``, which lies in (0, 1) for y = 0 and in
    (-1, 0) for y = 1: negative sum -> y = 1, positive sum -> y = 0. The rule fails when the features can be
    negative (LeakyReLU/identity features: ``sum_j a_j`` may be negative and flip the sign), and for
    batches (the sum mixes images with different labels), which raise ``UnsupportedInputError``.

    Returns ``(labels [B] int64, info)``; ``info["label_rule"]`` names the rule and
    ``info["label_features_nonnegative"]`` whether its assumption holds for this model.
    """
    model = shared.model
    grad = shared.gradients[last_linear_weight_index(model)].detach().to(torch.float64)
    row_sums = grad.reshape(grad.shape[0], -1).sum(-1)
    nonneg = features_nonnegative(model)
    info: dict[str, Any] = {"label_features_nonnegative": nonneg}
    if shared.loss == "logistic":
        if grad.shape[0] != 1:
            raise UnsupportedInputError(f"The logistic loss needs one output logit, got {grad.shape[0]}.")
        if shared.batch_size != 1:
            raise UnsupportedInputError(
                "iDLG's sign rule for the single-logit logistic loss recovers the label of one image only; "
                f"batch_size={shared.batch_size}."
            )
        info["label_rule"] = "logistic: sign of the last-layer weight-gradient sum (negative -> 1)"
        labels = (row_sums < 0).long()
    elif shared.loss == "cross_entropy":
        if shared.batch_size > grad.shape[0]:
            raise UnsupportedInputError(
                f"iDLG recovers at most one label per class: batch_size={shared.batch_size} > {grad.shape[0]} "
                "classes."
            )
        order = torch.argsort(row_sums)
        labels = order[: shared.batch_size].sort().values
        info["label_rule"] = (
            "cross_entropy: argmin of last-layer weight-gradient row sums" if shared.batch_size == 1
            else "cross_entropy: classes with the most negative row sums, sorted (multiset)"
        )
        info["label_negative_rows"] = int((row_sums < 0).sum())
    else:
        raise UnsupportedInputError(
            f"iDLG's label rule is derived for logistic and cross_entropy, got {shared.loss!r}."
        )
    return labels.to(device=shared.gradients[0].device, dtype=torch.long), info


class IDLG(DLG):
    """iDLG: the label from the last layer's weight gradient (``infer_labels``), then DLG on the input alone.

    Label inference is part of the timed attack. ``labels_given`` is False: the labels are recovered.
    Defaults follow iDLG's ``iDLG.py``, including its early stop (``early_stop=1e-6``, checked every
    ``iterations // 30`` steps).
    """

    name = "idlg"
    facts = AttackFacts(label="iDLG", order=2, color="#E69F00", marker="^")

    def __init__(self, iterations: int = 300, lr: float = 1.0, history_size: int = 100, max_iter: int = 20,
                 init: str = "randn", early_stop: float = 1e-6, dtype: str = "float32", seed: int = 0) -> None:
        super().__init__(iterations, lr, history_size, max_iter, init, early_stop, dtype, seed)

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        trace = _local_trace(trace)
        model, targets, _, dummy = self._setup(shared)
        trace.start()  # the label read-out is part of iDLG's timed work
        labels, label_info = infer_labels(shared)
        objective = _objective(model, dummy, labels, targets, get_loss(shared.loss))
        steps, final, diverged = self.optimise([dummy], objective, dummy, trace)
        return AttackResult(
            reconstruction=dummy.detach().to(torch.float64), labels=labels, labels_given=False,
            iterations=steps, final_loss=final, info={**self._result_info(diverged), **label_info},
        )
