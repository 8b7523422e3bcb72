"""Read a model as R-GAP sees it: a chain of stages ``activation(post(layer(pre(x))))`` from input to logit.

The chain is read from one forward pass (seeded random input, hooks on every unit): any ``nn.Module`` whose
forward runs its modules one after another, each on the previous one's output (reshapes allowed), is a chain,
whether it is an ``nn.Sequential``, nested ``nn.Sequential``/``nn.ModuleList`` containers or a custom module.
Residual connections, operations in ``forward`` that are not modules (``torch.relu``, ``x + y``) and modules
called twice are reported as such.

A stage is one weight layer (``rgap.algorithm.inverters``: ``Conv2d``, ``Linear``) with

* ``pre``: the affine maps between the previous activation and the layer (``rgap.algorithm.chainops``: eval-mode batch
  norm, average pooling), composed with the layer: the stage's unknown ``x`` is the input of the first of them;
* ``post``: eval-mode batch norms between the layer and its activation, folded into the layer's output per
  channel (``z = s * (W u + b) + t``): ``z`` is the stage's pre-activation and ``k = dl/dz``;
* its activation (``rgap.algorithm.activations``; identity when none follows).

Pass-throughs (``Identity``, ``Flatten``, ``Unflatten``, eval-mode dropout) disappear.

Parameters: every trainable parameter must be a weight layer's weight or bias or a batch norm's ``gamma``/
``beta``. The batch-norm gradients are used where they give ``k`` exactly: for a fully connected layer whose
output goes through batch norm, ``dl/dbeta`` of the last batch norm is ``k = dl/dz`` (each feature is its own
channel), as a bias gradient is for a fully connected layer without batch norm (``Stage.k_index``). The other
batch-norm gradients are ignored: ``dl/dgamma`` rows are linear combinations of the layer's gradient or weight
constraints (``sum_p k[c,p] (W u)[c,p] / sigma_c`` after a layer; ``sum_p (W^T k)[c,p] xhat[c,p]`` before one),
so they add no rank, and ``dl/dbeta`` before a layer, or after a convolution, constrains ``k`` only (per-channel
sums), not the unknown input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rgap.algorithm.activations import (
    ACTIVATION_REGISTRY,
    IdentityActivation,
    InvertibleActivation,
    invertible_activation,
    is_activation,
)
from rgap.algorithm.chainops import (
    ChainOp,
    ChannelAffine,
    fold_affine,
    is_chain_op,
    per_channel_scale,
    read_chain_op,
)
from rgap.algorithm.inverters import INVERTER_REGISTRY
from rgap.core.errors import UnsupportedLayerError, UserInputError

Shape = tuple[int, ...]

#: Stage-name prefix per weight-layer type (``conv1``, ``fc2``).
WEIGHT_KINDS: dict[type[nn.Module], str] = {nn.Conv2d: "conv", nn.Linear: "fc"}
WEIGHT_LAYERS = tuple(WEIGHT_KINDS)


@dataclass
class Stage:
    """One weight layer with the maps composed with it and the activation that follows it."""

    name: str
    layer: nn.Module
    activation: InvertibleActivation
    input_shape: Shape  # the stage's unknown x: input of the first pre-map, else of the layer
    output_shape: Shape  # the pre-activation z (after the post-maps)
    param_index: int  # position of ``layer.weight`` in ``list(model.parameters())``
    bias_index: int | None = None  # position of ``layer.bias`` (None: bias-free layer)
    pre: list[ChainOp] = field(default_factory=list)  # affine maps from x to the layer input, in order
    post: list[ChannelAffine] = field(default_factory=list)  # per-channel maps from the layer output to z
    layer_input_shape: Shape = ()  # the layer's own input (= input_shape without pre-maps)
    layer_output_shape: Shape = ()  # the layer's own output (= output_shape without post-maps)
    z_module: nn.Module | None = None  # the module whose output is z (the layer or its last post-map)
    k_index: int | None = None  # a parameter whose gradient equals k = dl/dz (see the module docstring)
    k_rule: str = ""  # where k_index points: "bias" or "bn beta"
    position: int = -1  # the layer's position in the chain

    def __post_init__(self) -> None:
        self.input_shape, self.output_shape = tuple(self.input_shape), tuple(self.output_shape)
        self.layer_input_shape = tuple(self.layer_input_shape) or self.input_shape
        self.layer_output_shape = tuple(self.layer_output_shape) or self.output_shape
        if self.z_module is None:
            self.z_module = self.layer

    @property
    def has_bias(self) -> bool:
        return self.bias_index is not None

    @property
    def kind(self) -> str:
        return WEIGHT_KINDS.get(type(self.layer), type(self.layer).__name__.lower())

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)

    @property
    def rank_bound(self) -> int:
        """An upper bound of the stage's rank from its pre-maps: no map passes more values than it outputs."""
        return min([self.input_size] + [op.output_size for op in self.pre])

    def notes(self) -> list[str]:
        """What is composed with the layer, e.g. ``["avgpool 2x2 composed", "bn folded (output)"]``."""
        notes = [f"{op.note} folded (input)" if isinstance(op, ChannelAffine) else f"{op.note} composed"
                 for op in self.pre]
        notes += [f"{op.note} folded (output)" for op in self.post]
        return notes


