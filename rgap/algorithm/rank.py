"""Rank analysis of R-GAP (paper section "rank analysis"; notes ``rgap-paper.md`` section 2).

For every weight layer ``z_i = W_i x_i`` R-GAP solves a linear system in the layer input ``x_i`` with

* ``|x_i|`` unknowns (the unpadded layer input),
* ``|W_i|`` gradient constraints (one per weight, ``dl/dW_i = f(k_i, x_i)``), and
* ``|z_i|`` weight constraints (one per output, ``W_i x_i = z_i``).

The count ``index = |x| - |W| - |z|`` is negative when a layer has more constraints than unknowns. The paper's
figure adds *virtual constraints* ``|V_i|``. Its defining equation was not retrieved, so this module uses the
rule derived in the notes, which reproduces every sign and both numbers of the figure: walking from the input
upward, ``V_1 = 0`` and ``V_{i+1} = max(0, V_i - index_i)``, i.e. the surplus of constraints of the layer
below (including what it received itself) is carried up to the next layer.

Counts are only a prediction: the *numerical* rank of each layer's actual stacked system ``[K_i; A_i]`` at a
real operating point (seeded random input, reversed logistic label, float64) decides whether the layer is
determined. The two can disagree (e.g. CNN6-d conv2: count -312, yet rank-deficient).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import pandas as pd
import torch
from torch import nn

from rgap.algorithm.composite import StageInverter, make_stage_inverter
from rgap.algorithm.inverters import Conv2dInverter, LayerInverter, LinearInverter
from rgap.algorithm.network import Stage, collect_shapes, format_problems, read_stages
from rgap.algorithm.solvers import RCOND, numerical_rank, singular_values_from_gram
from rgap.algorithm.structured import SINGLE_THREAD_LIMIT, conv_rank, threads
from rgap.attack.losses import get_loss, head_loss, reversed_labels


@dataclass
class LayerRank:
    """Counts and numerical rank of one layer's R-GAP constraint system."""

    layer: str  # stage name, e.g. "conv1", "fc2"
    kind: str  # "conv" or "fc"
    x: int  # |x|: unknowns (unpadded layer input)
    w: int  # |W|: gradient constraints (number of weights)
    z: int  # |z|: weight constraints (layer output size)
    v: int  # |V|: virtual constraints carried up from the layers below (derived rule, see module docstring)
    index: int  # |x| - |W| - |z|
    index_v: int  # |x| - |W| - |z| - |V|
    rank: int | None  # numerical rank of [K; A] (None: not computed)
    unknowns: int  # columns of [K; A] (= |x|)
    deficiency: int | None  # unknowns - rank (None: not computed)
    predicted: str  # "deficient" if index_v > 0 else "determined" ("unsupported": R-GAP cannot run at all)
    b: int = 0  # bias parameters: constraints on k, not on x (a fully connected layer's bias gradient is k)
    note: str = ""  # why the layer cannot be inverted, what is folded/composed into it, how its k is read
    rank_bound: int | None = None  # rank <= this from pooling composed into the layer (None: no bound below x)


