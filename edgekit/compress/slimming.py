"""Network slimming (Liu et al., 2017) with a sparsity update that really separates BN gammas on short runs.

Plain L1 on gamma added to the gradient does almost nothing under AdamW (its per-parameter normalisation
cancels a constant push), and a proximal shrink alone shrinks a whole layer uniformly: with LeakyReLU and a
BN after the next conv, scaling a layer's gamma and beta together leaves the network function unchanged, so
the loss never resists the shrink. Here each optimiser step is followed by

    gamma <- sign(gamma) * max(|gamma| - lr * lam * m, 0);  (gamma, beta) <- (gamma, beta) * m / mean|gamma|

where ``m`` is the layer's mean |gamma| at the start. The shrink is the proximal step of the L1 penalty; the
rescale removes the free "shrink everything" direction, so what remains pushes channels below the layer mean
towards zero and the others up, unless the detection loss defends them. Channels are then removed by
|gamma| relative to their layer's mean (global or per-layer threshold), and the model is fine-tuned.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgekit.compress.context import evaluate_map
from edgekit.compress.finetune import finetune, recalibrate_bn
from edgekit.compress.graph import CRITERIA, build_graph, keep_count, prunable_convs, prune_plan
from edgekit.compress.step import Step, StepResult
from edgekit.models.train import TrainHooks

MIN_ALIVE = 8  # channels per layer the shrink always leaves non-zero
SPARSE_BELOW = 0.1  # a channel counts as "sparse" when |gamma| < 0.1 x its layer's mean |gamma|


def gated_bns(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, nn.BatchNorm2d]:
    """Conv name -> the BN right after it, for every prunable conv that has one."""
    graph = build_graph(model, input_shape)
    out = {}
    for name, conv in prunable_convs(model, input_shape).items():
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
        bn = next((d.target.module for d, _ in group if isinstance(d.target.module, nn.BatchNorm2d)), None)
        if bn is not None:
            out[name] = bn
    return out


def relative_gammas(bns: dict[str, nn.BatchNorm2d]) -> dict[str, torch.Tensor]:
    """|gamma| / mean |gamma| per layer (scale-free, comparable across layers)."""
    return {
        n: (bn.weight.detach().abs() / bn.weight.detach().abs().mean().clamp_min(1e-12))
        for n, bn in bns.items()
    }


def sparse_fraction(bns: dict[str, nn.BatchNorm2d]) -> float:
    """Fraction of channels whose relative |gamma| is below :data:`SPARSE_BELOW`."""
    rel = torch.cat(list(relative_gammas(bns).values()))
    return float((rel < SPARSE_BELOW).float().mean())


def proximal_shrink(bns: dict[str, nn.BatchNorm2d], lam: float, renormalize: bool):
    """An ``after_step(model, lr)`` hook applying the shrink-and-rescale update of the module docstring."""
    ref = {n: float(bn.weight.detach().abs().mean()) for n, bn in bns.items()}

    @torch.no_grad()
    def after_step(_model: nn.Module, lr: float) -> None:
        for name, bn in bns.items():
            g = bn.weight
            shrunk = g.sign() * (g.abs() - lr * lam * ref[name]).clamp_min(0)
            if int((shrunk != 0).sum()) < MIN_ALIVE:
                continue  # never let a whole layer die: the network would be cut in two
            g.copy_(shrunk)
            if renormalize:
                scale = ref[name] / float(g.abs().mean().clamp_min(1e-12))
                g.mul_(scale)
                bn.bias.mul_(scale)

    return after_step


def slim_plan(bns: dict[str, nn.BatchNorm2d], spec: Any) -> dict[str, int]:
    """Channels to remove per conv from the relative gammas (global quantile or per-layer ratio)."""
    rel = relative_gammas(bns)
    if spec.threshold == "global":
        cut = float(torch.quantile(torch.cat(list(rel.values())), spec.ratio))
        wanted = {n: int((r <= cut).sum()) for n, r in rel.items()}
    else:
        wanted = {n: int(round(spec.ratio * len(r))) for n, r in rel.items()}
    plan = {}
    for name, count in wanted.items():
        channels = len(rel[name])
        ratio = min(count / channels, spec.max_layer_ratio)
        plan[name] = channels - keep_count(channels, ratio, spec.round_to)
    return plan


class SlimStep(Step):
    """Sparsity training, BN-gamma threshold, channel removal, fine-tune (network slimming)."""

    type = "slim"

    def label(self, spec: Any) -> str:
        """Short label for the record."""
        return f"slimming {spec.ratio:.0%} ({spec.threshold})"

    def apply(self, model: nn.Module, spec: Any, ctx: Any) -> StepResult:
        """Run the step (see :class:`~edgekit.compress.step.Step`)."""
        bns = gated_bns(model, ctx.input_shape)
        before = torch.cat([bn.weight.detach().abs() for bn in bns.values()])
        frac_before = sparse_fraction(bns)
        sp = spec.sparsity
        hooks = TrainHooks(after_step=proximal_shrink(bns, sp.lam, sp.renormalize))
        stats = finetune(model, sp, ctx, "sparsity training", hooks) if sp.epochs > 0 else {"steps": 0}
        after = torch.cat([bn.weight.detach().abs() for bn in bns.values()])
        frac_after = sparse_fraction(bns)
        after_sparsity = evaluate_map(model, ctx.val)
        history = prune_plan(model, slim_plan(bns, spec), CRITERIA["bn"](), ctx.input_shape)
        recalibrate_bn(model, ctx.train)
        after_prune = evaluate_map(model, ctx.val)
        tuned = finetune(model, spec.finetune, ctx, "fine-tune after slimming")
        extra = {
            "gamma_before": [round(float(v), 5) for v in before],
            "gamma_after": [round(float(v), 5) for v in after],
            "sparsity": {
                "below": SPARSE_BELOW,
                "fraction_before": round(frac_before, 4),
                "fraction_after": round(frac_after, 4),
            },
            "train": {"sparsity": stats, "finetune": tuned},
            # where the accuracy goes: the sparsity training, the cut, and what the fine-tune starts from
            "stages": {"after_sparsity": after_sparsity, "after_prune": after_prune},
        }
        return StepResult(model, history=history, extra=extra)