@dataclass
class Link:
    """One unit of the chain as the forward pass ran it."""

    position: int
    name: str  # qualified name in ``model.named_modules()``
    module: nn.Module
    input_shape: Shape
    output_shape: Shape

    def where(self) -> str:
        """``layer 3 (BatchNorm2d(...))``, with the qualified name when it is not just the position."""
        label = f"layer {self.position}"
        if self.name and self.name != str(self.position):
            label += f" `{self.name}`"
        return f"{label} ({self.module!r})"


@dataclass(frozen=True)
class LayerProblem:
    """Why R-GAP cannot invert one part of a model."""

    where: str  # ``layer 1 (ReLU())`` or ``the model``
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


class UnsupportedModelError(UnsupportedLayerError):
    """Every problem of a model at once (an ``UnsupportedLayerError`` whose message lists them all)."""

    def __init__(self, problems: Sequence[LayerProblem]) -> None:
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


@dataclass
class ChainReading:
    """The stages of a model and every problem found; stages are partial (for counting) when there are problems."""

    stages: list[Stage]
    problems: list[LayerProblem]


def format_problems(problems: Sequence[LayerProblem]) -> str:
    """One paragraph naming every problem with its layer, followed by what R-GAP supports."""
    if len(problems) == 1:
        text = f"R-GAP cannot invert {problems[0]}"
    else:
        listed = " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        text = f"R-GAP cannot invert this model ({len(problems)} problems): {listed}"
    return f"{text.rstrip()} {supported_text()}"


def supported_text() -> str:
    """What R-GAP supports (weight layers and activations from their registries)."""
    activations = ", ".join(sorted(t.__name__ for t in ACTIVATION_REGISTRY if t is not nn.Identity))
    return (f"Supported: {', '.join(t.__name__ for t in INVERTER_REGISTRY)} (with or without bias), the "
            f"activations {activations} (LeakyReLU with slope > 0), BatchNorm1d/2d in eval mode, AvgPool2d and "
            "AdaptiveAvgPool2d after an activation, and Identity, Flatten, Unflatten and dropout in eval mode, "
            "in a plain chain without residual connections.")


#: Why R-GAP cannot invert a module type (its input cannot be recovered from its output and the gradients).
UNSUPPORTED_REASONS: dict[type[nn.Module], str] = {
    nn.ReLU: "ReLU sets every negative pre-activation to 0, so the negative half of z is lost and the weight "
             "constraints below it are unknown (use LeakyReLU with a positive slope).",
    nn.MaxPool2d: "max pooling keeps one value per window and discards the others' values and positions.",
    nn.AdaptiveMaxPool2d: "adaptive max pooling keeps one value per region; the others are lost.",
}


def unsupported_reason(module: nn.Module) -> str:
    """One sentence on why R-GAP cannot invert ``module``."""
    return UNSUPPORTED_REASONS.get(type(module), f"{type(module).__name__} has no registered inverse.")


def parse_stages(model: nn.Module, input_shape: Sequence[int]) -> list[Stage]:
    """Split ``model`` into stages; raise ``UnsupportedModelError`` (an ``UnsupportedLayerError``) listing every
    layer R-GAP cannot invert, each with its position and reason."""
    reading = read_stages(model, input_shape)
    if reading.problems:
        raise UnsupportedModelError(reading.problems)
    return reading.stages


def read_stages(model: nn.Module, input_shape: Sequence[int]) -> ChainReading:
    """The stages of ``model`` and every problem (no exception for unsupported layers).

    When the model is not a chain, ``stages`` is empty; otherwise stages are built around unsupported layers
    (for the rank analysis's counts).
    """
    links, problems = trace_chain(model, input_shape)
    if problems:
        return ChainReading([], problems)
    return _build_stages(model, links)


