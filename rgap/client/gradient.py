"""The federated client's update: the gradient of its batch, defended before it is shared.

``Client.share(model, images, labels)`` computes the mean-loss gradient in the client's precision (with the
reference code's reversed label when asked), computes each example's own gradient when its defense needs them
(DP-SGD's per-example clipping), applies the defense and returns what the server sees: a ``SharedGradient``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from rgap.attack import SharedGradient
from rgap.attack.losses import get_loss, reversed_labels
from rgap.client.defenses import Defense, NoDefense, defense_generator
from rgap.core.validation import as_choice

DTYPES: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}
PRECISIONS = tuple(DTYPES)
LABEL_MODES = ("true", "reversed")
#: The module mode the client computes its gradient in: eval (running statistics, no dropout) or train.
CLIENT_MODES = ("eval", "train")


@dataclass
class Client:
    """A client that trains ``loss`` in ``precision`` on ``device`` and shares its gradient through ``defense``.

    ``label_mode="reversed"`` trains on the label opposite to the model's prediction, as the R-GAP reference code
    does (it makes the last-layer equation's root unique); with several logits, on the least likely class.
    ``seed`` seeds the defense's noise. ``mode`` is the module mode of the client's model while it computes the
    gradient (``eval``: batch norm uses its running statistics, dropout is off; ``train``: batch statistics and
    random dropout masks, which R-GAP cannot invert); the attacker's copy is shared in that mode.
    """

    loss: str
    precision: str = "float64"
    label_mode: str = "true"
    device: torch.device | str = "cpu"
    defense: Defense = field(default_factory=NoDefense)
    seed: int = 0
    mode: str = "eval"

    def __post_init__(self) -> None:
        as_choice(self.precision, "precision", PRECISIONS)
        as_choice(self.label_mode, "label", LABEL_MODES)
        as_choice(self.mode, "client_mode", CLIENT_MODES)

    def share(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> SharedGradient:
        """The defended gradient of the mean loss over ``images``; the model copy keeps the client's dtype."""
        local = copy.deepcopy(model).to(device=self.device, dtype=DTYPES[self.precision])
        local.train(self.mode == "train")
        x = images.to(device=self.device, dtype=DTYPES[self.precision])
        logits = local(x)
        if self.label_mode == "reversed":
            labels = reversed_labels(logits)
        labels = labels.to(self.device)
        params = list(local.parameters())
        grads = [g.detach() for g in torch.autograd.grad(get_loss(self.loss)(logits, labels), params)]
        per_example = per_example_gradients(local, x, labels, self.loss) if self.defense.needs_per_example else None
        defended = self.defense.defend(grads, per_example, defense_generator(self.seed))
        return SharedGradient(model=local, gradients=defended, labels=labels.detach(), loss=self.loss,
                              input_shape=tuple(images.shape[1:]), batch_size=images.shape[0])


def per_example_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                          loss: str) -> list[list[torch.Tensor]]:
    """Each example's own gradient of ``loss`` (same model, dtype and labels as the batch gradient)."""
    params = list(model.parameters())
    fn = get_loss(loss)
    return [[g.detach() for g in torch.autograd.grad(fn(model(x[i : i + 1]), labels[i : i + 1]), params)]
            for i in range(x.shape[0])]


def compute_shared_gradient(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss: str = "logistic",
    precision: str = "float64",
    label_mode: str = "true",
    device: torch.device | str = "cpu",
) -> SharedGradient:
    """The undefended update of a :class:`Client` (kept as a function for scripts and reference setups)."""
    return Client(loss=loss, precision=precision, label_mode=label_mode, device=device).share(model, images, labels)