def total_params(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (the figure's total |W|)."""
    return sum(p.numel() for p in model.parameters())


def virtual_constraints(indices: Sequence[int]) -> list[int]:
    """|V_i| for layers ordered from the input upward: V_1 = 0, V_{i+1} = max(0, V_i - index_i).

    This is the rule derived in the notes (surplus of the layer below is passed up), not the paper's equation.
    """
    v, out = 0, []
    for index in indices:
        out.append(v)
        v = max(0, v - index)
    return out


def operating_point(
    model: nn.Module, stages: list[Stage], input_shape: Sequence[int], seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(k, grad_w, z) of every stage of ``model`` (already float64) at a seeded random input in [0, 1].

    ``z`` is the stage's pre-activation (the output of its layer, or of the batch norm folded after it) and
    ``k = dl/dz`` is the gradient of the logistic loss w.r.t. the layer's pre-activation output, taken by
    autograd; the label is reversed as in the reference code (0 if the logit is positive, else 1), or the least
    likely class for a multi-class head (softmax cross-entropy).
    """
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, *input_shape, generator=generator, dtype=torch.float64).to(param.device)
    outputs: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        output.retain_grad()
        outputs[id(module)] = output
        return output.clone()  # an in-place activation then cannot overwrite z or redirect its gradient

    handles = [stage.z_module.register_forward_hook(hook) for stage in stages]
    try:
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
                p.grad = None
            logits = model(x)
            get_loss(head_loss(logits))(logits, reversed_labels(logits)).backward()
    finally:
        for handle in handles:
            handle.remove()
    point = []
    for stage in stages:
        out = outputs[id(stage.z_module)]
        point.append((out.grad[0].detach(), stage.layer.weight.grad.detach().clone(), out[0].detach()))
    return point


def rank_analysis(
    model: nn.Module,
    input_shape: Sequence[int],
    seed: int = 0,
    numerical: bool = True,
    max_unknowns: int = 6000,
    progress: Callable[[str], None] | None = None,
) -> list[LayerRank]:
    """Counts, virtual constraints and numerical rank of every layer, input layer first.

    Layers are the stages of ``rgap.algorithm.network``: batch norm in eval mode is folded into its layer and average
    pooling composed with the layer after it, so ``x`` counts the stage's unknown (a pool's input), ``w`` the
    layer's weights and ``z`` the stage's outputs, and ``rank_bound`` is the pooled size when it is below ``x``
    (``predicted`` is then ``deficient`` whatever the counts say). The model's mode is honoured: batch norm or
    dropout in training mode makes it ``unsupported`` (counts only, see :func:`count_only`).

    The numerical rank is that of the stacked system [K; A] with gradient and weight constraints (top layer included):
    the number of eigenvalues of its Gram matrix ``G = K^T K + A^T A`` above ``RCOND^2`` times the largest
    (``rgap.algorithm.solvers.RCOND``), found as ``layer_rank`` says (structured factorisations where they decide it,
    as the structured solver; a dense eigen-decomposition of ``G`` otherwise). The model is copied and cast to
    float64; the original is untouched. ``rank``/``deficiency`` are None for all layers when ``numerical`` is False
    and for layers with more than ``max_unknowns`` unknowns. ``progress`` is called once per layer with a short line
    (e.g. ``conv2: rank 3188/3468 (0.4 s, reduced)``).
    """
    input_shape = tuple(int(s) for s in input_shape)
    work = copy.deepcopy(model).to(torch.float64)
    reading = read_stages(work, input_shape)
    if reading.problems:
        return count_only(work, input_shape, format_problems(reading.problems), reading.stages)
    stages = reading.stages
    inverters = [make_stage_inverter(s) for s in stages]
    counts = [inv.counts() for inv in inverters]
    indices = [c.x - c.w - c.z for c in counts]
    virtual = virtual_constraints(indices)
    wanted = [numerical and c.x <= max_unknowns for c in counts]
    point = operating_point(work, stages, input_shape, seed) if any(wanted) else []
    rows = []
    small = max(c.x for c in counts) <= SINGLE_THREAD_LIMIT and next(work.parameters()).device.type == "cpu"
    for i, (stage, inverter, c) in enumerate(zip(stages, inverters, counts, strict=True)):
        rank = deficiency = None
        if wanted[i]:
            start = time.perf_counter()
            with torch.no_grad(), threads(1 if small else None):  # small operations: one thread is faster
                rank, route = layer_rank(inverter, *point[i])
            deficiency = c.x - rank
            if progress is not None:
                progress(f"{stage.name}: rank {rank}/{c.x} ({time.perf_counter() - start:.1f} s, {route})")
        elif progress is not None:
            why = "not computed (numerical=false)" if not numerical else f"not computed ({c.x} unknowns > max_unknowns)"
            progress(f"{stage.name}: rank {why}")
        index_v = indices[i] - virtual[i]
        rows.append(
            LayerRank(
                layer=stage.name,
                kind=stage.kind,
                x=c.x,
                w=c.w,
                z=c.z,
                v=virtual[i],
                index=indices[i],
                index_v=index_v,
                rank=rank,
                unknowns=c.x,
                deficiency=deficiency,
                predicted="deficient" if index_v > 0 or stage.rank_bound < c.x else "determined",
                b=stage.layer.bias.numel() if stage.has_bias else 0,
                note=stage_note(stage),
                rank_bound=stage.rank_bound if stage.rank_bound < c.x else None,
            )
        )
    return rows


def layer_rank(inverter: LayerInverter, k: torch.Tensor, grad_w: torch.Tensor, z: torch.Tensor) -> tuple[int, str]:
    """Numerical rank of one layer's unweighted ``G = K^T K + A^T A`` and the route that decided it.

    Conv2d: the structured null space of ``rgap.algorithm.structured`` (the solver's factorisations). Linear with
    ``k != 0``: ``G = |k|^2 I + W^T W`` has every eigenvalue in ``[|k|^2, |k|^2 + |W|_F^2]``, so it has full rank
    when ``|k|^2 > RCOND^2 (|k|^2 + |W|_F^2)``. Otherwise (no structured route decides it): the eigenvalues
    of the dense ``G`` (``dense``). A stage without pre-maps (``rgap.algorithm.composite``) is its layer's system.
    """
    plain = inverter.layer_system(k, grad_w, z) if isinstance(inverter, StageInverter) else None
    if plain is not None:
        return layer_rank(plain[0], *plain[1])
    if isinstance(inverter, Conv2dInverter):
        null = conv_rank(inverter, k, grad_w, z)
        if null is not None:
            return null.rank, null.route
    elif isinstance(inverter, LinearInverter):
        alpha = float((k * k).sum())
        weight = inverter.weight(k)
        if alpha > RCOND**2 * (alpha + float((weight * weight).sum())):
            return inverter.n, "closed form"
    gram, _ = inverter.normal_equations(k, grad_w, z)
    return numerical_rank(singular_values_from_gram(gram)), "dense"


def stage_note(stage: Stage) -> str:
    """What the rank table says about a stage: what is folded/composed into it and how its ``k`` is read."""
    notes = stage.notes()
    if stage.rank_bound < stage.input_size:
        notes.append(f"rank <= {stage.rank_bound} (pooled)")
    if stage.k_rule:
        notes.append(f"k read from the {stage.k_rule} gradient")
    return "; ".join(notes)


def count_only(model: nn.Module, input_shape: Sequence[int], reason: str,
               stages: Sequence[Stage] | None = None) -> list[LayerRank]:
    """Constraint counts of every Conv2d/Linear layer of a network R-GAP cannot invert (no numerical rank).

    ``predicted`` is ``unsupported`` and ``note`` carries ``reason`` (which layers stop R-GAP, and why). With the
    partial ``stages`` of ``rgap.algorithm.network.read_stages`` the counts are those of the stages (pre-maps
    composed, batch norm folded); without them (no chain), of every weight layer in ``model.modules()`` order.
    """
    sizes = []
    bounds: list[int | None] = []
    if stages:
        for stage in stages:
            sizes.append((stage.name, stage.kind, stage.input_size, stage.layer.weight.numel(), stage.output_size,
                          stage.layer.bias.numel() if stage.has_bias else 0))
            bounds.append(stage.rank_bound if stage.rank_bound < stage.input_size else None)
    else:
        shapes = collect_shapes(model, input_shape)
        counts = {"conv": 0, "fc": 0}
        for layer in (m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))):
            kind = "conv" if isinstance(layer, nn.Conv2d) else "fc"
            counts[kind] += 1
            in_shape, out_shape = shapes[layer]
            sizes.append((f"{kind}{counts[kind]}", kind, int(torch.Size(in_shape).numel()), layer.weight.numel(),
                          int(torch.Size(out_shape).numel()), layer.bias.numel() if layer.bias is not None else 0))
            bounds.append(None)
    virtual = virtual_constraints([x - w - z for _, _, x, w, z, _ in sizes])
    rows = []
    for (name, kind, x, w, z, b), v, bound in zip(sizes, virtual, bounds, strict=True):
        rows.append(LayerRank(layer=name, kind=kind, x=x, w=w, z=z, v=v, index=x - w - z, index_v=x - w - z - v,
                              rank=None, unknowns=x, deficiency=None, predicted="unsupported", b=b, note=reason,
                              rank_bound=bound))
    return rows


RANK_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LayerRank))


def rank_table(rows: list[LayerRank]) -> pd.DataFrame:
    """One row per layer in the given order (input layer first), columns as the ``LayerRank`` fields."""
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(RANK_COLUMNS))
    for column in ("rank", "deficiency", "rank_bound"):
        frame[column] = frame[column].astype("Int64")
    return frame
