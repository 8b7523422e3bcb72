"""The attacked networks: CNN6, CNN6-d, FCN3 (R-GAP reference code, branch ``main``) and a Sigmoid LeNet
(reference code, branch ``dev``). All are plain ``nn.Sequential`` stacks of weight layers (bias-free as in
the paper unless ``bias=True``) and activations, ending in one logit (logistic loss) or ``num_classes``
logits (softmax cross-entropy), built for any input shape and seeded.

Models are built through Hydra ``_target_`` (``conf/model/*.yaml``); each builder takes the dataset's
``input_shape`` and the trial ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rgap.core.errors import UserInputError
from rgap.core.validation import as_bool, as_choice, as_float, as_int

ConvSpec = tuple[int, int, int, int]  # out_channels, kernel, stride, padding


def _init_default(model: nn.Module, std: float) -> None:
    """Keep PyTorch's default initialisation (already applied at construction)."""


def _init_normal(model: nn.Module, std: float) -> None:
    """Weights ~ N(0, std^2), as the reference code's ``weight_init`` for its noise study (std 0.01)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.normal_(module.bias, mean=0.0, std=std)


def _init_uniform(model: nn.Module, std: float) -> None:
    """Weights ~ U(-std, std); DLG/iDLG's LeNet uses U(-0.5, 0.5)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(module.weight, -std, std)
            if module.bias is not None:
                nn.init.uniform_(module.bias, -std, std)


INIT_SCHEMES: dict[str, Callable[[nn.Module, float], None]] = {
    "default": _init_default,
    "normal": _init_normal,
    "uniform": _init_uniform,
}

ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "leaky_relu": lambda slope: nn.LeakyReLU(negative_slope=slope),
    "sigmoid": lambda slope: nn.Sigmoid(),
    "identity": lambda slope: nn.Identity(),
    "relu": lambda slope: nn.ReLU(),
}


def _activation(name: str, slope: float) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserInputError(f"Unknown activation {name!r}; valid choices: {', '.join(sorted(ACTIVATIONS))}.")
    return ACTIVATIONS[name](slope)


def _seeded_build(builder: Callable[[], nn.Module], seed: int, init: str, init_std: float) -> nn.Module:
    """Build a model under a forked RNG seeded with ``seed`` so construction never touches global state."""
    if init not in INIT_SCHEMES:
        raise UserInputError(f"Unknown init scheme {init!r}; valid choices: {', '.join(sorted(INIT_SCHEMES))}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder()
        INIT_SCHEMES[init](model, init_std)
    return model.eval()


def head_size(num_outputs: int, num_classes: int | None) -> int:
    """Logits of the output layer: ``num_classes`` when the model config sets it, else ``num_outputs``."""
    if num_classes is not None:
        return as_int(num_classes, "model.num_classes", minimum=1)
    return as_int(num_outputs, "num_outputs", minimum=1)


def check_options(init_std: float, slope: float, bias: bool) -> None:
    """The options every zoo model shares: ``init_std`` finite and > 0, ``slope`` finite, ``bias`` a boolean."""
    as_float(init_std, "model.init_std", positive=True)
    as_float(slope, "model.slope")
    as_bool(bias, "model.bias")


def conv_net(
    input_shape: Sequence[int],
    convs: Sequence[ConvSpec],
    hidden: Sequence[int] = (),
    activation: str = "leaky_relu",
    slope: float = 0.2,
    num_outputs: int = 1,
    seed: int = 0,
    init: str = "default",
    init_std: float = 0.01,
    bias: bool = False,
    num_classes: int | None = None,
) -> nn.Sequential:
    """Conv stack -> flatten -> fully connected layers -> ``num_outputs`` (or ``num_classes``) logits.

    Every conv and hidden FC layer is followed by ``activation``; the output layer by none. Layers are
    bias-free unless ``bias=True``.
    """
    channels, height, width = (int(v) for v in input_shape)
    num_outputs = head_size(num_outputs, num_classes)
    check_options(init_std, slope, bias)

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        in_ch = channels
        for out_ch, kernel, stride, padding in convs:
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias),
                _activation(activation, slope),
            ]
            in_ch = out_ch
        layers.append(nn.Flatten())
        with torch.no_grad():
            features = nn.Sequential(*layers)(torch.zeros(1, channels, height, width)).shape[1]
        for width_out in hidden:
            layers += [nn.Linear(features, width_out, bias=bias), _activation(activation, slope)]
            features = width_out
        layers.append(nn.Linear(features, num_outputs, bias=bias))
        return nn.Sequential(*layers)

    return _seeded_build(build, seed, init, init_std)


def cnn6(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
         slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
         num_classes: int | None = None) -> nn.Sequential:
    """CNN6 of the R-GAP paper (Fig. 3): six bias-free convs with LeakyReLU(0.2) and one FC logit."""
    convs = [(12, 4, 2, 2), (36, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1)]
    return conv_net(input_shape, convs, slope=slope, num_outputs=num_outputs, seed=seed, init=init,
                    init_std=init_std, bias=bias, num_classes=num_classes)


