"""The R-GAP/DLG hybrid: DLG's gradient matching started from R-GAP's closed-form reconstruction.

R-GAP (``rgap.algorithm.recursive.RGAP``) runs first, inside the timed attack; its reconstruction replaces DLG's noise
as the starting point, and L-BFGS then refines the input alone with the label R-GAP was given (the hybrid
needs labels, as R-GAP does: ``labels_given`` is True). Where R-GAP is exact the refinement has nothing
left to do; where it is not (rank-deficient layers, float32 or noisy gradients) DLG polishes its answer.
"""

from __future__ import annotations

import torch

from baselines.common import prepare
from baselines.dlg import GradientMatching, _local_trace, _objective
from rgap.algorithm.recursive import RGAP
from rgap.attack import Attack, AttackFacts, AttackResult, SharedGradient, TraceRecorder
from rgap.attack.losses import get_loss
from rgap.core.errors import UnsupportedError, UnsupportedInputError


class HGAP(GradientMatching, Attack):
    """R-GAP, then DLG (L-BFGS on the Euclidean gradient distance) on the input, with the given labels.

    Args are ``GradientMatching``'s (no ``init``/``seed``: the start is R-GAP's reconstruction) plus
    R-GAP's ``weight_constraints`` and ``balance``. The trace gets a point at iteration 0: R-GAP's
    reconstruction and its gradient loss. ``info`` holds R-GAP's info, ``rgap_seconds`` (R-GAP's share of
    the attack time) and ``rgap_grad_loss`` (the gradient loss at the start).
    """

    name = "hgap"
    facts = AttackFacts(label="R-GAP+DLG (hybrid)", order=4, color="#CC79A7", marker="v")

    def __init__(self, iterations: int = 300, lr: float = 1.0, history_size: int = 100, max_iter: int = 20,
                 early_stop: float = 0.0, dtype: str = "float32",
                 weight_constraints: bool = True, balance: bool = True) -> None:
        super().__init__(iterations, lr, history_size, max_iter, early_stop, dtype)
        self.rgap = RGAP(weight_constraints=weight_constraints, balance=balance)

    def reconstruct(self, shared: SharedGradient, trace: TraceRecorder | None = None) -> AttackResult:
        trace = _local_trace(trace)
        trace.start()
        try:
            start = self.rgap.reconstruct(shared)
        except UnsupportedError as exc:
            raise UnsupportedInputError(f"hybrid needs R-GAP's reconstruction: {exc}") from exc
        rgap_seconds = trace.elapsed()
        if start.combined or start.reconstruction.shape[0] != shared.batch_size:
            raise UnsupportedInputError(
                "hybrid needs R-GAP's reconstruction: R-GAP returned one combined image for "
                f"batch_size={shared.batch_size}, not one per image."
            )
        model, targets = prepare(shared, self.dtype)
        device = targets[0].device
        dummy = start.reconstruction.detach().to(device=device, dtype=self.dtype).clone().requires_grad_(True)
        labels = shared.labels.detach().to(device)  # R-GAP raised already if labels were not given
        objective = _objective(model, dummy, labels, targets, get_loss(shared.loss))
        with torch.no_grad():
            start_loss = float(objective().detach())
        trace.record(0, start_loss, dummy.detach(), force=True)
        steps, final, diverged = self.optimise([dummy], objective, dummy, trace)
        info = {**start.info, **self._result_info(diverged), "rgap_seconds": rgap_seconds,
                "rgap_grad_loss": start_loss}
        return AttackResult(
            reconstruction=dummy.detach().to(torch.float64), labels=labels.long(), labels_given=True,
            iterations=steps, final_loss=final, info=info,
        )
