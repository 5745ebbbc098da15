"""The pruning *graph*: which channels are coupled, how many to remove, and a replayable history.

Built on torch-pruning's :class:`DependencyGraph`, so pruning a conv's output channels also cuts the BN after
it, the consumers' input channels, and the matching slice of every concat (the route/p8 concat of the
reference detector). Criteria (which channels) live in :data:`CRITERIA`; schedules (how many, when) live in
the steps. The prediction convs are never roots, so their outputs (the detector's rows) never change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from edgekit.core.errors import CompressionError
from edgekit.export.onnx import model_macs_params

Criterion = Callable[[tp.dependency.Group], torch.Tensor]


def _root_bn(group: tp.dependency.Group) -> nn.BatchNorm2d:
    for dep, _idxs in group:
        if isinstance(dep.target.module, nn.BatchNorm2d):
            return dep.target.module
    raise CompressionError(
        "slimming needs a BatchNorm after every pruned conv", "use l1 or fpgm pruning for this model"
    )


def channel_strength(bn: nn.BatchNorm2d, shrink: str = "gamma") -> torch.Tensor:
    """Per channel: |gamma|, or ||(gamma, beta)|| for ``shrink="channel"`` (what slimming drives to zero)."""
    g = bn.weight.detach()
    return torch.hypot(g, bn.bias.detach()) if shrink == "channel" else g.abs()


def _bn_scale(group: tp.dependency.Group) -> torch.Tensor:
    """|gamma| of the BN right after the root conv (network slimming's criterion)."""
    return channel_strength(_root_bn(group))


def _bn_channel(group: tp.dependency.Group) -> torch.Tensor:
    """||(gamma, beta)|| of the BN right after the root conv (what the channel shrink drives to zero)."""
    return channel_strength(_root_bn(group), "channel")


CRITERIA: dict[str, Callable[[], Criterion]] = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "fpgm": lambda: tp.importance.FPGMImportance(p=2),
    "bn": lambda: _bn_scale,
    "bn_channel": lambda: _bn_channel,
}


def prediction_layers(model: nn.Module) -> list[nn.Module]:
    """The model's prediction convs (never pruned); empty for models without the method."""
    fn = getattr(model, "prediction_layers", None)
    return list(fn()) if fn else []


def prunable_convs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, nn.Conv2d]:
    """Convs whose output channels may be removed, one per coupled group.

    Dense (groups=1) convs, not prediction convs, not inside a squeeze-excite block (its expand conv is
    tied to the depthwise channels it gates). With ``input_shape`` the graph is traced and a conv whose
    outputs are already cut by an earlier conv's group (a residual partner) is left out, so no group is
    pruned twice.
    """
    protected = {id(m) for m in prediction_layers(model)}
    se_convs = {id(c) for m in model.modules() if type(m).__name__ == "SqueezeExcite" for c in m.modules()}
    convs = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1 and id(m) not in protected | se_convs
    }
    if input_shape is None:
        return convs
    graph, covered, roots = build_graph(model, input_shape), set(), {}
    for name, conv in convs.items():
        if id(conv) in covered:
            continue
        roots[name] = conv
        for dep, _ in _group(graph, conv, [0]):
            if dep.handler.__name__ == "prune_out_channels":
                covered.add(id(dep.target.module))
    return roots


def build_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """Trace ``model.raw`` (or ``forward``) once and return the dependency graph."""
    forward = (lambda m, x: m.raw(x)) if hasattr(model, "raw") else None
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, torch.zeros(input_shape), forward_fn=forward)
    finally:
        model.train(was_training)


def keep_count(channels: int, ratio: float, round_to: int) -> int:
    """Channels left after removing ``ratio`` of them, rounded to ``round_to`` (at least ``round_to``)."""
    keep = int(round(channels * (1 - ratio) / round_to)) * round_to
    return min(channels, max(round_to, keep))


def _group(graph: tp.DependencyGraph, conv: nn.Conv2d, indices: list[int]) -> tp.dependency.Group:
    return graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=indices)


def channel_scores(graph: tp.DependencyGraph, conv: nn.Conv2d, criterion: Criterion) -> torch.Tensor:
    """Importance of each output channel of ``conv`` over its whole coupled group (low = remove first)."""
    scores = criterion(_group(graph, conv, list(range(conv.out_channels))))
    if scores is None or len(scores) != conv.out_channels:
        raise CompressionError(
            f"criterion gave no usable scores for a conv with {conv.out_channels} channels",
            "use another pruning method for this layer",
        )
    return scores


def prune_channels(graph: tp.DependencyGraph, model: nn.Module, name: str, indices: list[int]) -> dict:
    """Remove output channels ``indices`` of conv ``name`` and all coupled ones; return the history entry."""
    conv = dict(model.named_modules())[name]
    before = conv.out_channels
    indices = sorted(int(i) for i in indices)
    if indices:
        _group(graph, conv, indices).prune()
    return {"layer": name, "channels_before": before, "channels_after": conv.out_channels, "indices": indices}


def prune_plan(
    model: nn.Module, plan: dict[str, int], criterion: Criterion, input_shape: tuple[int, ...]
) -> list[dict]:
    """Remove ``plan[name]`` lowest-scoring channels from each named conv; return the history."""
    graph = build_graph(model, input_shape)
    convs = dict(model.named_modules())
    history = []
    for name, count in plan.items():
        if count <= 0:
            continue
        scores = channel_scores(graph, convs[name], criterion)
        worst = torch.argsort(scores)[:count].tolist()
        history.append(prune_channels(graph, model, name, worst))
    return history


def replay(model: nn.Module, history: list[dict], input_shape: tuple[int, ...]) -> nn.Module:
    """Apply a recorded pruning history to a fresh copy of the same architecture (in place)."""
    graph = build_graph(model, input_shape)
    convs = dict(model.named_modules())
    for entry in history:
        if convs[entry["layer"]].out_channels != entry["channels_before"]:
            raise CompressionError(
                f"history does not match the model at layer {entry['layer']}",
                "replay a history on the model it was recorded from",
            )
        prune_channels(graph, model, entry["layer"], entry["indices"])
    return model


def uniform_plan(
    model: nn.Module, ratio: float, round_to: int, input_shape: tuple[int, ...]
) -> dict[str, int]:
    """Remove the same fraction of every prunable conv's channels (rounded)."""
    return {
        name: conv.out_channels - keep_count(conv.out_channels, ratio, round_to)
        for name, conv in prunable_convs(model, input_shape).items()
    }


def plan_for_macs(model: nn.Module, keep_macs: float, round_to: int, input_shape: tuple[int, ...]) -> dict:
    """The uniform plan whose pruned model keeps about ``keep_macs`` of the MACs (bisection on the ratio)."""
    base = model_macs_params(model, input_shape)["macs"]
    lo, hi = 0.0, 0.95
    best = uniform_plan(model, hi, round_to, input_shape)
    for _ in range(8):
        mid = (lo + hi) / 2
        plan = uniform_plan(model, mid, round_to, input_shape)
        trial = copy.deepcopy(model)
        prune_plan(trial, plan, lambda g: torch.arange(len(g[0][1]), dtype=torch.float32), input_shape)
        if model_macs_params(trial, input_shape)["macs"] <= keep_macs * base:
            best, hi = plan, mid
        else:
            lo = mid
    return best