def cnn6d(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
          slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
          num_classes: int | None = None) -> nn.Sequential:
    """CNN6-d: CNN6 with conv2 narrowed to 20 channels, which makes conv2 rank-deficient for R-GAP."""
    convs = [(12, 4, 2, 2), (20, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1)]
    return conv_net(input_shape, convs, slope=slope, num_outputs=num_outputs, seed=seed, init=init,
                    init_std=init_std, bias=bias, num_classes=num_classes)


def cnn6w(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
          slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
          num_classes: int | None = None) -> nn.Sequential:
    """CNN6-W: CNN6 with its stride-2 convs conv2 and conv5 widened to 4x their input channels (48, 192).

    A stride-2 conv keeps as many outputs as inputs only with 4x the channels; CNN6's conv2 (12 -> 36) leans on
    its gradient constraints, which suffice at 32 px but not at 64 or 128 px, where R-GAP's system turns
    rank-deficient. CNN6-W stays full rank at any input size (see ``runners.rank``).
    """
    convs = [(12, 4, 2, 2), (48, 3, 2, 1), (48, 3, 1, 1), (48, 3, 1, 1), (192, 3, 2, 1), (128, 3, 1, 1)]
    return conv_net(input_shape, convs, slope=slope, num_outputs=num_outputs, seed=seed, init=init,
                    init_std=init_std, bias=bias, num_classes=num_classes)


def lenet(input_shape: Sequence[int], seed: int = 0, init: str = "normal", init_std: float = 0.01,
          num_outputs: int = 1, bias: bool = False, num_classes: int | None = None) -> nn.Sequential:
    """LeNet with Sigmoid activations (reference code, branch ``dev``; also DLG's and iDLG's victim)."""
    convs = [(12, 5, 2, 2), (12, 5, 2, 2), (12, 5, 1, 2)]
    return conv_net(input_shape, convs, activation="sigmoid", num_outputs=num_outputs, seed=seed, init=init,
                    init_std=init_std, bias=bias, num_classes=num_classes)


def fcn3(input_shape: Sequence[int], seed: int = 0, init: str = "default", init_std: float = 0.01,
         slope: float = 0.2, num_outputs: int = 1, bias: bool = False,
         num_classes: int | None = None) -> nn.Sequential:
    """FCN3: |x| -> 1000 -> 100 -> 1, bias-free, LeakyReLU(0.2) after every layer including the last."""
    num_outputs = head_size(num_outputs, num_classes)
    check_options(init_std, slope, bias)
    features = 1
    for v in input_shape:
        features *= int(v)

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, 1000, bias=bias), nn.LeakyReLU(slope),
            nn.Linear(1000, 100, bias=bias), nn.LeakyReLU(slope),
            nn.Linear(100, num_outputs, bias=bias), nn.LeakyReLU(slope),
        )

    return _seeded_build(build, seed, init, init_std)


#: The ``loss`` option: the task a model's head is built for.
LOSS_CHOICES = ("auto", "logistic", "cross_entropy")


def resolve_loss(loss: str, num_classes: Any) -> str:
    """The loss of the task: ``auto`` is cross-entropy when ``model.num_classes`` asks for more than one logit,
    else logistic."""
    loss = as_choice(loss, "loss", LOSS_CHOICES)
    if loss != "auto":
        return loss
    requested = None if num_classes is None else as_int(num_classes, "model.num_classes", minimum=1)
    return "cross_entropy" if requested is not None and requested > 1 else "logistic"


def task_head(loss: str, num_classes: Any, dataset_classes: int) -> tuple[str, int]:
    """(loss, logits of the output layer) of the task: ``model.num_classes`` logits when set, else 1 (logistic)
    or the dataset's class count (cross-entropy). Combinations that cannot train are a ``UserInputError``."""
    loss = resolve_loss(loss, num_classes)
    requested = None if num_classes is None else as_int(num_classes, "model.num_classes", minimum=1)
    if loss == "logistic":
        if dataset_classes != 2:
            raise UserInputError(
                f"loss=logistic trains one logit on binary labels, but dataset.num_classes={dataset_classes}; "
                "set dataset.num_classes=2, or loss=cross_entropy for a multi-class head."
            )
        if requested is not None and requested != 1:
            raise UserInputError(f"loss=logistic needs one logit, but model.num_classes={requested}; "
                                 "use loss=cross_entropy (or loss=auto) or model.num_classes=null.")
        return loss, 1
    outputs = dataset_classes if requested is None else requested
    if outputs < max(2, dataset_classes):
        raise UserInputError(
            f"model.num_classes={requested} is too small for loss=cross_entropy on a dataset with "
            f"{dataset_classes} classes; set model.num_classes >= {max(2, dataset_classes)} or null."
        )
    return loss, outputs