# ------------------------------------------------------------------------------------------ the forward pass


def _is_unit(module: nn.Module) -> bool:
    known = (type(module) in INVERTER_REGISTRY or is_activation(module) or is_chain_op(module)
             or type(module) in UNSUPPORTED_REASONS)
    return known or not any(True for _ in module.children())


def _units(model: nn.Module) -> list[nn.Module]:
    """The modules the chain is made of: registered types and leaves, never descending into them."""
    if _is_unit(model):
        return [model]
    units: list[nn.Module] = []
    for child in model.children():
        units.extend(_units(child))
    return units


def _same(a: object, b: object) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel()
            and torch.equal(a.reshape(-1), b.reshape(-1)))


def trace_chain(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[Link], list[LayerProblem]]:
    """The units of ``model`` in the order one forward pass runs them, and the problems that make it no chain.

    The pass runs on a seeded random input (one sample, or two where one fails) in the model's dtype and device;
    buffers (batch-norm running statistics in training mode) and the global random state are restored afterwards.
    """
    names = {id(m): name for name, m in model.named_modules()}
    units = _units(model)
    calls: list[list] = []

    def before(module: nn.Module, inputs: tuple) -> None:
        first = inputs[0] if inputs else None
        calls.append([module, first.detach().clone() if isinstance(first, torch.Tensor) else first, None])

    def after(module: nn.Module, inputs: tuple, output: object) -> None:
        calls[-1][2] = output.detach().clone() if isinstance(output, torch.Tensor) else output

    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    handles = [h for m in units for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    failure: Exception | None = None
    try:
        # One sample first; two if that fails (training-mode BatchNorm1d needs more than one value per channel).
        for batch in (1, 2):
            calls.clear()
            x = torch.randn(batch, *(int(s) for s in input_shape), generator=torch.Generator().manual_seed(0),
                            dtype=dtype).to(device)
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    out = model(x)
                break
            except Exception as exc:  # a model that cannot run on this input is the user's to fix
                failure = failure or exc
        else:
            raise UserInputError(f"The model cannot run on inputs of shape {tuple(input_shape)}: "
                                 f"{type(failure).__name__}: {failure}") from failure
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    links: list[Link] = []
    problems: list[LayerProblem] = []
    times: dict[int, int] = {}
    previous: object = x
    previous_where = "the model input"
    for position, (module, given, produced) in enumerate(calls):
        shapes = [tuple(t.shape[1:]) if isinstance(t, torch.Tensor) else () for t in (given, produced)]
        link = Link(position, names.get(id(module), ""), module, shapes[0], shapes[1])
        links.append(link)
        times[id(module)] = times.get(id(module), 0) + 1
        if times[id(module)] == 2:
            problems.append(LayerProblem(link.where(), "runs more than once in one forward pass (a shared layer or "
                                         "a loop); R-GAP needs a chain in which every layer runs once."))
        if not _same(given, previous):
            problems.append(LayerProblem(link.where(), f"its input is not the output of {previous_where}: the "
                                         "forward pass adds a residual connection or applies an operation that is "
                                         "not a module (e.g. torch.relu, x + y) between them; R-GAP inverts plain "
                                         "chains of layers."))
        previous, previous_where = produced, f"layer {position}"
    if not _same(out, previous):
        problems.append(LayerProblem("the model", f"its output is not the output of {previous_where}: the forward "
                                     "pass changes it after its last module (or returns no single tensor)."))
    return links, problems


# ------------------------------------------------------------------------------------------------ the stages


def _weight_layer_problem(layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d) and (
        layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros"
        or isinstance(layer.padding, str)
    ):
        return "R-GAP supports convolutions with groups=1, dilation=1 and numeric zero padding only."
    return ""


def _build_stages(model: nn.Module, links: list[Link]) -> ChainReading:
    param_ids = {id(p): i for i, p in enumerate(model.parameters())}
    stages: list[Stage] = []
    problems: list[LayerProblem] = []
    pending: list[tuple[Link, ChainOp]] = []
    state = "input"  # "input": nothing yet; "open": after a weight layer, activation slot free; "closed"
    counts: dict[str, int] = {}
    placed: set[int] = set()
    for link in links:
        module = link.module
        placed.update(id(p) for p in module.parameters())
        if is_chain_op(module):
            try:
                op = read_chain_op(module, link.input_shape, link.output_shape)
            except UnsupportedLayerError as exc:
                problems.append(LayerProblem(link.where(), str(exc)))
                continue
            if op is None:
                continue
            if isinstance(op, ChannelAffine) and state == "open":
                reason = _fold_problem(stages[-1], op)
                if reason:
                    problems.append(LayerProblem(link.where(), reason))
                    continue
                stages[-1].post.append(op)
                stages[-1].output_shape, stages[-1].z_module = link.output_shape, module
                continue
            if state == "open":
                state = "closed"  # a pool right after a layer: the layer has no activation, the pool goes up
            pending.append((link, op))
        elif type(module) in INVERTER_REGISTRY:
            reason = _weight_layer_problem(module)
            if reason:
                problems.append(LayerProblem(link.where(), reason))
            kind = WEIGHT_KINDS.get(type(module), type(module).__name__.lower())
            counts[kind] = counts.get(kind, 0) + 1
            pre = [op for _, op in pending]
            stages.append(Stage(
                f"{kind}{counts[kind]}", module, IdentityActivation(),
                pre[0].input_shape if pre else link.input_shape, link.output_shape, param_ids[id(module.weight)],
                param_ids[id(module.bias)] if module.bias is not None else None, pre=pre,
                layer_input_shape=link.input_shape, layer_output_shape=link.output_shape, position=link.position,
            ))
            pending, state = [], "open"
        elif is_activation(module):
            if state != "open" or pending:
                after = "a pooling or batch-norm layer" if pending else "another activation or the input"
                problems.append(LayerProblem(link.where(), "R-GAP expects each activation to follow a weight layer "
                                             f"(Conv2d, Linear) or the batch norm after one; this one follows {after}."
                                             " Put pooling after the activation."))
                continue
            try:
                stages[-1].activation = invertible_activation(module)
            except UnsupportedLayerError as exc:
                problems.append(LayerProblem(link.where(), str(exc)))
            state = "closed"
        else:
            problems.append(LayerProblem(link.where(), unsupported_reason(module)))
    for link, _ in pending:
        problems.append(LayerProblem(link.where(), "follows the output layer: R-GAP reads the logits from the last "
                                     "weight layer (and its activation), so only pass-throughs may follow it."))
    if not stages:
        problems.append(LayerProblem("the model", "it has no Conv2d or Linear layer to invert."))
    unplaced = [name for name, p in model.named_parameters() if id(p) not in placed]
    if unplaced:
        problems.append(LayerProblem("the model", f"its parameters {', '.join(unplaced)} belong to no layer R-GAP "
                                     "reads: every trainable parameter must be the weight or bias of a Conv2d/Linear "
                                     "layer or the affine parameters of a batch norm."))
    for stage in stages:
        _set_k_source(stage, param_ids)
    return ChainReading(stages, problems)


def _fold_problem(stage: Stage, op: ChannelAffine) -> str:
    """Why ``op`` cannot be folded into ``stage``'s output ("" when it can)."""
    like = stage.layer.weight.detach()
    scale, _ = fold_affine([*stage.post, op], like)
    if per_channel_scale(stage.layer, scale, stage.layer_output_shape) is None:
        return (f"batch norm after {stage.name} scales its output per feature, not per output channel of the "
                "layer, so it cannot be folded into the layer's weights (normalise the channels, e.g. BatchNorm2d "
                "before Flatten).")
    return ""


def _set_k_source(stage: Stage, param_ids: dict[int, int]) -> None:
    """Point ``k_index`` at a parameter whose gradient is ``k = dl/dz`` of a fully connected stage, if any."""
    if not isinstance(stage.layer, nn.Linear) or len(stage.output_shape) != 1:
        return
    if stage.post:
        last = stage.post[-1].module
        if getattr(last, "bias", None) is not None and id(last.bias) in param_ids:
            stage.k_index, stage.k_rule = param_ids[id(last.bias)], "bn beta"
    elif stage.bias_index is not None:
        stage.k_index, stage.k_rule = stage.bias_index, "bias"


def collect_shapes(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, tuple[tuple[int, ...], ...]]:
    """Input and output shapes (without batch dim) of every leaf module, recorded with forward hooks.

    ``forward``'s return value is untouched; returns ``{module: (input_shape, output_shape)}``.
    """
    shapes: dict[nn.Module, tuple[tuple[int, ...], ...]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shapes[module] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return shapes
